//! Loading VAE decoder weights, memory-mapped, from diffusers' `vae/` folder (keys
//! prefixed `decoder.`) or genmo's `decoder.safetensors` (`docs/mochi-model-spec.md` §3.5).
//!
//! Tensors are requested by their diffusers name without the `decoder.` prefix
//! (`conv_in.weight`, `up_blocks.0.resnets.1.conv1.conv.weight`, ...); genmo names are
//! pure renames of those.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Error, Result, Tensor};

use super::keys::{self, genmo_key};
use crate::model::weights::{check_shape, shards_from_index};

/// Which key scheme a VAE checkpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeScheme {
    /// diffusers `AutoencoderKLMochi` names under `prefix` (normally `decoder.`).
    Diffusers {
        /// Prefix in front of every decoder key.
        prefix: String,
    },
    /// genmo `Decoder` names (`blocks.N...`, `output_proj`) under `prefix` (normally empty).
    Genmo {
        /// Prefix in front of every decoder key.
        prefix: String,
    },
}

/// Memory-mapped VAE decoder weights plus the scheme to translate names.
pub struct VaeWeights {
    tensors: MmapedSafetensors,
    files: Vec<PathBuf>,
    scheme: VaeScheme,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for VaeWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaeWeights")
            .field("files", &self.files)
            .field("scheme", &self.scheme)
            .field("dtype", &self.dtype)
            .finish()
    }
}

const INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.json";
const SINGLE_FILE: &str = "diffusion_pytorch_model.safetensors";
const GENMO_FILE: &str = "decoder.safetensors";

/// Finds the VAE weight files of a model directory: `vae/` (diffusers, single file or
/// sharded), the directory itself if it is a `vae/` folder, `decoder.safetensors`
/// (genmo), or a path to one safetensors file.
pub fn find_vae_files(model_dir: &Path) -> Result<Vec<PathBuf>> {
    if model_dir.is_file() {
        return Ok(vec![model_dir.to_path_buf()]);
    }
    let genmo = model_dir.join(GENMO_FILE);
    for dir in [model_dir.join("vae"), model_dir.to_path_buf()] {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return shards_from_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Ok(vec![single]);
        }
    }
    if genmo.is_file() {
        return Ok(vec![genmo]);
    }
    Err(Error::Msg(format!(
        "no VAE decoder weights in {}: expected vae/{SINGLE_FILE}, vae/{INDEX_FILE} or {GENMO_FILE}",
        model_dir.display()
    )))
}

impl VaeWeights {
    /// Memory-maps the given safetensors files; `dtype` is the storage dtype of conv
    /// and projection weights (norm parameters and biases are always f32).
    pub fn from_files(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        for file in files {
            if !file.is_file() {
                return Err(Error::Msg(format!(
                    "missing weight file {}",
                    file.display()
                )));
            }
        }
        // SAFETY: the files are mapped read-only and are not modified while mapped; this is
        // the released-weights layout, which the serving process never writes.
        #[allow(unsafe_code)]
        let tensors = unsafe { MmapedSafetensors::multi(files)? };
        let scheme = detect_scheme(&tensors).ok_or_else(|| {
            Error::Msg(format!(
                "{} holds no VAE decoder: neither `decoder.conv_in.weight` (diffusers) nor `blocks.0.0.weight` (genmo) found",
                list(files)
            ))
        })?;
        Ok(Self {
            tensors,
            files: files.to_vec(),
            scheme,
            dtype,
            device: device.clone(),
        })
    }

    /// Finds and maps the decoder weights of a model directory (see [`find_vae_files`]).
    pub fn from_model_dir(model_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_files(&find_vae_files(model_dir)?, dtype, device)
    }

    /// The detected key scheme.
    pub fn scheme(&self) -> &VaeScheme {
        &self.scheme
    }

    /// Storage dtype of conv and projection weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of up blocks in the checkpoint.
    pub fn count_up_blocks(&self) -> usize {
        let mut n = 0;
        while self.contains(&format!("{}.{}.weight", keys::up_block(n), keys::PROJ)) {
            n += 1;
        }
        n
    }

    /// Number of res blocks of a stage (`block_in`, `up_blocks.N`, `block_out`).
    pub fn count_resnets(&self, stage: &str) -> usize {
        let mut n = 0;
        while self.contains(&format!(
            "{}.{}.weight",
            keys::resnet(stage, n),
            keys::CONV1.diffusers
        )) {
            n += 1;
        }
        n
    }

    /// The shape of a tensor (by diffusers name), without loading it.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let key = self.key(name)?;
        let view = self
            .tensors
            .get(&key)
            .map_err(|_| self.missing(name, &key))?;
        Ok(view.shape().to_vec())
    }

    /// Whether a tensor (by diffusers name) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.key(name)
            .map(|key| self.tensors.get(&key).is_ok())
            .unwrap_or(false)
    }

    fn key(&self, name: &str) -> Result<String> {
        match &self.scheme {
            VaeScheme::Diffusers { prefix } => Ok(format!("{prefix}{name}")),
            VaeScheme::Genmo { prefix } => {
                let key = genmo_key(name, self.genmo_up_blocks()).ok_or_else(|| {
                    Error::Msg(format!("tensor `{name}` has no genmo equivalent"))
                })?;
                Ok(format!("{prefix}{key}"))
            }
        }
    }

    /// Up blocks of a genmo checkpoint: `blocks.1 ..= blocks.N` carry a `proj`.
    fn genmo_up_blocks(&self) -> usize {
        let prefix = match &self.scheme {
            VaeScheme::Genmo { prefix } => prefix.as_str(),
            VaeScheme::Diffusers { .. } => return 0,
        };
        let mut n = 0;
        while self
            .tensors
            .get(&format!("{prefix}blocks.{}.{}.weight", n + 1, keys::PROJ))
            .is_ok()
        {
            n += 1;
        }
        n
    }

    fn missing(&self, name: &str, key: &str) -> Error {
        Error::Msg(format!(
            "missing VAE tensor `{name}` (key `{key}`) in {}",
            list(&self.files)
        ))
    }

    /// Loads a tensor by diffusers name, checks its shape (`0` = any size) and converts
    /// it to `dtype` on the target device.
    pub fn get_as(&self, name: &str, expected: &[usize], dtype: DType) -> Result<Tensor> {
        let key = self.key(name)?;
        let view = self
            .tensors
            .get(&key)
            .map_err(|_| self.missing(name, &key))?;
        check_shape(name, view.shape(), expected)?;
        let tensor: Tensor = candle_core::safetensors::Load::load(&view, &Device::Cpu)?;
        tensor.to_dtype(dtype)?.to_device(&self.device)
    }

    /// [`VaeWeights::get_as`] in the storage dtype.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, self.dtype)
    }

    /// [`VaeWeights::get_as`] in f32.
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, DType::F32)
    }
}

fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn detect_scheme(tensors: &MmapedSafetensors) -> Option<VaeScheme> {
    for prefix in ["decoder.", ""] {
        if tensors
            .get(&format!("{prefix}{}.weight", keys::CONV_IN))
            .is_ok()
        {
            return Some(VaeScheme::Diffusers {
                prefix: prefix.to_string(),
            });
        }
    }
    for prefix in ["", "decoder."] {
        if tensors
            .get(&format!("{prefix}{}.weight", keys::GENMO_CONV_IN))
            .is_ok()
        {
            return Some(VaeScheme::Genmo {
                prefix: prefix.to_string(),
            });
        }
    }
    None
}
