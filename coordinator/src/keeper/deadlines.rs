//! Deadlines: a job still queued (never placed) past `start_timeout_ms` becomes `aborted`
//! (no GPU used); an attempt running past `max_run_ms` fails for good (its node stops when
//! its next write is refused). The scheduler finds overdue jobs in its view on every tick
//! ([`overdue`]); the keeper ends each while its record is unchanged ([`end`]).

use protocol::record::JobFailure;
use protocol::{ErrorCode, JobEvent, JobRecord, JobState, now_ms};

use crate::config::Config;
use crate::scheduler::view::Timed;
use crate::{metrics, store};
use protocol::jetstream::JobStore;

/// The deadline a job has missed at `now_ms`, if any.
pub fn overdue(job: &Timed, config: &Config, now_ms: u64) -> Option<JobEvent> {
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

/// Writes `event` while the record is in the state and attempt it was judged on; returns
/// whether it was written.
pub(super) async fn end(jobs: &JobStore, job: &Timed, event: &JobEvent) -> bool {
    let unchanged = |record: &JobRecord| record.state == job.state && record.attempt == job.attempt;
    let job_id = job.job_id;
    match store::apply_if(jobs, job_id, event, now_ms(), unchanged).await {
        Ok(Some(written)) => {
            ::metrics::counter!(metrics::DEADLINES_MISSED, "deadline" => event.name()).increment(1);
            tracing::warn!(%job_id, tenant = %written.record.tenant, attempt = job.attempt, next_state = %written.record.state, "deadline missed");
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::warn!(%job_id, %error, "cannot end the overdue job; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::JobId;

    use super::*;

    fn timed(state: JobState, attempt: u32, started_at_ms: Option<u64>) -> Timed {
        Timed {
            job_id: JobId::new(),
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
}
