//! `POST /v1/videos/estimate`: what a job would cost before it is submitted (our
//! extension): the leading coordinator answers from its cost model over NATS
//! ([`names::SUBJECT_ESTIMATE`]), so the figures are the ones the scheduler itself uses.

use std::time::Duration;

use async_nats::RequestErrorKind;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use protocol::api::{MODEL_ID, VideoEstimate, seconds_of};
use protocol::messages::{EstimateReply, EstimateRequest};
use protocol::{JobShape, JobSpec, codec, names};

use crate::auth::{Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::routes::create::create_request;
use crate::state::AppState;

/// How long the gateway waits for the coordinator's answer.
const WAIT: Duration = Duration::from_secs(3);

/// `POST /v1/videos/estimate`: the body of a create request; answers the predicted GPU
/// seconds, peak memory, lane and whether a known slot holds the job, without creating it.
#[utoipa::path(
    post,
    path = "/v1/videos/estimate",
    tag = "videos",
    request_body(content(
        (JobSpec = "application/json"),
        (JobSpec = "multipart/form-data")
    ), description = "The same body as `POST /v1/videos`"),
    responses((status = 200, body = VideoEstimate, description = "The prediction; nothing is created"), Errors)
)]
pub async fn estimate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<VideoEstimate>, ApiError> {
    caller.require(Action::Read)?;
    let created = create_request(&state, &headers, body).await?;
    let shape = created.spec.validate(&state.config.limits)?;
    let reply = ask(&state.client, shape).await?;
    Ok(Json(view(&shape, reply)))
}

/// Asks the leading coordinator; 503 when none answers in time.
async fn ask(client: &async_nats::Client, shape: JobShape) -> Result<EstimateReply, ApiError> {
    let payload = codec::encode(&EstimateRequest { shape })
        .map_err(|error| ApiError::internal("estimate request", &error))?;
    let answer = tokio::time::timeout(
        WAIT,
        client.request(names::SUBJECT_ESTIMATE, payload.into()),
    )
    .await;
    let message = match answer {
        Ok(Ok(message)) => message,
        Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
            return Err(ApiError::unavailable(
                "no coordinator is leading right now, so nothing can estimate the job; retry in a few seconds",
            ));
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "estimate request failed");
            return Err(ApiError::unavailable(
                "the coordinator did not answer the estimate; retry in a few seconds",
            ));
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "the coordinator did not answer the estimate in time; retry in a few seconds",
            ));
        }
    };
    codec::decode::<EstimateReply>(&message.payload)
        .map_err(|error| ApiError::internal("estimate reply", &error))
}

/// The API's view of the coordinator's answer: the figures of the fastest class that holds
/// the job (an H100's when none does or none is known).
pub fn view(shape: &JobShape, reply: EstimateReply) -> VideoEstimate {
    let best = reply.classes.iter().find(|class| class.fitting_slots > 0);
    let (gpu_class, gpu_seconds, step_seconds, peak_memory_bytes) = match best {
        Some(class) => (
            Some(class.gpu_class.clone()),
            class.gpu_seconds,
            class.step_seconds,
            class.peak_memory_bytes,
        ),
        None => (
            None,
            reply.reference_gpu_seconds,
            reply.reference_step_seconds,
            reply.peak_memory_bytes,
        ),
    };
    VideoEstimate {
        object: "video.estimate".to_owned(),
        model: MODEL_ID.to_owned(),
        seconds: seconds_of(shape.num_frames, shape.fps),
        size: format!("{}x{}", shape.width, shape.height),
        num_frames: shape.num_frames,
        fps: shape.fps,
        steps: shape.steps,
        peak_memory_bytes,
        lane: reply.lane,
        fits: reply.refusal.is_none(),
        gpu_class,
        gpu_seconds,
        step_seconds,
        known_slots: reply.classes.iter().map(|class| class.slots).sum(),
        fitting_slots: reply.classes.iter().map(|class| class.fitting_slots).sum(),
        queued_jobs: reply.queued_jobs,
        classes: reply.classes,
        message: reply.refusal,
    }
}
