//! The HTTP API against a real nats-server (no coordinator running unless a test plays one).
#![allow(clippy::unwrap_used, clippy::large_futures)]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::JobView;
use protocol::jetstream::{Resources, connect, ensure_resources};
use protocol::record::{JobEvent, Lease, VideoResult};
use protocol::{
    ErrorBody, ErrorCode, JobId, JobRecord, JobSpec, JobState, Limits, NodeId, TenantId, now_ms,
};
use tower::ServiceExt;

struct Api {
    _server: testkit::NatsServer,
    resources: Resources,
    state: AppState,
}

async fn api() -> Api {
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
    Api {
        _server: server,
        resources,
        state,
    }
}

impl Api {
    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let response = gateway::app(self.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    async fn post(&self, body: &str, key: Option<&str>) -> (StatusCode, Vec<u8>) {
        let mut request =
            Request::post("/v1/videos").header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let (status, _, body) = self
            .send(request.body(Body::from(body.to_owned())).unwrap())
            .await;
        (status, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let (status, _, body) = self
            .send(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        (status, body)
    }
}

fn error(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn accepted_job_is_queued_before_any_coordinator_runs() {
    let api = api().await;
    let (status, body) = api
        .post(r#"{"prompt":"a red fox","num_frames":31}"#, None)
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let view: JobView = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (view.state, view.num_frames, view.width, view.height),
        (JobState::Queued, 31, 848, 480)
    );
    let (status, body) = api.get(&format!("/v1/videos/{}", view.id)).await;
    assert_eq!(status, StatusCode::OK);
    let polled: JobView = serde_json::from_slice(&body).unwrap();
    assert_eq!((polled.id, polled.state), (view.id, JobState::Queued));
}

#[tokio::test]
async fn same_idempotency_key_gives_the_same_job() {
    let api = api().await;
    let (_, first) = api.post(r#"{"prompt":"x"}"#, Some("key-1")).await;
    let (status, second) = api.post(r#"{"prompt":"x"}"#, Some("key-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first: JobView = serde_json::from_slice(&first).unwrap();
    let second: JobView = serde_json::from_slice(&second).unwrap();
    assert_eq!(first.id, second.id);
    let stored = api
        .resources
        .submit
        .clone()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, 1, "the duplicate was stored twice");
    let (_, other) = api.post(r#"{"prompt":"x"}"#, Some("key-2")).await;
    assert_ne!(
        serde_json::from_slice::<JobView>(&other).unwrap().id,
        first.id
    );
}

#[tokio::test]
async fn bad_fields_get_422_naming_the_field_and_the_allowed_values() {
    let api = api().await;
    let cases = [
        (
            r#"{"prompt":"x","width":850,"height":480}"#,
            "width",
            "multiple of 16",
        ),
        (r#"{"prompt":"x","steps":0}"#, "steps", "between 1 and 200"),
        (
            r#"{"prompt":"x","colour":"red"}"#,
            "colour",
            "unknown field",
        ),
        (r#"{"prompt":"x","steps":"many"}"#, "steps", "invalid type"),
        (r#"{"prompt":"   "}"#, "prompt", "must not be empty"),
        (
            r#"{"prompt":"x","num_frames":1000}"#,
            "num_frames",
            "between 1 and 301",
        ),
    ];
    for (body, field, words) in cases {
        let (status, response) = api.post(body, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let error = error(&response).error;
        assert_eq!(error.code, ErrorCode::InvalidField, "{body}");
        assert_eq!(error.field.as_deref(), Some(field), "{body}");
        assert!(error.message.contains(words), "{body}: {}", error.message);
    }
    let (status, response) = api
        .post(r#"{"prompt":"x","duration_s":2,"num_frames":61}"#, None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error(&response).error.code, ErrorCode::ConflictingFields);
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_4xx_with_our_error_body() {
    let api = api().await;
    let (status, body) = api.post(r#"{"prompt":"#, None).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::MalformedRequest)
    );
    let (status, body) = api.post("", None).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::MalformedRequest)
    );
    let huge = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(100_000));
    let (status, body) = api.post(&huge, None).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
    );
    let request = Request::post("/v1/videos")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = api.send(request).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::BAD_REQUEST, ErrorCode::MalformedRequest)
    );
    let (status, body) = api
        .post(r#"{"prompt":"x"}"#, Some("bad key with spaces"))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let api = api().await;
    for uri in [
        format!("/v1/videos/{}", JobId::new()),
        "/v1/videos/not-a-uuid".to_owned(),
        "/v1/videos/x/content".to_owned(),
    ] {
        let (status, body) = api.get(&uri).await;
        assert_eq!(
            (status, error(&body).error.code),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            "{uri}"
        );
    }
    let (status, _) = api.get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn stored_job(api: &Api, state: JobState) -> JobRecord {
    let spec = JobSpec::new("x");
    let shape = spec.validate(&Limits::default()).unwrap();
    let mut record = JobRecord::queued(
        JobId::new(),
        TenantId::default_tenant(),
        spec,
        shape,
        1,
        3,
        now_ms(),
    );
    api.resources.jobs.create(&record).await.unwrap();
    if state != JobState::Queued {
        let lease = Lease {
            node: NodeId::new("n1").unwrap(),
            slot: 0,
            deadline_ms: now_ms() + 60_000,
        };
        record = api
            .resources
            .jobs
            .apply(record.id, &JobEvent::Assigned { lease }, now_ms())
            .await
            .unwrap();
    }
    record
}

#[tokio::test]
async fn content_is_409_before_success_then_served_whole_and_by_range() {
    let api = api().await;
    let record = stored_job(&api, JobState::Assigned).await;
    let (status, body) = api.get(&format!("/v1/videos/{}/content", record.id)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let detail = error(&body).error;
    assert_eq!(detail.code, ErrorCode::NotReady);
    assert!(detail.message.contains("assigned"), "{}", detail.message);

    let video: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let name = format!("{}/1", record.id);
    api.resources
        .videos
        .put(name.as_str(), &mut std::io::Cursor::new(video.clone()))
        .await
        .unwrap();
    let result = VideoResult {
        object_name: name,
        size_bytes: video.len() as u64,
        sha256: "ab".into(),
        duration_ms: 1000,
        num_frames: 31,
        width: 848,
        height: 480,
        fps: 30,
    };
    for event in [
        JobEvent::Started {
            attempt: 1,
            lease_deadline_ms: now_ms() + 60_000,
        },
        JobEvent::EncodingStarted {
            attempt: 1,
            lease_deadline_ms: now_ms() + 60_000,
        },
        JobEvent::Succeeded { attempt: 1, result },
    ] {
        api.resources
            .jobs
            .apply(record.id, &event, now_ms())
            .await
            .unwrap();
    }
    let (status, headers, body) = api
        .send(
            Request::get(format!("/v1/videos/{}/content", record.id))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "video/mp4");
    assert_eq!(body, video);
    let request = Request::get(format!("/v1/videos/{}/content", record.id))
        .header(header::RANGE, "bytes=1000-1999")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = api.send(request).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes 1000-1999/{}", video.len())
    );
    assert_eq!(body, video[1000..2000]);
}

#[tokio::test]
async fn delete_cancels_a_queued_job_and_refuses_a_finished_one() {
    let api = api().await;
    let record = stored_job(&api, JobState::Queued).await;
    let uri = format!("/v1/videos/{}", record.id);
    let (status, _, body) = api
        .send(Request::delete(&uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        serde_json::from_slice::<JobView>(&body).unwrap().state,
        JobState::Cancelled
    );
    let (status, _, body) = api
        .send(Request::delete(&uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::CONFLICT, ErrorCode::Conflict)
    );
}
