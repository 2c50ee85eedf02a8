//! The embedded default model: the tiny Mochi configuration (spec §6: AsymmDiT 2 heads × 8,
//! 2 layers; T5 d_model 32; VAE decoder 32 channels) with deterministic random weights,
//! written in the release's diffusers layout so that the same loader serves both.
//!
//! Nothing is downloaded: the weights come from a fixed seed (SplitMix64, uniform with the
//! fan-in scale, no floating-point library calls, so the bytes are the same everywhere) and
//! the tokenizer is the tiny SentencePiece model of the text fixtures, compiled in. Its
//! videos are noise; it exists so that `mochi up` runs the real pipeline out of the box.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mochi_rng::SplitMix64;

use crate::model::Config as DitConfig;
use crate::model::vae::VaeConfig;

/// The model's name, written to its marker file and reported in heartbeats.
pub const TINY_MODEL_NAME: &str = "mochi-1-tiny-random";
/// Marker file at the root of a directory this module created.
pub const MARKER_FILE: &str = "mochi_serve_model.json";
/// Seed of every weight (each tensor mixes in its name).
const SEED: u64 = 0x6d6f_6368_692d_7469; // "mochi-ti"

/// The tokenizer: the 80-piece SentencePiece model of the text fixtures
/// (`tools/make_t5_fixtures.py`), so every id fits the tiny T5 vocabulary.
pub(super) const SPIECE_MODEL: &[u8] =
    include_bytes!("../../tests/fixtures/t5/tokenizer/spiece.model");
/// Vocabulary of the tiny T5 (the SentencePiece model's pieces, no `<extra_id_N>`).
const T5_VOCAB: usize = 80;
/// Transformer shards, as the release splits its checkpoint.
const DIT_SHARDS: usize = 2;

/// What [`ensure`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The directory did not exist (or held none of the files): written from scratch.
    Created,
    /// Every file was present with the expected bytes.
    Reused,
    /// Some files were missing or different and were rewritten (their paths).
    Repaired(Vec<String>),
}

/// The tiny transformer: [`DitConfig::tiny`] with the release's 256 text tokens.
pub fn dit_config() -> DitConfig {
    DitConfig {
        max_sequence_length: 256,
        ..DitConfig::tiny()
    }
}

/// The tiny decoder: [`VaeConfig::tiny`]'s channels and expansions, with res blocks only at
/// the three lowest resolutions (`layers_per_block` `[0, 0, 1, 1, 1]`, high resolution
/// first). The two full-resolution-side stages hold ~97% of the conv work, and without
/// them a 848×480 decode takes seconds on a CPU instead of minutes; the causal-conv,
/// streaming and up-block paths all still run.
pub fn vae_config() -> VaeConfig {
    VaeConfig {
        layers_per_block: vec![0, 0, 1, 1, 1],
        ..VaeConfig::tiny()
    }
}

/// Uniform draws in [−1, 1) from the shared seeded generator.
struct Rng(SplitMix64);

impl Rng {
    /// Uniform in [−1, 1).
    fn symmetric(&mut self) -> f32 {
        ((self.0.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// FNV-1a of a tensor name, mixed into the seed so each tensor is independent of order.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64 ^ SEED, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How a tensor is initialised.
enum Init {
    Ones,
    Zeros,
    /// Uniform with this standard deviation.
    Uniform(f32),
}

fn init_for(name: &str, shape: &[usize]) -> Init {
    let is_norm = name.contains("norm_q")
        || name.contains("norm_k")
        || name.contains("norm_added_")
        || name.contains("layer_norm")
        || name.contains("norm_layer");
    if is_norm {
        return if name.ends_with(".bias") {
            Init::Zeros
        } else {
            Init::Ones
        };
    }
    if name == "pos_frequencies" {
        return Init::Uniform(0.1);
    }
    if name.ends_with(".bias") {
        return Init::Uniform(0.02);
    }
    if name == "shared.weight" {
        return Init::Uniform(1.0);
    }
    let fan_in: usize = shape.iter().skip(1).product();
    Init::Uniform(1.0 / (fan_in.max(1) as f32).sqrt())
}

/// How [`safetensors_file_as`] stores values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// Little-endian f32.
    F32,
    /// bfloat16, rounded to nearest even from the f32 values.
    Bf16,
}

/// The bfloat16 bits nearest to a finite `value` (ties to even).
fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    (rounded >> 16) as u16
}

/// Little-endian f32 bytes of a tensor's deterministic values.
fn tensor_bytes(name: &str, shape: &[usize]) -> Vec<u8> {
    let count: usize = shape.iter().product();
    let mut rng = Rng(SplitMix64::new(name_seed(name)));
    let sqrt3 = 3f32.sqrt();
    let init = init_for(name, shape);
    let mut bytes = Vec::with_capacity(count * 4);
    for _ in 0..count {
        let value = match init {
            Init::Ones => 1.0,
            Init::Zeros => 0.0,
            Init::Uniform(std) => rng.symmetric() * std * sqrt3,
        };
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// A safetensors file of `tensors` (f32), with diffusers' `{"format": "pt"}` metadata.
fn safetensors_file(tensors: &[(String, Vec<usize>)]) -> Result<Vec<u8>, String> {
    safetensors_file_as(tensors, Storage::F32)
}

/// A safetensors file of `tensors`' deterministic values (each from its name) stored as
/// `storage`, with diffusers' `{"format": "pt"}` metadata.
pub(super) fn safetensors_file_as(
    tensors: &[(String, Vec<usize>)],
    storage: Storage,
) -> Result<Vec<u8>, String> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape)| {
            let f32_bytes = tensor_bytes(name, shape);
            let bytes = match storage {
                Storage::F32 => f32_bytes,
                Storage::Bf16 => f32_bytes
                    .chunks_exact(4)
                    .flat_map(|b| {
                        bf16_bits(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                    })
                    .collect(),
            };
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let dtype = match storage {
        Storage::F32 => safetensors::Dtype::F32,
        Storage::Bf16 => safetensors::Dtype::BF16,
    };
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot build a tensor view: {e}"))?;
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| format!("cannot serialise tensors: {e}"))
}

pub(super) fn json(value: &serde_json::Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

pub(super) fn dit_config_json(c: &DitConfig) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "MochiTransformer3DModel",
        "activation_fn": "swiglu",
        "attention_head_dim": c.head_dim,
        "in_channels": c.in_channels,
        "max_sequence_length": c.max_sequence_length,
        "num_attention_heads": c.num_heads,
        "num_layers": c.num_layers,
        "out_channels": c.out_channels,
        "patch_size": c.patch_size,
        "pooled_projection_dim": c.hidden_size_y,
        "qk_norm": "rms_norm",
        "text_embed_dim": c.text_embed_dim,
        "time_embed_dim": c.time_embed_dim,
    })
}

pub(super) fn vae_config_json(c: &VaeConfig) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "AutoencoderKLMochi",
        "act_fn": "silu",
        "decoder_block_out_channels": c.block_out_channels,
        "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block,
        "out_channels": c.out_channels,
        "scaling_factor": 1.0,
        "spatial_expansions": c.spatial_expansions,
        "temporal_expansions": c.temporal_expansions,
    })
}

/// The widths and counts of a T5 v1.1 encoder (gated GELU, 32 relative buckets).
pub(super) struct T5Dims {
    /// `d_model`.
    pub d_model: usize,
    /// `d_ff`.
    pub d_ff: usize,
    /// `d_kv`.
    pub d_kv: usize,
    /// `num_heads`.
    pub num_heads: usize,
    /// `num_layers`.
    pub num_layers: usize,
    /// `vocab_size`.
    pub vocab_size: usize,
}

/// A transformers `config.json` of a T5 v1.1 encoder of `d`.
pub(super) fn t5_config_json(d: &T5Dims) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["T5EncoderModel"],
        "d_ff": d.d_ff,
        "d_kv": d.d_kv,
        "d_model": d.d_model,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.0,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": false,
        "layer_norm_epsilon": 1e-6,
        "model_type": "t5",
        "num_heads": d.num_heads,
        "num_layers": d.num_layers,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": false,
        "vocab_size": d.vocab_size,
    })
}

/// diffusers' pipeline files of a model directory: `model_index.json` and the scheduler's
/// configuration (the release's values).
pub(super) fn pipeline_files() -> [(String, Vec<u8>); 2] {
    [
        (
            "model_index.json".to_owned(),
            json(&serde_json::json!({
                "_class_name": "MochiPipeline",
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "T5Tokenizer"],
                "transformer": ["diffusers", "MochiTransformer3DModel"],
                "vae": ["diffusers", "AutoencoderKLMochi"],
            })),
        ),
        (
            "scheduler/scheduler_config.json".to_owned(),
            json(&serde_json::json!({
                "_class_name": "FlowMatchEulerDiscreteScheduler",
                "invert_sigmas": true,
                "num_train_timesteps": 1000,
                "shift": 1.0,
            })),
        ),
    ]
}

/// Every file of the tiny model directory (relative path, bytes), deterministic.
pub fn files() -> Result<Vec<(String, Vec<u8>)>, String> {
    let dit = dit_config();
    let vae = vae_config();
    let t5_json = t5_config_json(&T5Dims {
        d_model: dit.text_embed_dim,
        d_ff: 48,
        d_kv: 8,
        num_heads: 4,
        num_layers: 2,
        vocab_size: T5_VOCAB,
    });
    let t5 = super::t5_config_from_json(&t5_json.to_string())?;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();

    out.push((
        MARKER_FILE.to_owned(),
        json(&serde_json::json!({
            "name": TINY_MODEL_NAME,
            "output_is_noise": true,
            "note": "tiny Mochi configuration with deterministic random weights, created by mochi-serve; its videos are noise. Run the official release with --model-dir.",
        })),
    ));
    out.extend(pipeline_files());

    // transformer/: config, shards and their index.
    out.push((
        "transformer/config.json".to_owned(),
        json(&dit_config_json(&dit)),
    ));
    out.extend(sharded(
        "transformer",
        "diffusion_pytorch_model",
        "",
        super::dit_tensors(&dit),
        DIT_SHARDS,
        Storage::F32,
    )?);

    // text_encoder/ and tokenizer/.
    out.push(("text_encoder/config.json".to_owned(), json(&t5_json)));
    out.push((
        "text_encoder/model.safetensors".to_owned(),
        safetensors_file(&super::t5_encoder_tensors(&t5))?,
    ));
    out.push(("tokenizer/spiece.model".to_owned(), SPIECE_MODEL.to_vec()));
    out.push((
        "tokenizer/tokenizer_config.json".to_owned(),
        json(&serde_json::json!({
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": 0,
            "model_max_length": 256,
            "legacy": false,
        })),
    ));

    // vae/: decoder only (the service never encodes).
    out.extend(vae_files(&vae)?);
    Ok(out)
}

/// A component's tensors split into `shards` files named as transformers and diffusers
/// name them (`{stem}{variant}-0000k-of-0000n.safetensors`, e.g. `.bf16` as `variant`) in
/// `folder`, with their index (`{stem}.safetensors.index{variant}.json`).
pub(super) fn sharded(
    folder: &str,
    stem: &str,
    variant: &str,
    mut tensors: Vec<(String, Vec<usize>)>,
    shards: usize,
    storage: Storage,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    tensors.sort();
    let per_shard = tensors.len().div_ceil(shards.max(1)).max(1);
    let bytes_per_value = match storage {
        Storage::F32 => 4,
        Storage::Bf16 => 2,
    };
    let mut out = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    for (index, chunk) in tensors.chunks(per_shard).enumerate() {
        let name = format!(
            "{stem}{variant}-{:05}-of-{shards:05}.safetensors",
            index + 1
        );
        for (tensor, shape) in chunk {
            weight_map.insert(tensor.clone(), name.clone());
            total_size += bytes_per_value * shape.iter().product::<usize>();
        }
        out.push((
            format!("{folder}/{name}"),
            safetensors_file_as(chunk, storage)?,
        ));
    }
    out.push((
        format!("{folder}/{stem}.safetensors.index{variant}.json"),
        json(&serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": weight_map,
        })),
    ));
    Ok(out)
}

/// The `vae/` files of a decoder of any structure (diffusers layout: `config.json` and the
/// weights, deterministic), e.g. to check loading on structures the release does not have.
pub fn vae_files(config: &VaeConfig) -> Result<Vec<(String, Vec<u8>)>, String> {
    Ok(vec![
        ("vae/config.json".to_owned(), json(&vae_config_json(config))),
        (
            "vae/diffusion_pytorch_model.safetensors".to_owned(),
            safetensors_file(&super::vae_decoder_tensors(config))?,
        ),
    ])
}

/// Writes `bytes` to `path` through a temporary file and a rename (never a half file).
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Makes `dir` hold the tiny model: files that are missing or differ from the expected
/// bytes (a corrupt or older copy) are rewritten; a complete copy is left alone.
pub fn ensure(dir: &Path) -> Result<Prepared, String> {
    let files = files()?;
    let mut wrong = Vec::new();
    let mut missing = 0;
    for (relative, bytes) in &files {
        match std::fs::read(dir.join(relative)) {
            Ok(found) if found == *bytes => {}
            Ok(_) => wrong.push(relative.clone()),
            Err(_) => {
                missing += 1;
                wrong.push(relative.clone());
            }
        }
    }
    if wrong.is_empty() {
        return Ok(Prepared::Reused);
    }
    for (relative, bytes) in files.iter().filter(|(r, _)| wrong.contains(r)) {
        let path = dir.join(relative);
        write_atomically(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if missing == files.len() {
        Ok(Prepared::Created)
    } else {
        Ok(Prepared::Repaired(wrong))
    }
}

/// The model name recorded in a directory's marker file, if it has one.
pub fn marker_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("name")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_deterministic_and_weights_are_varied() {
        let a = files().expect("files");
        let b = files().expect("files");
        assert_eq!(a, b);
        let total: usize = a.iter().map(|(_, bytes)| bytes.len()).sum();
        assert!(total < 4 << 20, "{total} bytes");
        assert_ne!(
            tensor_bytes("a.weight", &[4, 4]),
            tensor_bytes("b.weight", &[4, 4])
        );
        let values: Vec<f32> = tensor_bytes("x.weight", &[64, 16])
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bound = 3f32.sqrt() / 4.0;
        assert!(values.iter().all(|v| v.abs() <= bound));
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
    }

    #[test]
    fn ensure_creates_reuses_and_repairs() {
        let dir = tempfile::tempdir().expect("tmp");
        let model = dir.path().join("tiny");
        assert_eq!(ensure(&model).expect("create"), Prepared::Created);
        assert_eq!(ensure(&model).expect("reuse"), Prepared::Reused);
        assert_eq!(marker_name(&model).as_deref(), Some(TINY_MODEL_NAME));
        let shard = "transformer/diffusion_pytorch_model-00002-of-00002.safetensors";
        std::fs::write(model.join(shard), b"truncated").expect("corrupt");
        std::fs::remove_file(model.join("vae/config.json")).expect("remove");
        let Prepared::Repaired(mut fixed) = ensure(&model).expect("repair") else {
            panic!("expected a repair");
        };
        fixed.sort();
        assert_eq!(fixed, vec![shard.to_owned(), "vae/config.json".to_owned()]);
        assert_eq!(ensure(&model).expect("reuse"), Prepared::Reused);
    }
}
