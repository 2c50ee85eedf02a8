//! Admission at submit against a real nats-server: once a node's heartbeat shows the fleet's
//! slots, a job none of them can hold is refused with 422 `job_too_large` and a sentence
//! saying what it needs, what the largest slot has and what would fit; a job that fits is
//! accepted; while no node has been seen every job is accepted.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::AppState;
use http_body_util::BodyExt;
use protocol::{ErrorBody, ErrorCode};
use tower::ServiceExt;

/// 720p for 10 s: about 70 GB, more than an L40 has.
const TOO_LARGE: &str = r#"{"prompt":"a lighthouse","resolution":"720p","duration_s":10}"#;
/// 480p for 1 s: fits an L40.
const FITS: &str = r#"{"prompt":"a lighthouse","resolution":"480p","duration_s":1}"#;

async fn submit(state: &AppState, body: &'static str) -> (StatusCode, Vec<u8>) {
    let response = gateway::app(state.clone())
        .oneshot(
            Request::post("/v1/videos")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

/// A node with one slot of `class` and `memory` writes its heartbeat; waits until the
/// gateway's fleet shows `slots` slots.
async fn announce(gateway: &common::Gateway, node: &str, class: &str, memory: u64, slots: usize) {
    let beat = common::heartbeat(node, "simulated", vec![common::slot(0, class, memory)]);
    common::put_heartbeat(&gateway.resources, node, &beat).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.state.fleet.len() < slots {
        assert!(
            Instant::now() < deadline,
            "the heartbeat never reached the fleet"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_job_no_known_slot_holds_is_refused_at_submit_with_what_would_fit() {
    let gateway = common::start().await;
    let state = &gateway.state;
    let _watch = state.fleet.watch(gateway.resources.nodes.clone());

    // No node seen yet: accepted, the coordinator decides once nodes appear.
    let (status, body) = submit(state, TOO_LARGE).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );

    announce(&gateway, "node-l40", "l40-48gb", 45 << 30, 1).await;

    let (status, body) = submit(state, TOO_LARGE).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(error.error.code, ErrorCode::JobTooLarge);
    let message = error.error.message;
    println!("{message}");
    assert!(message.contains("needs about"), "{message}");
    assert!(
        message.contains("the largest slot (l40-48gb) has 48.3 GB"),
        "{message}"
    );
    assert!(
        message.contains("frames") && message.contains("at this resolution"),
        "{message}"
    );
    assert!(message.contains("at this length"), "{message}");

    let (status, body) = submit(state, FITS).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A larger node joins: the same job now fits and is accepted.
    announce(&gateway, "node-h200", "h200-141gb", 139 << 30, 2).await;
    let (status, body) = submit(state, TOO_LARGE).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
}
