//! JSON shapes of the public HTTP API, shared by the gateway and the `mochi generate` client.

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::record::{JobRecord, JobState, Progress, VideoResult};
use crate::spec::JobSpec;

/// The model this service serves, as `model` names it in requests and job objects.
pub const MODEL_ID: &str = "mochi-1-preview";

/// Share of `progress` given to denoising; the decode and the MP4 are the rest.
const DENOISE_PERCENT: u32 = 95;

/// A job as the API shows it to its owner: OpenAI's video object (`id` to
/// `remixed_from_video_id`), then this service's own fields.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: JobId,
    /// Always `video`.
    pub object: String,
    /// The model that makes the video ([`MODEL_ID`]).
    pub model: String,
    /// OpenAI's coarse status; `state` has the exact one.
    pub status: VideoStatus,
    /// Completion in percent (0–100): denoising steps, then the decode.
    pub progress: u32,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// When the job ended (any terminal state), seconds since the epoch.
    pub completed_at: Option<u64>,
    /// When the video and its previews are (or were) removed, seconds since the epoch: the
    /// end of the job plus the configured retention (`null` while running, or when files
    /// are kept for ever).
    pub expires_at: Option<u64>,
    /// The prompt.
    pub prompt: String,
    /// Length of the video in seconds (frames ÷ fps, at most two decimals), as a string.
    pub seconds: String,
    /// `WIDTHxHEIGHT` in pixels.
    pub size: String,
    /// Why the job failed; a cancelled job has code `cancelled`.
    pub error: Option<JobError>,
    /// The job this one remixes.
    pub remixed_from_video_id: Option<JobId>,
    /// The exact state (the service's own field).
    pub state: JobState,
    /// What was asked.
    pub spec: JobSpec,
    /// Frames after rounding to 6k+1.
    pub num_frames: u32,
    /// Frames per second.
    pub fps: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// The seed used (known once the intake has taken the job in).
    pub seed: Option<u64>,
    /// Current attempt (0 before the first placement).
    pub attempt: u32,
    /// Attempts that ended in a retryable failure (and were retried, or made the job dead).
    #[serde(default)]
    pub failed_attempts: u32,
    /// Denoising steps done in the current attempt.
    pub denoising: Option<Progress>,
    /// The video, once succeeded.
    pub result: Option<VideoResult>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
    /// When the current attempt started running, ms since the epoch.
    pub started_at_ms: Option<u64>,
    /// When the retention sweep removed the files, ms since the epoch.
    pub files_removed_at_ms: Option<u64>,
    /// Where the job's events are posted.
    pub webhook: Option<crate::record::Webhook>,
    /// Where to poll and download.
    pub links: JobLinks,
    /// While queued: the job's position and predicted start, as the scheduler last
    /// published them (absent when not queued or not yet estimated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<crate::queue::QueueInfo>,
}

/// OpenAI's status of a video job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoStatus {
    /// Waiting for a slot (queued, assigned, or paused to let another job run).
    Queued,
    /// Denoising or encoding.
    InProgress,
    /// The video is ready.
    Completed,
    /// Ended without a video (failed, cancelled, aborted, dead).
    Failed,
}

impl VideoStatus {
    /// The status of a job in `state`.
    pub fn of(state: JobState) -> Self {
        match state {
            JobState::Queued | JobState::Assigned | JobState::Preempted => Self::Queued,
            JobState::Running | JobState::Encoding => Self::InProgress,
            JobState::Succeeded => Self::Completed,
            JobState::Failed | JobState::Cancelled | JobState::Aborted | JobState::Dead => {
                Self::Failed
            }
        }
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::InProgress,
            Self::Completed,
            Self::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

/// A job's failure as clients see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable code.
    pub code: crate::error::ErrorCode,
    /// One sentence.
    pub message: String,
}

/// URLs of a job's resources, relative to the API root.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLinks {
    /// The job's status.
    pub status: String,
    /// The MP4, once succeeded (`?variant=thumbnail` or `spritesheet` for the previews).
    pub content: String,
    /// The MP4 by a signed link that needs no credentials (once succeeded), until
    /// `signed_content_expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_content: Option<String>,
    /// The thumbnail by a signed link, like `signed_content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_thumbnail: Option<String>,
    /// When the signed links stop working, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_content_expires_at: Option<u64>,
}

impl JobLinks {
    /// The links of a job.
    pub fn for_job(id: JobId) -> Self {
        Self {
            status: format!("/v1/videos/{id}"),
            content: format!("/v1/videos/{id}/content"),
            signed_content: None,
            signed_thumbnail: None,
            signed_content_expires_at: None,
        }
    }
}

/// `seconds` of a video: `frames / fps` to the nearest hundredth, without trailing zeros
/// (`"4"`, `"1.5"`, `"1.03"`).
pub fn seconds_of(num_frames: u32, fps: u32) -> String {
    let fps = u64::from(fps.max(1));
    let hundredths = (u64::from(num_frames) * 100 + fps / 2) / fps;
    let (whole, frac) = (hundredths / 100, hundredths % 100);
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// `progress` of a job in `state` that has done `denoising`.
pub fn percent_of(state: JobState, denoising: Option<Progress>) -> u32 {
    let denoised = denoising.filter(|p| p.total_steps > 0).map_or(0, |p| {
        p.step.min(p.total_steps) * DENOISE_PERCENT / p.total_steps
    });
    match state {
        JobState::Succeeded => 100,
        JobState::Encoding => DENOISE_PERCENT,
        _ => denoised,
    }
}

impl JobView {
    /// The view of a job accepted by JetStream whose record the intake has not written yet.
    pub fn pending(id: JobId, spec: JobSpec, shape: &crate::shape::JobShape, at_ms: u64) -> Self {
        Self {
            id,
            object: "video".to_owned(),
            model: MODEL_ID.to_owned(),
            status: VideoStatus::Queued,
            progress: 0,
            created_at: at_ms / 1000,
            completed_at: None,
            expires_at: None,
            prompt: spec.prompt.clone(),
            seconds: seconds_of(shape.num_frames, shape.fps),
            size: format!("{}x{}", shape.width, shape.height),
            error: None,
            remixed_from_video_id: None,
            state: JobState::Queued,
            seed: spec.seed,
            spec,
            num_frames: shape.num_frames,
            fps: shape.fps,
            width: shape.width,
            height: shape.height,
            steps: shape.steps,
            attempt: 0,
            failed_attempts: 0,
            denoising: None,
            result: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            started_at_ms: None,
            files_removed_at_ms: None,
            webhook: None,
            links: JobLinks::for_job(id),
            queue: None,
        }
    }

    /// The view of a stored record.
    pub fn from_record(record: &JobRecord) -> Self {
        let error = match record.state {
            JobState::Succeeded => None,
            JobState::Cancelled => Some(JobError {
                code: crate::error::ErrorCode::Cancelled,
                message: "the job was cancelled".to_owned(),
            }),
            _ => record.error.as_ref().map(|failure| JobError {
                code: failure.code,
                message: failure.message.clone(),
            }),
        };
        let completed_at = record
            .finished_at_ms
            .filter(|_| record.state.is_terminal())
            .map(|ms| ms / 1000);
        Self {
            id: record.id,
            object: "video".to_owned(),
            model: MODEL_ID.to_owned(),
            status: VideoStatus::of(record.state),
            progress: percent_of(record.state, record.progress),
            created_at: record.created_at_ms / 1000,
            completed_at,
            expires_at: None,
            prompt: record.spec.prompt.clone(),
            seconds: seconds_of(record.shape.num_frames, record.shape.fps),
            size: format!("{}x{}", record.shape.width, record.shape.height),
            error,
            remixed_from_video_id: record.remixed_from,
            state: record.state,
            spec: record.spec.clone(),
            num_frames: record.shape.num_frames,
            fps: record.shape.fps,
            width: record.shape.width,
            height: record.shape.height,
            steps: record.shape.steps,
            seed: Some(record.seed),
            attempt: record.attempt,
            failed_attempts: record.failed_attempts,
            denoising: record.progress,
            result: record.result.clone(),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            started_at_ms: record.started_at_ms,
            files_removed_at_ms: record.files_removed_at_ms,
            webhook: record.webhook.clone(),
            links: JobLinks::for_job(record.id),
            queue: None,
        }
    }
}

/// `GET /v1/videos`: one page of the tenant's jobs (OpenAI's cursor page).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoList {
    /// Always `list`.
    pub object: String,
    /// The jobs of this page, in the order asked for.
    pub data: Vec<JobView>,
    /// The first job's id.
    pub first_id: Option<JobId>,
    /// The last job's id: pass it as `after` for the next page.
    pub last_id: Option<JobId>,
    /// Whether a next page exists.
    pub has_more: bool,
}

/// `DELETE /v1/videos/{id}`: the job and its files are gone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoDeleted {
    /// The deleted job.
    pub id: JobId,
    /// Always `video.deleted`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

/// `POST /v1/videos/estimate`: what a job would cost, before it is submitted (our
/// extension), from the leading coordinator's cost model.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoEstimate {
    /// Always `video.estimate`.
    pub object: String,
    /// The model that would run it.
    pub model: String,
    /// Length in seconds, as the video object gives it.
    pub seconds: String,
    /// `WIDTHxHEIGHT`.
    pub size: String,
    /// Frames (rounded up to 6k+1), as the job would have them.
    pub num_frames: u32,
    /// Frames per second.
    pub fps: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Peak device memory on `gpu_class` (an H100 when `null`), bytes.
    pub peak_memory_bytes: u64,
    /// The scheduling lane: `short`, `medium` or `long`.
    pub lane: String,
    /// Whether a known slot holds the job (true while no slot is known yet: it would wait).
    pub fits: bool,
    /// The fastest class of the known slots that holds the job; `null` when none does or
    /// none is known (the figures below are then an H100's).
    pub gpu_class: Option<String>,
    /// Predicted GPU seconds from start to stored video on `gpu_class`.
    pub gpu_seconds: f64,
    /// Predicted seconds of one denoising step on `gpu_class`.
    pub step_seconds: f64,
    /// Slots known to the coordinator.
    pub known_slots: u32,
    /// Those of them that hold the job.
    pub fitting_slots: u32,
    /// Jobs waiting for a slot now.
    pub queued_jobs: u32,
    /// Per class of the known slots, fastest first.
    pub classes: Vec<crate::messages::ClassEstimate>,
    /// Why no slot holds the job, in a sentence that says what would fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /v1/models`: the models served (OpenAI's list of models).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<Model>,
}

/// One served model.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Its name, as `model` takes it.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// When it was published, seconds since the epoch.
    pub created: u64,
    /// Who publishes it.
    pub owned_by: String,
}

/// `GET /v1/backends`: what the live GPU nodes run, from their heartbeats.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendsView {
    /// One entry per backend (and model), most slots first.
    pub backends: Vec<BackendView>,
}

/// The live nodes that run one backend.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// `simulated` (a test pattern), or `mochi:<model>` (`mochi:mochi-1-preview` for the
    /// release, `mochi:mochi-1-tiny-random` for the embedded model, whose videos are noise).
    pub backend: String,
    /// Live nodes running it.
    pub nodes: u32,
    /// Their slots.
    pub slots: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_frames_over_fps_to_the_hundredth() {
        assert_eq!(seconds_of(121, 30), "4.03");
        assert_eq!(seconds_of(120, 30), "4");
        assert_eq!(seconds_of(31, 30), "1.03");
        assert_eq!(seconds_of(37, 24), "1.54");
        assert_eq!(seconds_of(3, 2), "1.5");
        assert_eq!(seconds_of(7, 0), "7");
    }

    #[test]
    fn progress_counts_steps_then_the_decode() {
        let at = |step, total_steps| Some(Progress { step, total_steps });
        assert_eq!(percent_of(JobState::Queued, None), 0);
        assert_eq!(percent_of(JobState::Running, at(0, 64)), 0);
        assert_eq!(percent_of(JobState::Running, at(32, 64)), 47);
        assert_eq!(percent_of(JobState::Running, at(64, 64)), 95);
        assert_eq!(percent_of(JobState::Running, at(99, 64)), 95);
        assert_eq!(percent_of(JobState::Running, at(3, 0)), 0);
        assert_eq!(percent_of(JobState::Encoding, at(64, 64)), 95);
        assert_eq!(percent_of(JobState::Succeeded, at(64, 64)), 100);
        assert_eq!(percent_of(JobState::Preempted, at(16, 64)), 23);
    }

    #[test]
    fn every_state_has_an_openai_status() {
        assert_eq!(VideoStatus::of(JobState::Assigned), VideoStatus::Queued);
        assert_eq!(VideoStatus::of(JobState::Encoding), VideoStatus::InProgress);
        assert_eq!(VideoStatus::of(JobState::Cancelled), VideoStatus::Failed);
        for status in ["queued", "in_progress", "completed", "failed"] {
            assert_eq!(
                VideoStatus::parse(status).map(VideoStatus::as_str),
                Some(status)
            );
        }
        assert_eq!(VideoStatus::parse("running"), None);
    }
}
