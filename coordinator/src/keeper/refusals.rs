//! Admission refusals: a queued job no slot the scheduler has seen can hold is written
//! `rejected` with `job_too_large` and a message that says what would fit.

use protocol::record::JobFailure;
use protocol::{JobEvent, JobId, JobState, now_ms};

use crate::{metrics, store};
use protocol::jetstream::JobStore;

/// Writes the refusal while the job is still queued; returns whether it was written.
pub(super) async fn refuse(jobs: &JobStore, job_id: JobId, failure: JobFailure) -> bool {
    let message = failure.message.clone();
    let event = JobEvent::Rejected { failure };
    let queued = |record: &protocol::JobRecord| record.state == JobState::Queued;
    match store::apply_if(jobs, job_id, &event, now_ms(), queued).await {
        Ok(Some(written)) => {
            ::metrics::counter!(metrics::JOBS_TOO_LARGE).increment(1);
            tracing::info!(%job_id, tenant = %written.record.tenant, reason = %message, "job refused: no known slot holds it");
            true
        }
        // No longer queued (cancelled, or refused already): nothing left to refuse.
        Ok(None) => true,
        Err(error) => {
            tracing::warn!(%job_id, %error, "cannot write the refusal; retried on the next event");
            false
        }
    }
}
