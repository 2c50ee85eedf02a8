//! Device memory accounting for the slot reports that heartbeats carry.
//!
//! On the CPU (and for the simulated backend) a slot's memory is the configured
//! `memory_bytes_per_slot`; what the backend keeps resident (model weights) and what a
//! running job needs (estimated from its shape) are subtracted from it. Real device
//! queries (CUDA `mem_get_info`) come with the Mochi backend.

use protocol::JobShape;

/// Latent channels of Mochi's VAE.
const LATENT_CHANNELS: u64 = 12;
/// Latent-sized f32 tensors alive during sampling per CFG branch (latent, velocity, scratch).
const LATENT_COPIES: u64 = 3;
/// Activation bytes per visual token per CFG branch (hidden width 3072, bf16, ~8 live tensors).
const ACTIVATION_BYTES_PER_TOKEN: u64 = 3072 * 2 * 8;
/// Bytes per decoded pixel kept while encoding (f32 RGB from the VAE plus the RGB8 frame).
const DECODED_BYTES_PER_PIXEL: u64 = 3 * 4 + 3;

/// The memory of one slot's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    total_bytes: u64,
    resident_bytes: u64,
}

impl DeviceMemory {
    /// A device of `total_bytes` of which the backend keeps `resident_bytes` loaded.
    pub fn new(total_bytes: u64, resident_bytes: u64) -> Self {
        Self {
            total_bytes,
            resident_bytes: resident_bytes.min(total_bytes),
        }
    }

    /// Device memory in all, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Memory free while `running` runs (or while idle), bytes; never below zero.
    pub fn free_bytes(&self, running: Option<&JobShape>) -> u64 {
        let used = self
            .resident_bytes
            .saturating_add(running.map_or(0, job_bytes));
        self.total_bytes.saturating_sub(used)
    }
}

/// Estimated working memory of one job beyond the resident model, bytes.
pub fn job_bytes(shape: &JobShape) -> u64 {
    let branches: u64 = if shape.cfg { 2 } else { 1 };
    let latent_elements = LATENT_CHANNELS
        * u64::from(shape.latent_frames)
        * u64::from(shape.latent_height)
        * u64::from(shape.latent_width);
    let latents = latent_elements * 4 * LATENT_COPIES * branches;
    let activations = shape
        .num_tokens
        .saturating_mul(ACTIVATION_BYTES_PER_TOKEN)
        .saturating_mul(branches);
    let pixels = u64::from(shape.num_frames) * u64::from(shape.width) * u64::from(shape.height);
    let decoded = pixels.saturating_mul(DECODED_BYTES_PER_PIXEL);
    latents.saturating_add(activations).saturating_add(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(frames: u32, cfg: bool) -> JobShape {
        JobShape::new(frames, 30, 848, 480, 64, cfg)
    }

    #[test]
    fn idle_device_has_everything_but_the_resident_model_free() {
        let memory = DeviceMemory::new(80 << 30, 20 << 30);
        assert_eq!(memory.total_bytes(), 80 << 30);
        assert_eq!(memory.free_bytes(None), 60 << 30);
    }

    #[test]
    fn a_running_job_takes_memory_and_longer_jobs_take_more() {
        let memory = DeviceMemory::new(80 << 30, 0);
        let short = memory.free_bytes(Some(&shape(31, true)));
        let long = memory.free_bytes(Some(&shape(163, true)));
        assert!(short < 80 << 30);
        assert!(long < short);
        assert!(job_bytes(&shape(31, true)) > job_bytes(&shape(31, false)));
    }

    #[test]
    fn free_memory_never_underflows() {
        let memory = DeviceMemory::new(1 << 20, 2 << 20);
        assert_eq!(memory.free_bytes(None), 0);
        assert_eq!(memory.free_bytes(Some(&shape(163, true))), 0);
    }
}
