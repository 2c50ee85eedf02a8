//! `/metrics` with the process-wide Prometheus recorder (its own test binary: one recorder
//! per process).
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::JobId;
use tower::ServiceExt;

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_submissions() {
    let (_server, client, resources) = common::nats().await;
    let handle = gateway::install_metrics_recorder().unwrap();
    gateway::metrics::describe();
    let app = gateway::app(AppState::new(
        Config::for_test(),
        resources,
        client,
        Some(handle),
    ));
    let (status, _) = send(
        &app,
        Request::get(format!("/v1/videos/{}", JobId::new()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        &app,
        Request::post("/v1/videos")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"prompt":"x"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, text) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        r#"mochi_gateway_requests_total{route="/v1/videos/{id}",method="GET",status="404"} 1"#,
        r#"mochi_gateway_requests_total{route="/v1/videos",method="POST",status="202"} 1"#,
        r#"mochi_gateway_jobs_submitted_total{duplicate="false"} 1"#,
        "mochi_gateway_submit_seconds",
    ] {
        assert!(text.contains(expected), "{expected} missing in\n{text}");
    }
}
