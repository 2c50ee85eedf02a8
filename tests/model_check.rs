//! `mochi model create-tiny` and `mochi model check`: a complete directory passes, a broken
//! one is refused with a non-zero exit and a sentence per problem.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn mochi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mochi"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_passes_a_complete_directory_and_names_each_problem_of_a_broken_one() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tiny");
    let dir_arg = dir.to_str().unwrap();
    let created = mochi(&["model", "create-tiny", dir_arg]);
    assert!(created.status.success(), "{created:?}");

    let good = mochi(&["model", "check", dir_arg]);
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok: transformer") && stdout.contains("model directory is complete"),
        "{stdout}"
    );

    let shard = "transformer/diffusion_pytorch_model-00001-of-00002.safetensors";
    std::fs::remove_file(dir.join(shard)).unwrap();
    let broken = mochi(&["model", "check", dir_arg]);
    assert!(!broken.status.success());
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(
        stdout.contains(&format!("problem: missing shard {shard}")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(
        stderr.contains("is not a usable model directory"),
        "{stderr}"
    );

    // create-tiny repairs it.
    let repaired = mochi(&["model", "create-tiny", dir_arg]);
    assert!(String::from_utf8_lossy(&repaired.stderr).contains("repaired"));
    assert!(mochi(&["model", "check", dir_arg]).status.success());
}

#[test]
fn check_passes_the_release_structure_in_both_layouts() {
    let work = tempfile::tempdir().unwrap();
    for layout in ["diffusers", "genmo"] {
        let dir = work.path().join(layout);
        let dir_arg = dir.to_str().unwrap();
        let created = mochi(&["model", "create-reduced", dir_arg, "--layout", layout]);
        assert!(created.status.success(), "{created:?}");
        let checked = mochi(&["model", "check", dir_arg]);
        let stdout = String::from_utf8_lossy(&checked.stdout);
        assert!(checked.status.success(), "{layout}: {stdout}");
        assert!(stdout.contains("model directory is complete"), "{stdout}");
    }
    let genmo = work.path().join("genmo");
    std::fs::remove_file(genmo.join("decoder.safetensors")).unwrap();
    let broken = mochi(&["model", "check", genmo.to_str().unwrap()]);
    assert!(!broken.status.success());
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(stdout.contains("problem: no VAE decoder: expected vae/ (config.json and weights, diffusers' layout) or decoder.safetensors (genmo's)"), "{stdout}");
    let unknown = mochi(&["model", "create-reduced", "x", "--layout", "onnx"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("use diffusers or genmo"));
}

#[test]
fn run_gives_the_reference_output_of_a_component_from_named_tensors() {
    use candle_core::{Device, Tensor};

    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mochi-model/tests/fixtures/dit");
    let case =
        candle_core::safetensors::load(fixtures.join("case_prefix.safetensors"), &Device::Cpu)
            .unwrap();
    let inputs: std::collections::HashMap<String, Tensor> = [
        ("in_latents", "hidden_states"),
        ("in_text", "encoder_hidden_states"),
        ("in_timestep", "timestep"),
        ("in_mask", "encoder_attention_mask"),
    ]
    .into_iter()
    .map(|(from, to)| (to.to_owned(), case[from].clone()))
    .collect();
    let work = tempfile::tempdir().unwrap();
    let input_file = work.path().join("in.safetensors");
    let output_file = work.path().join("out.safetensors");
    candle_core::safetensors::save(&inputs, &input_file).unwrap();
    let model_dir = fixtures.join("model");
    let args = [
        "model",
        "run",
        "--model-dir",
        model_dir.to_str().unwrap(),
        "--component",
        "transformer",
        "--inputs",
        input_file.to_str().unwrap(),
        "--out",
        output_file.to_str().unwrap(),
    ];
    let ran = mochi(&args);
    assert!(ran.status.success(), "{ran:?}");
    let out = candle_core::safetensors::load(&output_file, &Device::Cpu).unwrap();
    let diff = (&out["sample"] - &case["tap_output"])
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap();
    assert!(diff <= 1e-4, "max |Δ| {diff}");

    // A wrong component name and a missing input are refused with a sentence.
    let mut wrong = args;
    wrong[5] = "unet";
    let refused = mochi(&wrong);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unknown component `unet`; use one of transformer, vae, text"),
        "{stderr}"
    );
    let mut vae = args;
    vae[5] = "vae";
    let refused = mochi(&vae);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("missing input `z`"), "{stderr}");
}
