//! Configuration of the coordinator (section `[coordinator]`, env `MOCHI_COORDINATOR__*`).

use std::collections::HashMap;
use std::path::Path;

use protocol::Limits;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{LengthAwareConfig, PolicyKind};

/// The coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Limits every NATS submission is checked against at intake (publishers bypass the
    /// gateway, which checks the jobs it accepts against its own).
    pub limits: Limits,
    /// Failed attempts (lost node, out of memory, ...) before a job is dead.
    pub max_attempts: u32,
    /// How long a placement holds without progress from its node, ms.
    pub lease_ms: u64,
    /// How long a node has to answer an assignment, ms.
    pub assign_timeout_ms: u64,
    /// Period of the scheduler's tick (lease expiry, node liveness), ms.
    pub tick_ms: u64,
    /// A node whose last heartbeat is older than this is gone, s.
    pub node_ttl_s: u64,
    /// First retry delay after a failed attempt, ms (doubles per failed attempt).
    pub backoff_base_ms: u64,
    /// Longest retry delay, ms.
    pub backoff_max_ms: u64,
    /// On a work-queue `MOCHI_SUBMIT` (made by an earlier version): how long the intake may
    /// hold a submission before JetStream redelivers it, s.
    pub intake_ack_wait_s: u64,
    /// Tries to write one submission's record before it is given up (on a work-queue
    /// stream: deliveries).
    pub intake_max_deliver: i64,
    /// Submissions taken in at once: at most 1000 (on a work-queue stream, the intake
    /// consumer's limit of unacknowledged deliveries, JetStream's default `max_ack_pending`).
    pub intake_batch: usize,
    /// Submissions of a batch whose records are written at the same time.
    pub intake_concurrency: usize,
    /// This replica's name in the leader lease; default: host name and process id.
    pub instance_id: Option<String>,
    /// How long the leader lease holds without renewal, ms: a standby takes over this long
    /// after the leader went silent; a leader that cannot renew for this long steps down.
    pub leader_lease_ms: u64,
    /// Time-to-start: a job not placed this long after its creation ends `aborted` without
    /// using a GPU, ms (0: no limit).
    pub start_timeout_ms: u64,
    /// Longest an attempt may run once started before the job fails with `timeout`, ms
    /// (0: no limit).
    pub max_run_ms: u64,
    /// The scheduling policy: `length-aware` (default), `fifo-admit`, `fifo`, `fifo-failfast`.
    pub policy: PolicyKind,
    /// Settings of the length-aware policy.
    pub length_aware: LengthAwareConfig,
    /// Period of the queue positions and ETAs published in `mochi_queue`, ms (0: never);
    /// stretched to ten times the last refresh's scheduler time when that is longer.
    pub eta_refresh_ms: u64,
    /// Whether finished jobs' run times correct the cost model. Off only for time-scaled
    /// load tests, whose simulated nodes run `time_scale` times faster than the model says
    /// and would teach it so.
    pub learn_costs: bool,
    /// Wall seconds per model second of the policy's clock: 1 in production. A time-scaled
    /// load test sets the same scale as its simulated nodes' `simulated.time_scale`, so the
    /// policy sees waits and step times in model time, as on real GPUs.
    pub time_scale: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_attempts: protocol::record::DEFAULT_MAX_ATTEMPTS,
            lease_ms: 60_000,
            assign_timeout_ms: 5_000,
            tick_ms: 500,
            node_ttl_s: 10,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            intake_ack_wait_s: 30,
            intake_max_deliver: 10,
            intake_batch: 1000,
            intake_concurrency: 500,
            instance_id: None,
            leader_lease_ms: 10_000,
            start_timeout_ms: 24 * 3600 * 1000,
            max_run_ms: 2 * 3600 * 1000,
            policy: PolicyKind::default(),
            // Live, a long job may be paused at a step boundary for a short one: every node
            // of this build can pause (one that cannot is found out by its silence and left
            // alone), and a pause costs one step's wait, a saved latent and a text encode.
            // The simulator's plain `length-aware` keeps it off; see docs/scheduling.md.
            length_aware: LengthAwareConfig {
                preemption: true,
                ..LengthAwareConfig::default()
            },
            eta_refresh_ms: 2_000,
            learn_costs: true,
            time_scale: 1.0,
        }
    }
}

impl Config {
    /// Defaults → `[coordinator]` of `file` → `MOCHI_COORDINATOR__*` of `env`, validated.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self> {
        let config: Self = protocol::config::load_section(file, env, "coordinator")?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests: short leases and ticks, quick retries.
    pub fn for_test() -> Self {
        Self {
            lease_ms: 2_000,
            assign_timeout_ms: 2_000,
            tick_ms: 50,
            node_ttl_s: 3,
            backoff_base_ms: 50,
            backoff_max_ms: 200,
            leader_lease_ms: 1_000,
            ..Self::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (self.max_attempts >= 1, "max_attempts must be at least 1"),
            (
                (0.0..1.0).contains(&self.length_aware.short_share)
                    && self.length_aware.lanes.short_max_s <= self.length_aware.lanes.medium_max_s,
                "length_aware.short_share must be in [0, 1) and short_max_s ≤ medium_max_s",
            ),
            (self.lease_ms >= 100, "lease_ms must be at least 100"),
            (
                self.assign_timeout_ms >= 10,
                "assign_timeout_ms must be at least 10",
            ),
            (
                self.tick_ms >= 10 && self.tick_ms <= self.lease_ms,
                "tick_ms must be between 10 and lease_ms",
            ),
            (self.node_ttl_s >= 1, "node_ttl_s must be at least 1"),
            (
                self.backoff_base_ms <= self.backoff_max_ms,
                "backoff_base_ms must not exceed backoff_max_ms",
            ),
            (
                self.intake_max_deliver >= 1 && (1..=1000).contains(&self.intake_batch),
                "intake_max_deliver must be positive and intake_batch between 1 and 1000",
            ),
            (
                self.intake_concurrency >= 1,
                "intake_concurrency must be at least 1",
            ),
            (
                self.time_scale.is_finite() && self.time_scale > 0.0 && self.time_scale <= 1.0,
                "time_scale must be in (0, 1]: 1 in production, below 1 only for time-scaled load tests",
            ),
            (
                self.leader_lease_ms >= 300,
                "leader_lease_ms must be at least 300",
            ),
            (
                self.instance_id
                    .as_deref()
                    .is_none_or(protocol::names::is_valid_token),
                "instance_id: use 1 to 64 letters, digits, '-' or '_'",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(Error::Config((*message).to_owned())),
            None => Ok(()),
        }
    }

    /// This replica's name: the configured one, or `<host>-<pid>`.
    pub fn resolved_instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| protocol::lease::host_instance("coordinator"))
    }

    /// Retry delay after `failed_attempts` failures: base · 2^(n-1), capped.
    pub fn backoff_ms(&self, failed_attempts: u32) -> u64 {
        let exponent = failed_attempts.saturating_sub(1).min(20);
        self.backoff_base_ms
            .saturating_mul(1 << exponent)
            .min(self.backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preemption_is_on_live_by_default_and_a_partial_policy_section_keeps_it() {
        assert!(Config::default().length_aware.preemption);
        let env = HashMap::from([(
            "MOCHI_COORDINATOR__LENGTH_AWARE__SHORT_SHARE".to_owned(),
            "0.5".to_owned(),
        )]);
        let config = Config::load(None, &env).expect("valid");
        assert!(config.length_aware.preemption);
        assert!((config.length_aware.short_share - 0.5).abs() < 1e-9);
        let off = HashMap::from([(
            "MOCHI_COORDINATOR__LENGTH_AWARE__PREEMPTION".to_owned(),
            "false".to_owned(),
        )]);
        assert!(
            !Config::load(None, &off)
                .expect("valid")
                .length_aware
                .preemption
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = Config {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..Config::default()
        };
        assert_eq!(
            [1, 2, 3, 4, 5, 30].map(|n| config.backoff_ms(n)),
            [100, 200, 400, 800, 1_000, 1_000]
        );
    }

    #[test]
    fn loads_fields_from_the_environment_and_refuses_unknown_ones() {
        let env = HashMap::from([
            ("MOCHI_COORDINATOR__LEASE_MS".to_owned(), "5000".to_owned()),
            (
                "MOCHI_COORDINATOR__LIMITS__MAX_STEPS".to_owned(),
                "8".to_owned(),
            ),
        ]);
        let config = Config::load(None, &env).expect("valid");
        assert_eq!(config.lease_ms, 5_000);
        assert_eq!(config.limits.max_steps, 8);
        assert_eq!(config.max_attempts, 3);
        let unknown = HashMap::from([("MOCHI_COORDINATOR__LEASE".to_owned(), "1".to_owned())]);
        assert!(Config::load(None, &unknown).is_err());
    }

    #[test]
    fn the_policy_is_chosen_by_configuration_and_length_aware_by_default() {
        assert_eq!(Config::default().policy, PolicyKind::LengthAware);
        let env = HashMap::from([(
            "MOCHI_COORDINATOR__POLICY".to_owned(),
            "fifo-admit".to_owned(),
        )]);
        assert_eq!(
            Config::load(None, &env).expect("valid").policy,
            PolicyKind::FifoAdmit
        );
        let bad = HashMap::from([(
            "MOCHI_COORDINATOR__LENGTH_AWARE__SHORT_SHARE".to_owned(),
            "1.5".to_owned(),
        )]);
        assert!(Config::load(None, &bad).is_err());
    }

    #[test]
    fn test_config_is_valid() {
        Config::for_test().validate().expect("valid");
        Config::default().validate().expect("valid");
    }

    #[test]
    fn rejects_tick_longer_than_lease() {
        let config = Config {
            tick_ms: 10_000,
            lease_ms: 1_000,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
