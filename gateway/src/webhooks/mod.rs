//! Webhooks per job (`webhook_url`, `webhook_events_filter`): the job's events — `start`,
//! `progress` (at most two a second), `completed` — posted to the tenant's receiver, signed
//! in the Standard Webhooks format with the tenant's secret.
//!
//! Both halves survive restarts and run once across replicas: [`source`], in the one
//! gateway holding its lease, reads every revision of every job record (`KV_mochi_jobs`)
//! from the position saved last and queues the events it implies on `MOCHI_WEBHOOKS` (each
//! with a stable `webhook-id` as its message id, so an event read twice is queued once);
//! [`send`], a durable consumer the gateways share, takes deliveries from that stream,
//! posts them (target checked against server-side request forgery at each try), and
//! acknowledges them once the receiver answered 2xx, else retries with backoff up to
//! [`WebhookConfig::retry_delays_s`]. A delivery in flight when a gateway stops is
//! redelivered to another (or the restarted) gateway.

pub mod send;
pub mod sign;
pub mod source;
pub mod target;
mod types;

use protocol::jetstream::Resources;

use crate::files::RetentionConfig;
use crate::index::JobIndex;
pub use types::{Delivery, WebhookConfig};

/// Starts the sender for as long as `index` lives and the event source until what this
/// returns is stopped or dropped (the source then saves its position and releases its
/// lease).
pub fn start(
    index: &JobIndex,
    resources: &Resources,
    config: &WebhookConfig,
    retention: &RetentionConfig,
) -> source::Stopper {
    drop(send::start(index, resources, config));
    source::start(resources, config, retention)
}
