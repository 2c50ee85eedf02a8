//! The short fault-injection run (one round of each fault kind) against the real `mochi`
//! binary: nats-server, two coordinators, three simulated GPU nodes and a gateway as
//! separate processes; then the same on a cluster of three nats-servers. No accepted job
//! may be lost, duplicated, left without a valid MP4, or kept running after an honoured
//! cancel. The long run is documented in docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::path::PathBuf;

/// One fault run at a time: each times leases and heartbeats on the same two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn no_accepted_job_is_lost_under_process_kills_stops_and_nats_restarts() {
    run_short(1);
}

/// The prod overlay's shape: three nats-servers, every stream and bucket replicated on each;
/// the NATS fault kills one of them, and the others carry on.
#[test]
fn no_accepted_job_is_lost_when_one_of_three_nats_servers_dies() {
    run_short(3);
}

fn run_short(nats_servers: usize) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let nats_server =
        testkit::nats_server_binary().expect("nats-server: run scripts/install-deps.sh");
    let mut config = loadtest::faults::FaultConfig::short(
        PathBuf::from(env!("CARGO_BIN_EXE_mochi")),
        nats_server,
    );
    config.nats_servers = nats_servers;
    // One thread: the harness binds its children to the thread that starts them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(Box::pin(loadtest::faults::run(&config)))
        .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.accepted >= 12, "too few jobs accepted: {report:?}");
    assert_eq!(report.faults.values().sum::<u32>(), 4, "{report:?}");
    assert!(
        report.passed(),
        "violations: {:#?} (logs kept in {:?})",
        report.violations,
        report.kept_dir
    );
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicated_results, 0);
    let succeeded = report.final_states.get("succeeded").copied().unwrap_or(0);
    assert!(succeeded > 0, "no job succeeded: {report:?}");
}
