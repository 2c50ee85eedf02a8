//! Reading the GPUs through NVML, against a stand-in for the driver's library that the test
//! compiles (`testkit::fake_nvml_library`: four identical GPUs, GPU `i` at (37 + i) %
//! utilisation with (2 + i) GiB of 80 GiB in use): no machine here has a GPU. What this
//! checks is our side: loading, matching slots to GPUs, reading, and a node that requires
//! NVML refusing to start without it.
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
    let mut config = common::config();
    config.nvml = NvmlMode::On;
    config.nvml_library = Some(testkit::fake_nvml_library(dir.path()).unwrap());
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
