//! `GET /v1/backends` against a real nats-server: the backends of the live nodes' heartbeats.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use gateway::AppState;
use protocol::api::{BackendView, BackendsView};
use protocol::messages::NodeHeartbeat;

fn heartbeat(node: &str, backend: &str, slots: u32) -> NodeHeartbeat {
    let slots = (0..slots)
        .map(|slot| common::slot(slot, "cpu", 1 << 30))
        .collect();
    common::heartbeat(node, backend, slots)
}

async fn get_backends(state: &AppState) -> BackendsView {
    common::get_json(state, "/v1/backends".to_owned()).await
}

#[tokio::test]
async fn lists_each_backend_of_the_live_nodes_with_its_nodes_and_slots() {
    let common::Gateway {
        server: _server,
        resources,
        state,
    } = common::start().await;
    assert_eq!(get_backends(&state).await.backends, Vec::new());

    let tiny = "mochi:mochi-1-tiny-random";
    for (node, backend, slots) in [("a", tiny, 1), ("b", tiny, 2), ("c", "simulated", 4)] {
        common::put_heartbeat(&resources, node, &heartbeat(node, backend, slots)).await;
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
