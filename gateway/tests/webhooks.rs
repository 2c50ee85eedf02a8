//! Webhooks against a real nats-server and a receiver in the test: every event of a job
//! arrives signed (checked here and by the Standard Webhooks reference library), the final
//! event is retried after the receiver answered 500 twice, by a new gateway when the first
//! stopped in between, and a target that resolves to a loopback address not allowed by the
//! operator is never reached. One gateway at a time reads the records (the source lease): a
//! standby takes over when it stops, one that reads everything again queues nothing twice,
//! and the first one after an upgrade starts where the shared consumer of earlier versions
//! stopped.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv::Operation;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use gateway::auth::Role;
use gateway::webhooks::source::Cursor;
use gateway::{AppState, Config};
use protocol::jetstream::Resources;
use protocol::record::{JobEvent, Lease, Progress, Webhook, WebhookEvent};
use protocol::{JobId, JobRecord, JobSpec, Limits, NodeId, TenantId, codec, names, now_ms};

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
    config.webhooks.source_lease_ms = 1_000;
    config
}

/// Waits until some gateway reads the records (it saved its first position) and the
/// delivery consumer exists.
async fn consumers_ready(state: &AppState) {
    let context = &state.resources.context;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let deliveries = context.get_stream(names::STREAM_WEBHOOKS).await.unwrap();
        let cursor = state
            .resources
            .leader
            .entry(names::KEY_WEBHOOK_CURSOR)
            .await
            .unwrap();
        if cursor.is_some()
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
    let record = hooked(url);
    state.resources.jobs.create(&record).await.unwrap();
    record
}

/// A queued job whose webhook asks for every event.
fn hooked(url: String) -> JobRecord {
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
    record
}

/// Runs `job` as a node would: assigned, started, `steps` steps, encoded, succeeded.
async fn run_job(resources: &Resources, job: &JobRecord, steps: u32) {
    let jobs = &resources.jobs;
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
    run_job(&first.resources, &job, 4).await;
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
    run_job(&gateway.resources, &refused, 1).await;
    // A job after it is delivered, so the refused one had its chance first.
    let allowed = job_with_hook(
        &gateway.state,
        format!("http://127.0.0.1:{}/hook", addr.port()),
    )
    .await;
    run_job(&gateway.resources, &allowed, 1).await;
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

/// The webhook ids `receiver` got, each with how many times.
fn counts(receiver: &Receiver) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for got in receiver.received.lock().unwrap().iter() {
        *counts.entry(got.id.clone()).or_insert(0) += 1;
    }
    counts
}

/// Who holds the webhook source's lease, if anyone.
async fn holder(resources: &Resources) -> Option<String> {
    let entry = resources
        .leader
        .entry(names::KEY_WEBHOOK_SOURCE)
        .await
        .unwrap()
        .filter(|entry| entry.operation == Operation::Put)?;
    let lease: protocol::lease::LeaseRecord = codec::from_json(&entry.value).unwrap();
    Some(lease.holder)
}

/// The webhook source's saved position.
async fn saved_cursor(resources: &Resources) -> Cursor {
    let entry = resources
        .leader
        .entry(names::KEY_WEBHOOK_CURSOR)
        .await
        .unwrap()
        .unwrap();
    codec::from_json(&entry.value).unwrap()
}

/// Saves a position for the webhook source, as a holder that is gone would have.
async fn save_cursor(resources: &Resources, next_sequence: u64) {
    let cursor = Cursor {
        next_sequence,
        holder: "gone".to_owned(),
        saved_at_ms: now_ms(),
    };
    resources
        .leader
        .put(
            names::KEY_WEBHOOK_CURSOR,
            codec::to_json(&cursor).unwrap().into(),
        )
        .await
        .unwrap();
}

/// Waits until `job`'s final event arrived.
async fn completed(receiver: &Receiver, job: &JobRecord) {
    let id = format!("msg_{}_completed", job.id);
    wait_for(receiver, &id.clone(), move |got| {
        got.iter().any(|r| r.id == id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_the_source_and_reading_again_queues_nothing_twice() {
    let receiver = Receiver::default();
    let addr = serve(receiver.clone()).await;
    let url = format!("http://127.0.0.1:{}/hook", addr.port());
    let first = common::start_with_auth(config()).await;
    consumers_ready(&first.state).await;
    let resources = first.resources.clone();
    let gateway = |resources: &Resources| {
        AppState::new(
            config(),
            resources.clone(),
            resources_client(resources),
            None,
        )
    };
    let standby = gateway(&resources);
    standby.start().await.unwrap();
    let one = job_with_hook(&first.state, url.clone()).await;
    run_job(&resources, &one, 1).await;
    completed(&receiver, &one).await;

    // The holder stops; the standby takes over and reads on from where it got.
    let first_holder = holder(&resources).await;
    drop(first.state);
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder(&resources).await == first_holder {
        assert!(Instant::now() < deadline, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let two = job_with_hook(&standby, url.clone()).await;
    run_job(&resources, &two, 1).await;
    completed(&receiver, &two).await;

    // The standby stops too, as a gateway does on SIGTERM: by then its position is saved
    // and its lease released.
    standby.stop().await;
    let lease = holder(&resources).await;
    assert!(lease.is_none(), "the lease is still held by {lease:?}");
    let saved = saved_cursor(&resources).await;
    let last = resources
        .context
        .get_stream(names::kv_stream(names::BUCKET_JOBS))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    assert_eq!(saved.next_sequence, last + 1, "{saved:?}");
    drop(standby);
    // The next holder finds a position from before every job (as if its predecessor had
    // died before saving): it reads every revision again.
    save_cursor(&resources, 1).await;
    let third = gateway(&resources);
    third.start().await.unwrap();
    let three = job_with_hook(&third, url).await;
    run_job(&resources, &three, 1).await;
    completed(&receiver, &three).await;
    // Whatever was queued again before the third job's events was dropped as a duplicate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = counts(&receiver);
    for job in [&one, &two, &three] {
        for event in ["start_1", "progress_1_1", "completed"] {
            let id = format!("msg_{}_{event}", job.id);
            assert_eq!(counts.get(&id), Some(&1), "{id}: {counts:?}");
        }
    }
    assert_eq!(counts.len(), 9, "{counts:?}");
    drop(third);
    drop(first.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_holder_starts_where_the_shared_consumer_of_earlier_versions_stopped() {
    let receiver = Receiver::default();
    let addr = serve(receiver.clone()).await;
    let url = format!("http://127.0.0.1:{}/hook", addr.port());
    let (server, client, resources) = common::nats().await;
    // A job that ended before the earlier version's consumer was made: no events.
    let before = hooked(url.clone());
    resources.jobs.create(&before).await.unwrap();
    run_job(&resources, &before, 1).await;
    let stream = resources
        .context
        .get_stream(names::kv_stream(names::BUCKET_JOBS))
        .await
        .unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(names::CONSUMER_WEBHOOK_EVENTS.to_owned()),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    // A job that ended while no gateway ran: the consumer never delivered it.
    let missed = hooked(url);
    resources.jobs.create(&missed).await.unwrap();
    run_job(&resources, &missed, 1).await;

    let mut config = config();
    config.auth.disabled = false;
    let state = AppState::new(config, resources.clone(), client, None);
    state.start().await.unwrap();
    completed(&receiver, &missed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = counts(&receiver);
    assert!(
        counts.keys().all(|id| !id.contains(&before.id.to_string())),
        "a job older than the consumer got events: {counts:?}"
    );
    // Its revisions before the last are gone (the bucket keeps one per job): the last one
    // shows it started and completed.
    assert_eq!(counts.len(), 2, "{counts:?}");
    // The old consumer is gone; the position is saved.
    assert!(
        stream
            .consumer_info(names::CONSUMER_WEBHOOK_EVENTS)
            .await
            .is_err()
    );
    let cursor = saved_cursor(&resources).await;
    assert!(cursor.next_sequence > 1, "{cursor:?}");
    drop(state);
    drop(server);
}

/// A saved position past the records' stream (the bucket was deleted and made again, the
/// position kept) would skip every new revision: the holder reads the stream from its
/// start instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_end_of_the_records_reads_them_from_the_start() {
    let receiver = Receiver::default();
    let addr = serve(receiver.clone()).await;
    let url = format!("http://127.0.0.1:{}/hook", addr.port());
    let (server, client, resources) = common::nats().await;
    save_cursor(&resources, 1_000_000).await;
    let mut config = config();
    config.auth.disabled = false;
    let state = AppState::new(config, resources.clone(), client, None);
    state.start().await.unwrap();
    let job = job_with_hook(&state, url).await;
    run_job(&resources, &job, 1).await;
    completed(&receiver, &job).await;
    assert!(saved_cursor(&resources).await.next_sequence < 1_000_000);
    drop(state);
    drop(server);
}
