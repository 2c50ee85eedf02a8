//! Conditional writes to `mochi_jobs`: apply an event only while a check on the current
//! record holds, by compare-and-set, and report the revision written so that the scheduler
//! knows when its watch has caught up with its own writes.

use async_nats::jetstream::kv;
use protocol::jetstream::{JobStore, StoreError};
use protocol::{JobEvent, JobId, JobRecord, codec};

/// Most compare-and-set retries before a conditional write gives up.
const MAX_CAS_RETRIES: u32 = 16;

/// A record as written, with its KV revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The record after the event.
    pub record: JobRecord,
    /// The revision the write created.
    pub revision: u64,
}

/// Applies `event` to job `job_id` if `precondition` holds for the current record, re-reading
/// when another writer got there first. `Ok(None)` when the precondition does not hold.
pub async fn apply_if(
    store: &JobStore,
    job_id: JobId,
    event: &JobEvent,
    now_ms: u64,
    precondition: impl Fn(&JobRecord) -> bool,
) -> Result<Option<Written>, StoreError> {
    for _ in 0..MAX_CAS_RETRIES {
        let (record, revision) = store
            .get(job_id)
            .await?
            .ok_or(StoreError::NotFound(job_id))?;
        if !precondition(&record) {
            return Ok(None);
        }
        let next = record.apply(event, now_ms)?;
        let bytes = codec::encode(&next).map_err(|source| StoreError::Codec { job_id, source })?;
        match store
            .kv
            .update(job_id.to_string(), bytes.into(), revision)
            .await
        {
            Ok(revision) => {
                return Ok(Some(Written {
                    record: next,
                    revision,
                }));
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(error) => {
                return Err(StoreError::Nats {
                    job_id,
                    source: Box::new(error),
                });
            }
        }
    }
    Err(StoreError::Contended(job_id))
}
