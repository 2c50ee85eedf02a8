//! Sending webhook deliveries: a durable pull consumer on `MOCHI_WEBHOOKS` shared by every
//! gateway. A delivery is acknowledged once its receiver answered 2xx; another answer, a
//! redirect (never followed) or a network failure is retried after the next of
//! [`WebhookConfig::retry_delays_s`], then given up; a target that may not be reached is
//! given up at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::kv;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use protocol::jetstream::Resources;
use protocol::{TenantId, names, now_ms};
use tokio::sync::Semaphore;

use super::sign::{Secret, secret_of};
use super::target::{Target, TargetError};
use super::types::{Delivery, WebhookConfig};
use crate::index::{JobIndex, WeakIndex};
use crate::metrics;

/// Wait before starting over after the consumer failed.
const RETRY: Duration = Duration::from_secs(1);
/// How often a delivery waiting for its tenant's turn tells JetStream it is still held.
const HOLD_NOTICE: Duration = Duration::from_secs(20);

/// Sends deliveries for as long as `index` lives.
pub fn start(
    index: &JobIndex,
    resources: &Resources,
    config: &WebhookConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(keys) = resources.keys.clone() else {
        tracing::warn!("webhooks are not sent: the mochi_keys bucket (their secrets) is not open");
        return None;
    };
    let index = index.downgrade();
    let context = resources.context.clone();
    let config = Arc::new(config.clone());
    Some(tokio::spawn(async move {
        let sender = Sender::new(keys, config);
        loop {
            if let Err(error) = run(&context, &sender, &index).await {
                tracing::warn!(%error, "webhook sender: consumer failed; starting over");
            }
            if index.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    }))
}

/// What every delivery task shares.
#[derive(Clone)]
struct Sender {
    keys: kv::Store,
    config: Arc<WebhookConfig>,
    in_flight: Arc<Semaphore>,
    per_tenant: Arc<Mutex<HashMap<TenantId, Arc<Semaphore>>>>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Sender {
    fn new(keys: kv::Store, config: Arc<WebhookConfig>) -> Self {
        let tls = crate::auth::jwks::tls_connector()
            .map_err(|error| tracing::warn!(%error, "no TLS for webhooks: https receivers fail"))
            .ok();
        Self {
            keys,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            per_tenant: Arc::default(),
            tls,
            config,
        }
    }

    fn tenant_slots(&self, tenant: &TenantId) -> Arc<Semaphore> {
        let mut slots = self.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.config.max_in_flight_per_tenant.max(1)))
            })
            .clone()
    }
}

async fn run(
    context: &async_nats::jetstream::Context,
    sender: &Sender,
    index: &WeakIndex,
) -> Result<(), String> {
    let stream = context
        .get_stream(names::STREAM_WEBHOOKS)
        .await
        .map_err(|e| e.to_string())?;
    let retries = sender.config.retry_delays_s.len();
    let consumer = stream
        .get_or_create_consumer(
            names::CONSUMER_WEBHOOK_DELIVERY,
            pull::Config {
                durable_name: Some(names::CONSUMER_WEBHOOK_DELIVERY.to_owned()),
                description: Some("mochi-serve: webhook deliveries".to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_deliver: i64::try_from(retries + 1).unwrap_or(i64::MAX),
                max_ack_pending: 1_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(sender.config.max_in_flight.max(1))
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            if index.upgrade().is_none() {
                // This gateway is stopping: hand the delivery back at once.
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return Ok(());
            }
            tokio::spawn(deliver(sender.clone(), message));
        }
        if index.upgrade().is_none() {
            return Ok(());
        }
    }
}

/// One try of one delivery, then its acknowledgement: done, retry later, or give up.
async fn deliver(sender: Sender, message: async_nats::jetstream::Message) {
    let Ok(delivery) = serde_json::from_slice::<Delivery>(&message.payload) else {
        tracing::warn!("unreadable webhook delivery dropped");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let tries = message.info().map_or(1, |info| info.delivered.max(1));
    // Wait for a slot of this tenant (telling JetStream the message is still held), then for
    // one of the gateway's.
    let tenant_slots = sender.tenant_slots(&delivery.tenant);
    let tenant_permit = loop {
        match tokio::time::timeout(HOLD_NOTICE, tenant_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => break permit,
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    let Ok(permit) = sender.in_flight.clone().acquire_owned().await else {
        return;
    };
    let outcome = send(&sender, &delivery).await;
    drop((permit, tenant_permit));
    let job_id = delivery.job_id;
    let ack = match outcome {
        Ok(status) => {
            metrics::record_webhook_delivery("delivered");
            tracing::info!(%job_id, webhook_id = %delivery.id, status, tries, "webhook delivered");
            AckKind::Ack
        }
        Err(Failure::Refused(reason)) => {
            metrics::record_webhook_delivery("refused");
            tracing::warn!(%job_id, webhook_id = %delivery.id, %reason, "webhook target refused; not retried");
            AckKind::Term
        }
        Err(Failure::Failed(reason)) => {
            let next = usize::try_from(tries)
                .ok()
                .and_then(|n| sender.config.retry_delays_s.get(n - 1));
            match next {
                Some(&delay_s) => {
                    metrics::record_webhook_delivery("retried");
                    tracing::info!(%job_id, webhook_id = %delivery.id, %reason, tries, retry_in_s = delay_s, "webhook delivery failed; will retry");
                    AckKind::Nak(Some(Duration::from_secs(delay_s)))
                }
                None => {
                    metrics::record_webhook_delivery("failed");
                    tracing::warn!(%job_id, webhook_id = %delivery.id, %reason, tries, "webhook delivery failed for the last time");
                    AckKind::Term
                }
            }
        }
    };
    if let Err(error) = message.ack_with(ack).await {
        // Unacknowledged: redelivered after ack_wait (a receiver may see it twice; the
        // webhook-id tells).
        tracing::warn!(%job_id, %error, "webhook delivery acknowledgement not sent");
    }
}

/// Why a try did not deliver.
enum Failure {
    /// The target may never be reached: not retried.
    Refused(String),
    /// Worth another try.
    Failed(String),
}

/// Posts `delivery` once: the receiver's status when 2xx.
async fn send(sender: &Sender, delivery: &Delivery) -> Result<u16, Failure> {
    let target = Target::parse(&delivery.url).map_err(|e| Failure::Refused(e.to_string()))?;
    let address =
        target
            .resolve(&sender.config.allow_hosts)
            .await
            .map_err(|error| match error {
                TargetError::Unresolved(_) => Failure::Failed(error.to_string()),
                other => Failure::Refused(other.to_string()),
            })?;
    let secret = secret_of(&sender.keys, &delivery.tenant)
        .await
        .map_err(Failure::Failed)?;
    let timeout = Duration::from_millis(sender.config.timeout_ms.max(1));
    tokio::time::timeout(timeout, post(sender, &target, address, &secret, delivery))
        .await
        .map_err(|_| Failure::Failed(format!("no answer within {} ms", timeout.as_millis())))?
}

async fn post(
    sender: &Sender,
    target: &Target,
    address: std::net::SocketAddr,
    secret: &Secret,
    delivery: &Delivery,
) -> Result<u16, Failure> {
    let failed =
        |what: &str, error: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {error}"));
    // Connect to the address that was checked, never to a second resolution of the name.
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| failed("connect", &e))?;
    if target.https {
        let Some(tls) = &sender.tls else {
            return Err(Failure::Failed("no TLS configuration".to_owned()));
        };
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| Failure::Refused(format!("host: {e}")))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|e| failed("TLS", &e))?;
        exchange(stream, target, secret, delivery).await
    } else {
        exchange(stream, target, secret, delivery).await
    }
}

async fn exchange<S>(
    stream: S,
    target: &Target,
    secret: &Secret,
    delivery: &Delivery,
) -> Result<u16, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed =
        |what: &str, error: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {error}"));
    let (mut request_sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed("HTTP", &e))?;
    let connection = tokio::spawn(connection);
    let timestamp = now_ms() / 1000;
    let request = hyper::Request::post(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "mochi-serve-webhooks")
        .header("webhook-id", delivery.id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            secret.signature(&delivery.id, timestamp, delivery.body.as_bytes()),
        )
        .body(http_body_util::Full::new(axum::body::Bytes::from(
            delivery.body.clone(),
        )))
        .map_err(|e| failed("request", &e))?;
    let response = request_sender
        .send_request(request)
        .await
        .map_err(|e| failed("HTTP", &e))?;
    let status = response.status();
    drop(response);
    drop(request_sender);
    connection.abort();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(Failure::Failed(format!("the receiver answered {status}")))
    }
}
