//! The scheduler actor: holds the jobs that are queued or on nodes and the live slots (both
//! rebuilt from the `mochi_jobs` and `mochi_nodes` watches, so a restarted coordinator loses
//! nothing), asks the [`policy`] for placements on every event, hands each placement to its
//! slot's proxy, and on every tick drops silent nodes and sends due leases to the keeper.

pub mod policy;
mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::jetstream::Resources;
use protocol::messages::NodeHeartbeat;
use protocol::{JobId, JobRecord, NodeId, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::Config;
use crate::leases::{self, LeaseKeeper, LeaseKeeperArgs, LeaseKeeperMsg, OnNode};
use crate::metrics;
use crate::slots::{SlotProxy, SlotProxyArgs, SlotProxyMsg};
use policy::ClusterView;
use view::{FollowUp, View};

/// How long stopping waits for each child actor.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead jobs finished within this window are copied to the dead-letter stream when seen.
const DEAD_LETTER_WINDOW_MS: u64 = 60_000;

/// A slot: its node and device index.
pub type SlotKey = (NodeId, u32);

/// The scheduler actor.
pub struct Scheduler;

/// How a placement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementOutcome {
    /// The node took the job.
    Accepted,
    /// The node refused or did not answer; the job is back in the queue.
    Refused,
    /// The record was no longer queued (cancelled, placed elsewhere); nothing was written.
    Lost,
}

/// Messages of the scheduler.
pub enum SchedulerMsg {
    /// A job record changed (from the `mochi_jobs` watch).
    JobChanged {
        /// The record.
        record: Box<JobRecord>,
        /// Its KV revision.
        revision: u64,
    },
    /// A job record was deleted or purged.
    JobRemoved(JobId),
    /// A node heartbeat arrived (from the `mochi_nodes` watch).
    NodeSeen(Box<NodeHeartbeat>),
    /// A node deleted its heartbeat (clean shutdown).
    NodeLeft(NodeId),
    /// A proxy finished a placement.
    PlacementDone {
        /// The job.
        job_id: JobId,
        /// How it ended.
        outcome: PlacementOutcome,
        /// The revision of the proxy's last write, if it wrote.
        revision: Option<u64>,
    },
    /// The lease keeper settled an expiry request.
    ExpiryDone(JobId),
    /// Periodic work: node liveness, lease expiry, placement.
    Tick,
    /// Counts for tests and `/debug`.
    Status(RpcReplyPort<SchedulerStatus>),
}

/// What the scheduler holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerStatus {
    /// Jobs waiting for a slot (including those being placed).
    pub queued: usize,
    /// Jobs on nodes (assigned, running, encoding).
    pub on_node: usize,
    /// Slots of live nodes.
    pub live_slots: usize,
    /// Live slots free now.
    pub free_slots: usize,
}

/// What the scheduler needs.
pub struct SchedulerArgs {
    /// Its configuration.
    pub config: Arc<Config>,
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client, for assignment requests.
    pub client: async_nats::Client,
}

/// The scheduler's state.
pub struct SchedulerState {
    args: SchedulerArgs,
    keeper: ActorRef<LeaseKeeperMsg>,
    view: View,
    /// Jobs whose expiry the keeper is working on.
    expiring: HashSet<JobId>,
    proxies: HashMap<SlotKey, ActorRef<SlotProxyMsg>>,
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let keeper = Box::pin(spawn_keeper(&myself, &args)).await?;
        let view = View::new(args.config.node_ttl_s);
        Ok(SchedulerState {
            args,
            keeper,
            view,
            expiring: HashSet::new(),
            proxies: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        // Each proxy finishes the placement it is in (or hands it back) before it stops.
        for proxy in state.proxies.values() {
            let _ = proxy
                .stop_and_wait(Some("shutdown".to_owned()), Some(CHILD_STOP_TIMEOUT))
                .await;
        }
        let _ = state
            .keeper
            .stop_and_wait(Some("shutdown".to_owned()), Some(CHILD_STOP_TIMEOUT))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::JobChanged { record, revision } => job_changed(state, &record, revision),
            SchedulerMsg::JobRemoved(job_id) => state.view.job_removed(job_id),
            SchedulerMsg::NodeSeen(heartbeat) => {
                Box::pin(node_seen(&myself, state, *heartbeat)).await?
            }
            SchedulerMsg::NodeLeft(node) => forget_node(state, &node, "node left"),
            SchedulerMsg::PlacementDone {
                job_id,
                outcome,
                revision,
            } => {
                state
                    .view
                    .placement_done(job_id, outcome, revision, now_ms());
            }
            SchedulerMsg::ExpiryDone(job_id) => {
                state.expiring.remove(&job_id);
            }
            SchedulerMsg::Tick => tick(state),
            SchedulerMsg::Status(reply) => {
                let proxies = &state.proxies;
                let _ = reply.send(state.view.status(now_ms(), |key| proxies.contains_key(key)));
                return Ok(());
            }
        }
        schedule(state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, error) = event else {
            return Ok(());
        };
        if cell.get_id() == state.keeper.get_id() {
            tracing::error!(%error, "lease keeper failed; restarting it");
            state.keeper = Box::pin(spawn_keeper(&myself, &state.args)).await?;
            state.expiring.clear();
            return Ok(());
        }
        // A proxy failed: forget it and its reservation; the next heartbeat spawns a fresh
        // one, and the job's record (queued, or on the node with a lease) decides the rest.
        tracing::error!(%error, "slot proxy failed");
        let failed: Vec<SlotKey> = state
            .proxies
            .iter()
            .filter(|(_, proxy)| proxy.get_id() == cell.get_id())
            .map(|(key, _)| key.clone())
            .collect();
        for key in failed {
            state.proxies.remove(&key);
            state.view.slot_failed(&key);
        }
        Ok(())
    }
}

async fn spawn_keeper(
    myself: &ActorRef<SchedulerMsg>,
    args: &SchedulerArgs,
) -> Result<ActorRef<LeaseKeeperMsg>, ActorProcessingErr> {
    let keeper_args = LeaseKeeperArgs {
        config: Arc::clone(&args.config),
        resources: args.resources.clone(),
        scheduler: myself.clone(),
    };
    let (keeper, _) = Box::pin(Actor::spawn_linked(
        None,
        LeaseKeeper,
        keeper_args,
        myself.get_cell(),
    ))
    .await?;
    Ok(keeper)
}

fn job_changed(state: &mut SchedulerState, record: &JobRecord, revision: u64) {
    match state.view.job_changed(record, revision) {
        FollowUp::None => {}
        FollowUp::Finished => {
            if leases::freshly_dead(record, now_ms(), DEAD_LETTER_WINDOW_MS) {
                let _ = state
                    .keeper
                    .cast(LeaseKeeperMsg::DeadLetter(Box::new(record.clone())));
            }
        }
        FollowUp::Preempted => {
            let _ = state.keeper.cast(LeaseKeeperMsg::Requeue(record.id));
        }
    }
}

async fn node_seen(
    myself: &ActorRef<SchedulerMsg>,
    state: &mut SchedulerState,
    heartbeat: NodeHeartbeat,
) -> Result<(), ActorProcessingErr> {
    let node = heartbeat.node_id.clone();
    if !state.view.node_seen(heartbeat, now_ms()) {
        // An old heartbeat (e.g. from the watch's history at start-up): the node is gone.
        forget_node(state, &node, "node heartbeat expired");
        return Ok(());
    }
    let reported = state.view.slots_of(&node);
    state.proxies.retain(|(proxy_node, index), proxy| {
        let keep = proxy_node != &node || reported.contains(index);
        if !keep {
            proxy.stop(Some("slot no longer reported".to_owned()));
        }
        keep
    });
    for slot in reported {
        let key = (node.clone(), slot);
        if state.proxies.contains_key(&key) {
            continue;
        }
        let args = SlotProxyArgs {
            node: node.clone(),
            slot,
            config: Arc::clone(&state.args.config),
            resources: state.args.resources.clone(),
            client: state.args.client.clone(),
            scheduler: myself.clone(),
        };
        let (proxy, _) = Box::pin(Actor::spawn_linked(
            None,
            SlotProxy,
            args,
            myself.get_cell(),
        ))
        .await?;
        tracing::info!(node = %node, slot, "slot joined");
        state.proxies.insert(key, proxy);
    }
    Ok(())
}

fn forget_node(state: &mut SchedulerState, node: &NodeId, why: &str) {
    if state.view.forget_node(node) {
        tracing::warn!(node = %node, reason = why, "node gone");
    }
    state.proxies.retain(|(proxy_node, _), proxy| {
        let keep = proxy_node != node;
        if !keep {
            proxy.stop(Some(why.to_owned()));
        }
        keep
    });
}

fn schedule(state: &mut SchedulerState) {
    let now = now_ms();
    let proxies = &state.proxies;
    let view = ClusterView {
        free_slots: state.view.free_slots(now, |key| proxies.contains_key(key)),
        now_ms: now,
    };
    if view.free_slots.is_empty() {
        return;
    }
    let queued = state.view.queued_jobs();
    if queued.is_empty() {
        return;
    }
    for placement in policy::place(&view, &queued) {
        let key = (placement.node, placement.slot);
        let Some(proxy) = state.proxies.get(&key) else {
            continue;
        };
        if proxy.cast(SlotProxyMsg::Place(placement.job_id)).is_err() {
            continue;
        }
        if let Some(created_at_ms) = state.view.created_at_ms(placement.job_id) {
            let waited_s = now.saturating_sub(created_at_ms) as f64 / 1_000.0;
            ::metrics::histogram!(metrics::QUEUE_WAIT_SECONDS).record(waited_s);
        }
        state.view.placing_started(placement.job_id, key);
    }
}

fn tick(state: &mut SchedulerState) {
    let now = now_ms();
    for node in state.view.gone_nodes(now) {
        forget_node(state, &node, "node heartbeat expired");
    }
    let on_node = state.view.on_node_jobs();
    let due: Vec<OnNode> = leases::due(&on_node, now)
        .into_iter()
        .filter(|job| !state.expiring.contains(&job.job_id))
        .collect();
    if !due.is_empty() {
        state.expiring.extend(due.iter().map(|job| job.job_id));
        if state.keeper.cast(LeaseKeeperMsg::Expire(due)).is_err() {
            state.expiring.clear();
        }
    }
    let proxies = &state.proxies;
    metrics::gauges(&state.view.status(now, |key| proxies.contains_key(key)));
}
