//! The prior cost of a job: peak device memory and GPU seconds per GPU class, from the terms
//! that drive Mochi's cost. The coordinator's cost model corrects it with what finished jobs
//! took; the simulated GPU backend sleeps for it, so that a load test's slots take what the
//! scheduler predicts (`docs/loadtest.md`).
//!
//! * DiT work per denoising step and CFG branch: linear layers `2 · P · N` FLOPs (P ≈ 10.0e9
//!   parameters, N visual tokens) plus joint attention `4 · (N + L)² · D · layers` FLOPs
//!   (D = 3072, 48 layers, L = 256 text tokens); CFG doubles it. Source: the model spec's
//!   dimensions (`docs/scheduling.md` § Cost model).
//! * VAE decode: `frames × pixels` times a per-pixel cost.
//! * Peak device memory comes from [`crate::memory`].
//!
//! GPU classes turn FLOPs into seconds with their dense bf16 peak and an efficiency fitted to
//! published single-GPU timings; the `cpu` class runs the tiny model, timed by our own CPU
//! benchmarks (`docs/benchmarks.md`).

mod class;

pub use class::{CLASSES, ClassSpec, GpuClass};

use crate::JobShape;
use crate::memory::{self, Model};

/// The full Mochi-1 model's dimensions and the figures the model derives from them.
mod full {
    /// DiT parameters (≈ 207.6 M per block × 48).
    pub const PARAMS: f64 = 10.0e9;
    /// Visual hidden width.
    pub const WIDTH: f64 = 3072.0;
    /// Transformer blocks.
    pub const LAYERS: f64 = 48.0;
    /// Text tokens the joint attention sees (T5 max length).
    pub const TEXT_TOKENS: f64 = 256.0;
    /// VAE decoder FLOPs per output pixel (conv3d 3×3×3 at 128/256/512 channels summed over
    /// the up blocks).
    pub const VAE_FLOPS_PER_PIXEL: f64 = 1.5e7;
    /// Fraction of the bf16 peak the VAE's convolutions reach (f32, im2col).
    pub const VAE_EFFICIENCY: f64 = 0.1;
    /// Per job: T5 encode, MP4 encode, store (seconds).
    pub const OVERHEAD_S: f64 = 3.0;
}

/// The tiny model on a CPU, from our own benchmarks (`docs/benchmarks.md`): a tiny DiT
/// forward of 48 tokens takes ~1 ms, the tiny VAE decodes ~16 µs per output pixel.
mod tiny {
    pub const FORWARD_FIXED_S: f64 = 1.0e-3;
    pub const FORWARD_S_PER_TOKEN: f64 = 2.0e-6;
    pub const VAE_S_PER_PIXEL: f64 = 1.64e-5;
    pub const OVERHEAD_S: f64 = 0.2;
}

/// A job's predicted cost on one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Peak device memory, bytes (resident weights included).
    pub peak_bytes: u64,
    /// GPU seconds from start to stored video.
    pub gpu_seconds: f64,
    /// Seconds of one denoising step (both CFG branches).
    pub step_seconds: f64,
    /// Seconds of the DiT phase (all steps): an out-of-memory in the VAE comes after it.
    pub denoise_seconds: f64,
}

/// The prior (uncorrected) estimate of `shape` on `class`.
pub fn prior(shape: &JobShape, class: GpuClass) -> Estimate {
    let branches = if shape.cfg { 2.0 } else { 1.0 };
    let n = shape.num_tokens as f64;
    let steps = f64::from(shape.steps);
    let pixel_frames =
        f64::from(shape.num_frames) * f64::from(shape.width) * f64::from(shape.height);
    if class == GpuClass::Cpu {
        let step = branches * (tiny::FORWARD_FIXED_S + tiny::FORWARD_S_PER_TOKEN * n);
        let denoise = step * steps;
        return Estimate {
            peak_bytes: memory::peak_bytes(shape, Model::Tiny),
            gpu_seconds: tiny::OVERHEAD_S + denoise + pixel_frames * tiny::VAE_S_PER_PIXEL,
            step_seconds: step,
            denoise_seconds: denoise,
        };
    }
    let spec = class.spec();
    let s = n + full::TEXT_TOKENS;
    let linear = 2.0 * full::PARAMS * n;
    let attention = 4.0 * s * s * full::WIDTH * full::LAYERS;
    let flops_per_step = branches * (linear + attention);
    let step = flops_per_step / (spec.peak_flops * spec.efficiency);
    let denoise = step * steps;
    let vae = pixel_frames * full::VAE_FLOPS_PER_PIXEL / (spec.peak_flops * full::VAE_EFFICIENCY);
    Estimate {
        peak_bytes: memory::peak_bytes(shape, Model::Full),
        gpu_seconds: full::OVERHEAD_S + denoise + vae,
        step_seconds: step,
        denoise_seconds: denoise,
    }
}

/// Seconds a job spends outside the DiT and the VAE on `class` (text encode, MP4, store).
pub fn overhead_seconds(class: GpuClass) -> f64 {
    if class == GpuClass::Cpu {
        tiny::OVERHEAD_S
    } else {
        full::OVERHEAD_S
    }
}
