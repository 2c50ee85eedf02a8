//! The GPU node of mochi-serve: the node actor (assignments, cancellations, heartbeats),
//! one `GpuSlot` actor per device running jobs on its own OS thread through a `Backend`,
//! the simulated backend, and MP4 encoding.

pub mod backend;
pub mod config;
pub mod device;
pub mod error;
pub mod metrics;
/// The Mochi-1 AsymmDiT transformer in candle.
pub mod model;
pub mod mp4;
pub mod node;
/// Mochi-1 sampling: sigma schedule, Euler/CFG sampler, text encoder.
pub mod pipeline;
pub mod slot;

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
use crate::backend::simulated::SimulatedBackend;
use crate::device::DeviceMemory;
use crate::node::{Node, NodeArgs, NodeMsg};

/// How often shutdown looks at the slots while it waits for them.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How long shutdown waits for aborted jobs to be handed back.
const HANDBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a GPU node until `shutdown` is cancelled: takes assignments, runs them, heartbeats.
/// On shutdown it stops taking work, lets the running jobs finish for up to
/// `drain_timeout_ms`, hands back what is still running, and removes its heartbeat.
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
    let backends: Vec<Arc<dyn Backend>> = (0..config.slots)
        .map(|_slot| -> Arc<dyn Backend> {
            match config.backend {
                config::BackendKind::Simulated => {
                    Arc::new(SimulatedBackend::new(config.simulated.clone()))
                }
            }
        })
        .collect();
    let backend_name = backends.first().map_or("none", |backend| backend.name());
    let memory: Vec<DeviceMemory> = backends
        .iter()
        .map(|backend| DeviceMemory::new(config.memory_bytes_per_slot, backend.resident_bytes()))
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
    let node_args = NodeArgs {
        node_id: node_id.clone(),
        backend_name,
        heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
        backends,
        resources,
        client,
        video: config.video.clone(),
        object_chunk_bytes: config.object_chunk_bytes as usize,
        reports,
        changed: Arc::new(Notify::new()),
        memory,
    };
    let (node, mut node_handle) = Box::pin(Actor::spawn(None, Node, node_args))
        .await
        .map_err(|source| Error::Spawn {
            actor: "node",
            source,
        })?;
    tracing::info!(node = %node_id, slots = config.slots, backend = backend_name, "gpu node up");

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
        if !wait_until_idle(&node, HANDBACK_TIMEOUT).await {
            tracing::warn!(node = %node_id, "jobs still running at exit; their leases will expire");
        }
    }
    // Stopping the node removes its heartbeat (`post_stop`).
    node.stop(Some("shutdown".to_owned()));
    let _ = node_handle.await;
    tracing::info!(node = %node_id, "gpu node stopped");
    Ok(())
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
