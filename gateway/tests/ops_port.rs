//! The operations port of the roles without an API (coordinator, gpu-node), as Kubernetes'
//! probes and Prometheus meet it: `/healthz`, `/readyz` following the NATS connection,
//! `/metrics`, and our JSON body for anything else.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_nats_connection_and_unknown_paths_get_our_json_404() {
    let (server, client, _resources) = common::nats().await;
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(gateway::serve_metrics(
        addr,
        handle,
        client.clone(),
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let get = |path: &str| {
        let request = http.get(format!("{base}{path}"));
        async move {
            for _ in 0..50 {
                if let Ok(response) = request.try_clone().unwrap().send().await {
                    let status = response.status().as_u16();
                    return (status, response.text().await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the operations port never answered");
        }
    };

    assert_eq!(get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get("/readyz").await, (200, "ready".to_owned()));
    assert_eq!(get("/metrics").await.0, 200);
    let (status, body) = get("/v1/videos").await;
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/readyz")
    );
    let response = http.post(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // NATS goes away: not ready (503 with our body), still alive.
    drop(server);
    let mut not_ready = None;
    for _ in 0..100 {
        let (status, body) = get("/readyz").await;
        if status == 503 {
            not_ready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body: serde_json::Value =
        serde_json::from_str(&not_ready.expect("readyz never said 503")).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("NATS"));
    assert_eq!(get("/healthz").await, (200, "ok".to_owned()));

    shutdown.cancel();
    served.await.unwrap().unwrap();
}
