//! The Mochi-1 AsymmDiT transformer in candle.
//!
//! Mirrors diffusers' `MochiTransformer3DModel` (huggingface/diffusers@58eb52c0,
//! `src/diffusers/models/transformers/transformer_mochi.py`) and genmo's
//! `AsymmDiTJoint` (genmoai/mochi@0c86aebf); see `docs/model.md` and
//! `docs/mochi-model-spec.md` §2. All norm, modulation, gating and RoPE math runs in f32;
//! matmul weights may be stored in bf16.

pub mod attention;
pub mod blocks;
pub mod embeddings;
pub mod ops;
pub mod random;
pub mod vae;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

use blocks::{FinalLayer, JointBlock};
use embeddings::{AttentionPool, PatchEmbed, TimestepEmbedder, mixed_rope};
use ops::Linear;
use weights::Weights;

/// AsymmDiT hyperparameters (diffusers `config.json` names in comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Spatial patch size (`patch_size`).
    pub patch_size: usize,
    /// Latent channels in (`in_channels`).
    pub in_channels: usize,
    /// Latent channels out (`out_channels`, defaults to `in_channels`).
    pub out_channels: usize,
    /// Attention heads (`num_attention_heads`).
    pub num_heads: usize,
    /// Head width (`attention_head_dim`).
    pub head_dim: usize,
    /// Transformer blocks (`num_layers`).
    pub num_layers: usize,
    /// Text stream width (`pooled_projection_dim`).
    pub hidden_size_y: usize,
    /// T5 feature width (`text_embed_dim`).
    pub text_embed_dim: usize,
    /// Sinusoidal timestep features (`time_embed_dim`).
    pub time_embed_dim: usize,
    /// Heads of the caption attention pool (fixed at 8 upstream).
    pub pool_heads: usize,
    /// Maximum text tokens (`max_sequence_length`).
    pub max_sequence_length: usize,
}

#[derive(Deserialize)]
#[serde(default)]
struct DiffusersConfig {
    patch_size: usize,
    in_channels: usize,
    out_channels: Option<usize>,
    num_attention_heads: usize,
    attention_head_dim: usize,
    num_layers: usize,
    pooled_projection_dim: usize,
    text_embed_dim: usize,
    time_embed_dim: usize,
    max_sequence_length: usize,
}

impl Default for DiffusersConfig {
    fn default() -> Self {
        let c = Config::mochi_1_preview();
        Self {
            patch_size: c.patch_size,
            in_channels: c.in_channels,
            out_channels: None,
            num_attention_heads: c.num_heads,
            attention_head_dim: c.head_dim,
            num_layers: c.num_layers,
            pooled_projection_dim: c.hidden_size_y,
            text_embed_dim: c.text_embed_dim,
            time_embed_dim: c.time_embed_dim,
            max_sequence_length: c.max_sequence_length,
        }
    }
}

impl Config {
    /// The released 10B model (`genmo/mochi-1-preview`).
    pub fn mochi_1_preview() -> Self {
        Self {
            patch_size: 2,
            in_channels: 12,
            out_channels: 12,
            num_heads: 24,
            head_dim: 128,
            num_layers: 48,
            hidden_size_y: 1536,
            text_embed_dim: 4096,
            time_embed_dim: 256,
            pool_heads: 8,
            max_sequence_length: 256,
        }
    }

    /// The tiny golden-fixture model (spec §6.1): 2 heads × 8, 2 layers, text 32 → 24.
    pub fn tiny() -> Self {
        Self {
            patch_size: 2,
            in_channels: 12,
            out_channels: 12,
            num_heads: 2,
            head_dim: 8,
            num_layers: 2,
            hidden_size_y: 24,
            text_embed_dim: 32,
            time_embed_dim: 8,
            pool_heads: 8,
            max_sequence_length: 16,
        }
    }

    /// Parses a diffusers `transformer/config.json` text (unknown keys ignored).
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        let raw: DiffusersConfig = serde_json::from_str(text)
            .map_err(|e| candle_core::Error::Msg(format!("invalid transformer config: {e}")))?;
        Ok(Self {
            patch_size: raw.patch_size,
            in_channels: raw.in_channels,
            out_channels: raw.out_channels.unwrap_or(raw.in_channels),
            num_heads: raw.num_attention_heads,
            head_dim: raw.attention_head_dim,
            num_layers: raw.num_layers,
            hidden_size_y: raw.pooled_projection_dim,
            text_embed_dim: raw.text_embed_dim,
            time_embed_dim: raw.time_embed_dim,
            pool_heads: 8,
            max_sequence_length: raw.max_sequence_length,
        })
    }

    /// Reads `transformer/config.json` (or `config.json`) under `model_dir`; `None` if
    /// there is neither (genmo's `dit.safetensors` ships without one).
    pub fn from_model_dir(model_dir: &Path) -> Result<Option<Self>> {
        for path in [
            model_dir.join("transformer").join("config.json"),
            model_dir.join("config.json"),
        ] {
            if path.is_file() {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    candle_core::Error::Msg(format!("cannot read {}: {e}", path.display()))
                })?;
                return Self::from_diffusers_json(&text).map(Some);
            }
        }
        Ok(None)
    }

    /// Derives the configuration from the tensor shapes of a checkpoint (for checkpoints
    /// without a `config.json`); the caption pool keeps upstream's 8 heads and 256 tokens.
    pub fn from_weights(weights: &Weights) -> Result<Self> {
        let pos = weights.shape("pos_frequencies")?;
        let patch = weights.shape("patch_embed.proj.weight")?;
        let caption = weights.shape("time_embed.caption_proj.weight")?;
        let time = weights.shape("time_embed.timestep_embedder.linear_1.weight")?;
        let proj_out = weights.shape("proj_out.weight")?;
        let (&[3, heads, half], &[_, in_channels, patch_size, _], &[dy, dt], &[_, dtime]) = (
            pos.as_slice(),
            patch.as_slice(),
            caption.as_slice(),
            time.as_slice(),
        ) else {
            candle_core::bail!(
                "cannot derive the config: pos_frequencies {pos:?}, patch_embed {patch:?}, caption_proj {caption:?}, timestep_embedder {time:?}"
            );
        };
        let out_features = proj_out.first().copied().unwrap_or(0);
        Ok(Self {
            patch_size,
            in_channels,
            out_channels: out_features / (patch_size * patch_size).max(1),
            num_heads: heads,
            head_dim: 2 * half,
            num_layers: weights.count_blocks(),
            hidden_size_y: dy,
            text_embed_dim: dt,
            time_embed_dim: dtime,
            pool_heads: 8,
            max_sequence_length: 256,
        })
    }

    /// Visual stream width (`heads × head_dim`).
    pub fn hidden_size_x(&self) -> usize {
        self.num_heads * self.head_dim
    }
}

/// Named intermediate tensors recorded by [`AsymmDiT::forward_with_taps`].
pub type Taps = Vec<(String, Tensor)>;

/// The AsymmDiT denoiser.
#[derive(Debug, Clone)]
pub struct AsymmDiT {
    config: Config,
    time_embed: TimestepEmbedder,
    pooler: AttentionPool,
    caption_proj: Linear,
    patch_embed: PatchEmbed,
    pos_frequencies: Tensor,
    blocks: Vec<JointBlock>,
    final_layer: FinalLayer,
}

impl AsymmDiT {
    /// Builds the model from loaded weights, checking every tensor's shape.
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let found = weights.count_blocks();
        if found != config.num_layers {
            candle_core::bail!(
                "checkpoint has {found} transformer blocks, config says {}",
                config.num_layers
            );
        }
        let blocks = (0..config.num_layers)
            .map(|i| JointBlock::load(weights, config, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            time_embed: TimestepEmbedder::load(weights, config)?,
            pooler: AttentionPool::load(weights, config)?,
            caption_proj: embeddings::load_linear(
                weights,
                "time_embed.caption_proj",
                config.hidden_size_y,
                config.text_embed_dim,
                true,
            )?,
            patch_embed: PatchEmbed::load(weights, config)?,
            pos_frequencies: weights.get_f32(
                "pos_frequencies",
                &[3, config.num_heads, config.head_dim / 2],
            )?,
            blocks,
            final_layer: FinalLayer::load(weights, config)?,
        })
    }

    /// Loads config and weights from a model directory (diffusers or genmo layout); the
    /// config comes from `config.json`, else from the tensor shapes.
    pub fn from_model_dir(model_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let weights = Weights::from_model_dir(model_dir, dtype, device)?;
        let config = match Config::from_model_dir(model_dir)? {
            Some(config) => config,
            None => Config::from_weights(&weights)?,
        };
        Self::load(&weights, &config)
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Predicts the flow `v ≈ x0 − ε` for latents `(B, C, T, H, W)`, timesteps `(B,)`
    /// (`1000·(1−σ)`), T5 features `(B, L, Dt)` and text mask `(B, L)`. Returns f32.
    pub fn forward(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        text: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        self.run(latents, timesteps, text, mask, None)
    }

    /// [`AsymmDiT::forward`], also returning the golden-fixture taps.
    pub fn forward_with_taps(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        text: &Tensor,
        mask: &Tensor,
    ) -> Result<(Tensor, Taps)> {
        let mut taps = Taps::new();
        let out = self.run(latents, timesteps, text, mask, Some(&mut taps))?;
        Ok((out, taps))
    }

    fn run(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        text: &Tensor,
        mask: &Tensor,
        mut taps: Option<&mut Taps>,
    ) -> Result<Tensor> {
        let mut tap = |name: &str, t: &Tensor| {
            if let Some(taps) = taps.as_deref_mut() {
                taps.push((name.to_string(), t.clone()));
            }
        };
        let (batch, _, frames, height, width) = latents.dims5()?;
        let p = self.config.patch_size;
        if height % p != 0 || width % p != 0 {
            candle_core::bail!("latent {height}x{width} is not divisible by the patch size {p}");
        }
        let text = text.to_dtype(DType::F32)?;
        let temb = self.time_embed.forward(timesteps)?;
        let pooled = self.pooler.forward(&text, mask)?;
        let c = (&temb + &pooled)?;
        let mut y = self.caption_proj.forward(&text)?;
        let mut x = self.patch_embed.forward(latents)?;
        let rope = mixed_rope(&self.pos_frequencies, frames, height / p, width / p)?;
        tap("temb", &temb);
        tap("pooled", &pooled);
        tap("conditioning", &c);
        tap("caption", &y);
        tap("patch", &x);
        tap("rope_cos", &rope.0);
        tap("rope_sin", &rope.1);
        for (i, block) in self.blocks.iter().enumerate() {
            let (next_x, next_y) = block.forward(&x, &y, &c, &rope, mask)?;
            x = next_x;
            y = next_y;
            tap(&format!("block{i}_x"), &x);
            tap(&format!("block{i}_y"), &y);
        }
        let normed = self.final_layer.norm(&x, &c)?;
        tap("norm_out", &normed);
        let patches = self.final_layer.project(&normed)?;
        let out = unpatchify(&patches, batch, frames, height, width, p)?;
        tap("output", &out);
        Ok(out)
    }
}

/// `(B, N, p·p·C)` with features ordered (p_row, p_col, c) → `(B, C, T, H, W)`.
pub fn unpatchify(
    patches: &Tensor,
    batch: usize,
    frames: usize,
    height: usize,
    width: usize,
    p: usize,
) -> Result<Tensor> {
    let features = patches.dim(2)?;
    let channels = features / (p * p);
    patches
        .reshape((batch * frames, height / p, width / p, p, p, channels))?
        .permute((0, 5, 1, 3, 2, 4))?
        .reshape((batch, frames, channels, height, width))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_diffusers_config_and_defaults_out_channels() {
        let text = r#"{"_class_name": "MochiTransformer3DModel", "num_layers": 2,
            "num_attention_heads": 2, "attention_head_dim": 8, "pooled_projection_dim": 24,
            "text_embed_dim": 32, "time_embed_dim": 8, "max_sequence_length": 16,
            "out_channels": null}"#;
        let config = Config::from_diffusers_json(text).expect("config");
        assert_eq!(config, Config::tiny());
    }

    #[test]
    fn official_preset_matches_the_release() {
        let config = Config::mochi_1_preview();
        assert_eq!(config.hidden_size_x(), 3072);
        assert_eq!(config.hidden_size_y, 1536);
        assert_eq!(config.num_layers, 48);
    }

    #[test]
    fn unpatchify_places_features_row_column_channel() {
        // One frame, 2x2 latent, 1 patch, 2 channels: feature index = p1*4 + p2*2 + c.
        let data: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let patches = Tensor::from_vec(data, (1, 1, 8), &Device::Cpu).expect("tensor");
        let out = unpatchify(&patches, 1, 1, 2, 2, 2).expect("unpatchify");
        let values = out
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        // out[c, 0, row, col] = feature row*4 + col*2 + c.
        assert_eq!(values, vec![0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
    }
}
