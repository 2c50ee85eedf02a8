//! `mochi model check DIR`: verifies a model directory without loading it — every file
//! present and as long as its header says, every tensor the configs imply present with the
//! right shape and a float dtype the loader reads, and the components consistent with each
//! other — and says exactly what is wrong.
//!
//! Both layouts of the release are understood: diffusers' folders (`transformer/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, each with its `config.json`) and genmo's files
//! (`dit.safetensors` and `decoder.safetensors` without a config, whose structure is read
//! from their shapes the way the loaders read it, and the T5 folder
//! [`crate::pipeline::text_encoder::GENMO_T5_DIR`]). When both are present, both are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::ExpectedTensor;
use super::safetensors_header::{self, TensorInfo};
use crate::model::Config as DitConfig;
use crate::model::vae::VaeConfig;
use crate::pipeline::text_encoder::TextDirs;

/// genmo's transformer checkpoint, at the root of a model directory.
pub const GENMO_DIT_FILE: &str = "dit.safetensors";
/// genmo's VAE decoder checkpoint, at the root of a model directory.
pub const GENMO_DECODER_FILE: &str = "decoder.safetensors";
/// The key prefix ComfyUI's repacks put in front of genmo's transformer keys.
const GENMO_DIT_PREFIX: &str = "model.diffusion_model.";

/// Dtypes the loaders convert from.
const FLOAT_DTYPES: [&str; 3] = ["F32", "BF16", "F16"];
/// Problems listed per component before the rest are counted.
const MAX_LISTED: usize = 40;

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One line per component that passed, what it holds.
    pub summary: Vec<String>,
    /// Every problem, one sentence each.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether the directory is usable.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.summary {
            writeln!(f, "ok: {line}")?;
        }
        for line in &self.problems {
            writeln!(f, "problem: {line}")?;
        }
        if self.is_ok() {
            writeln!(f, "model directory is complete")
        } else {
            writeln!(f, "{} problem(s) found", self.problems.len())
        }
    }
}

/// One component's weight files.
struct WeightSet<'a> {
    component: &'a str,
    /// The index, if the weights are sharded.
    index: Option<PathBuf>,
    /// The single file, if not.
    single: Option<PathBuf>,
    expected: Vec<ExpectedTensor>,
    /// Whether a tensor outside `expected` is a problem (genmo's files, whose structure is
    /// read from the shapes: a stray block means one before it is missing).
    exhaustive: bool,
}

struct Checker<'a> {
    root: &'a Path,
    report: Report,
}

impl Checker<'_> {
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn problem(&mut self, text: String) {
        self.report.problems.push(text);
    }

    fn read_config(&mut self, relative: &str) -> Option<String> {
        let path = self.root.join(relative);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.problem(format!("missing file {relative}"));
                None
            }
            Err(e) => {
                self.problem(format!("cannot read {relative}: {e}"));
                None
            }
        }
    }

    /// Reads the headers of a weight set (checking sizes and the index) and compares the
    /// tensors with the expected ones.
    fn weights(&mut self, set: &WeightSet<'_>) {
        let component = set.component;
        let before = self.report.problems.len();
        // file → tensors the index says it holds (empty for a single file).
        let mut listed: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        if let Some(index) = &set.index {
            match read_index(index) {
                Ok(map) => {
                    let dir = index.parent().unwrap_or(self.root);
                    for (tensor, file) in map {
                        listed.entry(dir.join(file)).or_default().push(tensor);
                    }
                }
                Err(e) => {
                    self.problem(format!("{}: {e}", self.rel(index)));
                    return;
                }
            }
        } else if let Some(single) = &set.single {
            listed.insert(single.clone(), Vec::new());
        }
        let mut found: BTreeMap<String, (PathBuf, TensorInfo)> = BTreeMap::new();
        let mut unreadable: BTreeSet<String> = BTreeSet::new();
        let mut bytes = 0u64;
        for (file, names) in &listed {
            if !file.is_file() {
                let example = names
                    .first()
                    .map_or(String::new(), |n| format!(", e.g. `{n}`"));
                self.problem(format!(
                    "missing shard {} (listed in {}; it should hold {} tensors{example})",
                    self.rel(file),
                    set.index
                        .as_deref()
                        .map_or_else(String::new, |i| self.rel(i)),
                    names.len()
                ));
                unreadable.extend(names.iter().cloned());
                continue;
            }
            let header = match safetensors_header::read(file) {
                Ok(header) => header,
                Err(e) => {
                    let text = e.replace(&format!("{}/", self.root.display()), "");
                    self.problem(text);
                    unreadable.extend(names.iter().cloned());
                    continue;
                }
            };
            if header.file_bytes != header.expected_file_bytes {
                self.problem(format!(
                    "{} has {} bytes but its header describes {} (truncated or damaged download)",
                    self.rel(file),
                    header.file_bytes,
                    header.expected_file_bytes
                ));
            }
            bytes += header.file_bytes;
            for name in names {
                if !header.tensors.contains_key(name) {
                    self.problem(format!(
                        "`{name}` is listed in {} as held by {}, which does not hold it",
                        set.index
                            .as_deref()
                            .map_or_else(String::new, |i| self.rel(i)),
                        self.rel(file)
                    ));
                }
            }
            for (name, info) in header.tensors {
                found.insert(name, (file.clone(), info));
            }
        }
        let mut listed_problems = 0usize;
        let mut unlisted = 0usize;
        let mut dtypes = BTreeSet::new();
        for (name, shape) in &set.expected {
            let problem = match found.get(name) {
                None if unreadable.contains(name) => None,
                None => Some(format!(
                    "missing tensor `{name}` in {component} (expected shape {shape:?})"
                )),
                Some((file, info)) => {
                    dtypes.insert(info.dtype.clone());
                    if info.shape != *shape {
                        Some(format!(
                            "tensor `{name}` in {} has shape {:?}, the config needs {shape:?}",
                            self.rel(file),
                            info.shape
                        ))
                    } else if !FLOAT_DTYPES.contains(&info.dtype.as_str()) {
                        Some(format!(
                            "tensor `{name}` in {} has dtype {}, expected one of {}",
                            self.rel(file),
                            info.dtype,
                            FLOAT_DTYPES.join(", ")
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(text) = problem {
                if listed_problems < MAX_LISTED {
                    self.problem(text);
                    listed_problems += 1;
                } else {
                    unlisted += 1;
                }
            }
        }
        if unlisted > 0 {
            self.problem(format!(
                "{component}: {unlisted} more tensor problems not listed"
            ));
        }
        if set.exhaustive {
            let expected: BTreeSet<&str> = set.expected.iter().map(|(n, _)| n.as_str()).collect();
            let stray: Vec<&String> = found
                .keys()
                .filter(|name| !expected.contains(name.as_str()))
                .collect();
            if let Some(first) = stray.first() {
                self.problem(format!(
                    "{component}: {} tensor(s) the structure read from the shapes does not account for, e.g. `{first}` (a block missing before them, or another model's file)",
                    stray.len()
                ));
            }
        }
        if self.report.problems.len() == before {
            let files = listed.len();
            let dtypes: Vec<String> = dtypes.into_iter().collect();
            self.report.summary.push(format!(
                "{component}: {} tensors in {files} file(s), {:.1} MiB, {}",
                set.expected.len(),
                bytes as f64 / f64::from(1u32 << 20),
                dtypes.join("+")
            ));
        }
    }
}

impl Checker<'_> {
    /// The header of a single-file checkpoint, or a problem (missing, unreadable, truncated).
    fn single_header(&mut self, file: &Path) -> Option<safetensors_header::Header> {
        match safetensors_header::read(file) {
            Ok(header) if header.file_bytes == header.expected_file_bytes => Some(header),
            Ok(header) => {
                self.problem(format!(
                    "{} has {} bytes but its header describes {} (truncated or damaged download)",
                    self.rel(file),
                    header.file_bytes,
                    header.expected_file_bytes
                ));
                None
            }
            Err(e) => {
                let text = e.replace(&format!("{}/", self.root.display()), "");
                self.problem(text);
                None
            }
        }
    }

    /// genmo's `dit.safetensors`: the structure read from the shapes (as the loader reads
    /// it), then every tensor of genmo's module tree for it, and nothing else.
    fn genmo_dit(&mut self, file: &Path) -> Option<DitConfig> {
        let header = self.single_header(file)?;
        let prefix = if header
            .tensors
            .contains_key(&format!("{GENMO_DIT_PREFIX}blocks.0.attn.qkv_x.weight"))
        {
            GENMO_DIT_PREFIX
        } else {
            ""
        };
        let derived = crate::model::weights::Weights::from_files(
            &[file.to_path_buf()],
            DType::F32,
            &Device::Cpu,
        )
        .and_then(|weights| DitConfig::from_weights(&weights));
        let config = match derived {
            Ok(config) => config,
            Err(e) => {
                self.problem(format!(
                    "{}: cannot read the transformer's structure from its shapes: {e}",
                    self.rel(file)
                ));
                return None;
            }
        };
        let block_prefix = format!("{prefix}blocks.");
        let highest = header
            .tensors
            .keys()
            .filter_map(|name| name.strip_prefix(&block_prefix)?.split_once('.'))
            .filter_map(|(index, _)| index.parse::<usize>().ok())
            .max();
        if let Some(highest) = highest
            && highest >= config.num_layers
        {
            self.problem(format!(
                "{} has no block {} (`{block_prefix}{}.mod_x.weight`) but holds blocks up to {highest}: a block is missing",
                self.rel(file),
                config.num_layers,
                config.num_layers
            ));
            return None;
        }
        let expected = super::genmo_dit_tensors(&config)
            .into_iter()
            .map(|(name, shape)| (format!("{prefix}{name}"), shape))
            .collect();
        self.weights(&WeightSet {
            component: "transformer (genmo dit.safetensors)",
            index: None,
            single: Some(file.to_path_buf()),
            expected,
            exhaustive: true,
        });
        Some(config)
    }

    /// genmo's `decoder.safetensors`, the same way.
    fn genmo_decoder(&mut self, file: &Path) -> Option<VaeConfig> {
        self.single_header(file)?;
        let derived = crate::model::vae::weights::VaeWeights::from_files(
            &[file.to_path_buf()],
            DType::F32,
            &Device::Cpu,
        )
        .and_then(|weights| {
            let config = VaeConfig::from_weights(&weights)?;
            Ok((weights, config))
        });
        let (weights, config) = match derived {
            Ok(found) => found,
            Err(e) => {
                self.problem(format!(
                    "{}: cannot read the decoder's structure from its shapes: {e}",
                    self.rel(file)
                ));
                return None;
            }
        };
        let prefix = match weights.scheme() {
            crate::model::vae::weights::VaeScheme::Genmo { prefix } => prefix.clone(),
            crate::model::vae::weights::VaeScheme::Diffusers { .. } => {
                self.problem(format!(
                    "{} holds diffusers' decoder names; genmo's file holds `blocks.0.0.weight` and the like",
                    self.rel(file)
                ));
                return None;
            }
        };
        let expected = super::genmo_vae_decoder_tensors(&config)
            .into_iter()
            .map(|(name, shape)| (format!("{prefix}{name}"), shape))
            .collect();
        self.weights(&WeightSet {
            component: "vae decoder (genmo decoder.safetensors)",
            index: None,
            single: Some(file.to_path_buf()),
            expected,
            exhaustive: true,
        });
        Some(config)
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map object")?;
    map.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|f| (k.clone(), f.to_owned()))
                .ok_or_else(|| format!("weight_map entry `{k}` is not a file name"))
        })
        .collect()
}

/// The weight files of a diffusers component folder: the index if there is one, else the
/// single file; `None` when neither exists.
fn weight_files(
    dir: &Path,
    index: &str,
    single: &str,
) -> Option<(Option<PathBuf>, Option<PathBuf>)> {
    let index = dir.join(index);
    if index.is_file() {
        return Some((Some(index), None));
    }
    let single = dir.join(single);
    single.is_file().then_some((None, Some(single)))
}

/// Checks the model directory `root`.
pub fn check(root: &Path) -> Report {
    let mut c = Checker {
        root,
        report: Report::default(),
    };
    if !root.is_dir() {
        c.problem(format!("{} is not a directory", root.display()));
        return c.report;
    }

    // transformer/: the f32 files and/or diffusers' bf16 variant; genmo's dit.safetensors.
    let genmo_dit = root.join(GENMO_DIT_FILE);
    let has_genmo_dit = genmo_dit.is_file();
    let mut dit = None;
    if !has_genmo_dit && !root.join("transformer").is_dir() {
        c.problem(format!("no transformer: expected transformer/ (config.json and weights, diffusers' layout) or {GENMO_DIT_FILE} (genmo's)"));
    } else if root.join("transformer").is_dir() {
        dit = c.read_config("transformer/config.json").and_then(|text| {
            match crate::model::Config::from_diffusers_json(&text) {
                Ok(config) => Some(config),
                Err(e) => {
                    c.problem(format!("transformer/config.json: {e}"));
                    None
                }
            }
        });
    }
    if let Some(config) = &dit {
        let dir = root.join("transformer");
        let variants = [
            (
                "transformer",
                "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.safetensors",
            ),
            (
                "transformer (bf16 variant)",
                "diffusion_pytorch_model.safetensors.index.bf16.json",
                "diffusion_pytorch_model.bf16.safetensors",
            ),
        ];
        let mut any = false;
        for (component, index, single) in variants {
            if let Some((index, single)) = weight_files(&dir, index, single) {
                any = true;
                c.weights(&WeightSet {
                    component,
                    index,
                    single,
                    expected: super::dit_tensors(config),
                    exhaustive: false,
                });
            }
        }
        if !any {
            c.problem(format!("no transformer weights: expected transformer/diffusion_pytorch_model.safetensors.index.json with its shards, or transformer/diffusion_pytorch_model.safetensors (or their bf16 variants), or genmo's {GENMO_DIT_FILE}"));
        }
    }
    if has_genmo_dit {
        let genmo = c.genmo_dit(&genmo_dit);
        dit = dit.or(genmo);
    }

    // The text path: diffusers' text_encoder/ + tokenizer/, or genmo's T5 folder.
    let text = TextDirs::find(root);
    let encoder_dir = c.rel(&text.encoder);
    let t5 = c
        .read_config(&format!("{encoder_dir}/config.json"))
        .and_then(|json| match super::t5_config_from_json(&json) {
            Ok(config) => Some(config),
            Err(e) => {
                c.problem(format!("{encoder_dir}/config.json: {e}"));
                None
            }
        });
    if let Some(config) = &t5 {
        match weight_files(&text.encoder, "model.safetensors.index.json", "model.safetensors") {
            Some((index, single)) => {
                let mut expected = super::t5_encoder_tensors(config);
                // The token embedding may be stored under the encoder's own name.
                if let Some(entry) = expected.iter_mut().find(|(n, _)| n == "shared.weight")
                    && !holds(index.as_deref(), single.as_deref(), "shared.weight")
                    && holds(index.as_deref(), single.as_deref(), "encoder.embed_tokens.weight")
                {
                    entry.0 = "encoder.embed_tokens.weight".to_owned();
                }
                c.weights(&WeightSet {
                    component: "text_encoder",
                    index,
                    single,
                    expected,
                    exhaustive: false,
                });
            }
            None => c.problem(format!("no T5 weights: expected {encoder_dir}/model.safetensors.index.json with its shards, or {encoder_dir}/model.safetensors")),
        }
    }
    match crate::pipeline::text_encoder::PromptTokenizer::from_model_dir(root) {
        Ok(_) => c.report.summary.push("tokenizer: loads".to_owned()),
        Err(e) => c.problem(format!("tokenizer: {e}")),
    }

    // vae/: the decoder; genmo's decoder.safetensors.
    let genmo_decoder = root.join(GENMO_DECODER_FILE);
    let has_genmo_decoder = genmo_decoder.is_file();
    let mut vae = None;
    if !has_genmo_decoder && !root.join("vae").is_dir() {
        c.problem(format!("no VAE decoder: expected vae/ (config.json and weights, diffusers' layout) or {GENMO_DECODER_FILE} (genmo's)"));
    } else if root.join("vae").is_dir() {
        vae = c.read_config("vae/config.json").and_then(|text| {
            match super::vae_config_from_json(&text) {
                Ok(config) => Some(config),
                Err(e) => {
                    c.problem(format!("vae/config.json: {e}"));
                    None
                }
            }
        });
    }
    if let Some(config) = &vae {
        match weight_files(&root.join("vae"), "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors") {
            Some((index, single)) => c.weights(&WeightSet {
                component: "vae decoder",
                index,
                single,
                expected: super::vae_decoder_tensors(config),
                exhaustive: false,
            }),
            None => c.problem(format!("no VAE weights: expected vae/diffusion_pytorch_model.safetensors (or an index with shards), or genmo's {GENMO_DECODER_FILE}")),
        }
    }
    if has_genmo_decoder {
        let genmo = c.genmo_decoder(&genmo_decoder);
        vae = vae.or(genmo);
    }

    // The components must fit together.
    if let (Some(dit), Some(t5)) = (&dit, &t5)
        && dit.text_embed_dim != t5.d_model
    {
        c.problem(format!(
            "transformer text_embed_dim is {} but the T5 encoder's d_model is {}",
            dit.text_embed_dim, t5.d_model
        ));
    }
    if let (Some(dit), Some(vae)) = (&dit, &vae)
        && dit.out_channels != vae.latent_channels
    {
        c.problem(format!(
            "transformer out_channels is {} but the VAE decoder takes {} latent channels",
            dit.out_channels, vae.latent_channels
        ));
    }
    c.report
}

/// Whether a weight set holds `name` (by the index, or the single file's header).
fn holds(index: Option<&Path>, single: Option<&Path>, name: &str) -> bool {
    if let Some(index) = index {
        return read_index(index).is_ok_and(|map| map.contains_key(name));
    }
    single
        .and_then(|file| safetensors_header::read(file).ok())
        .is_some_and(|header| header.tensors.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_dir::{reduced, tiny};

    fn tiny_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        tiny::ensure(dir.path()).expect("tiny model");
        dir
    }

    #[test]
    fn the_tiny_model_passes() {
        let dir = tiny_dir();
        let report = check(dir.path());
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.summary.len(), 4, "{report}");
        assert!(report.to_string().contains("model directory is complete"));
    }

    #[test]
    fn a_missing_shard_is_named_with_its_index() {
        let dir = tiny_dir();
        let shard = "transformer/diffusion_pytorch_model-00002-of-00002.safetensors";
        std::fs::remove_file(dir.path().join(shard)).expect("remove");
        let report = check(dir.path());
        assert_eq!(report.problems.len(), 1, "{report}");
        let line = &report.problems[0];
        assert!(
            line.starts_with(&format!("missing shard {shard}")),
            "{line}"
        );
        assert!(
            line.contains("diffusion_pytorch_model.safetensors.index.json"),
            "{line}"
        );
    }

    #[test]
    fn a_wrong_shape_shows_both_shapes() {
        let dir = tiny_dir();
        let path = dir.path().join("vae/diffusion_pytorch_model.safetensors");
        let mut tensors =
            candle_core::safetensors::load(&path, &candle_core::Device::Cpu).expect("load");
        let bad =
            candle_core::Tensor::zeros((3, 16), candle_core::DType::F32, &candle_core::Device::Cpu)
                .expect("zeros");
        tensors.insert("decoder.proj_out.weight".to_owned(), bad);
        candle_core::safetensors::save(&tensors, &path).expect("save");
        let report = check(dir.path());
        assert_eq!(
            report.problems,
            vec![
                "tensor `decoder.proj_out.weight` in vae/diffusion_pytorch_model.safetensors has shape [3, 16], the config needs [3, 32]"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn truncation_missing_files_and_tensors_are_reported() {
        let dir = tiny_dir();
        let t5 = dir.path().join("text_encoder/model.safetensors");
        let bytes = std::fs::read(&t5).expect("read");
        std::fs::write(&t5, &bytes[..bytes.len() - 100]).expect("truncate");
        std::fs::remove_file(dir.path().join("tokenizer/spiece.model")).expect("remove");
        std::fs::remove_file(dir.path().join("vae/config.json")).expect("remove");
        let report = check(dir.path());
        let text = report.to_string();
        assert!(
            text.contains("text_encoder/model.safetensors has"),
            "{text}"
        );
        assert!(text.contains("truncated"), "{text}");
        assert!(text.contains("tokenizer: no tokenizer"), "{text}");
        assert!(text.contains("missing file vae/config.json"), "{text}");
        assert_eq!(report.problems.len(), 3, "{text}");
    }

    fn reduced_dir(layout: reduced::Layout) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        reduced::write(dir.path(), layout).expect("reduced release");
        dir
    }

    #[test]
    fn the_reduced_release_passes_in_both_layouts() {
        let diffusers = check(reduced_dir(reduced::Layout::Diffusers).path());
        assert!(diffusers.is_ok(), "{diffusers}");
        let text = diffusers.to_string();
        // 48 blocks: 22 tensors each, 18 for the last (no text update), 19 outside them.
        let tensors = 47 * 22 + 18 + 19;
        assert!(
            text.contains(&format!("ok: transformer: {tensors} tensors in 5 file(s)")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ok: transformer (bf16 variant): {tensors} tensors in 3 file(s)"
            )) && text.contains("BF16"),
            "{text}"
        );
        assert!(text.contains("ok: text_encoder: "), "{text}");

        let genmo = check(reduced_dir(reduced::Layout::Genmo).path());
        assert!(genmo.is_ok(), "{genmo}");
        let text = genmo.to_string();
        // genmo's fused q/k/v: 18 per block, 14 for the last, 19 outside.
        let genmo_tensors = 47 * 18 + 14 + 19;
        assert!(
            text.contains(&format!(
                "ok: transformer (genmo dit.safetensors): {genmo_tensors} tensors in 1 file(s)"
            )),
            "{text}"
        );
        assert!(
            text.contains("ok: vae decoder (genmo decoder.safetensors)"),
            "{text}"
        );
        assert!(text.contains("ok: text_encoder: ") && text.contains("ok: tokenizer: loads"));
    }

    #[test]
    fn a_genmo_checkpoint_missing_a_block_is_refused() {
        let dir = reduced_dir(reduced::Layout::Genmo);
        let path = dir.path().join(GENMO_DIT_FILE);
        let mut tensors =
            candle_core::safetensors::load(&path, &candle_core::Device::Cpu).expect("load");
        tensors.retain(|name, _| !name.starts_with("blocks.20."));
        candle_core::safetensors::save(&tensors, &path).expect("save");
        let report = check(dir.path());
        assert_eq!(
            report.problems,
            vec![
                "dit.safetensors has no block 20 (`blocks.20.mod_x.weight`) but holds blocks up to 47: a block is missing"
                    .to_owned()
            ]
        );
        // A tensor of another model is named.
        let dir = reduced_dir(reduced::Layout::Genmo);
        let path = dir.path().join(GENMO_DIT_FILE);
        let mut tensors =
            candle_core::safetensors::load(&path, &candle_core::Device::Cpu).expect("load");
        let extra =
            candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu)
                .expect("zeros");
        tensors.insert("lora.alpha".to_owned(), extra);
        candle_core::safetensors::save(&tensors, &path).expect("save");
        let text = check(dir.path()).to_string();
        assert!(
            text.contains("1 tensor(s) the structure read from the shapes does not account for, e.g. `lora.alpha`"),
            "{text}"
        );

        // A missing T5 folder is named by its genmo name.
        let dir = reduced_dir(reduced::Layout::Genmo);
        std::fs::remove_file(dir.path().join("t5-v1_1-xxl/model.safetensors")).expect("rm");
        let text = check(dir.path()).to_string();
        assert!(
            text.contains("no T5 weights: expected t5-v1_1-xxl/model.safetensors.index.json"),
            "{text}"
        );
    }
}
