//! Golden tests of the AsymmDiT against diffusers' `MochiTransformer3DModel`.
//!
//! Fixtures come from `tools/make_fixtures.py` (tiny config of spec §6.1); every tap is
//! compared in f32 with max |Δ| ≤ 1e-4. No Python is needed here.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mochi_model::model::weights::{Scheme, Weights};
use mochi_model::model::{AsymmDiT, Config, TextLayout};
use mochi_model::pipeline::sampling::{TextConditioning, denoise, dit_to_vae};
use mochi_model::pipeline::scheduler::{linear_quadratic, timestep_from_sigma};

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dit")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).expect("fixture loads")
}

/// (max |Δ|, max |Δ| / max |reference|).
fn errors(got: &Tensor, want: &Tensor) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got.to_dtype(DType::F32).expect("f32");
    let want = want.to_dtype(DType::F32).expect("f32");
    let max_abs = |t: Tensor| {
        t.abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar")
    };
    let diff = max_abs((&got - &want).expect("sub"));
    let scale = max_abs(want);
    (diff, diff / scale.max(1e-12))
}

fn check(label: &str, got: &Tensor, want: &Tensor) {
    let (abs, rel) = errors(got, want);
    println!("{label:<28} max|Δ| {abs:.3e}  rel {rel:.3e}");
    assert!(
        abs <= TOLERANCE,
        "{label}: max |Δ| {abs} > {TOLERANCE} (rel {rel})"
    );
}

fn tiny_model(dtype: DType) -> AsymmDiT {
    AsymmDiT::from_model_dir(&fixtures().join("model"), dtype, &Device::Cpu).expect("model loads")
}

fn run_case(
    model: &AsymmDiT,
    case: &str,
) -> (HashMap<String, Tensor>, Tensor, Vec<(String, Tensor)>) {
    let data = load(&format!("case_{case}.safetensors"));
    let (out, taps) = model
        .forward_with_taps(
            &data["in_latents"],
            &data["in_timestep"],
            &data["in_text"],
            &data["in_mask"],
        )
        .expect("forward");
    (data, out, taps)
}

fn check_all_taps(case: &str) {
    check_all_taps_with(case, TextLayout::default());
}

fn check_all_taps_with(case: &str, layout: TextLayout) {
    let model = tiny_model(DType::F32).with_text_layout(layout);
    assert_eq!(model.config(), &Config::tiny());
    let (data, _, taps) = run_case(&model, case);
    let ours: HashMap<_, _> = taps.into_iter().collect();
    let mut compared = 0;
    for (key, want) in &data {
        let Some(name) = key.strip_prefix("tap_") else {
            continue;
        };
        let got = ours
            .get(name)
            .unwrap_or_else(|| panic!("no Rust tap named {name}"));
        check(&format!("{case}/{name}"), got, want);
        compared += 1;
    }
    // temb, pooled, conditioning, caption, patch, rope cos/sin, 2×2 blocks, norm_out, output.
    assert_eq!(compared, 13, "expected every reference tap");
}

#[test]
fn masked_prefix_case_matches_reference_taps() {
    check_all_taps("prefix");
}

#[test]
fn all_masked_case_matches_reference_taps() {
    check_all_taps("empty");
}

#[test]
fn non_square_latent_matches_reference_taps() {
    check_all_taps("nonsquare");
}

#[test]
fn batch_of_two_with_different_masks_matches_reference_taps() {
    check_all_taps("batch2");
}

#[test]
fn masks_other_than_a_prefix_match_diffusers_with_its_packed_layout() {
    for case in ["allvalid", "single", "gapped"] {
        check_all_taps_with(case, TextLayout::Packed);
    }
}

#[test]
fn genmo_s_in_place_layout_is_the_default_and_reads_a_gapped_mask_as_its_valid_tokens() {
    // Every token valid: the layouts agree, and agree with diffusers.
    check_all_taps_with("allvalid", TextLayout::InPlace);
    let model = tiny_model(DType::F32);
    assert_eq!(model.text_layout(), TextLayout::InPlace);
    let data = load("case_gapped.safetensors");
    let forward = |text: &Tensor, mask: &Tensor| {
        model
            .forward(&data["in_latents"], &data["in_timestep"], text, mask)
            .expect("forward")
    };
    let in_place = forward(&data["in_text"], &data["in_mask"]);
    // diffusers moves the valid tokens' attention outputs to the front of the text stream,
    // where other tokens' residuals are: from the second block on the two differ.
    let (abs, _) = errors(&in_place, &data["tap_output"]);
    println!("gapped: in place vs diffusers' packed output max|Δ| {abs:.3e}");
    assert!(abs > 1e-3, "the layouts should differ on a gapped mask");
    // Text tokens carry no position: the valid tokens moved to the front (a prefix mask,
    // where every implementation agrees) give the same prediction.
    let mask: Vec<f32> = data["in_mask"]
        .flatten_all()
        .and_then(|m| m.to_vec1())
        .expect("mask");
    let (valid, masked): (Vec<u32>, Vec<u32>) =
        (0..mask.len() as u32).partition(|i| mask[*i as usize] > 0.5);
    let order: Vec<u32> = valid.iter().chain(&masked).copied().collect();
    let order = Tensor::new(order.as_slice(), &Device::Cpu).expect("order");
    let text = data["in_text"].index_select(&order, 1).expect("permute");
    let prefix: Vec<f32> = (0..mask.len())
        .map(|i| if i < valid.len() { 1.0 } else { 0.0 })
        .collect();
    let prefix = Tensor::from_vec(prefix, (1, mask.len()), &Device::Cpu).expect("mask");
    check(
        "gapped/in place = as a prefix",
        &in_place,
        &forward(&text, &prefix),
    );
}

#[test]
fn genmo_key_scheme_gives_the_reference_output() {
    let weights = Weights::from_model_dir(&fixtures().join("genmo"), DType::F32, &Device::Cpu)
        .expect("weights");
    assert_eq!(
        weights.scheme(),
        &Scheme::Genmo {
            prefix: String::new()
        }
    );
    // No config.json next to dit.safetensors: the config comes from the tensor shapes.
    let derived = Config::from_weights(&weights).expect("derived config");
    assert_eq!(
        derived,
        Config {
            max_sequence_length: 256,
            ..Config::tiny()
        }
    );
    let model = AsymmDiT::from_model_dir(&fixtures().join("genmo"), DType::F32, &Device::Cpu)
        .expect("model");
    let (data, out, _) = run_case(&model, "prefix");
    check("genmo/output", &out, &data["tap_output"]);
}

#[test]
fn sigma_lists_match_reference() {
    let text = std::fs::read_to_string(fixtures().join("sigmas.json")).expect("sigmas.json");
    let lists: HashMap<String, Vec<f64>> = serde_json::from_str(&text).expect("json");
    let params: [(&str, usize, f64, Option<usize>); 4] = [
        ("n8_t0.025", 8, 0.025, None),
        ("n64_t0.025", 64, 0.025, None),
        ("n8_t0.1_m6", 8, 0.1, Some(6)),
        ("n2_t0.025", 2, 0.025, None),
    ];
    for (key, n, tau, m) in params {
        let ours = linear_quadratic(n, tau, m);
        let want = &lists[key];
        assert_eq!(ours.len(), want.len(), "{key}");
        for (a, b) in ours.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{key}: {a} vs {b}");
        }
    }
}

#[test]
fn two_step_cfg_sampling_matches_reference() {
    let model = tiny_model(DType::F32);
    let data = load("sampling.safetensors");
    let sigmas = data["sigmas"].to_vec1::<f64>().expect("sigmas");
    let guidance = data["guidance"].to_vec1::<f64>().expect("guidance");
    // diffusers' scheduler (invert_sigmas) hands the DiT 1000·(1−σ), computed in f32.
    let scheduler_timesteps = data["timesteps"].to_vec1::<f32>().expect("timesteps");
    assert_eq!(scheduler_timesteps.len(), sigmas.len() - 1);
    for (sigma, want) in sigmas.iter().zip(&scheduler_timesteps) {
        let ours = timestep_from_sigma(*sigma) as f32;
        assert!(
            (ours - want).abs() <= 1e-3,
            "timestep {ours} vs scheduler {want}"
        );
    }
    let cond = TextConditioning {
        features: data["cond_text"].clone(),
        mask: data["cond_mask"].clone(),
    };
    let uncond = TextConditioning {
        features: data["uncond_text"].clone(),
        mask: data["uncond_mask"].clone(),
    };
    let mut steps = Vec::new();
    let latents = denoise(
        &model,
        &data["in_latents"],
        &cond,
        Some(&uncond),
        &sigmas,
        &guidance,
        |info| {
            steps.push(info.latents.clone());
            ControlFlow::Continue(())
        },
    )
    .expect("denoise");
    assert_eq!(steps.len(), 2);
    for (i, step) in steps.iter().enumerate() {
        check(
            &format!("sampling/step{i}"),
            step,
            &data[&format!("step{i}_latents")],
        );
    }
    check(
        "sampling/vae_latents",
        &dit_to_vae(&latents).expect("denorm"),
        &data["vae_latents"],
    );
}

#[test]
fn sampling_stops_when_the_callback_breaks() {
    let model = tiny_model(DType::F32);
    let data = load("sampling.safetensors");
    let sigmas = data["sigmas"].to_vec1::<f64>().expect("sigmas");
    let cond = TextConditioning {
        features: data["cond_text"].clone(),
        mask: data["cond_mask"].clone(),
    };
    let uncond = TextConditioning {
        features: data["uncond_text"].clone(),
        mask: data["uncond_mask"].clone(),
    };
    let mut calls = 0;
    let latents = denoise(
        &model,
        &data["in_latents"],
        &cond,
        Some(&uncond),
        &sigmas,
        &[4.5],
        |_| {
            calls += 1;
            ControlFlow::Break(())
        },
    )
    .expect("denoise");
    assert_eq!(calls, 1);
    check(
        "sampling/stopped_after_step0",
        &latents,
        &data["step0_latents"],
    );
}

#[test]
fn bf16_weights_stay_within_the_measured_budget() {
    let model = tiny_model(DType::BF16);
    for case in ["prefix", "nonsquare", "batch2"] {
        let (data, out, _) = run_case(&model, case);
        let (abs, rel) = errors(&out, &data["tap_output"]);
        println!("bf16 {case:<10} output max|Δ| {abs:.3e}  rel {rel:.3e}");
        assert!(rel < 0.05, "bf16 {case}: relative error {rel} over budget");
        assert!(abs > 0.0, "bf16 run should differ from f32");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn missing_shard_error_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let transformer = dir.path().join("transformer");
    copy_dir(&fixtures().join("model/transformer"), &transformer);
    let shard = "diffusion_pytorch_model-00002-of-00002.safetensors";
    std::fs::remove_file(transformer.join(shard)).expect("remove");
    let err =
        AsymmDiT::from_model_dir(dir.path(), DType::F32, &Device::Cpu).expect_err("must fail");
    assert!(err.to_string().contains(shard), "{err}");
}

#[test]
fn a_config_the_weights_contradict_is_refused_naming_the_field_and_both_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let transformer = dir.path().join("transformer");
    copy_dir(&fixtures().join("model/transformer"), &transformer);
    let path = transformer.join("config.json");
    let text = std::fs::read_to_string(&path).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(config["num_layers"], 2, "the fixture");
    for (field, value, expected) in [
        (
            "num_layers",
            3,
            "num_layers is 3 in the config, the weights have 2",
        ),
        (
            "attention_head_dim",
            4,
            "attention_head_dim is 4 in the config, the weights have 8",
        ),
    ] {
        let mut wrong = config.clone();
        wrong[field] = value.into();
        std::fs::write(&path, wrong.to_string()).expect("write");
        let err = AsymmDiT::from_model_dir(dir.path(), DType::F32, &Device::Cpu)
            .expect_err("contradicted");
        let message = err.to_string();
        assert!(
            message.contains(expected) && message.contains("contradicts the weights"),
            "{message}"
        );
    }
    config["max_sequence_length"] = 77.into();
    std::fs::write(&path, config.to_string()).expect("write");
    let model = AsymmDiT::from_model_dir(dir.path(), DType::F32, &Device::Cpu)
        .expect("a field the shapes do not fix is the config's to say");
    assert_eq!(model.config().max_sequence_length, 77);
}

#[test]
fn mis_shaped_and_missing_tensors_are_named_with_shapes() {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let transformer = fixtures().join("model/transformer");
    for i in 1..=2 {
        let shard = transformer.join(format!(
            "diffusion_pytorch_model-0000{i}-of-00002.safetensors"
        ));
        tensors.extend(candle_core::safetensors::load(shard, &Device::Cpu).expect("shard"));
    }
    let name = "transformer_blocks.0.attn1.to_k.weight";
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        transformer.join("config.json"),
        dir.path().join("config.json"),
    )
    .expect("config");
    let file = dir.path().join("diffusion_pytorch_model.safetensors");

    let mut bad = tensors.clone();
    bad.insert(
        name.to_string(),
        Tensor::zeros((16, 20), DType::F32, &Device::Cpu).expect("zeros"),
    );
    candle_core::safetensors::save(&bad, &file).expect("save");
    let err =
        AsymmDiT::from_model_dir(dir.path(), DType::F32, &Device::Cpu).expect_err("must fail");
    let message = err.to_string();
    assert!(
        message.contains(name) && message.contains("[16, 20]") && message.contains("[16, 16]"),
        "{message}"
    );

    let mut missing = tensors;
    missing.remove("proj_out.bias");
    candle_core::safetensors::save(&missing, &file).expect("save");
    let err =
        AsymmDiT::from_model_dir(dir.path(), DType::F32, &Device::Cpu).expect_err("must fail");
    assert!(err.to_string().contains("proj_out.bias"), "{err}");
}

#[test]
fn bf16_variant_is_preferred_for_bf16_and_used_when_alone() {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let transformer = fixtures().join("model/transformer");
    for i in 1..=2 {
        let shard = transformer.join(format!(
            "diffusion_pytorch_model-0000{i}-of-00002.safetensors"
        ));
        tensors.extend(candle_core::safetensors::load(shard, &Device::Cpu).expect("shard"));
    }
    let bf16: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).expect("bf16")))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let variant_dir = dir.path().join("transformer");
    copy_dir(&transformer, &variant_dir);
    let variant = "diffusion_pytorch_model.bf16.safetensors";
    candle_core::safetensors::save(&bf16, variant_dir.join(variant)).expect("save");

    let pick = |dtype: DType| {
        let weights = Weights::from_model_dir(dir.path(), dtype, &Device::Cpu).expect("weights");
        weights
            .files()
            .iter()
            .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(pick(DType::BF16), vec![variant.to_string()]);
    assert_eq!(pick(DType::F32).len(), 2, "f32 run keeps the f32 shards");

    std::fs::remove_file(variant_dir.join("diffusion_pytorch_model.safetensors.index.json"))
        .expect("remove index");
    assert_eq!(pick(DType::F32), vec![variant.to_string()]);
    let model = AsymmDiT::from_model_dir(dir.path(), DType::BF16, &Device::Cpu).expect("model");
    let (data, out, _) = run_case(&model, "prefix");
    let (_, rel) = errors(&out, &data["tap_output"]);
    assert!(rel < 0.05, "bf16 variant output relative error {rel}");
}
