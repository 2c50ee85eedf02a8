//! Full tiny pipeline golden (spec §6.3): two denoising steps with CFG, denormalisation
//! and decode, against diffusers' own `MochiPipeline.__call__` run on the same tiny DiT
//! and VAE with the same initial latents and text embeddings.
//!
//! The fixture comes from `tools/make_pipeline_fixtures.py`; the weights are the DiT and
//! VAE fixtures' own. Everything compares in f32 with max |Δ| ≤ 1e-4. No Python is
//! needed here.

#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mochi_model::model::AsymmDiT;
use mochi_model::model::vae::tiling::TileConfig;
use mochi_model::model::vae::{FrameDrop, VaeDecoder};
use mochi_model::pipeline::sampling::{TextConditioning, denoise, dit_to_vae};
use mochi_model::pipeline::scheduler::{DEFAULT_THRESHOLD_NOISE, linear_quadratic};
use mochi_model::pipeline::vae::{decode_latents, decode_latents_tiled, to_rgb_frames};

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("pipeline/run.safetensors"), &Device::Cpu)
        .expect("fixture loads")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max")
}

fn check(label: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{label}: shape mismatch");
    let got = got.to_dtype(DType::F32).expect("f32");
    let want = want.to_dtype(DType::F32).expect("f32");
    let abs = max_abs(&(&got - &want).expect("sub"));
    let rel = abs / max_abs(&want).max(1e-12);
    println!("{label:<30} max|Δ| {abs:.3e}  rel {rel:.3e}");
    assert!(
        abs <= TOLERANCE,
        "{label}: max |Δ| {abs} > {TOLERANCE} (rel {rel})"
    );
    abs
}

fn conditioning(data: &HashMap<String, Tensor>, branch: &str) -> TextConditioning {
    TextConditioning {
        features: data[&format!("{branch}_text")].clone(),
        mask: data[&format!("{branch}_mask")].clone(),
    }
}

/// Runs our denoising loop on the fixture's inputs; returns the latents after each step.
fn denoise_fixture(data: &HashMap<String, Tensor>) -> Vec<Tensor> {
    let model = AsymmDiT::from_model_dir(&fixtures().join("dit/model"), DType::F32, &Device::Cpu)
        .expect("DiT loads");
    let sigmas = linear_quadratic(2, DEFAULT_THRESHOLD_NOISE, None);
    let want_sigmas = data["sigmas"].to_vec1::<f64>().expect("sigmas");
    assert_eq!(sigmas.len(), want_sigmas.len());
    for (a, b) in sigmas.iter().zip(&want_sigmas) {
        assert!((a - b).abs() < 1e-12, "sigma {a} vs pipeline {b}");
    }
    let guidance = data["guidance"].to_vec1::<f64>().expect("guidance");
    let mut steps = Vec::new();
    let last = denoise(
        &model,
        &data["in_latents"],
        &conditioning(data, "cond"),
        Some(&conditioning(data, "uncond")),
        &sigmas,
        &guidance,
        |info| {
            steps.push(info.latents.clone());
            ControlFlow::Continue(())
        },
    )
    .expect("denoise");
    assert_eq!(steps.len(), 2);
    assert_eq!(max_abs(&(&last - &steps[1]).expect("sub")), 0.0);
    steps
}

fn vae(drop: FrameDrop) -> VaeDecoder {
    VaeDecoder::from_model_dir(&fixtures().join("vae/model"), DType::F32, &Device::Cpu)
        .expect("VAE loads")
        .with_frame_drop(drop)
}

#[test]
fn two_step_cfg_pipeline_matches_diffusers_mochi_pipeline() {
    let data = load();
    let steps = denoise_fixture(&data);
    for (i, step) in steps.iter().enumerate() {
        check(
            &format!("step {i} latents"),
            step,
            &data[&format!("step{i}_latents")],
        );
    }
    let z = dit_to_vae(&steps[1]).expect("denormalise");
    check("VAE-scale latents", &z, &data["vae_latents"]);

    // The pipeline decodes with diffusers' frame dropping and postprocesses to [0, 1].
    let video = vae(FrameDrop::Diffusers).decode(&z).expect("decode");
    check(
        "video (diffusers decode)",
        &video,
        &data["out_video_diffusers"],
    );
    let frames = ((video * 0.5).expect("scale") + 0.5)
        .and_then(|t| t.clamp(0f32, 1f32))
        .and_then(|t| t.permute((0, 2, 1, 3, 4)))
        .expect("postprocess");
    check("pipeline frames [0, 1]", &frames, &data["out_frames"]);

    // Our default (genmo frame dropping) on the same latents, streamed as in serving.
    let genmo = vae(FrameDrop::Genmo);
    let video = genmo.decode(&z).expect("decode");
    check("video (genmo decode)", &video, &data["out_video_genmo"]);
    let streamed = genmo.decode_chunked(&z, 1).expect("stream");
    assert_eq!(max_abs(&(&streamed - &video).expect("sub")), 0.0);
}

#[test]
fn pipeline_rgb_frames_match_reference_to_one_level() {
    let data = load();
    let steps = denoise_fixture(&data);
    let rgb = decode_latents(&vae(FrameDrop::Genmo), &steps[1], 1).expect("rgb");
    let reference = to_rgb_frames(&data["out_video_genmo"]).expect("reference rgb");
    assert_eq!((rgb.width, rgb.height, rgb.frames.len()), (48, 32, 7));
    let mut off_by_one = 0usize;
    for (a, b) in rgb
        .frames
        .iter()
        .flatten()
        .zip(reference.frames.iter().flatten())
    {
        let d = (i16::from(*a) - i16::from(*b)).abs();
        assert!(d <= 1, "pixel differs by {d}");
        off_by_one += usize::from(d == 1);
    }
    // One tile covering the 4x6 latent frame gives the same bytes through the tiled path.
    let tiled = decode_latents_tiled(
        &vae(FrameDrop::Genmo),
        &steps[1],
        &TileConfig::diffusers_default(),
        1,
    )
    .expect("tiled rgb");
    assert_eq!(tiled, rgb);
    // Truncation can flip a value sitting on a level boundary; nearly all must agree.
    let total = rgb.frames.len() * rgb.frames[0].len();
    println!("u8 frames: {off_by_one} of {total} values differ by one level");
    assert!(off_by_one * 100 < total);
}
