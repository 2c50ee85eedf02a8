//! The simulated backend: takes the time a cost formula gives and renders a test pattern
//! through the real video path. For load tests and demos without a GPU, never production.

use std::time::Duration;

use protocol::cost::{self, GpuClass};
use serde::{Deserialize, Serialize};

use super::{
    Backend, BackendError, BackendJob, Control, Outcome, PausedState, StepObserver, pattern,
};

/// Where the simulated backend's times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timing {
    /// `linear_s_per_token · N + quadratic_s_per_token2 · N²` per forward, nothing after
    /// the last step (fast, predictable jobs for tests and demos).
    #[default]
    Formula,
    /// The scheduler's own prior ([`protocol::cost::prior`]) for the node's GPU class: its
    /// step time per step, then the rest of its GPU seconds (VAE decode, encode, store)
    /// after the last step. A load test's slots then take what the scheduler predicts.
    CostModel,
}

/// Settings of the simulated backend's cost: seconds per step =
/// `time_scale · (linear_s_per_token · N + quadratic_s_per_token2 · N²)`, doubled with CFG,
/// or `time_scale` times the cost model's figures (`timing = "cost-model"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// Scales the times down (or up); 1.0 models an H100 at ~50% of its bf16 peak.
    pub time_scale: f64,
    /// Where the times come from: `formula` (default) or `cost-model`.
    pub timing: Timing,
    /// Seconds per visual token per forward (linear layers: ≈ 2·10e9 FLOP per token at ~400 TFLOP/s).
    pub linear_s_per_token: f64,
    /// Seconds per token² per forward (joint attention: ≈ 4·3072·48 FLOP at ~400 TFLOP/s).
    pub quadratic_s_per_token2: f64,
    /// Renders the pattern with its longer side at most this many pixels (0: the job's own
    /// size). Load tests set it so that encoding test patterns does not take the CPU the
    /// service under test needs; the job's record keeps the size asked for.
    pub max_render_side: u32,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            time_scale: 0.025,
            timing: Timing::Formula,
            linear_s_per_token: 5.0e-5,
            quadratic_s_per_token2: 1.47e-9,
            max_render_side: 0,
        }
    }
}

/// Sleeps per step as the cost settings say, then renders a test pattern.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    config: SimulatedConfig,
    class: GpuClass,
}

impl SimulatedBackend {
    /// A backend with these cost settings, timed as an H100 with `timing = "cost-model"`.
    pub fn new(config: SimulatedConfig) -> Self {
        Self {
            config,
            class: GpuClass::H100,
        }
    }

    /// The same backend timed as `class` with `timing = "cost-model"` (the node's class).
    pub fn on_class(mut self, class: GpuClass) -> Self {
        self.class = class;
        self
    }

    /// Simulated seconds of one denoising step (both CFG branches) for `job`.
    pub fn step_seconds(&self, job: &BackendJob) -> f64 {
        let forward_s = match self.config.timing {
            Timing::Formula => {
                let tokens = job.shape.num_tokens as f64;
                let forward = self.config.linear_s_per_token * tokens
                    + self.config.quadratic_s_per_token2 * tokens * tokens;
                let branches = if job.shape.cfg { 2.0 } else { 1.0 };
                forward * branches
            }
            Timing::CostModel => cost::prior(&job.shape, self.class).step_seconds,
        };
        self.config.time_scale * forward_s
    }

    /// Simulated seconds after the last step (decode, encode, store): none with the formula.
    pub fn finish_seconds(&self, job: &BackendJob) -> f64 {
        match self.config.timing {
            Timing::Formula => 0.0,
            Timing::CostModel => {
                let estimate = cost::prior(&job.shape, self.class);
                self.config.time_scale * (estimate.gpu_seconds - estimate.denoise_seconds).max(0.0)
            }
        }
    }

    /// The size the pattern is rendered at: the job's, or scaled down to `max_render_side`
    /// (even sides, at least 16 pixels: OpenH264 refuses smaller frames).
    fn render_size(&self, job: &BackendJob) -> (u32, u32) {
        let (width, height) = (job.shape.width, job.shape.height);
        let limit = self.config.max_render_side;
        if limit == 0 || width.max(height) <= limit {
            return (width, height);
        }
        let scale = f64::from(limit) / f64::from(width.max(height));
        let side = |value: u32| ((f64::from(value) * scale / 2.0).round() as u32 * 2).max(16);
        (side(width), side(height))
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
        std::thread::sleep(Duration::from_secs_f64(
            self.finish_seconds(job).min(3600.0),
        ));
        let (width, height) = self.render_size(job);
        Ok(Outcome::Finished(pattern::render(
            &job.job_id.to_string(),
            width,
            height,
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

    #[test]
    fn cost_model_timing_takes_the_schedulers_prior_for_the_class() {
        let spec = JobSpec::new("x");
        let mut reference = job(64);
        reference.shape = spec.validate(&Limits::default()).expect("valid");
        let config = SimulatedConfig {
            time_scale: 0.5,
            timing: Timing::CostModel,
            ..SimulatedConfig::default()
        };
        for class in [GpuClass::H100, GpuClass::L40] {
            let backend = SimulatedBackend::new(config.clone()).on_class(class);
            let prior = cost::prior(&reference.shape, class);
            let total = backend.step_seconds(&reference) * f64::from(reference.shape.steps)
                + backend.finish_seconds(&reference);
            assert!(
                (total / (0.5 * prior.gpu_seconds) - 1.0).abs() < 1e-9,
                "{class}: {total} s against the prior's {} s",
                prior.gpu_seconds
            );
            assert!(backend.finish_seconds(&reference) > 0.0);
        }
        // The formula has nothing after the last step.
        assert_eq!(
            SimulatedBackend::new(SimulatedConfig::default()).finish_seconds(&reference),
            0.0
        );
    }

    #[test]
    fn max_render_side_shrinks_the_pattern_but_keeps_every_frame() {
        let backend = SimulatedBackend::new(SimulatedConfig {
            time_scale: 0.0,
            max_render_side: 32,
            ..SimulatedConfig::default()
        });
        let mut wide = job(1);
        wide.shape.width = 848;
        wide.shape.height = 480;
        let video = backend
            .run(&wide, &mut StopAfter(u32::MAX, Vec::new()))
            .expect("runs")
            .video()
            .expect("a video");
        assert_eq!((video.width, video.height), (32, 18));
        assert_eq!(video.frames.len(), 7);
        // The shorter side stays at least 16 pixels, which the encoder needs.
        let tiny = SimulatedBackend::new(SimulatedConfig {
            max_render_side: 16,
            ..SimulatedConfig::default()
        });
        assert_eq!(tiny.render_size(&wide), (16, 16));
        // A job smaller than the limit renders at its own size.
        assert_eq!(backend.render_size(&job(1)), (32, 32));
        let small = SimulatedBackend::new(SimulatedConfig {
            max_render_side: 100,
            ..SimulatedConfig::default()
        });
        assert_eq!(small.render_size(&job(1)), (64, 64));
    }
}
