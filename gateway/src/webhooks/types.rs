//! What the webhook source and sender share: the settings and a queued delivery.

use protocol::{JobId, TenantId};
use serde::{Deserialize, Serialize};

/// Webhook settings (`[gateway.webhooks]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Hosts (names or IP addresses, as written in the URL) exempt from the address check:
    /// receivers on the operator's own network.
    pub allow_hosts: Vec<String>,
    /// The longest a delivery may take (connect, send, answer), ms.
    pub timeout_ms: u64,
    /// Deliveries in flight per gateway.
    pub max_in_flight: usize,
    /// Deliveries in flight per gateway for one tenant (one slow receiver never takes every
    /// slot).
    pub max_in_flight_per_tenant: usize,
    /// Least time between two `progress` events of a job, ms.
    pub progress_interval_ms: u64,
    /// Wait before each retry, seconds (its length is the number of retries).
    pub retry_delays_s: Vec<u64>,
    /// Lease of the gateway that reads job records into events: a standby takes over after
    /// 1.2 leases without a renewal (at once when the holder stops cleanly), ms.
    pub source_lease_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            timeout_ms: 10_000,
            max_in_flight: 64,
            max_in_flight_per_tenant: 8,
            progress_interval_ms: 500,
            // Ten retries over about two hours.
            retry_delays_s: vec![5, 15, 30, 60, 300, 600, 900, 1200, 1800, 2400],
            source_lease_ms: 6_000,
        }
    }
}

/// A delivery queued on `MOCHI_WEBHOOKS` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook-id`: stable across retries (`msg_<job>_<event>[_<attempt>[_<step>]]`).
    pub id: String,
    /// The job's tenant (whose secret signs).
    pub tenant: TenantId,
    /// The job.
    pub job_id: JobId,
    /// The receiver.
    pub url: String,
    /// The body, exactly as signed and sent.
    pub body: String,
}
