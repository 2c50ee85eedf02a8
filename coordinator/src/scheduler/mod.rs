//! The scheduler actor: a thin dispatcher. It turns each event (a record or heartbeat from
//! the watches, an answer from a child, a tick) into calls on the modules that own each
//! concern, then lets [`placing`] place what can be placed.
//!
//! | Concern | Module |
//! |---|---|
//! | messages, start arguments, counts | [`messages`] |
//! | what is known of jobs, nodes, placements, pauses | [`view`] |
//! | placing jobs on free slots (and the policy's pauses) | [`placing`], [`pause`] |
//! | refusing what no slot holds | [`admission`] (written by [`crate::keeper`]) |
//! | queue positions and ETAs | [`queue_info`] |
//! | the cost model and its learning | [`learning`] |
//! | slot proxies and node lifecycle | [`proxies`] |
//! | `mochi.estimate` answers | [`estimate`] |
//! | lease expiry, deadlines, requeues, dead letters | [`crate::keeper`] (found here on a tick) |
//!
//! **Where state lives.** [`View`] holds the facts about the cluster as the watches and the
//! scheduler's own decisions establish them (jobs, nodes, placements in flight, pauses under
//! way): plain data, no handles, no I/O, unit-tested rule by rule. [`SchedulerState`] holds
//! everything else, each part with the module of its concern: the children it talks
//! through (keeper, proxies), the policy, and the bookkeeping of work handed out and not yet
//! settled (refusals being written, keeper requests in hand, queue positions last published,
//! cost corrections not yet saved).
//!
//! The handler does no network I/O itself: writes go to the keeper and the proxies,
//! bucket writes to background tasks.

pub mod admission;
mod clock;
pub mod estimate;
pub mod learning;
pub mod messages;
pub mod pause;
pub mod placing;
pub mod proxies;
pub mod queue_info;
pub(crate) mod view;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use protocol::{JobId, JobRecord, JobState, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::keeper::{self, Keeper, KeeperArgs, KeeperMsg};
use crate::metrics;
use crate::policy::{self, Policy};
use admission::Admission;
use clock::ModelClock;
use learning::Learning;
pub use messages::{SchedulerArgs, SchedulerMsg, SchedulerStatus, SlotKey};
use proxies::Proxies;
use queue_info::QueuePublisher;
use view::{FollowUp, View};

/// A job that ended longer ago than this when the watch shows it is history (a replay at
/// start), not news: it is neither counted nor copied to the dead letters again.
const REPLAY_WINDOW_MS: u64 = 60_000;

/// How long stopping waits for the keeper.
const KEEPER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler actor.
pub struct Scheduler;

/// The scheduler's state (see the module's rule for what lives here and what in the view).
pub struct SchedulerState {
    args: SchedulerArgs,
    /// What is known of the cluster.
    view: View,
    policy: Box<dyn Policy>,
    keeper: ActorRef<KeeperMsg>,
    proxies: Proxies,
    /// Jobs the keeper is expiring or ending (one request at a time per job).
    in_hand: HashSet<JobId>,
    admission: Admission,
    learning: Learning,
    queue_info: QueuePublisher,
    /// The policy's clock (the wall clock, or model time in a time-scaled load test).
    clock: ModelClock,
    /// A [`SchedulerMsg::Schedule`] is in the mailbox: the messages before it add to the
    /// placement it will make rather than each making their own.
    schedule_pending: bool,
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
        let policy = args.config.policy.build(args.config.length_aware);
        let learning = Box::pin(Learning::open(&args.resources)).await;
        let clock = ModelClock::new(args.config.time_scale, now_ms());
        let queue_info = Box::pin(QueuePublisher::open(&args.resources, clock)).await;
        tracing::info!(
            policy = policy.name(),
            corrections = learning.model.corrections.buckets.len(),
            "scheduler starting"
        );
        Ok(SchedulerState {
            view: View::new(args.config.node_ttl_s, clock.scale(), policy.lanes()),
            args,
            policy,
            keeper,
            proxies: Proxies::default(),
            in_hand: HashSet::new(),
            admission: Admission::default(),
            learning,
            queue_info,
            clock,
            schedule_pending: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        // Each proxy finishes the placement it is in (or hands it back) before it stops.
        state.proxies.stop_all().await;
        let _ = state
            .keeper
            .stop_and_wait(Some("shutdown".to_owned()), Some(KEEPER_STOP_TIMEOUT))
            .await;
        state.queue_info.shutdown();
        state.learning.shutdown().await;
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
                state.admission.forget(job_id);
                state.view.job_removed(job_id);
            }
            SchedulerMsg::NodeSeen(heartbeat) => {
                let SchedulerState {
                    args,
                    view,
                    admission,
                    proxies,
                    ..
                } = state;
                let seen = proxies::node_seen(&myself, args, view, admission, proxies, *heartbeat);
                Box::pin(seen).await?;
            }
            SchedulerMsg::NodeLeft(node) => {
                proxies::forget_node(&mut state.view, &mut state.proxies, &node, "node left");
            }
            SchedulerMsg::PlacementDone {
                job_id,
                outcome,
                revision,
            } => state
                .view
                .placement_done(job_id, outcome, revision, now_ms()),
            SchedulerMsg::KeeperDone { job_id, written } => {
                state.in_hand.remove(&job_id);
                if !written {
                    state.admission.refusal_failed(job_id);
                }
            }
            SchedulerMsg::PauseAnswered {
                job_id,
                node,
                answer,
            } => pause::answered(&mut state.view, job_id, &node, &answer),
            SchedulerMsg::Tick => tick(state),
            SchedulerMsg::Schedule => {
                state.schedule_pending = false;
                schedule(state);
                return Ok(());
            }
            SchedulerMsg::Status(reply) => {
                let _ = reply.send(status(state));
                return Ok(());
            }
            SchedulerMsg::Estimate(shape, reply) => {
                let _ = reply.send(estimate::estimate(
                    &shape,
                    &state.learning.model,
                    state.admission.fleet(),
                    state.policy.lanes(),
                    status(state).queued,
                ));
                return Ok(());
            }
        }
        // One placement for every burst of news (a batch taken in, a fleet of heartbeats):
        // it reads every waiting job, so making one per message would cost the square of
        // the queue. The mailbox is first in, first out: the placement comes right after
        // what is already queued before it.
        if !state.schedule_pending && myself.cast(SchedulerMsg::Schedule).is_ok() {
            state.schedule_pending = true;
        }
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
            tracing::error!(%error, "keeper failed; restarting it");
            state.keeper = Box::pin(spawn_keeper(&myself, &state.args)).await?;
            state.in_hand.clear();
            return Ok(());
        }
        // A proxy failed: forget it and its reservation; the next heartbeat spawns a fresh
        // one, and the job's record (queued, or on the node with a lease) decides the rest.
        tracing::error!(%error, "slot proxy failed");
        for key in state.proxies.failed(cell.get_id()) {
            state.view.slot_failed(&key);
        }
        Ok(())
    }
}

async fn spawn_keeper(
    myself: &ActorRef<SchedulerMsg>,
    args: &SchedulerArgs,
) -> Result<ActorRef<KeeperMsg>, ActorProcessingErr> {
    let keeper_args = KeeperArgs {
        config: Arc::clone(&args.config),
        resources: args.resources.clone(),
        scheduler: myself.clone(),
        store_failures: args.store_failures.clone(),
    };
    let (keeper, _) = Box::pin(Actor::spawn_linked(
        None,
        Keeper,
        keeper_args,
        myself.get_cell(),
    ))
    .await?;
    Ok(keeper)
}

/// The counts now.
fn status(state: &SchedulerState) -> SchedulerStatus {
    let proxies = &state.proxies;
    state.view.status(now_ms(), |key| proxies.has(key))
}

/// Takes in a record from the watch and does what its change asks: count an arrival, learn
/// from a finished job, copy a dead one, requeue a paused one.
fn job_changed(state: &mut SchedulerState, record: &JobRecord, revision: u64) {
    state.queue_info.observe(
        record,
        &state.learning.model,
        state.policy.lanes(),
        &state.clock,
    );
    let follow_up = state
        .view
        .job_changed(record, revision, &state.learning.model);
    if record.state == JobState::Queued && state.policy.traits().admission {
        state.admission.queued(record.id);
    }
    match follow_up {
        FollowUp::None => {}
        FollowUp::Finished(finished) => {
            state.admission.forget(record.id);
            if let Some(finished) = finished
                && state.args.config.learn_costs
            {
                state.learning.learn(record, finished, &state.clock);
            }
            // A record replayed at start that ended long ago was counted and copied then.
            if ended_lately(record, now_ms()) {
                metrics::job_finished(record);
                if record.state == JobState::Dead {
                    let _ = state
                        .keeper
                        .cast(KeeperMsg::DeadLetter(Box::new(record.clone())));
                }
            }
        }
        FollowUp::Preempted => {
            let _ = state.keeper.cast(KeeperMsg::Requeue(record.id));
        }
    }
}

/// Whether a terminal record ended within [`REPLAY_WINDOW_MS`] of `now`: news, not a replay
/// of the watch's history at start (which was counted and copied when it happened).
fn ended_lately(record: &JobRecord, now: u64) -> bool {
    record
        .finished_at_ms
        .is_some_and(|at| at.saturating_add(REPLAY_WINDOW_MS) >= now)
}

/// Refuses the new jobs no slot seen holds (the keeper writes it), then places what can be
/// placed. The waiting jobs are read only when some slot could take one: a queue that
/// grows with no node to serve it costs each burst of arrivals nothing but their judging.
fn schedule(state: &mut SchedulerState) {
    let now = now_ms();
    if state.policy.traits().admission {
        for (job_id, failure) in state.admission.judge(&state.view) {
            if state
                .keeper
                .cast(KeeperMsg::Refuse { job_id, failure })
                .is_err()
            {
                state.admission.refusal_failed(job_id);
            }
        }
    }
    let proxies = &state.proxies;
    if !state.view.any_slot(now, |key| proxies.has(key)) {
        return;
    }
    let queued = state.admission.waiting(&state.view);
    if queued.is_empty() {
        return;
    }
    placing::place(
        &mut state.view,
        &state.proxies,
        state.policy.as_ref(),
        queued,
        state.args.config.length_aware.preemption,
        now,
        &state.clock,
    );
}

/// Periodic work: save the cost model, publish queue positions, drop silent nodes, hand due
/// leases and missed deadlines to the keeper, set the gauges.
fn tick(state: &mut SchedulerState) {
    let now = now_ms();
    state.learning.save();
    if state.queue_info.due(now, state.args.config.eta_refresh_ms) {
        let started = std::time::Instant::now();
        let queued = state.admission.waiting(&state.view);
        let proxies = &state.proxies;
        let slots: Vec<policy::Slot> = state
            .view
            .slots(now, |key| proxies.has(key), state.policy.lanes())
            .into_iter()
            .map(|(_, slot)| slot)
            .collect();
        let view = &state.view;
        state.queue_info.publish(queue_info::Snapshot {
            now,
            policy: state.policy.as_ref(),
            queued,
            slots: &slots,
            clock: &state.clock,
            never_placed: |job_id| view.never_placed(job_id),
        });
        state.queue_info.refreshed_in(started.elapsed());
    }
    metrics::lane_depths(state.view.queued_by_lane());
    for node in state.view.gone_nodes(now) {
        proxies::forget_node(
            &mut state.view,
            &mut state.proxies,
            &node,
            "node heartbeat expired",
        );
    }
    hand_to_keeper(state, now);
    metrics::gauges(&status(state));
}

/// Sends the keeper the leases past their deadline and the jobs past a deadline of their
/// own, except those it is working on.
fn hand_to_keeper(state: &mut SchedulerState, now: u64) {
    let in_hand = &state.in_hand;
    let on_node = state.view.on_node_jobs();
    let expiring: Vec<_> = keeper::leases::due(&on_node, now)
        .into_iter()
        .filter(|job| !in_hand.contains(&job.job_id))
        .collect();
    let config = &state.args.config;
    let deadlines = config.start_timeout_ms > 0 || config.max_run_ms > 0;
    let overdue: Vec<_> = if deadlines {
        state
            .view
            .deadline_candidates(now, config.start_timeout_ms)
            .into_iter()
            .filter(|job| !in_hand.contains(&job.job_id))
            .filter_map(|job| Some((job, keeper::deadlines::overdue(&job, config, now)?)))
            .collect()
    } else {
        Vec::new()
    };
    if !expiring.is_empty() {
        let ids: Vec<JobId> = expiring.iter().map(|job| job.job_id).collect();
        if state.keeper.cast(KeeperMsg::Expire(expiring)).is_ok() {
            state.in_hand.extend(ids);
        }
    }
    if !overdue.is_empty() {
        let ids: Vec<JobId> = overdue.iter().map(|(job, _)| job.job_id).collect();
        if state.keeper.cast(KeeperMsg::EndOverdue(overdue)).is_ok() {
            state.in_hand.extend(ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{JobShape, JobSpec, TenantId};

    use super::*;

    #[test]
    fn only_a_job_ended_within_the_window_is_news() {
        let mut record = JobRecord::queued(
            JobId::new(),
            TenantId::default_tenant(),
            JobSpec::new("x"),
            JobShape::new(7, 30, 64, 64, 3, true),
            1,
            3,
            1_000,
        );
        assert!(!ended_lately(&record, 1_000), "not ended");
        record.state = JobState::Dead;
        record.finished_at_ms = Some(1_000);
        assert!(ended_lately(&record, 1_000 + REPLAY_WINDOW_MS));
        assert!(!ended_lately(&record, 1_001 + REPLAY_WINDOW_MS));
    }
}
