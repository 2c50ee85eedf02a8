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

use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, Cancel, NodeHeartbeat, SlotReport};
use protocol::{NodeId, codec, names, now_ms};
use ractor::Actor;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};

use crate::backend::Backend;
use crate::backend::simulated::SimulatedBackend;
use crate::device::DeviceMemory;
use crate::node::{Node, NodeArgs, NodeMsg};

/// How long an assignment waits for its slot's answer.
const ASSIGN_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

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
    let changed = Arc::new(Notify::new());
    let node_args = NodeArgs {
        backends,
        resources: resources.clone(),
        client: client.clone(),
        video: config.video.clone(),
        object_chunk_bytes: config.object_chunk_bytes as usize,
        reports: reports.clone(),
        changed: Arc::clone(&changed),
        memory,
    };
    let (node, node_handle) = Box::pin(Actor::spawn(None, Node, node_args))
        .await
        .map_err(|source| Error::Spawn {
            actor: "node",
            source,
        })?;
    let heartbeat = Heartbeat {
        node_id: node_id.clone(),
        backend: backend_name,
        started_at_ms: now_ms(),
        reports,
        resources: resources.clone(),
    };

    let assign_subject = names::node_assign_subject(node_id.as_str());
    let cancel_subject = names::node_cancel_subject(node_id.as_str());
    let mut assigns = client
        .subscribe(assign_subject.clone())
        .await
        .map_err(|source| Error::Subscribe {
            subject: assign_subject,
            source,
        })?;
    let mut cancels = client
        .subscribe(cancel_subject.clone())
        .await
        .map_err(|source| Error::Subscribe {
            subject: cancel_subject,
            source,
        })?;
    heartbeat.send(true).await;
    tracing::info!(node = %node_id, slots = config.slots, backend = backend_name, "gpu node up");

    let mut ticker = tokio::time::interval(Duration::from_millis(config.heartbeat_interval_ms));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(message) = assigns.next() => {
                let reply = match codec::decode::<Assign>(&message.payload) {
                    Ok(assign) => ractor::call_t!(node, NodeMsg::Assign, ASSIGN_REPLY_TIMEOUT.as_millis() as u64, Box::new(assign))
                        .unwrap_or_else(|error| AssignReply::Rejected { reason: format!("slot did not answer: {error}") }),
                    Err(error) => AssignReply::Rejected { reason: format!("unreadable assignment: {error}") },
                };
                if let (Some(subject), Ok(bytes)) = (message.reply, codec::encode(&reply)) {
                    let _ = client.publish(subject, bytes.into()).await;
                }
            }
            Some(message) = cancels.next() => match codec::decode::<Cancel>(&message.payload) {
                Ok(cancel) => { let _ = node.cast(NodeMsg::Cancel(cancel)); }
                Err(error) => tracing::warn!(%error, "unreadable cancel message"),
            },
            _ = ticker.tick() => heartbeat.send(true).await,
            () = changed.notified() => heartbeat.send(true).await,
        }
    }

    tracing::info!(node = %node_id, "draining: no new work, waiting for running jobs");
    drop(assigns);
    let _ = node.cast(NodeMsg::Drain);
    heartbeat.send(false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.drain_timeout_ms);
    while heartbeat.busy() && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = ticker.tick() => heartbeat.send(false).await,
            () = changed.notified() => {}
        }
    }
    if heartbeat.busy() {
        tracing::warn!(node = %node_id, "drain deadline passed; handing running jobs back");
        let _ = node.cast(NodeMsg::Abort);
        let handback_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while heartbeat.busy() && tokio::time::Instant::now() < handback_deadline {
            let _ = tokio::time::timeout(Duration::from_millis(200), changed.notified()).await;
        }
    }
    drop(cancels);
    if let Err(error) = resources.nodes.delete(node_id.as_str()).await {
        tracing::warn!(%error, "cannot remove heartbeat");
    }
    node.stop(Some("shutdown".to_owned()));
    let _ = node_handle.await;
    tracing::info!(node = %node_id, "gpu node stopped");
    Ok(())
}

struct Heartbeat {
    node_id: NodeId,
    backend: &'static str,
    started_at_ms: u64,
    reports: Vec<Arc<Mutex<SlotReport>>>,
    resources: Resources,
}

impl Heartbeat {
    fn slots(&self) -> Vec<SlotReport> {
        self.reports
            .iter()
            .map(|report| {
                report
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .collect()
    }

    fn busy(&self) -> bool {
        self.slots().iter().any(|slot| slot.job.is_some())
    }

    async fn send(&self, accepting: bool) {
        let beat = NodeHeartbeat {
            node_id: self.node_id.clone(),
            backend: self.backend.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: self.started_at_ms,
            sent_at_ms: now_ms(),
            accepting,
            slots: self.slots(),
        };
        let written = match codec::encode(&beat) {
            Ok(bytes) => self
                .resources
                .nodes
                .put(self.node_id.as_str(), bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = written {
            ::metrics::counter!(metrics::HEARTBEAT_FAILURES).increment(1);
            tracing::warn!(%error, "heartbeat not written");
        }
    }
}
