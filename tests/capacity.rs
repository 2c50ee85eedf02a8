//! The short capacity run: our gateway + NATS + coordinator and the FastAPI + Redis peer
//! (`loadtest/peers/fastapi_redis`) under the same closed loop, then jobs that take no GPU
//! time on free slots. It checks that every phase ran and that every accepted submission
//! became a stored record; the speed figures are a benchmark (docs/loadtest.md), not
//! asserted here.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::path::PathBuf;

#[test]
fn capacity_phases_run_against_the_peer_and_every_accepted_job_is_taken_in() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = loadtest::capacity::CapacityConfig {
        mochi: PathBuf::from(env!("CARGO_BIN_EXE_mochi")),
        nats_server: testkit::nats_server_binary()
            .expect("nats-server: run scripts/install-deps.sh"),
        redis_server: PathBuf::from("redis-server"),
        peer_python: root.join(".venv-peer/bin/python"),
        peer_dir: root.join("loadtest/peers/fastapi_redis"),
        connections: vec![16],
        seconds: 2.0,
        rounds: 1,
        start_jobs: 40,
        start_rate: 20.0,
        durable: true,
        nats_servers: 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(Box::pin(loadtest::capacity::run(&config)))
        .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.phases.len(), 2);
    for phase in &report.phases {
        assert!(phase.accepted > 0, "{phase:?}");
        assert_eq!(phase.errors, 0, "{phase:?}");
    }
    // Ours drained: every accepted submission has its record (drain returned).
    assert!(report.phases[0].drain_s.is_some());
    assert_eq!(report.ratios.len(), 1);
    assert_eq!(report.started, 40, "every job started on a free slot");
    assert_eq!(report.succeeded, 40, "and made its video");
    assert!(report.submit_to_start_ms.p50 > 0.0);
}
