//! Webhooks against a real nats-server and a receiver in the test: every event of a job
//! arrives signed (checked here and by the Standard Webhooks reference library), the final
//! event is retried after the receiver answered 500 twice, by a new gateway when the first
//! stopped in between, and a target that resolves to a loopback address not allowed by the
//! operator is never reached.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use gateway::auth::Role;
use gateway::{AppState, Config};
use protocol::record::{JobEvent, Lease, Progress, Webhook, WebhookEvent};
use protocol::{JobId, JobRecord, JobSpec, Limits, NodeId, TenantId, names, now_ms};

#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answers 500 to the first this-many tries of the final event.
    failures_left: Arc<Mutex<u32>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let completed = body.contains("\"video.completed\"");
    receiver.received.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
    });
    let mut left = receiver.failures_left.lock().unwrap();
    if completed && *left > 0 {
        *left -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

async fn serve(receiver: Receiver) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn config() -> Config {
    let mut config = Config::for_test();
    config.webhooks.allow_hosts = vec!["127.0.0.1".to_owned()];
    config.webhooks.retry_delays_s = vec![1, 1, 1];
    config.webhooks.progress_interval_ms = 0;
    config
}

async fn consumers_ready(state: &AppState) {
    let context = &state.resources.context;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = context
            .get_stream(names::kv_stream(names::BUCKET_JOBS))
            .await
            .unwrap();
        let deliveries = context.get_stream(names::STREAM_WEBHOOKS).await.unwrap();
        if events
            .consumer_info(names::CONSUMER_WEBHOOK_EVENTS)
            .await
            .is_ok()
            && deliveries
                .consumer_info(names::CONSUMER_WEBHOOK_DELIVERY)
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook consumers never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn job_with_hook(state: &AppState, url: String) -> JobRecord {
    let spec = JobSpec::new("a heron");
    let shape = spec.validate(&Limits::default()).unwrap();
    let mut record = JobRecord::queued(
        JobId::new(),
        TenantId::new("acme").unwrap(),
        spec,
        shape,
        7,
        3,
        now_ms(),
    );
    record.webhook = Some(Webhook {
        url,
        events: WebhookEvent::ALL.to_vec(),
    });
    state.resources.jobs.create(&record).await.unwrap();
    record
}

/// Runs `job` as a node would: assigned, started, `steps` steps, encoded, succeeded.
async fn run_job(state: &AppState, job: &JobRecord, steps: u32) {
    let jobs = &state.resources.jobs;
    let lease = Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    jobs.apply(job.id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap();
    let deadline = now_ms() + 60_000;
    jobs.apply(
        job.id,
        &JobEvent::Started {
            attempt: 1,
            lease_deadline_ms: deadline,
        },
        now_ms(),
    )
    .await
    .unwrap();
    for step in 1..=steps {
        // Steps seconds apart in real runs; here far enough apart that each revision is
        // read before the next replaces it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let progress = Progress {
            step,
            total_steps: steps,
        };
        jobs.apply(
            job.id,
            &JobEvent::Progressed {
                attempt: 1,
                progress,
                lease_deadline_ms: deadline,
            },
            now_ms(),
        )
        .await
        .unwrap();
    }
    let result = protocol::record::VideoResult {
        object_name: names::video_object(&job.id.to_string(), 1),
        size_bytes: 3,
        sha256: "ab".into(),
        duration_ms: 1000,
        num_frames: 31,
        width: 848,
        height: 480,
        fps: 30,
    };
    for event in [
        JobEvent::EncodingStarted {
            attempt: 1,
            lease_deadline_ms: deadline,
        },
        JobEvent::Succeeded { attempt: 1, result },
    ] {
        jobs.apply(job.id, &event, now_ms()).await.unwrap();
    }
}

async fn wait_for(receiver: &Receiver, what: &str, done: impl Fn(&[Received]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if done(&receiver.received.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            receiver.received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_the_last_survives_failures_and_a_restart() {
    let receiver = Receiver {
        failures_left: Arc::new(Mutex::new(2)),
        ..Receiver::default()
    };
    let addr = serve(receiver.clone()).await;
    let first = common::start_with_auth(config()).await;
    consumers_ready(&first.state).await;
    let key = common::key(&first.state, "acme", Role::Submitter).await;
    let (status, _, body) = common::send(
        &first.state,
        Request::get("/v1/webhooks/secret")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let secret: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let secret = secret["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    let job = job_with_hook(
        &first.state,
        format!("http://127.0.0.1:{}/hook", addr.port()),
    )
    .await;
    run_job(&first.state, &job, 4).await;
    // The first try of the final event fails; the gateway that made it stops, a new one
    // takes over the retry.
    wait_for(&receiver, "the final event's first try", |got| {
        got.iter().any(|r| r.body.contains("video.completed"))
    })
    .await;
    let resources = first.resources.clone();
    let server = first.server;
    drop(first.state);
    let second = AppState::new(
        config(),
        resources.clone(),
        resources_client(&resources),
        None,
    );
    second.start().await.unwrap();
    wait_for(&receiver, "the final event, after two failures", |got| {
        got.iter()
            .filter(|r| r.body.contains("video.completed"))
            .count()
            == 3
    })
    .await;

    let got = receiver.received.lock().unwrap().clone();
    let kinds: Vec<String> = got
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("video.started"),
        "{kinds:?}"
    );
    let steps = kinds.iter().filter(|k| *k == "video.progress").count();
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(steps, 4, "one progress event per step: {ids:?}");
    let finals: Vec<&Received> = got
        .iter()
        .filter(|r| r.body.contains("video.completed"))
        .collect();
    assert!(
        finals.iter().all(|r| r.id == finals[0].id),
        "webhook-id is stable across retries"
    );
    // Every delivery verifies with our own code and with the reference library.
    let ours = gateway::webhooks::sign::Secret::parse(&secret).unwrap();
    for r in &got {
        let timestamp: u64 = r.timestamp.parse().unwrap();
        assert_eq!(
            ours.signature(&r.id, timestamp, r.body.as_bytes()),
            r.signature
        );
    }
    verify_with_reference_library(&secret, &got);
    drop(second);
    drop(server);
}

fn resources_client(resources: &protocol::jetstream::Resources) -> async_nats::Client {
    resources.context.client()
}

/// Runs the Standard Webhooks reference library (PyPI `standardwebhooks`, in `.venv`) on
/// every delivery.
fn verify_with_reference_library(secret: &str, got: &[Received]) {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let deliveries: Vec<serde_json::Value> = got
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "timestamp": r.timestamp, "signature": r.signature, "body": r.body}))
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, deliveries = sys.argv[1], json.loads(sys.stdin.read())
hook = Webhook(secret)
for d in deliveries:
    headers = {"webhook-id": d["id"], "webhook-timestamp": d["timestamp"], "webhook-signature": d["signature"]}
    hook.verify(d["body"], headers)
print(f"verified {len(deliveries)}")
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(".venv/bin/python: run scripts/install-deps.sh");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&deliveries).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the reference library refused a delivery: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("verified {}", got.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_loopback_is_never_reached() {
    let receiver = Receiver::default();
    let addr = serve(receiver.clone()).await;
    let gateway = common::start_with_auth(config()).await;
    consumers_ready(&gateway.state).await;
    // `localhost` is not on the allow-list (only 127.0.0.1 is): refused after resolution.
    let refused = job_with_hook(
        &gateway.state,
        format!("http://localhost:{}/hook", addr.port()),
    )
    .await;
    run_job(&gateway.state, &refused, 1).await;
    // A job after it is delivered, so the refused one had its chance first.
    let allowed = job_with_hook(
        &gateway.state,
        format!("http://127.0.0.1:{}/hook", addr.port()),
    )
    .await;
    run_job(&gateway.state, &allowed, 1).await;
    wait_for(&receiver, "the allowed job's final event", |got| {
        got.iter().any(|r| r.body.contains("video.completed"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received.lock().unwrap().clone();
    assert!(
        got.iter()
            .all(|r| !r.body.contains(&refused.id.to_string())),
        "a refused target was reached: {got:?}"
    );
}
