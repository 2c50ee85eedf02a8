//! `/v1/videos`: create, status, delete, remix (the list is in `list.rs`, cancel in
//! `cancel.rs`, the download in `content.rs`, the create body in `create.rs`, reading a job
//! for its caller in `lookup.rs`).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::{JobView, VideoDeleted};
use protocol::jetstream::StoreError;
use protocol::messages::SubmitRequest;
use protocol::queue::QueueInfo;
use protocol::record::DEFAULT_MAX_ATTEMPTS;
use protocol::{ErrorCode, JobId, JobRecord, JobSpec, names, now_ms};

use crate::auth::{Action, Caller, Principal};
use crate::error::ApiError;
use crate::metrics;
use crate::openapi::Errors;
use crate::routes::cancel::{MAX_CANCEL_TRIES, cancel_job};
use crate::routes::create::create_request;
use crate::routes::lookup::{
    Current, JobPath, current, current_view, queue_position, submitted, tenant_entry,
    tenant_record, view_of,
};
use crate::routes::request::{idempotency_key, json_request};
use crate::state::AppState;

/// `POST /v1/videos`: validates the request (JSON or a form, OpenAI's fields or ours),
/// writes the job's record durably (`queued`), answers 202 with the video object.
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

/// Accepts `spec` for the caller's tenant: admission, idempotency, quota, then the job's
/// record, written durably; the status to answer (202) and the job.
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
    let limit = state.config.quota.limit_of(&tenant);
    let active = state.load.active(&tenant);
    if active >= limit {
        // A repeated key is the same job: it never counts against the quota twice. (Under
        // the quota the create-only write below finds it instead, without a read first.)
        if idempotency_key.is_some() {
            match current(state, caller, job_id).await? {
                Current::Live(view) => return Ok((StatusCode::ACCEPTED, *view)),
                Current::Deleted => return Err(key_of_deleted_job(job_id)),
                Current::Absent => {}
            }
        }
        metrics::record_quota_exceeded();
        tracing::info!(%tenant, key_id = %caller.id, active, limit, "quota exceeded");
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "tenant {tenant} has {active} queued or running jobs, its limit is {limit}; wait for some to finish or cancel some"
            ),
        ));
    }
    // The record is the submission: one durable, create-only write, which the leading
    // coordinator's watch of `mochi_jobs` shows at once (no intake step). The placing
    // coordinator sets the attempt budget (`coordinator.max_attempts`).
    let request = SubmitRequest {
        job_id: Some(job_id),
        spec,
        idempotency_key,
        remixed_from,
        webhook,
    };
    let now = now_ms();
    let record = JobRecord::from_submission(
        job_id,
        tenant.clone(),
        request,
        shape,
        DEFAULT_MAX_ATTEMPTS,
        now,
    );
    let started = std::time::Instant::now();
    let create = state.records.create(&record);
    let created = tokio::time::timeout(
        Duration::from_millis(state.config.publish_timeout_ms),
        create,
    )
    .await
    .map_err(|_| {
        ApiError::unavailable(
            "the job store did not acknowledge in time; retry with the same Idempotency-Key",
        )
    })?
    .map_err(|error| {
        tracing::warn!(%job_id, %tenant, %error, "job record not stored");
        ApiError::unavailable(
            "the job store is unavailable; retry later with the same Idempotency-Key",
        )
    })?;
    metrics::record_submit(started.elapsed(), !created);
    tracing::info!(%job_id, %tenant, key_id = %caller.id, duplicate = !created, frames = shape.num_frames, steps = shape.steps, "job submitted");
    if created {
        state.load.submitted(job_id, tenant.clone());
        state.index.submitted(job_id, tenant, now);
        return Ok((StatusCode::ACCEPTED, view_of(state, &record)));
    }
    // The key's job exists (an earlier request with it, or a concurrent one): show it as it
    // is now. A key whose job was deleted cannot make it again: its tombstone holds the id.
    match current(state, caller, job_id).await? {
        Current::Live(view) => Ok((StatusCode::ACCEPTED, *view)),
        Current::Deleted => Err(key_of_deleted_job(job_id)),
        Current::Absent => Err(ApiError::unavailable(
            "the job this Idempotency-Key made cannot be read yet; retry with the same Idempotency-Key",
        )),
    }
}

/// The refusal of an Idempotency-Key whose job `job_id` was deleted: its tombstone keeps the
/// id, so the key cannot make the job again.
fn key_of_deleted_job(job_id: JobId) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "the job this Idempotency-Key made ({job_id}) was deleted; send the request with a new Idempotency-Key"
        ),
    )
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
        view.queue = queue_info(&state, &view).await;
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

/// The queue position the scheduler published for a queued job in `mochi_queue`, with the
/// queue's length now from its summary (best effort: absent when the bucket or the job's
/// entry and page line are missing or unreadable).
async fn queue_info(state: &AppState, view: &JobView) -> Option<QueueInfo> {
    let store = state
        .resources
        .context
        .get_key_value(names::BUCKET_QUEUE)
        .await
        .ok()?;
    queue_position(&store, view.id, view.attempt, view.created_at_ms).await
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
