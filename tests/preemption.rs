//! Step-boundary preemption end to end over a real nats-server: the coordinator (length-aware
//! policy, preemption on) and one GPU node with one slot (simulated backend). A short job
//! that arrives while the slot runs a long one gets the slot at a step boundary; the long
//! job is paused, goes back to the queue with its resume point, resumes from that step and
//! succeeds with the same video as a run never paused.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::{Duration, Instant};

use coordinator::cost::{CostModel, GpuClass};
use gpu_node::backend::simulated::SimulatedBackend;
use gpu_node::backend::{Backend, BackendJob, Control, StepObserver};
use protocol::jetstream::Resources;
use protocol::messages::SubmitRequest;
use protocol::{JobId, JobRecord, JobSpec, JobState, Limits, codec, names};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// About 60 ms per step of the long job on the simulated backend.
const TIME_SCALE: f64 = 0.7;
const LONG_STEPS: u32 = 48;

fn long_spec() -> JobSpec {
    JobSpec {
        num_frames: Some(31),
        width: Some(256),
        height: Some(144),
        steps: Some(LONG_STEPS),
        ..JobSpec::new("a long job")
    }
}

fn short_spec() -> JobSpec {
    JobSpec {
        num_frames: Some(7),
        width: Some(64),
        height: Some(64),
        steps: Some(4),
        ..JobSpec::new("a short job")
    }
}

async fn submit(resources: &Resources, spec: JobSpec) -> JobId {
    let job_id = JobId::new();
    let request = SubmitRequest {
        job_id: Some(job_id),
        spec,
        idempotency_key: None,
        remixed_from: None,
        webhook: None,
    };
    let subject = names::submit_job_subject("acme", &job_id.to_string());
    resources
        .context
        .publish(subject, codec::to_json(&request).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    job_id
}

async fn record(resources: &Resources, job_id: JobId) -> Option<JobRecord> {
    resources.jobs.get(job_id).await.unwrap().map(|(r, _)| r)
}

async fn wait_for(
    resources: &Resources,
    job_id: JobId,
    what: &str,
    wanted: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(record) = record(resources, job_id).await
            && wanted(&record)
        {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {:?}",
            record(resources, job_id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Continue;

impl StepObserver for Continue {
    fn on_step(&mut self, _step: u32, _total: u32) -> Control {
        Control::Continue
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_job_takes_the_only_slot_at_a_step_boundary_and_the_long_job_resumes_and_succeeds()
{
    let (_server, client, resources) = common::nats("preemption").await;
    let shutdown = CancellationToken::new();

    // Lanes between the two jobs' predicted GPU times, so that one is short and one long
    // whatever the cost model's coefficients; tiny jobs are paused whatever is left of them.
    let limits = Limits::default();
    let model = CostModel::default();
    let reference = |spec: &JobSpec| {
        model
            .estimate(&spec.validate(&limits).unwrap(), GpuClass::H100)
            .gpu_seconds
    };
    let (short_s, long_s) = (reference(&short_spec()), reference(&long_spec()));
    assert!(short_s < long_s);
    let mut config = coordinator::Config::for_test();
    config.length_aware.preemption = true;
    config.length_aware.min_remaining_to_pause_s = 0.0;
    config.length_aware.max_boundary_wait_s = f64::MAX;
    config.length_aware.lanes.short_max_s = (short_s * long_s).sqrt();
    config.length_aware.lanes.medium_max_s = (short_s * long_s).sqrt();

    let mut node_config = gpu_node::Config::for_test();
    node_config.node_id = Some("node-a".to_owned());
    node_config.slots = 1;
    node_config.simulated.time_scale = TIME_SCALE;
    let video_config = node_config.video.clone();

    let mut roles = tokio::task::JoinSet::new();
    roles.spawn({
        let (resources, client, shutdown) = (resources.clone(), client.clone(), shutdown.clone());
        async move {
            coordinator::run(config, resources, client, shutdown)
                .await
                .map_err(|e| format!("coordinator: {e}"))
        }
    });
    roles.spawn({
        let (resources, client, shutdown) = (resources.clone(), client.clone(), shutdown.clone());
        async move {
            gpu_node::run(node_config, resources, client, shutdown)
                .await
                .map_err(|e| format!("gpu-node: {e}"))
        }
    });

    let long = submit(&resources, long_spec()).await;
    wait_for(&resources, long, "the long job is a few steps in", |r| {
        r.state == JobState::Running && r.progress.is_some_and(|p| p.step >= 3)
    })
    .await;
    let short = submit(&resources, short_spec()).await;
    let short_done = wait_for(&resources, short, "the short job is done", |r| {
        r.state.is_terminal()
    })
    .await;
    assert_eq!(
        short_done.state,
        JobState::Succeeded,
        "{:?}",
        short_done.error
    );
    let long_then = record(&resources, long).await.unwrap();
    assert!(
        !long_then.state.is_terminal(),
        "the short job waited for the whole long job: {long_then:?}"
    );

    let long_done = wait_for(&resources, long, "the long job is done", |r| {
        r.state.is_terminal()
    })
    .await;
    assert_eq!(
        long_done.state,
        JobState::Succeeded,
        "{:?}",
        long_done.error
    );
    assert_eq!(long_done.pauses(), 1, "{:?}", long_done.history);
    assert_eq!(long_done.failed_attempts, 0, "a pause is not a failure");
    assert_eq!(long_done.attempt, 2, "one attempt paused, one resumed");
    let paused = long_done
        .history
        .iter()
        .find(|entry| entry.to == JobState::Preempted)
        .unwrap();
    assert_eq!(paused.attempt, 1);
    assert!(
        short_done.started_at_ms.unwrap() >= paused.at_ms,
        "the short job ran on the slot the pause freed"
    );
    assert!(short_done.finished_at_ms < long_done.finished_at_ms);

    // The same MP4 bytes as the long job never paused.
    let result = long_done.result.unwrap();
    let mut object = resources.videos.get(&result.object_name).await.unwrap();
    let mut stored = Vec::new();
    object.read_to_end(&mut stored).await.unwrap();
    let backend = SimulatedBackend::new(gpu_node::config::SimulatedConfig {
        time_scale: 0.0,
        ..Default::default()
    });
    let whole = BackendJob {
        job_id: long,
        attempt: 1,
        spec: long_done.spec.clone(),
        shape: long_done.shape,
        seed: long_done.seed,
        resume: None,
        checkpoint: None,
        resume_latent: None,
    };
    let reference = backend.run(&whole, &mut Continue).unwrap().video().unwrap();
    assert_eq!(
        stored,
        gpu_node::mp4::encode(&reference, &video_config).unwrap()
    );

    shutdown.cancel();
    while let Some(role) = roles.join_next().await {
        role.unwrap().unwrap();
    }
}
