//! Shared setup for the node tests: a real nats-server with the JetStream resources, a node
//! `n1` started on it, and the coordinator's part played by the test (a lease on slot 0 of
//! `n1`, the assignment sent to the node, polling the job's record) and by the coordinator's
//! own record-write responder (`protocol::record_writes`), through which the node writes.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use gpu_node::Config;
use gpu_node::config::BackendKind;
use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, NodeHeartbeat};
use protocol::record::{JobEvent, Lease};
use protocol::{
    JobId, JobRecord, JobShape, JobSpec, Limits, NodeId, TenantId, codec, names, now_ms,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A test's NATS: the server (killed on drop), a client and the resources.
pub struct Nats {
    pub server: testkit::NatsServer,
    pub client: async_nats::Client,
    pub resources: Resources,
}

/// Starts a nats-server and creates the JetStream resources on it.
pub async fn nats() -> Nats {
    let (server, client, resources) = testkit::jetstream("test").await;
    testkit::answer_record_writes(&client, resources.jobs.clone()).await;
    Nats {
        server,
        client,
        resources,
    }
}

/// The test configuration for node `n1`.
pub fn config() -> Config {
    let mut config = Config::for_test();
    config.node_id = Some("n1".to_owned());
    config
}

/// The test configuration for node `n1` on the tiny Mochi model, made under `model_dir`.
pub fn tiny_mochi_config(model_dir: &Path) -> Config {
    let mut config = config();
    config.backend = BackendKind::Mochi;
    config.mochi.embedded_dir = model_dir.join("tiny");
    config
}

/// Runs the node with `config` until `shutdown` is cancelled.
pub fn spawn_node(
    config: Config,
    resources: &Resources,
    client: &async_nats::Client,
    shutdown: &CancellationToken,
) -> JoinHandle<gpu_node::Result<()>> {
    tokio::spawn(gpu_node::run(
        config,
        resources.clone(),
        client.clone(),
        shutdown.clone(),
    ))
}

/// Waits (up to 5 s) for `n1`'s first heartbeat.
pub async fn wait_for_node(resources: &Resources) {
    for _ in 0..500 {
        if resources.nodes.get("n1").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n1`'s last heartbeat, once it has written one.
pub async fn heartbeat(resources: &Resources) -> Option<NodeHeartbeat> {
    let bytes = resources.nodes.get("n1").await.unwrap()?;
    Some(codec::decode(&bytes).unwrap())
}

/// Waits (up to 5 s) until `n1`'s heartbeat shows slot 0 idle and `condition` holds.
pub async fn wait_for_idle_slot(
    resources: &Resources,
    condition: impl Fn(&NodeHeartbeat) -> bool,
) -> NodeHeartbeat {
    for _ in 0..500 {
        if let Some(beat) = heartbeat(resources).await
            && beat.slots[0].job.is_none()
            && condition(&beat)
        {
            return beat;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "heartbeat condition not met: {:?}",
        heartbeat(resources).await
    );
}

/// Creates a queued job for `spec`; returns its id and shape.
pub async fn create_job(
    resources: &Resources,
    spec: JobSpec,
    seed: u64,
    max_attempts: u32,
) -> (JobId, JobShape) {
    let shape = spec.validate(&Limits::default()).unwrap();
    let id = JobId::new();
    let record = JobRecord::queued(
        id,
        TenantId::default_tenant(),
        spec,
        shape,
        seed,
        max_attempts,
        now_ms(),
    );
    assert!(resources.jobs.create(&record).await.unwrap());
    (id, shape)
}

/// A lease on slot 0 of `n1` for the next minute.
pub fn lease() -> Lease {
    Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    }
}

/// Places job `id` under `lease` (a new attempt); returns the record.
pub async fn place(resources: &Resources, id: JobId, lease: Lease) -> JobRecord {
    resources
        .jobs
        .apply(id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap()
}

/// Creates a job for `spec` with `seed`, places it on slot 0 of `n1` and sends the
/// assignment; returns the job's id and the node's answer.
pub async fn create_and_assign(
    resources: &Resources,
    client: &async_nats::Client,
    spec: JobSpec,
    seed: u64,
) -> (JobId, AssignReply) {
    let (id, shape) = create_job(resources, spec.clone(), seed, 3).await;
    let placed = place(resources, id, lease()).await;
    let assign = assign_from_start(&placed, spec, shape, seed);
    (id, send_assign(client, &assign).await)
}

/// The assignment of `placed` (its current attempt) to slot 0, run from its first step.
pub fn assign_from_start(placed: &JobRecord, spec: JobSpec, shape: JobShape, seed: u64) -> Assign {
    Assign {
        job_id: placed.id,
        attempt: placed.attempt,
        slot: 0,
        spec,
        shape,
        seed,
        lease_ms: 60_000,
        resume: None,
    }
}

/// Sends `assign` to `n1`; returns its answer.
pub async fn send_assign(client: &async_nats::Client, assign: &Assign) -> AssignReply {
    let reply = client
        .request(
            names::node_assign_subject("n1"),
            codec::encode(assign).unwrap().into(),
        )
        .await
        .unwrap();
    codec::decode(&reply.payload).unwrap()
}

/// Reads job `id` every 10 ms, up to `tries` times, until `wanted` holds.
pub async fn poll_job(
    resources: &Resources,
    id: JobId,
    tries: u32,
    wanted: impl Fn(&JobRecord) -> bool,
) -> Option<JobRecord> {
    for _ in 0..tries {
        let (record, _) = resources.jobs.get(id).await.unwrap().unwrap();
        if wanted(&record) {
            return Some(record);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
