//! `POST /v1/videos/{id}/cancel`: a queued job ends at once, a running one at its next step
//! boundary; a job the intake has not taken in yet gets a `cancelled` record that the intake
//! then finds.

use axum::Json;
use axum::extract::State;
use protocol::api::JobView;
use protocol::jetstream::{CasError, StoreError, Updated};
use protocol::messages::{Cancel, SubmitRequest};
use protocol::record::TransitionError;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, TenantId, codec, names, now_ms};

use crate::auth::{Action, Caller, Principal};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::routes::lookup::{JobPath, audit_cross_tenant, store_error, submitted, view_of};
use crate::state::AppState;

/// Most compare-and-set rounds a cancellation tries before answering 503.
pub(crate) const MAX_CANCEL_TRIES: u32 = 16;

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
pub(crate) async fn cancel_job(
    state: &AppState,
    caller: &Principal,
    job_id: JobId,
) -> Result<JobRecord, ApiError> {
    let (before, cancelled) = match cancel_record(state, caller, job_id).await? {
        Some(outcome) => outcome,
        None => {
            // Left in MOCHI_SUBMIT (by a NATS publisher or an earlier gateway) and not taken
            // in yet: write its record ourselves, already cancelled; the intake then finds
            // a record and writes nothing.
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
