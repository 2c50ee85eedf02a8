//! The GPU node against a real nats-server, with the test acting as the coordinator.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::Duration;

use gpu_node::Config;
use protocol::jetstream::Resources;
use protocol::messages::{AssignReply, Cancel, NodeHeartbeat};
use protocol::record::{JobEvent, Lease};
use protocol::{JobId, JobRecord, JobSpec, JobState, NodeId, codec, names, now_ms};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

struct Harness {
    _server: testkit::NatsServer,
    client: async_nats::Client,
    resources: Resources,
    shutdown: CancellationToken,
    node: tokio::task::JoinHandle<gpu_node::Result<()>>,
}

async fn start(time_scale: f64) -> Harness {
    start_with(time_scale, Config::for_test().drain_timeout_ms).await
}

async fn start_with(time_scale: f64, drain_timeout_ms: u64) -> Harness {
    let common::Nats {
        server,
        client,
        resources,
    } = common::nats().await;
    let shutdown = CancellationToken::new();
    let mut config = common::config();
    config.simulated.time_scale = time_scale;
    config.drain_timeout_ms = drain_timeout_ms;
    let node = common::spawn_node(config, &resources, &client, &shutdown);
    let harness = Harness {
        _server: server,
        client,
        resources,
        shutdown,
        node,
    };
    harness.wait_for_heartbeat(|beat| beat.accepting).await;
    harness
}

impl Harness {
    async fn heartbeat(&self) -> Option<NodeHeartbeat> {
        let bytes = self.resources.nodes.get("n1").await.unwrap()?;
        Some(codec::decode(&bytes).unwrap())
    }

    async fn wait_for_heartbeat(&self, condition: impl Fn(&NodeHeartbeat) -> bool) {
        for _ in 0..500 {
            if let Some(beat) = self.heartbeat().await
                && condition(&beat)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "heartbeat condition not met; last: {:?}",
            self.heartbeat().await
        );
    }

    /// Creates a job, places it on slot 0 and sends the assignment; returns the reply.
    async fn place(&self, steps: u32) -> (JobId, AssignReply) {
        let spec = JobSpec {
            num_frames: Some(13),
            width: Some(128),
            height: Some(64),
            steps: Some(steps),
            ..JobSpec::new("x")
        };
        common::create_and_assign(&self.resources, &self.client, spec, 5).await
    }

    async fn wait_for_state(&self, id: JobId, wanted: impl Fn(&JobRecord) -> bool) -> JobRecord {
        if let Some(record) = common::poll_job(&self.resources, id, 1000, wanted).await {
            return record;
        }
        panic!(
            "job {id} never reached the wanted state: {:?}",
            self.resources.jobs.get(id).await.unwrap()
        );
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.node.await.unwrap().unwrap();
        assert!(
            self.resources.nodes.get("n1").await.unwrap().is_none(),
            "heartbeat left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_job_to_success_and_stores_a_decodable_mp4_with_its_previews() {
    let harness = start(0.0005).await;
    let (id, reply) = harness.place(4).await;
    assert_eq!(reply, AssignReply::Accepted);
    let record = harness.wait_for_state(id, |r| r.state.is_terminal()).await;
    assert_eq!(record.state, JobState::Succeeded, "{:?}", record.error);
    let result = record.result.unwrap();
    let mut object = harness
        .resources
        .videos
        .get(&result.object_name)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes.len() as u64, result.size_bytes);
    let info = gpu_node::mp4::probe(&bytes).unwrap();
    assert_eq!(
        (info.decoded_frames, info.width, info.height, info.fps),
        (13, 128, 64, 30)
    );
    // The previews are stored beside the MP4 before the result is recorded: the middle
    // frame at full size, and 13 frames in 4 columns × 4 rows of full-size tiles.
    for (name, size) in [
        (result.thumbnail_object(), (128, 64)),
        (result.spritesheet_object(), (512, 256)),
    ] {
        let mut object = harness.resources.videos.get(&name).await.unwrap();
        let mut jpeg = Vec::new();
        object.read_to_end(&mut jpeg).await.unwrap();
        let mut decoder = jpeg_decoder::Decoder::new(jpeg.as_slice());
        decoder.decode().unwrap();
        let info = decoder.info().unwrap();
        assert_eq!((info.width, info.height), size, "{name}");
    }
    assert_eq!(
        record.progress.map(|p| (p.step, p.total_steps)),
        Some((4, 4))
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_slot_rejects_a_second_job_and_heartbeat_shows_busy_then_free() {
    // Long enough (~4 s) to stay busy for the whole check; the cancel below ends it early.
    let harness = start(5.0).await;
    let (first, reply) = harness.place(80).await;
    assert_eq!(reply, AssignReply::Accepted);
    harness
        .wait_for_heartbeat(|beat| beat.slots[0].job.map(|j| j.job_id) == Some(first))
        .await;
    let busy = harness.heartbeat().await.unwrap().slots[0].clone();
    assert!(
        busy.job.is_none() || busy.memory_free_bytes < busy.memory_total_bytes,
        "a running job must take memory: {busy:?}"
    );
    let (_second, reply) = harness.place(4).await;
    assert!(
        matches!(reply, AssignReply::Rejected { ref reason } if reason.contains("busy")),
        "{reply:?}"
    );
    harness
        .client
        .publish(
            names::node_cancel_subject("n1"),
            codec::encode(&Cancel {
                job_id: first,
                attempt: 1,
            })
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    harness
        .wait_for_heartbeat(|beat| {
            beat.slots[0].job.is_none()
                && beat.slots[0].memory_free_bytes == beat.slots[0].memory_total_bytes
        })
        .await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_at_a_step_boundary_and_frees_the_slot() {
    // Several seconds of work, so the job is surely still running when it is stopped.
    let harness = start(5.0).await;
    let (id, _) = harness.place(100).await;
    harness
        .wait_for_state(id, |r| r.progress.is_some_and(|p| p.step >= 2))
        .await;
    let cancelled = harness
        .resources
        .jobs
        .apply(id, &JobEvent::CancelRequested, now_ms())
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    harness
        .client
        .publish(
            names::node_cancel_subject("n1"),
            codec::encode(&Cancel {
                job_id: id,
                attempt: 1,
            })
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    harness
        .wait_for_heartbeat(|beat| beat.slots[0].job.is_none())
        .await;
    let (record, _) = harness.resources.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert!(
        record.progress.unwrap().step < 100,
        "the job ran to the end"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_is_fenced_out_and_never_publishes_a_result() {
    // Several seconds of work, so the job is surely still running when it is stopped.
    let harness = start(5.0).await;
    let (id, _) = harness.place(60).await;
    harness
        .wait_for_state(id, |r| r.progress.is_some_and(|p| p.step >= 1))
        .await;
    // The coordinator gives up on attempt 1 and places attempt 2 elsewhere.
    let expired = harness
        .resources
        .jobs
        .apply(
            id,
            &JobEvent::LeaseExpired {
                attempt: 1,
                retry_at_ms: 0,
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(expired.state, JobState::Queued);
    let lease = Lease {
        node: NodeId::new("elsewhere").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    let second = harness
        .resources
        .jobs
        .apply(id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap();
    assert_eq!(second.attempt, 2);
    // Attempt 1's next progress write is refused and the slot stops.
    harness
        .wait_for_heartbeat(|beat| beat.slots[0].job.is_none())
        .await;
    let (record, _) = harness.resources.jobs.get(id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Assigned, 2));
    assert!(record.result.is_none());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_a_running_job_back_at_a_step_boundary_and_removes_the_heartbeat() {
    // Several seconds of work and a short drain deadline: the job cannot finish in time.
    let harness = start_with(5.0, 100).await;
    let (id, reply) = harness.place(100).await;
    assert_eq!(reply, AssignReply::Accepted);
    let before = harness
        .wait_for_state(id, |r| r.progress.is_some_and(|p| p.step >= 2))
        .await;
    let steps_before = before.progress.map_or(0, |p| p.step);
    let mut harness = harness;
    harness.shutdown.cancel();
    (&mut harness.node).await.unwrap().unwrap();
    assert!(harness.resources.nodes.get("n1").await.unwrap().is_none());
    let (record, _) = harness.resources.jobs.get(id).await.unwrap().unwrap();
    // Paused, not failed: the work done so far is kept and no attempt is spent.
    assert_eq!(record.state, JobState::Preempted, "{record:?}");
    assert!(record.error.is_none(), "{record:?}");
    assert_eq!(record.failed_attempts, 0, "{record:?}");
    assert!(record.result.is_none());
    let resume = record.resume.expect("a resume point");
    assert!(
        resume.step >= steps_before && resume.step < 100,
        "resumes at step {} after {steps_before} were reported",
        resume.step
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_finds_no_object_store_is_tried_again_until_the_store_is_back() {
    let harness = start(0.0005).await;
    // The bucket's stream is gone, as while a replicated bucket has no leader.
    harness
        .resources
        .context
        .delete_object_store(names::OBJECT_STORE_VIDEOS)
        .await
        .unwrap();
    let (id, reply) = harness.place(2).await;
    assert_eq!(reply, AssignReply::Accepted);
    harness
        .wait_for_state(id, |r| r.state == JobState::Encoding)
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (record, _) = harness.resources.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Encoding, "{:?}", record.error);
    let videos = harness
        .resources
        .context
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: names::OBJECT_STORE_VIDEOS.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let record = harness.wait_for_state(id, |r| r.state.is_terminal()).await;
    assert_eq!(record.state, JobState::Succeeded, "{:?}", record.error);
    assert_eq!(record.attempt, 1);
    let result = record.result.unwrap();
    let mut bytes = Vec::new();
    let mut object = videos.get(&result.object_name).await.unwrap();
    object.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes.len() as u64, result.size_bytes);
    harness.stop().await;
}
