//! The cost model: the prior of [`protocol::cost`] (peak device memory and GPU seconds per
//! GPU class from the terms that drive Mochi's cost), corrected per shape bucket by what
//! finished jobs took, plus admission and where an out-of-memory failure happens.
//!
//! The prior lives in `protocol` so that the simulated GPU backend can take exactly the time
//! it predicts; peak memory comes from [`protocol::memory`], which the gateway also uses to
//! refuse an over-sized job at submit: one memory model for all.

mod admission;
mod correction;
pub mod store;

use protocol::JobShape;
use protocol::memory;

pub use admission::{Refusal, admit};
pub use correction::{Bucket, Corrections};
pub use protocol::cost::{CLASSES, ClassSpec, Estimate, GpuClass, overhead_seconds, prior};

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
    let overhead = overhead_seconds(class);
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
