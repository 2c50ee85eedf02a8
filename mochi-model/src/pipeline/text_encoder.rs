//! The text path: T5 v1.1 tokenisation to the transformer's `max_sequence_length` tokens
//! (256 in the release) with a mask, and the T5 encoder (candle-transformers'
//! `T5EncoderModel`) run in f32 (`docs/mochi-model-spec.md` §1.2).
//!
//! The release ships `tokenizer/spiece.model`; it is read directly by the pure-Rust
//! SentencePiece reader in [`super::spiece`] (a `tokenizer.json` is used only when no
//! `spiece.model` is there). T5 runs on the unpadded ids (exact for valid positions:
//! relative bias is measured from the start and padded keys are masked), and the result
//! is zero-padded.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Error, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::t5;

use super::sampling::TextConditioning;
use crate::model::contradiction;
use crate::model::weights::shards_from_index;

/// Text tokens per prompt, padding included, when the model directory does not say: the
/// release's `max_sequence_length`, genmo's `MAX_T5_TOKEN_LENGTH`
/// (<https://github.com/genmoai/mochi/blob/0c86aebf/src/genmo/mochi_preview/pipelines.py>).
pub const MAX_TEXT_TOKENS: usize = 256;
/// T5's end-of-sequence id.
pub const EOS_ID: u32 = 1;

/// Token ids padded to a fixed length with the count of valid (leading) tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Ids, right-padded with 0.
    pub ids: Vec<u32>,
    /// Number of valid tokens (a prefix, `</s>` included).
    pub valid: usize,
}

impl Tokens {
    /// The attention mask: 1 for the valid prefix, 0 for padding.
    pub fn mask(&self) -> Vec<u32> {
        (0..self.ids.len())
            .map(|i| u32::from(i < self.valid))
            .collect()
    }
}

/// The T5 prompt tokenizer (from `spiece.model` or a `tokenizer.json`).
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    max_tokens: usize,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Msg(format!("cannot load tokenizer {}: {e}", path.display())))?;
        Ok(Self {
            inner,
            max_tokens: MAX_TEXT_TOKENS,
        })
    }

    /// Reads a SentencePiece `spiece.model` with `extra_ids` `<extra_id_N>` tokens (T5: 100).
    pub fn from_spiece(path: &Path, extra_ids: usize) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Msg(format!("cannot read {}: {e}", path.display())))?;
        let model = super::spiece::SpmModel::parse(&bytes)
            .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
        Ok(Self {
            inner: super::spiece::t5_tokenizer(&model, extra_ids)?,
            max_tokens: MAX_TEXT_TOKENS,
        })
    }

    /// Loads the tokenizer of a model directory (its folder as [`TextDirs::find`] says):
    /// `spiece.model` (what the release ships; `extra_ids` from `tokenizer_config.json`,
    /// default 100), else `tokenizer.json`.
    pub fn from_model_dir(model_dir: &Path) -> Result<Self> {
        let dir = TextDirs::find(model_dir).tokenizer;
        let spiece = dir.join("spiece.model");
        if spiece.is_file() {
            return Self::from_spiece(&spiece, extra_ids(&dir)?);
        }
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        Err(Error::Msg(format!(
            "no tokenizer in {}: expected spiece.model or tokenizer.json",
            dir.display()
        )))
    }

    /// The same tokenizer producing `max_tokens` ids per prompt (truncating and padding to
    /// it); at least 1, so that `</s>` always fits.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Result<Self> {
        if max_tokens == 0 {
            return Err(Error::Msg(
                "max_sequence_length is 0; a prompt needs at least one token (</s>)".into(),
            ));
        }
        self.max_tokens = max_tokens;
        Ok(self)
    }

    /// Ids per prompt, padding included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenises a prompt: pieces + `</s>`, truncated to [`Self::max_tokens`] (keeping `</s>`
    /// last), padded with 0.
    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| Error::Msg(format!("tokenization failed: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.max_tokens {
            ids.truncate(self.max_tokens - 1);
            ids.push(EOS_ID);
        }
        let valid = ids.len();
        ids.resize(self.max_tokens, 0);
        Ok(Tokens { ids, valid })
    }
}

/// `extra_ids` of `tokenizer_config.json` in `dir` (100, T5's default, when absent).
fn extra_ids(dir: &Path) -> Result<usize> {
    const T5_EXTRA_IDS: usize = 100;
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(T5_EXTRA_IDS);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Msg(format!("cannot read {}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Msg(format!("invalid {}: {e}", path.display())))?;
    match json.get("extra_ids") {
        None => Ok(T5_EXTRA_IDS),
        Some(value) => value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| Error::Msg(format!("{}: extra_ids is not a count", path.display()))),
    }
}

/// Tokenizer plus T5 encoder.
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    model: t5::T5EncoderModel,
    hidden_size: usize,
    device: Device,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("hidden_size", &self.hidden_size)
            .finish()
    }
}

/// Folder of genmo's layout holding the T5 encoder and its tokenizer together: the
/// `google/t5-v1_1-xxl` repository that genmo's code loads beside `dit.safetensors`.
pub const GENMO_T5_DIR: &str = "t5-v1_1-xxl";

/// Where a model directory keeps the text path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDirs {
    /// The T5 `config.json` and weights.
    pub encoder: PathBuf,
    /// `spiece.model` (or `tokenizer.json`) and `tokenizer_config.json`.
    pub tokenizer: PathBuf,
}

impl TextDirs {
    /// diffusers' `text_encoder/` and `tokenizer/`; when there is no
    /// `text_encoder/config.json` but a [`GENMO_T5_DIR`] with one, that folder for both.
    pub fn find(model_dir: &Path) -> Self {
        let genmo = model_dir.join(GENMO_T5_DIR);
        let diffusers = model_dir.join("text_encoder");
        if !diffusers.join("config.json").is_file() && genmo.join("config.json").is_file() {
            return Self {
                encoder: genmo.clone(),
                tokenizer: genmo,
            };
        }
        Self {
            encoder: diffusers,
            tokenizer: model_dir.join("tokenizer"),
        }
    }
}

/// Weight files of a T5 folder: the shards of `model.safetensors.index.json`, or
/// `model.safetensors`.
pub fn encoder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shards_from_index(&index);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::Msg(format!("no T5 weights in {}", dir.display())))
}

/// Checks a T5 encoder configuration against the weights' shapes: the error names the first
/// field (as `config.json` spells it) they contradict, with both values. Tensors that are
/// absent are the loader's to name.
fn check_against(
    config: &t5::Config,
    tensors: &candle_core::safetensors::MmapedSafetensors,
) -> std::result::Result<(), String> {
    let shape = |name: &str| tensors.get(name).ok().map(|view| view.shape().to_vec());
    let differs = |field: &str, configured: usize, found: usize| {
        Err(contradiction(field, &configured, &found))
    };
    let embedding = shape("shared.weight").or_else(|| shape("encoder.embed_tokens.weight"));
    if let Some(&[vocab, width]) = embedding.as_deref() {
        if width != config.d_model {
            return differs("d_model", config.d_model, width);
        }
        if vocab != config.vocab_size {
            return differs("vocab_size", config.vocab_size, vocab);
        }
    }
    let blocks = (0..)
        .take_while(|i| {
            shape(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")).is_some()
        })
        .count();
    if blocks > 0 && blocks != config.num_layers {
        return differs("num_layers", config.num_layers, blocks);
    }
    let attention = "encoder.block.0.layer.0.SelfAttention";
    if let Some(&[buckets, heads]) =
        shape(&format!("{attention}.relative_attention_bias.weight")).as_deref()
    {
        if heads != config.num_heads {
            return differs("num_heads", config.num_heads, heads);
        }
        if buckets != config.relative_attention_num_buckets {
            return differs(
                "relative_attention_num_buckets",
                config.relative_attention_num_buckets,
                buckets,
            );
        }
    }
    if let Some(&[inner, _]) = shape(&format!("{attention}.q.weight")).as_deref()
        && inner != config.num_heads * config.d_kv
    {
        return differs("d_kv", config.d_kv, inner / config.num_heads.max(1));
    }
    let feed_forward = "encoder.block.0.layer.1.DenseReluDense";
    let wi = shape(&format!("{feed_forward}.wi_0.weight"))
        .or_else(|| shape(&format!("{feed_forward}.wi.weight")));
    if let Some(&[hidden, _]) = wi.as_deref()
        && hidden != config.d_ff
    {
        return differs("d_ff", config.d_ff, hidden);
    }
    Ok(())
}

impl TextEncoder {
    /// Loads the tokenizer and the T5 encoder (config.json + safetensors) of `model_dir`
    /// (diffusers' `tokenizer/` and `text_encoder/`, or genmo's [`GENMO_T5_DIR`]), in
    /// f32. Prompts are padded to the transformer's `max_sequence_length` when
    /// `transformer/config.json` is there, else to [`MAX_TEXT_TOKENS`].
    pub fn from_model_dir(model_dir: &Path, device: &Device) -> Result<Self> {
        let max_tokens = match crate::model::Config::from_model_dir(model_dir)? {
            Some(config) => config.max_sequence_length,
            None => MAX_TEXT_TOKENS,
        };
        let tokenizer = PromptTokenizer::from_model_dir(model_dir)?.with_max_tokens(max_tokens)?;
        let dir = TextDirs::find(model_dir).encoder;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| Error::Msg(format!("cannot read {}: {e}", config_path.display())))?;
        let config: t5::Config = serde_json::from_str(&text)
            .map_err(|e| Error::Msg(format!("invalid {}: {e}", config_path.display())))?;
        let files = encoder_files(&dir)?;
        // SAFETY: the weight files are mapped read-only and never modified while mapped.
        #[allow(unsafe_code)]
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files)? };
        check_against(&config, &tensors).map_err(|e| {
            Error::Msg(format!(
                "{} contradicts the weights: {e}",
                config_path.display()
            ))
        })?;
        // The same mapping serves the check and the model.
        let vb = VarBuilder::from_backend(Box::new(tensors), DType::F32, device.clone());
        let model = t5::T5EncoderModel::load(vb, &config)?;
        Ok(Self {
            tokenizer,
            model,
            hidden_size: config.d_model,
            device: device.clone(),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// The width `D` of its features.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// T5 `last_hidden_state` `(1, len, D)` of unpadded ids, f32.
    pub fn encode_ids(&mut self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        self.model.forward_dt(&input, Some(DType::F32))
    }

    /// Encodes a prompt to `(1, L, D)` features and a `(1, L)` mask (f32), `L` the
    /// tokenizer's [`PromptTokenizer::max_tokens`]. The empty
    /// prompt follows genmo: no valid token at all (zero mask, zero features), so the
    /// unconditional branch sees no text.
    pub fn encode(&mut self, prompt: &str) -> Result<TextConditioning> {
        let max = self.tokenizer.max_tokens;
        if prompt.is_empty() {
            return Ok(TextConditioning {
                features: Tensor::zeros((1, max, self.hidden_size), DType::F32, &self.device)?,
                mask: Tensor::zeros((1, max), DType::F32, &self.device)?,
            });
        }
        let tokens = self.tokenizer.encode(prompt)?;
        let hidden = self.encode_ids(&tokens.ids[..tokens.valid])?;
        let features = hidden.pad_with_zeros(1, 0, max - tokens.valid)?;
        let mask: Vec<f32> = tokens.mask().iter().map(|m| *m as f32).collect();
        Ok(TextConditioning {
            features,
            mask: Tensor::from_vec(mask, (1, max), &self.device)?,
        })
    }
}
