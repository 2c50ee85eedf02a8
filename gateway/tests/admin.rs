//! The admin API against a real nats-server: dead letters are listed and re-driven only
//! with an admin key.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::auth::Role;
use gateway::routes::admin::DeadList;
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::JobView;
use protocol::jetstream::Resources;
use protocol::record::{JobEvent, Lease};
use protocol::{JobRecord, JobSpec, JobState, Limits, NodeId, TenantId, codec, names, now_ms};
use tower::ServiceExt;

/// A gateway with authentication on, and an admin key of tenant `default`.
async fn setup() -> (testkit::NatsServer, Resources, AppState, String) {
    let gateway = common::start_with_auth(Config::for_test()).await;
    let admin = common::key(&gateway.state, "default", Role::Admin).await;
    (gateway.server, gateway.resources, gateway.state, admin)
}

async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = gateway::app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

fn request(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).unwrap()
}

/// A job that died after three lost leases, copied to the dead-letter stream as the
/// coordinator's keeper does.
async fn dead_job(resources: &Resources) -> JobRecord {
    let spec = JobSpec::new("x");
    let shape = spec.validate(&Limits::default()).unwrap();
    let record = JobRecord::queued(
        protocol::JobId::new(),
        TenantId::default_tenant(),
        spec,
        shape,
        1,
        3,
        now_ms(),
    );
    resources.jobs.create(&record).await.unwrap();
    let mut record = record;
    for attempt in 1..=3 {
        let lease = Lease {
            node: NodeId::new("n1").unwrap(),
            slot: 0,
            deadline_ms: now_ms(),
        };
        resources
            .jobs
            .apply(record.id, &JobEvent::Assigned { lease }, now_ms())
            .await
            .unwrap();
        let expired = JobEvent::LeaseExpired {
            attempt,
            retry_at_ms: 0,
        };
        record = resources
            .jobs
            .apply(record.id, &expired, now_ms())
            .await
            .unwrap();
    }
    assert_eq!(record.state, JobState::Dead);
    let payload = codec::to_json(&record).unwrap();
    resources
        .context
        .publish(names::dlq_subject(&record.id.to_string()), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    record
}

#[tokio::test]
async fn admin_api_refuses_other_roles_and_bad_keys() {
    let (_server, _resources, state, _admin) = setup().await;
    let submitter = common::key(&state, "default", Role::Submitter).await;
    let (status, _) = send(&state, request("GET", "/v1/admin/dead", Some(&submitter))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(&state, request("GET", "/v1/admin/dead", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(&state, request("GET", "/v1/admin/dead", Some("wrong"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn dead_jobs_are_listed_and_re_driven_once() {
    let (_server, resources, state, admin) = setup().await;
    let token = admin.as_str();
    let dead = dead_job(&resources).await;
    let (status, body) = send(&state, request("GET", "/v1/admin/dead", Some(token))).await;
    assert_eq!(status, StatusCode::OK);
    let list: DeadList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.dead.len(), 1);
    assert_eq!(list.dead[0].id, dead.id);
    assert_eq!(list.dead[0].failed_attempts, 3);
    assert_eq!(list.dead[0].state_now, Some(JobState::Dead));

    let uri = format!("/v1/admin/dead/{}/redrive", dead.id);
    let (status, body) = send(&state, request("POST", &uri, Some(token))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let view: JobView = serde_json::from_slice(&body).unwrap();
    assert_eq!(view.state, JobState::Queued);
    let (stored, _) = resources.jobs.get(dead.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.failed_attempts),
        (JobState::Queued, 0)
    );

    let (status, _) = send(&state, request("POST", &uri, Some(token))).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a queued job is not re-driven"
    );
    let (_, body) = send(&state, request("GET", "/v1/admin/dead", Some(token))).await;
    let list: DeadList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.dead[0].state_now, Some(JobState::Queued));
    let missing = format!("/v1/admin/dead/{}/redrive", protocol::JobId::new());
    let (status, _) = send(&state, request("POST", &missing, Some(token))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
