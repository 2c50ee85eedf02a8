//! Configuration of the gateway (section `[gateway]`, env `MOCHI_GATEWAY__*`).

use std::collections::HashMap;
use std::path::Path;

use protocol::Limits;
use serde::{Deserialize, Serialize};

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
    /// Bearer token of the admin API (`/v1/admin/…`: dead letters and their re-drive);
    /// unset, the admin API answers 403.
    pub admin_token: Option<Secret>,
}

/// A secret setting: its `Debug` form is redacted, so logging the config never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
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
            admin_token: None,
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

    /// A configuration for tests: a free loopback port.
    pub fn for_test() -> Self {
        Self {
            listen_addr: "127.0.0.1:0".to_owned(),
            ..Self::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.listen_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Config(format!(
                "listen_addr {:?} is not an address like 0.0.0.0:8080",
                self.listen_addr
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
