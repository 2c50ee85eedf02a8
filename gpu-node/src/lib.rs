//! The GPU node of mochi-serve: the node actor (assignments, cancellations, heartbeats),
//! one `GpuSlot` actor per device running jobs on its own OS thread through a `Backend`,
//! the simulated backend, MP4 encoding and the JPEG previews stored beside each MP4. The
//! model itself is the `mochi-model` crate, re-exported here as [`model`], [`pipeline`] and
//! [`model_dir`].

pub mod backend;
pub mod config;
pub mod device;
pub mod error;
pub mod heartbeat;
pub mod metrics;
pub mod mp4;
pub mod node;
pub mod nvml;
pub mod preview;
pub mod records;
pub mod retry;
pub mod slot;

pub use mochi_model::{model, model_dir, pipeline};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::jetstream::Resources;
use protocol::messages::SlotReport;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};

use crate::backend::Backend;
use crate::backend::mochi::{MochiBackend, MochiOptions};
use crate::backend::simulated::SimulatedBackend;
use crate::config::{BackendKind, DeviceKind, MochiConfig};
use crate::device::DeviceMemory;
use crate::node::{Node, NodeArgs, NodeMsg};
use mochi_model::model_dir::tiny;

/// The longest a start or progress write is sent again while no coordinator answers, ms:
/// a lost one costs at most a lease renewal.
const PROGRESS_WRITE_RETRY_MS: u64 = 3_000;

/// How often shutdown looks at the slots while it waits for them.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Runs a GPU node until `shutdown` is cancelled: takes assignments, runs them, heartbeats.
/// On shutdown it stops taking work, lets the running jobs finish for up to
/// `drain_timeout_ms`, hands back what is still running (paused at its next step boundary
/// with its latent saved, so another node resumes it there), and removes its heartbeat.
pub async fn run(
    config: Config,
    resources: Resources,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    metrics::describe();
    let node_id = config.resolved_node_id();
    // One backend per slot: each device loads its model once and keeps it across jobs
    // (and across a restart of its slot actor).
    let backends = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || build_backends(&config))
            .await
            .map_err(|e| Error::Startup(e.to_string()))??
    };
    let backend_name = backends.first().map_or_else(
        || "none".to_owned(),
        |backend| match backend.model() {
            Some(model) => format!("{}:{model}", backend.name()),
            None => backend.name().to_owned(),
        },
    );
    let memory: Vec<DeviceMemory> = backends
        .iter()
        .map(|backend| {
            DeviceMemory::new(
                config.memory_bytes_per_slot,
                backend.resident_bytes(),
                protocol::memory::Model::of_class(&config.gpu_class),
            )
        })
        .collect();
    let reports: Vec<Arc<Mutex<SlotReport>>> = memory
        .iter()
        .zip(0..)
        .map(|(memory, slot)| {
            Arc::new(Mutex::new(SlotReport {
                slot,
                gpu_class: config.gpu_class.clone(),
                memory_total_bytes: memory.total_bytes(),
                memory_free_bytes: memory.free_bytes(None),
                job: None,
                healthy: true,
                unhealthy_reason: None,
            }))
        })
        .collect();
    // The GPUs' own figures (NVML), read until this function returns.
    let cuda_ordinals: Vec<Option<usize>> = backends
        .iter()
        .map(|backend| backend.cuda_ordinal())
        .collect();
    let nvml_stop = CancellationToken::new();
    let _nvml_stops = nvml_stop.clone().drop_guard();
    let gpu_memory = nvml::start(
        config.nvml,
        config.nvml_library.clone(),
        config.nvml_interval_ms,
        &cuda_ordinals,
        reports.clone(),
        nvml_stop,
    )
    .await?;
    let node_args = NodeArgs {
        node_id: node_id.clone(),
        backend_name: backend_name.clone(),
        heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
        backends,
        resources,
        records: records::RecordWriter::new(
            client.clone(),
            &node_id,
            Duration::from_millis(config.record_write_retry_ms),
            Duration::from_millis(config.record_write_retry_ms.min(PROGRESS_WRITE_RETRY_MS)),
        ),
        client,
        video: config.video.clone(),
        object_chunk_bytes: config.object_chunk_bytes as usize,
        reports,
        changed: Arc::new(Notify::new()),
        memory,
        memory_growth_limit_bytes: config.memory_growth_limit_bytes,
        gpu_memory,
    };
    let (node, mut node_handle) = Box::pin(Actor::spawn(None, Node, node_args))
        .await
        .map_err(|source| Error::Spawn {
            actor: "node",
            source,
        })?;
    tracing::info!(node = %node_id, slots = config.slots, backend = %backend_name, "gpu node up");

    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = &mut node_handle => return Err(Error::NodeStopped),
    }

    tracing::info!(node = %node_id, "draining: no new work, waiting for running jobs");
    let _ = node.cast(NodeMsg::Drain);
    let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
    if !wait_until_idle(&node, drain_timeout).await {
        tracing::warn!(node = %node_id, "drain deadline passed; handing running jobs back");
        let _ = node.cast(NodeMsg::Abort);
        let handback_timeout = Duration::from_millis(config.handback_timeout_ms);
        if !wait_until_idle(&node, handback_timeout).await {
            tracing::warn!(node = %node_id, "jobs still running at exit; their leases will expire");
        }
    }
    // Stopping the node removes its heartbeat (`post_stop`).
    node.stop(Some("shutdown".to_owned()));
    let _ = node_handle.await;
    tracing::info!(node = %node_id, "gpu node stopped");
    Ok(())
}

/// One backend per slot, as configured (blocking: the `mochi` backend reads its weights).
pub fn build_backends(config: &Config) -> Result<Vec<Arc<dyn Backend>>> {
    match config.backend {
        BackendKind::Simulated => Ok((0..config.slots)
            .map(|_| -> Arc<dyn Backend> {
                Arc::new(SimulatedBackend::new(config.simulated.clone()).on_class(
                    protocol::cost::GpuClass::parse_or_default(&config.gpu_class),
                ))
            })
            .collect()),
        BackendKind::Mochi => {
            let dir = prepare_model_dir(&config.mochi)?;
            (0..config.slots)
                .map(|slot| -> Result<Arc<dyn Backend>> {
                    let device = device_for(config.mochi.device, slot)?;
                    let max_tokens = match config.mochi.max_tokens {
                        0 if device.is_cpu() => Some(config::CPU_MAX_TOKENS),
                        0 => None,
                        limit => Some(limit),
                    };
                    let options = MochiOptions {
                        decode_chunk_frames: config.mochi.decode_chunk_frames.max(1) as usize,
                        max_tokens,
                    };
                    Ok(Arc::new(MochiBackend::load(&dir, &device, options)?))
                })
                .collect()
        }
    }
}

/// The model directory the `mochi` backend loads: `model_dir`, or the embedded tiny model,
/// created in `embedded_dir` on first use and checked (and repaired) on every start.
pub fn prepare_model_dir(config: &MochiConfig) -> Result<PathBuf> {
    if let Some(dir) = &config.model_dir {
        return Ok(dir.clone());
    }
    let dir = &config.embedded_dir;
    let prepared = tiny::ensure(dir).map_err(|reason| Error::EmbeddedModel {
        dir: dir.display().to_string(),
        reason,
    })?;
    match prepared {
        tiny::Prepared::Created => {
            tracing::info!(dir = %dir.display(), "created the embedded tiny Mochi model");
        }
        tiny::Prepared::Reused => {}
        tiny::Prepared::Repaired(files) => {
            tracing::warn!(dir = %dir.display(), ?files, "the embedded tiny Mochi model was damaged; rewrote these files");
        }
    }
    tracing::warn!(
        model = tiny::TINY_MODEL_NAME,
        "running the embedded tiny Mochi model: its weights are random and its videos are noise; `--model-dir DIR` runs the official release"
    );
    Ok(dir.clone())
}

/// The candle device of a slot.
pub fn device_for(kind: DeviceKind, slot: u32) -> Result<candle_core::Device> {
    let device_error = |e: candle_core::Error| Error::Device {
        slot,
        reason: e.to_string(),
    };
    match kind {
        DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
        DeviceKind::Cuda => candle_core::Device::new_cuda(slot as usize).map_err(|e| Error::Device {
            slot,
            reason: format!("CUDA device {slot} is not usable ({e}); CUDA needs a `--features cuda` build and a GPU"),
        }),
        DeviceKind::Auto => candle_core::Device::cuda_if_available(slot as usize).map_err(device_error),
    }
}

/// Polls the node until no slot runs a job or `timeout` passes; true when idle.
async fn wait_until_idle(node: &ActorRef<NodeMsg>, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match node.call(NodeMsg::Status, Some(DRAIN_POLL)).await {
            Ok(CallResult::Success(beat)) => {
                if beat.slots.iter().all(|slot| slot.job.is_none()) {
                    return true;
                }
            }
            Ok(CallResult::Timeout) => {}
            // The node is gone: nothing is left to wait for.
            Ok(CallResult::SenderError) | Err(_) => return true,
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
