//! GPU utilisation and memory as the driver measures them (NVML), per slot.
//!
//! A slot's backend says which CUDA device ordinal it runs on; NVML numbers the GPUs in PCI
//! bus order and ignores `CUDA_VISIBLE_DEVICES`, so [`resolve`] finds the NVML device of an
//! ordinal: the ordinal's entry in `CUDA_VISIBLE_DEVICES` when that is set (a GPU UUID, or a
//! prefix of one, or an index), else the ordinal itself. An index is in CUDA's numbering,
//! which is the PCI bus order under `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and otherwise (CUDA puts
//! the fastest GPU first) only where every GPU is the same model; and only where the process
//! can open every GPU NVML lists (under cgroup device isolation CUDA numbers only the GPUs it
//! may open). Otherwise the slot is not read rather than read from the wrong GPU; GPU UUIDs
//! in `CUDA_VISIBLE_DEVICES` always match. MIG instances are not read: NVML measures no
//! utilisation for them.
//!
//! Every `nvml_interval_ms` the node reads each slot's GPU: its utilisation (the share of the
//! driver's last sample period in which a kernel ran) and its memory, as gauges; while the
//! slot runs a job, the utilisation is also recorded in a histogram whose mean is the GPU's
//! utilisation while jobs run. `mochi_node_nvml_up` is 1 while every slot that should be read
//! is read. Loading NVML never holds up a node that does not require it (`nvml = "auto"`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use protocol::messages::SlotReport;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Whether a node reads its GPUs' utilisation and memory from the driver (NVML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlMode {
    /// Read the slots on CUDA devices when NVML loads; without it, warn and go on.
    Auto,
    /// Read every slot (one on the CPU or the simulated backend as the GPU of its index), and
    /// refuse to start when NVML does not load or a slot has no GPU.
    On,
    /// Never load NVML.
    Off,
}

/// The library NVML is loaded from unless `nvml_library` names another.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// How long a node that requires NVML waits for it to load and list its GPUs.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why NVML could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NvmlSetupError {
    /// The library did not load or its `nvmlInit` failed (no driver, no GPU, no permission).
    #[error("cannot load NVML from {library}: {source}")]
    Load {
        /// The library.
        library: String,
        /// What NVML said.
        #[source]
        source: NvmlError,
    },
    /// NVML loaded but could not list its GPUs.
    #[error("NVML cannot list its GPUs: {0}")]
    List(#[source] NvmlError),
    /// A slot's GPU is not one NVML can be asked about.
    #[error("slot {slot}: {reason}")]
    Slot {
        /// The slot.
        slot: u32,
        /// Why, and what to set.
        reason: String,
    },
    /// The blocking task that loads NVML failed.
    #[error("the task that loads NVML failed: {0}")]
    Task(String),
    /// NVML did not load and list its GPUs in time (a driver that hangs).
    #[error("NVML did not load within {0:?}")]
    Timeout(Duration),
}

/// One GPU as NVML lists it (in NVML's index order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlGpu {
    /// Its UUID (`GPU-…`).
    pub uuid: String,
    /// Its model name.
    pub name: String,
}

/// How CUDA is told which GPUs a process sees, from the process's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CudaEnv {
    /// `CUDA_VISIBLE_DEVICES`, when set.
    pub visible_devices: Option<String>,
    /// Whether `CUDA_DEVICE_ORDER` is `PCI_BUS_ID` (CUDA numbers GPUs as NVML does).
    pub pci_bus_order: bool,
}

impl CudaEnv {
    /// The settings of this process.
    pub fn from_process() -> Self {
        Self {
            visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            pci_bus_order: std::env::var("CUDA_DEVICE_ORDER").is_ok_and(|v| v == "PCI_BUS_ID"),
        }
    }
}

/// One entry of `CUDA_VISIBLE_DEVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Visible {
    Index(u32),
    Uuid(String),
    Mig(String),
}

/// The entries of `CUDA_VISIBLE_DEVICES`, up to the first CUDA would not accept (CUDA stops
/// there too: `0,2,-1,1` shows devices 0 and 2).
fn parse_visible(value: &str) -> Vec<Visible> {
    let mut entries = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let parsed = if entry.starts_with("GPU-") {
            Visible::Uuid(entry.to_owned())
        } else if entry.starts_with("MIG-") {
            Visible::Mig(entry.to_owned())
        } else if let Ok(index) = entry.parse::<u32>() {
            Visible::Index(index)
        } else {
            break;
        };
        entries.push(parsed);
    }
    entries
}

/// The NVML index of the GPU that CUDA calls `ordinal`, given how CUDA was told which GPUs
/// the process sees (`env`) and the GPUs NVML lists (`None`: one this process cannot open);
/// `Err` says why none can be named safely.
pub fn resolve(ordinal: usize, env: &CudaEnv, gpus: &[Option<NvmlGpu>]) -> Result<u32, String> {
    let entry = match &env.visible_devices {
        Some(value) => {
            let entries = parse_visible(value);
            entries.get(ordinal).cloned().ok_or_else(|| {
                format!(
                    "CUDA device {ordinal} is not among the {} CUDA_VISIBLE_DEVICES={value:?} shows",
                    entries.len()
                )
            })?
        }
        None => Visible::Index(u32::try_from(ordinal).map_err(|e| e.to_string())?),
    };
    match entry {
        Visible::Uuid(prefix) => {
            let mut matching = gpus.iter().zip(0u32..).filter(|(gpu, _)| {
                gpu.as_ref()
                    .is_some_and(|gpu| gpu.uuid.starts_with(&prefix))
            });
            match (matching.next(), matching.next()) {
                (Some((_, index)), None) => Ok(index),
                (None, _) => Err(format!("NVML lists no GPU with the UUID {prefix}")),
                (Some(_), Some(_)) => Err(format!(
                    "more than one GPU's UUID starts with {prefix}; give the whole UUID in CUDA_VISIBLE_DEVICES"
                )),
            }
        }
        Visible::Mig(id) => Err(format!(
            "{id} is a MIG instance; NVML measures no utilisation for one, so it is not read"
        )),
        Visible::Index(index) => {
            let Some(listed) = gpus.get(index as usize) else {
                return Err(format!(
                    "CUDA device index {index} is beyond the {} GPUs NVML lists",
                    gpus.len()
                ));
            };
            if gpus.iter().any(Option::is_none) {
                return Err(
                    "NVML lists GPUs this process cannot open, which CUDA does not \
                            number, so CUDA's indices need not be NVML's; give GPU UUIDs in \
                            CUDA_VISIBLE_DEVICES"
                        .to_owned(),
                );
            }
            let one_model = gpus
                .iter()
                .flatten()
                .all(|other| listed.as_ref().is_some_and(|gpu| other.name == gpu.name));
            if env.pci_bus_order || one_model {
                Ok(index)
            } else {
                Err(
                    "this host has GPUs of different models, which CUDA numbers fastest first \
                     and NVML by PCI bus; set CUDA_DEVICE_ORDER=PCI_BUS_ID (or GPU UUIDs in \
                     CUDA_VISIBLE_DEVICES) so that slots can be matched to GPUs"
                        .to_owned(),
                )
            }
        }
    }
}

/// One reading of a slot's GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Share of the driver's last sample period in which a kernel ran, 0 to 1 (`None`: the
    /// GPU does not measure it, as a MIG-enabled one).
    pub utilisation: Option<f64>,
    /// Device memory in use, bytes (by every process on the GPU).
    pub memory_used_bytes: u64,
    /// Device memory in all, bytes.
    pub memory_total_bytes: u64,
}

/// NVML, loaded, and the GPU of each slot it reads.
pub struct GpuReader {
    nvml: Nvml,
    /// `(slot, NVML index)`.
    slots: Vec<(u32, u32)>,
}

impl std::fmt::Debug for GpuReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuReader")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl GpuReader {
    /// Loads NVML from `library` (default [`DEFAULT_LIBRARY`]) and finds the GPU of each
    /// `(slot, CUDA ordinal)`; also returns the slots whose GPU cannot be named, with why.
    pub fn open(
        library: Option<&Path>,
        slots: &[(u32, usize)],
        env: &CudaEnv,
    ) -> Result<(Self, Vec<NvmlSetupError>), NvmlSetupError> {
        let path = library.map_or_else(|| PathBuf::from(DEFAULT_LIBRARY), Path::to_path_buf);
        let nvml = Nvml::builder()
            .lib_path(path.as_os_str())
            .init()
            .map_err(|source| NvmlSetupError::Load {
                library: path.display().to_string(),
                source,
            })?;
        let count = nvml.device_count().map_err(NvmlSetupError::List)?;
        // A GPU this process may not open (another cgroup's, one fallen off the bus) is listed
        // as `None`: it spoils no other slot's match.
        let gpus: Vec<Option<NvmlGpu>> = (0..count)
            .map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                Some(NvmlGpu {
                    uuid: device.uuid().ok()?,
                    name: device.name().ok()?,
                })
            })
            .collect();
        let mut read = Vec::new();
        let mut skipped = Vec::new();
        for &(slot, ordinal) in slots {
            match resolve(ordinal, env, &gpus) {
                Ok(index) => read.push((slot, index)),
                Err(reason) => skipped.push(NvmlSetupError::Slot { slot, reason }),
            }
        }
        Ok((Self { nvml, slots: read }, skipped))
    }

    /// The slots read, with the NVML index of each one's GPU.
    pub fn slots(&self) -> &[(u32, u32)] {
        &self.slots
    }

    /// Reads every slot's GPU (blocking; a few driver calls per GPU).
    pub fn sample(&self) -> Vec<(u32, Result<Sample, NvmlError>)> {
        self.slots
            .iter()
            .map(|&(slot, index)| {
                let read = || -> Result<Sample, NvmlError> {
                    let device = self.nvml.device_by_index(index)?;
                    let memory = device.memory_info()?;
                    let utilisation = match device.utilization_rates() {
                        Ok(rates) => Some(f64::from(rates.gpu.min(100)) / 100.0),
                        Err(NvmlError::NotSupported) => None,
                        Err(error) => return Err(error),
                    };
                    Ok(Sample {
                        utilisation,
                        memory_used_bytes: memory.used,
                        memory_total_bytes: memory.total,
                    })
                };
                (slot, read())
            })
            .collect()
    }

    /// Whether another slot read here runs on `slot`'s GPU.
    pub fn shares_gpu(&self, slot: u32) -> bool {
        self.slots.iter().any(|&(read, _)| read == slot) && self.own_gpu(slot).is_none()
    }

    /// The NVML index of `slot`'s GPU, when it is read and no other slot read here runs on it.
    fn own_gpu(&self, slot: u32) -> Option<u32> {
        let &(_, index) = self.slots.iter().find(|&&(read, _)| read == slot)?;
        let shared = self
            .slots
            .iter()
            .any(|&(other, other_index)| other != slot && other_index == index);
        (!shared).then_some(index)
    }

    /// Memory in use on `slot`'s GPU now, bytes, where NVML reads that slot and no other slot
    /// of this node shares its GPU (the driver's figure counts every process on the GPU, so a
    /// shared GPU's figure is not one slot's); `None` otherwise or when the read fails.
    pub fn slot_memory_used(&self, slot: u32) -> Option<u64> {
        let index = self.own_gpu(slot)?;
        let read = self
            .nvml
            .device_by_index(index)
            .and_then(|device| device.memory_info());
        match read {
            Ok(memory) => Some(memory.used),
            Err(error) => {
                tracing::debug!(slot, %error, "cannot read the slot's GPU memory after a job");
                None
            }
        }
    }
}

/// The GPU memory a slot's memory watch reads after each job on a device its backend cannot
/// measure itself (a CUDA device): NVML's figure, once NVML has loaded, for a slot whose GPU
/// no other slot of this node shares. Cheap to clone; every slot holds one.
#[derive(Debug, Clone, Default)]
pub struct GpuMemory {
    reader: Arc<OnceLock<Arc<GpuReader>>>,
}

impl GpuMemory {
    /// Memory in use on `slot`'s GPU now, bytes (blocking: one driver call); `None` while
    /// NVML has not loaded, for a slot it does not read or whose GPU another slot shares.
    pub fn used_bytes(&self, slot: u32) -> Option<u64> {
        self.reader.get()?.slot_memory_used(slot)
    }
}

/// Starts reading the GPUs as `mode` says, from `library` (default [`DEFAULT_LIBRARY`])
/// every `interval_ms`, until `stop`: `cuda_ordinals` holds each slot's CUDA ordinal
/// (`None`: not on a CUDA device), `reports` each slot's report (whether it runs a job).
/// With `on` it waits for NVML (at most [`OPEN_TIMEOUT`]) and fails without it; with `auto`
/// NVML loads in the background and a GPU that cannot be read is a warning and
/// `mochi_node_nvml_up` 0. The slots' memory watches read their GPUs through the returned
/// [`GpuMemory`] once NVML has loaded.
pub(crate) async fn start(
    mode: NvmlMode,
    library: Option<PathBuf>,
    interval_ms: u64,
    cuda_ordinals: &[Option<usize>],
    reports: Vec<Arc<Mutex<SlotReport>>>,
    stop: CancellationToken,
) -> Result<GpuMemory, NvmlSetupError> {
    let memory = GpuMemory::default();
    let slots: Vec<(u32, usize)> = match mode {
        NvmlMode::Off => Vec::new(),
        NvmlMode::Auto => cuda_ordinals
            .iter()
            .zip(0u32..)
            .filter_map(|(ordinal, slot)| ordinal.map(|ordinal| (slot, ordinal)))
            .collect(),
        NvmlMode::On => cuda_ordinals
            .iter()
            .zip(0u32..)
            .map(|(ordinal, slot)| (slot, ordinal.unwrap_or(slot as usize)))
            .collect(),
    };
    if slots.is_empty() {
        return Ok(memory);
    }
    crate::metrics::set_nvml_up(false);
    let open = async move {
        let opening = tokio::task::spawn_blocking(move || {
            GpuReader::open(library.as_deref(), &slots, &CudaEnv::from_process())
        });
        match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(task)) => Err(NvmlSetupError::Task(task.to_string())),
            Err(_) => Err(NvmlSetupError::Timeout(OPEN_TIMEOUT)),
        }
    };
    if mode == NvmlMode::On {
        let (reader, mut skipped) = open.await?;
        if !skipped.is_empty() {
            return Err(skipped.swap_remove(0));
        }
        tracing::info!(slots = ?reader.slots(), "reading GPU utilisation and memory from NVML");
        let reader = Arc::new(reader);
        let _ = memory.reader.set(Arc::clone(&reader));
        spawn_reader(reader, true, reports, interval_ms, stop);
        return Ok(memory);
    }
    let opened_memory = memory.clone();
    tokio::spawn(async move {
        let (reader, skipped) = tokio::select! {
            () = stop.cancelled() => return,
            opened = open => match opened {
                Ok(opened) => opened,
                Err(error) => {
                    tracing::warn!(%error, "GPU utilisation and memory are not measured (gpu_node.nvml = \"auto\")");
                    return;
                }
            },
        };
        for error in &skipped {
            tracing::warn!(%error, "a slot's GPU is not measured (gpu_node.nvml = \"auto\")");
        }
        tracing::info!(slots = ?reader.slots(), "reading GPU utilisation and memory from NVML");
        let reader = Arc::new(reader);
        let _ = opened_memory.reader.set(Arc::clone(&reader));
        spawn_reader(reader, skipped.is_empty(), reports, interval_ms, stop);
    });
    Ok(memory)
}

/// Reads `reader` every `interval_ms` until `stop`, into the metrics; `complete`: it reads
/// every slot it should (else `mochi_node_nvml_up` stays 0).
fn spawn_reader(
    reader: Arc<GpuReader>,
    complete: bool,
    reports: Vec<Arc<Mutex<SlotReport>>>,
    interval_ms: u64,
    stop: CancellationToken,
) {
    for &(slot, index) in reader.slots() {
        crate::metrics::register_gpu_slot(slot);
        if reader.shares_gpu(slot) {
            tracing::warn!(
                slot,
                gpu = index,
                "the slot shares its GPU with another slot: its memory watch cannot tell their memory apart and does not read the GPU"
            );
        }
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sampling = Arc::clone(&reader);
            let Ok(samples) = tokio::task::spawn_blocking(move || sampling.sample()).await else {
                return;
            };
            let mut all_read = complete;
            for (slot, sample) in samples {
                match sample {
                    Ok(sample) => {
                        let busy = reports
                            .get(slot as usize)
                            .and_then(|report| report.lock().ok().map(|r| r.job.is_some()))
                            .unwrap_or(false);
                        crate::metrics::record_gpu(
                            slot,
                            sample.utilisation,
                            sample.memory_used_bytes,
                            sample.memory_total_bytes,
                            busy,
                        );
                    }
                    Err(error) => {
                        all_read = false;
                        if !failing {
                            tracing::warn!(slot, %error, "cannot read the slot's GPU from NVML");
                        }
                    }
                }
            }
            failing = !all_read;
            crate::metrics::set_nvml_up(all_read);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(names: &[&str]) -> Vec<Option<NvmlGpu>> {
        names
            .iter()
            .zip(0..)
            .map(|(name, i)| {
                Some(NvmlGpu {
                    uuid: format!("GPU-{i:08x}-aaaa-bbbb-cccc-{i:012x}"),
                    name: (*name).to_owned(),
                })
            })
            .collect()
    }

    fn env(visible: Option<&str>, pci_bus_order: bool) -> CudaEnv {
        CudaEnv {
            visible_devices: visible.map(str::to_owned),
            pci_bus_order,
        }
    }

    #[test]
    fn without_visible_devices_an_ordinal_is_the_nvml_index_on_one_model() {
        let same = gpus(&["H100", "H100", "H100"]);
        assert_eq!(resolve(2, &env(None, false), &same), Ok(2));
        assert!(resolve(3, &env(None, false), &same).is_err());
    }

    #[test]
    fn mixed_models_need_the_pci_bus_order() {
        let mixed = gpus(&["H100", "A10"]);
        let refused = resolve(1, &env(None, false), &mixed).unwrap_err();
        assert!(
            refused.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"),
            "{refused}"
        );
        assert_eq!(resolve(1, &env(None, true), &mixed), Ok(1));
        assert_eq!(resolve(0, &env(Some("1,0"), true), &mixed), Ok(1));
    }

    #[test]
    fn visible_devices_pick_by_index_and_by_uuid_prefix() {
        let same = gpus(&["H100", "H100", "H100", "H100"]);
        assert_eq!(resolve(0, &env(Some("3,1"), false), &same), Ok(3));
        assert_eq!(resolve(1, &env(Some("3,1"), false), &same), Ok(1));
        assert!(resolve(2, &env(Some("3,1"), false), &same).is_err());
        assert_eq!(resolve(0, &env(Some("GPU-00000002"), false), &same), Ok(2));
        let whole = same[1]
            .as_ref()
            .map(|gpu| gpu.uuid.clone())
            .unwrap_or_default();
        assert_eq!(resolve(0, &env(Some(&whole), false), &same), Ok(1));
        let ambiguous = resolve(0, &env(Some("GPU-0000000"), false), &same).unwrap_err();
        assert!(ambiguous.contains("more than one"), "{ambiguous}");
        assert!(resolve(0, &env(Some("GPU-ffffffff"), false), &same).is_err());
    }

    #[test]
    fn a_gpu_the_process_cannot_open_leaves_only_uuids_to_match() {
        let mut hidden = gpus(&["H100", "H100", "H100"]);
        hidden[0] = None;
        let refused = resolve(0, &env(None, true), &hidden).unwrap_err();
        assert!(refused.contains("UUIDs"), "{refused}");
        assert_eq!(
            resolve(0, &env(Some("GPU-00000002"), false), &hidden),
            Ok(2)
        );
    }

    #[test]
    fn visible_devices_stop_at_the_first_entry_cuda_refuses_and_mig_is_not_read() {
        let same = gpus(&["H100", "H100", "H100"]);
        assert_eq!(resolve(1, &env(Some("0,2,-1,1"), false), &same), Ok(2));
        assert!(resolve(2, &env(Some("0,2,-1,1"), false), &same).is_err());
        assert!(resolve(0, &env(Some(""), false), &same).is_err());
        let mig = resolve(0, &env(Some("MIG-1234"), false), &same).unwrap_err();
        assert!(mig.contains("MIG"), "{mig}");
    }

    #[test]
    fn a_missing_library_is_a_load_error_that_names_it() {
        let error = GpuReader::open(
            Some(Path::new("/nonexistent/libnvidia-ml.so.1")),
            &[(0, 0)],
            &CudaEnv::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&error, NvmlSetupError::Load { library, .. } if library.contains("/nonexistent/")),
            "{error}"
        );
    }
}
