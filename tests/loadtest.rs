//! The short load-test report: one offered load, a few dozen requests, on a stack of real
//! processes (nats-server, two coordinators, two GPU nodes of four simulated H100 slots,
//! a gateway with API keys and quotas), against the simulator on the same trace. The full
//! run (three loads, 150 requests each) is documented in docs/loadtest.md.
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::path::PathBuf;
use std::time::Duration;

use coordinator::sim::trace::Arrivals;
use loadtest::scenario::ScenarioConfig;

#[test]
fn an_open_loop_run_follows_every_job_and_reports_against_the_simulator() {
    let nats_server =
        testkit::nats_server_binary().expect("nats-server: run scripts/install-deps.sh");
    let config = ScenarioConfig {
        mochi: PathBuf::from(env!("CARGO_BIN_EXE_mochi")),
        nats_server,
        loads: vec![0.85],
        jobs: 24,
        time_scale: 0.005,
        nodes: 2,
        slots_per_node: 4,
        arrivals: Arrivals::Poisson,
        tenants: 4,
        quota: 100,
        seed: 3,
        drain: Duration::from_secs(60),
        progress: false,
    };
    let trace = config.trace(0.85, 0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(Box::pin(loadtest::scenario::run(&config)))
        .unwrap();
    assert_eq!(results.len(), 1);
    let result = &results[0];
    let summary = result.summary();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert_eq!(summary.submitted, trace.len(), "every request was sent");
    // Only the mix's over-sized requests (1920×1088) are refused, at submit, with a
    // sentence; all others are accepted and end with a valid MP4.
    for job in result.jobs.iter().filter(|j| !j.accepted()) {
        assert_eq!(job.shape[2..4], [1920, 1088], "{job:?}");
        assert_eq!(job.http_status.map(|s| s / 100), Some(4), "{job:?}");
        assert!(job.error_message.is_some(), "{job:?}");
    }
    assert!(summary.accepted >= trace.len() - 3, "{summary:?}");
    assert_eq!(
        summary.states.get("succeeded").copied(),
        Some(summary.accepted),
        "{:?}",
        summary.states
    );
    let artifacts = summary
        .metrics
        .iter()
        .find(|m| m.name == "valid artifacts")
        .unwrap();
    assert_eq!(artifacts.pass, Some(true), "{artifacts:?}");
    // Every accepted job has a timeline the service stamped, in order.
    for job in result.jobs.iter().filter(|j| j.accepted()) {
        let (created, start, end) = (
            job.created_ms.unwrap(),
            job.first_start_ms.unwrap(),
            job.ended_ms.unwrap(),
        );
        assert!(created <= start && start <= end, "{job:?}");
    }
    // The simulator ran the same trace: it started the jobs the live stack started.
    let all = summary
        .versus_simulator
        .iter()
        .find(|(lane, _)| lane == "all")
        .unwrap();
    assert_eq!(all.1.jobs, summary.accepted, "{all:?}");
    let html = loadtest::report::html::render("short run", &results);
    assert_eq!(html.matches("<svg").count(), 5, "five charts");
    let files = loadtest::report::html::chart_files(result);
    assert_eq!(files.len(), 5);
    assert!(
        files
            .iter()
            .all(|(_, svg)| svg.starts_with("<svg") && svg.contains("fill=\"white\""))
    );
    assert!(html.contains("Live scheduler against the simulator"));
}
