//! `/v1/admin/dead`: dead letters (jobs whose retries ran out, copied to `MOCHI_DLQ` with
//! their history) and their re-drive, across tenants; admin credentials only.

use async_nats::jetstream::kv::UpdateErrorKind;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use protocol::api::{JobError, JobView};
use protocol::record::TransitionError;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, JobState, codec, now_ms};
use serde::{Deserialize, Serialize};

use crate::auth::{AUDIT, Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::routes::videos::JobPath;
use crate::state::AppState;

/// Dead letters listed at most per request.
const MAX_LIST: usize = 1_000;
/// Most compare-and-set rounds a re-drive tries before answering 503.
const MAX_REDRIVE_TRIES: u32 = 16;

/// `GET /v1/admin/dead` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Newest dead letters to return (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadJob {
    /// The job.
    pub id: JobId,
    /// Its tenant.
    pub tenant: String,
    /// Attempts that failed before it died.
    pub failed_attempts: u32,
    /// Its last attempt.
    pub attempt: u32,
    /// The last failure.
    pub error: Option<JobError>,
    /// When it died, ms since the epoch.
    pub dead_at_ms: Option<u64>,
    /// Its state now (`dead`, or another once re-driven).
    pub state_now: Option<JobState>,
}

/// `GET /v1/admin/dead` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadList {
    /// Newest first, one entry per job.
    pub dead: Vec<DeadJob>,
}

/// `GET /v1/admin/dead`: the newest dead letters, with each job's state now.
#[utoipa::path(
    get,
    path = "/v1/admin/dead",
    tag = "admin",
    params(ListQuery),
    responses((status = 200, body = DeadList, description = "The newest dead letters"), Errors)
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DeadList>, ApiError> {
    caller.require(Action::Admin)?;
    let Query(query) = query.map_err(|_| {
        ApiError::field(
            ErrorCode::InvalidField,
            "limit must be a whole number from 1 to 1000",
            "limit",
        )
    })?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let info = state.resources.dlq.get_info().await.map_err(|error| {
        tracing::warn!(%error, "dead-letter stream unreachable");
        ApiError::unavailable("the dead-letter stream is unreachable; retry shortly")
    })?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut dead: Vec<DeadJob> = Vec::new();
    let mut sequence = last;
    while sequence >= first.max(1) && dead.len() < limit {
        if let Ok(message) = state.resources.dlq.get_raw_message(sequence).await
            && let Ok(record) = codec::from_json::<JobRecord>(&message.payload)
            && !dead.iter().any(|known| known.id == record.id)
        {
            let state_now = match state.resources.jobs.get(record.id).await {
                Ok(found) => found.map(|(now, _)| now.state),
                Err(_) => None,
            };
            let view = JobView::from_record(&record);
            dead.push(DeadJob {
                id: record.id,
                tenant: record.tenant.to_string(),
                failed_attempts: record.failed_attempts,
                attempt: record.attempt,
                error: view.error,
                dead_at_ms: record.finished_at_ms,
                state_now,
            });
        }
        sequence -= 1;
    }
    Ok(Json(DeadList { dead }))
}

/// `POST /v1/admin/dead/{id}/redrive`: queues a dead job again with a fresh retry budget
/// (409 when the job is not dead).
#[utoipa::path(
    post,
    path = "/v1/admin/dead/{id}/redrive",
    tag = "admin",
    params(("id" = String, Path, description = "The dead job's id")),
    responses((status = 200, body = protocol::api::JobView, description = "The job, queued again"), crate::openapi::Errors)
)]
pub async fn redrive(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(job_id): JobPath,
) -> Result<Json<JobView>, ApiError> {
    caller.require(Action::Admin)?;
    let jobs = &state.resources.jobs;
    for _ in 0..MAX_REDRIVE_TRIES {
        let (record, revision) = match jobs.get(job_id).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(ApiError::job_not_found(job_id)),
            Err(error) => return Err(ApiError::internal("read job record", &error)),
        };
        let next = match record.apply(&JobEvent::Redriven, now_ms()) {
            Ok(next) => next,
            Err(TransitionError::Illegal { state, .. }) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("job {job_id} is {state}, not dead; only dead jobs are re-driven"),
                ));
            }
            Err(error) => return Err(ApiError::internal("re-drive job", &error)),
        };
        let bytes = codec::encode(&next).map_err(|e| ApiError::internal("encode record", &e))?;
        match jobs
            .kv
            .update(job_id.to_string(), bytes.into(), revision)
            .await
        {
            Ok(_) => {
                tracing::warn!(target: AUDIT, event = "job_redriven", %job_id, tenant = %next.tenant, key_id = %caller.id, "dead job re-driven by an admin");
                return Ok(Json(JobView::from_record(&next)));
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
            Err(error) => return Err(ApiError::internal("write job record", &error)),
        }
    }
    Err(ApiError::unavailable(format!(
        "job {job_id} is changing too fast to re-drive; retry"
    )))
}
