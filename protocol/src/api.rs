//! JSON shapes of the public HTTP API, shared by the gateway and the `mochi generate` client.

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::record::{JobRecord, JobState, Progress, VideoResult};
use crate::spec::JobSpec;

/// A job as the API shows it to its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: JobId,
    /// Its state.
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
    /// Denoising progress.
    pub progress: Option<Progress>,
    /// The video, once succeeded.
    pub result: Option<VideoResult>,
    /// The failure, if the job failed or is dead.
    pub error: Option<JobError>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
    /// Where to poll and download.
    pub links: JobLinks,
    /// While queued: the job's position and predicted start, as the scheduler last
    /// published them (absent when not queued or not yet estimated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<crate::queue::QueueInfo>,
}

/// A job's failure as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable code.
    pub code: crate::error::ErrorCode,
    /// One sentence.
    pub message: String,
}

/// URLs of a job's resources, relative to the API root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLinks {
    /// The job's status.
    pub status: String,
    /// The MP4, once succeeded.
    pub content: String,
    /// The MP4 by a signed link that needs no credentials (once succeeded), until
    /// `signed_content_expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_content: Option<String>,
    /// When `signed_content` stops working, seconds since the epoch.
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
            signed_content_expires_at: None,
        }
    }
}

impl JobView {
    /// The view of a job accepted by JetStream whose record the intake has not written yet.
    pub fn pending(id: JobId, spec: JobSpec, shape: &crate::shape::JobShape, at_ms: u64) -> Self {
        Self {
            id,
            state: JobState::Queued,
            seed: spec.seed,
            spec,
            num_frames: shape.num_frames,
            fps: shape.fps,
            width: shape.width,
            height: shape.height,
            steps: shape.steps,
            attempt: 0,
            progress: None,
            result: None,
            error: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            links: JobLinks::for_job(id),
            queue: None,
        }
    }

    /// The view of a stored record.
    pub fn from_record(record: &JobRecord) -> Self {
        Self {
            id: record.id,
            state: record.state,
            spec: record.spec.clone(),
            num_frames: record.shape.num_frames,
            fps: record.shape.fps,
            width: record.shape.width,
            height: record.shape.height,
            steps: record.shape.steps,
            seed: Some(record.seed),
            attempt: record.attempt,
            progress: record.progress,
            result: record.result.clone(),
            error: record
                .error
                .as_ref()
                .filter(|_| record.state != JobState::Succeeded)
                .map(|failure| JobError {
                    code: failure.code,
                    message: failure.message.clone(),
                }),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            links: JobLinks::for_job(record.id),
            queue: None,
        }
    }
}

/// `GET /v1/backends`: what the live GPU nodes run, from their heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendsView {
    /// One entry per backend (and model), most slots first.
    pub backends: Vec<BackendView>,
}

/// The live nodes that run one backend.
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
