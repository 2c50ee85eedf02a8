//! Loading AsymmDiT weights from the released layouts, memory-mapped.
//!
//! Two key schemes are understood: diffusers' `transformer/` folder (sharded
//! safetensors with `diffusion_pytorch_model.safetensors.index.json`, or a single file)
//! and genmo's original `dit.safetensors` (optionally prefixed `model.diffusion_model.`).
//! Tensors are always requested by their diffusers name; the genmo scheme is mapped
//! on the fly through the key table of [`super::keys`] (q/k/v row split, SwiGLU half swap,
//! final modulation half swap, see `docs/mochi-model-spec.md` §2.6).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Error, Result, Tensor};

use super::keys::{self, FromGenmo, genmo_source};

/// Which key scheme a checkpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// diffusers `MochiTransformer3DModel` names.
    Diffusers,
    /// genmo `AsymmDiTJoint` names, with the given key prefix (often empty).
    Genmo {
        /// Prefix in front of every key, e.g. `model.diffusion_model.`.
        prefix: String,
    },
}

/// Where the tensors live.
enum Source {
    /// Memory-mapped safetensors files.
    Mmap(MmapedSafetensors),
    /// Tensors already in memory (random checkpoints for benchmarks).
    Memory(HashMap<String, Tensor>),
}

impl Source {
    fn contains(&self, key: &str) -> bool {
        match self {
            Self::Mmap(tensors) => tensors.get(key).is_ok(),
            Self::Memory(tensors) => tensors.contains_key(key),
        }
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        match self {
            Self::Mmap(tensors) => tensors.get(key).ok().map(|view| view.shape().to_vec()),
            Self::Memory(tensors) => tensors.get(key).map(|t| t.dims().to_vec()),
        }
    }
}

/// A checkpoint's tensors (memory-mapped files, or in memory) plus the scheme to
/// translate names.
pub struct Weights {
    tensors: Source,
    files: Vec<PathBuf>,
    scheme: Scheme,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.files)
            .field("scheme", &self.scheme)
            .field("dtype", &self.dtype)
            .finish()
    }
}

const INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.json";
const SINGLE_FILE: &str = "diffusion_pytorch_model.safetensors";
/// diffusers' `variant="bf16"` names (the variant goes before the last extension).
const BF16_INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.bf16.json";
const BF16_SINGLE_FILE: &str = "diffusion_pytorch_model.bf16.safetensors";
const GENMO_FILE: &str = "dit.safetensors";

/// Finds the weight files of a model directory: `transformer/` (diffusers, sharded or
/// not, the f32 files first), the directory itself if it is a `transformer/` folder, or
/// `dit.safetensors`.
pub fn find_weight_files(model_dir: &Path) -> Result<Vec<PathBuf>> {
    find_weight_files_preferring(model_dir, false)
}

/// [`find_weight_files`]; with `prefer_bf16` the release's `bf16` variant (half the bytes
/// to read) is taken when present, the f32 files otherwise (and vice versa).
pub fn find_weight_files_preferring(model_dir: &Path, prefer_bf16: bool) -> Result<Vec<PathBuf>> {
    let f32_names = [INDEX_FILE, SINGLE_FILE];
    let bf16_names = [BF16_INDEX_FILE, BF16_SINGLE_FILE];
    let order = if prefer_bf16 {
        [bf16_names, f32_names]
    } else {
        [f32_names, bf16_names]
    };
    let candidates = [model_dir.join("transformer"), model_dir.to_path_buf()];
    for dir in &candidates {
        for [index_name, single_name] in order {
            let index = dir.join(index_name);
            if index.is_file() {
                return shards_from_index(&index);
            }
            let single = dir.join(single_name);
            if single.is_file() {
                return Ok(vec![single]);
            }
        }
    }
    let genmo = model_dir.join(GENMO_FILE);
    if genmo.is_file() {
        return Ok(vec![genmo]);
    }
    if model_dir.is_file() {
        return Ok(vec![model_dir.to_path_buf()]);
    }
    Err(Error::Msg(format!(
        "no transformer weights in {}: expected transformer/{INDEX_FILE}, transformer/{SINGLE_FILE} (or their bf16 variants) or {GENMO_FILE}",
        model_dir.display()
    )))
}

/// Lists the shard files named by a safetensors index, checking each exists.
pub fn shards_from_index(index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path)
        .map_err(|e| Error::Msg(format!("cannot read {}: {e}", index_path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Msg(format!("invalid index {}: {e}", index_path.display())))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::Msg(format!(
                "index {} has no weight_map object",
                index_path.display()
            ))
        })?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(Error::Msg(format!(
                "missing weight shard {} (listed in {})",
                path.display(),
                index_path.display()
            )));
        }
        files.push(path);
    }
    Ok(files)
}

impl Weights {
    /// Memory-maps the given safetensors files; `dtype` is the storage dtype for
    /// matmul weights (f32 or bf16).
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
        let tensors = Source::Mmap(unsafe { MmapedSafetensors::multi(files)? });
        let scheme = detect_scheme(&tensors);
        Ok(Self {
            tensors,
            files: files.to_vec(),
            scheme,
            dtype,
            device: device.clone(),
        })
    }

    /// Wraps tensors already in memory (either key scheme); `dtype` as for files.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        let tensors = Source::Memory(tensors);
        let scheme = detect_scheme(&tensors);
        Self {
            tensors,
            files: Vec::new(),
            scheme,
            dtype,
            device: device.clone(),
        }
    }

    /// Finds and maps the transformer weights of a model directory (see
    /// [`find_weight_files_preferring`]; the bf16 variant is preferred for `DType::BF16`).
    pub fn from_model_dir(model_dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = find_weight_files_preferring(model_dir, dtype == DType::BF16)?;
        Self::from_files(&files, dtype, device)
    }

    /// The memory-mapped files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The detected key scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Storage dtype of matmul weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a tensor (by diffusers name) is present, without loading it.
    pub fn contains(&self, name: &str) -> bool {
        let key = match &self.scheme {
            Scheme::Diffusers => name.to_string(),
            Scheme::Genmo { prefix } => match genmo_source(name) {
                None => return false,
                Some((key, _)) => format!("{prefix}{key}"),
            },
        };
        self.tensors.contains(&key)
    }

    /// The shape of a tensor (by diffusers name) as it would load, without loading it.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let (key, parts) = match &self.scheme {
            Scheme::Diffusers => (name.to_string(), 1),
            Scheme::Genmo { prefix } => match genmo_source(name) {
                None => {
                    return Err(Error::Msg(format!(
                        "tensor `{name}` has no genmo equivalent"
                    )));
                }
                Some((key, FromGenmo::Rows { parts, .. })) => (format!("{prefix}{key}"), parts),
                Some((key, _)) => (format!("{prefix}{key}"), 1),
            },
        };
        let mut shape = self.tensors.shape(&key).ok_or_else(|| {
            Error::Msg(format!(
                "missing tensor `{name}` (key `{key}`) in {}",
                self.files_list()
            ))
        })?;
        if let Some(rows) = shape.first_mut() {
            *rows /= parts;
        }
        Ok(shape)
    }

    /// Number of transformer blocks present in the checkpoint.
    pub fn count_blocks(&self) -> usize {
        let mut count = 0;
        while self.contains(&keys::block::MOD_X.in_block(count, "weight")) {
            count += 1;
        }
        count
    }

    fn load_key(&self, key: &str, name: &str) -> Result<Tensor> {
        let missing = || {
            Error::Msg(format!(
                "missing tensor `{name}` (key `{key}`) in {}",
                self.files_list()
            ))
        };
        match &self.tensors {
            Source::Mmap(tensors) => {
                let view = tensors.get(key).map_err(|_| missing())?;
                // Load on the CPU first so row splits and swaps are cheap copies.
                candle_core::safetensors::Load::load(&view, &Device::Cpu)
            }
            Source::Memory(tensors) => tensors.get(key).cloned().ok_or_else(missing),
        }
    }

    fn files_list(&self) -> String {
        if self.files.is_empty() {
            return "the in-memory checkpoint".to_string();
        }
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Loads by diffusers name, translating the genmo scheme; no shape check, CPU, file dtype.
    fn load_raw(&self, name: &str) -> Result<Tensor> {
        match &self.scheme {
            Scheme::Diffusers => self.load_key(name, name),
            Scheme::Genmo { prefix } => match genmo_source(name) {
                None => Err(Error::Msg(format!(
                    "tensor `{name}` has no genmo equivalent"
                ))),
                Some((key, FromGenmo::Same)) => self.load_key(&format!("{prefix}{key}"), name),
                Some((key, FromGenmo::Rows { index, parts })) => {
                    let full = self.load_key(&format!("{prefix}{key}"), name)?;
                    let rows = full.dim(0)?;
                    if rows % parts != 0 {
                        return Err(Error::Msg(format!(
                            "tensor `{prefix}{key}` has shape {:?}, rows not divisible by {parts}",
                            full.dims()
                        )));
                    }
                    full.narrow(0, index * rows / parts, rows / parts)
                }
                Some((key, FromGenmo::SwapHalves)) => {
                    let full = self.load_key(&format!("{prefix}{key}"), name)?;
                    swap_halves(&full)
                }
            },
        }
    }

    /// Loads a tensor by diffusers name and checks its shape; a `0` in `expected`
    /// accepts any size on that axis. Converted to `dtype` on the target device.
    pub fn get_as(&self, name: &str, expected: &[usize], dtype: DType) -> Result<Tensor> {
        let tensor = self.load_raw(name)?;
        check_shape(name, tensor.dims(), expected)?;
        tensor.to_dtype(dtype)?.to_device(&self.device)
    }

    /// [`Weights::get_as`] in the storage dtype.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, self.dtype)
    }

    /// [`Weights::get_as`] in f32 (biases, norm weights, `pos_frequencies`).
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, DType::F32)
    }
}

/// Errors unless `actual` matches `expected` (0 = any size), naming the tensor and both shapes.
pub fn check_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    let matches = actual.len() == expected.len()
        && actual.iter().zip(expected).all(|(a, e)| *e == 0 || a == e);
    if matches {
        return Ok(());
    }
    let shown: Vec<String> = expected
        .iter()
        .map(|e| {
            if *e == 0 {
                "_".to_string()
            } else {
                e.to_string()
            }
        })
        .collect();
    Err(Error::Msg(format!(
        "tensor `{name}` has shape {actual:?}, expected [{}]",
        shown.join(", ")
    )))
}

fn swap_halves(t: &Tensor) -> Result<Tensor> {
    let rows = t.dim(0)?;
    if rows % 2 != 0 {
        return Err(Error::Msg(format!(
            "cannot swap halves of a tensor with shape {:?}",
            t.dims()
        )));
    }
    let half = rows / 2;
    Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)
}

fn detect_scheme(tensors: &Source) -> Scheme {
    for prefix in ["", "model.diffusion_model."] {
        if tensors.contains(&format!(
            "{prefix}{}.0.{}.weight",
            keys::BLOCKS.genmo,
            keys::block::TO_Q.genmo
        )) {
            return Scheme::Genmo {
                prefix: prefix.to_string(),
            };
        }
    }
    Scheme::Diffusers
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::model::Config;
    use crate::model::keys::{FromGenmo, genmo_source};
    use crate::model_dir::{dit_tensors, genmo_dit_tensors};

    /// The loader's genmo mapping and genmo's module tree, written apart, agree on the
    /// release: every diffusers tensor comes from a genmo tensor of the right shape, and
    /// every genmo tensor is read.
    #[test]
    fn the_genmo_mapping_covers_genmo_s_tree_exactly() {
        let config = Config::mochi_1_preview();
        let genmo: BTreeMap<String, Vec<usize>> = genmo_dit_tensors(&config).into_iter().collect();
        let mut read = BTreeSet::new();
        for (name, shape) in dit_tensors(&config) {
            let (key, parts) = match genmo_source(&name) {
                Some((key, FromGenmo::Rows { parts, .. })) => (key, parts),
                Some((key, _)) => (key, 1),
                None => panic!("`{name}` has no genmo source"),
            };
            let source = genmo
                .get(&key)
                .unwrap_or_else(|| panic!("`{name}` maps to `{key}`, not in genmo's tree"));
            let mut expected = shape.clone();
            expected[0] *= parts;
            assert_eq!(source, &expected, "`{name}` from `{key}`");
            read.insert(key);
        }
        let unread: Vec<&String> = genmo.keys().filter(|k| !read.contains(*k)).collect();
        assert!(unread.is_empty(), "genmo tensors never read: {unread:?}");
    }
}
