//! The cost model: predicts a job's peak device memory and GPU seconds per GPU class from the
//! terms that drive Mochi's cost, and learns a correction per shape bucket from finished jobs.
//!
//! * DiT work per denoising step and CFG branch: linear layers `2 · P · N` FLOPs (P ≈ 10.0e9
//!   parameters, N visual tokens) plus joint attention `4 · (N + L)² · D · layers` FLOPs
//!   (D = 3072, 48 layers, L = 256 text tokens); CFG doubles it. Source: the model spec's
//!   dimensions (`docs/scheduling.md` § Cost model).
//! * VAE decode: `frames × pixels` times a per-pixel cost.
//! * Peak device memory (resident weights, DiT activations, VAE working set and output
//!   buffer) comes from [`protocol::memory`], which the gateway also uses to refuse an
//!   over-sized job at submit: one memory model for both.
//!
//! GPU classes turn FLOPs into seconds with their dense bf16 peak and an efficiency fitted to
//! published single-GPU timings; the `cpu` class runs the tiny model, timed by our own CPU
//! benchmarks (`docs/benchmarks.md`).

mod admission;
mod class;
mod correction;
pub mod store;

use protocol::JobShape;
use protocol::memory::{self, Model};

pub use admission::{Refusal, admit};
pub use class::{CLASSES, ClassSpec, GpuClass};
pub use correction::{Bucket, Corrections};

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

/// Seconds a job runs on `class` with `memory_bytes` before it fails with out-of-memory, or
/// `None` when it fits. The DiT phase fails at its first step; a job whose DiT fits but
/// whose VAE decode does not fails after every denoising step (the seeds' expensive case),
/// unless `fail_fast` checks the whole peak before the first step.
pub fn failure_seconds(
    shape: &JobShape,
    class: GpuClass,
    memory_bytes: u64,
    fail_fast: bool,
) -> Option<f64> {
    let estimate = prior(shape, class);
    if estimate.peak_bytes <= memory_bytes {
        return None;
    }
    let overhead = if class == GpuClass::Cpu {
        tiny::OVERHEAD_S
    } else {
        full::OVERHEAD_S
    };
    let dit_fits = class != GpuClass::Cpu && memory::dit_phase_fits(shape, memory_bytes);
    if fail_fast || !dit_fits {
        Some(overhead + estimate.step_seconds)
    } else {
        let vae = estimate.gpu_seconds - estimate.denoise_seconds - overhead;
        Some(overhead + estimate.denoise_seconds + 0.5 * vae)
    }
}

/// Memory needed on a GPU class (the same for every GPU class: same model, same precision).
pub fn gpu_peak_bytes(shape: &JobShape) -> u64 {
    prior(shape, GpuClass::H100).peak_bytes
}

/// A job's cost on every class, as the policies see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobCost {
    /// Peak bytes per class index.
    pub peak_bytes: [u64; CLASSES],
    /// Predicted GPU seconds per class index.
    pub seconds: [f64; CLASSES],
    /// Seconds of one step per class index (preemption happens at step boundaries).
    pub step_seconds: [f64; CLASSES],
    /// Denoising steps.
    pub steps: u32,
}

impl JobCost {
    /// Predicted seconds on the reference class (H100), which sets the job's lane.
    pub fn reference_seconds(&self) -> f64 {
        self.seconds[GpuClass::H100.index()]
    }

    /// Whether a slot of `class` with `memory_bytes` holds the job.
    pub fn fits(&self, class: GpuClass, memory_bytes: u64) -> bool {
        self.peak_bytes[class.index()] <= memory_bytes
    }
}

/// The cost model: priors plus learned corrections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostModel {
    /// Corrections per shape bucket.
    pub corrections: Corrections,
}

impl CostModel {
    /// A model with the given corrections.
    pub fn new(corrections: Corrections) -> Self {
        Self { corrections }
    }

    /// The corrected estimate of `shape` on `class`.
    pub fn estimate(&self, shape: &JobShape, class: GpuClass) -> Estimate {
        let mut estimate = prior(shape, class);
        let factor = self.corrections.factor(class, shape);
        estimate.gpu_seconds *= factor;
        estimate.step_seconds *= factor;
        estimate.denoise_seconds *= factor;
        estimate
    }

    /// The job's cost on every class.
    pub fn cost(&self, shape: &JobShape) -> JobCost {
        let mut cost = JobCost {
            peak_bytes: [0; CLASSES],
            seconds: [0.0; CLASSES],
            step_seconds: [0.0; CLASSES],
            steps: shape.steps,
        };
        for class in GpuClass::ALL {
            let estimate = self.estimate(shape, class);
            cost.peak_bytes[class.index()] = estimate.peak_bytes;
            cost.seconds[class.index()] = estimate.gpu_seconds;
            cost.step_seconds[class.index()] = estimate.step_seconds;
        }
        cost
    }

    /// Takes in a finished job's observed GPU seconds; returns the relative error of the
    /// estimate before the update (`observed / predicted − 1`).
    pub fn observe(&mut self, shape: &JobShape, class: GpuClass, observed_s: f64) -> f64 {
        let predicted = self.estimate(shape, class).gpu_seconds;
        let prior_s = prior(shape, class).gpu_seconds;
        self.corrections
            .observe(class, shape, observed_s / prior_s.max(1e-9));
        observed_s / predicted.max(1e-9) - 1.0
    }
}

pub use protocol::memory::gb;

#[cfg(test)]
mod tests;
