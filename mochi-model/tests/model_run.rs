//! `mochi_model::run` (what `mochi model run` does) on the goldens: each component, given
//! the reference's own input names, gives the reference's outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use mochi_model::run::{Component, Reference, RunOptions, run};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(path: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(path), &Device::Cpu).expect("fixture")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

fn options(reference: Reference) -> RunOptions {
    RunOptions {
        dtype: DType::F32,
        device: Device::Cpu,
        reference,
    }
}

fn renamed(data: &HashMap<String, Tensor>, names: &[(&str, &str)]) -> HashMap<String, Tensor> {
    names
        .iter()
        .map(|(from, to)| ((*to).to_owned(), data[*from].clone()))
        .collect()
}

#[test]
fn the_transformer_gives_the_reference_sample() {
    for case in ["prefix", "batch2", "empty", "gapped", "single"] {
        let data = load(&format!("dit/case_{case}.safetensors"));
        let inputs = renamed(
            &data,
            &[
                ("in_latents", "hidden_states"),
                ("in_text", "encoder_hidden_states"),
                ("in_timestep", "timestep"),
                ("in_mask", "encoder_attention_mask"),
            ],
        );
        let out = run(
            &fixtures().join("dit/model"),
            Component::Transformer,
            &inputs,
            &options(Reference::Diffusers),
        )
        .expect("run");
        let diff = max_diff(&out["sample"], &data["tap_output"]);
        assert!(diff <= 1e-4, "{case}: max |Δ| {diff}");
    }
}

#[test]
fn the_vae_gives_diffusers_decode_or_genmo_s() {
    let data = load("vae/case_t2.safetensors");
    let inputs = renamed(&data, &[("in_latents", "z")]);
    for (reference, want) in [
        (Reference::Diffusers, "out_diffusers"),
        (Reference::Genmo, "out_genmo"),
    ] {
        let out = run(
            &fixtures().join("vae/model"),
            Component::Vae,
            &inputs,
            &options(reference),
        )
        .expect("run");
        let diff = max_diff(&out["sample"], &data[want]);
        assert!(diff <= 1e-4, "{want}: max |Δ| {diff}");
    }
}

#[test]
fn the_text_encoder_gives_the_reference_on_valid_positions_and_zeros_after() {
    let data = load("t5/encoder_case.safetensors");
    let inputs = renamed(
        &data,
        &[
            ("input_ids", "input_ids"),
            ("attention_mask", "attention_mask"),
        ],
    );
    let out = run(
        &fixtures().join("t5"),
        Component::Text,
        &inputs,
        &options(Reference::Genmo),
    )
    .expect("run");
    let hidden = &out["last_hidden_state"];
    let mask: Vec<f32> = data["attention_mask"]
        .flatten_all()
        .and_then(|m| m.to_vec1())
        .expect("mask");
    let valid = mask.iter().filter(|m| **m > 0.5).count();
    assert!(valid > 0 && valid < mask.len(), "the fixture pads");
    let want = data["last_hidden_state"]
        .i((.., ..valid, ..))
        .expect("slice");
    let diff = max_diff(&hidden.i((.., ..valid, ..)).expect("slice"), &want);
    assert!(diff <= 1e-4, "max |Δ| {diff}");
    let rest = hidden
        .i((.., valid.., ..))
        .and_then(|t| t.abs())
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("rest");
    assert_eq!(rest, 0.0);
}

#[test]
fn a_missing_input_or_a_gapped_text_mask_is_named() {
    let error = run(
        &fixtures().join("dit/model"),
        Component::Transformer,
        &HashMap::new(),
        &options(Reference::Genmo),
    )
    .expect_err("no inputs")
    .to_string();
    assert!(
        error.contains("missing input `hidden_states`")
            && error
                .contains("hidden_states, encoder_hidden_states, timestep, encoder_attention_mask"),
        "{error}"
    );
    let ids = Tensor::new(&[[5i64, 6, 7]], &Device::Cpu).expect("ids");
    let mask = Tensor::new(&[[1f32, 0.0, 1.0]], &Device::Cpu).expect("mask");
    let inputs = HashMap::from([
        ("input_ids".to_owned(), ids),
        ("attention_mask".to_owned(), mask),
    ]);
    let error = run(
        &fixtures().join("t5"),
        Component::Text,
        &inputs,
        &options(Reference::Genmo),
    )
    .expect_err("gapped")
    .to_string();
    assert!(error.contains("not a prefix"), "{error}");
}
