//! `/v1/admin/dead`: dead letters (jobs whose retries ran out, copied to `MOCHI_DLQ` with
//! their history) and their re-drive, across tenants; admin credentials only.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use protocol::api::{JobError, JobView};
use protocol::jetstream::{CasError, StoreError};
use protocol::record::TransitionError;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, JobState, codec, now_ms};
use serde::{Deserialize, Serialize};

use crate::auth::{AUDIT, Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::routes::lookup::{JobPath, store_error};
use crate::state::AppState;

/// Dead letters listed at most per request.
const MAX_LIST: usize = 1_000;

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
    let redriven = state
        .resources
        .jobs
        .try_update(job_id, |record| {
            if record.deleted_at_ms.is_some() {
                return Err(ApiError::job_not_found(job_id));
            }
            match record.apply(&JobEvent::Redriven, now_ms()) {
                Ok(next) => Ok(Some(next)),
                Err(TransitionError::Illegal { state, .. }) => Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("job {job_id} is {state}, not dead; only dead jobs are re-driven"),
                )),
                Err(error) => Err(ApiError::internal("re-drive job", &error)),
            }
        })
        .await;
    let next = match redriven {
        Ok(Some(updated)) => updated.after,
        Ok(None) | Err(CasError::Store(StoreError::NotFound(_))) => {
            return Err(ApiError::job_not_found(job_id));
        }
        Err(CasError::Refused(error)) => return Err(error),
        Err(CasError::Store(StoreError::Contended(_))) => {
            return Err(ApiError::unavailable(format!(
                "job {job_id} is changing too fast to re-drive; retry"
            )));
        }
        Err(CasError::Store(error)) => return Err(store_error(job_id, error)),
    };
    tracing::warn!(target: AUDIT, event = "job_redriven", %job_id, tenant = %next.tenant, key_id = %caller.id, "dead job re-driven by an admin");
    Ok(Json(JobView::from_record(&next)))
}
