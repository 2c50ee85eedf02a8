//! Full-job timing of the embedded tiny Mochi model on the CPU (text → denoise → decode →
//! MP4), next to the simulated backend on the same job.
//!
//! ```text
//! cargo run -p gpu-node --example tiny_job -- [WIDTH HEIGHT FRAMES STEPS [REPEATS]]
//! ```
//! Defaults: 848 480 31 64 (the service's default job), one run. Prints, per backend, the
//! wall time split into denoising+decoding and MP4 encoding, the time per step, and the
//! process's peak RSS. With `TINY_JOB_PPM=PREFIX` the first frame of each backend is
//! written to `PREFIX.<backend>.ppm`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use candle_core::Device;
use gpu_node::backend::mochi::{MochiBackend, MochiOptions};
use gpu_node::backend::simulated::SimulatedBackend;
use gpu_node::backend::{Backend, BackendJob, Control, StepObserver};
use gpu_node::config::{SimulatedConfig, VideoConfig};
use gpu_node::model_dir::tiny;
use protocol::{JobId, JobSpec, Limits};

/// When each step and each decoded chunk finished.
struct Times {
    steps: Vec<Instant>,
    decoded: Vec<Instant>,
}

impl StepObserver for Times {
    fn on_step(&mut self, _step: u32, _total: u32) -> Control {
        self.steps.push(Instant::now());
        Control::Continue
    }

    fn on_decode(&mut self, _done: u32, _total: u32) -> Control {
        self.decoded.push(Instant::now());
        Control::Continue
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn run(name: &str, backend: &dyn Backend, job: &BackendJob) {
    let started = Instant::now();
    let mut times = Times {
        steps: Vec::new(),
        decoded: Vec::new(),
    };
    let video = backend
        .run(job, &mut times)
        .expect("run")
        .video()
        .expect("a video: nothing asked it to pause");
    let generated = started.elapsed();
    if let (Ok(path), Some(first)) = (std::env::var("TINY_JOB_PPM"), video.frames.first()) {
        // The first frame as a binary PPM, to look at.
        let mut ppm = format!("P6\n{} {}\n255\n", video.width, video.height).into_bytes();
        ppm.extend_from_slice(first);
        std::fs::write(format!("{path}.{name}.ppm"), ppm).expect("write ppm");
    }
    let mp4 = gpu_node::mp4::encode(&video, &VideoConfig::default()).expect("encode");
    let total = started.elapsed();
    let denoised = times.steps.last().map_or(generated, |last| *last - started);
    let step_s = denoised.as_secs_f64() / times.steps.len().max(1) as f64;
    println!(
        "{name:>9}: total {:7.2} s = text+denoise {:7.2} s ({:.3} s/step) + decode {:6.2} s ({} chunks) + mp4 {:5.2} s | {} bytes | peak RSS {:.0} MiB",
        total.as_secs_f64(),
        denoised.as_secs_f64(),
        step_s,
        (generated - denoised).as_secs_f64(),
        times.decoded.len(),
        (total - generated).as_secs_f64(),
        mp4.len(),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numbers: WIDTH HEIGHT FRAMES STEPS [REPEATS]")
        })
        .collect();
    let get = |i: usize, default: u32| args.get(i).copied().unwrap_or(default);
    let (width, height, frames, steps, repeats) =
        (get(0, 848), get(1, 480), get(2, 31), get(3, 64), get(4, 1));
    let spec = JobSpec {
        width: Some(width),
        height: Some(height),
        num_frames: Some(frames),
        steps: Some(steps),
        ..JobSpec::new("a red fox running through fresh snow at dawn")
    };
    let shape = spec.validate(&Limits::default()).expect("valid job");
    let job = BackendJob {
        job_id: JobId::new(),
        attempt: 1,
        spec,
        shape,
        seed: 42,
        resume: None,
        checkpoint: None,
        resume_latent: None,
    };
    println!(
        "job: {width}x{height}, {} frames, {steps} steps, CFG, {} visual tokens; {} CPU threads",
        shape.num_frames,
        shape.num_tokens,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir().expect("tmp");
    let loading = Instant::now();
    tiny::ensure(dir.path()).expect("tiny model");
    let mochi =
        MochiBackend::load(dir.path(), &Device::Cpu, MochiOptions::default()).expect("load");
    println!(
        "tiny model created and loaded in {:.2} s ({} KiB resident)",
        loading.elapsed().as_secs_f64(),
        mochi.resident_bytes() >> 10
    );
    let simulated = SimulatedBackend::new(SimulatedConfig::default());
    for _ in 0..repeats {
        run("mochi", &mochi, &job);
        run("simulated", &simulated, &job);
    }
}
