//! The scheduling benchmark: the standard scenarios through every policy in the simulator,
//! the table of `docs/scheduling.md`, the targets checked, a decision micro-benchmark, and an
//! SVG of queue wait by lane over time.
//!
//! ```text
//! cargo run --release -p coordinator --example schedbench -- [--jobs N] [--svg PATH]
//!     [--traces DIR] [--policies fifo-admit,length-aware,...]
//! ```

use std::time::Instant;

use coordinator::cost::{CostModel, GpuClass};
use coordinator::policy::{
    self, Lane, LengthAwareConfig, Policy, PolicyKind, Running, Slot, View, Waiting,
};
use coordinator::sim::report::{self, Summary};
use coordinator::sim::rng::Rng;
use coordinator::sim::trace::{self, Arrivals, Mix, TraceJob};
use coordinator::sim::{self, SimConfig, SimResult};

struct Scenario {
    name: &'static str,
    slots: Vec<GpuClass>,
    arrivals: Arrivals,
    load: f64,
}

struct Args {
    jobs: usize,
    /// Policies to run (all when empty).
    only: Vec<String>,
    svg: String,
    traces: String,
}

fn args() -> Args {
    let mut args = Args {
        jobs: 4000,
        only: Vec::new(),
        svg: "docs/scheduling-waits.svg".to_owned(),
        traces: "loadtest/traces".to_owned(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().unwrap_or_default();
        match flag.as_str() {
            "--jobs" => args.jobs = value.parse().unwrap_or(args.jobs),
            "--svg" => args.svg = value,
            "--traces" => args.traces = value,
            "--policies" => args.only = value.split(',').map(str::to_owned).collect(),
            _ => eprintln!("unknown flag {flag}"),
        }
    }
    args
}

fn policies() -> Vec<(String, Box<dyn Policy>)> {
    let mut all: Vec<(String, Box<dyn Policy>)> = PolicyKind::ALL
        .iter()
        .map(|kind| {
            (
                kind.name().to_owned(),
                kind.build(LengthAwareConfig::default()),
            )
        })
        .collect();
    all.push((
        "length-aware+preempt".to_owned(),
        PolicyKind::LengthAware.build(LengthAwareConfig {
            preemption: true,
            ..LengthAwareConfig::default()
        }),
    ));
    all
}

/// The cost model's predictions for reference shapes.
fn cost_table() {
    println!("Cost model priors (peak memory; GPU time per class):\n");
    println!("| shape | tokens | peak | H100 | H200 | A100 | L40 |\n|---|---|---|---|---|---|---|");
    for (frames, fps, width, height, steps) in [
        (31, 30, 848, 480, 64),
        (49, 30, 848, 480, 64),
        (163, 30, 848, 480, 64),
        (301, 30, 848, 480, 64),
        (61, 30, 1280, 720, 64),
        (301, 30, 1280, 720, 64),
        (121, 30, 1920, 1088, 64),
        (31, 30, 848, 480, 16),
    ] {
        let shape = protocol::JobShape::new(frames, fps, width, height, steps, true);
        let cost = CostModel::default().cost(&shape);
        let cell = |class: GpuClass| {
            if cost.fits(class, class.spec().memory_bytes) {
                report::human(cost.seconds[class.index()])
            } else {
                "does not fit".to_owned()
            }
        };
        println!(
            "| {frames} f {width}×{height}, {steps} steps | {} | {} | {} | {} | {} | {} |",
            shape.num_tokens,
            coordinator::cost::gb(cost.peak_bytes[0]),
            cell(GpuClass::H100),
            cell(GpuClass::H200),
            cell(GpuClass::A100),
            cell(GpuClass::L40),
        );
    }
    println!();
}

fn main() {
    let args = args();
    cost_table();
    let mix = Mix::standard();
    let mean_s = trace::mean_service_s(mix);
    let h100 = vec![GpuClass::H100; 8];
    let mut mixed = vec![GpuClass::H100; 4];
    mixed.extend([GpuClass::L40; 4]);
    let scenarios = [
        ("load-0.70", h100.clone(), Arrivals::Poisson, 0.70),
        ("load-0.85", h100.clone(), Arrivals::Poisson, 0.85),
        ("load-0.95", h100.clone(), Arrivals::Poisson, 0.95),
        (
            "burst-0.85",
            h100,
            Arrivals::Bursty {
                period_s: 4.0 * 3600.0,
            },
            0.85,
        ),
        ("mixed-0.85", mixed, Arrivals::Poisson, 0.85),
    ]
    .map(|(name, slots, arrivals, load)| Scenario {
        name,
        slots,
        arrivals,
        load,
    });
    println!(
        "mix: {} jobs per scenario, mean service {:.0} s on an H100 (jobs that fit), 3% over-sized\n",
        args.jobs, mean_s
    );
    let policies: Vec<(String, Box<dyn Policy>)> = policies()
        .into_iter()
        .filter(|(name, _)| args.only.is_empty() || args.only.contains(name))
        .collect();
    let mut table = report::table_header();
    let mut summaries: Vec<(String, Vec<Summary>)> = Vec::new();
    let mut plotted: Vec<(String, SimResult)> = Vec::new();
    let started = Instant::now();
    for (index, scenario) in scenarios.iter().enumerate() {
        let capacity: f64 = scenario
            .slots
            .iter()
            .map(|class| class.spec().relative_speed)
            .sum();
        let rate = scenario.load * capacity / mean_s;
        let jobs = trace::generate(
            mix,
            scenario.arrivals,
            rate,
            args.jobs,
            1_000 + index as u64,
        );
        save_trace(&args.traces, scenario.name, &jobs);
        let config = SimConfig::new(scenario.slots.clone());
        let mut row = Vec::new();
        for (name, policy) in &policies {
            let mut result = sim::run(policy.as_ref(), &jobs, &config);
            result.policy.clone_from(name);
            let summary = report::summarize(&result);
            table.push_str(&report::table_row(scenario.name, &summary));
            row.push(summary);
            if scenario.name == "burst-0.85" {
                plotted.push((name.clone(), result));
            }
        }
        summaries.push((scenario.name.to_owned(), row));
    }
    println!("{table}");
    println!(
        "(simulated {} scenarios × {} policies in {:.1} s)\n",
        scenarios.len(),
        policies.len(),
        started.elapsed().as_secs_f64()
    );
    check_targets(&summaries);
    micro_benchmark();
    let runs: Vec<(&str, &SimResult)> = plotted
        .iter()
        .map(|(name, result)| (name.as_str(), result))
        .collect();
    let svg = report::svg(
        "Queue wait by lane over time, burst-0.85 (8×H100), p95 per window",
        &runs,
        40,
    );
    match std::fs::write(&args.svg, svg) {
        Ok(()) => println!("\nwrote {}", args.svg),
        Err(error) => eprintln!("cannot write {}: {error}", args.svg),
    }
}

fn save_trace(dir: &str, name: &str, jobs: &[TraceJob]) {
    if dir.is_empty() {
        return;
    }
    let path = format!("{dir}/{name}.csv");
    if let Err(error) =
        std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, trace::to_csv(jobs)))
    {
        eprintln!("cannot write {path}: {error}");
    }
}

fn find<'a>(row: &'a [Summary], policy: &str) -> Option<&'a Summary> {
    row.iter().find(|s| s.policy == policy)
}

fn check_targets(summaries: &[(String, Vec<Summary>)]) {
    println!("Targets (against fifo-admit unless stated):");
    let check = |ok: bool, what: String| {
        println!("  [{}] {what}", if ok { "met" } else { "MISSED" });
    };
    for (scenario, row) in summaries {
        let (Some(base), Some(ours), Some(pre)) = (
            find(row, "fifo-admit"),
            find(row, "length-aware"),
            find(row, "length-aware+preempt"),
        ) else {
            continue;
        };
        check(
            ours.wasted_h == 0.0 && ours.lost == 0 && pre.wasted_h == 0.0 && pre.lost == 0,
            format!(
                "{scenario}: no GPU time on jobs that cannot fit, none lost (fifo: {:.2} GPU-h wasted, {} lost; fifo-failfast: {:.2}, {})",
                find(row, "fifo").map_or(0.0, |s| s.wasted_h),
                find(row, "fifo").map_or(0, |s| s.lost),
                find(row, "fifo-failfast").map_or(0.0, |s| s.wasted_h),
                find(row, "fifo-failfast").map_or(0, |s| s.lost),
            ),
        );
        let short = |s: &Summary| s.wait[0].p95;
        if scenario == "load-0.85" {
            check(
                short(ours) <= 0.25 * short(base) && short(ours) <= 180.0,
                format!(
                    "{scenario}: short p95 wait without preemption {} ≤ 25% of fifo-admit's {} and ≤ 3 min",
                    report::human(short(ours)),
                    report::human(short(base))
                ),
            );
        }
        if scenario == "load-0.70" || scenario == "load-0.85" {
            check(
                ours.slo >= 0.99,
                format!(
                    "{scenario}: SLO attainment {:.1}% ≥ 99% (fifo-admit {:.1}%, with preemption {:.1}%)",
                    ours.slo * 100.0,
                    base.slo * 100.0,
                    pre.slo * 100.0
                ),
            );
            check(
                ours.long_wait_ratio <= 3.0,
                format!(
                    "{scenario}: longest long-job wait {:.2}× its own GPU time ≤ 3× ({:.2}× without low-priority jobs; with preemption {:.2}×, {:.2}×)",
                    ours.long_wait_ratio,
                    ours.long_wait_ratio_normal,
                    pre.long_wait_ratio,
                    pre.long_wait_ratio_normal
                ),
            );
        }
        if scenario == "load-0.95" {
            check(
                ours.slo - base.slo >= 0.35 && pre.slo - base.slo >= 0.35,
                format!(
                    "{scenario}: SLO attainment {:.1}% (with preemption {:.1}%) ≥ fifo-admit's {:.1}% + 35 points",
                    ours.slo * 100.0,
                    pre.slo * 100.0,
                    base.slo * 100.0
                ),
            );
        }
        check(
            short(pre) <= 15.0 && pre.wait[2].p95 <= 2.0 * base.wait[2].p95.max(1.0),
            format!(
                "{scenario}: with preemption short p95 wait {} ≤ 15 s, long p95 {} ≤ 2× fifo-admit's {}",
                report::human(short(pre)),
                report::human(pre.wait[2].p95),
                report::human(base.wait[2].p95)
            ),
        );
        check(
            ours.eta_rel.0 <= 0.2 && pre.eta_rel.0 <= 0.2,
            format!(
                "{scenario}: median ETA error {:.0}% of end-to-end latency ≤ 20% ({} absolute; with preemption {:.0}%)",
                ours.eta_rel.0 * 100.0,
                report::human(ours.eta_abs_s.0),
                pre.eta_rel.0 * 100.0
            ),
        );
    }
}

/// One decision with 10,000 queued jobs and 64 slots, 1–8 of them free.
fn micro_benchmark() {
    let model = CostModel::default();
    let mut rng = Rng::new(5);
    let mix = Mix::standard();
    let queue: Vec<Waiting> = (0..10_000u128)
        .map(|i| {
            let (shape, tenant, priority) = mix.sample(&mut rng);
            Waiting {
                job_id: protocol::JobId(uuid_from(i)),
                tenant: u64::from(tenant),
                priority,
                created_at_ms: (i as u64) * 500,
                not_before_ms: 0,
                cost: model.cost(&shape),
                pauses: 0,
            }
        })
        .collect();
    let classes = [
        GpuClass::H100,
        GpuClass::H200,
        GpuClass::A100,
        GpuClass::L40,
    ];
    println!("\nDecision micro-benchmark: 10,000 queued jobs, 64 slots, 1–8 free, 2,000 decisions");
    for kind in PolicyKind::ALL {
        let policy = kind.build(LengthAwareConfig::default());
        let mut times = Vec::new();
        let mut best_times = Vec::new();
        for round in 0..2_000u64 {
            let free = 1 + (rng.next_u64() % 8) as usize;
            let slots: Vec<Slot> = (0..64)
                .map(|i| {
                    let class = classes[i % classes.len()];
                    Slot {
                        class,
                        memory_bytes: class.spec().memory_bytes,
                        running: (i >= free).then_some(Running {
                            job_id: protocol::JobId(uuid_from(1_000_000 + i as u128)),
                            lane: Lane::ALL[i % 3],
                            tenant: (i % 4) as u64,
                            remaining_s: 100.0 + i as f64,
                            next_boundary_s: 3.0,
                            pauses: 0,
                            unpausable: false,
                            pausing_for: None,
                        }),
                    }
                })
                .collect();
            let view = View {
                now_ms: 5_000_000 + round * 1_000,
                slots: &slots,
            };
            // Each decision is timed three times on the same input: the first is the raw
            // figure, the fastest filters out the host descheduling us (a shared build host
            // hands out 4 ms time slices, which is what a raw p99 there measures).
            let mut fastest = f64::INFINITY;
            for repeat in 0..3 {
                let started = Instant::now();
                let decision = policy.decide(&view, &queue);
                let ms = started.elapsed().as_secs_f64() * 1e3;
                std::hint::black_box(decision);
                if repeat == 0 {
                    times.push(ms);
                }
                fastest = fastest.min(ms);
            }
            best_times.push(fastest);
        }
        let summary = report::percentiles(&mut times);
        let best = report::percentiles(&mut best_times);
        let eta_started = Instant::now();
        let slots: Vec<Slot> = (0..64)
            .map(|i| Slot {
                class: classes[i % 4],
                memory_bytes: classes[i % 4].spec().memory_bytes,
                running: None,
            })
            .collect();
        let estimates = policy::eta::estimate(
            policy.as_ref(),
            &View {
                now_ms: 0,
                slots: &slots,
            },
            &queue,
        );
        println!(
            "  {:<14} decide p50 {:.3} ms, p99 {:.3} ms (fastest of 3: p50 {:.3} ms, p99 {:.3} ms); full ETA refresh of {} jobs {:.1} ms",
            kind.name(),
            summary.p50,
            summary.p99,
            best.p50,
            best.p99,
            estimates.len(),
            eta_started.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn uuid_from(value: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(value + 1)
}
