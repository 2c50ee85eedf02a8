//! The scheduler actor: holds the jobs that are queued or on nodes and the live slots (both
//! rebuilt from the `mochi_jobs` and `mochi_nodes` watches, so a restarted coordinator loses
//! nothing), asks the [`policy`] for placements on every event, hands each placement to its
//! slot's proxy, and on every tick drops silent nodes and sends due leases to the keeper.

pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::jetstream::Resources;
use protocol::messages::NodeHeartbeat;
use protocol::record::Lease;
use protocol::{JobId, JobRecord, JobState, NodeId, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::Config;
use crate::leases::{self, LeaseKeeper, LeaseKeeperArgs, LeaseKeeperMsg, OnNode};
use crate::metrics;
use crate::slots::{SlotProxy, SlotProxyArgs, SlotProxyMsg};
use policy::{ClusterView, FreeSlot, QueuedJob};

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

/// A non-terminal job as last seen in the watch.
struct Tracked {
    revision: u64,
    state: JobState,
    created_at_ms: u64,
    not_before_ms: u64,
    attempt: u32,
    failed_attempts: u32,
    lease: Option<Lease>,
}

/// A placement handed to a proxy; the job and slot stay reserved until the watch has
/// delivered the proxy's last write (`settle_revision`), so the view never goes back.
struct Placing {
    slot: SlotKey,
    settle_revision: Option<u64>,
}

/// The scheduler's state.
pub struct SchedulerState {
    args: SchedulerArgs,
    keeper: ActorRef<LeaseKeeperMsg>,
    jobs: HashMap<JobId, Tracked>,
    placing: HashMap<JobId, Placing>,
    expiring: HashSet<JobId>,
    nodes: HashMap<NodeId, NodeHeartbeat>,
    proxies: HashMap<SlotKey, ActorRef<SlotProxyMsg>>,
    /// Slots that refused a placement at this time: not free until a newer heartbeat.
    refused_at: HashMap<SlotKey, u64>,
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
        Ok(SchedulerState {
            args,
            keeper,
            jobs: HashMap::new(),
            placing: HashMap::new(),
            expiring: HashSet::new(),
            nodes: HashMap::new(),
            proxies: HashMap::new(),
            refused_at: HashMap::new(),
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
            SchedulerMsg::JobRemoved(job_id) => {
                state.jobs.remove(&job_id);
            }
            SchedulerMsg::NodeSeen(heartbeat) => {
                Box::pin(node_seen(&myself, state, *heartbeat)).await?
            }
            SchedulerMsg::NodeLeft(node) => forget_node(state, &node, "node left"),
            SchedulerMsg::PlacementDone {
                job_id,
                outcome,
                revision,
            } => {
                placement_done(state, job_id, outcome, revision);
            }
            SchedulerMsg::ExpiryDone(job_id) => {
                state.expiring.remove(&job_id);
            }
            SchedulerMsg::Tick => tick(state),
            SchedulerMsg::Status(reply) => {
                let _ = reply.send(status(state, now_ms()));
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
            state.placing.retain(|_, placing| placing.slot != key);
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
    let job_id = record.id;
    if state
        .jobs
        .get(&job_id)
        .is_some_and(|known| known.revision >= revision)
    {
        return;
    }
    if state
        .placing
        .get(&job_id)
        .and_then(|p| p.settle_revision)
        .is_some_and(|settle| revision >= settle)
    {
        state.placing.remove(&job_id);
    }
    if record.state.is_terminal() {
        state.jobs.remove(&job_id);
        if leases::freshly_dead(record, now_ms(), DEAD_LETTER_WINDOW_MS) {
            let _ = state
                .keeper
                .cast(LeaseKeeperMsg::DeadLetter(Box::new(record.clone())));
        }
        return;
    }
    if record.state == JobState::Preempted {
        let _ = state.keeper.cast(LeaseKeeperMsg::Requeue(job_id));
    }
    state.jobs.insert(
        job_id,
        Tracked {
            revision,
            state: record.state,
            created_at_ms: record.created_at_ms,
            not_before_ms: record.not_before_ms,
            attempt: record.attempt,
            failed_attempts: record.failed_attempts,
            lease: record.lease.clone(),
        },
    );
}

fn placement_done(
    state: &mut SchedulerState,
    job_id: JobId,
    outcome: PlacementOutcome,
    revision: Option<u64>,
) {
    let Some(placing) = state.placing.get_mut(&job_id) else {
        return;
    };
    if outcome == PlacementOutcome::Refused {
        state.refused_at.insert(placing.slot.clone(), now_ms());
    }
    let known = state.jobs.get(&job_id).map_or(0, |job| job.revision);
    match revision {
        Some(settle) if settle > known => placing.settle_revision = Some(settle),
        _ => {
            state.placing.remove(&job_id);
        }
    }
}

async fn node_seen(
    myself: &ActorRef<SchedulerMsg>,
    state: &mut SchedulerState,
    heartbeat: NodeHeartbeat,
) -> Result<(), ActorProcessingErr> {
    let node = heartbeat.node_id.clone();
    if !is_live(&heartbeat, state.args.config.node_ttl_s, now_ms()) {
        // An old heartbeat (e.g. from the watch's history at start-up): the node is gone.
        forget_node(state, &node, "node heartbeat expired");
        return Ok(());
    }
    if state
        .nodes
        .get(&node)
        .is_some_and(|known| known.sent_at_ms > heartbeat.sent_at_ms)
    {
        return Ok(());
    }
    let reported: HashSet<u32> = heartbeat.slots.iter().map(|slot| slot.slot).collect();
    state.proxies.retain(|(proxy_node, index), proxy| {
        let keep = proxy_node != &node || reported.contains(index);
        if !keep {
            proxy.stop(Some("slot no longer reported".to_owned()));
        }
        keep
    });
    for report in &heartbeat.slots {
        let key = (node.clone(), report.slot);
        if state.proxies.contains_key(&key) {
            continue;
        }
        let args = SlotProxyArgs {
            node: node.clone(),
            slot: report.slot,
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
        tracing::info!(node = %node, slot = report.slot, class = %report.gpu_class, "slot joined");
        state.proxies.insert(key, proxy);
    }
    state.nodes.insert(node, heartbeat);
    Ok(())
}

fn is_live(heartbeat: &NodeHeartbeat, node_ttl_s: u64, now: u64) -> bool {
    heartbeat
        .sent_at_ms
        .saturating_add(node_ttl_s.saturating_mul(1_000))
        >= now
}

fn forget_node(state: &mut SchedulerState, node: &NodeId, why: &str) {
    if state.nodes.remove(node).is_some() {
        tracing::warn!(node = %node, reason = why, "node gone");
    }
    state.proxies.retain(|(proxy_node, _), proxy| {
        let keep = proxy_node != node;
        if !keep {
            proxy.stop(Some(why.to_owned()));
        }
        keep
    });
    // Placements in flight there end with the proxy; the record's CAS keeps them safe.
    state.placing.retain(|_, placing| &placing.slot.0 != node);
    state
        .refused_at
        .retain(|(refused_node, _), _| refused_node != node);
}

fn on_node_jobs(state: &SchedulerState) -> Vec<OnNode> {
    state
        .jobs
        .iter()
        .filter(|(_, job)| job.state.is_on_node())
        .filter_map(|(job_id, job)| {
            let lease = job.lease.as_ref()?;
            Some(OnNode {
                job_id: *job_id,
                attempt: job.attempt,
                failed_attempts: job.failed_attempts,
                node: lease.node.clone(),
                slot: lease.slot,
                deadline_ms: lease.deadline_ms,
            })
        })
        .collect()
}

/// Slots of live, accepting nodes that are healthy and idle by their node's report, hold no
/// job by our records, have no placement in flight, and have not refused one since their
/// node's last heartbeat.
fn free_slots(state: &SchedulerState, now: u64) -> Vec<FreeSlot> {
    let occupied: HashSet<SlotKey> = on_node_jobs(state)
        .into_iter()
        .map(|job| (job.node, job.slot))
        .collect();
    let reserved: HashSet<&SlotKey> = state
        .placing
        .values()
        .map(|placing| &placing.slot)
        .collect();
    let ttl_s = state.args.config.node_ttl_s;
    let mut free = Vec::new();
    for (node, heartbeat) in &state.nodes {
        if !heartbeat.accepting || !is_live(heartbeat, ttl_s, now) {
            continue;
        }
        for report in heartbeat
            .slots
            .iter()
            .filter(|report| report.healthy && report.job.is_none())
        {
            let key = (node.clone(), report.slot);
            let refused = state
                .refused_at
                .get(&key)
                .is_some_and(|at| *at >= heartbeat.sent_at_ms);
            if occupied.contains(&key)
                || reserved.contains(&key)
                || refused
                || !state.proxies.contains_key(&key)
            {
                continue;
            }
            free.push(FreeSlot {
                node: node.clone(),
                slot: report.slot,
                memory_free_bytes: report.memory_free_bytes,
            });
        }
    }
    free
}

fn status(state: &SchedulerState, now: u64) -> SchedulerStatus {
    let ttl_s = state.args.config.node_ttl_s;
    SchedulerStatus {
        queued: state
            .jobs
            .values()
            .filter(|job| job.state == JobState::Queued)
            .count(),
        on_node: state
            .jobs
            .values()
            .filter(|job| job.state.is_on_node())
            .count(),
        live_slots: state
            .nodes
            .values()
            .filter(|hb| is_live(hb, ttl_s, now))
            .map(|hb| hb.slots.len())
            .sum(),
        free_slots: free_slots(state, now).len(),
    }
}

fn schedule(state: &mut SchedulerState) {
    let now = now_ms();
    let view = ClusterView {
        free_slots: free_slots(state, now),
        now_ms: now,
    };
    if view.free_slots.is_empty() {
        return;
    }
    let queued: Vec<QueuedJob> = state
        .jobs
        .iter()
        .filter(|(job_id, job)| {
            job.state == JobState::Queued && !state.placing.contains_key(*job_id)
        })
        .map(|(job_id, job)| QueuedJob {
            job_id: *job_id,
            created_at_ms: job.created_at_ms,
            not_before_ms: job.not_before_ms,
        })
        .collect();
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
        if let Some(job) = state.jobs.get(&placement.job_id) {
            let waited_s = now.saturating_sub(job.created_at_ms) as f64 / 1_000.0;
            ::metrics::histogram!(metrics::QUEUE_WAIT_SECONDS).record(waited_s);
        }
        state.placing.insert(
            placement.job_id,
            Placing {
                slot: key,
                settle_revision: None,
            },
        );
    }
}

fn tick(state: &mut SchedulerState) {
    let now = now_ms();
    let ttl_s = state.args.config.node_ttl_s;
    let gone: Vec<NodeId> = state
        .nodes
        .iter()
        .filter(|(_, heartbeat)| !is_live(heartbeat, ttl_s, now))
        .map(|(id, _)| id.clone())
        .collect();
    for node in &gone {
        forget_node(state, node, "node heartbeat expired");
    }
    let on_node = on_node_jobs(state);
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
    let current = status(state, now);
    metrics::gauges(&current);
}
