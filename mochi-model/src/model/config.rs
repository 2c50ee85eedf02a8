//! The AsymmDiT's hyperparameters: read from a diffusers `transformer/config.json`, or
//! inferred from the weights' shapes when a checkpoint has none.

use std::path::Path;

use candle_core::Result;
use serde::Deserialize;

use super::keys;
use super::weights::Weights;

/// How every component says that its `config.json` and its weights disagree: the field as
/// `config.json` spells it, the configured value, the value the weights' shapes give.
pub fn contradiction(
    field: &str,
    configured: &dyn std::fmt::Debug,
    found: &dyn std::fmt::Debug,
) -> String {
    format!("{field} is {configured:?} in the config, the weights have {found:?}")
}

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
    /// The released 10B model (`genmo/mochi-1-preview`): genmo's `DitModelFactory`
    /// (<https://github.com/genmoai/mochi/blob/0c86aebf/src/genmo/mochi_preview/pipelines.py>:
    /// depth 48, 24 heads, widths 3072 / 1536, T5 4096, 256 tokens), which are also the
    /// defaults of diffusers' `MochiTransformer3DModel.__init__`
    /// (<https://github.com/huggingface/diffusers/blob/58eb52c0/src/diffusers/models/transformers/transformer_mochi.py>).
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
        let pos = weights.shape(keys::POS_FREQUENCIES)?;
        let patch = weights.shape(&keys::top::PATCH_EMBED.tensor("weight"))?;
        let caption = weights.shape(&keys::top::CAPTION_PROJ.tensor("weight"))?;
        let time = weights.shape(&keys::top::TIME_LINEAR_1.tensor("weight"))?;
        let proj_out = weights.shape(&keys::top::PROJ_OUT.tensor("weight"))?;
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

    /// Checks a configuration read from `config.json` against the weights' shapes: the
    /// error names the first field (as `config.json` spells it) they contradict, with the
    /// configured value and the weights'.
    pub fn check_against(&self, weights: &Weights) -> std::result::Result<(), String> {
        // Shapes that cannot be read are the loader's to name (the tensor, its key, its file).
        let Ok(found) = Self::from_weights(weights) else {
            return Ok(());
        };
        let fields = [
            ("patch_size", self.patch_size, found.patch_size),
            ("in_channels", self.in_channels, found.in_channels),
            ("out_channels", self.out_channels, found.out_channels),
            ("num_attention_heads", self.num_heads, found.num_heads),
            ("attention_head_dim", self.head_dim, found.head_dim),
            ("num_layers", self.num_layers, found.num_layers),
            (
                "pooled_projection_dim",
                self.hidden_size_y,
                found.hidden_size_y,
            ),
            ("text_embed_dim", self.text_embed_dim, found.text_embed_dim),
            ("time_embed_dim", self.time_embed_dim, found.time_embed_dim),
        ];
        match fields
            .iter()
            .find(|(_, configured, weights)| configured != weights)
        {
            Some((field, configured, weights)) => Err(contradiction(field, configured, weights)),
            None => Ok(()),
        }
    }

    /// Visual stream width (`heads × head_dim`).
    pub fn hidden_size_x(&self) -> usize {
        self.num_heads * self.head_dim
    }
}
