//! Benchmark of one AsymmDiT forward (CFG batch of two: uncond with no text, cond with
//! all text tokens valid), i.e. one denoising step, on weights written by
//! `tools/bench_dit.py` or on a random checkpoint built on the device.
//!
//! `RAYON_NUM_THREADS=2 cargo run -p mochi-model --example dit_bench -- MODEL FRAMES HEIGHT WIDTH TEXT_TOKENS [REPS] [bf16] [cuda]`
//!
//! MODEL is a model directory, or `random:LAYERS` for the released width (3072/1536,
//! 24 heads) with LAYERS blocks and random weights (`random:48` = the 10B model).
//! FRAMES/HEIGHT/WIDTH are latent sizes (848×480, 31 frames = 6 60 106). `cuda` (only in
//! a `--features cuda` build, see `tools/build_cuda.sh`) runs on GPU 0.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use mochi_model::model::random::random_checkpoint;
use mochi_model::model::weights::Weights;
use mochi_model::model::{AsymmDiT, Config};

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: dit_bench MODEL FRAMES HEIGHT WIDTH TEXT_TOKENS [REPS] [bf16] [cuda]");
        std::process::exit(2);
    }
    let number = |i: usize| -> usize {
        args[i]
            .parse()
            .unwrap_or_else(|_| panic!("bad number {}", args[i]))
    };
    let (frames, height, width, text_tokens) = (number(1), number(2), number(3), number(4));
    let reps = args.get(5).and_then(|r| r.parse().ok()).unwrap_or(5);
    let flag = |name: &str| args.iter().skip(5).any(|a| a == name);
    let dtype = if flag("bf16") {
        DType::BF16
    } else {
        DType::F32
    };
    let device = if flag("cuda") {
        cuda_device()?
    } else {
        Device::Cpu
    };
    let load_start = Instant::now();
    let model = match args[0].strip_prefix("random:") {
        Some(layers) => {
            let config = Config {
                num_layers: layers
                    .parse()
                    .unwrap_or_else(|_| panic!("bad layer count {layers}")),
                ..Config::mochi_1_preview()
            };
            let tensors = random_checkpoint(&config, dtype, &device)?;
            AsymmDiT::load(&Weights::from_tensors(tensors, dtype, &device), &config)?
        }
        None => AsymmDiT::from_model_dir(&PathBuf::from(&args[0]), dtype, &device)?,
    };
    println!(
        "model {} layers ready in {:.1} s",
        model.config().num_layers,
        load_start.elapsed().as_secs_f64()
    );
    let t5_dim = model.config().text_embed_dim;
    let latents = Tensor::randn(0f32, 1.0, (2, 12, frames, height, width), &device)?;
    let text = Tensor::randn(0f32, 1.0, (2, text_tokens, t5_dim), &device)?;
    let mask = Tensor::cat(
        &[
            Tensor::zeros((1, text_tokens), DType::F32, &device)?,
            Tensor::ones((1, text_tokens), DType::F32, &device)?,
        ],
        0,
    )?;
    let timesteps = Tensor::new(&[500f32, 500.0], &device)?;
    let mut times = Vec::new();
    for _ in 0..=reps {
        let start = Instant::now();
        let out = model.forward(&latents, &timesteps, &text, &mask)?;
        out.sum_all()?.to_scalar::<f32>()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let first = times.remove(0);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = frames * (height / 2) * (width / 2);
    println!(
        "candle {dtype:?} {device:?} threads={} visual_tokens={tokens} median {:.1} ms over {reps} (first {:.1} ms)",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        median * 1e3,
        first * 1e3
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn cuda_device() -> candle_core::Result<Device> {
    Device::new_cuda(0)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> candle_core::Result<Device> {
    Err(candle_core::Error::Msg(
        "built without the `cuda` feature (see tools/build_cuda.sh)".into(),
    ))
}
