//! The slot's OS thread: runs the backend, the MP4 encoder and the JPEG previews for one
//! job at a time and reports back to the slot actor with messages.

use std::sync::Arc;
use std::time::Instant;

use protocol::JobId;
use protocol::record::Progress;
use ractor::ActorRef;

use super::messages::{Encoded, GpuSlotMsg, Ran};
use super::stop::{StopFlag, StopReason};
use crate::backend::{
    Backend, BackendError, BackendJob, Control, LatentCheckpoint, Outcome, StepObserver,
};
use crate::metrics;
use crate::mp4::VideoConfig;

/// One job handed to the thread.
pub(super) struct WorkItem {
    pub(super) job: BackendJob,
    pub(super) stop: Arc<StopFlag>,
    pub(super) slot: ActorRef<GpuSlotMsg>,
}

/// The slot's OS thread: runs jobs one at a time until the channel closes. After each job
/// it measures the device's memory: the backend's own figure, else `gpu_memory_in_use`
/// (the GPU's, from NVML; `None`: not measured).
pub(super) fn worker(
    backend: &dyn Backend,
    video: &VideoConfig,
    gpu_memory_in_use: &dyn Fn() -> Option<u64>,
    queue: &std::sync::mpsc::Receiver<WorkItem>,
) {
    while let Ok(WorkItem { job, stop, slot }) = queue.recv() {
        let (job_id, attempt) = (job.job_id, job.attempt);
        let started = Instant::now();
        let mut observer = Observer {
            job_id,
            attempt,
            stop: &stop,
            slot: &slot,
            denoised_at: None,
        };
        let mut encoding_at = None;
        let (outcome, panicked) = run_job(backend, &job, &mut observer, video, || {
            encoding_at = Some(Instant::now());
            let _ = slot.cast(GpuSlotMsg::EncodingStarted { job_id, attempt });
        });
        if matches!(outcome, Ok(Ran::Encoded(_)))
            && let Some(encoding_at) = encoding_at
        {
            record_phases(started, observer.denoised_at, encoding_at);
        }
        // Measured once the job's tensors are released. The backend's own figure goes with
        // the job's end; the GPU's (a driver call, which a troubled driver may make slow)
        // follows it, so that the job's end never waits for the driver. Not after a panic:
        // the device was not synchronised, and memory a kernel still held would look leaked.
        let memory_used_bytes = backend.memory_in_use_bytes();
        let _ = slot.cast(GpuSlotMsg::JobFinished {
            job_id,
            attempt,
            outcome,
            memory_used_bytes,
        });
        if memory_used_bytes.is_none()
            && !panicked
            && let Some(used_bytes) = gpu_memory_in_use()
        {
            let _ = slot.cast(GpuSlotMsg::MemoryMeasured { used_bytes });
        }
    }
}

/// Runs one job through the backend, the MP4 encoder and the previews; also whether it
/// panicked. A panicking backend fails its job (retryable) instead of killing the thread
/// and leaving the slot busy forever.
fn run_job(
    backend: &dyn Backend,
    job: &BackendJob,
    observer: &mut dyn StepObserver,
    video: &VideoConfig,
    encoding_started: impl FnOnce(),
) -> (Result<Ran, BackendError>, bool) {
    let run = std::panic::AssertUnwindSafe(|| {
        let frames = match backend.run(job, observer)? {
            Outcome::Finished(frames) => frames,
            Outcome::Paused(state) => return Ok(Ran::Paused(state)),
        };
        encoding_started();
        let internal = |error: &dyn std::error::Error| BackendError::Internal(with_causes(error));
        let mp4 = crate::mp4::encode(&frames, video).map_err(|e| internal(&e))?;
        let previews = crate::preview::render(&frames).map_err(|e| internal(&e))?;
        Ok(Ran::Encoded(Encoded {
            mp4,
            thumbnail: previews.thumbnail,
            spritesheet: previews.spritesheet,
        }))
    });
    match std::panic::catch_unwind(run) {
        Ok(outcome) => (outcome, false),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(job_id = %job.job_id, attempt = job.attempt, panic = %what, "backend panicked");
            let failed = Err(BackendError::Internal(format!("backend panicked: {what}")));
            (failed, true)
        }
    }
}

/// The phases of a job that ran through: denoising (the text encoding included) until the
/// latent was ready, decoding until encoding began, then encoding and previews. A backend
/// that reports no denoised latent (the simulated one) counts all of its run as denoising.
fn record_phases(started: Instant, denoised_at: Option<Instant>, encoding_at: Instant) {
    match denoised_at {
        Some(denoised_at) => {
            metrics::record_phase("denoise", denoised_at.saturating_duration_since(started));
            metrics::record_phase("decode", encoding_at.saturating_duration_since(denoised_at));
        }
        None => metrics::record_phase("denoise", encoding_at.saturating_duration_since(started)),
    }
    metrics::record_phase("encode", encoding_at.elapsed());
}

/// `error` followed by its causes, `: `-separated.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(source) = cause {
        message.push_str(": ");
        message.push_str(&source.to_string());
        cause = source.source();
    }
    message
}

struct Observer<'a> {
    job_id: JobId,
    attempt: u32,
    stop: &'a StopFlag,
    slot: &'a ActorRef<GpuSlotMsg>,
    /// When the denoised latent was handed over (decoding starts).
    denoised_at: Option<Instant>,
}

impl StepObserver for Observer<'_> {
    fn on_step(&mut self, step: u32, total_steps: u32) -> Control {
        let progress = Progress { step, total_steps };
        let _ = self.slot.cast(GpuSlotMsg::StepCompleted {
            job_id: self.job_id,
            attempt: self.attempt,
            progress,
        });
        self.control()
    }

    fn on_denoised(&mut self, latent: &LatentCheckpoint) -> Control {
        self.denoised_at = Some(Instant::now());
        // The slot actor stores it while this thread decodes: no wait on its own actor.
        let _ = self.slot.cast(GpuSlotMsg::LatentDenoised {
            job_id: self.job_id,
            attempt: self.attempt,
            bytes: latent.to_bytes(),
        });
        self.control()
    }

    fn on_decode(&mut self, _done: u32, _total: u32) -> Control {
        let _ = self.slot.cast(GpuSlotMsg::DecodeProgressed {
            job_id: self.job_id,
            attempt: self.attempt,
        });
        self.control()
    }
}

impl Observer<'_> {
    fn control(&self) -> Control {
        match self.stop.get() {
            StopReason::None => Control::Continue,
            // Decoding cannot pause: a hand-back that came after the last step stops
            // (the denoised latent is saved; the retry only decodes). A preemption's pause
            // is refused by then, so `Pause` here only lets the decode finish.
            StopReason::HandBack if self.denoised_at.is_some() => Control::Stop,
            reason if reason.pauses() => Control::Pause,
            _ => Control::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{JobSpec, Limits};

    use super::*;
    use crate::backend::simulated::SimulatedBackend;
    use crate::backend::simulated::SimulatedConfig;

    struct Panicking;

    impl Backend for Panicking {
        fn name(&self) -> &'static str {
            "panicking"
        }

        fn run(
            &self,
            _job: &BackendJob,
            _observer: &mut dyn StepObserver,
        ) -> Result<Outcome, BackendError> {
            panic!("index out of bounds in a kernel")
        }
    }

    struct Always;

    impl StepObserver for Always {
        fn on_step(&mut self, _step: u32, _total: u32) -> Control {
            Control::Continue
        }
    }

    fn job() -> BackendJob {
        let spec = JobSpec {
            steps: Some(2),
            num_frames: Some(7),
            width: Some(96),
            height: Some(64),
            ..JobSpec::new("x")
        };
        let shape = spec.validate(&Limits::default()).expect("valid");
        BackendJob {
            job_id: JobId::new(),
            attempt: 1,
            spec,
            shape,
            seed: 1,
            resume: None,
            checkpoint: None,
            resume_latent: None,
        }
    }

    #[test]
    fn a_panicking_backend_fails_the_job_retryably() {
        let mut encoding = false;
        let (outcome, panicked) = run_job(
            &Panicking,
            &job(),
            &mut Always,
            &VideoConfig::default(),
            || {
                encoding = true;
            },
        );
        assert!(panicked);
        let error = outcome.expect_err("a panic is a failure");
        assert!(error.retryable());
        assert!(error.to_string().contains("index out of bounds"), "{error}");
        assert!(!encoding);
    }

    #[test]
    fn a_finished_run_is_encoded_to_a_decodable_mp4_and_jpeg_previews() {
        let backend = SimulatedBackend::new(SimulatedConfig {
            time_scale: 0.0,
            ..SimulatedConfig::default()
        });
        let mut encoding = false;
        let (encoded, panicked) = run_job(
            &backend,
            &job(),
            &mut Always,
            &VideoConfig::default(),
            || {
                encoding = true;
            },
        );
        assert!(!panicked);
        let encoded = encoded.expect("encoded");
        let Ran::Encoded(encoded) = encoded else {
            panic!("the run paused");
        };
        let info = crate::mp4::probe(&encoded.mp4).expect("probe");
        assert_eq!((info.decoded_frames, info.width, info.height), (7, 96, 64));
        let size = |jpeg: &[u8]| {
            let mut decoder = jpeg_decoder::Decoder::new(jpeg);
            decoder.decode().expect("decodable JPEG");
            decoder.info().map(|info| (info.width, info.height))
        };
        assert_eq!(size(&encoded.thumbnail), Some((96, 64)));
        // 7 frames: 3 columns × 3 rows of full-size (96 px ≤ 256 px) tiles.
        assert_eq!(size(&encoded.spritesheet), Some((288, 192)));
        assert!(encoding);
    }

    #[test]
    fn a_preview_failure_fails_the_job_with_its_cause() {
        let error = crate::preview::PreviewError::Jpeg {
            width: 0,
            height: 0,
            source: jpeg_encoder::EncodingError::ZeroImageDimensions {
                width: 0,
                height: 0,
            },
        };
        let failure = BackendError::Internal(with_causes(&error));
        assert!(failure.retryable());
        let message = failure.to_string();
        assert!(message.contains("cannot encode a 0x0 JPEG: "), "{message}");
        assert!(message.contains("non zero"), "{message}");
    }
}
