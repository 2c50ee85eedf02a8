//! Dead letters: a job that ran out of attempts is copied to the `MOCHI_DLQ` stream, once per
//! attempt (JetStream deduplicates by message id), for an operator to inspect or replay.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use protocol::{JobRecord, JobState, codec, names};

use crate::metrics;

/// Dead jobs that ended within this window are copied when seen; older ones (a coordinator's
/// replay of the watch at start) were copied when they died.
pub const WINDOW_MS: u64 = 60_000;

/// Whether a record just became dead (so that a restart does not copy old dead jobs again).
pub fn freshly_dead(record: &JobRecord, now_ms: u64) -> bool {
    record.state == JobState::Dead
        && record
            .finished_at_ms
            .is_some_and(|at| at.saturating_add(WINDOW_MS) >= now_ms)
}

/// Publishes the dead job's record to `MOCHI_DLQ`.
pub(super) async fn copy(context: &Context, record: &JobRecord) {
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
    let published = context
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

#[cfg(test)]
mod tests {
    use protocol::{JobId, JobShape, JobSpec, TenantId};

    use super::*;

    #[test]
    fn only_a_job_dead_within_the_window_is_fresh() {
        let mut record = JobRecord::queued(
            JobId::new(),
            TenantId::default_tenant(),
            JobSpec::new("x"),
            JobShape::new(7, 30, 64, 64, 3, true),
            1,
            3,
            1_000,
        );
        assert!(!freshly_dead(&record, 1_000), "queued");
        record.state = JobState::Dead;
        record.finished_at_ms = Some(1_000);
        assert!(freshly_dead(&record, 1_000 + WINDOW_MS));
        assert!(!freshly_dead(&record, 1_001 + WINDOW_MS));
    }
}
