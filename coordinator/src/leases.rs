//! Lease expiry. The scheduler finds the jobs whose lease deadline has passed ([`due`]); the
//! lease keeper actor sends each back to the queue with `LeaseExpired` and a retry backoff,
//! by compare-and-set and only while the stored lease is still past its deadline (a node
//! that renewed in the meantime keeps its job). It also copies dead jobs to `MOCHI_DLQ` and
//! sends preempted jobs back to the queue. [`enforce_deadlines`] ends jobs that missed
//! their time-to-start (`aborted`, no GPU used) or ran past the longest run time (`failed`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::{Operation, Watch};
use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::record::JobFailure;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, JobState, NodeId, codec, names, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::metrics;
use crate::scheduler::SchedulerMsg;
use crate::store;

/// A job held by a node, as the scheduler tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnNode {
    /// The job.
    pub job_id: JobId,
    /// The attempt the node runs.
    pub attempt: u32,
    /// Failed attempts so far (for the backoff of the next one).
    pub failed_attempts: u32,
    /// Its node.
    pub node: NodeId,
    /// Device index on the node.
    pub slot: u32,
    /// When the lease runs out, ms since the epoch.
    pub deadline_ms: u64,
}

/// The jobs whose lease deadline has passed at `now_ms`.
pub fn due<'a>(on_node: impl IntoIterator<Item = &'a OnNode>, now_ms: u64) -> Vec<OnNode> {
    on_node
        .into_iter()
        .filter(|job| job.deadline_ms < now_ms)
        .cloned()
        .collect()
}

/// The lease keeper actor (a child of the scheduler).
pub struct LeaseKeeper;

/// Messages of the lease keeper.
pub enum LeaseKeeperMsg {
    /// Expire these leases (each is checked again against the stored record).
    Expire(Vec<OnNode>),
    /// Copy a dead job's record to `MOCHI_DLQ` (deduplicated by job id).
    DeadLetter(Box<JobRecord>),
    /// Send a preempted job back to the queue (it resumes from its saved step).
    Requeue(JobId),
}

/// What the lease keeper needs.
pub struct LeaseKeeperArgs {
    /// The coordinator's configuration (backoff).
    pub config: Arc<Config>,
    /// JetStream handles.
    pub resources: Resources,
    /// Told when each expiry is settled.
    pub scheduler: ActorRef<SchedulerMsg>,
}

/// The lease keeper's state.
pub struct LeaseKeeperState {
    args: LeaseKeeperArgs,
    /// No lease is expired before this time (ms since the epoch): nodes get a whole lease to
    /// renew after this keeper started (a new leader, a rebuilt coordinator) and after it
    /// last saw NATS unreachable (their renewals could not land meanwhile either).
    grace_until_ms: u64,
}

/// The end of the expiry grace after looking at the NATS connection at `now_ms`.
fn grace_until(current_ms: u64, now_ms: u64, nats_connected: bool, lease_ms: u64) -> u64 {
    if nats_connected {
        current_ms
    } else {
        current_ms.max(now_ms.saturating_add(lease_ms))
    }
}

impl Actor for LeaseKeeper {
    type Msg = LeaseKeeperMsg;
    type State = LeaseKeeperState;
    type Arguments = LeaseKeeperArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: LeaseKeeperArgs,
    ) -> Result<LeaseKeeperState, ActorProcessingErr> {
        let grace_until_ms = now_ms().saturating_add(args.config.lease_ms);
        Ok(LeaseKeeperState {
            args,
            grace_until_ms,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: LeaseKeeperMsg,
        keeper: &mut LeaseKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        let state = &keeper.args;
        match message {
            LeaseKeeperMsg::Expire(jobs) => {
                let now = now_ms();
                let connected = state.resources.context.client().connection_state()
                    == async_nats::connection::State::Connected;
                keeper.grace_until_ms =
                    grace_until(keeper.grace_until_ms, now, connected, state.config.lease_ms);
                let in_grace = now < keeper.grace_until_ms;
                for job in jobs {
                    if in_grace {
                        tracing::debug!(job_id = %job.job_id, "lease due during the expiry grace; not expired yet");
                    } else {
                        expire(state, &job).await;
                    }
                    // The scheduler may ask again at its next tick if the lease is still due.
                    let _ = state.scheduler.cast(SchedulerMsg::ExpiryDone(job.job_id));
                }
            }
            LeaseKeeperMsg::DeadLetter(record) => dead_letter(state, &record).await,
            LeaseKeeperMsg::Requeue(job_id) => requeue(state, job_id).await,
        }
        Ok(())
    }
}

async fn expire(state: &LeaseKeeperArgs, job: &OnNode) {
    let now = now_ms();
    let retry_at_ms = now + state.config.backoff_ms(job.failed_attempts + 1);
    let event = JobEvent::LeaseExpired {
        attempt: job.attempt,
        retry_at_ms,
    };
    let still_due = |record: &JobRecord| {
        record.attempt == job.attempt
            && record.state.is_on_node()
            && record
                .lease
                .as_ref()
                .is_some_and(|lease| lease.deadline_ms < now)
    };
    match store::apply_if(&state.resources.jobs, job.job_id, &event, now, still_due).await {
        Ok(Some(written)) => {
            ::metrics::counter!(metrics::LEASES_EXPIRED).increment(1);
            tracing::warn!(
                job_id = %job.job_id,
                tenant = %written.record.tenant,
                attempt = job.attempt,
                node = %job.node,
                slot = job.slot,
                next_state = %written.record.state,
                retry_in_ms = retry_at_ms - now,
                "lease expired"
            );
        }
        Ok(None) => {
            tracing::debug!(job_id = %job.job_id, "lease renewed or job moved on; not expired")
        }
        Err(error) => {
            tracing::warn!(job_id = %job.job_id, %error, "cannot expire the lease; will retry")
        }
    }
}

async fn requeue(state: &LeaseKeeperArgs, job_id: JobId) {
    let preempted = |record: &JobRecord| record.state == JobState::Preempted;
    match store::apply_if(
        &state.resources.jobs,
        job_id,
        &JobEvent::Requeued,
        now_ms(),
        preempted,
    )
    .await
    {
        Ok(Some(_)) => tracing::info!(%job_id, "preempted job back in the queue"),
        Ok(None) => {}
        Err(error) => tracing::warn!(%job_id, %error, "cannot requeue the preempted job"),
    }
}

async fn dead_letter(state: &LeaseKeeperArgs, record: &JobRecord) {
    let job_id = record.id.to_string();
    let payload = match codec::to_json(record) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%job_id, %error, "cannot encode the dead job");
            return;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dead-{job_id}-{}", record.attempt).as_str(),
    );
    let published = state
        .resources
        .context
        .publish_with_headers(names::dlq_subject(&job_id), headers, payload.into())
        .await;
    let acked = match published {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match acked {
        Ok(()) => {
            ::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
            tracing::warn!(%job_id, tenant = %record.tenant, attempts = record.failed_attempts, "job dead; copied to the dead-letter stream");
        }
        Err(error) => {
            tracing::error!(%job_id, %error, "cannot copy the dead job to the dead-letter stream")
        }
    }
}

/// What the deadline keeper tracks of a non-terminal job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timed {
    state: JobState,
    attempt: u32,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
}

/// The deadline a job has missed at `now_ms`, if any.
fn overdue(job: &Timed, config: &Config, now_ms: u64) -> Option<JobEvent> {
    let past = |since: u64, limit: u64| limit > 0 && since.saturating_add(limit) < now_ms;
    match job.state {
        // Time-to-start: only a job that never reached a GPU is aborted.
        JobState::Queued
            if job.attempt == 0 && past(job.created_at_ms, config.start_timeout_ms) =>
        {
            Some(JobEvent::StartDeadlineMissed)
        }
        JobState::Running | JobState::Encoding
            if job
                .started_at_ms
                .is_some_and(|started| past(started, config.max_run_ms)) =>
        {
            Some(JobEvent::Failed {
                attempt: job.attempt,
                failure: JobFailure {
                    code: ErrorCode::JobFailed,
                    message: format!(
                        "the job ran longer than the longest run time of {} s",
                        config.max_run_ms / 1_000
                    ),
                    retryable: false,
                },
                retry_at_ms: 0,
            })
        }
        _ => None,
    }
}

/// Ends jobs that missed a deadline, from its own watch of `mochi_jobs`, until the watch
/// ends: a job still queued (never placed) past `start_timeout_ms` becomes `aborted`; an
/// attempt running past `max_run_ms` fails (its node stops when its next write is refused).
pub async fn enforce_deadlines(
    config: Arc<Config>,
    resources: Resources,
    mut watch: Watch,
) -> &'static str {
    if config.start_timeout_ms == 0 && config.max_run_ms == 0 {
        std::future::pending::<()>().await;
    }
    let mut jobs: HashMap<JobId, Timed> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(config.tick_ms.max(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            entry = watch.next() => {
                let Some(entry) = entry else { return "the deadline watch" };
                let Ok(entry) = entry else { continue };
                let Ok(job_id) = entry.key.parse::<JobId>() else { continue };
                let record = (entry.operation == Operation::Put)
                    .then(|| codec::decode::<JobRecord>(&entry.value).ok())
                    .flatten();
                match record {
                    Some(record) if !record.state.is_terminal() => {
                        jobs.insert(job_id, Timed {
                            state: record.state,
                            attempt: record.attempt,
                            created_at_ms: record.created_at_ms,
                            started_at_ms: record.started_at_ms,
                        });
                    }
                    _ => {
                        jobs.remove(&job_id);
                    }
                }
            }
            _ = ticker.tick() => {
                let now = now_ms();
                let due: Vec<(JobId, Timed, JobEvent)> = jobs
                    .iter()
                    .filter_map(|(id, job)| overdue(job, &config, now).map(|event| (*id, *job, event)))
                    .collect();
                for (job_id, job, event) in due {
                    let unchanged = |record: &JobRecord| {
                        record.state == job.state && record.attempt == job.attempt
                    };
                    match store::apply_if(&resources.jobs, job_id, &event, now, unchanged).await {
                        Ok(Some(written)) => {
                            ::metrics::counter!(metrics::DEADLINES_MISSED, "deadline" => event.name()).increment(1);
                            tracing::warn!(%job_id, tenant = %written.record.tenant, attempt = job.attempt, next_state = %written.record.state, "deadline missed");
                            jobs.remove(&job_id);
                        }
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%job_id, %error, "cannot end the overdue job; will retry"),
                    }
                }
            }
        }
    }
}

/// Whether a record just became dead (so that a restart does not copy old dead jobs again).
pub(crate) fn freshly_dead(record: &JobRecord, now_ms: u64, window_ms: u64) -> bool {
    record.state == JobState::Dead
        && record
            .finished_at_ms
            .is_some_and(|at| at.saturating_add(window_ms) >= now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(deadline_ms: u64) -> OnNode {
        OnNode {
            job_id: JobId::new(),
            attempt: 1,
            failed_attempts: 0,
            node: NodeId::new("n").expect("valid"),
            slot: 0,
            deadline_ms,
        }
    }

    #[test]
    fn only_past_deadlines_are_due() {
        let jobs = [job(99), job(100), job(101)];
        let gone = due(&jobs, 100);
        assert_eq!(
            gone.iter().map(|j| j.deadline_ms).collect::<Vec<_>>(),
            vec![99]
        );
    }

    fn timed(state: JobState, attempt: u32, started_at_ms: Option<u64>) -> Timed {
        Timed {
            state,
            attempt,
            created_at_ms: 1_000,
            started_at_ms,
        }
    }

    #[test]
    fn only_never_placed_queued_jobs_miss_their_time_to_start() {
        let config = Config {
            start_timeout_ms: 500,
            max_run_ms: 0,
            ..Config::default()
        };
        let fresh = timed(JobState::Queued, 0, None);
        assert_eq!(overdue(&fresh, &config, 1_500), None);
        assert_eq!(
            overdue(&fresh, &config, 1_501),
            Some(JobEvent::StartDeadlineMissed)
        );
        // A retry waiting in the queue has used a GPU already: it is not aborted.
        assert_eq!(
            overdue(&timed(JobState::Queued, 1, None), &config, 9_999),
            None
        );
        assert_eq!(
            overdue(&timed(JobState::Running, 1, Some(1_000)), &config, 9_999),
            None
        );
    }

    #[test]
    fn an_attempt_running_too_long_fails_for_good() {
        let config = Config {
            start_timeout_ms: 0,
            max_run_ms: 1_000,
            ..Config::default()
        };
        let running = timed(JobState::Running, 2, Some(5_000));
        assert_eq!(overdue(&running, &config, 6_000), None);
        match overdue(&running, &config, 6_001) {
            Some(JobEvent::Failed {
                attempt, failure, ..
            }) => {
                assert_eq!(attempt, 2);
                assert!(!failure.retryable);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            overdue(&timed(JobState::Queued, 0, None), &config, u64::MAX),
            None
        );
        assert_eq!(
            overdue(&timed(JobState::Assigned, 2, Some(0)), &config, u64::MAX),
            None
        );
    }

    #[test]
    fn an_unreachable_nats_extends_the_expiry_grace_by_a_lease() {
        assert_eq!(grace_until(500, 1_000, true, 300), 500);
        assert_eq!(grace_until(500, 1_000, false, 300), 1_300);
        assert_eq!(grace_until(5_000, 1_000, false, 300), 5_000);
    }

    #[test]
    fn nothing_is_due_before_any_deadline() {
        assert!(due(&[job(500), job(600)], 499).is_empty());
    }
}
