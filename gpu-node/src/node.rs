//! The node actor: owns the slots, takes assignments and cancellations from its NATS
//! subjects and routes them to the slots, hands its heartbeats to the writer of
//! `mochi_nodes` ([`crate::heartbeat`]), and
//! restarts a slot whose actor fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::messages::{
    Assign, AssignReply, Cancel, NodeHeartbeat, Preempt, PreemptReply, SlotReport,
};
use protocol::{NodeId, codec, names, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::device::DeviceMemory;
use crate::heartbeat::{self, HeartbeatWriter};
use crate::metrics;
use crate::mp4::VideoConfig;
use crate::slot::{GpuSlot, GpuSlotArgs, GpuSlotMsg};

/// How long an assignment waits for its slot's answer, ms.
const ASSIGN_REPLY_TIMEOUT_MS: u64 = 5_000;

/// The node actor.
pub struct Node;

/// Messages of the node actor.
pub enum NodeMsg {
    /// Route an assignment to its slot.
    Assign(Box<Assign>, RpcReplyPort<AssignReply>),
    /// Route a cancellation to the slot running the job.
    Cancel(Cancel),
    /// Route a pause request to the slot running the job, replying its answer.
    Preempt(Preempt, RpcReplyPort<PreemptReply>),
    /// Write a heartbeat now (period elapsed, or a slot became busy or free).
    Heartbeat,
    /// Refuse new work (shutdown began) and say so in the heartbeat.
    Drain,
    /// Hand running jobs back (shutdown deadline passed).
    Abort,
    /// The heartbeat as it would be written now.
    Status(RpcReplyPort<NodeHeartbeat>),
}

/// What the node needs to start.
pub struct NodeArgs {
    /// The node's id: its subjects and its key in `mochi_nodes`.
    pub node_id: NodeId,
    /// The backend and its model, for heartbeats (`simulated`, `mochi:mochi-1-preview`).
    pub backend_name: String,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Each slot's model, loaded once and kept across jobs and slot restarts.
    pub backends: Vec<Arc<dyn Backend>>,
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client.
    pub client: async_nats::Client,
    /// Where the slots write their jobs' records (through the coordinator).
    pub records: crate::records::RecordWriter,
    /// MP4 settings.
    pub video: VideoConfig,
    /// Object-store chunk size, bytes.
    pub object_chunk_bytes: usize,
    /// One report per slot; each slot keeps its own current.
    pub reports: Vec<Arc<Mutex<SlotReport>>>,
    /// Woken by a slot that became busy or free, so a heartbeat goes out at once.
    pub changed: Arc<Notify>,
    /// Each slot's device memory.
    pub memory: Vec<DeviceMemory>,
    /// Memory growth after a job that marks a slot unhealthy (0: never).
    pub memory_growth_limit_bytes: u64,
    /// The GPUs' memory as NVML reads it, for the slots whose backend cannot measure its own.
    pub gpu_memory: crate::nvml::GpuMemory,
}

/// The node actor's state.
pub struct NodeState {
    args: NodeArgs,
    slots: Vec<ActorRef<GpuSlotMsg>>,
    draining: bool,
    started_at_ms: u64,
    /// Subscription and heartbeat tasks; aborted in `post_stop`.
    tasks: Vec<JoinHandle<()>>,
    /// Writes the heartbeats (the handler never waits for NATS).
    writer: Option<HeartbeatWriter>,
}

impl NodeState {
    fn slot_args(&self, index: usize) -> GpuSlotArgs {
        GpuSlotArgs {
            slot: u32::try_from(index).unwrap_or(u32::MAX),
            backend: Arc::clone(&self.args.backends[index]),
            resources: self.args.resources.clone(),
            client: self.args.client.clone(),
            records: self.args.records.clone(),
            video: self.args.video.clone(),
            object_chunk_bytes: self.args.object_chunk_bytes,
            report: Arc::clone(&self.args.reports[index]),
            changed: Arc::clone(&self.args.changed),
            memory: self.args.memory[index],
            memory_growth_limit_bytes: self.args.memory_growth_limit_bytes,
            gpu_memory: self.args.gpu_memory.clone(),
        }
    }

    fn heartbeat(&self) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: self.args.node_id.clone(),
            backend: self.args.backend_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms: self.started_at_ms,
            sent_at_ms: now_ms(),
            accepting: !self.draining,
            slots: self
                .args
                .reports
                .iter()
                .map(|report| {
                    report
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                })
                .collect(),
        }
    }

    /// Builds the heartbeat of now and hands it to the writer.
    fn send_heartbeat(&self) {
        let heartbeat = self.heartbeat();
        for slot in &heartbeat.slots {
            metrics::set_slot_memory(slot.slot, slot.memory_total_bytes, slot.memory_free_bytes);
        }
        if let Some(writer) = &self.writer {
            writer.send(heartbeat);
        }
    }
}

impl Actor for Node {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let slots = args.reports.len();
        if args.backends.len() != slots || args.memory.len() != slots {
            return Err("need one backend, memory account and report per slot".into());
        }
        let node_id = args.node_id.as_str().to_owned();
        let assigns = args
            .client
            .subscribe(names::node_assign_subject(&node_id))
            .await?;
        let cancels = args
            .client
            .subscribe(names::node_cancel_subject(&node_id))
            .await?;
        let preempts = args
            .client
            .subscribe(names::node_preempt_subject(&node_id))
            .await?;
        let mut state = NodeState {
            args,
            slots: Vec::new(),
            draining: false,
            started_at_ms: now_ms(),
            tasks: Vec::new(),
            writer: None,
        };
        for index in 0..slots {
            let (slot, _) = Box::pin(Actor::spawn_linked(
                None,
                GpuSlot,
                state.slot_args(index),
                myself.get_cell(),
            ))
            .await?;
            state.slots.push(slot);
        }
        let client = state.args.client.clone();
        state.tasks = vec![
            tokio::spawn(answer_assignments(assigns, client.clone(), myself.clone())),
            tokio::spawn(forward_cancellations(cancels, myself.clone())),
            tokio::spawn(answer_preemptions(preempts, client, myself.clone())),
            tokio::spawn(pump_heartbeats(
                state.args.heartbeat_interval,
                Arc::clone(&state.args.changed),
                myself,
            )),
        ];
        // Subscribed first: once the heartbeat is visible, assignments find a listener.
        let nodes = state.args.resources.nodes.clone();
        heartbeat::write(&nodes, &state.heartbeat()).await;
        state.writer = Some(HeartbeatWriter::start(nodes));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        for task in &state.tasks {
            task.abort();
        }
        // The last heartbeat handed over is written before the key is removed, not after.
        if let Some(writer) = state.writer.take() {
            writer.stop().await;
        }
        if let Err(error) = state
            .args
            .resources
            .nodes
            .delete(state.args.node_id.as_str())
            .await
        {
            tracing::warn!(%error, "cannot remove heartbeat");
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeMsg::Assign(assign, reply) => match state.slots.get(assign.slot as usize) {
                Some(slot) if !state.draining => {
                    if let Err(error) = slot.cast(GpuSlotMsg::Start(assign, reply)) {
                        tracing::warn!(%error, "slot actor unreachable");
                    }
                }
                Some(_) => {
                    let _ = reply.send(AssignReply::Rejected {
                        reason: "node is shutting down".to_owned(),
                    });
                }
                None => {
                    let reason = format!(
                        "no slot {} on this node ({} slots)",
                        assign.slot,
                        state.slots.len()
                    );
                    let _ = reply.send(AssignReply::Rejected { reason });
                }
            },
            NodeMsg::Cancel(cancel) => {
                for slot in &state.slots {
                    let _ = slot.cast(GpuSlotMsg::Cancel {
                        job_id: cancel.job_id,
                        attempt: cancel.attempt,
                    });
                }
            }
            NodeMsg::Preempt(preempt, reply) => {
                let running = |index: &usize| {
                    state.args.reports[*index]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .job
                        .is_some_and(|job| {
                            job.job_id == preempt.job_id && job.attempt == preempt.attempt
                        })
                };
                match (0..state.slots.len()).find(running) {
                    Some(index) => {
                        let _ = state.slots[index].cast(GpuSlotMsg::Pause {
                            job_id: preempt.job_id,
                            attempt: preempt.attempt,
                            reply,
                        });
                    }
                    None => {
                        let _ = reply.send(PreemptReply::Refused {
                            reason: "no slot of this node runs that attempt".to_owned(),
                        });
                    }
                }
            }
            NodeMsg::Heartbeat => state.send_heartbeat(),
            NodeMsg::Drain => {
                state.draining = true;
                for slot in &state.slots {
                    let _ = slot.cast(GpuSlotMsg::Drain);
                }
                state.send_heartbeat();
            }
            NodeMsg::Abort => {
                for slot in &state.slots {
                    let _ = slot.cast(GpuSlotMsg::Abort);
                }
            }
            NodeMsg::Status(reply) => {
                let _ = reply.send(state.heartbeat());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let Some(index) = state
                .slots
                .iter()
                .position(|slot| slot.get_id() == cell.get_id())
            else {
                return Ok(());
            };
            tracing::error!(slot = index, %error, "slot actor failed; restarting it");
            {
                let mut report = state.args.reports[index]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                report.job = None;
            }
            let (slot, _) = Box::pin(Actor::spawn_linked(
                None,
                GpuSlot,
                state.slot_args(index),
                myself.get_cell(),
            ))
            .await?;
            if state.draining {
                let _ = slot.cast(GpuSlotMsg::Drain);
            }
            state.slots[index] = slot;
            state.args.changed.notify_one();
        }
        Ok(())
    }
}

/// Answers every `Assign` request on the node's subject with its slot's decision.
async fn answer_assignments(
    mut assigns: async_nats::Subscriber,
    client: async_nats::Client,
    node: ActorRef<NodeMsg>,
) {
    while let Some(message) = assigns.next().await {
        let reply = match codec::decode::<Assign>(&message.payload) {
            Ok(assign) => ractor::call_t!(
                node,
                NodeMsg::Assign,
                ASSIGN_REPLY_TIMEOUT_MS,
                Box::new(assign)
            )
            .unwrap_or_else(|error| AssignReply::Rejected {
                reason: format!("slot did not answer: {error}"),
            }),
            Err(error) => AssignReply::Rejected {
                reason: format!("unreadable assignment: {error}"),
            },
        };
        let Some(subject) = message.reply else {
            continue;
        };
        match codec::encode(&reply) {
            Ok(bytes) => {
                if let Err(error) = client.publish(subject, bytes.into()).await {
                    tracing::warn!(%error, "cannot answer an assignment");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot encode an assignment reply"),
        }
    }
    tracing::warn!("assignment subscription ended");
}

/// Answers every `Preempt` request on the node's subject with its slot's decision.
async fn answer_preemptions(
    mut preempts: async_nats::Subscriber,
    client: async_nats::Client,
    node: ActorRef<NodeMsg>,
) {
    while let Some(message) = preempts.next().await {
        let reply = match codec::decode::<Preempt>(&message.payload) {
            Ok(preempt) => {
                ractor::call_t!(node, NodeMsg::Preempt, ASSIGN_REPLY_TIMEOUT_MS, preempt)
                    .unwrap_or_else(|error| PreemptReply::Refused {
                        reason: format!("slot did not answer: {error}"),
                    })
            }
            Err(error) => PreemptReply::Refused {
                reason: format!("unreadable pause request: {error}"),
            },
        };
        let Some(subject) = message.reply else {
            continue;
        };
        match codec::encode(&reply) {
            Ok(bytes) => {
                if let Err(error) = client.publish(subject, bytes.into()).await {
                    tracing::warn!(%error, "cannot answer a pause request");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot encode a pause reply"),
        }
    }
    tracing::warn!("preempt subscription ended");
}

/// Forwards every `Cancel` on the node's subject to the node actor.
async fn forward_cancellations(mut cancels: async_nats::Subscriber, node: ActorRef<NodeMsg>) {
    while let Some(message) = cancels.next().await {
        match codec::decode::<Cancel>(&message.payload) {
            Ok(cancel) => {
                if node.cast(NodeMsg::Cancel(cancel)).is_err() {
                    return;
                }
            }
            Err(error) => tracing::warn!(%error, "unreadable cancel message"),
        }
    }
    tracing::warn!("cancel subscription ended");
}

/// Asks for a heartbeat every `interval` and whenever a slot changes, until the node stops.
async fn pump_heartbeats(interval: Duration, changed: Arc<Notify>, node: ActorRef<NodeMsg>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = changed.notified() => {}
        }
        if node.cast(NodeMsg::Heartbeat).is_err() {
            return;
        }
    }
}
