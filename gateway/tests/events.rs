//! `GET /v1/videos/{id}/events` against a real nats-server: jobs driven as a node drives
//! them (record writes, then a progress event per step), the SSE body read as it comes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::large_futures)]

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::Config;
use http_body_util::BodyExt;
use protocol::api::JobView;
use protocol::messages::ProgressEvent;
use protocol::queue::{QueueInfo, QueuePage};
use protocol::record::{JobEvent, Lease, Progress, ResumePoint, VideoResult};
use protocol::{
    ErrorBody, ErrorCode, JobId, JobRecord, JobSpec, JobState, Limits, NodeId, TenantId, codec,
    names, now_ms,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Longest wait for one event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

use common::Client;

impl Client {
    /// Opens the job's event stream.
    async fn open(&self, id: JobId, last_event_id: Option<&str>) -> axum::response::Response {
        let mut request = self.request("GET", &format!("/v1/videos/{id}/events"));
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last);
        }
        gateway::app(self.gateway.state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    /// Opens the job's event stream and checks that it is one.
    async fn stream(&self, id: JobId, last_event_id: Option<&str>) -> Reader {
        let response = self.open(id, last_event_id).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Reader {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// Submits `body` (JSON) through the gateway: the accepted job, its record `queued` (no
    /// coordinator runs in these tests).
    async fn post(&self, body: &'static str) -> JobView {
        let (status, _, body) = common::send(
            &self.gateway.state,
            self.request("POST", "/v1/videos")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        serde_json::from_slice(&body).unwrap()
    }

    /// Stores a submission of tenant acme in `MOCHI_SUBMIT` as a gateway before 2026-12-07
    /// did, leaving the record to an intake: the job's id.
    async fn submit_as_an_earlier_gateway(&self, spec: JobSpec) -> JobId {
        let id = JobId::new();
        let request = protocol::messages::SubmitRequest {
            job_id: Some(id),
            spec,
            idempotency_key: None,
            remixed_from: None,
            webhook: None,
        };
        common::submit_as_an_earlier_gateway(&self.gateway.resources, "acme", &request).await;
        id
    }

    /// The `mochi_queue` bucket, where the tests write what a coordinator would.
    async fn queue_bucket(&self) -> async_nats::jetstream::kv::Store {
        self.gateway
            .resources
            .context
            .get_key_value(names::BUCKET_QUEUE)
            .await
            .unwrap()
    }

    /// A queued job of tenant acme, as the intake writes it.
    async fn stored(&self, steps: u32) -> JobRecord {
        let mut spec = JobSpec::new("a fox in the snow");
        spec.steps = Some(steps);
        self.store(JobId::new(), spec).await
    }

    async fn store(&self, id: JobId, spec: JobSpec) -> JobRecord {
        let shape = spec.validate(&Limits::default()).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let record = JobRecord::queued(id, tenant, spec, shape, 7, 3, now_ms());
        assert!(self.gateway.resources.jobs.create(&record).await.unwrap());
        record
    }

    async fn apply(&self, id: JobId, event: JobEvent) -> JobRecord {
        self.gateway
            .resources
            .jobs
            .apply(id, &event, now_ms())
            .await
            .unwrap()
    }

    /// Placed on a node and started: the new attempt's record.
    async fn run(&self, id: JobId) -> JobRecord {
        let lease = Lease {
            node: NodeId::new("n1").unwrap(),
            slot: 0,
            deadline_ms: now_ms() + 60_000,
        };
        let assigned = self.apply(id, JobEvent::Assigned { lease }).await;
        let attempt = assigned.attempt;
        self.apply(
            id,
            JobEvent::Started {
                attempt,
                lease_deadline_ms: now_ms() + 60_000,
            },
        )
        .await
    }

    /// Steps `steps` of `attempt` as a node does them: the record, then the event.
    async fn steps(&self, id: JobId, attempt: u32, steps: std::ops::RangeInclusive<u32>) {
        let (record, _) = self.gateway.resources.jobs.get(id).await.unwrap().unwrap();
        let total_steps = record.shape.steps;
        for step in steps {
            let progress = Progress { step, total_steps };
            let progressed = JobEvent::Progressed {
                attempt,
                progress,
                lease_deadline_ms: now_ms() + 60_000,
            };
            self.apply(id, progressed).await;
            self.publish(&ProgressEvent {
                job_id: id,
                attempt,
                state: JobState::Running,
                step,
                total_steps,
                at_ms: now_ms(),
            })
            .await;
        }
    }

    async fn publish(&self, event: &ProgressEvent) {
        let subject = names::events_subject(&event.job_id.to_string(), "n1");
        let client = &self.gateway.state.client;
        client
            .publish(subject, codec::encode(event).unwrap().into())
            .await
            .unwrap();
    }

    /// Encodes and stores attempt `attempt`'s video.
    async fn finish(&self, id: JobId, attempt: u32) -> JobRecord {
        self.apply(
            id,
            JobEvent::EncodingStarted {
                attempt,
                lease_deadline_ms: now_ms() + 60_000,
            },
        )
        .await;
        let result = VideoResult {
            object_name: names::video_object(&id.to_string(), attempt),
            size_bytes: 1000,
            sha256: "ab".into(),
            duration_ms: 1000,
            num_frames: 31,
            width: 848,
            height: 480,
            fps: 30,
        };
        self.apply(id, JobEvent::Succeeded { attempt, result })
            .await
    }
}

/// One event as read off the wire.
#[derive(Debug)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

impl Sse {
    /// `event`, or `progress:step`.
    fn label(&self) -> String {
        if self.event == "progress" {
            format!("progress:{}", self.data["step"])
        } else {
            self.event.clone()
        }
    }

    /// The id as (attempt, phase, number), to compare.
    fn order(&self) -> (u32, u8, u64) {
        let parts: Vec<&str> = self.id.split('.').collect();
        assert_eq!(parts.len(), 3, "id {:?}", self.id);
        (
            parts[0].parse().unwrap(),
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
        )
    }
}

/// Reads an SSE body event by event.
struct Reader {
    body: Body,
    buffer: String,
}

impl Reader {
    /// The next event (comments skipped); `None` once the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                match parse(&block) {
                    Some(event) => return Some(event),
                    None => continue,
                }
            }
            let frame = tokio::time::timeout(EVENT_TIMEOUT, self.body.frame())
                .await
                .expect("no event within 5 s");
            let Some(frame) = frame else {
                assert_eq!(self.buffer, "", "the stream ended inside an event");
                return None;
            };
            if let Ok(data) = frame.unwrap().into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event, which must exist.
    async fn expect(&mut self) -> Sse {
        self.next().await.expect("the stream ended early")
    }

    /// Every event until the stream ends.
    async fn rest(&mut self) -> Vec<Sse> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    /// Events up to and including the first labelled `label`.
    async fn until(&mut self, label: &str) -> Vec<Sse> {
        let mut events = Vec::new();
        loop {
            let event = self.expect().await;
            let done = event.label() == label;
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

/// One `event:`/`id:`/`data:` block; `None` for a comment.
fn parse(block: &str) -> Option<Sse> {
    let (mut event, mut id, mut data) = (None, None, None);
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event: ") {
            event = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = Some(serde_json::from_str(value).unwrap());
        } else {
            assert!(
                line.is_empty() || line.starts_with(':'),
                "unexpected line {line:?}"
            );
        }
    }
    let event = event?;
    Some(Sse {
        id: id.expect("every event has an id"),
        data: data.expect("every event has data"),
        event,
    })
}

fn labels(events: &[Sse]) -> Vec<String> {
    events.iter().map(Sse::label).collect()
}

/// `progress:from` to `progress:to`.
fn progress(steps: std::ops::RangeInclusive<u32>) -> Vec<String> {
    steps.map(|step| format!("progress:{step}")).collect()
}

fn assert_ids_rise(events: &[Sse]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].order() < pair[1].order(),
            "{} then {}",
            pair[0].id,
            pair[1].id
        );
    }
}

#[tokio::test]
async fn every_step_arrives_once_in_order_then_the_job_completes() {
    let client = Client::new().await;
    let record = client.stored(8).await;
    let mut stream = client.stream(record.id, None).await;
    let queued = stream.expect().await;
    assert_eq!(
        (queued.event.as_str(), queued.id.as_str()),
        ("queued", "0.5.0")
    );
    assert_eq!(queued.data["position"], Value::Null, "no estimate yet");

    client.run(record.id).await;
    client.steps(record.id, 1, 1..=3).await;
    let mut events = stream.until("progress:3").await;
    client.steps(record.id, 1, 4..=8).await;
    let finished = client.finish(record.id, 1).await;
    events.extend(stream.rest().await);

    let mut expected = vec!["started".to_owned()];
    expected.extend(progress(1..=8));
    expected.extend(["decoding".to_owned(), "completed".to_owned()]);
    assert_eq!(labels(&events), expected);
    assert_eq!(events[0].data, serde_json::json!({"attempt": 1}));
    assert_ids_rise(&events);
    let steps = &events[1..9];
    for pair in steps.windows(2) {
        assert!(pair[0].data["percent"].as_u64() < pair[1].data["percent"].as_u64());
    }
    assert_eq!(steps[7].data["percent"], 95);
    assert_eq!(steps[7].data["total_steps"], 8);
    assert_eq!(steps[0].data["step_seconds"], Value::Null, "no step before");
    // Steps 5 to 8 followed a step the stream had timed (its record or its event).
    for step in &steps[4..] {
        assert!(step.data["step_seconds"].as_f64().is_some(), "{step:?}");
    }
    let completed: JobView = serde_json::from_value(events[10].data.clone()).unwrap();
    assert_eq!(completed.id, record.id);
    assert_eq!(completed.state, JobState::Succeeded);
    assert_eq!(completed.progress, 100);
    assert_eq!(completed.result, finished.result);
}

#[tokio::test]
async fn a_reconnect_resumes_after_its_last_event_id() {
    let client = Client::new().await;
    let record = client.stored(16).await;
    client.run(record.id).await;
    client.steps(record.id, 1, 1..=9).await;

    let mut stream = client.stream(record.id, Some("1.2.5")).await;
    let mut events = stream.until("progress:9").await;
    assert_eq!(labels(&events), progress(6..=9));
    for event in &events {
        assert_eq!(event.data["step_seconds"], Value::Null, "replayed");
    }
    // An id that is not ours starts from the beginning.
    let mut fresh = client.stream(record.id, Some("not-an-id")).await;
    let mut expected = vec!["started".to_owned()];
    expected.extend(progress(1..=9));
    assert_eq!(labels(&fresh.until("progress:9").await), expected);
    drop(fresh);

    client.steps(record.id, 1, 10..=16).await;
    client.finish(record.id, 1).await;
    events.extend(stream.rest().await);
    let mut expected = progress(6..=16);
    expected.extend(["decoding".to_owned(), "completed".to_owned()]);
    assert_eq!(labels(&events), expected, "every step once");
    assert_ids_rise(&events);

    // After the end: the end alone, and once that was seen, nothing more (204).
    let mut late = client.stream(record.id, Some("1.2.5")).await;
    assert_eq!(labels(&late.rest().await), ["completed"]);
    let done = events.last().unwrap().id.clone();
    let response = client.open(record.id, Some(&done)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn another_tenants_job_is_not_found() {
    let client = Client::new().await;
    let record = client.stored(8).await;
    let other = client.as_tenant("globex").await;
    for (caller, uri) in [
        (&other, format!("/v1/videos/{}/events", record.id)),
        (&client, format!("/v1/videos/{}/events", JobId::new())),
        (&client, "/v1/videos/not-a-job/events".to_owned()),
    ] {
        let (status, _, body) = common::send(
            &client.gateway.state,
            caller.request("GET", &uri).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(error.error.code, ErrorCode::NotFound);
    }
    let anonymous = Request::get(format!("/v1/videos/{}/events", record.id))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = common::send(&client.gateway.state, anonymous).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_cancelled_job_ends_with_cancelled() {
    let client = Client::new().await;
    let record = client.stored(8).await;
    client.run(record.id).await;
    client.steps(record.id, 1, 1..=2).await;
    let mut stream = client.stream(record.id, None).await;
    let mut expected = vec!["started".to_owned()];
    expected.extend(progress(1..=2));
    assert_eq!(labels(&stream.until("progress:2").await), expected);

    let uri = format!("/v1/videos/{}/cancel", record.id);
    let (status, _, _) = common::send(
        &client.gateway.state,
        client.request("POST", &uri).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rest = stream.rest().await;
    assert_eq!(labels(&rest), ["cancelled"]);
    assert_eq!(rest[0].data["state"], "cancelled");
    assert_eq!(rest[0].data["error"]["code"], "cancelled");
}

#[tokio::test]
async fn a_job_just_accepted_is_followed_from_its_record() {
    let client = Client::new().await;
    let accepted = client.post(r#"{"prompt":"a fox","steps":4}"#).await;
    // The gateway wrote the record before its 202; no coordinator runs here.
    let mut stream = client.stream(accepted.id, None).await;
    let queued = stream.expect().await;
    assert_eq!(
        (queued.event.as_str(), queued.id.as_str()),
        ("queued", "0.5.0")
    );
    client.run(accepted.id).await;
    client.steps(accepted.id, 1, 1..=4).await;
    client.finish(accepted.id, 1).await;
    let events = stream.rest().await;
    let mut expected = vec!["started".to_owned()];
    expected.extend(progress(1..=4));
    expected.extend(["decoding".to_owned(), "completed".to_owned()]);
    assert_eq!(labels(&events), expected);
}

#[tokio::test]
async fn a_job_not_yet_taken_in_is_followed_from_its_submission() {
    let client = Client::new().await;
    let mut spec = JobSpec::new("a fox");
    spec.steps = Some(4);
    let id = client.submit_as_an_earlier_gateway(spec.clone()).await;
    // No coordinator runs here: the stream waits for the record written below.
    let mut stream = client.stream(id, None).await;
    let queued = stream.expect().await;
    assert_eq!(
        (queued.event.as_str(), queued.id.as_str()),
        ("queued", "0.5.0")
    );
    client.store(id, spec).await;
    client.run(id).await;
    client.steps(id, 1, 1..=4).await;
    client.finish(id, 1).await;
    let events = stream.rest().await;
    let mut expected = vec!["started".to_owned()];
    expected.extend(progress(1..=4));
    expected.extend(["decoding".to_owned(), "completed".to_owned()]);
    assert_eq!(labels(&events), expected);
}

#[tokio::test]
async fn a_preempted_job_resumes_in_its_next_attempt() {
    let client = Client::new().await;
    let record = client.stored(6).await;
    let mut stream = client.stream(record.id, None).await;
    assert_eq!(stream.expect().await.event, "queued");
    client.run(record.id).await;
    client.steps(record.id, 1, 1..=3).await;
    let resume = ResumePoint {
        step: 3,
        latent_object: names::paused_object(&record.id.to_string(), 1),
    };
    client
        .apply(record.id, JobEvent::Preempted { attempt: 1, resume })
        .await;
    client.apply(record.id, JobEvent::Requeued).await;
    client.run(record.id).await;
    client.steps(record.id, 2, 4..=4).await;
    let mut events = stream.until("progress:4").await;
    // A late event of the paused attempt is not progress.
    client
        .publish(&ProgressEvent {
            job_id: record.id,
            attempt: 1,
            state: JobState::Running,
            step: 5,
            total_steps: 6,
            at_ms: now_ms(),
        })
        .await;
    client.steps(record.id, 2, 5..=6).await;
    client.finish(record.id, 2).await;
    events.extend(stream.rest().await);

    let mut expected = vec!["started".to_owned()];
    expected.extend(progress(1..=3));
    expected.extend(["preempted", "queued", "resumed"].map(str::to_owned));
    expected.extend(progress(4..=6));
    expected.extend(["decoding".to_owned(), "completed".to_owned()]);
    assert_eq!(labels(&events), expected);
    assert_ids_rise(&events);
    let resumed = &events[6];
    assert_eq!(resumed.data, serde_json::json!({"attempt": 2, "step": 3}));
    assert_eq!(resumed.id, "2.1.0");
    assert_eq!(events[4].data, serde_json::json!({"attempt": 1, "step": 3}));
}

#[tokio::test]
async fn queue_moves_are_sent_while_the_job_waits() {
    let client = Client::new().await;
    let record = client.stored(2).await;
    let mut stream = client.stream(record.id, None).await;
    assert_eq!(stream.expect().await.id, "0.5.0");
    let bucket = client.queue_bucket().await;
    let put = |position: u32| {
        let info = QueueInfo {
            position,
            queued: 3,
            lane: "short".to_owned(),
            eta_start_ms: Some(now_ms() + 10_000),
            eta_finish_ms: Some(now_ms() + 20_000),
            updated_at_ms: now_ms(),
        };
        let bucket = bucket.clone();
        let key = record.id.to_string();
        async move {
            let value = serde_json::to_vec(&info).unwrap();
            bucket.put(key, value.into()).await.unwrap()
        }
    };
    for position in [2, 1] {
        let revision = put(position).await;
        let queued = stream.expect().await;
        assert_eq!(queued.event, "queued");
        assert_eq!(queued.id, format!("0.5.{revision}"));
        assert_eq!(queued.data["position"], position);
        assert_eq!(queued.data["queued"], 3);
        assert_eq!(queued.data["lane"], "short");
        assert!(queued.data["eta_start_ms"].is_u64());
    }
    client.run(record.id).await;
    client.steps(record.id, 1, 1..=1).await;
    assert_eq!(
        labels(&stream.until("progress:1").await),
        ["started", "progress:1"]
    );
    // Running: a stale estimate is not news.
    put(1).await;
    client.steps(record.id, 1, 2..=2).await;
    assert_eq!(labels(&stream.until("progress:2").await), ["progress:2"]);
}

#[tokio::test]
async fn a_job_first_listed_in_a_page_is_followed_there_then_in_its_own_entry() {
    let client = Client::new().await;
    let mut spec = JobSpec::new("a fox");
    spec.steps = Some(2);
    let id = client.submit_as_an_earlier_gateway(spec.clone()).await;
    // Opened before the record exists: the page is known only once the record is read.
    let mut stream = client.stream(id, None).await;
    assert_eq!(stream.expect().await.id, "0.5.0");
    let record = client.store(id, spec).await;
    let bucket = client.queue_bucket().await;
    let info = |position: u32| QueueInfo {
        position,
        queued: 9,
        lane: "short".to_owned(),
        eta_start_ms: None,
        eta_finish_ms: None,
        updated_at_ms: now_ms(),
    };
    let page = QueuePage {
        jobs: [(JobId::new(), info(1)), (record.id, info(4))].into(),
    };
    let revision = bucket
        .put(
            QueuePage::key_for(record.id, record.created_at_ms),
            serde_json::to_vec(&page).unwrap().into(),
        )
        .await
        .unwrap();
    let queued = stream.expect().await;
    assert_eq!(queued.id, format!("0.5.{revision}"));
    assert_eq!(queued.data["position"], 4);
    // Its place moved: its own entry, newer, is what counts from now on.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let revision = bucket
        .put(
            record.id.to_string(),
            serde_json::to_vec(&info(2)).unwrap().into(),
        )
        .await
        .unwrap();
    let queued = stream.expect().await;
    assert_eq!(queued.id, format!("0.5.{revision}"));
    assert_eq!(queued.data["position"], 2);
    client.run(record.id).await;
    client.steps(record.id, 1, 1..=2).await;
    client.finish(record.id, 1).await;
    let rest = stream.rest().await;
    assert_eq!(
        labels(&rest),
        [
            "started",
            "progress:1",
            "progress:2",
            "decoding",
            "completed"
        ]
    );
}

#[tokio::test]
async fn a_stream_outlives_the_request_timeout() {
    let mut config = Config::for_test();
    config.request_timeout_ms = 200;
    let client = Client::with(config).await;
    let record = client.stored(4).await;
    let mut stream = client.stream(record.id, None).await;
    assert_eq!(stream.expect().await.event, "queued");
    // The timeout covers the response's head only; the body streams on past it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.run(record.id).await;
    client.steps(record.id, 1, 1..=1).await;
    assert_eq!(
        labels(&stream.until("progress:1").await),
        ["started", "progress:1"]
    );
}

#[tokio::test]
async fn a_closed_stream_leaves_no_subscription_behind() {
    let client = Client::new().await;
    let record = client.stored(4).await;
    let subject = names::events_subject(&record.id.to_string(), "n1");
    let nats = client.gateway.state.client.clone();
    // A request on the events subject: it times out while someone listens, and is refused
    // at once (no responders) when nobody does.
    let listened = |nats: async_nats::Client, subject: String| async move {
        let request = async_nats::Request::new().timeout(Some(Duration::from_millis(200)));
        match nats.send_request(subject, request).await {
            Err(error) => error.kind() != async_nats::RequestErrorKind::NoResponders,
            Ok(_) => true,
        }
    };
    assert!(!listened(nats.clone(), subject.clone()).await);
    let mut stream = client.stream(record.id, None).await;
    assert_eq!(stream.expect().await.event, "queued");
    assert!(listened(nats.clone(), subject.clone()).await);

    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while listened(nats.clone(), subject.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the stream's subscription outlived it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_quiet_stream_is_kept_alive_past_the_idle_timeout_on_a_real_connection() {
    let gateway = common::start().await;
    let mut config = Config::for_test();
    config.request_timeout_ms = 200;
    config.connections.idle_timeout_ms = 1_200;
    let server = gateway::Server::bind(
        config,
        gateway.resources.clone(),
        gateway.state.client.clone(),
        None,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    let mut spec = JobSpec::new("a quiet fox");
    spec.steps = Some(2);
    let shape = spec.validate(&Limits::default()).unwrap();
    let tenant = TenantId::default_tenant();
    let record = JobRecord::queued(JobId::new(), tenant, spec, shape, 7, 3, now_ms());
    gateway.resources.jobs.create(&record).await.unwrap();

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/videos/{}/events HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n",
        record.id
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut tcp, &mut seen, "event: queued").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    // Quiet for longer than the idle timeout (and the request timeout): the keep-alive
    // comments (every 600 ms here, half the idle timeout) hold the connection open.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let lease = Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    let jobs = &gateway.resources.jobs;
    jobs.apply(record.id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap();
    let started = JobEvent::Started {
        attempt: 1,
        lease_deadline_ms: now_ms() + 60_000,
    };
    jobs.apply(record.id, &started, now_ms()).await.unwrap();
    read_until(&mut tcp, &mut seen, "event: started").await;
    assert!(seen.matches(": keep-alive").count() >= 2, "{seen}");

    drop(tcp);
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), serving).await;
    assert!(stopped.is_ok(), "the server kept a closed client's stream");
}

/// Reads `tcp` into `seen` until it holds `wanted`; panics on EOF or after 5 s of silence.
async fn read_until(tcp: &mut tokio::net::TcpStream, seen: &mut String, wanted: &str) {
    let mut buffer = [0u8; 4096];
    while !seen.contains(wanted) {
        let read = tokio::time::timeout(EVENT_TIMEOUT, tcp.read(&mut buffer))
            .await
            .expect("nothing for 5 s")
            .unwrap();
        assert!(read > 0, "closed before {wanted:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
}
