//! A paused job back in the queue: `preempted → queued` with its resume point, so the next
//! slot it gets resumes from the saved step.

use protocol::{JobEvent, JobId, JobRecord, JobState, now_ms};

use crate::store;
use protocol::jetstream::JobStore;

/// Writes `Requeued` while the record is still `preempted`.
pub(super) async fn requeue(jobs: &JobStore, job_id: JobId) {
    let preempted = |record: &JobRecord| record.state == JobState::Preempted;
    match store::apply_if(jobs, job_id, &JobEvent::Requeued, now_ms(), preempted).await {
        Ok(Some(_)) => tracing::info!(%job_id, "preempted job back in the queue"),
        Ok(None) => {}
        Err(error) => tracing::warn!(%job_id, %error, "cannot requeue the preempted job"),
    }
}
