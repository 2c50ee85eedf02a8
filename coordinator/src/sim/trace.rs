//! Traces: a documented mix of requests with Poisson or bursty arrivals, generated from a
//! seed and saved as CSV (`loadtest/traces/`).
//!
//! The mix (`Mix::standard`): durations 1–10 s (45 % 1–2 s, 35 % 3–5 s, 20 % 6–10 s),
//! fps 8/15/24/30 (10/20/30/40 %), 480p 75 % and 720p 25 % (a quarter of each portrait),
//! 16/32/50/64 steps (15/25/20/40 %), CFG on 90 %, four tenants (40/30/20/10 %), priority
//! high 10 %, low 20 %; plus `oversized` of the requests at 1920×1088 for 4–10 s, which no
//! 80 GB slot holds.

use std::fmt::Write as _;

use protocol::JobShape;
use protocol::spec::{Priority, round_up_to_6k_plus_1};

use super::rng::Rng;
use crate::cost::{CostModel, GpuClass};

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceJob {
    /// Sequence number (the job's id in the simulation).
    pub id: u64,
    /// Arrival, seconds from the trace's start.
    pub arrival_s: f64,
    /// Tenant index.
    pub tenant: u32,
    /// Priority.
    pub priority: Priority,
    /// The shape asked for.
    pub shape: JobShape,
}

/// How arrivals come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Poisson at the mean rate.
    Poisson,
    /// Poisson whose rate is twice the mean for a third of each period and half the mean
    /// for the rest (the same mean).
    Bursty {
        /// Length of one high + low cycle, s.
        period_s: f64,
    },
}

/// The request mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Fraction of requests too big for an 80 GB slot.
    pub oversized: f64,
}

impl Mix {
    /// The documented mix with 3 % over-sized requests.
    pub fn standard() -> Self {
        Self { oversized: 0.03 }
    }

    /// One request shape and its tenant and priority.
    pub fn sample(&self, rng: &mut Rng) -> (JobShape, u32, Priority) {
        let fps = *rng.pick(&[(8, 0.1), (15, 0.2), (24, 0.3), (30, 0.4)]);
        let duration_s = match rng.uniform() {
            u if u < 0.45 => 1.0 + rng.uniform(),
            u if u < 0.80 => 3.0 + 2.0 * rng.uniform(),
            _ => 6.0 + 4.0 * rng.uniform(),
        };
        let (mut width, mut height) = if rng.uniform() < 0.75 {
            (848, 480)
        } else {
            (1280, 720)
        };
        if rng.uniform() < 0.25 {
            std::mem::swap(&mut width, &mut height);
        }
        let mut duration_s = duration_s;
        if rng.uniform() < self.oversized {
            (width, height) = (1920, 1088);
            duration_s = 4.0 + 6.0 * rng.uniform();
        }
        let steps = *rng.pick(&[(16, 0.15), (32, 0.25), (50, 0.2), (64, 0.4)]);
        let cfg = rng.uniform() < 0.9;
        let frames = round_up_to_6k_plus_1((duration_s * f64::from(fps)).round() as u32);
        let tenant = *rng.pick(&[(0, 0.4), (1, 0.3), (2, 0.2), (3, 0.1)]);
        let priority = *rng.pick(&[
            (Priority::High, 0.1),
            (Priority::Normal, 0.7),
            (Priority::Low, 0.2),
        ]);
        (
            JobShape::new(frames, fps, width, height, steps, cfg),
            tenant,
            priority,
        )
    }
}

/// Mean predicted GPU seconds on an H100 of the requests of `mix` that an 80 GB slot holds:
/// with `n` H100 slots, a load `ρ` is `ρ · n / mean_service_s` requests per second.
pub fn mean_service_s(mix: Mix) -> f64 {
    let model = CostModel::default();
    let mut rng = Rng::new(99);
    let (mut sum, mut count) = (0.0, 0.0);
    for _ in 0..50_000 {
        let (shape, _, _) = mix.sample(&mut rng);
        let cost = model.cost(&shape);
        if cost.fits(GpuClass::H100, GpuClass::H100.spec().memory_bytes) {
            sum += cost.reference_seconds();
            count += 1.0;
        }
    }
    sum / count
}

/// `count` requests at `rate_per_s` on average.
pub fn generate(
    mix: Mix,
    arrivals: Arrivals,
    rate_per_s: f64,
    count: usize,
    seed: u64,
) -> Vec<TraceJob> {
    let mut rng = Rng::new(seed);
    let mut jobs = Vec::with_capacity(count);
    let mut now = 0.0;
    for id in 0..count as u64 {
        let rate = match arrivals {
            Arrivals::Poisson => rate_per_s,
            Arrivals::Bursty { period_s } => {
                if (now % period_s) < period_s / 3.0 {
                    2.0 * rate_per_s
                } else {
                    0.5 * rate_per_s
                }
            }
        };
        now += rng.exponential(rate);
        let (shape, tenant, priority) = mix.sample(&mut rng);
        jobs.push(TraceJob {
            id,
            arrival_s: now,
            tenant,
            priority,
            shape,
        });
    }
    jobs
}

const HEADER: &str = "id,arrival_s,tenant,priority,frames,fps,width,height,steps,cfg";

/// The trace as CSV.
pub fn to_csv(jobs: &[TraceJob]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for job in jobs {
        let priority = match job.priority {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        };
        let s = &job.shape;
        let _ = writeln!(
            out,
            "{},{:.3},{},{priority},{},{},{},{},{},{}",
            job.id,
            job.arrival_s,
            job.tenant,
            s.num_frames,
            s.fps,
            s.width,
            s.height,
            s.steps,
            u8::from(s.cfg)
        );
    }
    out
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[error("trace line {line}: {reason}")]
pub struct TraceError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Reads a trace written by [`to_csv`].
pub fn from_csv(text: &str) -> Result<Vec<TraceJob>, TraceError> {
    let mut jobs = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let error = |reason: &str| TraceError {
            line: index + 1,
            reason: reason.to_owned(),
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 10 {
            return Err(error("expected 10 fields"));
        }
        let int = |i: usize| fields[i].parse::<u32>().map_err(|_| error("not a number"));
        let priority = match fields[3] {
            "high" => Priority::High,
            "normal" => Priority::Normal,
            "low" => Priority::Low,
            _ => return Err(error("unknown priority")),
        };
        jobs.push(TraceJob {
            id: fields[0].parse().map_err(|_| error("bad id"))?,
            arrival_s: fields[1].parse().map_err(|_| error("bad arrival"))?,
            tenant: int(2)?,
            priority,
            shape: JobShape::new(int(4)?, int(5)?, int(6)?, int(7)?, int(8)?, int(9)? == 1),
        });
    }
    Ok(jobs)
}
