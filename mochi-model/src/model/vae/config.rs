//! The decoder's structure: read from diffusers' `vae/config.json` (every field
//! `AutoencoderKLMochi` reads for the decoder; an absent field takes diffusers' default,
//! which is the release's value, as the reference does) and checked against the weights'
//! shapes, or, for a checkpoint without one (genmo's `decoder.safetensors`), derived from
//! those shapes with Mochi's spatial expansion of 2.
//!
//! Why the file matters: an up block's `proj` has `c_out · st · ss²` rows, so the shapes
//! give only the product `st · ss²` per block. A checkpoint with temporal expansion 4 and
//! spatial 1 looks like one with temporal 1 and spatial 2; only the configuration tells
//! them apart.

use std::path::Path;

use candle_core::{Error, Result};
use serde::Deserialize;

use super::keys;
use super::weights::VaeWeights;
use crate::model::contradiction;

/// Decoder hyperparameters (diffusers `AutoencoderKLMochi` names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeConfig {
    /// Latent channels in (`latent_channels`).
    pub latent_channels: usize,
    /// RGB channels out (`out_channels`).
    pub out_channels: usize,
    /// Channels per stage, high resolution first (`decoder_block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// Res blocks per stage, high resolution first, plus the latent-resolution stage last.
    pub layers_per_block: Vec<usize>,
    /// Temporal expansion per up block, listed high resolution first.
    pub temporal_expansions: Vec<usize>,
    /// Spatial expansion per up block, listed high resolution first.
    pub spatial_expansions: Vec<usize>,
}

impl VaeConfig {
    /// The released Mochi-1 preview decoder (§3.1): genmo's `DecoderModelFactory`
    /// (<https://github.com/genmoai/mochi/blob/0c86aebf/src/genmo/mochi_preview/pipelines.py>:
    /// base 128 × `[1, 2, 4, 6]`, res blocks `[3, 3, 4, 6, 3]`, temporal `[1, 2, 3]`, spatial
    /// `[2, 2, 2]`, 12 latent channels), equal to the defaults of diffusers'
    /// `AutoencoderKLMochi`
    /// (<https://github.com/huggingface/diffusers/blob/58eb52c0/src/diffusers/models/autoencoders/autoencoder_kl_mochi.py>).
    pub fn mochi_1_preview() -> Self {
        Self {
            latent_channels: 12,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 768],
            layers_per_block: vec![3, 3, 4, 6, 3],
            temporal_expansions: vec![1, 2, 3],
            spatial_expansions: vec![2, 2, 2],
        }
    }

    /// The tiny golden-fixture decoder (§6.2: channels 32 × 4, one res block per stage).
    pub fn tiny() -> Self {
        Self {
            latent_channels: 12,
            out_channels: 3,
            block_out_channels: vec![32, 32, 32, 32],
            layers_per_block: vec![1, 1, 1, 1, 1],
            temporal_expansions: vec![1, 2, 3],
            spatial_expansions: vec![2, 2, 2],
        }
    }

    /// Parses the decoder structure from a diffusers `vae/config.json` text (unknown keys
    /// ignored, absent ones take diffusers' defaults, the release's values).
    pub fn from_diffusers_json(text: &str) -> std::result::Result<Self, String> {
        let raw: DiffusersVaeConfig =
            serde_json::from_str(text).map_err(|e| format!("invalid VAE config: {e}"))?;
        let n_up = raw.decoder_block_out_channels.len().saturating_sub(1);
        if n_up == 0
            || raw.layers_per_block.len() != n_up + 2
            || raw.temporal_expansions.len() != n_up
            || raw.spatial_expansions.len() != n_up
        {
            return Err(format!(
                "inconsistent VAE config: {} decoder stages need {} layers_per_block and {} temporal/spatial expansions, found {}, {} and {}",
                raw.decoder_block_out_channels.len(),
                n_up + 2,
                n_up,
                raw.layers_per_block.len(),
                raw.temporal_expansions.len(),
                raw.spatial_expansions.len()
            ));
        }
        if let Some(zero) = raw
            .temporal_expansions
            .iter()
            .chain(&raw.spatial_expansions)
            .position(|e| *e == 0)
        {
            return Err(format!("inconsistent VAE config: expansion {zero} is 0"));
        }
        Ok(Self {
            latent_channels: raw.latent_channels,
            out_channels: raw.out_channels,
            block_out_channels: raw.decoder_block_out_channels,
            layers_per_block: raw.layers_per_block,
            temporal_expansions: raw.temporal_expansions,
            spatial_expansions: raw.spatial_expansions,
        })
    }

    /// The structure of the decoder in `model_dir` whose weights are `w`: its
    /// `vae/config.json` when there is one, checked against the weights (a field they
    /// contradict is an error naming it and both values), else derived from the weights.
    pub fn from_model_dir(model_dir: &Path, w: &VaeWeights) -> Result<Self> {
        let Some((path, text)) = config_file(model_dir)? else {
            return Self::from_weights(w);
        };
        let config = Self::from_diffusers_json(&text)
            .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
        config
            .check_against(w)
            .map_err(|e| Error::Msg(format!("{} contradicts the weights: {e}", path.display())))?;
        Ok(config)
    }

    /// Derives the structure from tensor shapes, with Mochi's spatial expansion of 2 (the
    /// shapes alone cannot tell temporal from spatial expansion).
    pub fn from_weights(w: &VaeWeights) -> Result<Self> {
        let shape = Shapes::read(w)?;
        let mut temporal = Vec::with_capacity(shape.expansion.len());
        for (i, (product, rows)) in shape.expansion.iter().zip(&shape.proj_rows).enumerate() {
            if product % 4 != 0 {
                candle_core::bail!(
                    "up block {i} (high resolution first) has {rows} projection rows, an expansion of {product}: not a multiple of 4 (spatial 2); give vae/config.json"
                );
            }
            temporal.push(product / 4);
        }
        Ok(Self {
            latent_channels: shape.latent_channels,
            out_channels: shape.out_channels,
            spatial_expansions: vec![2; temporal.len()],
            temporal_expansions: temporal,
            block_out_channels: shape.block_out_channels,
            layers_per_block: shape.layers_per_block,
        })
    }

    /// Checks the structure against the weights' shapes: the error names the first field
    /// they contradict, with the configured and the weights' values.
    pub fn check_against(&self, w: &VaeWeights) -> std::result::Result<(), String> {
        let shape = Shapes::read(w).map_err(|e| e.to_string())?;
        let differs = |field: &str, config: &dyn std::fmt::Debug, weights: &dyn std::fmt::Debug| {
            Err(contradiction(field, config, weights))
        };
        if self.latent_channels != shape.latent_channels {
            return differs(
                "latent_channels",
                &self.latent_channels,
                &shape.latent_channels,
            );
        }
        if self.out_channels != shape.out_channels {
            return differs("out_channels", &self.out_channels, &shape.out_channels);
        }
        if self.block_out_channels != shape.block_out_channels {
            return differs(
                "decoder_block_out_channels",
                &self.block_out_channels,
                &shape.block_out_channels,
            );
        }
        if self.layers_per_block != shape.layers_per_block {
            return differs(
                "layers_per_block",
                &self.layers_per_block,
                &shape.layers_per_block,
            );
        }
        for (i, (st, ss)) in self
            .temporal_expansions
            .iter()
            .zip(&self.spatial_expansions)
            .enumerate()
        {
            let configured = st * ss * ss;
            let Some(&found) = shape.expansion.get(i) else {
                return differs(
                    "up blocks",
                    &self.temporal_expansions.len(),
                    &shape.expansion.len(),
                );
            };
            if configured != found {
                return Err(format!(
                    "temporal_expansions[{i}] × spatial_expansions[{i}]² is {st} × {ss}² = {configured} in the config, the weights' up block expands by {found} ({} projection rows for {} channels)",
                    shape.proj_rows[i], self.block_out_channels[i]
                ));
            }
        }
        Ok(())
    }

    /// Output frames for `t` latent frames (`6T − 5` for Mochi).
    pub fn output_frames(&self, t: usize) -> usize {
        let total: usize = self.temporal_expansions.iter().product();
        (t * total + 1).saturating_sub(total)
    }
}

/// What the shapes of a decoder checkpoint say, high resolution first like [`VaeConfig`].
struct Shapes {
    latent_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: Vec<usize>,
    /// `st · ss²` of each up block (its projection rows over its output channels).
    expansion: Vec<usize>,
    /// Each up block's projection rows.
    proj_rows: Vec<usize>,
}

impl Shapes {
    fn read(w: &VaeWeights) -> Result<Self> {
        let n_up = w.count_up_blocks();
        let conv_in = w.shape(&format!("{}.weight", keys::CONV_IN))?;
        let proj_out = w.shape(&format!("{}.weight", keys::PROJ_OUT))?;
        if conv_in.len() != 5 || proj_out.len() != 2 {
            candle_core::bail!(
                "conv_in.weight {conv_in:?} / proj_out.weight {proj_out:?} have unexpected ranks"
            );
        }
        // Stages low resolution first: channels in of up block i, then block_out.
        let mut channels = vec![conv_in[0]];
        let mut expansion = Vec::with_capacity(n_up);
        let mut proj_rows = Vec::with_capacity(n_up);
        let proj_name = |i: usize| format!("{}.{}.weight", keys::up_block(i), keys::PROJ);
        for i in 0..n_up {
            let proj = w.shape(&proj_name(i))?;
            let out_ch = if i + 1 < n_up {
                w.shape(&proj_name(i + 1))?[1]
            } else {
                proj_out[1]
            };
            if proj.len() != 2 || out_ch == 0 || proj[0] % out_ch != 0 {
                candle_core::bail!(
                    "tensor `{}` has shape {proj:?}, rows not a multiple of the {out_ch} channels that follow",
                    proj_name(i)
                );
            }
            expansion.push(proj[0] / out_ch);
            proj_rows.push(proj[0]);
            channels.push(out_ch);
        }
        let mut layers = vec![w.count_resnets(keys::BLOCK_IN)];
        for i in 0..n_up {
            layers.push(w.count_resnets(&keys::up_block(i)));
        }
        layers.push(w.count_resnets(keys::BLOCK_OUT));
        channels.reverse();
        layers.reverse();
        expansion.reverse();
        proj_rows.reverse();
        Ok(Self {
            latent_channels: conv_in[1],
            out_channels: proj_out[0],
            block_out_channels: channels,
            layers_per_block: layers,
            expansion,
            proj_rows,
        })
    }
}

/// `vae/config.json`, or a `config.json` beside the weights that describes a decoder.
fn config_file(model_dir: &Path) -> Result<Option<(std::path::PathBuf, String)>> {
    let dir = if model_dir.is_file() {
        model_dir.parent().unwrap_or(Path::new("."))
    } else {
        model_dir
    };
    for path in [dir.join("vae").join("config.json"), dir.join("config.json")] {
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Msg(format!("cannot read {}: {e}", path.display())))?;
        if text.contains("decoder_block_out_channels")
            || path.parent().is_some_and(|p| p.ends_with("vae"))
        {
            return Ok(Some((path, text)));
        }
    }
    Ok(None)
}

/// The decoder fields of diffusers' `vae/config.json` (`AutoencoderKLMochi`); absent
/// fields take diffusers' defaults, the release's values.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct DiffusersVaeConfig {
    latent_channels: usize,
    out_channels: usize,
    decoder_block_out_channels: Vec<usize>,
    layers_per_block: Vec<usize>,
    temporal_expansions: Vec<usize>,
    spatial_expansions: Vec<usize>,
}

impl Default for DiffusersVaeConfig {
    fn default() -> Self {
        let c = VaeConfig::mochi_1_preview();
        Self {
            latent_channels: c.latent_channels,
            out_channels: c.out_channels,
            decoder_block_out_channels: c.block_out_channels,
            layers_per_block: c.layers_per_block,
            temporal_expansions: c.temporal_expansions,
            spatial_expansions: c.spatial_expansions,
        }
    }
}
