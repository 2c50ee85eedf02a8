//! A slot whose memory does not come back marks itself unhealthy: a real node (tiny Mochi
//! model on the CPU, real nats-server) measures the memory in use after each job and
//! reports it in the heartbeat; when it stays above the level after the first job by more
//! than the limit (here: the test holds 96 MiB between two jobs, as a leak would), the slot
//! reports itself unhealthy with the figures and refuses the next assignment.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use protocol::jetstream::Resources;
use protocol::messages::AssignReply;
use protocol::{JobId, JobRecord, JobSpec, JobState};
use tokio_util::sync::CancellationToken;

/// Creates and assigns a small job to slot 0; returns its id and the node's answer.
async fn assign(client: &async_nats::Client, resources: &Resources) -> (JobId, AssignReply) {
    let spec = JobSpec {
        num_frames: Some(7),
        width: Some(96),
        height: Some(64),
        steps: Some(2),
        ..JobSpec::new("a red fox")
    };
    common::create_and_assign(resources, client, spec, 1).await
}

async fn finished(resources: &Resources, id: JobId) -> JobRecord {
    common::poll_job(resources, id, 3000, |record| record.state.is_terminal())
        .await
        .unwrap_or_else(|| panic!("job {id} did not finish"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_that_stays_up_after_a_job_marks_the_slot_unhealthy() {
    let common::Nats {
        server: _server,
        client,
        resources,
    } = common::nats().await;
    let model = tempfile::tempdir().unwrap();
    let mut config = common::tiny_mochi_config(model.path());
    config.memory_growth_limit_bytes = 48 << 20;
    let total = config.memory_bytes_per_slot;
    let shutdown = CancellationToken::new();
    let node = common::spawn_node(config, &resources, &client, &shutdown);
    common::wait_for_idle_slot(&resources, |beat| beat.accepting).await;

    // The first job sets the baseline; the heartbeat reports the measured free memory.
    let (first, reply) = assign(&client, &resources).await;
    assert_eq!(reply, AssignReply::Accepted);
    assert_eq!(finished(&resources, first).await.state, JobState::Succeeded);
    let beat = common::wait_for_idle_slot(&resources, |beat| {
        beat.slots[0].memory_free_bytes < total && beat.slots[0].healthy
    })
    .await;
    let used = total - beat.slots[0].memory_free_bytes;
    let rss = gpu_node::device::process_rss_bytes().unwrap();
    assert!(
        used.abs_diff(rss) < 64 << 20,
        "reported {used} bytes in use, RSS {rss}"
    );

    // 96 MiB held across the next job, as a leak would: the slot marks itself unhealthy.
    let leak = vec![1u8; 96 << 20];
    let (second, reply) = assign(&client, &resources).await;
    assert_eq!(reply, AssignReply::Accepted);
    assert_eq!(
        finished(&resources, second).await.state,
        JobState::Succeeded
    );
    let beat = common::wait_for_idle_slot(&resources, |beat| !beat.slots[0].healthy).await;
    let reason = beat.slots[0].unhealthy_reason.clone().unwrap();
    assert!(
        reason.contains("memory did not come back") && reason.contains("limit 48 MiB"),
        "{reason}"
    );
    let (_, reply) = assign(&client, &resources).await;
    let AssignReply::Rejected { reason } = reply else {
        panic!("an unhealthy slot took a job");
    };
    assert!(
        reason.starts_with("slot unhealthy: memory did not come back"),
        "{reason}"
    );
    assert_eq!(leak.iter().map(|b| u64::from(*b)).sum::<u64>(), 96 << 20);

    shutdown.cancel();
    node.await.unwrap().unwrap();
}
