//! Shared test helpers: a real nats-server with the JetStream resources, publishing
//! submissions, deadline polling, and a stand-in GPU node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, NodeHeartbeat, SlotJob, SlotReport, SubmitRequest};
use protocol::record::{Progress, VideoResult};
use protocol::{JobEvent, JobId, JobRecord, NodeId, codec, names, now_ms};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A test's NATS: the server (killed on drop), a client and the resources.
pub struct Nats {
    pub server: testkit::NatsServer,
    pub client: async_nats::Client,
    pub resources: Resources,
}

pub async fn nats() -> Nats {
    let (server, client, resources) = testkit::jetstream("coordinator-test").await;
    Nats {
        server,
        client,
        resources,
    }
}

/// Polls `condition` every 25 ms until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes a submission through JetStream as the gateway does and waits for the ack.
pub async fn submit(
    resources: &Resources,
    tenant: &str,
    request: &SubmitRequest,
    message_id: &str,
) {
    let subject = match request.job_id {
        Some(job_id) => names::submit_job_subject(tenant, &job_id.to_string()),
        None => names::submit_subject(tenant),
    };
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    let payload = codec::to_json(request).unwrap();
    let ack = resources
        .context
        .publish_with_headers(subject, headers, payload.into())
        .await
        .unwrap();
    ack.await.unwrap();
}

/// Submits `count` small jobs for tenant `acme`; their ids in submission order.
pub async fn submit_jobs(nats: &Nats, count: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    for index in 0..count {
        let request = small_job(&format!("job {index}"));
        let job_id = request.job_id.unwrap();
        submit(&nats.resources, "acme", &request, &job_id.to_string()).await;
        ids.push(job_id);
    }
    ids
}

/// Writes the records of `count` small jobs for tenant `acme` as a gateway does (`queued`,
/// the default attempt budget, no submission); their ids in creation order.
pub async fn create_jobs(nats: &Nats, count: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    for index in 0..count {
        let request = small_job(&format!("created {index}"));
        let job_id = request.job_id.unwrap();
        let shape = request.spec.validate(&protocol::Limits::default()).unwrap();
        let record = JobRecord::from_submission(
            job_id,
            protocol::TenantId::new("acme").unwrap(),
            request,
            shape,
            protocol::record::DEFAULT_MAX_ATTEMPTS,
            now_ms(),
        );
        assert!(nats.resources.jobs.create(&record).await.unwrap());
        ids.push(job_id);
    }
    ids
}

/// A small valid submission with its own job id.
pub fn small_job(prompt: &str) -> SubmitRequest {
    let mut spec = protocol::JobSpec::new(prompt);
    spec.num_frames = Some(7);
    spec.width = Some(64);
    spec.height = Some(64);
    spec.steps = Some(3);
    SubmitRequest {
        job_id: Some(JobId::new()),
        spec,
        idempotency_key: None,
        remixed_from: None,
        webhook: None,
    }
}

pub async fn record(resources: &Resources, job_id: JobId) -> Option<JobRecord> {
    resources
        .jobs
        .get(job_id)
        .await
        .unwrap()
        .map(|(record, _)| record)
}

/// What a stand-in node does with an accepted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs it to `succeeded` (started, three steps, encoding, succeeded).
    Complete,
    /// Writes `started`, then falls silent: no more writes and no more heartbeats.
    Die,
}

/// What a stand-in node saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every assignment that arrived, in order.
    pub assigns: Vec<Assign>,
    /// Assignments that arrived for a slot that was running a job.
    pub busy_slot_assigns: u32,
    /// The job each busy slot runs.
    pub busy: HashMap<u32, SlotJob>,
    /// Set when the node died.
    pub dead: bool,
}

/// A stand-in GPU node: answers `Assign` on its subject, writes the job's progress through
/// `JobStore::apply` and keeps a heartbeat in `mochi_nodes`.
pub struct StandIn {
    pub seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl StandIn {
    pub async fn start(
        nats: &Nats,
        node: &str,
        slots: u32,
        behaviour: Behaviour,
        lease_ms: u64,
    ) -> Self {
        let node = NodeId::new(node).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut subscription = nats
            .client
            .subscribe(names::node_assign_subject(node.as_str()))
            .await
            .unwrap();
        nats.client.flush().await.unwrap();
        let mut tasks = JoinSet::new();
        // Heartbeats: every 200 ms and at once whenever a slot becomes busy or free.
        let beat = Heartbeat {
            node: node.clone(),
            slots,
            nodes: nats.resources.nodes.clone(),
            seen: Arc::clone(&seen),
        };
        beat.put().await;
        tasks.spawn({
            let (stop, changed, seen) = (stop.clone(), Arc::clone(&changed), Arc::clone(&seen));
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = changed.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    // Put, then check: the last heartbeat of a dying node shows its busy slot.
                    beat.put().await;
                    if seen.lock().unwrap().dead {
                        return;
                    }
                }
            }
        });
        let (client, jobs, inner_stop) = (
            nats.client.clone(),
            nats.resources.jobs.clone(),
            stop.clone(),
        );
        let inner_seen = Arc::clone(&seen);
        tasks.spawn(async move {
            let mut runs = JoinSet::new();
            loop {
                let message = tokio::select! {
                    () = inner_stop.cancelled() => return,
                    message = subscription.next() => match message { Some(message) => message, None => return },
                };
                let assign: Assign = codec::decode(&message.payload).unwrap();
                let accepted = {
                    let mut seen = inner_seen.lock().unwrap();
                    if seen.dead {
                        continue; // a dead node answers nothing
                    }
                    seen.assigns.push(assign.clone());
                    let job = SlotJob { job_id: assign.job_id, attempt: assign.attempt };
                    match seen.busy.entry(assign.slot) {
                        std::collections::hash_map::Entry::Occupied(_) => {
                            seen.busy_slot_assigns += 1;
                            false
                        }
                        std::collections::hash_map::Entry::Vacant(free) => {
                            free.insert(job);
                            true
                        }
                    }
                };
                let reply = if accepted {
                    AssignReply::Accepted
                } else {
                    AssignReply::Rejected { reason: "slot busy".to_owned() }
                };
                if let Some(reply_to) = message.reply {
                    client.publish(reply_to, codec::encode(&reply).unwrap().into()).await.unwrap();
                }
                changed.notify_one();
                if accepted {
                    let run = Run { jobs: jobs.clone(), seen: Arc::clone(&inner_seen), changed: Arc::clone(&changed), lease_ms };
                    runs.spawn(run.go(assign, behaviour));
                }
            }
        });
        Self { seen, stop, tasks }
    }

    /// Every `(job, attempt)` assigned to this node.
    pub fn assigned(&self) -> Vec<(JobId, u32)> {
        self.seen
            .lock()
            .unwrap()
            .assigns
            .iter()
            .map(|a| (a.job_id, a.attempt))
            .collect()
    }

    pub fn busy_slot_assigns(&self) -> u32 {
        self.seen.lock().unwrap().busy_slot_assigns
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Heartbeat {
    node: NodeId,
    slots: u32,
    nodes: async_nats::jetstream::kv::Store,
    seen: Arc<Mutex<Seen>>,
}

impl Heartbeat {
    async fn put(&self) {
        let busy = self.seen.lock().unwrap().busy.clone();
        let heartbeat = NodeHeartbeat {
            node_id: self.node.clone(),
            backend: "stand-in".to_owned(),
            version: "test".to_owned(),
            started_at_ms: 0,
            sent_at_ms: now_ms(),
            accepting: true,
            slots: (0..self.slots)
                .map(|slot| SlotReport {
                    slot,
                    gpu_class: "cpu".to_owned(),
                    memory_total_bytes: 1 << 30,
                    memory_free_bytes: 1 << 30,
                    job: busy.get(&slot).copied(),
                    healthy: true,
                    unhealthy_reason: None,
                })
                .collect(),
        };
        self.nodes
            .put(
                self.node.as_str(),
                codec::encode(&heartbeat).unwrap().into(),
            )
            .await
            .unwrap();
    }
}

struct Run {
    jobs: protocol::jetstream::JobStore,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<tokio::sync::Notify>,
    lease_ms: u64,
}

impl Run {
    async fn go(self, assign: Assign, behaviour: Behaviour) {
        let attempt = assign.attempt;
        let deadline = || now_ms() + self.lease_ms;
        let started = JobEvent::Started {
            attempt,
            lease_deadline_ms: deadline(),
        };
        if self
            .jobs
            .apply(assign.job_id, &started, now_ms())
            .await
            .is_err()
        {
            self.free(assign.slot);
            return;
        }
        if behaviour == Behaviour::Die {
            self.seen.lock().unwrap().dead = true;
            return;
        }
        let total_steps = 3;
        for step in 1..=total_steps {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let progress = Progress { step, total_steps };
            let event = JobEvent::Progressed {
                attempt,
                progress,
                lease_deadline_ms: deadline(),
            };
            if self
                .jobs
                .apply(assign.job_id, &event, now_ms())
                .await
                .is_err()
            {
                self.free(assign.slot);
                return;
            }
        }
        let encoding = JobEvent::EncodingStarted {
            attempt,
            lease_deadline_ms: deadline(),
        };
        let encoding_ok = self
            .jobs
            .apply(assign.job_id, &encoding, now_ms())
            .await
            .is_ok();
        // The slot is free before the record says so: a new assignment never finds it busy.
        self.free(assign.slot);
        if !encoding_ok {
            return;
        }
        let result = VideoResult {
            object_name: assign.job_id.to_string(),
            size_bytes: 1,
            sha256: "00".to_owned(),
            duration_ms: 233,
            num_frames: 7,
            width: 64,
            height: 64,
            fps: 30,
        };
        self.jobs
            .apply(
                assign.job_id,
                &JobEvent::Succeeded { attempt, result },
                now_ms(),
            )
            .await
            .unwrap();
    }

    fn free(&self, slot: u32) {
        self.seen.lock().unwrap().busy.remove(&slot);
        self.changed.notify_one();
    }
}

/// A running coordinator for a test, stopped by `stop`.
pub struct Running {
    pub status: coordinator::StatusHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<coordinator::Result<()>>,
}

impl Running {
    pub async fn start(nats: &Nats, config: coordinator::Config) -> Self {
        let started = Box::pin(coordinator::Coordinator::start(
            config,
            nats.resources.clone(),
            nats.client.clone(),
        ));
        let coordinator = started.await.unwrap();
        let status = coordinator.status_handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(coordinator.run_until(shutdown.clone()));
        Self {
            status,
            shutdown,
            task,
        }
    }

    pub async fn status(&self) -> coordinator::SchedulerStatus {
        self.status.get().await.unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}
