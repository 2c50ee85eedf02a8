//! The node actor: owns the slots, routes assignments and cancellations to them, and
//! restarts a slot whose actor fails.

use std::sync::{Arc, Mutex};

use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, Cancel, SlotReport};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::config::VideoConfig;
use crate::device::DeviceMemory;
use crate::slot::{GpuSlot, GpuSlotArgs, GpuSlotMsg};

/// The node actor.
pub struct Node;

/// Messages of the node actor.
pub enum NodeMsg {
    /// Route an assignment to its slot.
    Assign(Box<Assign>, RpcReplyPort<AssignReply>),
    /// Route a cancellation to the slot running the job.
    Cancel(Cancel),
    /// Refuse new work (shutdown began).
    Drain,
    /// Hand running jobs back (shutdown deadline passed).
    Abort,
}

/// What the node needs to start its slots.
pub struct NodeArgs {
    /// Each slot's model, loaded once and kept across jobs and slot restarts.
    pub backends: Vec<Arc<dyn Backend>>,
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client.
    pub client: async_nats::Client,
    /// MP4 settings.
    pub video: VideoConfig,
    /// Object-store chunk size, bytes.
    pub object_chunk_bytes: usize,
    /// One report per slot, read by heartbeats.
    pub reports: Vec<Arc<Mutex<SlotReport>>>,
    /// Woken when a slot changes.
    pub changed: Arc<Notify>,
    /// Each slot's device memory.
    pub memory: Vec<DeviceMemory>,
}

/// The node actor's state.
pub struct NodeState {
    args: NodeArgs,
    slots: Vec<ActorRef<GpuSlotMsg>>,
    draining: bool,
}

impl NodeState {
    fn slot_args(&self, index: usize) -> GpuSlotArgs {
        GpuSlotArgs {
            slot: u32::try_from(index).unwrap_or(u32::MAX),
            backend: Arc::clone(&self.args.backends[index]),
            resources: self.args.resources.clone(),
            client: self.args.client.clone(),
            video: self.args.video.clone(),
            object_chunk_bytes: self.args.object_chunk_bytes,
            report: Arc::clone(&self.args.reports[index]),
            changed: Arc::clone(&self.args.changed),
            memory: self.args.memory[index],
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
        let mut state = NodeState {
            args,
            slots: Vec::new(),
            draining: false,
        };
        for index in 0..state.args.reports.len() {
            let (slot, _) = Box::pin(Actor::spawn_linked(
                None,
                GpuSlot,
                state.slot_args(index),
                myself.get_cell(),
            ))
            .await?;
            state.slots.push(slot);
        }
        Ok(state)
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
            NodeMsg::Drain => {
                state.draining = true;
                for slot in &state.slots {
                    let _ = slot.cast(GpuSlotMsg::Drain);
                }
            }
            NodeMsg::Abort => {
                for slot in &state.slots {
                    let _ = slot.cast(GpuSlotMsg::Abort);
                }
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
