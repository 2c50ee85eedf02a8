//! The seed service's endpoints, kept as aliases so that its clients keep working:
//! `POST /generate-video`, `GET /jobs`, `GET /jobs/{job_id}`, `GET /videos/{job_id}` and
//! `GET /health`, with the same credentials and tenants as `/v1`.
//!
//! The seed took `prompt`, `duration` (1–30 s), `fps` (1–24) and `resolution` (`480p`,
//! `720p`, `1080p`) and answered `{job_id, status}`; its statuses were `queued`,
//! `processing`, `completed` and `failed`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use protocol::api::{JobView, VideoStatus};
use protocol::{ErrorCode, JobId, JobSpec, SpecError};
use serde::{Deserialize, Serialize};

use crate::auth::{Action, Caller};
use crate::error::ApiError;
use crate::index::PageQuery;
use crate::routes::lookup::{JobPath, current_view};
use crate::routes::request::json_request;
use crate::routes::{list, videos};
use crate::state::AppState;

/// Longest video the seed accepted, seconds.
const MAX_DURATION_S: f32 = 30.0;
/// Highest frame rate the seed accepted.
const MAX_FPS: u32 = 24;
/// Jobs `GET /jobs` shows (the newest).
const JOBS_SHOWN: usize = 100;

/// The seed's request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateVideo {
    /// What the video should show.
    pub prompt: String,
    /// Length in seconds, 1–30.
    #[serde(default = "default_duration")]
    pub duration: f32,
    /// Frames per second, 1–24.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// `480p`, `720p` or `1080p`.
    #[serde(default = "default_resolution")]
    pub resolution: String,
}

fn default_duration() -> f32 {
    5.0
}

fn default_fps() -> u32 {
    MAX_FPS
}

fn default_resolution() -> String {
    "480p".to_owned()
}

/// A job as the seed showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeedJob {
    /// The job's id.
    pub job_id: JobId,
    /// `queued`, `processing`, `completed` or `failed`.
    pub status: String,
    /// The prompt.
    pub prompt: String,
    /// Completion in percent.
    pub progress: u32,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Where the video is, once completed.
    pub video_url: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl SeedJob {
    fn of(view: &JobView) -> Self {
        let status = match view.status {
            VideoStatus::Queued => "queued",
            VideoStatus::InProgress => "processing",
            VideoStatus::Completed => "completed",
            VideoStatus::Failed => "failed",
        };
        Self {
            job_id: view.id,
            status: status.to_owned(),
            prompt: view.prompt.clone(),
            progress: view.progress,
            created_at: view.created_at,
            video_url: (view.status == VideoStatus::Completed)
                .then(|| format!("/videos/{}", view.id)),
            error: view.error.as_ref().map(|error| error.message.clone()),
        }
    }
}

/// `GET /jobs`: the seed's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeedJobs {
    /// The tenant's newest jobs, newest first.
    pub jobs: Vec<SeedJob>,
}

impl GenerateVideo {
    /// The `JobSpec` of the seed's request; lengths and sizes beyond what any slot here
    /// makes are `job_too_large` with a sentence saying what fits.
    fn spec(self, limits: &protocol::Limits) -> Result<JobSpec, ApiError> {
        let (width, height) = match self.resolution.as_str() {
            "480p" => (848, 480),
            "720p" => (1280, 720),
            "1080p" => (1920, 1080),
            _ => {
                return Err(ApiError::field(
                    ErrorCode::InvalidField,
                    "resolution must be 480p, 720p or 1080p",
                    "resolution",
                ));
            }
        };
        if !(1.0..=MAX_DURATION_S).contains(&self.duration) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("duration must be between 1 and {MAX_DURATION_S} seconds"),
                "duration",
            ));
        }
        if !(1..=MAX_FPS).contains(&self.fps) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("fps must be between 1 and {MAX_FPS}"),
                "fps",
            ));
        }
        let mut spec = JobSpec::new(self.prompt);
        spec.width = Some(width);
        spec.height = Some(height);
        spec.fps = Some(self.fps);
        spec.duration_s = Some(self.duration);
        match spec.validate(limits) {
            Ok(_) => Ok(spec),
            Err(
                SpecError::TooManyPixels { .. }
                | SpecError::OutOfRange {
                    field: "width" | "height",
                    ..
                },
            ) => Err(ApiError::new(
                ErrorCode::JobTooLarge,
                format!(
                    "{} ({width}x{height}) is larger than this service makes: at most {} pixels, e.g. 720p (1280x720); ask for 480p or 720p",
                    self.resolution, limits.max_pixels
                ),
            )),
            Err(SpecError::OutOfRange {
                field: "duration_s" | "num_frames",
                ..
            }) => {
                let longest = f64::from(limits.max_num_frames) / f64::from(self.fps);
                Err(ApiError::new(
                    ErrorCode::JobTooLarge,
                    format!(
                        "{} s at {} fps is longer than this service makes: at most {} frames ({longest:.1} s at {} fps); ask for a shorter duration",
                        self.duration, self.fps, limits.max_num_frames, self.fps
                    ),
                ))
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// `POST /generate-video`: the seed's create; `202 {job_id, status, …}`.
#[utoipa::path(
    post,
    path = "/generate-video",
    tag = "seed",
    request_body(content = GenerateVideo, content_type = "application/json"),
    responses((status = 202, body = SeedJob, description = "Accepted"), crate::openapi::Errors)
)]
pub async fn generate_video(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Action::Submit)?;
    let request: GenerateVideo = json_request(&headers, body, state.config.max_body_bytes)?;
    let spec = request.spec(&state.config.limits)?;
    let (status, view) =
        videos::enqueue_view(&state, &caller, &headers, spec, videos::Origin::default()).await?;
    Ok((status, Json(SeedJob::of(&view))).into_response())
}

/// `GET /jobs`: the tenant's newest jobs.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "seed",
    responses((status = 200, body = SeedJobs, description = "The tenant's newest jobs"), crate::openapi::Errors)
)]
pub async fn jobs(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<SeedJobs>, ApiError> {
    caller.require(Action::Read)?;
    let query = PageQuery {
        limit: JOBS_SHOWN,
        ..PageQuery::default()
    };
    let views = list::page_views(&state, &caller, &query).await?;
    Ok(Json(SeedJobs {
        jobs: views.0.iter().map(SeedJob::of).collect(),
    }))
}

/// `GET /jobs/{job_id}`: one job.
#[utoipa::path(
    get,
    path = "/jobs/{job_id}",
    tag = "seed",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = SeedJob, description = "The job"), crate::openapi::Errors)
)]
pub async fn job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(job_id): JobPath,
) -> Result<Json<SeedJob>, ApiError> {
    caller.require(Action::Read)?;
    let view = current_view(&state, &caller, job_id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(job_id))?;
    Ok(Json(SeedJob::of(&view)))
}

/// `GET /videos/{job_id}`: the MP4, as `GET /v1/videos/{id}/content`.
#[utoipa::path(
    get,
    path = "/videos/{job_id}",
    tag = "seed",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The MP4", content_type = "video/mp4"), crate::openapi::Errors)
)]
pub async fn video(
    state: State<AppState>,
    caller: Option<Caller>,
    path: JobPath,
    query: Result<
        axum::extract::Query<crate::routes::content::ContentQuery>,
        axum::extract::rejection::QueryRejection,
    >,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Box::pin(crate::routes::content::content(
        state, caller, path, query, headers,
    ))
    .await
}

/// `GET /health`: the seed's liveness probe (no credential, like `/healthz`).
#[utoipa::path(
    get,
    path = "/health",
    tag = "seed",
    security(()),
    responses((status = 200, description = "`{\"status\": \"ok\"}`", content_type = "application/json"))
)]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(resolution: &str, duration: f32, fps: u32) -> GenerateVideo {
        GenerateVideo {
            prompt: "a fox".into(),
            duration,
            fps,
            resolution: resolution.into(),
        }
    }

    #[test]
    fn the_seeds_fields_become_a_spec() {
        let spec = request("720p", 2.0, 24)
            .spec(&protocol::Limits::default())
            .expect("fits");
        assert_eq!(
            (spec.width, spec.height, spec.fps, spec.duration_s),
            (Some(1280), Some(720), Some(24), Some(2.0))
        );
    }

    #[test]
    fn what_no_slot_makes_is_too_large_with_what_fits() {
        let limits = protocol::Limits::default();
        let error = request("1080p", 2.0, 24).spec(&limits).expect_err("1080p");
        assert_eq!(error.code, ErrorCode::JobTooLarge);
        assert!(error.message.contains("720p"), "{}", error.message);
        let error = request("480p", 30.0, 24).spec(&limits).expect_err("30 s");
        assert_eq!(error.code, ErrorCode::JobTooLarge);
        assert!(error.message.contains("12.5 s"), "{}", error.message);
        for (bad, field) in [
            (request("4k", 2.0, 24), "resolution"),
            (request("480p", 31.0, 24), "duration"),
            (request("480p", 2.0, 25), "fps"),
        ] {
            let error = bad.spec(&limits).expect_err("out of the seed's range");
            assert_eq!(
                (error.code, error.field.as_deref()),
                (ErrorCode::InvalidField, Some(field))
            );
        }
    }
}
