//! The job record as format version 1 stored it (before `remixed_from`, `deleted_at_ms`, `files_removed_at_ms` and `webhook`), read once when a
//! record written before an upgrade is loaded. Field order is the layout: never edit it.

use serde::Deserialize;

use super::VideoResult;
use super::{HistoryEntry, JobFailure, JobRecord, JobState, Lease, Progress, ResumePoint};
use crate::ids::{JobId, TenantId};
use crate::shape::JobShape;
use crate::spec::JobSpec;

/// [`JobRecord`] in format version 1.
#[derive(Deserialize)]
pub(crate) struct JobRecordV1 {
    id: JobId,
    tenant: TenantId,
    spec: JobSpec,
    shape: JobShape,
    seed: u64,
    state: JobState,
    attempt: u32,
    failed_attempts: u32,
    max_attempts: u32,
    not_before_ms: u64,
    lease: Option<Lease>,
    progress: Option<Progress>,
    resume: Option<ResumePoint>,
    result: Option<VideoResult>,
    error: Option<JobFailure>,
    created_at_ms: u64,
    updated_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    idempotency_key: Option<String>,
    history: Vec<HistoryEntry>,
}

impl From<JobRecordV1> for JobRecord {
    fn from(old: JobRecordV1) -> Self {
        Self {
            id: old.id,
            tenant: old.tenant,
            spec: old.spec,
            shape: old.shape,
            seed: old.seed,
            state: old.state,
            attempt: old.attempt,
            failed_attempts: old.failed_attempts,
            max_attempts: old.max_attempts,
            not_before_ms: old.not_before_ms,
            lease: old.lease,
            progress: old.progress,
            resume: old.resume,
            result: old.result,
            error: old.error,
            created_at_ms: old.created_at_ms,
            updated_at_ms: old.updated_at_ms,
            started_at_ms: old.started_at_ms,
            finished_at_ms: old.finished_at_ms,
            idempotency_key: old.idempotency_key,
            history: old.history,
            remixed_from: None,
            deleted_at_ms: None,
            files_removed_at_ms: None,
            webhook: None,
        }
    }
}
