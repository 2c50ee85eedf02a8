//! The `mochi` backend: the real Mochi-1 pipeline in candle on the slot's device —
//! tokenize → T5 (prompt and negative prompt) → seeded latents → Euler denoising with
//! classifier-free guidance (the observer after every step: progress, cancellation) →
//! streaming VAE decode (bounded memory; the observer after every chunk) → RGB frames.
//!
//! One `MochiBackend` per slot loads a model directory once (the release, or the embedded
//! tiny model of [`mochi_model::model_dir::tiny`]) and keeps it across jobs. Every tensor of a
//! job lives inside [`MochiBackend::run`] and is dropped before it returns; the device is
//! then synchronised.
//!
//! One file, past 500 lines: it is the pipeline in the order it runs, one job's tensors
//! from tokens to frames, and reads best top to bottom; the model blocks it calls live in
//! `model/` and `pipeline/`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{
    Backend, BackendError, BackendJob, Control, LatentCheckpoint, Outcome, PausedState,
    StepObserver, Video,
};
use mochi_model::model::AsymmDiT;
use mochi_model::model::vae::VaeDecoder;
use mochi_model::model_dir::{safetensors_header, tiny};
use mochi_model::pipeline::sampling::{self, StepInfo, TextConditioning};
use mochi_model::pipeline::scheduler;
use mochi_model::pipeline::text_encoder::{self, TextEncoder};
use mochi_model::pipeline::vae::to_rgb_frames;

/// How the backend runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MochiOptions {
    /// Latent frames decoded at a time (1 = least memory; the result is the same).
    pub decode_chunk_frames: usize,
    /// Largest job in visual tokens this backend accepts (`None`: no limit).
    pub max_tokens: Option<u64>,
}

impl Default for MochiOptions {
    fn default() -> Self {
        Self {
            decode_chunk_frames: 1,
            max_tokens: None,
        }
    }
}

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot load the Mochi model from {dir}: {reason} (`mochi model check {dir}` lists every problem)"
)]
pub struct LoadError {
    /// The model directory.
    pub dir: String,
    /// What failed.
    pub reason: String,
}

/// The Mochi pipeline, loaded on one device.
pub struct MochiBackend {
    model_name: String,
    output_is_noise: bool,
    device: Device,
    dit: AsymmDiT,
    text: Mutex<TextEncoder>,
    vae: VaeDecoder,
    options: MochiOptions,
    resident_bytes: u64,
}

impl std::fmt::Debug for MochiBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MochiBackend")
            .field("model", &self.model_name)
            .field("device", &self.device)
            .field("resident_bytes", &self.resident_bytes)
            .finish_non_exhaustive()
    }
}

/// The DiT's storage dtype on a device: bf16 matmul weights on GPUs, f32 on the CPU.
pub fn dit_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

impl MochiBackend {
    /// Loads the model in `dir` (diffusers layout) onto `device`.
    pub fn load(dir: &Path, device: &Device, options: MochiOptions) -> Result<Self, LoadError> {
        let fail = |reason: String| LoadError {
            dir: dir.display().to_string(),
            reason,
        };
        let started = Instant::now();
        if device.is_cpu() {
            crate::device::pin_host_mmap_threshold();
        }
        let dtype = dit_dtype(device);
        let dit = AsymmDiT::from_model_dir(dir, dtype, device)
            .map_err(|e| fail(format!("transformer: {e}")))?;
        let text = TextEncoder::from_model_dir(dir, device)
            .map_err(|e| fail(format!("text encoder: {e}")))?;
        let vae = VaeDecoder::from_model_dir(dir, DType::F32, device)
            .map_err(|e| fail(format!("VAE decoder: {e}")))?;
        let config = dit.config();
        if config.out_channels != vae.config().latent_channels {
            return Err(fail(format!(
                "the transformer makes {} latent channels but the VAE decoder takes {}",
                config.out_channels,
                vae.config().latent_channels
            )));
        }
        let marker = tiny::marker_name(dir);
        let output_is_noise = marker.as_deref() == Some(tiny::TINY_MODEL_NAME);
        let model_name = marker.unwrap_or_else(|| {
            if *config == mochi_model::model::Config::mochi_1_preview() {
                "mochi-1-preview".to_owned()
            } else {
                dir.file_name()
                    .map_or_else(|| "mochi".to_owned(), |n| n.to_string_lossy().into_owned())
            }
        });
        let resident_bytes = resident_bytes(dir, dtype);
        tracing::info!(
            model = %model_name,
            device = ?device,
            resident_bytes,
            load_ms = started.elapsed().as_millis() as u64,
            "mochi model loaded"
        );
        Ok(Self {
            model_name,
            output_is_noise,
            device: device.clone(),
            dit,
            text: Mutex::new(text),
            vae,
            options,
            resident_bytes,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Refuses shapes this model cannot make, with a sentence saying what to change.
    fn check_job(&self, job: &BackendJob) -> Result<(), BackendError> {
        let shape = &job.shape;
        let frames = self
            .vae
            .config()
            .output_frames(shape.latent_frames as usize);
        if frames != shape.num_frames as usize {
            return Err(BackendError::InvalidJob(format!(
                "{} frames cannot be decoded from {} latent frames (this model makes {frames}); use 6k+1 frames",
                shape.num_frames, shape.latent_frames
            )));
        }
        let patch = self.dit.config().patch_size as u32;
        if !shape.latent_height.is_multiple_of(patch)
            || !shape.latent_width.is_multiple_of(patch)
            || shape.steps == 0
        {
            return Err(BackendError::InvalidJob(format!(
                "a {}x{} video with {} steps cannot be made: width and height must be multiples of {} and steps at least 1",
                shape.width,
                shape.height,
                shape.steps,
                8 * patch
            )));
        }
        if let Some(max) = self.options.max_tokens
            && shape.num_tokens > max
        {
            return Err(BackendError::InvalidJob(format!(
                "this job needs {} visual tokens ({} frames at {}x{}) but this node takes at most {max} (gpu_node.mochi.max_tokens); ask for fewer frames or a smaller size",
                shape.num_tokens, shape.num_frames, shape.width, shape.height
            )));
        }
        Ok(())
    }

    fn encode_text(
        &self,
        prompt: &str,
        negative_prompt: &str,
        cfg: bool,
    ) -> candle_core::Result<(TextConditioning, Option<TextConditioning>)> {
        let mut text = self
            .text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cond = text.encode(prompt)?;
        let uncond = if cfg {
            Some(text.encode(negative_prompt)?)
        } else {
            None
        };
        Ok((cond, uncond))
    }

    /// Tokenize → encode → denoise from the job's seed, or from `resume` (the latent after
    /// step `k`, continuing with step `k + 1`); the final latents (DiT space, f32).
    fn denoise(
        &self,
        job: &BackendJob,
        observer: &mut dyn StepObserver,
        resume: Option<(Tensor, usize)>,
    ) -> Result<Denoised, BackendError> {
        let shape = &job.shape;
        let (cond, uncond) = self
            .encode_text(&job.spec.prompt, &job.spec.negative_prompt, shape.cfg)
            .map_err(from_candle)?;
        let (initial, first_step) = match resume {
            Some(resumed) => resumed,
            None => (
                sampling::initial_latents(
                    job.seed,
                    shape.latent_frames as usize,
                    shape.latent_height as usize,
                    shape.latent_width as usize,
                    &self.device,
                )
                .map_err(from_candle)?,
                0,
            ),
        };
        let schedule = scheduler::linear_quadratic(
            shape.steps as usize,
            scheduler::DEFAULT_THRESHOLD_NOISE,
            None,
        );
        let sigmas = &schedule[first_step.min(schedule.len() - 1)..];
        let total = shape.steps;
        let mut stopped = false;
        let mut paused_after = None;
        let on_step = |info: StepInfo<'_>| {
            let step = u32::try_from(first_step + info.step + 1).unwrap_or(u32::MAX);
            match observer.on_step(step, total) {
                Control::Stop => {
                    stopped = true;
                    ControlFlow::Break(())
                }
                // The loop ends with the latent after this step: the state to resume from.
                Control::Pause if step < total => {
                    paused_after = Some(step);
                    ControlFlow::Break(())
                }
                Control::Pause | Control::Continue => ControlFlow::Continue(()),
            }
        };
        let guidance = f64::from(
            job.spec
                .guidance_scale
                .unwrap_or(protocol::spec::DEFAULT_GUIDANCE_SCALE),
        );
        let latents = sampling::denoise(
            &self.dit,
            &initial,
            &cond,
            uncond.as_ref(),
            sigmas,
            &[guidance],
            on_step,
        )
        .map_err(from_candle)?;
        if stopped {
            return Err(BackendError::Stopped);
        }
        if let Some(steps_done) = paused_after {
            let latent = LatentCheckpoint {
                dims: latents.dims().to_vec(),
                values: latents
                    .flatten_all()
                    .and_then(|flat| flat.to_vec1::<f32>())
                    .map_err(from_candle)?,
            };
            tracing::info!(job_id = %job.job_id, attempt = job.attempt, steps_done, "paused at a step boundary");
            return Ok(Denoised::Paused(PausedState {
                steps_done,
                latent: Some(latent),
            }));
        }
        Ok(Denoised::Latents(latents))
    }

    /// The denoised latents: from an earlier attempt's checkpoint when it has the job's
    /// shape (denoising skipped), else denoised now and handed to the observer to be saved
    /// while it decodes.
    fn latents(
        &self,
        job: &BackendJob,
        observer: &mut dyn StepObserver,
    ) -> Result<Denoised, BackendError> {
        let shape = &job.shape;
        let dims = vec![
            1,
            sampling::LATENT_CHANNELS,
            shape.latent_frames as usize,
            shape.latent_height as usize,
            shape.latent_width as usize,
        ];
        if let Some(checkpoint) = job.checkpoint.as_ref().filter(|c| c.dims == dims) {
            tracing::info!(job_id = %job.job_id, attempt = job.attempt, "decoding from the saved latent; denoising skipped");
            if observer.on_step(shape.steps, shape.steps) == Control::Stop {
                return Err(BackendError::Stopped);
            }
            return Tensor::from_vec(checkpoint.values.clone(), dims, &self.device)
                .map(Denoised::Latents)
                .map_err(from_candle);
        }
        if let Some(checkpoint) = &job.checkpoint {
            tracing::warn!(job_id = %job.job_id, saved = ?checkpoint.dims, expected = ?dims, "ignoring a saved latent of another shape");
        }
        // A preempted job continues from the step and latent it was paused at.
        let resume = match (&job.resume, &job.resume_latent) {
            (Some(point), Some(latent)) if latent.dims == dims => {
                tracing::info!(job_id = %job.job_id, step = point.step, "resuming denoising after a preemption");
                let tensor = Tensor::from_vec(latent.values.clone(), dims.clone(), &self.device)
                    .map_err(from_candle)?;
                Some((tensor, point.step.min(shape.steps) as usize))
            }
            (Some(point), _) => {
                // Without its latent the job starts over, which gives the same video.
                tracing::warn!(job_id = %job.job_id, step = point.step, object = %point.latent_object, "the preempted job's latent is missing or of another shape; denoising restarts from step 0");
                None
            }
            (None, _) => None,
        };
        let latents = match self.denoise(job, observer, resume)? {
            Denoised::Latents(latents) => latents,
            paused @ Denoised::Paused(_) => return Ok(paused),
        };
        let values = latents
            .flatten_all()
            .and_then(|flat| flat.to_vec1::<f32>())
            .map_err(from_candle)?;
        if observer.on_denoised(&LatentCheckpoint { dims, values }) == Control::Stop {
            return Err(BackendError::Stopped);
        }
        Ok(Denoised::Latents(latents))
    }

    /// Streams the latents through the VAE decoder `decode_chunk_frames` latent frames at
    /// a time (activations bounded by the chunk), converting each chunk to RGB at once.
    fn decode(
        &self,
        latents: &Tensor,
        observer: &mut dyn StepObserver,
    ) -> Result<Vec<Vec<u8>>, BackendError> {
        let z = sampling::dit_to_vae(latents).map_err(from_candle)?;
        let total = z.dim(2).map_err(from_candle)?;
        let chunk = self.options.decode_chunk_frames.max(1);
        let mut stream = self.vae.stream();
        let mut frames = Vec::with_capacity(self.vae.config().output_frames(total));
        let mut start = 0;
        while start < total {
            let len = chunk.min(total - start);
            let part = z
                .narrow(2, start, len)
                .and_then(|part| stream.push(&part))
                .and_then(|video| to_rgb_frames(&video))
                .map_err(from_candle)?;
            frames.extend(part.frames);
            start += len;
            let done = u32::try_from(start).unwrap_or(u32::MAX);
            let all = u32::try_from(total).unwrap_or(u32::MAX);
            if observer.on_decode(done, all) == Control::Stop {
                return Err(BackendError::Stopped);
            }
        }
        Ok(frames)
    }

    fn generate(
        &self,
        job: &BackendJob,
        observer: &mut dyn StepObserver,
    ) -> Result<Outcome, BackendError> {
        self.check_job(job)?;
        let started = Instant::now();
        let latents = match self.latents(job, observer)? {
            Denoised::Latents(latents) => latents,
            Denoised::Paused(state) => return Ok(Outcome::Paused(state)),
        };
        let denoised = started.elapsed();
        let frames = self.decode(&latents, observer)?;
        drop(latents);
        let shape = &job.shape;
        let expected = shape.num_frames as usize;
        let frame_bytes = shape.width as usize * shape.height as usize * 3;
        if frames.len() != expected || frames.iter().any(|f| f.len() != frame_bytes) {
            return Err(BackendError::Internal(format!(
                "the decoder made {} frames of {} bytes, expected {expected} of {frame_bytes}",
                frames.len(),
                frames.first().map_or(0, Vec::len)
            )));
        }
        tracing::info!(
            job_id = %job.job_id,
            attempt = job.attempt,
            denoise_ms = denoised.as_millis() as u64,
            decode_ms = (started.elapsed() - denoised).as_millis() as u64,
            "mochi job generated"
        );
        Ok(Outcome::Finished(Video {
            width: shape.width,
            height: shape.height,
            fps: shape.fps,
            frames,
        }))
    }
}

/// Where denoising ended: the denoised latents, or paused at a step boundary.
enum Denoised {
    Latents(Tensor),
    Paused(PausedState),
}

impl Backend for MochiBackend {
    fn name(&self) -> &'static str {
        "mochi"
    }

    fn model(&self) -> Option<String> {
        Some(self.model_name.clone())
    }

    fn output_is_noise(&self) -> bool {
        self.output_is_noise
    }

    fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    fn cuda_ordinal(&self) -> Option<usize> {
        match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
            _ => None,
        }
    }

    fn memory_in_use_bytes(&self) -> Option<u64> {
        // On the CPU the device is this process's memory. A CUDA device is not measured here:
        // the slot reads its GPU from NVML instead (`crate::nvml::GpuMemory`).
        if self.device.is_cpu() {
            // Whatever ran after the job (the MP4 encoder) freed its memory too: trim first.
            crate::device::trim_host_heap();
            crate::device::process_rss_bytes()
        } else {
            None
        }
    }

    fn run(
        &self,
        job: &BackendJob,
        observer: &mut dyn StepObserver,
    ) -> Result<Outcome, BackendError> {
        let outcome = self.generate(job, observer);
        // Every tensor of the job was created in `generate` and is dropped by now; wait for
        // the device so the next job (and the memory report) starts from a quiet device.
        if let Err(error) = self.device.synchronize() {
            tracing::warn!(job_id = %job.job_id, %error, "device synchronisation after the job failed");
        }
        if self.device.is_cpu() {
            // The CPU's "memory pool" is the heap: hand the job's freed pages back.
            crate::device::trim_host_heap();
        }
        outcome
    }
}

/// Whether a candle error is an allocation failure (CUDA, cuBLAS, host).
fn is_out_of_memory(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("out of memory")
        || lower.contains("out_of_memory")
        || lower.contains("alloc_failed")
        || lower.contains("cannot allocate memory")
}

/// A candle error as a backend error: allocation failures are retryable out-of-memory
/// errors (the slot stays usable), the rest internal failures.
pub fn from_candle(error: candle_core::Error) -> BackendError {
    let text = error.to_string();
    if is_out_of_memory(&text) {
        BackendError::OutOfMemory(format!(
            "the job did not fit in the device's memory ({text}); it will be retried"
        ))
    } else {
        BackendError::Internal(text)
    }
}

/// Bytes the loaded weights take: every tensor of the files the loaders read, in the dtype
/// they are kept in (DiT in `dit_dtype`, T5 and VAE in f32).
fn resident_bytes(dir: &Path, dit_dtype: DType) -> u64 {
    let sum = |files: &[PathBuf], bytes_per_element: u64, keep: &dyn Fn(&str) -> bool| -> u64 {
        files
            .iter()
            .filter_map(|file| safetensors_header::read(file).ok())
            .flat_map(|header| header.tensors.into_iter())
            .filter(|(name, _)| keep(name))
            .map(|(_, info)| {
                info.shape.iter().map(|d| *d as u64).product::<u64>() * bytes_per_element
            })
            .sum()
    };
    let dit_files =
        mochi_model::model::weights::find_weight_files_preferring(dir, dit_dtype == DType::BF16)
            .unwrap_or_default();
    // genmo's T5 folder may hold the whole T5 (decoder too); the encoder is what loads.
    let text_files =
        text_encoder::encoder_files(&text_encoder::TextDirs::find(dir).encoder).unwrap_or_default();
    let vae_files = mochi_model::model::vae::weights::find_vae_files(dir).unwrap_or_default();
    let vae_prefix = if vae_files.iter().any(|f| f.ends_with("decoder.safetensors")) {
        ""
    } else {
        mochi_model::model_dir::VAE_DECODER_PREFIX
    };
    sum(&dit_files, dit_dtype.size_in_bytes() as u64, &|_| true)
        + sum(&text_files, 4, &|name| {
            name.starts_with("shared.") || name.starts_with("encoder.")
        })
        + sum(&vae_files, 4, &|name| name.starts_with(vae_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_are_retryable_out_of_memory() {
        let cuda = candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        let error = from_candle(cuda);
        assert!(matches!(error, BackendError::OutOfMemory(_)), "{error}");
        assert!(error.retryable());
        let other = from_candle(candle_core::Error::Msg("shape mismatch".into()));
        assert!(matches!(other, BackendError::Internal(_)));
    }
}
