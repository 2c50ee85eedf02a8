//! The HTTP API against a real nats-server (no coordinator running unless a test plays one).
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::JobView;
use protocol::jetstream::Resources;
use protocol::messages::{Cancel, SubmitRequest};
use protocol::record::{JobEvent, Lease};
use protocol::{
    ErrorBody, ErrorCode, JobId, JobRecord, JobSpec, JobState, Limits, NodeId, TenantId, codec,
    names, now_ms,
};
use tower::ServiceExt;

struct Api {
    _server: testkit::NatsServer,
    resources: Resources,
    client: async_nats::Client,
    state: AppState,
}

async fn api() -> Api {
    api_with(Config::for_test()).await
}

async fn api_with(config: Config) -> Api {
    let (server, client, resources) = common::nats().await;
    let state = AppState::new(config, resources.clone(), client.clone(), None);
    Api {
        _server: server,
        resources,
        client,
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

    async fn delete(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let (status, _, body) = self
            .send(Request::delete(uri).body(Body::empty()).unwrap())
            .await;
        (status, body)
    }

    /// `POST {job_uri}/cancel`.
    async fn cancel(&self, job_uri: &str) -> (StatusCode, Vec<u8>) {
        let (status, _, body) = self
            .send(
                Request::post(format!("{job_uri}/cancel"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        (status, body)
    }
}

fn view(body: &[u8]) -> JobView {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not a job ({e}): {}", String::from_utf8_lossy(body)))
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
    assert_eq!(view.links.status, format!("/v1/videos/{}", view.id));
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
    // The record is the submission: written once, nothing left for an intake.
    let mut records = api
        .resources
        .context
        .get_stream(format!("KV_{}", names::BUCKET_JOBS))
        .await
        .unwrap();
    let stored = records.info().await.unwrap().state.messages;
    assert_eq!(stored, 1, "the duplicate was stored twice");
    let (record, _) = api.resources.jobs.get(first.id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.idempotency_key.as_deref()),
        (JobState::Queued, Some("key-1"))
    );
    let waiting = api
        .resources
        .submit
        .clone()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(waiting, 0, "the gateway also published a submission");
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
        (r#"{"prompt":"   "}"#, "prompt", "must not be blank"),
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
    let unknown = JobId::new();
    for uri in [
        format!("/v1/videos/{unknown}"),
        format!("/v1/videos/{unknown}/content"),
        "/v1/videos/not-a-uuid".to_owned(),
        "/v1/videos/x/content".to_owned(),
        "/v1/videos/%FF%FE".to_owned(),
    ] {
        let (status, body) = api.get(&uri).await;
        assert_eq!(
            (status, error(&body).error.code),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            "{uri}"
        );
    }
    for uri in [format!("/v1/videos/{unknown}"), "/v1/videos/12".to_owned()] {
        let (status, body) = api.delete(&uri).await;
        assert_eq!(
            (status, error(&body).error.code),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            "DELETE {uri}"
        );
    }
    let (status, body) = api.get("/nowhere").await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
    let request = Request::put("/v1/videos").body(Body::empty()).unwrap();
    let (status, _, body) = api.send(request).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
    );
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
    common::succeed(&api.resources, record.id, &video).await;
    let uri = format!("/v1/videos/{}/content", record.id);
    let (status, headers, body) = api
        .send(Request::get(&uri).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "video/mp4");
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(headers[header::CONTENT_LENGTH], video.len().to_string());
    assert!(
        body == video,
        "the served bytes differ from the stored video"
    );
    let ranged = |range: &str| {
        Request::get(&uri)
            .header(header::RANGE, range)
            .body(Body::empty())
            .unwrap()
    };
    let (status, headers, body) = api.send(ranged("bytes=1000-1999")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes 1000-1999/{}", video.len())
    );
    assert_eq!(headers[header::CONTENT_LENGTH], "1000");
    assert!(body == video[1000..2000], "wrong slice for 1000-1999");
    // A start past the object store's first chunk, and a suffix range.
    let (status, _, body) = api.send(ranged("bytes=150000-")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(body == video[150_000..], "wrong slice for 150000-");
    let (status, headers, body) = api.send(ranged("bytes=-10")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes 199990-199999/{}", video.len())
    );
    assert_eq!(body, video[199_990..]);
    let (status, headers, _) = api.send(ranged("bytes=200000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        headers[header::CONTENT_RANGE],
        format!("bytes */{}", video.len())
    );
}

#[tokio::test]
async fn content_of_a_cancelled_job_is_a_conflict() {
    let api = api().await;
    let record = stored_job(&api, JobState::Queued).await;
    let (status, _) = api.cancel(&format!("/v1/videos/{}", record.id)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.get(&format!("/v1/videos/{}/content", record.id)).await;
    let detail = error(&body).error;
    assert_eq!(
        (status, detail.code),
        (StatusCode::CONFLICT, ErrorCode::Conflict)
    );
    assert!(detail.message.contains("cancelled"), "{}", detail.message);
}

#[tokio::test]
async fn cancel_cancels_a_queued_job_and_refuses_a_finished_one() {
    let api = api().await;
    let record = stored_job(&api, JobState::Queued).await;
    let uri = format!("/v1/videos/{}", record.id);
    let (status, body) = api.cancel(&uri).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let cancelled = view(&body);
    assert_eq!(cancelled.state, JobState::Cancelled);
    // OpenAI's status for it, with the exact state beside it.
    assert_eq!(cancelled.status, protocol::api::VideoStatus::Failed);
    assert_eq!(cancelled.error.map(|e| e.code), Some(ErrorCode::Cancelled));
    let (status, body) = api.cancel(&uri).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::CONFLICT, ErrorCode::Conflict)
    );
}

#[tokio::test]
async fn cancel_right_after_submit_cancels_the_queued_record() {
    let api = api().await;
    let (status, body) = api.post(r#"{"prompt":"x"}"#, Some("cancel-me")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = view(&body).id;
    let uri = format!("/v1/videos/{id}");
    let (status, body) = api.cancel(&uri).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(view(&body).state, JobState::Cancelled);
    // A retried submission with the same key shows the job as it is now.
    let (status, body) = api.post(r#"{"prompt":"x"}"#, Some("cancel-me")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let again = view(&body);
    assert_eq!((again.id, again.state), (id, JobState::Cancelled));
}

/// A gateway before 2026-12-07 stored a submission in `MOCHI_SUBMIT` (one subject per job)
/// and left its record to the intake: during a rolling upgrade such a job is shown, and
/// cancelled, before a coordinator takes it in.
#[tokio::test]
async fn a_submission_an_earlier_gateway_left_for_the_intake_is_shown_and_cancelled() {
    let api = api().await;
    let tenant = TenantId::default_tenant();
    let id = JobId::derived(tenant.as_str(), "cancel-me");
    let request = SubmitRequest {
        job_id: Some(id),
        spec: JobSpec::new("x"),
        idempotency_key: Some("cancel-me".to_owned()),
        remixed_from: None,
        webhook: None,
    };
    common::submit_as_an_earlier_gateway(&api.resources, tenant.as_str(), &request).await;
    let uri = format!("/v1/videos/{id}");
    let (status, body) = api.get(&uri).await;
    assert_eq!(
        (status, view(&body).state),
        (StatusCode::OK, JobState::Queued)
    );
    let (status, body) = api.cancel(&uri).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(view(&body).state, JobState::Cancelled);
    let (status, body) = api.get(&uri).await;
    assert_eq!(
        (status, view(&body).state),
        (StatusCode::OK, JobState::Cancelled)
    );
    // The intake's create-only write then leaves the cancelled record alone.
    let spec = JobSpec::new("x");
    let shape = spec.validate(&Limits::default()).unwrap();
    let intake = JobRecord::queued(id, TenantId::default_tenant(), spec, shape, 1, 3, now_ms());
    assert!(!api.resources.jobs.create(&intake).await.unwrap());
    // A retried submission with the same key shows the job as it is now.
    let (status, body) = api.post(r#"{"prompt":"x"}"#, Some("cancel-me")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let again = view(&body);
    assert_eq!((again.id, again.state), (id, JobState::Cancelled));
}

#[tokio::test]
async fn cancel_of_a_job_on_a_node_tells_the_node() {
    let api = api().await;
    let record = stored_job(&api, JobState::Assigned).await;
    let mut cancels = api
        .client
        .subscribe(names::node_cancel_subject("n1"))
        .await
        .unwrap();
    api.client.flush().await.unwrap();
    let (status, body) = api.cancel(&format!("/v1/videos/{}", record.id)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(view(&body).state, JobState::Cancelled);
    let message = tokio::time::timeout(Duration::from_secs(10), cancels.next())
        .await
        .expect("no cancel message within 10 s")
        .unwrap();
    let cancel: Cancel = codec::decode(&message.payload).unwrap();
    assert_eq!(
        cancel,
        Cancel {
            job_id: record.id,
            attempt: 1
        }
    );
    let stored = api.resources.jobs.get(record.id).await.unwrap().unwrap().0;
    assert_eq!((stored.state, stored.lease), (JobState::Cancelled, None));
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_get_503_at_once() {
    let api = api_with(Config {
        max_concurrent_requests: 1,
        ..Config::for_test()
    })
    .await;
    let app = gateway::app(api.state.clone());
    // A submission whose body does not end until `end` fires holds the only slot; `reading`
    // fires once the handler is reading it (so it holds the slot by then).
    let (reading_tx, reading) = tokio::sync::oneshot::channel::<()>();
    let (end, end_rx) = tokio::sync::oneshot::channel::<()>();
    let body = futures::stream::once(async move {
        let _ = reading_tx.send(());
        let _ = end_rx.await;
        Ok::<_, std::io::Error>(Bytes::new())
    });
    let held = Request::post("/v1/videos")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap();
    let holder = tokio::spawn(app.clone().oneshot(held));
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("the held request never reached its handler")
        .unwrap();
    let send = |app: axum::Router, uri: String| async move {
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    };
    let probe = format!("/v1/videos/{}", JobId::new());
    let (status, body) = send(app.clone(), probe.clone()).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
    );
    // Probes stay outside the limit: a busy gateway is not a dead one.
    let (status, _) = send(app.clone(), "/healthz".to_owned()).await;
    assert_eq!(status, StatusCode::OK);
    end.send(()).unwrap();
    let response = holder.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "the empty body");
    let (status, _) = send(app, probe).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the slot was not given back");
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let api = api().await;
    assert_eq!(api.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(api.get("/readyz").await.0, StatusCode::OK);
    // This state has no Prometheus handle.
    let (status, body) = api.get("/metrics").await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn readiness_fails_once_nats_is_gone() {
    let Api {
        _server: server,
        state,
        ..
    } = api().await;
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = gateway::app(state.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(error(&body).error.code, ErrorCode::Unavailable);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "still ready 10 s after NATS stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = gateway::app(state)
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the process is still up");
}

#[tokio::test]
async fn server_binds_serves_http_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let api = api().await;
    let server = gateway::Server::bind(
        Config::for_test(),
        api.resources.clone(),
        api.client.clone(),
        None,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server did not stop within 10 s")
        .unwrap()
        .unwrap();
}
