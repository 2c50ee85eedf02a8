//! Reading a job for its caller: the `{id}` path, the caller's tenant's record (another
//! tenant's job reads as absent, and the attempt is audited), a submission still waiting for
//! the intake, and the view the API answers with.

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use protocol::api::JobView;
use protocol::jetstream::StoreError;
use protocol::messages::SubmitRequest;
use protocol::queue::{QueueInfo, QueuePage, QueueSummary, SUMMARY_KEY};
use protocol::{ErrorCode, JobId, JobRecord, TenantId, codec, names, now_ms};

use crate::auth::{AUDIT, Principal};
use crate::error::ApiError;
use crate::routes::variant::Variant;
use crate::state::AppState;

/// The `{id}` of a job route. Anything that is not a job id names no job: 404, never 400/500.
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let not_found = || {
            ApiError::new(
                ErrorCode::NotFound,
                "no such job: use the id returned by POST /v1/videos",
            )
        };
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        raw.parse().map(JobPath).map_err(|_| not_found())
    }
}

/// Reads the caller's tenant's record of `id`; `None` when absent or another tenant's (that
/// attempt is audited).
pub(crate) async fn tenant_record(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Option<JobRecord>, ApiError> {
    Ok(tenant_entry(state, caller, job_id)
        .await?
        .map(|(record, _)| record))
}

/// [`tenant_record`] with the record's revision, for a compare-and-set.
pub(crate) async fn tenant_entry(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Option<(JobRecord, u64)>, ApiError> {
    match any_entry(state, job_id).await? {
        Some((record, revision)) if record.tenant == caller.tenant => Ok(Some((record, revision))),
        Some((record, _)) => {
            audit_cross_tenant(caller, job_id, &record.tenant);
            Ok(None)
        }
        None => Ok(None),
    }
}

/// The audit line of a request for another tenant's job (answered 404 as if absent).
pub(crate) fn audit_cross_tenant(caller: &Principal, job_id: JobId, owner: &TenantId) {
    tracing::warn!(target: AUDIT, event = "cross_tenant_refused", %job_id, tenant = %caller.tenant, key_id = %caller.id, %owner, "another tenant's job asked for; answered 404");
}

/// Whether `job_id` is a deleted job of the caller's tenant.
async fn deleted(state: &AppState, caller: &Principal, job_id: JobId) -> Result<bool, ApiError> {
    Ok(stored_entry(state, job_id)
        .await?
        .is_some_and(|(record, _)| {
            record.deleted_at_ms.is_some() && record.tenant == caller.tenant
        }))
}

/// Reads the record of `id` and its revision, whoever owns it (a deleted job's tombstone
/// reads as absent). A record this build cannot read is an error for this job alone, logged
/// with its key.
pub(crate) async fn any_entry(
    state: &AppState,
    job_id: JobId,
) -> Result<Option<(JobRecord, u64)>, ApiError> {
    Ok(stored_entry(state, job_id)
        .await?
        .filter(|(record, _)| record.deleted_at_ms.is_none()))
}

/// The stored record of `id` and its revision, tombstones included; never hidden by a
/// replica a write behind (a job whose `202` went out a moment ago is found).
async fn stored_entry(
    state: &AppState,
    job_id: JobId,
) -> Result<Option<(JobRecord, u64)>, ApiError> {
    state
        .resources
        .jobs
        .find(job_id)
        .await
        .map_err(|error| store_error(job_id, error))
}

/// The answer to a failed read or write of job `job_id`'s record: 503 while NATS is
/// unreachable, 500 naming an unreadable record (logged with its key).
pub(crate) fn store_error(job_id: JobId, error: StoreError) -> ApiError {
    match error {
        error @ StoreError::Nats { .. } => {
            tracing::warn!(%job_id, %error, "job store unreachable");
            ApiError::unavailable("the job store is unreachable; retry shortly")
        }
        error @ StoreError::Codec { .. } => {
            tracing::error!(%job_id, key = %job_id, %error, "unreadable job record");
            ApiError::new(
                ErrorCode::Internal,
                format!(
                    "the stored record of job {job_id} cannot be read (damaged, or written by another version); the operators have it in the logs"
                ),
            )
        }
        error => ApiError::internal("job record", &error),
    }
}

/// The submission of `job_id` still waiting in `MOCHI_SUBMIT` (accepted by a gateway of a
/// version before 2026-12-07, which left records to the intake, and not yet taken in), with
/// its time of acceptance in ms. A job deleted before the
/// intake took it in has none: its submission may still wait, the job is gone.
pub(crate) async fn submitted(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Option<(SubmitRequest, u64)>, ApiError> {
    if deleted(state, caller, job_id).await? {
        return Ok(None);
    }
    waiting(state, caller, job_id).await
}

/// The submission of `job_id` in `MOCHI_SUBMIT`, whether or not the job was deleted since.
async fn waiting(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Option<(SubmitRequest, u64)>, ApiError> {
    let subject = names::submit_job_subject(caller.tenant.as_str(), &job_id.to_string());
    let message = match state
        .resources
        .submit
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => message,
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(error) => {
            tracing::warn!(%job_id, %error, "submission stream unreachable");
            return Err(ApiError::unavailable(
                "the job queue is unreachable; retry shortly",
            ));
        }
    };
    let Ok(request) = codec::from_json::<SubmitRequest>(&message.payload) else {
        // Not one of ours (an internal publisher's mistake): the intake will reject it.
        return Ok(None);
    };
    let at_ms = u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    Ok(Some((request, at_ms)))
}

/// What a job id names for its caller now.
pub(crate) enum Current {
    /// The job: its record, or its submission still waiting for the intake.
    Live(Box<JobView>),
    /// Deleted: only its tombstone remains.
    Deleted,
    /// Nothing (or another tenant's job).
    Absent,
}

/// The job as it is now: its record, else its waiting submission.
pub(crate) async fn current(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Current, ApiError> {
    match stored_entry(state, job_id).await? {
        Some((record, _)) if record.tenant == caller.tenant => {
            return Ok(if record.deleted_at_ms.is_some() {
                Current::Deleted
            } else {
                Current::Live(Box::new(view_of(state, &record)))
            });
        }
        Some((record, _)) if record.deleted_at_ms.is_none() => {
            audit_cross_tenant(caller, job_id, &record.tenant);
            return Ok(Current::Absent);
        }
        _ => {}
    }
    if let Some((request, at_ms)) = waiting(state, caller, job_id).await?
        && let Ok(shape) = request.spec.validate(&state.config.limits)
    {
        let mut view = JobView::pending(job_id, request.spec, &shape, at_ms);
        view.remixed_from_video_id = request.remixed_from;
        view.webhook = request.webhook;
        return Ok(Current::Live(Box::new(view)));
    }
    // The intake may have taken it in between the two reads.
    Ok(match tenant_record(state, caller, job_id).await? {
        Some(record) => Current::Live(Box::new(view_of(state, &record))),
        None => Current::Absent,
    })
}

/// [`current`], a deleted job read as absent.
pub(crate) async fn current_view(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Option<JobView>, ApiError> {
    Ok(match current(state, caller, job_id).await? {
        Current::Live(view) => Some(*view),
        Current::Deleted | Current::Absent => None,
    })
}

/// The view of a record, with a signed download link once the video exists.
pub(crate) fn view_of(state: &AppState, record: &JobRecord) -> JobView {
    let mut view = JobView::from_record(record);
    view.expires_at = state.config.retention.expires_at_s(record);
    if record.state == protocol::JobState::Succeeded
        && let Some(signer) = state.links.get()
    {
        let now_s = now_ms() / 1000;
        if let Some((link, expires)) = signer.link(record.id, Variant::Video.as_str(), now_s) {
            view.links.signed_content = Some(link);
            view.links.signed_content_expires_at = Some(expires);
        }
        view.links.signed_thumbnail = signer
            .link(record.id, Variant::Thumbnail.as_str(), now_s)
            .map(|(link, _)| link);
    }
    view
}

/// A job's entry in `mochi_queue` as stored, with the queue's length from `summary` (the
/// scheduler's latest counts) if there is one; `None` if unreadable.
pub(crate) fn counted_entry(bytes: &[u8], summary: Option<&QueueSummary>) -> Option<QueueInfo> {
    let mut info: QueueInfo = serde_json::from_slice(bytes).ok()?;
    if let Some(summary) = summary {
        info.count_from(summary);
    }
    Some(info)
}

/// Where queued job `job_id` (at `attempt`, submitted at `created_at_ms`) stands as the
/// scheduler last published it in `mochi_queue`: its own entry or its line in its page,
/// the newer ([`QueueInfo::current`]), with the queue's length now from the summary (best
/// effort: `None` when nothing readable is there).
pub(crate) async fn queue_position(
    store: &async_nats::jetstream::kv::Store,
    job_id: JobId,
    attempt: u32,
    created_at_ms: u64,
) -> Option<QueueInfo> {
    let (own, line, summary) = tokio::join!(
        store.get(job_id.to_string()),
        page_line(store, job_id, attempt, created_at_ms),
        queue_summary(store)
    );
    let own = own
        .ok()
        .flatten()
        .and_then(|bytes| counted_entry(&bytes, None))
        .map(|info| (info, ()));
    let (mut info, ()) = QueueInfo::current(attempt, own, line.map(|info| (info, ())))?;
    if let Some(summary) = &summary {
        info.count_from(summary);
    }
    Some(info)
}

/// The job's line in the page of its submission time, if it was never placed and the page
/// lists it.
async fn page_line(
    store: &async_nats::jetstream::kv::Store,
    job_id: JobId,
    attempt: u32,
    created_at_ms: u64,
) -> Option<QueueInfo> {
    if attempt > 0 {
        return None;
    }
    let bytes = store
        .get(QueuePage::key_for(job_id, created_at_ms))
        .await
        .ok()??;
    line_of(&bytes, job_id)
}

/// Job `job_id`'s line in a stored page; `None` if unreadable or not listed.
pub(crate) fn line_of(bytes: &[u8], job_id: JobId) -> Option<QueueInfo> {
    let mut page: QueuePage = serde_json::from_slice(bytes).ok()?;
    page.jobs.remove(&job_id)
}

/// The queue's counts as the scheduler last published them in `mochi_queue` (best effort).
pub(crate) async fn queue_summary(
    store: &async_nats::jetstream::kv::Store,
) -> Option<QueueSummary> {
    let bytes = store.get(SUMMARY_KEY).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}
