//! Conditional writes to `mochi_jobs`: apply an event only while a check on the current
//! record holds, by compare-and-set, and report the revision written so that the scheduler
//! knows when its watch has caught up with its own writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::jetstream::{CasError, JobStore, StoreError};
use protocol::record::TransitionError;
use protocol::{JobEvent, JobId, JobRecord};

/// A record as written, with its KV revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The record after the event.
    pub record: JobRecord,
    /// The revision the write created.
    pub revision: u64,
}

/// Applies `event` to job `job_id` if `precondition` holds for the current record, re-reading
/// when another writer got there first (protocol's one compare-and-set loop). `Ok(None)`
/// when the precondition does not hold.
pub async fn apply_if(
    store: &JobStore,
    job_id: JobId,
    event: &JobEvent,
    now_ms: u64,
    precondition: impl Fn(&JobRecord) -> bool,
) -> Result<Option<Written>, StoreError> {
    apply_adjusted_if(store, job_id, event, now_ms, precondition, |_| {}).await
}

/// [`apply_if`], then `adjust` on the record `event` made, before it is written.
pub async fn apply_adjusted_if(
    store: &JobStore,
    job_id: JobId,
    event: &JobEvent,
    now_ms: u64,
    precondition: impl Fn(&JobRecord) -> bool,
    adjust: impl Fn(&mut JobRecord),
) -> Result<Option<Written>, StoreError> {
    let updated = store
        .try_update(job_id, |record| {
            if precondition(record) {
                let mut next = record.apply(event, now_ms)?;
                adjust(&mut next);
                Ok::<_, TransitionError>(Some(next))
            } else {
                Ok(None)
            }
        })
        .await;
    match updated {
        Ok(written) => Ok(written.map(|updated| Written {
            record: updated.after,
            revision: updated.revision,
        })),
        Err(CasError::Store(error)) => Err(error),
        Err(CasError::Refused(error)) => Err(error.into()),
    }
}

/// When this coordinator last saw a job-record write fail for want of the store (no
/// JetStream answer: a replicated bucket electing a new leader after a server died, or
/// JetStream unreachable while the connection holds), whether the write was a node's,
/// served by the coordinator, or the keeper's own. Nodes' lease renewals could not land
/// then either. Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct StoreFailures(Arc<AtomicU64>);

impl StoreFailures {
    /// Notes a failed write at `now_ms`.
    pub fn note(&self, now_ms: u64) {
        self.0.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// When the last failed write was seen, if any was.
    pub fn last_ms(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }
}
