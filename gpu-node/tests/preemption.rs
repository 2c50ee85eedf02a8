//! Step-boundary preemption: a paused job resumes from the saved step (and latent) and
//! makes the same video as a run never paused — through the node (simulated backend, real
//! nats-server, the test acting as the coordinator) and on the tiny Mochi backend.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::Duration;

use candle_core::Device;
use futures::StreamExt;
use gpu_node::backend::mochi::{MochiBackend, MochiOptions};
use gpu_node::backend::simulated::SimulatedBackend;
use gpu_node::backend::{Backend, BackendJob, Control, LatentCheckpoint, StepObserver};
use gpu_node::config::VideoConfig;
use gpu_node::model_dir::tiny;
use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, Preempt, PreemptReply, ProgressEvent};
use protocol::record::JobEvent;
use protocol::{JobId, JobRecord, JobSpec, JobState, Limits, codec, names, now_ms};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const STEPS: u32 = 16;
/// About 48 ms per step for the job below: the pause surely lands mid-run.
const TIME_SCALE: f64 = 5.0;

fn spec() -> JobSpec {
    JobSpec {
        num_frames: Some(13),
        width: Some(128),
        height: Some(64),
        steps: Some(STEPS),
        ..JobSpec::new("x")
    }
}

/// Places the job's current record on slot 0 of `n1` (a new attempt) and sends the
/// assignment with the record's resume point, as the coordinator's slot proxy does.
async fn place(client: &async_nats::Client, resources: &Resources, id: JobId) -> JobRecord {
    let placed = common::place(resources, id, common::lease()).await;
    let assign = Assign {
        job_id: id,
        attempt: placed.attempt,
        slot: 0,
        spec: placed.spec.clone(),
        shape: placed.shape,
        seed: placed.seed,
        lease_ms: 60_000,
        resume: placed.resume.clone(),
    };
    assert_eq!(
        common::send_assign(client, &assign).await,
        AssignReply::Accepted
    );
    placed
}

async fn preempt(client: &async_nats::Client, id: JobId, attempt: u32) -> PreemptReply {
    let request = Preempt {
        job_id: id,
        attempt,
    };
    let reply = client
        .request(
            names::node_preempt_subject("n1"),
            codec::encode(&request).unwrap().into(),
        )
        .await
        .unwrap();
    codec::decode(&reply.payload).unwrap()
}

async fn wait_for(
    resources: &Resources,
    id: JobId,
    wanted: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    if let Some(record) = common::poll_job(resources, id, 1000, wanted).await {
        return record;
    }
    panic!(
        "job {id} never reached the wanted state: {:?}",
        resources.jobs.get(id).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_paused_on_the_node_resumes_from_its_step_with_the_same_mp4_bytes() {
    let common::Nats {
        server: _server,
        client,
        resources,
    } = common::nats().await;
    let shutdown = CancellationToken::new();
    let mut config = common::config();
    config.simulated.time_scale = TIME_SCALE;
    let video_config = config.video.clone();
    let node = common::spawn_node(config, &resources, &client, &shutdown);
    common::wait_for_node(&resources).await;

    let (id, shape) = common::create_job(&resources, spec(), 5, 3).await;
    let mut events = client
        .subscribe(names::job_events_subject(&id.to_string()))
        .await
        .unwrap();
    place(&client, &resources, id).await;
    wait_for(&resources, id, |r| r.progress.is_some_and(|p| p.step >= 2)).await;

    // A pause for an attempt the node does not run is refused; the real one is taken.
    assert!(matches!(
        preempt(&client, id, 7).await,
        PreemptReply::Refused { .. }
    ));
    assert_eq!(preempt(&client, id, 1).await, PreemptReply::Pausing);
    let paused = wait_for(&resources, id, |r| r.state == JobState::Preempted).await;
    let resume = paused.resume.clone().unwrap();
    assert!(
        (2..STEPS).contains(&resume.step),
        "paused mid-run at a step boundary: {resume:?}"
    );
    assert_eq!(resume.latent_object, format!("{id}/paused/1"));
    assert_eq!(paused.pauses(), 1);
    assert_eq!(paused.failed_attempts, 0, "a pause is not a failure");

    // The slot is free at once: a paused job leaves nothing behind on the node.
    for _ in 0..500 {
        let beat: protocol::messages::NodeHeartbeat =
            codec::decode(&resources.nodes.get("n1").await.unwrap().unwrap()).unwrap();
        if beat.slots[0].job.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The coordinator's part: back to the queue, then placed again with the resume point.
    resources
        .jobs
        .apply(id, &JobEvent::Requeued, now_ms())
        .await
        .unwrap();
    let resumed = place(&client, &resources, id).await;
    assert_eq!(resumed.attempt, 2);
    let done = wait_for(&resources, id, |r| r.state.is_terminal()).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);

    // Attempt 2 ran only the steps after the pause.
    let mut second_attempt_steps = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), events.next()).await
    {
        let event: ProgressEvent = codec::decode(&message.payload).unwrap();
        if event.attempt == 2 && event.state == JobState::Running {
            second_attempt_steps.push(event.step);
        }
    }
    assert_eq!(
        second_attempt_steps.first().copied(),
        Some(resume.step + 1),
        "{second_attempt_steps:?}"
    );
    assert_eq!(second_attempt_steps.last().copied(), Some(STEPS));

    // Same MP4 bytes as the job never paused.
    let result = done.result.unwrap();
    let mut object = resources.videos.get(&result.object_name).await.unwrap();
    let mut stored = Vec::new();
    object.read_to_end(&mut stored).await.unwrap();
    let whole = BackendJob {
        job_id: id,
        attempt: 1,
        spec: done.spec.clone(),
        shape,
        seed: 5,
        resume: None,
        checkpoint: None,
        resume_latent: None,
    };
    let backend = SimulatedBackend::new(gpu_node::config::SimulatedConfig {
        time_scale: 0.0,
        ..Default::default()
    });
    let reference = backend.run(&whole, &mut Continue).unwrap().video().unwrap();
    let reference = gpu_node::mp4::encode(&reference, &video_config).unwrap();
    assert_eq!(stored, reference);

    shutdown.cancel();
    node.await.unwrap().unwrap();
}

struct Continue;

impl StepObserver for Continue {
    fn on_step(&mut self, _step: u32, _total: u32) -> Control {
        Control::Continue
    }
}

/// Pauses after step `at`; records every step seen.
struct PauseAfter {
    at: u32,
    steps: Vec<u32>,
}

impl StepObserver for PauseAfter {
    fn on_step(&mut self, step: u32, _total: u32) -> Control {
        self.steps.push(step);
        if step == self.at {
            Control::Pause
        } else {
            Control::Continue
        }
    }
}

#[test]
fn the_tiny_mochi_paused_after_step_k_and_resumed_from_its_saved_latent_makes_the_same_mp4() {
    let dir = tempfile::tempdir().unwrap();
    tiny::ensure(dir.path()).unwrap();
    let backend = MochiBackend::load(dir.path(), &Device::Cpu, MochiOptions::default()).unwrap();
    let spec = JobSpec {
        steps: Some(5),
        num_frames: Some(7),
        width: Some(96),
        height: Some(64),
        guidance_scale: Some(4.5),
        negative_prompt: "blurry".to_owned(),
        ..JobSpec::new("a red fox running through fresh snow")
    };
    let shape = spec.validate(&Limits::default()).unwrap();
    let job = BackendJob {
        job_id: JobId::new(),
        attempt: 1,
        spec,
        shape,
        seed: 11,
        resume: None,
        checkpoint: None,
        resume_latent: None,
    };
    let video = VideoConfig::default();
    let uninterrupted = backend.run(&job, &mut Continue).unwrap().video().unwrap();
    let uninterrupted_mp4 = gpu_node::mp4::encode(&uninterrupted, &video).unwrap();

    for k in [1, 3] {
        let mut observer = PauseAfter {
            at: k,
            steps: Vec::new(),
        };
        let Some(paused) = backend.run(&job, &mut observer).unwrap().paused() else {
            panic!("the run should pause after step {k}");
        };
        assert_eq!(observer.steps, (1..=k).collect::<Vec<_>>());
        assert_eq!(paused.steps_done, k);
        // Through the bytes the slot stores.
        let saved = paused.latent.unwrap().to_bytes();
        let latent = LatentCheckpoint::from_bytes(&saved).unwrap();
        let mut resumed = job.clone();
        resumed.attempt = 2;
        resumed.resume = Some(protocol::record::ResumePoint {
            step: paused.steps_done,
            latent_object: "job/paused/1".to_owned(),
        });
        resumed.resume_latent = Some(latent);
        let mut observer = PauseAfter {
            at: u32::MAX,
            steps: Vec::new(),
        };
        let frames = backend
            .run(&resumed, &mut observer)
            .unwrap()
            .video()
            .unwrap();
        assert_eq!(observer.steps, (k + 1..=5).collect::<Vec<_>>());
        assert_eq!(frames, uninterrupted, "paused after step {k}");
        assert_eq!(
            gpu_node::mp4::encode(&frames, &video).unwrap(),
            uninterrupted_mp4
        );
    }

    // A pause asked at the last step is too late: the run finishes with the same video.
    let mut late = PauseAfter {
        at: 5,
        steps: Vec::new(),
    };
    assert_eq!(
        backend.run(&job, &mut late).unwrap().video().unwrap(),
        uninterrupted
    );
}
