//! Reading the GPUs through NVML, against a stand-in for the driver's library that the test
//! compiles (`testkit::fake_nvml_library`: four identical GPUs, GPU `i` at (37 + i) %
//! utilisation with (2 + i) GiB of 80 GiB in use): no machine here has a GPU. What this
//! checks is our side: loading, matching slots to GPUs, reading, a slot's memory watch
//! reading its GPU after each job, and a node that requires NVML refusing to start without
//! it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use gpu_node::config::NvmlMode;
use gpu_node::nvml::{CudaEnv, GpuReader, NvmlSetupError, Sample};
use protocol::messages::AssignReply;
use protocol::{JobSpec, JobState};
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;

fn expected(index: u64) -> Sample {
    Sample {
        utilisation: Some((37.0 + index as f64) / 100.0),
        memory_used_bytes: (2 + index) * GIB,
        memory_total_bytes: 80 * GIB,
    }
}

/// Node `n1`'s test configuration, requiring NVML and reading the stand-in built in `dir`.
fn requiring_the_stand_in(dir: &std::path::Path) -> gpu_node::Config {
    let mut config = common::config();
    config.nvml = NvmlMode::On;
    config.nvml_library = Some(testkit::fake_nvml_library(dir).unwrap());
    config
}

#[test]
fn each_slot_reads_its_own_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let library = testkit::fake_nvml_library(dir.path()).unwrap();
    let (reader, skipped) =
        GpuReader::open(Some(&library), &[(0, 0), (1, 1)], &CudaEnv::default()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(reader.slots(), &[(0, 0), (1, 1)]);
    let samples: Vec<(u32, Sample)> = reader
        .sample()
        .into_iter()
        .map(|(slot, sample)| (slot, sample.unwrap()))
        .collect();
    assert_eq!(samples, vec![(0, expected(0)), (1, expected(1))]);
}

#[test]
fn a_slot_reads_its_gpus_memory_only_when_it_has_the_gpu_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let library = testkit::fake_nvml_library(dir.path()).unwrap();
    let (own, _) = GpuReader::open(Some(&library), &[(0, 0), (1, 1)], &CudaEnv::default()).unwrap();
    assert!(!own.shares_gpu(0) && !own.shares_gpu(1));
    assert_eq!(own.slot_memory_used(0), Some(2 * GIB));
    assert_eq!(own.slot_memory_used(1), Some(3 * GIB));
    assert_eq!(own.slot_memory_used(2), None, "slot 2 is not read");
    testkit::fake_nvml_hold_memory(dir.path(), 300 << 20).unwrap();
    assert_eq!(own.slot_memory_used(0), Some(2 * GIB + (300 << 20)));
    // Two slots on one GPU: the driver's figure is both slots' (and any other process's).
    let (shared, _) = GpuReader::open(
        Some(&library),
        &[(0, 2), (1, 2), (2, 3)],
        &CudaEnv::default(),
    )
    .unwrap();
    assert!(shared.shares_gpu(0) && shared.shares_gpu(1) && !shared.shares_gpu(2));
    assert_eq!(shared.slot_memory_used(0), None);
    assert_eq!(shared.slot_memory_used(1), None);
    assert_eq!(shared.slot_memory_used(2), Some(5 * GIB + (300 << 20)));
}

#[test]
fn visible_devices_send_each_slot_to_the_gpu_cuda_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let library = testkit::fake_nvml_library(dir.path()).unwrap();
    // CUDA sees GPU 3 (by a prefix of its UUID) as device 0 and GPU 1 as device 1; slot 2
    // asks for a third device that CUDA does not show.
    let env = CudaEnv {
        visible_devices: Some("GPU-fa4e0000-0000-0000-0000-000000000003,1".to_owned()),
        pci_bus_order: false,
    };
    let (reader, skipped) =
        GpuReader::open(Some(&library), &[(0, 0), (1, 1), (2, 2)], &env).unwrap();
    assert_eq!(reader.slots(), &[(0, 3), (1, 1)]);
    assert!(
        matches!(skipped.as_slice(), [NvmlSetupError::Slot { slot: 2, .. }]),
        "{skipped:?}"
    );
    let first = reader.sample().remove(0);
    assert_eq!((first.0, first.1.unwrap()), (0, expected(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_requires_nvml_does_not_start_without_it() {
    let nats = common::nats().await;
    let mut config = common::config();
    config.nvml = NvmlMode::On;
    config.nvml_library = Some("/nonexistent/libnvidia-ml.so.1".into());
    let shutdown = CancellationToken::new();
    let node = common::spawn_node(config, &nats.resources, &nats.client, &shutdown);
    let ended = tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .expect("the node should refuse to start, not run")
        .unwrap();
    let error = ended
        .expect_err("nvml = on without NVML must not start")
        .to_string();
    assert!(
        error.contains("nvml") && error.contains("/nonexistent/libnvidia-ml.so.1"),
        "{error}"
    );
    assert!(nats.resources.nodes.get("n1").await.unwrap().is_none());
}

/// Reading NVML every 100 ms beside the slot disturbs neither its start nor its job (the
/// figures it reads are checked through Prometheus in `tests/monitoring.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reading_nvml_still_runs_jobs() {
    let nats = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = requiring_the_stand_in(dir.path());
    config.nvml_interval_ms = 100;
    let shutdown = CancellationToken::new();
    let node = common::spawn_node(config, &nats.resources, &nats.client, &shutdown);
    common::wait_for_node(&nats.resources).await;
    let spec = JobSpec {
        num_frames: Some(13),
        width: Some(128),
        height: Some(64),
        steps: Some(4),
        ..JobSpec::new("read while it runs")
    };
    let (id, reply) = common::create_and_assign(&nats.resources, &nats.client, spec, 5).await;
    assert_eq!(reply, AssignReply::Accepted);
    let done = common::poll_job(&nats.resources, id, 3_000, |record| {
        record.state.is_terminal()
    })
    .await
    .expect("the job should end within 30 s");
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    shutdown.cancel();
    node.await.unwrap().unwrap();
}

/// On a GPU the backend does not measure its memory; the slot's memory watch reads the GPU's
/// from NVML after each job (the stand-in's GPU 0: 2 GiB in use, plus what the test holds),
/// reports it in the heartbeat, and marks the slot unhealthy when it stays more than the
/// limit (512 MiB) above the level after the first job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_memory_that_stays_up_after_a_job_marks_the_slot_unhealthy() {
    let nats = common::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let config = requiring_the_stand_in(dir.path());
    assert_eq!(config.memory_growth_limit_bytes, 512 << 20);
    let total = config.memory_bytes_per_slot;
    let shutdown = CancellationToken::new();
    let node = common::spawn_node(config, &nats.resources, &nats.client, &shutdown);
    common::wait_for_idle_slot(&nats.resources, |beat| beat.accepting).await;
    let run = |seed: u64| {
        let (resources, client) = (nats.resources.clone(), nats.client.clone());
        async move {
            let spec = JobSpec {
                num_frames: Some(7),
                width: Some(64),
                height: Some(64),
                steps: Some(2),
                ..JobSpec::new("measured on the GPU")
            };
            let (id, reply) = common::create_and_assign(&resources, &client, spec, seed).await;
            if reply != AssignReply::Accepted {
                return reply;
            }
            let done = common::poll_job(&resources, id, 3_000, |record| record.state.is_terminal())
                .await
                .expect("the job should end within 30 s");
            assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
            reply
        }
    };
    let idle_with = |used: u64| {
        move |beat: &protocol::messages::NodeHeartbeat| {
            beat.slots[0].memory_free_bytes == total - used
        }
    };

    // The first job sets the baseline: the GPU's 2 GiB, reported as used while idle.
    assert_eq!(run(1).await, AssignReply::Accepted);
    let beat = common::wait_for_idle_slot(&nats.resources, idle_with(2 * GIB)).await;
    assert!(beat.slots[0].healthy);
    // 256 MiB more after the next job is within the limit.
    testkit::fake_nvml_hold_memory(dir.path(), 256 << 20).unwrap();
    assert_eq!(run(2).await, AssignReply::Accepted);
    let beat = common::wait_for_idle_slot(&nats.resources, idle_with(2 * GIB + (256 << 20))).await;
    assert!(
        beat.slots[0].healthy,
        "{:?}",
        beat.slots[0].unhealthy_reason
    );
    // 1 GiB more after the third is not: the slot refuses work and says why.
    testkit::fake_nvml_hold_memory(dir.path(), GIB).unwrap();
    assert_eq!(run(3).await, AssignReply::Accepted);
    let beat = common::wait_for_idle_slot(&nats.resources, |beat| !beat.slots[0].healthy).await;
    let reason = beat.slots[0].unhealthy_reason.clone().unwrap();
    assert!(
        reason.contains("3072 MiB in use, 1024 MiB above the 2048 MiB baseline (limit 512 MiB)"),
        "{reason}"
    );
    let AssignReply::Rejected { reason } = run(4).await else {
        panic!("an unhealthy slot took a job");
    };
    assert!(reason.contains("memory did not come back"), "{reason}");
    shutdown.cancel();
    node.await.unwrap().unwrap();
}
