//! The release's structure at a reduced width: every key name of `genmo/mochi-1-preview`
//! (all 48 transformer blocks, the T5 encoder's 24 layers, the decoder's stages and res
//! blocks) with tiny tensors, in either of its two layouts, so that the loaders and
//! `mochi model check` can be tried on the release's names without its 60 GB.
//!
//! What is reduced: the widths (visual stream 24 heads × 2, text stream 16, T5 `d_model`
//! 16 with 64 heads of 2, decoder channels 32). What is kept: every count (blocks, layers,
//! heads, stages, res blocks, expansions), the key names, the shard and variant file names,
//! and each layout's own rules (genmo's SwiGLU width is rounded up to a multiple of 256,
//! diffusers' is not). The weights are deterministic noise, as in [`super::tiny`].

use std::path::Path;

use super::tiny::{self, Storage, T5Dims};
use crate::model::Config as DitConfig;
use crate::model::vae::VaeConfig;
use crate::pipeline::text_encoder::GENMO_T5_DIR;

/// Which of the release's layouts to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// diffusers' folders: `transformer/` (f32 shards with an index, and the `bf16`
    /// variant's shards with theirs), `text_encoder/` (sharded), `tokenizer/`, `vae/`,
    /// `scheduler/`, `model_index.json`.
    Diffusers,
    /// genmo's files: `dit.safetensors`, `decoder.safetensors`, and the T5 folder
    /// [`GENMO_T5_DIR`] (config, weights and tokenizer together).
    Genmo,
}

impl Layout {
    /// Parses `diffusers` or `genmo`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "diffusers" => Some(Self::Diffusers),
            "genmo" => Some(Self::Genmo),
            _ => None,
        }
    }
}

/// The transformer: the release's counts (48 blocks, 24 heads, patch 2, 12 channels, 256
/// text tokens) at widths 24 × 2 (visual), 16 (text) and 16 (T5 features).
pub fn dit_config() -> DitConfig {
    DitConfig {
        head_dim: 2,
        hidden_size_y: 16,
        text_embed_dim: 16,
        time_embed_dim: 8,
        ..DitConfig::mochi_1_preview()
    }
}

/// The decoder: the release's stages, res blocks and expansions at 32 channels each
/// (GroupNorm's 32 groups need at least that).
pub fn vae_config() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![32; 4],
        ..VaeConfig::mochi_1_preview()
    }
}

/// `google/t5-v1_1-xxl`'s encoder (24 layers, 64 heads, 32 128 ids, gated GELU) at
/// `d_model` 16, `d_kv` 2, `d_ff` 32.
fn t5_dims(d_model: usize) -> T5Dims {
    T5Dims {
        d_model,
        d_ff: 32,
        d_kv: 2,
        num_heads: 64,
        num_layers: 24,
        vocab_size: 32128,
    }
}

fn tokenizer_config_json() -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "T5Tokenizer",
        "extra_ids": 100,
        "model_max_length": 256,
        "legacy": false,
    })
}

/// Every file of the reduced release in `layout` (relative path, bytes), deterministic.
pub fn files(layout: Layout) -> Result<Vec<(String, Vec<u8>)>, String> {
    let dit = dit_config();
    let vae = vae_config();
    let t5_json = tiny::t5_config_json(&t5_dims(dit.text_embed_dim));
    let t5 = super::t5_config_from_json(&t5_json.to_string())?;
    let t5_tensors = super::t5_encoder_tensors(&t5);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    match layout {
        Layout::Diffusers => {
            out.extend(tiny::pipeline_files());
            out.push((
                "transformer/config.json".to_owned(),
                tiny::json(&tiny::dit_config_json(&dit)),
            ));
            // The release: five f32 shards and three of the bf16 variant.
            let tensors = super::dit_tensors(&dit);
            out.extend(tiny::sharded(
                "transformer",
                "diffusion_pytorch_model",
                "",
                tensors.clone(),
                5,
                Storage::F32,
            )?);
            out.extend(tiny::sharded(
                "transformer",
                "diffusion_pytorch_model",
                ".bf16",
                tensors,
                3,
                Storage::Bf16,
            )?);
            out.push(("text_encoder/config.json".to_owned(), tiny::json(&t5_json)));
            out.extend(tiny::sharded(
                "text_encoder",
                "model",
                "",
                t5_tensors,
                2,
                Storage::F32,
            )?);
            out.push((
                "tokenizer/spiece.model".to_owned(),
                tiny::SPIECE_MODEL.to_vec(),
            ));
            out.push((
                "tokenizer/tokenizer_config.json".to_owned(),
                tiny::json(&tokenizer_config_json()),
            ));
            out.extend(tiny::vae_files(&vae)?);
        }
        Layout::Genmo => {
            out.push((
                super::check::GENMO_DIT_FILE.to_owned(),
                tiny::safetensors_file_as(&super::genmo_dit_tensors(&dit), Storage::F32)?,
            ));
            out.push((
                super::check::GENMO_DECODER_FILE.to_owned(),
                tiny::safetensors_file_as(&super::genmo_vae_decoder_tensors(&vae), Storage::F32)?,
            ));
            out.push((format!("{GENMO_T5_DIR}/config.json"), tiny::json(&t5_json)));
            out.push((
                format!("{GENMO_T5_DIR}/model.safetensors"),
                tiny::safetensors_file_as(&t5_tensors, Storage::F32)?,
            ));
            out.push((
                format!("{GENMO_T5_DIR}/spiece.model"),
                tiny::SPIECE_MODEL.to_vec(),
            ));
            out.push((
                format!("{GENMO_T5_DIR}/tokenizer_config.json"),
                tiny::json(&tokenizer_config_json()),
            ));
        }
    }
    Ok(out)
}

/// Writes the reduced release in `layout` to `dir` (created if needed; files already there
/// are replaced).
pub fn write(dir: &Path, layout: Layout) -> Result<(), String> {
    for (relative, bytes) in files(layout)? {
        let path = dir.join(relative);
        tiny::write_atomically(&path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
