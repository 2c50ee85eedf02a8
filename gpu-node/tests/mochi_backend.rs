//! The `mochi` backend on the embedded tiny model, on the CPU: deterministic MP4 bytes per
//! seed, progress after every step, cancellation at a step boundary, shape refusals.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::ops::ControlFlow;

use candle_core::{DType, Device};
use gpu_node::backend::mochi::{MochiBackend, MochiOptions};
use gpu_node::backend::{
    Backend, BackendError, BackendJob, Control, LatentCheckpoint, StepObserver,
};
use gpu_node::config::VideoConfig;
use gpu_node::model::AsymmDiT;
use gpu_node::model_dir::tiny;
use gpu_node::pipeline::text_encoder::TextEncoder;
use gpu_node::pipeline::{sampling, scheduler};
use protocol::record::ResumePoint;
use protocol::{JobId, JobSpec, Limits};

fn backend(options: MochiOptions) -> (tempfile::TempDir, MochiBackend) {
    let dir = tempfile::tempdir().unwrap();
    tiny::ensure(dir.path()).unwrap();
    let backend = MochiBackend::load(dir.path(), &Device::Cpu, options).unwrap();
    (dir, backend)
}

fn job(seed: u64, steps: u32, guidance: f32) -> BackendJob {
    let spec = JobSpec {
        steps: Some(steps),
        num_frames: Some(7),
        width: Some(96),
        height: Some(64),
        guidance_scale: Some(guidance),
        negative_prompt: "blurry".to_owned(),
        ..JobSpec::new("a red fox running through fresh snow")
    };
    let shape = spec.validate(&Limits::default()).unwrap();
    BackendJob {
        job_id: JobId::new(),
        attempt: 1,
        spec,
        shape,
        seed,
        resume: None,
        checkpoint: None,
        resume_latent: None,
    }
}

/// Records every call; stops at `stop_at` (a step number).
#[derive(Default)]
struct Recorder {
    steps: Vec<(u32, u32)>,
    decoded: Vec<(u32, u32)>,
    denoised: Option<LatentCheckpoint>,
    stop_at: Option<u32>,
}

impl StepObserver for Recorder {
    fn on_step(&mut self, step: u32, total: u32) -> Control {
        self.steps.push((step, total));
        if self.stop_at == Some(step) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_denoised(&mut self, latent: &LatentCheckpoint) -> Control {
        self.denoised = Some(latent.clone());
        Control::Continue
    }

    fn on_decode(&mut self, done: u32, total: u32) -> Control {
        self.decoded.push((done, total));
        Control::Continue
    }
}

fn mp4(backend: &MochiBackend, job: &BackendJob) -> Vec<u8> {
    let video = backend
        .run(job, &mut Recorder::default())
        .unwrap()
        .video()
        .unwrap();
    gpu_node::mp4::encode(&video, &VideoConfig::default()).unwrap()
}

#[test]
fn same_seed_gives_the_same_mp4_and_another_seed_differs() {
    let (_dir, backend) = backend(MochiOptions::default());
    assert_eq!(backend.model().as_deref(), Some(tiny::TINY_MODEL_NAME));
    assert!(backend.output_is_noise());
    assert!(backend.resident_bytes() > 0);
    let first = mp4(&backend, &job(7, 2, 4.5));
    let second = mp4(&backend, &job(7, 2, 4.5));
    assert_eq!(
        first, second,
        "same seed and inputs must give the same bytes"
    );
    let info = gpu_node::mp4::probe(&first).unwrap();
    assert_eq!((info.decoded_frames, info.width, info.height), (7, 96, 64));
    let other_seed = mp4(&backend, &job(8, 2, 4.5));
    assert_ne!(first, other_seed);
    // Without guidance only the conditional branch runs, and the result differs.
    let unguided = mp4(&backend, &job(7, 2, 1.0));
    assert_ne!(first, unguided);
}

#[test]
fn progress_comes_after_every_step_and_every_decoded_chunk() {
    let (_dir, backend) = backend(MochiOptions::default());
    let mut recorder = Recorder::default();
    let video = backend
        .run(&job(1, 3, 4.5), &mut recorder)
        .unwrap()
        .video()
        .unwrap();
    assert_eq!(recorder.steps, vec![(1, 3), (2, 3), (3, 3)]);
    // 7 frames = 2 latent frames, decoded one at a time.
    assert_eq!(recorder.decoded, vec![(1, 2), (2, 2)]);
    assert_eq!(video.frames.len(), 7);
    assert_eq!(video.frames[0].len(), 96 * 64 * 3);
    assert_eq!(video.fps, 30);
    // The decoded frames are not flat: the tiny model's noise varies across the image.
    let first = &video.frames[0];
    let distinct: std::collections::BTreeSet<u8> = first.iter().copied().collect();
    assert!(distinct.len() > 16, "{} distinct values", distinct.len());
}

#[test]
fn decoding_in_bigger_chunks_gives_the_same_frames() {
    let (_dir, one) = backend(MochiOptions::default());
    let (_dir2, two) = backend(MochiOptions {
        decode_chunk_frames: 2,
        ..MochiOptions::default()
    });
    let job = job(3, 1, 4.5);
    let a = one.run(&job, &mut Recorder::default()).unwrap();
    let b = two.run(&job, &mut Recorder::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_saved_latent_skips_denoising_and_gives_the_same_video() {
    let (_dir, backend) = backend(MochiOptions::default());
    let first_job = job(5, 3, 4.5);
    let mut recorder = Recorder::default();
    let first = backend.run(&first_job, &mut recorder).unwrap();
    let saved = recorder.denoised.clone().unwrap();
    assert_eq!(saved.dims, vec![1, 12, 2, 8, 12]);
    let bytes = saved.to_bytes();
    let parsed = LatentCheckpoint::from_bytes(&bytes).unwrap();
    assert_eq!(parsed, saved);
    assert!(LatentCheckpoint::from_bytes(&bytes[..bytes.len() - 1]).is_none());
    assert!(LatentCheckpoint::from_bytes(b"not a latent").is_none());

    // The retry decodes from the latent: no denoising step runs, the video is the same.
    let mut retry = first_job.clone();
    retry.attempt = 2;
    retry.checkpoint = Some(parsed);
    let mut recorder = Recorder::default();
    assert_eq!(backend.run(&retry, &mut recorder).unwrap(), first);
    assert_eq!(recorder.steps, vec![(3, 3)]);
    assert!(recorder.denoised.is_none());

    // A latent of another shape is ignored: denoising runs again.
    let mut other = first_job.clone();
    other.checkpoint = Some(LatentCheckpoint {
        dims: vec![1, 12, 1, 8, 12],
        values: vec![0.0; 1152],
    });
    let mut recorder = Recorder::default();
    assert_eq!(backend.run(&other, &mut recorder).unwrap(), first);
    assert_eq!(recorder.steps.len(), 3);
}

#[test]
fn a_preempted_job_resumes_from_its_step_and_latent_with_the_same_video() {
    let (dir, backend) = backend(MochiOptions::default());
    let full = job(9, 4, 4.5);
    let expected = backend.run(&full, &mut Recorder::default()).unwrap();

    // The latent after step 2, made with the pipeline's own pieces from the same directory.
    let device = Device::Cpu;
    let dit = AsymmDiT::from_model_dir(dir.path(), DType::F32, &device).unwrap();
    let mut text = TextEncoder::from_model_dir(dir.path(), &device).unwrap();
    let cond = text.encode(&full.spec.prompt).unwrap();
    let uncond = text.encode(&full.spec.negative_prompt).unwrap();
    let initial = sampling::initial_latents(9, 2, 8, 12, &device).unwrap();
    let sigmas = scheduler::linear_quadratic(4, scheduler::DEFAULT_THRESHOLD_NOISE, None);
    let mut after_two = None;
    sampling::denoise(
        &dit,
        &initial,
        &cond,
        Some(&uncond),
        &sigmas,
        &[4.5],
        |info| {
            if info.step == 1 {
                after_two = Some(info.latents.clone());
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    let latent = after_two.unwrap();
    let mut resumed = full.clone();
    resumed.resume = Some(ResumePoint {
        step: 2,
        latent_object: "job/preempted".to_owned(),
    });
    resumed.resume_latent = Some(LatentCheckpoint {
        dims: latent.dims().to_vec(),
        values: latent.flatten_all().unwrap().to_vec1().unwrap(),
    });
    let mut recorder = Recorder::default();
    assert_eq!(backend.run(&resumed, &mut recorder).unwrap(), expected);
    assert_eq!(recorder.steps, vec![(3, 4), (4, 4)]);

    // Without its latent the job starts over, with the same video.
    resumed.resume_latent = None;
    let mut recorder = Recorder::default();
    assert_eq!(backend.run(&resumed, &mut recorder).unwrap(), expected);
    assert_eq!(recorder.steps.len(), 4);
}

#[test]
fn a_stop_at_step_k_ends_the_run_there() {
    let (_dir, backend) = backend(MochiOptions::default());
    let mut recorder = Recorder {
        stop_at: Some(2),
        ..Recorder::default()
    };
    let outcome = backend.run(&job(1, 5, 4.5), &mut recorder);
    assert!(matches!(outcome, Err(BackendError::Stopped)), "{outcome:?}");
    assert_eq!(recorder.steps, vec![(1, 5), (2, 5)]);
    assert!(recorder.decoded.is_empty());
    // The backend is still usable afterwards.
    assert!(
        backend
            .run(&job(1, 1, 4.5), &mut Recorder::default())
            .is_ok()
    );
}

#[test]
fn a_job_over_the_token_limit_is_refused_with_a_sentence() {
    let (_dir, backend) = backend(MochiOptions {
        max_tokens: Some(10),
        ..MochiOptions::default()
    });
    let mut recorder = Recorder::default();
    let error = backend.run(&job(1, 2, 4.5), &mut recorder).unwrap_err();
    assert!(!error.retryable());
    let text = error.to_string();
    assert!(
        text.contains("48 visual tokens") && text.contains("at most 10"),
        "{text}"
    );
    assert!(recorder.steps.is_empty());
}

#[test]
fn a_damaged_model_directory_fails_to_load_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    tiny::ensure(dir.path()).unwrap();
    std::fs::remove_file(
        dir.path()
            .join("transformer/diffusion_pytorch_model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let error = MochiBackend::load(dir.path(), &Device::Cpu, MochiOptions::default()).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("missing weight shard") && text.contains("mochi model check"),
        "{text}"
    );
}

#[test]
fn without_guidance_the_conditional_branch_alone_equals_cfg_at_scale_one() {
    // CFG at scale 1 with the prompt in both branches is the conditional velocity, which is
    // what the single-branch path computes in half the work.
    let (dir, _backend) = backend(MochiOptions::default());
    let device = Device::Cpu;
    let dit = AsymmDiT::from_model_dir(dir.path(), DType::F32, &device).unwrap();
    let mut text = TextEncoder::from_model_dir(dir.path(), &device).unwrap();
    let cond = text.encode("a red fox").unwrap();
    let initial = sampling::initial_latents(3, 2, 8, 12, &device).unwrap();
    let sigmas = scheduler::linear_quadratic(3, scheduler::DEFAULT_THRESHOLD_NOISE, None);
    let mut single_steps = 0;
    let single = sampling::denoise(&dit, &initial, &cond, None, &sigmas, &[7.0], |_| {
        single_steps += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    let both = sampling::denoise(&dit, &initial, &cond, Some(&cond), &sigmas, &[1.0], |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(single_steps, 3);
    let difference = (single - both)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(difference < 1e-5, "max |Δ| {difference}");
}
