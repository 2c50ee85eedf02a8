use super::trace::{Arrivals, Mix, from_csv, generate, to_csv};
use super::*;
use crate::policy::{LengthAwareConfig, PolicyKind};

fn small_trace() -> Vec<TraceJob> {
    generate(Mix::standard(), Arrivals::Poisson, 1.0 / 200.0, 300, 11)
}

#[test]
fn traces_are_reproducible_and_round_trip_as_csv() {
    let trace = small_trace();
    assert_eq!(trace, small_trace());
    let read = from_csv(&to_csv(&trace)).expect("parse");
    assert_eq!(read.len(), trace.len());
    for (a, b) in read.iter().zip(&trace) {
        assert_eq!(
            (a.id, a.tenant, a.priority, a.shape),
            (b.id, b.tenant, b.priority, b.shape)
        );
        assert!((a.arrival_s - b.arrival_s).abs() < 1e-3);
    }
    assert!(from_csv("header\n1,2,3").is_err());
    let bursty = generate(
        Mix::standard(),
        Arrivals::Bursty { period_s: 3600.0 },
        0.01,
        2000,
        3,
    );
    let mean_gap = bursty.last().map_or(0.0, |j| j.arrival_s) / 2000.0;
    assert!((mean_gap / 100.0 - 1.0).abs() < 0.5, "mean gap {mean_gap}");
}

#[test]
fn runs_are_deterministic_and_every_job_ends() {
    let trace = small_trace();
    let config = SimConfig::new(vec![GpuClass::H100; 4]);
    for kind in PolicyKind::ALL {
        let policy = kind.build(LengthAwareConfig::default());
        let a = run(policy.as_ref(), &trace, &config);
        let b = run(policy.as_ref(), &trace, &config);
        assert_eq!(a.jobs, b.jobs, "{}", kind.name());
        assert!(
            a.jobs.iter().all(|j| j.fate != Fate::Unfinished),
            "{}",
            kind.name()
        );
        let admits = policy.traits().admission;
        let oversized = trace.iter().filter(|j| j.shape.width == 1920).count();
        assert!(oversized > 0);
        let rejected = a.jobs.iter().filter(|j| j.fate == Fate::Rejected).count();
        let lost = a.jobs.iter().filter(|j| j.fate == Fate::Lost).count();
        if admits {
            assert_eq!((rejected, lost), (oversized, 0), "{}", kind.name());
            assert_eq!(a.wasted_gpu_s, 0.0, "no GPU time on a job that cannot fit");
        } else {
            assert_eq!((rejected, lost), (0, oversized), "{}", kind.name());
            assert!(a.wasted_gpu_s > 0.0);
        }
    }
}

#[test]
fn fifo_wastes_more_than_fifo_failfast_and_misplaces_on_a_mixed_fleet() {
    let trace = small_trace();
    let mixed = SimConfig::new(vec![
        GpuClass::H100,
        GpuClass::H100,
        GpuClass::L40,
        GpuClass::L40,
    ]);
    let fifo = run(
        PolicyKind::Fifo
            .build(LengthAwareConfig::default())
            .as_ref(),
        &trace,
        &mixed,
    );
    let failfast = run(
        PolicyKind::FifoFailfast
            .build(LengthAwareConfig::default())
            .as_ref(),
        &trace,
        &mixed,
    );
    let ours = run(
        PolicyKind::LengthAware
            .build(LengthAwareConfig::default())
            .as_ref(),
        &trace,
        &mixed,
    );
    assert!(fifo.wasted_gpu_s > failfast.wasted_gpu_s);
    let oversized = trace.iter().filter(|j| j.shape.width == 1920).count();
    let lost = |r: &SimResult| r.jobs.iter().filter(|j| j.fate == Fate::Lost).count();
    assert!(lost(&fifo) > oversized, "720p jobs lost on L40s too");
    assert_eq!(lost(&ours), 0);
    assert_eq!(ours.wasted_gpu_s, 0.0);
}

#[test]
fn preemption_pauses_are_bounded_and_work_is_kept() {
    let trace = generate(Mix::standard(), Arrivals::Poisson, 1.0 / 120.0, 400, 5);
    let config = SimConfig::new(vec![GpuClass::H100; 4]);
    let policy = PolicyKind::LengthAware.build(LengthAwareConfig {
        preemption: true,
        ..LengthAwareConfig::default()
    });
    let result = run(policy.as_ref(), &trace, &config);
    let paused = result.jobs.iter().filter(|j| j.pauses > 0).count();
    assert!(paused > 0, "the scenario exercises preemption");
    assert!(result.jobs.iter().all(|j| j.pauses <= 2));
    assert!(result.jobs.iter().all(|j| j.fate != Fate::Unfinished));
    assert!(result.pause_overhead_s > 0.0);
    let summary = report::summarize(&result);
    assert_eq!(summary.lost, 0);
}
