//! Loading VAE decoder weights, memory-mapped, from diffusers' `vae/` folder (keys
//! prefixed `decoder.`) or genmo's `decoder.safetensors` (`docs/mochi-model-spec.md` §3.5).
//!
//! Tensors are requested by their diffusers name without the `decoder.` prefix
//! (`conv_in.weight`, `up_blocks.0.resnets.1.conv1.conv.weight`, ...); genmo names are
//! pure renames of those.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Error, Result, Tensor};

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
        while self.contains(&format!("up_blocks.{n}.proj.weight")) {
            n += 1;
        }
        n
    }

    /// Number of res blocks of a stage (`block_in`, `up_blocks.N`, `block_out`).
    pub fn count_resnets(&self, stage: &str) -> usize {
        let mut n = 0;
        while self.contains(&format!("{stage}.resnets.{n}.conv1.conv.weight")) {
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
            .get(&format!("{prefix}blocks.{}.proj.weight", n + 1))
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
        if tensors.get(&format!("{prefix}conv_in.weight")).is_ok() {
            return Some(VaeScheme::Diffusers {
                prefix: prefix.to_string(),
            });
        }
    }
    for prefix in ["", "decoder."] {
        if tensors.get(&format!("{prefix}blocks.0.0.weight")).is_ok() {
            return Some(VaeScheme::Genmo {
                prefix: prefix.to_string(),
            });
        }
    }
    None
}

/// Maps a diffusers decoder name (no `decoder.` prefix) to genmo's, given the number of
/// up blocks (genmo's last stage is `blocks.{n_up + 1}`).
pub fn genmo_key(name: &str, n_up: usize) -> Option<String> {
    let res_part = |rest: &str| -> Option<String> {
        let (index, inner) = rest.split_once('.')?;
        let (layer, param) = inner.rsplit_once('.')?;
        let stack = match layer {
            "norm1.norm_layer" => 0,
            "conv1.conv" => 2,
            "norm2.norm_layer" => 3,
            "conv2.conv" => 5,
            _ => return None,
        };
        Some(format!("{index}.stack.{stack}.{param}"))
    };
    if let Some(param) = name.strip_prefix("conv_in.") {
        return Some(format!("blocks.0.0.{param}"));
    }
    if let Some(param) = name.strip_prefix("proj_out.") {
        return Some(format!("output_proj.{param}"));
    }
    if let Some(rest) = name.strip_prefix("block_in.resnets.") {
        let mapped = res_part(rest)?;
        let (index, tail) = mapped.split_once('.')?;
        let index: usize = index.parse().ok()?;
        return Some(format!("blocks.0.{}.{tail}", index + 1));
    }
    if let Some(rest) = name.strip_prefix("block_out.resnets.") {
        return Some(format!("blocks.{}.{}", n_up + 1, res_part(rest)?));
    }
    let rest = name.strip_prefix("up_blocks.")?;
    let (block, inner) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    if let Some(param) = inner.strip_prefix("proj.") {
        return Some(format!("blocks.{}.proj.{param}", block + 1));
    }
    let rest = inner.strip_prefix("resnets.")?;
    Some(format!("blocks.{}.blocks.{}", block + 1, res_part(rest)?))
}

#[cfg(test)]
mod tests {
    use super::genmo_key;

    #[test]
    fn genmo_names_follow_spec_table() {
        let cases = [
            ("conv_in.weight", "blocks.0.0.weight"),
            (
                "block_in.resnets.2.conv2.conv.bias",
                "blocks.0.3.stack.5.bias",
            ),
            (
                "up_blocks.0.resnets.5.norm1.norm_layer.weight",
                "blocks.1.blocks.5.stack.0.weight",
            ),
            ("up_blocks.2.proj.weight", "blocks.3.proj.weight"),
            (
                "block_out.resnets.1.norm2.norm_layer.bias",
                "blocks.4.1.stack.3.bias",
            ),
            ("proj_out.weight", "output_proj.weight"),
        ];
        for (diffusers, genmo) in cases {
            assert_eq!(
                genmo_key(diffusers, 3).as_deref(),
                Some(genmo),
                "{diffusers}"
            );
        }
        assert_eq!(genmo_key("block_in.resnets.0.conv3.conv.weight", 3), None);
    }
}
