//! What one fault run does: how many rounds, jobs, which seed, and the timings.

use std::path::PathBuf;
use std::time::Duration;

/// One fault run.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// The `mochi` binary.
    pub mochi: PathBuf,
    /// The `nats-server` binary.
    pub nats_server: PathBuf,
    /// Fault rounds; each injects one fault and submits `jobs_per_round` jobs.
    pub rounds: u32,
    /// Jobs submitted per round.
    pub jobs_per_round: u32,
    /// Seed of the random choices (which node, when, which job to cancel).
    pub seed: u64,
    /// Denoising steps per job.
    pub steps: u32,
    /// Simulated backend time scale (60 ≈ 0.2 s per step for the harness's 64×64 jobs).
    pub time_scale: f64,
    /// Job lease, ms.
    pub lease_ms: u64,
    /// Coordinator leader lease, ms.
    pub leader_lease_ms: u64,
    /// How long the end phase waits for every accepted job to finish.
    pub drain_timeout: Duration,
    /// Keep the run's directory (store and logs) even when the run passes.
    pub keep_dir: bool,
    /// Rounds stop being started after this long.
    pub max_duration: Duration,
    /// nats-servers: 1, or a JetStream cluster of this many with every stream and bucket
    /// replicated on each (a NATS fault then kills one of them).
    pub nats_servers: usize,
}

impl FaultConfig {
    /// A short run for CI: one round of each fault kind.
    pub fn short(mochi: PathBuf, nats_server: PathBuf) -> Self {
        Self {
            mochi,
            nats_server,
            rounds: 4,
            jobs_per_round: 4,
            seed: 1,
            steps: 8,
            time_scale: 60.0,
            lease_ms: 3_000,
            leader_lease_ms: 1_500,
            drain_timeout: Duration::from_secs(90),
            keep_dir: false,
            max_duration: Duration::from_secs(120),
            nats_servers: 1,
        }
    }
}
