//! `/v1/videos`: create, list, status, cancel, delete, remix (the download is in
//! `content.rs`, the create body in `create.rs`).

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::{JobView, VideoDeleted, VideoList, VideoStatus};
use protocol::jetstream::{CasError, StoreError, Updated};
use protocol::messages::{Cancel, SubmitRequest};
use protocol::record::TransitionError;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, JobSpec, TenantId, codec, names, now_ms};

use crate::auth::{AUDIT, Action, Caller, Principal};
use crate::error::ApiError;
use crate::index::PageQuery;
use crate::metrics;
use crate::openapi::Errors;
use crate::routes::create::create_request;
use crate::routes::request::{idempotency_key, json_request};
use crate::routes::variant::Variant;
use crate::state::AppState;

/// Most compare-and-set rounds a cancellation tries before answering 503.
const MAX_CANCEL_TRIES: u32 = 16;

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

/// `POST /v1/videos`: validates the request (JSON or a form, OpenAI's fields or ours),
/// stores it durably in `MOCHI_SUBMIT`, answers 202 with the video object.
#[utoipa::path(
    post,
    path = "/v1/videos",
    tag = "videos",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry the same job: 1 to 255 visible ASCII characters")),
    request_body(content(
        (JobSpec = "application/json"),
        (JobSpec = "multipart/form-data")
    ), description = "OpenAI's create fields (`prompt`, `model`, `seconds`, `size`) and every `JobSpec` field; `input_reference` is refused"),
    responses((status = 202, body = JobView, description = "Accepted: stored durably, queued"), Errors)
)]
pub async fn submit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Action::Submit)?;
    let created = create_request(&state, &headers, body).await?;
    let origin = Origin {
        remixed_from: None,
        webhook: created.webhook,
    };
    enqueue(&state, &caller, &headers, created.spec, origin).await
}

/// Where a job comes from, besides its spec.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    /// The job it remixes.
    pub remixed_from: Option<JobId>,
    /// Where its events are posted.
    pub webhook: Option<protocol::record::Webhook>,
}

/// Accepts `spec` for the caller's tenant; 202 with the job and its `Location`.
async fn enqueue(
    state: &AppState,
    caller: &Principal,
    headers: &HeaderMap,
    spec: JobSpec,
    origin: Origin,
) -> Result<Response, ApiError> {
    let (_, view) = enqueue_view(state, caller, headers, spec, origin).await?;
    Ok(accepted(view))
}

/// Accepts `spec` for the caller's tenant: admission, idempotency, quota, then the durable
/// publish; the status to answer (202) and the job.
pub(crate) async fn enqueue_view(
    state: &AppState,
    caller: &Principal,
    headers: &HeaderMap,
    spec: JobSpec,
    origin: Origin,
) -> Result<(StatusCode, JobView), ApiError> {
    let Origin {
        remixed_from,
        webhook,
    } = origin;
    let shape = spec.validate(&state.config.limits)?;
    // No known slot holds it: refused now rather than queued (the coordinator checks again).
    state.fleet.admit(&shape).map_err(|refusal| {
        metrics::record_too_large();
        ApiError::new(ErrorCode::JobTooLarge, refusal.message())
    })?;
    let idempotency_key = idempotency_key(headers)?;
    let tenant = caller.tenant.clone();
    let job_id = match &idempotency_key {
        Some(key) => JobId::derived(tenant.as_str(), key),
        None => JobId::new(),
    };
    // A repeated key is the same job: it never counts against the quota twice. A key whose
    // job was deleted cannot make it again (its id is taken by the tombstone that keeps a
    // redelivered submission from bringing the job back).
    let repeated = match &idempotency_key {
        Some(_) => match current(state, caller, job_id).await? {
            Current::Live(view) => Some(*view),
            Current::Deleted => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "the job this Idempotency-Key made ({job_id}) was deleted; send the request with a new Idempotency-Key"
                    ),
                ));
            }
            Current::Absent => None,
        },
        None => None,
    };
    if let Some(view) = repeated {
        return Ok((StatusCode::ACCEPTED, view));
    }
    let limit = state.config.quota.limit_of(&tenant);
    let active = state.load.active(&tenant);
    if active >= limit {
        metrics::record_quota_exceeded();
        tracing::info!(%tenant, key_id = %caller.id, active, limit, "quota exceeded");
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "tenant {tenant} has {active} queued or running jobs, its limit is {limit}; wait for some to finish or cancel some"
            ),
        ));
    }
    let request = SubmitRequest {
        job_id: Some(job_id),
        spec: spec.clone(),
        idempotency_key: idempotency_key.clone(),
        remixed_from,
        webhook: webhook.clone(),
    };
    let payload =
        codec::to_json(&request).map_err(|e| ApiError::internal("encode submission", &e))?;
    let subject = names::submit_job_subject(tenant.as_str(), &job_id.to_string());
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(job_id.to_string());
    let started = std::time::Instant::now();
    let ack = async {
        let pending = state
            .resources
            .context
            .send_publish(subject, message)
            .await?;
        pending.await
    };
    let ack = tokio::time::timeout(Duration::from_millis(state.config.publish_timeout_ms), ack)
        .await
        .map_err(|_| ApiError::unavailable("the job queue did not acknowledge in time; retry with the same Idempotency-Key"))?
        .map_err(|error| {
            tracing::warn!(%job_id, %tenant, %error, "submission not acknowledged by JetStream");
            match error.kind() {
                PublishErrorKind::Other | PublishErrorKind::MaxAckPending => ApiError::unavailable(
                    "the job queue is full or unavailable; retry later with the same Idempotency-Key",
                ),
                kind => ApiError::unavailable(format!(
                    "the job queue is unavailable ({kind}); retry later with the same Idempotency-Key"
                )),
            }
        })?;
    metrics::record_submit(started.elapsed(), ack.duplicate);
    if !ack.duplicate {
        state.load.submitted(job_id, tenant.clone());
        state.index.submitted(job_id, tenant.clone(), now_ms());
    }
    tracing::info!(%job_id, %tenant, key_id = %caller.id, duplicate = ack.duplicate, frames = shape.num_frames, steps = shape.steps, "job submitted");
    // JetStream dropped it as a repeat of a request that raced this one past the check
    // above: show the job the first request created, as it is now.
    let existing = if ack.duplicate {
        current_view(state, caller, job_id).await?
    } else {
        None
    };
    let view = existing.unwrap_or_else(|| {
        let mut view = JobView::pending(job_id, spec, &shape, now_ms());
        view.remixed_from_video_id = remixed_from;
        view.webhook = webhook;
        view
    });
    Ok((StatusCode::ACCEPTED, view))
}

/// `202 Accepted` with the job and its status URL in `Location`.
fn accepted(view: JobView) -> Response {
    let location = view.links.status.clone();
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response()
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
fn audit_cross_tenant(caller: &Principal, job_id: JobId, owner: &TenantId) {
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

/// The stored record of `id` and its revision, tombstones included.
async fn stored_entry(
    state: &AppState,
    job_id: JobId,
) -> Result<Option<(JobRecord, u64)>, ApiError> {
    state
        .resources
        .jobs
        .get(job_id)
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

/// The submission of `job_id` still waiting in `MOCHI_SUBMIT` (accepted, not yet taken in by
/// the coordinator's intake), with its time of acceptance in ms. A job deleted before the
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

/// `GET /v1/videos/{id}`: the job's status, with its queue position and ETA while queued,
/// and `openai-poll-after-ms` while it has not ended.
#[utoipa::path(
    get,
    path = "/v1/videos/{id}",
    tag = "videos",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobView, description = "The job; `openai-poll-after-ms` while it runs"), Errors)
)]
pub async fn status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(job_id): JobPath,
) -> Result<Response, ApiError> {
    caller.require(Action::Read)?;
    let mut view = current_view(&state, &caller, job_id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(job_id))?;
    if view.state == protocol::JobState::Queued {
        view.queue = queue_info(&state, job_id).await;
    }
    let mut response = Json(&view).into_response();
    if let Some(ms) = poll_after_ms(&view, now_ms()) {
        response
            .headers_mut()
            .insert(POLL_AFTER, HeaderValue::from(ms));
    }
    Ok(response)
}

/// The header OpenAI's SDKs read to pace their polling.
const POLL_AFTER: &str = "openai-poll-after-ms";

/// When to poll a job that has not ended: half the predicted wait for a queued one, two
/// steps' time for a running one (its pace so far), bounded to 0.25–10 s.
fn poll_after_ms(view: &JobView, now: u64) -> Option<u64> {
    use protocol::JobState as S;
    let guess = match view.state {
        state if state.is_terminal() => return None,
        S::Queued => view
            .queue
            .as_ref()
            .and_then(|queue| queue.eta_start_ms)
            .map_or(2_000, |eta| eta.saturating_sub(now) / 2),
        S::Running => match (view.denoising, view.started_at_ms) {
            (Some(done), Some(started)) if done.step > 0 => {
                now.saturating_sub(started) * 2 / u64::from(done.step)
            }
            _ => 1_000,
        },
        S::Encoding => 500,
        _ => 1_000,
    };
    Some(guess.clamp(250, 10_000))
}

/// The queue position the scheduler published for a job in `mochi_queue` (best effort:
/// absent when the bucket or the entry is missing or unreadable).
async fn queue_info(state: &AppState, job_id: JobId) -> Option<protocol::queue::QueueInfo> {
    let store = state
        .resources
        .context
        .get_key_value(names::BUCKET_QUEUE)
        .await
        .ok()?;
    let bytes = store.get(job_id.to_string()).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// `POST /v1/videos/{id}/cancel`: cancels the job in any non-terminal state (409 once it
/// ended). A job on a node also gets a `Cancel` on the node's subject so it stops at its
/// next step.
#[utoipa::path(
    post,
    path = "/v1/videos/{id}/cancel",
    tag = "videos",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobView, description = "The job, cancelled"), Errors)
)]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(job_id): JobPath,
) -> Result<Json<JobView>, ApiError> {
    caller.require(Action::Cancel)?;
    let cancelled = cancel_job(&state, &caller, job_id).await?;
    Ok(Json(view_of(&state, &cancelled)))
}

/// Cancels the caller's job `job_id` and tells its node; returns the cancelled record.
async fn cancel_job(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<JobRecord, ApiError> {
    let (before, cancelled) = match cancel_record(state, caller, job_id).await? {
        Some(outcome) => outcome,
        None => {
            // Accepted but not taken in yet: write its record ourselves, already cancelled.
            // The intake then finds a record and only acknowledges the submission.
            let Some((request, at_ms)) = submitted(state, caller, job_id).await? else {
                return Err(ApiError::job_not_found(job_id));
            };
            match create_cancelled_record(state, caller, job_id, request, at_ms).await? {
                Some(outcome) => outcome,
                // The intake got there first: cancel its record.
                None => cancel_record(state, caller, job_id)
                    .await?
                    .ok_or_else(|| ApiError::job_not_found(job_id))?,
            }
        }
    };
    if let Some(lease) = &before.lease {
        let message = Cancel {
            job_id,
            attempt: before.attempt,
        };
        match codec::encode(&message) {
            Ok(bytes) => {
                let subject = names::node_cancel_subject(lease.node.as_str());
                if let Err(error) = state.client.publish(subject, bytes.into()).await {
                    // The node also stops when its next write to the record is refused.
                    tracing::warn!(%job_id, node = %lease.node, %error, "cannot tell the node of the cancellation");
                }
            }
            Err(error) => tracing::error!(%job_id, %error, "cannot encode a cancel message"),
        }
    }
    tracing::info!(%job_id, tenant = %caller.tenant, key_id = %caller.id, from = %before.state, "job cancelled");
    Ok(cancelled)
}

/// `DELETE /v1/videos/{id}`: OpenAI's delete. A job still queued or running is cancelled
/// first; then its record becomes a tombstone (it reads as absent, and a late redelivery of
/// the submission cannot bring the job back) and its video, previews, latents and dead
/// letter are removed.
#[utoipa::path(
    delete,
    path = "/v1/videos/{id}",
    tag = "videos",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = VideoDeleted, description = "The job and its files are gone"), Errors)
)]
pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(job_id): JobPath,
) -> Result<Json<VideoDeleted>, ApiError> {
    caller.require(Action::Cancel)?;
    let mut deleted = None;
    for _ in 0..MAX_CANCEL_TRIES {
        let Some((record, _)) = tenant_entry(&state, &caller, job_id).await? else {
            // Not taken in yet: cancelling writes its record, then the loop deletes it.
            if submitted(&state, &caller, job_id).await?.is_none() {
                return Err(ApiError::job_not_found(job_id));
            }
            cancel_job(&state, &caller, job_id).await?;
            continue;
        };
        if !record.state.is_terminal() {
            match cancel_job(&state, &caller, job_id).await {
                // It ended by itself meanwhile: delete it as it is.
                Ok(_) => {}
                Err(error) if error.code == ErrorCode::Conflict => {}
                Err(error) => return Err(error),
            }
            continue;
        }
        // Still ended and still there when written (else look again).
        let tombstoned = state
            .resources
            .jobs
            .update(job_id, |current| {
                (current.state.is_terminal() && current.deleted_at_ms.is_none())
                    .then(|| current.tombstone(now_ms()))
            })
            .await;
        match tombstoned {
            Ok(Some(updated)) => {
                deleted = Some(updated.before);
                break;
            }
            Ok(None) | Err(StoreError::NotFound(_)) => {}
            Err(StoreError::Contended(_)) => break,
            Err(error) => return Err(ApiError::internal("write job record", &error)),
        }
    }
    let Some(record) = deleted else {
        return Err(ApiError::unavailable(format!(
            "job {job_id} is changing too fast to delete; retry"
        )));
    };
    state.index.forget(job_id);
    crate::files::remove(&state.resources, &record, true).await;
    tracing::info!(%job_id, tenant = %caller.tenant, key_id = %caller.id, state = %record.state, "job deleted");
    Ok(Json(VideoDeleted {
        id: job_id,
        object: "video.deleted".to_owned(),
        deleted: true,
    }))
}

/// `POST /v1/videos/{id}/remix`: a new job with the source's parameters and seed and a new
/// `prompt` (JSON `{"prompt": …}`; `Idempotency-Key` as for a create).
#[utoipa::path(
    post,
    path = "/v1/videos/{id}/remix",
    tag = "videos",
    params(
        ("id" = String, Path, description = "The source job's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "As for a create")
    ),
    request_body(content = RemixRequest, content_type = "application/json"),
    responses((status = 202, body = JobView, description = "The new job"), Errors)
)]
pub async fn remix(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(source_id): JobPath,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Action::Submit)?;
    let RemixRequest { prompt } = json_request(&headers, body, state.config.max_body_bytes)?;
    let Some(source) = tenant_record(&state, &caller, source_id).await? else {
        if submitted(&state, &caller, source_id).await?.is_some() {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                format!("job {source_id} has not been taken in yet; retry in a moment"),
            ));
        }
        return Err(ApiError::job_not_found(source_id));
    };
    let mut spec = source.spec.clone();
    spec.prompt = prompt;
    spec.seed = Some(source.seed);
    let origin = Origin {
        remixed_from: Some(source_id),
        webhook: source.webhook.clone(),
    };
    enqueue(&state, &caller, &headers, spec, origin).await
}

/// The body of a remix.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemixRequest {
    /// The new prompt.
    pub prompt: String,
}

/// Most jobs a list page holds.
pub const MAX_PAGE: usize = 100;
/// Jobs on a list page when `limit` is absent.
pub const DEFAULT_PAGE: usize = 20;

/// The query of `GET /v1/videos`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The previous page's `last_id`.
    pub after: Option<String>,
    /// Jobs per page, 1 to [`MAX_PAGE`].
    pub limit: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    pub order: Option<String>,
    /// Only jobs with this status (`queued`, `in_progress`, `completed`, `failed`).
    pub status: Option<String>,
    /// Only jobs created at or after this time, seconds since the epoch.
    pub created_after: Option<String>,
}

impl ListQuery {
    /// Checks the query; each bad parameter is a 422 naming it.
    fn page_query(&self) -> Result<PageQuery, ApiError> {
        // An empty parameter (`?after=&limit=`) is an absent one.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let query = Self {
            after: given(&self.after),
            limit: given(&self.limit),
            order: given(&self.order),
            status: given(&self.status),
            created_after: given(&self.created_after),
        };
        query.checked()
    }

    fn checked(&self) -> Result<PageQuery, ApiError> {
        let invalid =
            |field: &str, message: String| ApiError::field(ErrorCode::InvalidField, message, field);
        let after = self
            .after
            .as_deref()
            .map(|after| {
                after.parse::<JobId>().map_err(|_| {
                    invalid(
                        "after",
                        "after must be a job id: the last_id of the previous page".to_owned(),
                    )
                })
            })
            .transpose()?;
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_PAGE).contains(limit))
                .ok_or_else(|| invalid("limit", format!("limit must be 1 to {MAX_PAGE}")))?,
        };
        let ascending = match self.order.as_deref() {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(_) => {
                return Err(invalid(
                    "order",
                    "order must be asc (oldest first) or desc (newest first)".to_owned(),
                ));
            }
        };
        let status = self
            .status
            .as_deref()
            .map(|status| {
                VideoStatus::parse(status).ok_or_else(|| {
                    invalid(
                        "status",
                        "status must be queued, in_progress, completed or failed".to_owned(),
                    )
                })
            })
            .transpose()?;
        let created_after_ms = self
            .created_after
            .as_deref()
            .map(|text| {
                text.parse::<u64>()
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .ok_or_else(|| {
                        invalid(
                            "created_after",
                            "created_after must be a time in whole seconds since the Unix epoch"
                                .to_owned(),
                        )
                    })
            })
            .transpose()?;
        Ok(PageQuery {
            after,
            limit,
            ascending,
            status,
            created_after_ms,
        })
    }
}

/// `GET /v1/videos`: one page of the caller's tenant's jobs, newest first unless
/// `order=asc`, from the in-memory index (see `crate::index`).
#[utoipa::path(
    get,
    path = "/v1/videos",
    tag = "videos",
    params(ListQuery),
    responses((status = 200, body = VideoList, description = "A page of the tenant's jobs"), Errors)
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<VideoList>, ApiError> {
    caller.require(Action::Read)?;
    let Query(query) = query.map_err(|rejection| query_error(&rejection))?;
    let (data, has_more) = page_views(&state, &caller, &query.page_query()?).await?;
    Ok(Json(VideoList {
        object: "list".to_owned(),
        first_id: data.first().map(|view| view.id),
        last_id: data.last().map(|view| view.id),
        has_more,
        data,
    }))
}

/// One page of the caller's tenant's jobs as video objects, and whether more follow.
pub(crate) async fn page_views(
    state: &AppState,
    caller: &Principal,
    query: &PageQuery,
) -> Result<(Vec<JobView>, bool), ApiError> {
    let page = state.index.page(&caller.tenant, query).map_err(|error| {
        ApiError::field(
            ErrorCode::InvalidField,
            format!("{error}: pass the last_id of a page you were given"),
            "after",
        )
    })?;
    let views =
        futures::future::join_all(page.ids.iter().map(|&id| current_view(state, caller, id))).await;
    let mut data = Vec::with_capacity(views.len());
    for view in views {
        // A job deleted since the index listed it is left out.
        if let Some(view) = view? {
            data.push(view);
        }
    }
    Ok((data, page.has_more))
}

/// A query string that does not parse: a 422 naming the parameter where serde does.
pub fn query_error(rejection: &QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let message = text
        .split_once(": ")
        .map_or(text.as_str(), |(_, detail)| detail);
    let unknown = text
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split('`').next());
    match unknown {
        Some(field) => ApiError::field(
            ErrorCode::InvalidField,
            format!("unknown query parameter {field}; see the API reference for this route's"),
            field,
        ),
        None => ApiError::new(
            ErrorCode::InvalidField,
            format!("the query string cannot be read: {message}"),
        ),
    }
}

/// Applies `CancelRequested` by compare-and-set and returns the record before and after, so
/// that the lease that was cancelled is known exactly. `None`: no record of this tenant.
async fn cancel_record(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<Option<(JobRecord, JobRecord)>, ApiError> {
    let cancelled = state
        .resources
        .jobs
        .try_update(job_id, |record| {
            tenant_change(record, caller, |record| {
                match record.apply(&JobEvent::CancelRequested, now_ms()) {
                    Ok(after) => Ok(after),
                    Err(TransitionError::Illegal { state, .. }) => Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("job {job_id} already ended {state}; there is nothing to cancel"),
                    )),
                    Err(error) => Err(ApiError::internal("cancel job", &error)),
                }
            })
        })
        .await;
    match tenant_update(caller, job_id, cancelled, "cancel")? {
        Some(updated) => Ok(Some((updated.before, updated.after))),
        None => Ok(None),
    }
}

/// Why a change of a job record on behalf of a tenant did not happen.
enum TenantRefusal {
    /// The job is deleted: it reads as absent.
    Deleted,
    /// The job is another tenant's (named): it reads as absent, and the attempt is audited.
    OtherTenant(TenantId),
    /// The change itself refused the record, with the answer to give.
    Refused(ApiError),
}

/// `change` of `record` when it is a live job of the caller's tenant, for
/// [`protocol::jetstream::JobStore::try_update`].
fn tenant_change(
    record: &JobRecord,
    caller: &Principal,
    change: impl FnOnce(&JobRecord) -> Result<JobRecord, ApiError>,
) -> Result<Option<JobRecord>, TenantRefusal> {
    if record.deleted_at_ms.is_some() {
        return Err(TenantRefusal::Deleted);
    }
    if record.tenant != caller.tenant {
        return Err(TenantRefusal::OtherTenant(record.tenant.clone()));
    }
    change(record).map(Some).map_err(TenantRefusal::Refused)
}

/// The answer to a compare-and-set made with [`tenant_change`]: the change, `None` for a job
/// the caller cannot see (absent, deleted, another tenant's), or the error to answer with
/// (`doing` names the operation in a contended job's 503).
fn tenant_update(
    caller: &Principal,
    job_id: JobId,
    outcome: Result<Option<Updated>, CasError<TenantRefusal>>,
    doing: &str,
) -> Result<Option<Updated>, ApiError> {
    match outcome {
        Ok(updated) => Ok(updated),
        Err(
            CasError::Refused(TenantRefusal::Deleted) | CasError::Store(StoreError::NotFound(_)),
        ) => Ok(None),
        Err(CasError::Refused(TenantRefusal::OtherTenant(owner))) => {
            audit_cross_tenant(caller, job_id, &owner);
            Ok(None)
        }
        Err(CasError::Refused(TenantRefusal::Refused(error))) => Err(error),
        Err(CasError::Store(StoreError::Contended(_))) => Err(ApiError::unavailable(format!(
            "job {job_id} is changing too fast to {doing}; retry"
        ))),
        Err(CasError::Store(error)) => Err(store_error(job_id, error)),
    }
}

/// Writes the record of a submission the intake has not taken in yet, already cancelled
/// (create-only: `None` if a record exists by now). Returns the record before and after.
async fn create_cancelled_record(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
    request: SubmitRequest,
    at_ms: u64,
) -> Result<Option<(JobRecord, JobRecord)>, ApiError> {
    let Ok(shape) = request.spec.validate(&state.config.limits) else {
        // The intake will record it as rejected; until then there is no job to show.
        return Err(ApiError::job_not_found(job_id));
    };
    let queued =
        JobRecord::from_submission(job_id, caller.tenant.clone(), request, shape, 1, at_ms);
    let cancelled = queued
        .apply(&JobEvent::CancelRequested, now_ms())
        .map_err(|e| ApiError::internal("cancel a new record", &e))?;
    let created = state
        .resources
        .jobs
        .create(&cancelled)
        .await
        .map_err(|e| ApiError::internal("create job record", &e))?;
    Ok(created.then_some((queued, cancelled)))
}
