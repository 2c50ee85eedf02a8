//! The simulator's draws (exponential gaps, log-normal errors, weighted choices) from the
//! shared seeded generator, so that traces and runs are reproducible everywhere.

use mochi_rng::SplitMix64;

/// Seeded draws for traces and runs.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.uniform()
    }

    /// Exponential with `rate`.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.uniform()).ln() / rate.max(1e-12)
    }

    /// exp(N(0, sigma²)).
    pub fn lognormal(&mut self, sigma: f64) -> f64 {
        let u1 = (1.0 - self.uniform()).max(1e-300);
        let u2 = self.uniform();
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (sigma * normal).exp()
    }

    /// One of `choices` by weight.
    pub fn pick<'a, T>(&mut self, choices: &'a [(T, f64)]) -> &'a T {
        let total: f64 = choices.iter().map(|(_, w)| w).sum();
        let mut u = self.uniform() * total;
        for (value, weight) in choices {
            if u < *weight {
                return value;
            }
            u -= weight;
        }
        &choices[choices.len() - 1].0
    }
}
