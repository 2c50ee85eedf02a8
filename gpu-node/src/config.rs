//! Configuration of a GPU node (section `[gpu_node]`, env `MOCHI_GPU_NODE__*`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::backend::simulated::SimulatedConfig;
use crate::error::{Error, Result};
pub use crate::mp4::VideoConfig;
pub use crate::nvml::NvmlMode;

/// Which backend the slots run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Sleeps for a cost formula's time and renders a test pattern (load tests, demos
    /// without a GPU). Never for production traffic.
    Simulated,
    /// The Mochi-1 pipeline in candle (the release with `mochi.model_dir`, else the
    /// embedded tiny model whose videos are noise).
    Mochi,
}

/// Where the `mochi` backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// CUDA device `slot` when this build has CUDA and the device exists, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `slot` (needs a `--features cuda` build).
    Cuda,
}

/// The automatic `mochi.max_tokens` on the CPU: ~20 s per step of the tiny model on two
/// cores (848×480 at 55 frames), well inside the coordinator's default 60 s lease.
pub const CPU_MAX_TOKENS: u64 = 16_384;

/// Settings of the `mochi` backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MochiConfig {
    /// The model directory in the release's diffusers layout (`genmo/mochi-1-preview`);
    /// unset: the embedded tiny model in `embedded_dir`.
    pub model_dir: Option<PathBuf>,
    /// Where the embedded tiny model is created (and checked) when `model_dir` is unset.
    pub embedded_dir: PathBuf,
    /// The device of each slot.
    pub device: DeviceKind,
    /// Latent frames the VAE decodes at a time (1 = least memory; same result).
    pub decode_chunk_frames: u32,
    /// Largest job, in visual tokens, a slot accepts; 0 = automatic: no limit on a GPU,
    /// [`CPU_MAX_TOKENS`] on the CPU (where a bigger job's steps outlast the lease).
    pub max_tokens: u64,
}

impl Default for MochiConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            embedded_dir: PathBuf::from("data/models/mochi-tiny"),
            device: DeviceKind::Auto,
            decode_chunk_frames: 1,
            max_tokens: 0,
        }
    }
}

/// A GPU node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The node's id (a NATS subject token); default: host name and process id.
    pub node_id: Option<String>,
    /// Slots (devices) on this node.
    pub slots: u32,
    /// Device class reported to the scheduler (`h100-80gb`, `cpu`, ...).
    pub gpu_class: String,
    /// Device memory of each slot, bytes.
    pub memory_bytes_per_slot: u64,
    /// The backend every slot runs.
    pub backend: BackendKind,
    /// Simulated backend settings.
    pub simulated: SimulatedConfig,
    /// `mochi` backend settings.
    pub mochi: MochiConfig,
    /// MP4 settings.
    pub video: VideoConfig,
    /// Heartbeat period, ms (keep well under `nats.jetstream.node_ttl_s`).
    pub heartbeat_interval_ms: u64,
    /// How long shutdown waits for running jobs to finish, ms; after it they are handed back.
    pub drain_timeout_ms: u64,
    /// How long shutdown then waits for a handed-back job to reach its next step boundary
    /// and save its latent, ms (at least one denoising step of the largest job).
    pub handback_timeout_ms: u64,
    /// How long a record write that ends an attempt (succeeded, failed, paused), or starts
    /// its encoding, is sent again while no coordinator answers it, ms (a restart or a
    /// failover of the leader), and how long a video's upload is tried again while the
    /// object store has no leader; other writes (started, progress) try for at most 3 s of
    /// it. After that the job's lease expires and it runs again.
    pub record_write_retry_ms: u64,
    /// Object-store chunk size for uploaded videos, bytes (must stay under the NATS
    /// server's `max_payload`, 1 MiB by default; larger chunks upload faster).
    pub object_chunk_bytes: u32,
    /// A slot whose memory in use after a job stays more than this above the level after
    /// its first job marks itself unhealthy, bytes (0: never; measured by the backend on the
    /// CPU, by NVML on a GPU the slot has to itself).
    pub memory_growth_limit_bytes: u64,
    /// Whether to read the GPUs' utilisation and memory from NVML.
    pub nvml: NvmlMode,
    /// The NVML library to load; unset: the driver's `libnvidia-ml.so.1`.
    pub nvml_library: Option<PathBuf>,
    /// How often NVML is read, ms.
    pub nvml_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            slots: 1,
            gpu_class: "cpu".to_owned(),
            memory_bytes_per_slot: 80 << 30,
            backend: BackendKind::Mochi,
            simulated: SimulatedConfig::default(),
            mochi: MochiConfig::default(),
            video: VideoConfig::default(),
            heartbeat_interval_ms: 2_000,
            drain_timeout_ms: 20_000,
            handback_timeout_ms: 60_000,
            record_write_retry_ms: 30_000,
            object_chunk_bytes: 512 * 1024,
            memory_growth_limit_bytes: 512 << 20,
            nvml: NvmlMode::Auto,
            nvml_library: None,
            nvml_interval_ms: 1_000,
        }
    }
}

impl Config {
    /// Defaults → `[gpu_node]` of `file` → `MOCHI_GPU_NODE__*` of `env`, validated.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self> {
        let config: Self = protocol::config::load_section(file, env, "gpu_node")?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests: the simulated backend, fast jobs, frequent heartbeats.
    pub fn for_test() -> Self {
        Self {
            backend: BackendKind::Simulated,
            simulated: SimulatedConfig {
                time_scale: 0.0005,
                ..SimulatedConfig::default()
            },
            heartbeat_interval_ms: 200,
            drain_timeout_ms: 5_000,
            ..Self::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.node_id
            && !protocol::names::is_valid_token(id)
        {
            return Err(Error::Config(format!(
                "node_id {id:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if self.slots == 0 || self.slots > 64 {
            return Err(Error::Config(format!(
                "slots is {}; use 1 to 64",
                self.slots
            )));
        }
        if !(4096..=1024 * 1024 - 4096).contains(&self.object_chunk_bytes) {
            return Err(Error::Config(
                "object_chunk_bytes must be between 4096 and 1 MiB minus 4 KiB".to_owned(),
            ));
        }
        if self.record_write_retry_ms == 0 {
            return Err(Error::Config(
                "record_write_retry_ms must be positive".to_owned(),
            ));
        }
        if !(100..=60_000).contains(&self.nvml_interval_ms) {
            return Err(Error::Config(format!(
                "nvml_interval_ms is {}; use 100 to 60000",
                self.nvml_interval_ms
            )));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(Error::Config(
                "heartbeat_interval_ms must be positive".to_owned(),
            ));
        }
        if !(self.simulated.time_scale >= 0.0 && self.simulated.time_scale.is_finite()) {
            return Err(Error::Config(
                "simulated.time_scale must be a finite number ≥ 0".to_owned(),
            ));
        }
        if (1..16).contains(&self.simulated.max_render_side) {
            return Err(Error::Config(
                "simulated.max_render_side must be 0 (the job's size) or at least 16".to_owned(),
            ));
        }
        if self.mochi.decode_chunk_frames == 0 {
            return Err(Error::Config(
                "mochi.decode_chunk_frames must be at least 1".to_owned(),
            ));
        }
        if !(self.video.bits_per_pixel > 0.0 && self.video.bits_per_pixel < 24.0) {
            return Err(Error::Config(
                "video.bits_per_pixel must be between 0 and 24".to_owned(),
            ));
        }
        Ok(())
    }

    /// The node id: the configured one, or `<host>-<pid>` made into a valid token.
    pub fn resolved_node_id(&self) -> protocol::NodeId {
        let raw = self.node_id.clone().unwrap_or_else(|| {
            let host =
                std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "node".to_owned());
            format!("{}-{}", host.trim(), std::process::id())
        });
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        protocol::NodeId::new(cleaned).unwrap_or_else(|_| {
            protocol::NodeId::new(format!("node-{}", std::process::id()))
                .expect("digits and letters form a valid token")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_node_id_with_dots() {
        let config = Config {
            node_id: Some("a.b".into()),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn derived_node_id_is_a_valid_token() {
        let id = Config::default().resolved_node_id();
        assert!(protocol::names::is_valid_token(id.as_str()));
    }

    #[test]
    fn env_sets_slots_and_class() {
        let env = HashMap::from([
            ("MOCHI_GPU_NODE__SLOTS".to_owned(), "4".to_owned()),
            (
                "MOCHI_GPU_NODE__GPU_CLASS".to_owned(),
                "h100-80gb".to_owned(),
            ),
        ]);
        let config = Config::load(None, &env).expect("load");
        assert_eq!((config.slots, config.gpu_class.as_str()), (4, "h100-80gb"));
    }

    #[test]
    fn env_sets_nvml_and_refuses_a_bad_mode() {
        let env = HashMap::from([
            ("MOCHI_GPU_NODE__NVML".to_owned(), "on".to_owned()),
            (
                "MOCHI_GPU_NODE__NVML_LIBRARY".to_owned(),
                "/opt/nvml/libnvidia-ml.so.1".to_owned(),
            ),
        ]);
        let config = Config::load(None, &env).expect("load");
        assert_eq!(config.nvml, NvmlMode::On);
        assert_eq!(
            config.nvml_library.as_deref(),
            Some(Path::new("/opt/nvml/libnvidia-ml.so.1"))
        );
        let bad = HashMap::from([("MOCHI_GPU_NODE__NVML".to_owned(), "maybe".to_owned())]);
        assert!(Config::load(None, &bad).is_err());
        let fast = Config {
            nvml_interval_ms: 10,
            ..Config::default()
        };
        assert!(fast.validate().is_err());
    }
}
