//! The Mochi-1 AsymmDiT transformer in candle.
//!
//! Mirrors diffusers' `MochiTransformer3DModel` (huggingface/diffusers@58eb52c0,
//! `src/diffusers/models/transformers/transformer_mochi.py`) and genmo's
//! `AsymmDiTJoint` (genmoai/mochi@0c86aebf); see `docs/model.md` and
//! `docs/mochi-model-spec.md` §2. All norm, modulation, gating and RoPE math runs in f32;
//! matmul weights may be stored in bf16. One file per upstream block family (`embeddings`,
//! `attention`, `blocks`); every checkpoint key is a constant in [`keys`], with both
//! schemes' names and links to the upstream files.

pub mod attention;
pub mod blocks;
mod config;
pub mod embeddings;
pub mod fused;
pub mod keys;
pub mod ops;
pub mod random;
pub mod vae;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

pub use attention::TextLayout;
use blocks::{FinalLayer, JointBlock};
pub use config::{Config, contradiction};
use embeddings::{AttentionPool, PatchEmbed, TimestepEmbedder, mixed_rope};
use ops::Linear;
use weights::Weights;

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
    text_layout: TextLayout,
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
                keys::top::CAPTION_PROJ.diffusers,
                config.hidden_size_y,
                config.text_embed_dim,
                true,
            )?,
            patch_embed: PatchEmbed::load(weights, config)?,
            pos_frequencies: weights.get_f32(
                keys::POS_FREQUENCIES,
                &[3, config.num_heads, config.head_dim / 2],
            )?,
            blocks,
            final_layer: FinalLayer::load(weights, config)?,
            text_layout: TextLayout::default(),
        })
    }

    /// Loads config and weights from a model directory (diffusers or genmo layout); the
    /// config comes from `config.json` (checked against the tensor shapes: a field they
    /// contradict is an error naming it and both values), else from the shapes.
    pub fn from_model_dir(model_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let weights = Weights::from_model_dir(model_dir, dtype, device)?;
        let config = match Config::from_model_dir(model_dir)? {
            Some(config) => {
                config.check_against(&weights).map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "the transformer's config.json in {} contradicts the weights: {e}",
                        model_dir.display()
                    ))
                })?;
                config
            }
            None => Config::from_weights(&weights)?,
        };
        Self::load(&weights, &config)
    }

    /// The model with `layout` for the text tokens' attention outputs under a mask that is
    /// not a prefix (default: genmo's, in place; `Packed` follows diffusers).
    pub fn with_text_layout(mut self, layout: TextLayout) -> Self {
        self.text_layout = layout;
        self
    }

    /// How the text tokens' attention outputs are placed.
    pub fn text_layout(&self) -> TextLayout {
        self.text_layout
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
            let (next_x, next_y) = block.forward(&x, &y, &c, &rope, mask, self.text_layout)?;
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
