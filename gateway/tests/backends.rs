//! `GET /v1/backends` against a real nats-server: the backends of the live nodes' heartbeats.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::{BackendView, BackendsView};
use protocol::jetstream::{connect, ensure_resources};
use protocol::messages::{NodeHeartbeat, SlotReport};
use protocol::{NodeId, codec};
use tower::ServiceExt;

fn heartbeat(node: &str, backend: &str, slots: u32) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: NodeId::new(node).unwrap(),
        backend: backend.to_owned(),
        version: "0.1.0".to_owned(),
        started_at_ms: 1,
        sent_at_ms: 2,
        accepting: true,
        slots: (0..slots)
            .map(|slot| SlotReport {
                slot,
                gpu_class: "cpu".to_owned(),
                memory_total_bytes: 1 << 30,
                memory_free_bytes: 1 << 30,
                job: None,
                healthy: true,
                unhealthy_reason: None,
            })
            .collect(),
    }
}

async fn get_backends(state: &AppState) -> BackendsView {
    let response = gateway::app(state.clone())
        .oneshot(Request::get("/v1/backends").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn lists_each_backend_of_the_live_nodes_with_its_nodes_and_slots() {
    let server = testkit::NatsServer::start();
    let nats = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "test").await.unwrap();
    let resources = ensure_resources(client.clone(), &nats.jetstream)
        .await
        .unwrap();
    let state = AppState::new(Config::for_test(), resources.clone(), client, None);
    assert_eq!(get_backends(&state).await.backends, Vec::new());

    let tiny = "mochi:mochi-1-tiny-random";
    for (node, backend, slots) in [("a", tiny, 1), ("b", tiny, 2), ("c", "simulated", 4)] {
        let bytes = codec::encode(&heartbeat(node, backend, slots)).unwrap();
        resources.nodes.put(node, bytes.into()).await.unwrap();
    }
    resources.nodes.put("garbage", "x".into()).await.unwrap();
    assert_eq!(
        get_backends(&state).await.backends,
        vec![
            BackendView {
                backend: "simulated".to_owned(),
                nodes: 1,
                slots: 4
            },
            BackendView {
                backend: tiny.to_owned(),
                nodes: 2,
                slots: 3
            },
        ]
    );
}
