//! `GET /v1/videos/{id}` shows a queued job's position and ETA from the scheduler's
//! `mochi_queue` bucket, and nothing once the job left the queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::large_futures)]

use async_nats::jetstream::kv;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::JobView;
use protocol::jetstream::{connect, ensure_resources};
use protocol::queue::QueueInfo;
use protocol::record::{JobEvent, Lease};
use protocol::{JobId, JobRecord, JobSpec, Limits, NodeId, TenantId, names, now_ms};
use tower::ServiceExt;

async fn get(state: &AppState, id: JobId) -> JobView {
    let response = gateway::app(state.clone())
        .oneshot(
            Request::get(format!("/v1/videos/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn a_queued_job_shows_its_position_and_eta() {
    let server = testkit::NatsServer::start();
    let nats = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "test").await.unwrap();
    let resources = Box::pin(ensure_resources(client.clone(), &nats.jetstream))
        .await
        .unwrap();
    let state = AppState::new(Config::for_test(), resources.clone(), client, None);
    let spec = JobSpec::new("x");
    let shape = spec.validate(&Limits::default()).unwrap();
    let record = JobRecord::queued(
        JobId::new(),
        TenantId::default_tenant(),
        spec,
        shape,
        1,
        3,
        now_ms(),
    );
    resources.jobs.create(&record).await.unwrap();
    assert_eq!(get(&state, record.id).await.queue, None, "no bucket yet");

    let bucket = resources
        .context
        .create_key_value(kv::Config {
            bucket: names::BUCKET_QUEUE.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let info = QueueInfo {
        position: 2,
        queued: 5,
        lane: "short".to_owned(),
        eta_start_ms: Some(now_ms() + 30_000),
        eta_finish_ms: Some(now_ms() + 90_000),
        updated_at_ms: now_ms(),
    };
    bucket
        .put(
            record.id.to_string(),
            serde_json::to_vec(&info).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(get(&state, record.id).await.queue, Some(info));

    let lease = Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    resources
        .jobs
        .apply(record.id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap();
    assert_eq!(
        get(&state, record.id).await.queue,
        None,
        "a placed job has no queue position even if a stale entry remains"
    );
}
