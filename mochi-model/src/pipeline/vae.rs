//! Decode and postprocess (`docs/mochi-model-spec.md` §1.6): DiT latents → VAE scale →
//! [`VaeDecoder`] → RGB u8 frames. The decoder itself lives in `model::vae`.

use candle_core::{DType, Result, Tensor};

use crate::model::vae::VaeDecoder;
use crate::model::vae::tiling::TileConfig;
use crate::pipeline::sampling::dit_to_vae;

/// Decoded RGB video: `frames.len()` frames of `width · height · 3` bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrames {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// One `width · height · 3` buffer per frame.
    pub frames: Vec<Vec<u8>>,
}

/// Decoder output `(1, 3, F, H, W)` in nominal [−1, 1] → u8 frames: genmo's
/// `clamp((x + 1) / 2, 0, 1) · 255`, truncated.
pub fn to_rgb_frames(video: &Tensor) -> Result<RgbFrames> {
    let (batch, channels, _, height, width) = video.dims5()?;
    if batch != 1 || channels != 3 {
        candle_core::bail!(
            "expected a (1, 3, F, H, W) video, got shape {:?}",
            video.dims()
        );
    }
    let scaled = ((video.to_dtype(DType::F32)? + 1.0)? * 0.5)?.clamp(0f32, 1f32)?;
    let scaled = (scaled * 255.0)?;
    // (1, 3, F, H, W) → (F, H, W, 3).
    let hwc = scaled.get(0)?.permute((1, 2, 3, 0))?.contiguous()?;
    let per_frame = height * width * 3;
    let values: Vec<f32> = hwc.flatten_all()?.to_vec1()?;
    let frames = values
        .chunks(per_frame)
        .map(|chunk| chunk.iter().map(|v| *v as u8).collect())
        .collect();
    Ok(RgbFrames {
        width,
        height,
        frames,
    })
}

/// Denormalises DiT latents `(1, 12, T, H, W)` and decodes them to RGB frames, streaming
/// `chunk` latent frames at a time (0: whole).
pub fn decode_latents(
    decoder: &VaeDecoder,
    dit_latents: &Tensor,
    chunk: usize,
) -> Result<RgbFrames> {
    let z = dit_to_vae(dit_latents)?;
    let video = if chunk == 0 {
        decoder.decode(&z)?
    } else {
        decoder.decode_chunked(&z, chunk)?
    };
    to_rgb_frames(&video)
}

/// [`decode_latents`] in overlapping spatial tiles (diffusers' blend rule, see
/// `model::vae::tiling`), each tile streamed `chunk` latent frames at a time (0: whole
/// tile): activations bounded by the tile, not the frame. Equal to [`decode_latents`]
/// when the frame fits in one tile; otherwise an approximation of it.
pub fn decode_latents_tiled(
    decoder: &VaeDecoder,
    dit_latents: &Tensor,
    tiles: &TileConfig,
    chunk: usize,
) -> Result<RgbFrames> {
    let z = dit_to_vae(dit_latents)?;
    to_rgb_frames(&decoder.decode_tiled(&z, tiles, chunk)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rgb_conversion_clamps_and_truncates() {
        // Pixel values −2, −1, 0, 0.999, 1, 3 in channel 0; channels 1, 2 at 0.
        let mut data = vec![-2f32, -1.0, 0.0, 0.999, 1.0, 3.0];
        data.extend(vec![0f32; 12]);
        let video = Tensor::from_vec(data, (1, 3, 1, 2, 3), &Device::Cpu).expect("video");
        let rgb = to_rgb_frames(&video).expect("rgb");
        assert_eq!((rgb.width, rgb.height, rgb.frames.len()), (3, 2, 1));
        let red: Vec<u8> = rgb.frames[0].iter().step_by(3).copied().collect();
        assert_eq!(red, vec![0, 0, 127, 254, 255, 255]);
        assert!(rgb.frames[0].iter().skip(1).step_by(3).all(|g| *g == 127));
    }
}
