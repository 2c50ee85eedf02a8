//! Shared state of the HTTP handlers.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use protocol::TenantId;
use protocol::jetstream::Resources;

use crate::config::Config;
use crate::fleet::Fleet;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client (core publishes, connection state).
    pub client: async_nats::Client,
    /// The gateway's configuration.
    pub config: Arc<Config>,
    /// The tenant requests act for (authentication is not configured yet: one tenant).
    pub tenant: TenantId,
    /// Renders `/metrics`, when this process installed a Prometheus recorder.
    pub metrics: Option<PrometheusHandle>,
    /// The slots known from the node heartbeats (submit refuses what none holds); empty, so
    /// accepting everything, until [`Fleet::watch`] runs (`Server::bind` starts it).
    pub fleet: Fleet,
}

impl AppState {
    /// State for the default tenant.
    pub fn new(
        config: Config,
        resources: Resources,
        client: async_nats::Client,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        Self {
            resources,
            client,
            config: Arc::new(config),
            tenant: TenantId::default_tenant(),
            metrics,
            fleet: Fleet::new(),
        }
    }
}
