//! Shared setup for the gateway tests: the gateway's state over a real nats-server, node
//! heartbeats as the nodes write them, and `GET` requests answered with JSON.
#![allow(dead_code, clippy::unwrap_used, clippy::large_futures)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::jetstream::Resources;
use protocol::messages::{NodeHeartbeat, SlotReport};
use protocol::{NodeId, codec};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// The gateway's state over a test's NATS; the server is killed on drop.
pub struct Gateway {
    pub server: testkit::NatsServer,
    pub resources: Resources,
    pub state: AppState,
}

/// Stores `request` (with its job id) for `tenant` in `MOCHI_SUBMIT` as a gateway before
/// 2026-12-07 did, leaving the record to an intake.
pub async fn submit_as_an_earlier_gateway(
    resources: &Resources,
    tenant: &str,
    request: &protocol::messages::SubmitRequest,
) {
    let id = request.job_id.unwrap().to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    resources
        .context
        .publish_with_headers(
            protocol::names::submit_job_subject(tenant, &id),
            headers,
            codec::to_json(request).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Starts a nats-server (killed when the returned server drops), connects to it and
/// creates the JetStream resources.
pub async fn nats() -> (testkit::NatsServer, async_nats::Client, Resources) {
    testkit::jetstream("test").await
}

/// Starts a nats-server, creates the JetStream resources and the gateway's state on them
/// (test configuration, no metrics recorder).
pub async fn start() -> Gateway {
    let (server, client, resources) = nats().await;
    let state = AppState::new(Config::for_test(), resources.clone(), client, None);
    Gateway {
        server,
        resources,
        state,
    }
}

/// The gateway's state with authentication on (the default configuration on a loopback
/// port), its keys loaded and watches started.
pub async fn start_with_auth(config: Config) -> Gateway {
    let (server, client, resources) = nats().await;
    let mut config = config;
    config.auth.disabled = false;
    let state = AppState::new(config, resources.clone(), client, None);
    state.start().await.unwrap();
    Gateway {
        server,
        resources,
        state,
    }
}

/// Makes a key of `role` for `tenant` and waits until `state` knows it.
pub async fn key(state: &AppState, tenant: &str, role: gateway::auth::Role) -> String {
    let created = gateway::auth::keys::KeyStore::new(state.resources.keys.clone().unwrap())
        .create(protocol::TenantId::new(tenant).unwrap(), role, "test", None)
        .await
        .unwrap();
    let secret = created.secret;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while state.auth.keys().lookup(&secret).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the key watch never delivered the new key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    secret
}

/// What [`succeed`] stores as the thumbnail.
pub const THUMBNAIL: &[u8] = b"\xff\xd8thumbnail\xff\xd9";
/// What [`succeed`] stores as the spritesheet.
pub const SPRITESHEET: &[u8] = b"\xff\xd8spritesheet\xff\xd9";

/// Stores `video` as attempt 1's MP4 of the assigned job `job_id` (and stand-ins for its
/// previews) and runs the job to `succeeded` as its node would (started, encoding,
/// succeeded).
pub async fn succeed(
    resources: &Resources,
    job_id: protocol::JobId,
    video: &[u8],
) -> protocol::JobRecord {
    use protocol::JobEvent;
    let name = format!("{job_id}/1");
    resources
        .videos
        .put(name.as_str(), &mut std::io::Cursor::new(video.to_vec()))
        .await
        .unwrap();
    // Stand-ins for the previews a node stores beside the MP4.
    for (preview, bytes) in [
        (protocol::names::thumbnail_object(&name), THUMBNAIL),
        (protocol::names::spritesheet_object(&name), SPRITESHEET),
    ] {
        resources
            .videos
            .put(preview.as_str(), &mut std::io::Cursor::new(bytes.to_vec()))
            .await
            .unwrap();
    }
    let result = protocol::record::VideoResult {
        object_name: name,
        size_bytes: video.len() as u64,
        sha256: protocol::codec::hex(ring::digest::digest(&ring::digest::SHA256, video).as_ref()),
        duration_ms: 1000,
        num_frames: 31,
        width: 848,
        height: 480,
        fps: 30,
    };
    let deadline = protocol::now_ms() + 60_000;
    let mut record = None;
    for event in [
        JobEvent::Started {
            attempt: 1,
            lease_deadline_ms: deadline,
        },
        JobEvent::EncodingStarted {
            attempt: 1,
            lease_deadline_ms: deadline,
        },
        JobEvent::Succeeded { attempt: 1, result },
    ] {
        record = Some(
            resources
                .jobs
                .apply(job_id, &event, protocol::now_ms())
                .await
                .unwrap(),
        );
    }
    record.unwrap()
}

/// A healthy, idle slot with all of `memory` free.
pub fn slot(slot: u32, gpu_class: &str, memory: u64) -> SlotReport {
    SlotReport {
        slot,
        gpu_class: gpu_class.to_owned(),
        memory_total_bytes: memory,
        memory_free_bytes: memory,
        job: None,
        healthy: true,
        unhealthy_reason: None,
    }
}

/// An accepting node's heartbeat with `slots`.
pub fn heartbeat(node: &str, backend: &str, slots: Vec<SlotReport>) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: NodeId::new(node).unwrap(),
        backend: backend.to_owned(),
        version: "0.1.0".to_owned(),
        started_at_ms: 1,
        sent_at_ms: 2,
        accepting: true,
        slots,
    }
}

/// Writes `beat` to the nodes bucket under `node`, as the node does.
pub async fn put_heartbeat(resources: &Resources, node: &str, beat: &NodeHeartbeat) {
    resources
        .nodes
        .put(node, codec::encode(beat).unwrap().into())
        .await
        .unwrap();
}

/// `GET uri`: asserts 200 and returns the JSON body.
pub async fn get_json<T: DeserializeOwned>(state: &AppState, uri: String) -> T {
    let response = gateway::app(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Sends `request` through the router: status, headers and the whole body.
pub async fn send(
    state: &AppState,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = gateway::app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body.to_vec())
}

/// A client of one tenant's submitter key against a gateway with authentication on.
pub struct Client {
    /// The gateway (shared by the clients of several tenants).
    pub gateway: std::sync::Arc<Gateway>,
    /// The client's API key.
    pub key: String,
}

impl Client {
    /// A gateway with the test configuration and a submitter of tenant `acme`.
    pub async fn new() -> Self {
        Self::with(Config::for_test()).await
    }

    /// A gateway with `config` (authentication on) and a submitter of tenant `acme`.
    pub async fn with(config: Config) -> Self {
        let gateway = start_with_auth(config).await;
        let key = key(&gateway.state, "acme", gateway::auth::Role::Submitter).await;
        Self {
            gateway: std::sync::Arc::new(gateway),
            key,
        }
    }

    /// A submitter of `tenant` on the same gateway.
    pub async fn as_tenant(&self, tenant: &str) -> Self {
        let key = key(&self.gateway.state, tenant, gateway::auth::Role::Submitter).await;
        Self {
            gateway: self.gateway.clone(),
            key,
        }
    }

    /// A request with the client's key.
    pub fn request(&self, method: &str, uri: &str) -> axum::http::request::Builder {
        Request::builder().method(method).uri(uri).header(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {}", self.key),
        )
    }

    /// Sends `request` with `body`: status, headers, body.
    pub async fn send(
        &self,
        request: axum::http::request::Builder,
        body: Body,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        send(&self.gateway.state, request.body(body).unwrap()).await
    }
}
