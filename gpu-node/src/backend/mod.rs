//! The `Backend` trait: what a slot runs, on its own OS thread, for one job.

pub mod mochi;
pub mod pattern;
pub mod simulated;

use protocol::record::ResumePoint;
use protocol::{ErrorCode, JobId, JobShape, JobSpec};

/// One job as a backend sees it.
#[derive(Debug, Clone)]
pub struct BackendJob {
    /// The job.
    pub job_id: JobId,
    /// The attempt.
    pub attempt: u32,
    /// What was asked.
    pub spec: JobSpec,
    /// Its shape.
    pub shape: JobShape,
    /// The seed.
    pub seed: u64,
    /// Where to resume, for a preempted job.
    pub resume: Option<ResumePoint>,
}

/// What a backend should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop at this step boundary (cancelled, fenced out, shutting down).
    Stop,
}

/// Told after every denoising step; decides whether the job goes on.
pub trait StepObserver {
    /// Step `step` of `total_steps` is done.
    fn on_step(&mut self, step: u32, total_steps: u32) -> Control;

    /// `done` of `total` latent frames are decoded (the job is alive; it may be stopped).
    fn on_decode(&mut self, _done: u32, _total: u32) -> Control {
        Control::Continue
    }
}

/// A decoded video: RGB24 frames, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Frames, each `width · height · 3` bytes.
    pub frames: Vec<Vec<u8>>,
}

/// Why a backend run ended without a video.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The observer asked to stop.
    #[error("stopped at a step boundary")]
    Stopped,
    /// The device ran out of memory; another attempt (or another slot) may succeed.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// The job cannot run on this backend as asked; retrying will not help.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// Anything else; retryable.
    #[error("backend failure: {0}")]
    Internal(String),
}

impl BackendError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::InvalidJob(_))
    }

    /// The client-facing code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidJob(_) => ErrorCode::InvalidField,
            Self::Stopped | Self::OutOfMemory(_) | Self::Internal(_) => ErrorCode::JobFailed,
        }
    }
}

/// A model that turns jobs into videos. Loaded once per slot and reused across jobs; `run`
/// is called on the slot's own OS thread and may block for as long as the job takes.
pub trait Backend: Send + Sync {
    /// The backend's name, reported in heartbeats.
    fn name(&self) -> &'static str;

    /// The model it runs, for heartbeats (`None`: the backend has no model).
    fn model(&self) -> Option<String> {
        None
    }

    /// Whether its videos are noise or a test pattern rather than a real generation
    /// (the simulated backend, the embedded tiny model); clients are told.
    fn output_is_noise(&self) -> bool {
        false
    }

    /// Device memory the backend keeps loaded across jobs (model weights), bytes.
    fn resident_bytes(&self) -> u64 {
        0
    }

    /// Memory the backend's device has in use now, bytes, when it can measure it (after a
    /// job: the resident weights plus whatever the job failed to give back).
    fn memory_in_use_bytes(&self) -> Option<u64> {
        None
    }

    /// Runs one job, calling `observer` after every denoising step.
    fn run(&self, job: &BackendJob, observer: &mut dyn StepObserver)
    -> Result<Video, BackendError>;
}
