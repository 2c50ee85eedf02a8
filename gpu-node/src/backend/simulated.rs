//! The simulated backend: takes the time a cost formula gives and renders a test pattern
//! through the real video path. For load tests and demos without a GPU, never production.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Backend, BackendError, BackendJob, Control, Outcome, PausedState, StepObserver, pattern,
};

/// Settings of the simulated backend's cost formula: seconds per step =
/// `time_scale · (linear_s_per_token · N + quadratic_s_per_token2 · N²)`, doubled with CFG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// Scales the formula down (or up); 1.0 models an H100 at ~50% of its bf16 peak.
    pub time_scale: f64,
    /// Seconds per visual token per forward (linear layers: ≈ 2·10e9 FLOP per token at ~400 TFLOP/s).
    pub linear_s_per_token: f64,
    /// Seconds per token² per forward (joint attention: ≈ 4·3072·48 FLOP at ~400 TFLOP/s).
    pub quadratic_s_per_token2: f64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            time_scale: 0.025,
            linear_s_per_token: 5.0e-5,
            quadratic_s_per_token2: 1.47e-9,
        }
    }
}

/// Sleeps per step as the cost formula says, then renders a test pattern.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    config: SimulatedConfig,
}

impl SimulatedBackend {
    /// A backend with these cost settings.
    pub fn new(config: SimulatedConfig) -> Self {
        Self { config }
    }

    /// Simulated seconds of one denoising step (both CFG branches) for `job`.
    pub fn step_seconds(&self, job: &BackendJob) -> f64 {
        let tokens = job.shape.num_tokens as f64;
        let forward = self.config.linear_s_per_token * tokens
            + self.config.quadratic_s_per_token2 * tokens * tokens;
        let branches = if job.shape.cfg { 2.0 } else { 1.0 };
        self.config.time_scale * forward * branches
    }
}

impl Backend for SimulatedBackend {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn output_is_noise(&self) -> bool {
        true
    }

    fn run(
        &self,
        job: &BackendJob,
        observer: &mut dyn StepObserver,
    ) -> Result<Outcome, BackendError> {
        let total = job.shape.steps;
        let first = job
            .resume
            .as_ref()
            .map_or(0, |resume| resume.step.min(total));
        let step_time = Duration::from_secs_f64(self.step_seconds(job).min(3600.0));
        for step in first..total {
            std::thread::sleep(step_time);
            match observer.on_step(step + 1, total) {
                Control::Continue => {}
                Control::Stop => return Err(BackendError::Stopped),
                // The pattern depends only on the job: the step index is all there is to save.
                Control::Pause if step + 1 < total => {
                    return Ok(Outcome::Paused(PausedState {
                        steps_done: step + 1,
                        latent: None,
                    }));
                }
                Control::Pause => {}
            }
        }
        Ok(Outcome::Finished(pattern::render(
            &job.job_id.to_string(),
            job.shape.width,
            job.shape.height,
            job.shape.num_frames,
            job.shape.fps,
        )))
    }
}

#[cfg(test)]
mod tests {
    use protocol::{JobId, JobSpec, Limits};

    use super::*;

    struct StopAfter(u32, Vec<u32>);

    impl StepObserver for StopAfter {
        fn on_step(&mut self, step: u32, _total: u32) -> Control {
            self.1.push(step);
            if step >= self.0 {
                Control::Stop
            } else {
                Control::Continue
            }
        }
    }

    fn job(steps: u32) -> BackendJob {
        let spec = JobSpec {
            steps: Some(steps),
            num_frames: Some(7),
            width: Some(64),
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
    fn reports_every_step_and_renders_every_frame() {
        let backend = SimulatedBackend::new(SimulatedConfig {
            time_scale: 0.0,
            ..SimulatedConfig::default()
        });
        let mut observer = StopAfter(u32::MAX, Vec::new());
        let video = backend
            .run(&job(5), &mut observer)
            .expect("runs")
            .video()
            .expect("a video");
        assert_eq!(observer.1, vec![1, 2, 3, 4, 5]);
        assert_eq!(video.frames.len(), 7);
        assert_eq!(video.frames[0].len(), 64 * 64 * 3);
    }

    #[test]
    fn stops_at_the_step_boundary_the_observer_asks_for() {
        let backend = SimulatedBackend::new(SimulatedConfig {
            time_scale: 0.0,
            ..SimulatedConfig::default()
        });
        let mut observer = StopAfter(2, Vec::new());
        assert!(matches!(
            backend.run(&job(5), &mut observer),
            Err(BackendError::Stopped)
        ));
        assert_eq!(observer.1, vec![1, 2]);
    }

    struct PauseAt(u32);

    impl StepObserver for PauseAt {
        fn on_step(&mut self, step: u32, _total: u32) -> Control {
            if step == self.0 {
                Control::Pause
            } else {
                Control::Continue
            }
        }
    }

    #[test]
    fn a_paused_run_resumed_from_its_step_gives_the_same_video() {
        let backend = SimulatedBackend::new(SimulatedConfig {
            time_scale: 0.0,
            ..SimulatedConfig::default()
        });
        let whole = job(5);
        let uninterrupted = backend
            .run(&whole, &mut StopAfter(u32::MAX, Vec::new()))
            .expect("runs");
        let Some(paused) = backend.run(&whole, &mut PauseAt(2)).expect("runs").paused() else {
            panic!("the run should pause after step 2");
        };
        assert_eq!(paused.steps_done, 2);
        let mut resumed = whole.clone();
        resumed.attempt = 2;
        resumed.resume = Some(protocol::record::ResumePoint {
            step: paused.steps_done,
            latent_object: String::new(),
        });
        let mut observer = StopAfter(u32::MAX, Vec::new());
        let video = backend.run(&resumed, &mut observer).expect("video");
        assert_eq!(observer.1, vec![3, 4, 5], "only the steps left run");
        assert_eq!(video, uninterrupted);
        // A pause asked at the last step is too late: the run finishes.
        assert_eq!(
            backend.run(&whole, &mut PauseAt(5)).expect("video"),
            uninterrupted
        );
    }

    #[test]
    fn the_default_job_takes_about_two_seconds_by_default() {
        // 848x480, 31 frames, 64 steps, CFG: the demo's default job.
        let spec = JobSpec::new("x");
        let shape = spec.validate(&Limits::default()).expect("valid");
        assert_eq!((shape.width, shape.num_frames, shape.steps), (848, 31, 64));
        let mut default_job = job(64);
        default_job.shape = shape;
        let backend = SimulatedBackend::new(SimulatedConfig::default());
        let total_s = backend.step_seconds(&default_job) * f64::from(shape.steps);
        assert!((1.5..2.5).contains(&total_s), "{total_s} s");
    }

    #[test]
    fn step_time_grows_faster_than_linearly_with_tokens() {
        let backend = SimulatedBackend::new(SimulatedConfig::default());
        let mut small = job(1);
        let mut large = job(1);
        small.shape.num_tokens = 10_000;
        large.shape.num_tokens = 40_000;
        assert!(backend.step_seconds(&large) > 4.0 * backend.step_seconds(&small));
    }
}
