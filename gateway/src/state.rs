//! Shared state of the HTTP handlers.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use protocol::jetstream::Resources;

use crate::auth::Authenticator;
use crate::auth::keys::KeyCache;
use crate::auth::limits::RateLimiter;
use crate::auth::quota::TenantLoad;
use crate::auth::signing::LinkSigner;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::index::JobIndex;
use crate::record_batch::{Batching, RecordCreator};

/// What every handler can reach: one shared [`Shared`] behind an `Arc`. axum clones the
/// state for every request, and a clone of the fields themselves (the JetStream handles
/// with their cached stream configurations, the NATS client, the caches) cost dozens of
/// allocations and atomic increments per request on the submit path.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state every handler reaches through [`AppState`].
pub struct Shared {
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client (core publishes, connection state).
    pub client: async_nats::Client,
    /// Writes new job records, several concurrent submissions' in one atomic batch.
    pub records: RecordCreator,
    /// The gateway's configuration.
    pub config: Arc<Config>,
    /// Renders `/metrics`, when this process installed a Prometheus recorder.
    pub metrics: Option<PrometheusHandle>,
    /// The slots known from the node heartbeats (submit refuses what none holds); empty, so
    /// accepting everything, until [`Fleet::watch`] runs (`Server::bind` starts it).
    pub fleet: Fleet,
    /// Checks credentials; its key cache is empty until [`AppState::start`] runs.
    pub auth: Authenticator,
    /// Per-key token buckets.
    pub limiter: Arc<RateLimiter>,
    /// Each tenant's queued + running jobs, for quotas (kept current by [`AppState::start`]).
    pub load: TenantLoad,
    /// Each tenant's jobs in creation order, for lists (kept current by [`AppState::start`]).
    pub index: JobIndex,
    /// Signs download links: the configured keys or the shared generated one, set by
    /// [`AppState::start`] (until then no link is given or accepted).
    pub links: std::sync::OnceLock<LinkSigner>,
    /// Stops the webhook source, once [`AppState::start`] started it.
    webhook_source: std::sync::Mutex<Option<crate::webhooks::source::Stopper>>,
}

impl AppState {
    /// State over `resources`; [`AppState::start`] then loads keys and starts the watches.
    pub fn new(
        config: Config,
        resources: Resources,
        client: async_nats::Client,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let keys = KeyCache::new(
            resources.keys.clone(),
            Duration::from_secs(config.auth.key_touch_interval_s),
        );
        let records = RecordCreator::new(
            resources.jobs.clone(),
            resources.context.clone(),
            Batching {
                max: config.record_batch_max,
                min: config.record_batch_min,
                in_flight: config.record_writes_in_flight,
                linger: Duration::from_micros(config.record_batch_linger_us),
                timeout: Duration::from_millis(config.publish_timeout_ms),
            },
        );
        Self(Arc::new(Shared {
            records,
            auth: Authenticator::new(&config.auth, keys),
            limiter: Arc::new(RateLimiter::new(config.rate_limit.clone())),
            load: TenantLoad::new(),
            index: JobIndex::new(),
            links: std::sync::OnceLock::new(),
            webhook_source: std::sync::Mutex::new(None),
            resources,
            client,
            config: Arc::new(config),
            metrics,
            fleet: Fleet::new(),
        }))
    }

    /// Stops what [`AppState::start`] started that hands over to other replicas: the webhook
    /// source saves its position and releases its lease (waiting at most 5 s), so that
    /// another gateway goes on at once.
    pub async fn stop(&self) {
        let source = self
            .webhook_source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(source) = source {
            source.stop(Duration::from_secs(5)).await;
        }
    }

    /// Loads the API keys and the link-signing key, and starts the watches that keep keys,
    /// tenant loads, the job index and the fleet current, the retention sweep and the webhooks for as long as this state lives.
    pub async fn start(&self) -> crate::Result<()> {
        self.auth.start_oidc().map_err(crate::Error::Start)?;
        drop(self.fleet.watch(self.resources.nodes.clone()));
        drop(crate::index::watch(
            self.resources.jobs.kv.clone(),
            &self.load,
            &self.index,
        ));
        let (index, resources) = (&self.index, &self.resources);
        drop(crate::files::sweep(
            index,
            resources,
            &self.config.retention,
        ));
        {
            let mut source = self
                .webhook_source
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A second start keeps the first's webhooks.
            if source.is_none() {
                *source = Some(crate::webhooks::start(
                    index,
                    resources,
                    &self.config.webhooks,
                    &self.config.retention,
                ));
            }
        }
        let watch = self
            .auth
            .keys()
            .start()
            .await
            .map_err(|e| crate::Error::Start(e.to_string()))?;
        drop(watch);
        let keys =
            self.resources.keys.as_ref().ok_or_else(|| {
                crate::Error::Start("the mochi_keys bucket is not open".to_owned())
            })?;
        let signer = LinkSigner::load(&self.config.links, keys)
            .await
            .map_err(crate::Error::Start)?;
        // A second start keeps the first signer: both loaded the same keys.
        let _ = self.links.set(signer);
        Ok(())
    }
}
