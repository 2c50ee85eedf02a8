//! The latent checkpoint through a real node (tiny Mochi model, real nats-server): an
//! attempt saves its denoised latent under `<job>/latent/<attempt>` before decoding, and a
//! retried attempt decodes from an earlier attempt's latent without denoising.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::time::Duration;

use gpu_node::Config;
use gpu_node::backend::LatentCheckpoint;
use gpu_node::config::BackendKind;
use protocol::jetstream::{Resources, connect, ensure_resources};
use protocol::messages::{Assign, AssignReply};
use protocol::record::{JobEvent, JobFailure, Lease};
use protocol::{
    ErrorCode, JobId, JobRecord, JobSpec, JobState, Limits, NodeId, TenantId, codec, names, now_ms,
};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

fn spec() -> JobSpec {
    JobSpec {
        num_frames: Some(7),
        width: Some(96),
        height: Some(64),
        steps: Some(3),
        ..JobSpec::new("a red fox")
    }
}

async fn object(resources: &Resources, name: &str) -> Option<Vec<u8>> {
    let mut object = resources.videos.get(name).await.ok()?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.ok()?;
    Some(bytes)
}

/// Creates a job with `seed`, moves it to attempt `attempt` (failing the earlier ones) and
/// assigns it to slot 0 of node `n1`.
async fn run_job(
    client: &async_nats::Client,
    resources: &Resources,
    seed: u64,
    attempt: u32,
    before_assign: impl AsyncFnOnce(JobId),
) -> JobRecord {
    let spec = spec();
    let shape = spec.validate(&Limits::default()).unwrap();
    let id = JobId::new();
    let record = JobRecord::queued(
        id,
        TenantId::default_tenant(),
        spec.clone(),
        shape,
        seed,
        5,
        now_ms(),
    );
    assert!(resources.jobs.create(&record).await.unwrap());
    let lease = Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    let mut placed = resources
        .jobs
        .apply(
            id,
            &JobEvent::Assigned {
                lease: lease.clone(),
            },
            now_ms(),
        )
        .await
        .unwrap();
    while placed.attempt < attempt {
        let failure = JobFailure {
            code: ErrorCode::JobFailed,
            message: "out of device memory while decoding".to_owned(),
            retryable: true,
        };
        let failed = JobEvent::Failed {
            attempt: placed.attempt,
            failure,
            retry_at_ms: now_ms(),
        };
        resources.jobs.apply(id, &failed, now_ms()).await.unwrap();
        placed = resources
            .jobs
            .apply(
                id,
                &JobEvent::Assigned {
                    lease: lease.clone(),
                },
                now_ms(),
            )
            .await
            .unwrap();
    }
    before_assign(id).await;
    let assign = Assign {
        job_id: id,
        attempt: placed.attempt,
        slot: 0,
        spec,
        shape,
        seed,
        lease_ms: 60_000,
        resume: None,
    };
    let reply = client
        .request(
            names::node_assign_subject("n1"),
            codec::encode(&assign).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(
        codec::decode::<AssignReply>(&reply.payload).unwrap(),
        AssignReply::Accepted
    );
    for _ in 0..3000 {
        let (record, _) = resources.jobs.get(id).await.unwrap().unwrap();
        if record.state.is_terminal() {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_decodes_from_the_latent_an_earlier_attempt_saved() {
    let server = testkit::NatsServer::start();
    let nats = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "test").await.unwrap();
    let resources = ensure_resources(client.clone(), &nats.jetstream)
        .await
        .unwrap();
    let model = tempfile::tempdir().unwrap();
    let mut config = Config::for_test();
    config.node_id = Some("n1".to_owned());
    config.backend = BackendKind::Mochi;
    config.mochi.embedded_dir = model.path().join("tiny");
    let shutdown = CancellationToken::new();
    let node = tokio::spawn(gpu_node::run(
        config,
        resources.clone(),
        client.clone(),
        shutdown.clone(),
    ));
    for _ in 0..500 {
        if resources.nodes.get("n1").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Attempt 1 of a first job saves its latent before decoding.
    let first = run_job(&client, &resources, 5, 1, async |_| {}).await;
    assert_eq!(first.state, JobState::Succeeded, "{:?}", first.error);
    let saved = object(&resources, &format!("{}/latent/1", first.id))
        .await
        .expect("latent of attempt 1");
    let latent = LatentCheckpoint::from_bytes(&saved).unwrap();
    assert_eq!(latent.dims, vec![1, 12, 2, 8, 12]);

    // Attempt 3 of a second job, with another seed, finds the latent attempt 1 saved (the
    // first job's, put there by the test): it decodes it without denoising, so its video is
    // the first job's, and it saves no latent of its own.
    let second = run_job(&client, &resources, 6, 3, async |id| {
        let name = format!("{id}/latent/1");
        let metadata = async_nats::jetstream::object_store::ObjectMetadata {
            name,
            ..Default::default()
        };
        resources
            .videos
            .put(metadata, &mut std::io::Cursor::new(saved.clone()))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(second.state, JobState::Succeeded, "{:?}", second.error);
    assert_eq!(second.attempt, 3);
    assert_eq!(
        second.result.as_ref().unwrap().sha256,
        first.result.as_ref().unwrap().sha256
    );
    assert!(
        object(&resources, &format!("{}/latent/3", second.id))
            .await
            .is_none()
    );

    shutdown.cancel();
    node.await.unwrap().unwrap();
}
