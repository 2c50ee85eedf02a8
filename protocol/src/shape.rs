//! `JobShape`: the sizes that set a job's cost (frames, latents, tokens).

use serde::{Deserialize, Serialize};

/// Temporal compression of Mochi's VAE: 6 video frames per latent frame (plus the first).
pub const TEMPORAL_COMPRESSION: u32 = 6;
/// Spatial compression of Mochi's VAE.
pub const SPATIAL_COMPRESSION: u32 = 8;
/// Patch size of the DiT's patch embedding (2×2 latent pixels per token).
pub const PATCH_SIZE: u32 = 2;

/// The shape of a validated job, from which cost and memory are predicted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JobShape {
    /// Video frames, already of the form 6k+1.
    pub num_frames: u32,
    /// Output frames per second.
    pub fps: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Latent frames: `(num_frames - 1) / 6 + 1`.
    pub latent_frames: u32,
    /// Latent height: `height / 8`.
    pub latent_height: u32,
    /// Latent width: `width / 8`.
    pub latent_width: u32,
    /// Visual tokens the DiT attends over: `latent_frames · (height/16) · (width/16)`.
    pub num_tokens: u64,
    /// Denoising steps.
    pub steps: u32,
    /// Whether classifier-free guidance runs (a batch of two per step).
    pub cfg: bool,
}

impl JobShape {
    /// The half-octave of its visual tokens, `floor(2 · log2 N)`: the shape bucket the cost
    /// model learns per and the node's step-time metric is labelled by.
    pub fn token_bucket(&self) -> u32 {
        ((self.num_tokens.max(1) as f64).log2() * 2.0).floor() as u32
    }

    /// Computes the shape; `num_frames` must already be `6k+1` and the dimensions multiples of 16.
    pub fn new(num_frames: u32, fps: u32, width: u32, height: u32, steps: u32, cfg: bool) -> Self {
        let latent_frames = (num_frames.saturating_sub(1)) / TEMPORAL_COMPRESSION + 1;
        let latent_height = height / SPATIAL_COMPRESSION;
        let latent_width = width / SPATIAL_COMPRESSION;
        let num_tokens = u64::from(latent_frames)
            * u64::from(latent_height / PATCH_SIZE)
            * u64::from(latent_width / PATCH_SIZE);
        Self {
            num_frames,
            fps,
            width,
            height,
            latent_frames,
            latent_height,
            latent_width,
            num_tokens,
            steps,
            cfg,
        }
    }

    /// The video's length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        u64::from(self.num_frames) * 1000 / u64::from(self.fps.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mochi_reference_shape_has_44520_tokens() {
        let shape = JobShape::new(163, 30, 848, 480, 64, true);
        assert_eq!(shape.latent_frames, 28);
        assert_eq!((shape.latent_height, shape.latent_width), (60, 106));
        assert_eq!(shape.num_tokens, 44_520);
    }

    #[test]
    fn single_frame_has_one_latent_frame() {
        let shape = JobShape::new(1, 30, 64, 64, 1, false);
        assert_eq!(shape.latent_frames, 1);
        assert_eq!(shape.num_tokens, 16);
    }
}
