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
    /// The denoised latent an earlier attempt saved: decoding starts from it.
    pub checkpoint: Option<LatentCheckpoint>,
    /// For a preempted job (`resume`): the latent after step `resume.step`, read from
    /// `resume.latent_object` (a [`LatentCheckpoint`]); denoising continues from it.
    pub resume_latent: Option<LatentCheckpoint>,
}

/// A denoised latent (DiT space, f32), saved while decoding so that an attempt whose
/// decode failed is retried from it without denoising again.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentCheckpoint {
    /// `(1, 12, T, H, W)`.
    pub dims: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Leading bytes of a serialised [`LatentCheckpoint`] (format version 1).
const CHECKPOINT_MAGIC: &[u8; 8] = b"MOLATV1\0";

impl LatentCheckpoint {
    /// `magic, rank (u32), dims (u32 each), values (f32)`, little endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(12 + 4 * (self.dims.len() + self.values.len()));
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        bytes.extend_from_slice(&u32::try_from(self.dims.len()).unwrap_or(0).to_le_bytes());
        for dim in &self.dims {
            bytes.extend_from_slice(&u32::try_from(*dim).unwrap_or(0).to_le_bytes());
        }
        for value in &self.values {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// Parses [`LatentCheckpoint::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(CHECKPOINT_MAGIC)?;
        let word = |at: usize| -> Option<u32> {
            rest.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let rank = word(0)? as usize;
        if rank > 8 {
            return None;
        }
        let dims: Vec<usize> = (0..rank)
            .map(|i| word(4 + 4 * i).map(|d| d as usize))
            .collect::<Option<_>>()?;
        let data = rest.get(4 + 4 * rank..)?;
        let count = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d))?;
        if data.len() != count.checked_mul(4)? {
            return None;
        }
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Some(Self { dims, values })
    }
}

/// What a backend should do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop at this step boundary (cancelled, fenced out, shutting down).
    Stop,
    /// Pause at this step boundary (preempted for another job, or the node shutting down):
    /// stop and hand back the job's state ([`Outcome::Paused`]) so that it can resume from
    /// here. Only honoured
    /// while denoising; once denoising is done the run goes on as with `Continue`.
    Pause,
}

/// Where a paused run stopped: what a later attempt resumes from.
#[derive(Debug, Clone, PartialEq)]
pub struct PausedState {
    /// Denoising steps done (the resumed run starts with step `steps_done + 1`).
    pub steps_done: u32,
    /// The latent after those steps (`None`: the backend needs none to resume, as the
    /// simulated one, whose output depends only on the job).
    pub latent: Option<LatentCheckpoint>,
}

/// Told after every denoising step; decides whether the job goes on.
pub trait StepObserver {
    /// Step `step` of `total_steps` is done.
    fn on_step(&mut self, step: u32, total_steps: u32) -> Control;

    /// Denoising is done; `latent` is what decoding starts from. Saved while decoding so a
    /// retry can skip denoising.
    fn on_denoised(&mut self, _latent: &LatentCheckpoint) -> Control {
        Control::Continue
    }

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

/// How a backend run that did not fail ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The video.
    Finished(Video),
    /// The observer asked to pause: the run stopped at a step boundary with this state.
    Paused(PausedState),
}

impl Outcome {
    /// The video of a finished run (`None`: it paused).
    pub fn video(self) -> Option<Video> {
        match self {
            Self::Finished(video) => Some(video),
            Self::Paused(_) => None,
        }
    }

    /// The state of a paused run (`None`: it finished).
    pub fn paused(self) -> Option<PausedState> {
        match self {
            Self::Finished(_) => None,
            Self::Paused(state) => Some(state),
        }
    }
}

/// Why a backend run ended without a video or a paused state.
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

    /// The CUDA device ordinal it runs on (`None`: not on a CUDA device), for NVML.
    fn cuda_ordinal(&self) -> Option<usize> {
        None
    }

    /// Runs one job, calling `observer` after every denoising step.
    fn run(
        &self,
        job: &BackendJob,
        observer: &mut dyn StepObserver,
    ) -> Result<Outcome, BackendError>;
}
