//! Configuration of the gateway (section `[gateway]`, env `MOCHI_GATEWAY__*`).

use std::collections::HashMap;
use std::path::Path;

use protocol::Limits;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::auth::limits::RateLimitConfig;
use crate::auth::quota::QuotaConfig;
use crate::auth::signing::LinkConfig;
pub use crate::files::RetentionConfig;
pub use crate::webhooks::WebhookConfig;
pub use protocol::config::Secret;

use crate::error::{Error, Result};

/// The gateway's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen_addr: String,
    /// Limits every submitted job is checked against.
    pub limits: Limits,
    /// Longest a request may take until its response starts (then 503 `unavailable`), ms.
    pub request_timeout_ms: u64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Requests served at once; beyond it new requests get 503 at once (load shedding).
    pub max_concurrent_requests: usize,
    /// How long a submission waits for JetStream's acknowledgement, ms.
    pub publish_timeout_ms: u64,
    /// Most new job records stored in one write: submissions that arrive while earlier
    /// records' writes are in flight are stored together as one JetStream atomic batch
    /// (1 to 1000; 1: every record alone).
    pub record_batch_max: usize,
    /// Fewest new job records worth one atomic batch (2 to 1000): a smaller group is written
    /// record by record, side by side. On one nats-server each batch costs a fixed few synced
    /// writes of the server's own (about as many as 7–14 single records on this project's
    /// machines), so a batch of two or three is slower than its records alone. Above
    /// `record_batch_max`, no batch is made.
    pub record_batch_min: usize,
    /// Writes of new job records in flight at once (1 to 64): fewer make larger batches,
    /// more overlap the writes. nats-server applies a stream's batches one after another,
    /// so one write at a time, whose next batch takes every submission that arrived
    /// meanwhile, stored the most on one server and on three (docs/loadtest.md).
    pub record_writes_in_flight: usize,
    /// How long a write of new job records may wait for the submitters the previous write
    /// answered to come back, µs (0 to 10,000; 0: never waits). Closed-loop clients (each
    /// sends its next job once its last is answered) otherwise split into groups that take
    /// turns, each waiting for the other's write and then its own; a write that waits a
    /// moment for the rest stores them all at once. It waits only while fewer records are
    /// queued than the most submissions that waited at once during the previous write; a
    /// linger that runs out is skipped for the next 1, 2, 4 … 64 writes.
    pub record_batch_linger_us: u64,
    /// Authentication (`[gateway.auth]`).
    pub auth: AuthConfig,
    /// Per-key rate limits (`[gateway.rate_limit]`).
    pub rate_limit: RateLimitConfig,
    /// Per-tenant quotas on queued + running jobs (`[gateway.quota]`).
    pub quota: QuotaConfig,
    /// Signed download links (`[gateway.links]`).
    pub links: LinkConfig,
    /// Guards against slow and idle clients (`[gateway.connections]`).
    pub connections: ConnectionConfig,
    /// How long finished jobs keep their files (`[gateway.retention]`).
    pub retention: RetentionConfig,
    /// Webhook deliveries (`[gateway.webhooks]`).
    pub webhooks: WebhookConfig,
}

/// Limits on client connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Time a client has to send a request's headers, from the first byte, ms.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving for this long is
    /// closed, ms (keep-alive idleness, and connections that never send a byte).
    pub idle_timeout_ms: u64,
    /// Open connections at most; beyond it a new connection gets 503 and is closed.
    pub max_connections: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:8080".to_owned(),
            limits: Limits::default(),
            request_timeout_ms: 30_000,
            max_body_bytes: 64 * 1024,
            max_concurrent_requests: 1024,
            publish_timeout_ms: 5_000,
            record_batch_max: 256,
            record_batch_min: 8,
            record_writes_in_flight: 1,
            record_batch_linger_us: 1_500,
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
            quota: QuotaConfig::default(),
            links: LinkConfig::default(),
            retention: RetentionConfig::default(),
            webhooks: WebhookConfig::default(),
            connections: ConnectionConfig::default(),
        }
    }
}

impl Config {
    /// Defaults → `[gateway]` of `file` → `MOCHI_GATEWAY__*` of `env`, validated.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self> {
        let config: Self = protocol::config::load_section(file, env, "gateway")?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests: a free loopback port, authentication off (every request
    /// is an admin of tenant `default`); tests of authentication turn it back on.
    pub fn for_test() -> Self {
        Self {
            listen_addr: "127.0.0.1:0".to_owned(),
            auth: AuthConfig {
                disabled: true,
                open_tenant: protocol::TenantId::default_tenant().to_string(),
                ..AuthConfig::default()
            },
            ..Self::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let Ok(listen) = self.listen_addr.parse::<std::net::SocketAddr>() else {
            return Err(Error::Config(format!(
                "listen_addr {:?} is not an address like 0.0.0.0:8080",
                self.listen_addr
            )));
        };
        if self.auth.disabled && !listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "auth.disabled is only allowed on a loopback listener, not {listen}; create API keys with `mochi keys create` instead"
            )));
        }
        if protocol::TenantId::new(self.auth.open_tenant.as_str()).is_err() {
            return Err(Error::Config(format!(
                "auth.open_tenant {:?} is not a tenant name (1 to 64 letters, digits, '-' or '_')",
                self.auth.open_tenant
            )));
        }
        if let Some(oidc) = &self.auth.oidc {
            oidc.validate()
                .map_err(|e| Error::Config(format!("auth.oidc: {e}")))?;
        }
        for tenant in self.quota.tenants.keys() {
            if protocol::TenantId::new(tenant.as_str()).is_err() {
                return Err(Error::Config(format!(
                    "quota.tenants names {tenant:?}, which is not a tenant name"
                )));
            }
        }
        for key in &self.links.signing_keys {
            if !protocol::names::is_valid_token(&key.id) || key.secret.expose().len() < 32 {
                return Err(Error::Config(format!(
                    "links.signing_keys: key {:?} needs an id of letters, digits, '-' or '_' and a secret of at least 32 bytes",
                    key.id
                )));
            }
        }
        if self.connections.idle_timeout_ms <= self.request_timeout_ms {
            return Err(Error::Config(format!(
                "connections.idle_timeout_ms ({}) must be longer than request_timeout_ms ({}), or requests still working would be cut off",
                self.connections.idle_timeout_ms, self.request_timeout_ms
            )));
        }
        if self.links.ttl_s == 0
            || self.rate_limit.creates_per_minute == 0
            || self.rate_limit.reads_per_minute == 0
            || self.connections.max_connections == 0
            || self.connections.header_read_timeout_ms == 0
            || self.connections.idle_timeout_ms == 0
        {
            return Err(Error::Config(
                "links.ttl_s, rate_limit.*_per_minute and connections.* must be positive"
                    .to_owned(),
            ));
        }
        if self.webhooks.source_lease_ms < 300 {
            return Err(Error::Config(format!(
                "webhooks.source_lease_ms ({}) must be at least 300",
                self.webhooks.source_lease_ms
            )));
        }
        if !(1..=protocol::jetstream::MAX_ATOMIC_BATCH).contains(&self.record_batch_max) {
            return Err(Error::Config(format!(
                "record_batch_max is {}; use 1 (every record alone) to {}",
                self.record_batch_max,
                protocol::jetstream::MAX_ATOMIC_BATCH
            )));
        }
        if !(2..=protocol::jetstream::MAX_ATOMIC_BATCH).contains(&self.record_batch_min) {
            return Err(Error::Config(format!(
                "record_batch_min is {}; use 2 to {} (record_batch_max = 1 turns batches off)",
                self.record_batch_min,
                protocol::jetstream::MAX_ATOMIC_BATCH
            )));
        }
        if self.record_batch_linger_us > 10_000 {
            return Err(Error::Config(format!(
                "record_batch_linger_us is {}; use 0 (never wait) to 10000",
                self.record_batch_linger_us
            )));
        }
        if !(1..=64).contains(&self.record_writes_in_flight) {
            return Err(Error::Config(format!(
                "record_writes_in_flight is {}; use 1 to 64",
                self.record_writes_in_flight
            )));
        }
        if self.max_body_bytes < 1024
            || self.max_concurrent_requests == 0
            || self.request_timeout_ms == 0
        {
            return Err(Error::Config(
                "max_body_bytes must be ≥ 1024, max_concurrent_requests and request_timeout_ms positive".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_batch_settings_out_of_range_are_refused_by_name() {
        assert!(Config::default().validate().is_ok());
        for (config, name) in [
            (
                Config {
                    record_batch_min: 1,
                    ..Config::default()
                },
                "record_batch_min",
            ),
            (
                Config {
                    record_batch_max: 0,
                    ..Config::default()
                },
                "record_batch_max",
            ),
            (
                Config {
                    record_writes_in_flight: 0,
                    ..Config::default()
                },
                "record_writes_in_flight",
            ),
            (
                Config {
                    record_batch_linger_us: 10_001,
                    ..Config::default()
                },
                "record_batch_linger_us",
            ),
        ] {
            let refused = config.validate().err().map(|e| e.to_string());
            assert!(
                refused.as_deref().is_some_and(|m| m.contains(name)),
                "{name}: {refused:?}"
            );
        }
    }
}
