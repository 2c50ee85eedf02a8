//! Webhooks per job (`webhook_url`, `webhook_events_filter`): the job's events — `start`,
//! `progress` (at most two a second), `completed` — posted to the tenant's receiver, signed
//! in the Standard Webhooks format with the tenant's secret.
//!
//! Two shared durable JetStream consumers make it survive restarts and run once across
//! replicas: [`source`] reads every revision of every job record (`KV_mochi_jobs`) and
//! queues the events it implies on `MOCHI_WEBHOOKS` (each with a stable `webhook-id` as its
//! message id, so two gateways queue an event once); [`send`] takes deliveries from that
//! stream, posts them (target checked against server-side request forgery at each try),
//! and acknowledges them once the receiver answered 2xx, else retries with backoff up to
//! [`WebhookConfig::retry_delays_s`]. A delivery in flight when a gateway stops is
//! redelivered to another (or the restarted) gateway.

pub mod send;
pub mod sign;
pub mod source;
pub mod target;

use protocol::{JobId, TenantId};
use serde::{Deserialize, Serialize};

use crate::state::AppState;

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

/// Starts the event source and the sender for as long as `state` lives.
pub fn start(state: &AppState) {
    drop(source::start(state));
    drop(send::start(state));
}
