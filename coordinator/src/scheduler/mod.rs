//! The scheduler actor: holds the jobs that are queued or on nodes and the live slots (both
//! rebuilt from the `mochi_jobs` and `mochi_nodes` watches, so a restarted coordinator loses
//! nothing), refuses jobs no known slot can hold, asks the configured [`Policy`] for
//! placements on every event, hands each placement to its slot's proxy, teaches the cost
//! model from finished jobs, and on every tick drops silent nodes and sends due leases to the
//! keeper.

pub mod estimate;
mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::messages::NodeHeartbeat;
use protocol::queue::QueueInfo;
use protocol::record::JobFailure;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, JobState, NodeId, names, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::cost::{self, CostModel, GpuClass};
use crate::leases::{self, LeaseKeeper, LeaseKeeperArgs, LeaseKeeperMsg, OnNode};
use crate::metrics;
use crate::policy::eta::{ARRIVAL_WINDOW_MS, Arrivals};
use crate::policy::{self, Lane, Policy};
use crate::slots::{SlotProxy, SlotProxyArgs, SlotProxyMsg};
use view::{FollowUp, View};

pub mod pause;

/// How long stopping waits for each child actor.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A published ETA is rewritten when the estimate moved by more than this, ms.
const ETA_REPUBLISH_MS: u64 = 5_000;
/// Writes to `mochi_queue` in flight at once.
const QUEUE_WRITES_IN_FLIGHT: usize = 32;
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
    /// A node answered (or did not) a request to pause a job.
    PauseAnswered {
        /// The job asked to pause.
        job_id: JobId,
        /// Its node.
        node: NodeId,
        /// The answer.
        answer: pause::PauseAnswer,
    },
    /// Periodic work: node liveness, lease expiry, placement.
    Tick,
    /// Counts for tests and `/debug`.
    Status(RpcReplyPort<SchedulerStatus>),
    /// A job's predicted cost, from the cost model and the slots seen.
    Estimate(
        Box<protocol::JobShape>,
        RpcReplyPort<protocol::messages::EstimateReply>,
    ),
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
    policy: Box<dyn Policy>,
    cost: CostModel,
    /// The `mochi_cost` bucket, when it could be opened.
    cost_store: Option<kv::Store>,
    /// Corrections changed since they were last saved.
    cost_dirty: bool,
    cost_save: Option<JoinHandle<()>>,
    /// Every slot seen since start (admission refuses only what none of them holds, so a
    /// big node's restart does not turn its jobs away).
    fleet: HashMap<SlotKey, (GpuClass, u64)>,
    /// Jobs being refused (the write is under way or done, the watch has not shown it).
    refusing: HashSet<JobId>,
    /// Jobs found to fit a slot of `fleet` (which only grows): not checked again.
    admitted: HashSet<JobId>,
    /// Queue positions and ETAs: the `mochi_queue` bucket, what was last published there,
    /// the write under way, and when the estimates were last made.
    queue_store: Option<kv::Store>,
    published: HashMap<JobId, QueueInfo>,
    publishing: Option<JoinHandle<()>>,
    estimated_at_ms: u64,
    /// Recent arrivals by lane (ETAs allow for the later jobs that will go first).
    arrivals: Arrivals,
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
        let policy = args.config.policy.build(args.config.length_aware);
        let (cost_store, cost) = Box::pin(open_cost_model(&args.resources)).await;
        let queue_store = Box::pin(open_queue_bucket(&args.resources)).await;
        tracing::info!(
            policy = policy.name(),
            corrections = cost.corrections.buckets.len(),
            "scheduler starting"
        );
        Ok(SchedulerState {
            args,
            keeper,
            view,
            expiring: HashSet::new(),
            proxies: HashMap::new(),
            policy,
            cost,
            cost_store,
            cost_dirty: false,
            cost_save: None,
            fleet: HashMap::new(),
            refusing: HashSet::new(),
            admitted: HashSet::new(),
            queue_store,
            published: HashMap::new(),
            publishing: None,
            estimated_at_ms: 0,
            arrivals: Arrivals::new(ARRIVAL_WINDOW_MS, now_ms()),
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
        if let Some(publishing) = state.publishing.take() {
            publishing.abort();
        }
        if let Some(save) = state.cost_save.take() {
            let _ = tokio::time::timeout(CHILD_STOP_TIMEOUT, save).await;
        }
        if state.cost_dirty
            && let Some(store) = &state.cost_store
            && let Err(error) = cost::store::save(store, &state.cost.corrections).await
        {
            tracing::warn!(%error, "cost corrections not saved at shutdown");
        }
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
                state.admitted.remove(&job_id);
                state.view.job_removed(job_id);
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
                state
                    .view
                    .placement_done(job_id, outcome, revision, now_ms());
            }
            SchedulerMsg::ExpiryDone(job_id) => {
                state.expiring.remove(&job_id);
            }
            SchedulerMsg::PauseAnswered {
                job_id,
                node,
                answer,
            } => pause::answered(&mut state.view, job_id, &node, &answer),
            SchedulerMsg::Tick => tick(state),
            SchedulerMsg::Status(reply) => {
                let proxies = &state.proxies;
                let _ = reply.send(state.view.status(now_ms(), |key| proxies.contains_key(key)));
                return Ok(());
            }
            SchedulerMsg::Estimate(shape, reply) => {
                let proxies = &state.proxies;
                let queued = state
                    .view
                    .status(now_ms(), |key| proxies.contains_key(key))
                    .queued;
                let _ = reply.send(estimate::estimate(
                    &shape,
                    &state.cost,
                    state.fleet.values().copied(),
                    state.policy.lanes(),
                    queued,
                ));
                return Ok(());
            }
        }
        Box::pin(schedule(&myself, state)).await;
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

/// Opens the `mochi_cost` bucket (replicated like `mochi_jobs`) and loads the corrections;
/// without it the model runs on its priors and learns in memory only.
async fn open_cost_model(resources: &Resources) -> (Option<kv::Store>, CostModel) {
    let replicas = match resources.jobs.kv.status().await {
        Ok(status) => status.info.config.num_replicas,
        Err(_) => 1,
    };
    let store = match cost::store::open(&resources.context, replicas).await {
        Ok(store) => store,
        Err(error) => {
            tracing::warn!(%error, "cost corrections will not be persisted");
            return (None, CostModel::default());
        }
    };
    match cost::store::load(&store).await {
        Ok(corrections) => (Some(store), CostModel::new(corrections)),
        Err(error) => {
            tracing::warn!(%error, "cost corrections not loaded; starting from the priors");
            (Some(store), CostModel::default())
        }
    }
}

/// Opens (or creates) the `mochi_queue` bucket; entries expire a day after their last
/// refresh, so a crashed coordinator leaves no stale positions for long.
/// Records how long `job_id`, placed now, waited, by its lane.
fn record_wait(state: &SchedulerState, queued: &[policy::Waiting], job_id: JobId, now: u64) {
    let Some(created_at_ms) = state.view.created_at_ms(job_id) else {
        return;
    };
    let lane = queued
        .iter()
        .find(|job| job.job_id == job_id)
        .map_or(Lane::Long, |job| {
            state.policy.lanes().lane(job.cost.reference_seconds())
        });
    let waited_s = now.saturating_sub(created_at_ms) as f64 / 1_000.0;
    ::metrics::histogram!(metrics::QUEUE_WAIT_SECONDS, "lane" => lane.as_str()).record(waited_s);
}

async fn open_queue_bucket(resources: &Resources) -> Option<kv::Store> {
    if let Ok(store) = resources.context.get_key_value(names::BUCKET_QUEUE).await {
        return Some(store);
    }
    let created = resources
        .context
        .create_key_value(kv::Config {
            bucket: names::BUCKET_QUEUE.to_owned(),
            description: "mochi-serve queue positions and ETAs".to_owned(),
            history: 1,
            max_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Some(store),
        Err(error) => {
            tracing::warn!(%error, "queue positions will not be published");
            None
        }
    }
}

/// Publishes every queued job's position and ETA (changed entries only) and removes those
/// of jobs no longer queued, in the background.
fn publish_queue(state: &mut SchedulerState, now: u64) {
    let period = state.args.config.eta_refresh_ms;
    if period == 0
        || now.saturating_sub(state.estimated_at_ms) < period
        || state
            .publishing
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    {
        return;
    }
    let Some(store) = state.queue_store.clone() else {
        return;
    };
    state.estimated_at_ms = now;
    let mut queued = state.view.queued_jobs();
    queued.retain(|job| !state.refusing.contains(&job.job_id));
    let proxies = &state.proxies;
    let lanes = state.policy.lanes();
    let (_, slots): (Vec<SlotKey>, Vec<policy::Slot>) = state
        .view
        .slots(now, |key| proxies.contains_key(key), lanes)
        .into_iter()
        .unzip();
    let view = policy::View {
        now_ms: now,
        slots: &slots,
    };
    let lane_of: HashMap<JobId, Lane> = queued
        .iter()
        .map(|job| (job.job_id, lanes.lane(job.cost.reference_seconds())))
        .collect();
    let capacity = slots
        .iter()
        .map(|slot| slot.class.spec().relative_speed)
        .sum();
    let overtaking = state.arrivals.overtaking(now, capacity);
    let estimates = policy::eta::estimate_with(state.policy.as_ref(), &view, &queued, overtaking);
    let total = u32::try_from(estimates.len()).unwrap_or(u32::MAX);
    let mut current = HashMap::with_capacity(estimates.len());
    let mut puts = Vec::new();
    for estimate in estimates {
        let info = QueueInfo {
            position: estimate.position,
            queued: total,
            lane: lane_of
                .get(&estimate.job_id)
                .map_or("short", |lane| lane.as_str())
                .to_owned(),
            eta_start_ms: estimate.eta_start_ms,
            eta_finish_ms: estimate.eta_finish_ms,
            updated_at_ms: now,
        };
        let changed = state.published.get(&estimate.job_id).is_none_or(|old| {
            old.position != info.position
                || old.queued != info.queued
                || old.eta_start_ms.is_some() != info.eta_start_ms.is_some()
                || old
                    .eta_start_ms
                    .zip(info.eta_start_ms)
                    .is_some_and(|(a, b)| a.abs_diff(b) > ETA_REPUBLISH_MS)
        });
        if changed {
            puts.push((estimate.job_id, info.clone()));
            current.insert(estimate.job_id, info);
        } else if let Some(old) = state.published.remove(&estimate.job_id) {
            current.insert(estimate.job_id, old);
        }
    }
    let gone: Vec<JobId> = state
        .published
        .keys()
        .filter(|job_id| !current.contains_key(*job_id))
        .copied()
        .collect();
    state.published = current;
    if puts.is_empty() && gone.is_empty() {
        return;
    }
    state.publishing = Some(tokio::spawn(async move {
        let writes = puts.into_iter().map(|(job_id, info)| {
            let store = store.clone();
            async move {
                let Ok(bytes) = serde_json::to_vec(&info) else {
                    return;
                };
                if let Err(error) = store.put(job_id.to_string(), bytes.into()).await {
                    tracing::debug!(%job_id, %error, "queue position not published");
                }
            }
        });
        futures::stream::iter(writes)
            .buffer_unordered(QUEUE_WRITES_IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
        let deletes = gone.into_iter().map(|job_id| {
            let store = store.clone();
            async move {
                let _ = store.purge(job_id.to_string()).await;
            }
        });
        futures::stream::iter(deletes)
            .buffer_unordered(QUEUE_WRITES_IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
    }));
}

fn job_changed(state: &mut SchedulerState, record: &JobRecord, revision: u64) {
    if record.state == JobState::Queued && record.attempt <= 1 {
        let reference_s = state
            .cost
            .estimate(&record.shape, GpuClass::H100)
            .gpu_seconds;
        let lane = state.policy.lanes().lane(reference_s);
        state
            .arrivals
            .observe(record.id, record.created_at_ms, lane, reference_s);
    }
    match state.view.job_changed(record, revision, &state.cost) {
        FollowUp::None => {}
        FollowUp::Finished(finished) => {
            state.refusing.remove(&record.id);
            state.admitted.remove(&record.id);
            record_finished(record, now_ms());
            if let Some(finished) = finished {
                learn(state, record, finished);
            }
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

/// Counts a job that just ended by its state and records its time from submission to end
/// (a record replayed at start, ended long ago, is not counted again).
fn record_finished(record: &JobRecord, now: u64) {
    let Some(ended) = record.finished_at_ms else {
        return;
    };
    if now.saturating_sub(ended) > DEAD_LETTER_WINDOW_MS {
        return;
    }
    let state = record.state.as_str();
    ::metrics::counter!(metrics::JOBS_FINISHED, "state" => state).increment(1);
    let seconds = ended.saturating_sub(record.created_at_ms) as f64 / 1_000.0;
    ::metrics::histogram!(metrics::JOB_SECONDS, "state" => state).record(seconds);
}

/// Teaches the cost model a succeeded job's run time (start of its attempt to success).
fn learn(state: &mut SchedulerState, record: &JobRecord, finished: view::Finished) {
    let (Some(started), Some(ended)) = (record.started_at_ms, record.finished_at_ms) else {
        return;
    };
    if record.state != JobState::Succeeded || !finished.whole || ended <= started {
        return;
    }
    let observed_s = (ended - started) as f64 / 1_000.0;
    let error = state
        .cost
        .observe(&finished.shape, finished.class, observed_s);
    ::metrics::histogram!(metrics::COST_ERROR, "class" => finished.class.name()).record(error);
    state.cost_dirty = true;
}

/// Saves the corrections in the background when they changed and no save is under way.
fn save_cost(state: &mut SchedulerState) {
    if !state.cost_dirty
        || state
            .cost_save
            .as_ref()
            .is_some_and(|save| !save.is_finished())
    {
        return;
    }
    let Some(store) = state.cost_store.clone() else {
        return;
    };
    let corrections = state.cost.corrections.clone();
    state.cost_dirty = false;
    state.cost_save = Some(tokio::spawn(async move {
        if let Err(error) = cost::store::save(&store, &corrections).await {
            tracing::warn!(%error, "cost corrections not saved; retried with the next change");
        }
    }));
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
    for (index, class, memory) in state.view.slot_sizes(&node) {
        state.fleet.insert((node.clone(), index), (class, memory));
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

/// Refuses what no known slot holds, then asks the policy for placements.
async fn schedule(myself: &ActorRef<SchedulerMsg>, state: &mut SchedulerState) {
    let now = now_ms();
    let mut queued = state.view.queued_jobs();
    queued.retain(|job| !state.refusing.contains(&job.job_id));
    if queued.is_empty() {
        return;
    }
    if state.policy.traits().admission && !state.fleet.is_empty() {
        let fleet: Vec<(GpuClass, u64)> = state.fleet.values().copied().collect();
        let mut refused = Vec::new();
        let admitted = &mut state.admitted;
        queued.retain(|job| {
            if admitted.contains(&job.job_id) {
                return true;
            }
            let fits = fleet
                .iter()
                .any(|(class, memory)| job.cost.fits(*class, *memory));
            if fits {
                admitted.insert(job.job_id);
            } else {
                refused.push(job.job_id);
            }
            fits
        });
        for job_id in refused {
            Box::pin(refuse(state, job_id, &fleet)).await;
        }
    }
    // A slot a pause freed goes to the job it was freed for first.
    let proxies = &state.proxies;
    let handed = state
        .view
        .freed_slot_placements(now, |key| proxies.contains_key(key));
    for (key, job_id) in handed {
        let Some(proxy) = state.proxies.get(&key) else {
            continue;
        };
        if proxy.cast(SlotProxyMsg::Place(job_id)).is_err() {
            continue;
        }
        tracing::info!(%job_id, node = %key.0, slot = key.1, "placed on the slot a pause freed for it");
        record_wait(state, &queued, job_id, now);
        state.view.placing_started(job_id, key);
        queued.retain(|job| job.job_id != job_id);
    }
    let proxies = &state.proxies;
    let slots = state
        .view
        .slots(now, |key| proxies.contains_key(key), state.policy.lanes());
    // With every slot busy only a pause can help a waiting job.
    let all_busy = slots.iter().all(|(_, slot)| slot.running.is_some());
    if queued.is_empty() || (all_busy && !state.args.config.length_aware.preemption) {
        return;
    }
    let (keys, slots): (Vec<SlotKey>, Vec<policy::Slot>) = slots.into_iter().unzip();
    let view = policy::View {
        now_ms: now,
        slots: &slots,
    };
    let decision = state.policy.decide(&view, &queued);
    for placement in decision.placements {
        let Some(key) = keys.get(placement.slot).cloned() else {
            continue;
        };
        let Some(proxy) = state.proxies.get(&key) else {
            continue;
        };
        if proxy.cast(SlotProxyMsg::Place(placement.job_id)).is_err() {
            continue;
        }
        record_wait(state, &queued, placement.job_id, now);
        state.view.placing_started(placement.job_id, key);
    }
    if !decision.preemptions.is_empty() {
        let pauses = decision
            .preemptions
            .iter()
            .filter_map(|p| Some((keys.get(p.slot)?.clone(), p.for_job)));
        let timeout = Duration::from_millis(state.args.config.assign_timeout_ms);
        pause::request(myself, &mut state.view, &state.args.client, timeout, pauses);
    }
}

/// Writes a job no known slot can hold as refused (`job_too_large`), saying what would fit.
async fn refuse(state: &mut SchedulerState, job_id: JobId, fleet: &[(GpuClass, u64)]) {
    let Some(shape) = state.view.shape_of(job_id) else {
        return;
    };
    let Err(refusal) = cost::admit(&shape, fleet.iter().copied()) else {
        return;
    };
    let failure = JobFailure {
        code: ErrorCode::JobTooLarge,
        message: refusal.message(),
        retryable: false,
    };
    state.refusing.insert(job_id);
    let event = JobEvent::Rejected { failure };
    match crate::store::apply_if(&state.args.resources.jobs, job_id, &event, now_ms(), |r| {
        r.state == JobState::Queued
    })
    .await
    {
        Ok(_) => {
            ::metrics::counter!(metrics::JOBS_TOO_LARGE).increment(1);
            tracing::info!(%job_id, needs = refusal.needs_bytes, largest = refusal.largest_bytes, "job refused: no known slot holds it");
        }
        Err(error) => {
            tracing::warn!(%job_id, %error, "cannot write the refusal; retried on the next event");
            state.refusing.remove(&job_id);
        }
    }
}

fn tick(state: &mut SchedulerState) {
    let now = now_ms();
    save_cost(state);
    publish_queue(state, now);
    let lanes = state.policy.lanes();
    let mut depth = [0u32; 3];
    for job in state.view.queued_jobs() {
        let lane = lanes.lane(job.cost.reference_seconds());
        depth[Lane::ALL.iter().position(|l| *l == lane).unwrap_or(0)] += 1;
    }
    for (lane, count) in Lane::ALL.iter().zip(depth) {
        ::metrics::gauge!(metrics::QUEUE_DEPTH_LANE, "lane" => lane.as_str()).set(f64::from(count));
    }
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
