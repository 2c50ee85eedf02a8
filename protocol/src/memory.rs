//! Peak device memory of a job, and admission: whether any known slot can hold it, and if
//! not, one sentence saying what it needs, what the largest slot has and what would fit.
//!
//! This is the one memory model of mochi-serve: the gateway refuses an over-sized job at
//! submit with it, the coordinator's admission and cost model use it (adding GPU seconds per
//! class), and each GPU node reports its free memory with it ([`working_bytes`] of the job
//! running, beyond the weights its backend keeps resident).
//!
//! * Resident weights: DiT 20 GB + T5-XXL 9.5 GB + VAE decoder 0.7 GB in bf16.
//! * DiT phase: activations per visual token and CFG branch, one f32 attention score block
//!   (query blocks of 8192 tokens, one head at a time), the latents.
//! * VAE phase: a chunk of decoded frames being worked on plus the whole decoded video kept
//!   until encoding.
//!
//! The peak is the weights plus the larger of the two phases. A CPU slot runs the tiny model,
//! whose figures come from our own benchmarks (`docs/benchmarks.md`).

use crate::JobShape;

/// Which model a slot runs, which sets the memory a job needs there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// The full Mochi-1 model on a GPU (the same memory on every GPU class).
    Full,
    /// The tiny model on a CPU (tests, demos).
    Tiny,
}

impl Model {
    /// The model a slot of the reported `gpu_class` runs: `cpu` runs the tiny model,
    /// every other class the full one.
    pub fn of_class(gpu_class: &str) -> Self {
        let name = gpu_class.trim().to_ascii_lowercase();
        if name == "cpu" || name.starts_with("cpu-") {
            Self::Tiny
        } else {
            Self::Full
        }
    }
}

/// The full Mochi-1 model's memory figures.
mod full {
    /// Text tokens the joint attention sees (T5 max length).
    pub const TEXT_TOKENS: f64 = 256.0;
    /// Resident bf16 weights: DiT 20 GB + T5-XXL 9.5 GB + VAE decoder 0.7 GB.
    pub const RESIDENT_BYTES: f64 = 30.2e9;
    /// Activation bytes per visual token per CFG branch (bf16, ~8 live width-3072 tensors).
    pub const ACTIVATION_BYTES_PER_TOKEN: f64 = 3072.0 * 2.0 * 8.0;
    /// Attention is computed in query blocks of this many tokens, one head at a time, with
    /// an f32 score block (`QUERY_BLOCK · S · 4` bytes).
    pub const QUERY_BLOCK: f64 = 8192.0;
    /// Latent frames the VAE decodes at once (exact causal streaming).
    pub const VAE_CHUNK_LATENT_FRAMES: u32 = 4;
    /// VAE working bytes per pixel of a decoded frame in the chunk: 128 channels f32 at full
    /// resolution, ~3 live tensors.
    pub const VAE_BYTES_PER_PIXEL: f64 = 128.0 * 4.0 * 3.0;
    /// Decoded video kept until encoding: f32 RGB plus RGB8.
    pub const DECODED_BYTES_PER_PIXEL: f64 = 15.0;
}

/// The tiny model on a CPU, from our own benchmarks.
mod tiny {
    pub const RESIDENT_BYTES: f64 = 64e6;
    pub const BYTES_PER_TOKEN: f64 = 2048.0;
    pub const BYTES_PER_PIXEL: f64 = 32.0 * 4.0 * 3.0 + 15.0;
}

/// Memory of the phases of a job on the full model: (DiT phase, VAE phase), bytes beyond
/// the resident weights.
fn full_phase_bytes(shape: &JobShape) -> (f64, f64) {
    let branches = if shape.cfg { 2.0 } else { 1.0 };
    let n = shape.num_tokens as f64;
    let s = n + full::TEXT_TOKENS;
    let latents = 12.0 * n * 4.0 * 4.0 * 3.0 * branches;
    let dit = n * full::ACTIVATION_BYTES_PER_TOKEN * branches
        + full::QUERY_BLOCK.min(s) * s * 4.0
        + latents;
    let pixels = f64::from(shape.width) * f64::from(shape.height);
    let chunk_frames = f64::from((full::VAE_CHUNK_LATENT_FRAMES * 6).min(shape.num_frames.max(1)));
    let vae = chunk_frames * pixels * full::VAE_BYTES_PER_PIXEL
        + f64::from(shape.num_frames) * pixels * full::DECODED_BYTES_PER_PIXEL;
    (dit, vae)
}

/// Working memory of `shape` on a slot running `model`, beyond the resident weights, bytes:
/// the larger of the denoising and the decoding phase. The GPU node reports its free memory
/// with it; admission and the cost model add the weights ([`peak_bytes`]).
pub fn working_bytes(shape: &JobShape, model: Model) -> u64 {
    match model {
        Model::Full => {
            let (dit, vae) = full_phase_bytes(shape);
            dit.max(vae) as u64
        }
        Model::Tiny => tiny_working_bytes(shape) as u64,
    }
}

fn tiny_working_bytes(shape: &JobShape) -> f64 {
    let branches = if shape.cfg { 2.0 } else { 1.0 };
    let pixel_frames =
        f64::from(shape.num_frames) * f64::from(shape.width) * f64::from(shape.height);
    shape.num_tokens as f64 * tiny::BYTES_PER_TOKEN * branches
        + pixel_frames * tiny::BYTES_PER_PIXEL
}

/// Peak device memory of `shape` on a slot running `model`, bytes (weights included).
pub fn peak_bytes(shape: &JobShape, model: Model) -> u64 {
    match model {
        Model::Full => {
            let (dit, vae) = full_phase_bytes(shape);
            (full::RESIDENT_BYTES + dit.max(vae)) as u64
        }
        Model::Tiny => (tiny::RESIDENT_BYTES + tiny_working_bytes(shape)) as u64,
    }
}

/// Whether the denoising (DiT) phase of `shape` fits in `memory_bytes` on the full model: a
/// job whose DiT fits but whose VAE decode does not fails only after every step.
pub fn dit_phase_fits(shape: &JobShape, memory_bytes: u64) -> bool {
    full::RESIDENT_BYTES + full_phase_bytes(shape).0 <= memory_bytes as f64
}

/// One known slot, as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMemory {
    /// Its class as reported (`h100-80gb`, `cpu`, ...), named in refusals.
    pub class: String,
    /// The model it runs.
    pub model: Model,
    /// Its device memory in all, bytes.
    pub memory_bytes: u64,
}

impl SlotMemory {
    /// A slot of the reported `class` with `memory_bytes`.
    pub fn new(class: &str, memory_bytes: u64) -> Self {
        Self {
            class: class.to_owned(),
            model: Model::of_class(class),
            memory_bytes,
        }
    }

    /// Whether it holds `shape`.
    pub fn holds(&self, shape: &JobShape) -> bool {
        peak_bytes(shape, self.model) <= self.memory_bytes
    }
}

/// Why a job was refused: it fits no known slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Peak device memory the job needs on the largest slot, bytes.
    pub needs_bytes: u64,
    /// The largest slot's class (`h100-80gb`, ...).
    pub largest_class: String,
    /// The largest slot's memory, bytes.
    pub largest_bytes: u64,
    /// The most frames that fit at the requested resolution (None: not even one).
    pub max_frames: Option<u32>,
    /// The largest resolution (same aspect ratio) that fits at the requested length.
    pub max_resolution: Option<(u32, u32)>,
    /// The job's frame rate (to turn frames into seconds).
    pub fps: u32,
}

impl Refusal {
    /// One sentence a client can act on.
    pub fn message(&self) -> String {
        let mut message = format!(
            "this job needs about {} of device memory but the largest slot ({}) has {}",
            gb(self.needs_bytes),
            self.largest_class,
            gb(self.largest_bytes)
        );
        let mut options = Vec::new();
        if let Some(frames) = self.max_frames {
            options.push(format!(
                "at most {frames} frames ({:.1} s at {} fps) at this resolution",
                f64::from(frames) / f64::from(self.fps.max(1)),
                self.fps
            ));
        }
        if let Some((width, height)) = self.max_resolution {
            options.push(format!("at most {width}x{height} at this length"));
        }
        if options.is_empty() {
            message.push_str("; no shorter or smaller variant fits either");
        } else {
            message.push_str("; what fits: ");
            message.push_str(&options.join(", or "));
        }
        message
    }
}

/// Checks `shape` against the known `slots`; every job is admitted while no slot is known
/// (it waits for one).
pub fn admit<'a>(
    shape: &JobShape,
    slots: impl IntoIterator<Item = &'a SlotMemory>,
) -> Result<(), Refusal> {
    let mut largest: Option<&SlotMemory> = None;
    for slot in slots {
        if slot.holds(shape) {
            return Ok(());
        }
        if largest.is_none_or(|known| slot.memory_bytes > known.memory_bytes) {
            largest = Some(slot);
        }
    }
    let Some(slot) = largest else {
        return Ok(());
    };
    let max_frames = (0..=shape.num_frames.saturating_sub(1) / 6)
        .rev()
        .map(|k| k * 6 + 1)
        .find(|&frames| {
            slot.holds(&JobShape::new(
                frames,
                shape.fps,
                shape.width,
                shape.height,
                shape.steps,
                shape.cfg,
            ))
        });
    let max_resolution = (1..20).rev().find_map(|twentieths| {
        let scale = f64::from(twentieths) / 20.0;
        let width = round16(f64::from(shape.width) * scale);
        let height = round16(f64::from(shape.height) * scale);
        let candidate = JobShape::new(
            shape.num_frames,
            shape.fps,
            width,
            height,
            shape.steps,
            shape.cfg,
        );
        (width >= 64 && height >= 64 && slot.holds(&candidate)).then_some((width, height))
    });
    Err(Refusal {
        needs_bytes: peak_bytes(shape, slot.model),
        largest_class: slot.class.clone(),
        largest_bytes: slot.memory_bytes,
        max_frames,
        max_resolution,
        fps: shape.fps,
    })
}

fn round16(value: f64) -> u32 {
    ((value / 16.0).floor() as u32).max(1) * 16
}

/// Formats bytes as GB with one decimal.
pub fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shape(frames: u32, width: u32, height: u32) -> JobShape {
        JobShape::new(frames, 30, width, height, 64, true)
    }

    #[test]
    fn peak_grows_with_tokens_and_fits_the_reference_job_on_80_gb() {
        let reference = peak_bytes(&shape(163, 848, 480), Model::Full);
        assert!(reference < 79 << 30, "{reference}");
        assert!(peak_bytes(&shape(301, 1920, 1088), Model::Full) > 79 << 30);
        assert!(peak_bytes(&shape(31, 848, 480), Model::Full) < reference);
        assert!(peak_bytes(&shape(13, 256, 144), Model::Tiny) < 1 << 30);
        assert_eq!(Model::of_class("CPU"), Model::Tiny);
        assert_eq!(Model::of_class("l40-48gb"), Model::Full);
    }

    #[test]
    fn admission_refuses_what_no_slot_holds_and_says_what_would_fit() {
        let small = [SlotMemory::new("l40-48gb", 45 << 30)];
        assert!(admit(&shape(301, 1920, 1088), []).is_ok(), "no slot known");
        assert!(admit(&shape(31, 848, 480), &small).is_ok());
        let refusal = admit(&shape(301, 1920, 1088), &small).unwrap_err();
        assert_eq!(refusal.largest_class, "l40-48gb");
        assert!(refusal.needs_bytes > refusal.largest_bytes);
        let (width, height) = refusal.max_resolution.unwrap();
        assert!(small[0].holds(&shape(301, width, height)));
        let message = refusal.message();
        assert!(message.contains("l40-48gb"), "{message}");
        assert!(message.contains(&format!("{width}x{height}")), "{message}");
    }
}
