//! The latent checkpoint through a real node (tiny Mochi model, real nats-server): an
//! attempt saves its denoised latent under `<job>/latent/<attempt>` (while decoding), and a
//! retried attempt decodes from an earlier attempt's latent without denoising.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use gpu_node::backend::LatentCheckpoint;
use protocol::jetstream::Resources;
use protocol::messages::AssignReply;
use protocol::record::{JobEvent, JobFailure};
use protocol::{ErrorCode, JobId, JobRecord, JobSpec, JobState, now_ms};
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
    let (id, shape) = common::create_job(resources, spec.clone(), seed, 5).await;
    let lease = common::lease();
    let mut placed = common::place(resources, id, lease.clone()).await;
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
        placed = common::place(resources, id, lease.clone()).await;
    }
    before_assign(id).await;
    let assign = common::assign_from_start(&placed, spec, shape, seed);
    assert_eq!(
        common::send_assign(client, &assign).await,
        AssignReply::Accepted
    );
    common::poll_job(resources, id, 3000, |record| record.state.is_terminal())
        .await
        .unwrap_or_else(|| panic!("job {id} did not finish"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_decodes_from_the_latent_an_earlier_attempt_saved() {
    let common::Nats {
        server: _server,
        client,
        resources,
    } = common::nats().await;
    let model = tempfile::tempdir().unwrap();
    let config = common::tiny_mochi_config(model.path());
    let shutdown = CancellationToken::new();
    let node = common::spawn_node(config, &resources, &client, &shutdown);
    common::wait_for_node(&resources).await;

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
