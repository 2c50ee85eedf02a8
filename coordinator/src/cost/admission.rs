//! Admission: a job that no known slot can hold is refused with what it needs, what the
//! largest slot has, and the largest duration and resolution that would fit.

use protocol::JobShape;

use super::{GpuClass, gb, prior};

/// Why a job was refused: it fits no known slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Peak device memory the job needs on the largest slot's class, bytes.
    pub needs_bytes: u64,
    /// The largest slot: its class and memory.
    pub largest_class: GpuClass,
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

/// Checks `shape` against the known slots (`(class, memory bytes)`); every job is admitted
/// while no slot is known (it waits for one).
pub fn admit(
    shape: &JobShape,
    slots: impl IntoIterator<Item = (GpuClass, u64)>,
) -> Result<(), Refusal> {
    let mut largest: Option<(GpuClass, u64)> = None;
    for (class, memory) in slots {
        if prior(shape, class).peak_bytes <= memory {
            return Ok(());
        }
        // The largest slot by headroom for this job (memory minus what it would need).
        if largest.is_none_or(|(_, known)| memory > known) {
            largest = Some((class, memory));
        }
    }
    let Some((class, memory)) = largest else {
        return Ok(());
    };
    let fits = |candidate: &JobShape| prior(candidate, class).peak_bytes <= memory;
    let max_frames = (0..=shape.num_frames.saturating_sub(1) / 6)
        .rev()
        .map(|k| k * 6 + 1)
        .find(|&frames| {
            fits(&JobShape::new(
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
        (width >= 64 && height >= 64 && fits(&candidate)).then_some((width, height))
    });
    Err(Refusal {
        needs_bytes: prior(shape, class).peak_bytes,
        largest_class: class,
        largest_bytes: memory,
        max_frames,
        max_resolution,
        fps: shape.fps,
    })
}

fn round16(value: f64) -> u32 {
    ((value / 16.0).floor() as u32).max(1) * 16
}
