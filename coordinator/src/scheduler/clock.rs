//! The policy's clock. In production it is the wall clock. A time-scaled load test runs
//! simulated nodes `time_scale` times faster than the cost model says (`time_scale` 0.02: a
//! 9-minute job in 11 s); the coordinator is configured with the same scale, and every time
//! the policy reads (now, submission times, retry times, the time since the last step) is
//! stretched to model time around the scheduler's start, and its ETAs are shrunk back. The
//! policy then decides on a scaled run as it would on the real one, and the simulator can
//! replay the same trace in model time.

use crate::policy::Waiting;

/// Maps wall-clock milliseconds to model milliseconds and back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ModelClock {
    origin_ms: u64,
    scale: f64,
}

impl ModelClock {
    /// A clock with `scale` wall seconds per model second, stretched around `origin_ms`.
    pub(crate) fn new(scale: f64, origin_ms: u64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        Self { origin_ms, scale }
    }

    /// The wall clock itself (scale 1).
    #[cfg(test)]
    pub(crate) fn wall() -> Self {
        Self::new(1.0, 0)
    }

    /// Wall seconds per model second.
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// The model time of a wall-clock instant, ms.
    pub(crate) fn model_ms(&self, wall: u64) -> u64 {
        if self.scale == 1.0 {
            return wall;
        }
        let offset = (wall as f64 - self.origin_ms as f64) / self.scale;
        (self.origin_ms as f64 + offset).max(0.0) as u64
    }

    /// The wall-clock instant of a model time, ms.
    pub(crate) fn wall_ms(&self, model: u64) -> u64 {
        if self.scale == 1.0 {
            return model;
        }
        let offset = (model as f64 - self.origin_ms as f64) * self.scale;
        (self.origin_ms as f64 + offset).max(0.0) as u64
    }

    /// Model seconds of a wall-clock duration.
    pub(crate) fn seconds(&self, wall_s: f64) -> f64 {
        wall_s / self.scale
    }

    /// Waiting jobs with their times in model time.
    pub(crate) fn waiting(&self, mut jobs: Vec<Waiting>) -> Vec<Waiting> {
        if self.scale != 1.0 {
            for job in &mut jobs {
                job.created_at_ms = self.model_ms(job.created_at_ms);
                job.not_before_ms = self.model_ms(job.not_before_ms);
            }
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_the_identity() {
        let clock = ModelClock::wall();
        assert_eq!(clock.model_ms(1_764_000_000_123), 1_764_000_000_123);
        assert_eq!(clock.wall_ms(1_764_000_000_123), 1_764_000_000_123);
        assert_eq!(clock.seconds(2.5), 2.5);
    }

    #[test]
    fn a_scaled_clock_stretches_durations_around_its_origin_and_back() {
        let origin = 1_764_000_000_000;
        let clock = ModelClock::new(0.02, origin);
        // One wall second after the origin is fifty model seconds after it.
        assert_eq!(clock.model_ms(origin + 1_000), origin + 50_000);
        // Before the origin too (a job submitted before the scheduler started).
        assert_eq!(clock.model_ms(origin - 1_000), origin - 50_000);
        assert_eq!(clock.wall_ms(origin + 50_000), origin + 1_000);
        assert!((clock.seconds(0.2) - 10.0).abs() < 1e-9);
        // Nonsense scales fall back to the wall clock.
        assert_eq!(ModelClock::new(0.0, origin).scale(), 1.0);
        assert_eq!(ModelClock::new(f64::NAN, origin).scale(), 1.0);
    }
}
