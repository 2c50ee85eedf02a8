//! The release's two layouts at a reduced width (`model_dir::reduced`: every key name of
//! `genmo/mochi-1-preview`, all 48 blocks, tiny tensors) load through the same loaders as
//! the full release and run: diffusers' sharded f32 files and its `bf16` variant, genmo's
//! `dit.safetensors`, `decoder.safetensors` and T5 folder.

use candle_core::{DType, Device, Tensor};
use mochi_model::model::AsymmDiT;
use mochi_model::model::vae::VaeDecoder;
use mochi_model::model_dir::reduced::{self, Layout};
use mochi_model::pipeline::text_encoder::TextEncoder;

fn finite_and_nonzero(t: &Tensor) -> bool {
    let sum = t
        .abs()
        .and_then(|a| a.sum_all())
        .and_then(|s| s.to_dtype(DType::F32))
        .and_then(|s| s.to_scalar::<f32>())
        .expect("sum");
    sum.is_finite() && sum > 0.0
}

fn runs(dir: &std::path::Path, dtype: DType) {
    let device = Device::Cpu;
    let dit = AsymmDiT::from_model_dir(dir, dtype, &device).expect("transformer loads");
    assert_eq!(dit.config(), &reduced::dit_config());
    let mut t5 = TextEncoder::from_model_dir(dir, &device).expect("text path loads");
    let text = t5.encode("a red fox in the snow").expect("encode");
    assert_eq!(text.features.dims(), &[1, 256, 16]);
    let latents = Tensor::randn(0f32, 1.0, (1, 12, 2, 4, 6), &device).expect("latents");
    let t = Tensor::new(&[500f32], &device).expect("t");
    let out = dit
        .forward(&latents, &t, &text.features, &text.mask)
        .expect("forward");
    assert_eq!(out.dims(), &[1, 12, 2, 4, 6]);
    assert!(finite_and_nonzero(&out));

    let vae = VaeDecoder::from_model_dir(dir, DType::F32, &device).expect("decoder loads");
    assert_eq!(vae.config(), &reduced::vae_config());
    let video = vae
        .decode(&Tensor::randn(0f32, 1.0, (1, 12, 2, 2, 3), &device).expect("z"))
        .expect("decode");
    assert_eq!(video.dims(), &[1, 3, 7, 16, 24]);
    assert!(finite_and_nonzero(&video));
}

#[test]
fn the_diffusers_layout_loads_in_f32_and_from_its_bf16_variant() {
    let dir = tempfile::tempdir().expect("tmp");
    reduced::write(dir.path(), Layout::Diffusers).expect("write");
    runs(dir.path(), DType::F32);
    runs(dir.path(), DType::BF16);
}

#[test]
fn the_genmo_layout_loads_from_its_files_and_t5_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    reduced::write(dir.path(), Layout::Genmo).expect("write");
    assert!(dir.path().join("dit.safetensors").is_file());
    assert!(!dir.path().join("transformer").exists());
    runs(dir.path(), DType::F32);
}
