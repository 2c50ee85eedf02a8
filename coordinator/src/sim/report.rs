//! Figures of a simulation run, the benchmark table, and an SVG plot of queue wait by lane
//! over time.

use std::fmt::Write as _;

use super::{Fate, SimResult};
use crate::policy::Lane;

/// Seconds added to 3 × the job's own GPU time in the SLO on end-to-end latency.
pub const SLO_SLACK_S: f64 = 120.0;

/// p50, p95 and p99.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Samples.
    pub count: usize,
}

/// The percentiles of `values` (nearest rank).
pub fn percentiles(values: &mut [f64]) -> Percentiles {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        count: values.len(),
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The policy.
    pub policy: String,
    /// Queue wait (all time queued) per lane: short, medium, long.
    pub wait: [Percentiles; 3],
    /// End-to-end latency of succeeded jobs.
    pub e2e: Percentiles,
    /// Share of admitted jobs that succeeded within 3 × own GPU time + 2 min.
    pub slo: f64,
    /// GPU hours of kept work.
    pub useful_h: f64,
    /// GPU hours lost to out-of-memory attempts.
    pub wasted_h: f64,
    /// GPU hours saving and resuming paused jobs.
    pub pause_h: f64,
    /// Jobs lost after running (out of memory on every attempt).
    pub lost: usize,
    /// Jobs refused at submit.
    pub rejected: usize,
    /// Jobs that never finished.
    pub unfinished: usize,
    /// Longest queue wait of a long job over its own GPU time.
    pub long_wait_ratio: f64,
    /// The same among jobs that did not ask for low (batch) priority.
    pub long_wait_ratio_normal: f64,
    /// |predicted − actual start| at submission, s: median and p90.
    pub eta_abs_s: (f64, f64),
    /// The same over the job's end-to-end latency: median and p90.
    pub eta_rel: (f64, f64),
    /// Most pauses of one job.
    pub max_pauses: u32,
    /// Mean policy decision time, µs.
    pub decision_mean_us: f64,
}

/// Summarises a run.
pub fn summarize(result: &SimResult) -> Summary {
    let mut waits: [Vec<f64>; 3] = Default::default();
    let mut e2e = Vec::new();
    let mut eta_abs = Vec::new();
    let mut eta_rel = Vec::new();
    let (mut admitted, mut met, mut lost, mut rejected, mut unfinished) = (0, 0, 0, 0, 0);
    let mut long_wait_ratio: f64 = 0.0;
    let mut long_wait_ratio_normal: f64 = 0.0;
    let mut max_pauses = 0;
    for job in &result.jobs {
        match job.fate {
            Fate::Rejected => {
                rejected += 1;
                continue;
            }
            Fate::Lost => lost += 1,
            Fate::Unfinished => unfinished += 1,
            Fate::Succeeded => {}
        }
        admitted += 1;
        max_pauses = max_pauses.max(job.pauses);
        waits[job.lane.index()].push(job.queued_s);
        if job.lane == Lane::Long {
            let ratio = job.queued_s / job.own_s.max(1.0);
            long_wait_ratio = long_wait_ratio.max(ratio);
            if !job.low_priority {
                long_wait_ratio_normal = long_wait_ratio_normal.max(ratio);
            }
        }
        if let (Fate::Succeeded, Some(finish)) = (job.fate, job.finish_s) {
            let latency = finish - job.arrival_s;
            e2e.push(latency);
            if latency <= 3.0 * job.own_s + SLO_SLACK_S {
                met += 1;
            }
            if let (Some(predicted), Some(actual)) = (job.predicted_start_s, job.first_start_s) {
                let error = (predicted - actual).abs();
                eta_abs.push(error);
                eta_rel.push(error / latency.max(1.0));
            }
        }
    }
    let [short, medium, long] = waits;
    let mut short = short;
    let mut medium = medium;
    let mut long = long;
    let eta_abs = percentiles_q(&mut eta_abs);
    let eta_rel = percentiles_q(&mut eta_rel);
    Summary {
        policy: result.policy.clone(),
        wait: [
            percentiles(&mut short),
            percentiles(&mut medium),
            percentiles(&mut long),
        ],
        e2e: percentiles(&mut e2e),
        slo: if admitted == 0 {
            1.0
        } else {
            f64::from(met) / f64::from(admitted)
        },
        useful_h: result.useful_gpu_s / 3600.0,
        wasted_h: result.wasted_gpu_s / 3600.0,
        pause_h: result.pause_overhead_s / 3600.0,
        lost,
        rejected,
        unfinished,
        long_wait_ratio,
        long_wait_ratio_normal,
        eta_abs_s: eta_abs,
        eta_rel,
        max_pauses,
        decision_mean_us: result.decision_wall_s * 1e6 / (result.decisions.max(1) as f64),
    }
}

/// Median and p90.
fn percentiles_q(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if values.is_empty() {
            return 0.0;
        }
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    (at(0.5), at(0.9))
}

/// Seconds as a short human figure (`42s`, `3.1m`, `2.4h`).
pub fn human(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0}s")
    } else if seconds < 5400.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

/// The header of [`table_row`]'s table (Markdown).
pub fn table_header() -> String {
    "| scenario | policy | short wait p50/p95/p99 | medium wait p50/p95/p99 | long wait p50/p95/p99 | e2e p50/p95/p99 | SLO | useful / wasted GPU-h | lost | rejected | long wait / own (all, not low) | ETA err p50/p90 (rel p50/p90) | max pauses |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n".to_owned()
}

/// One row of the benchmark table (Markdown).
pub fn table_row(scenario: &str, summary: &Summary) -> String {
    let p = |p: &Percentiles| format!("{} / {} / {}", human(p.p50), human(p.p95), human(p.p99));
    format!(
        "| {scenario} | {} | {} | {} | {} | {} | {:.1}% | {:.1} / {:.2} | {} | {} | {:.2}, {:.2} | {} / {} ({:.0}% / {:.0}%) | {} |\n",
        summary.policy,
        p(&summary.wait[0]),
        p(&summary.wait[1]),
        p(&summary.wait[2]),
        p(&summary.e2e),
        summary.slo * 100.0,
        summary.useful_h,
        summary.wasted_h,
        summary.lost,
        summary.rejected,
        summary.long_wait_ratio,
        summary.long_wait_ratio_normal,
        human(summary.eta_abs_s.0),
        human(summary.eta_abs_s.1),
        summary.eta_rel.0 * 100.0,
        summary.eta_rel.1 * 100.0,
        summary.max_pauses,
    )
}

const COLOURS: [&str; 6] = [
    "#d62728", "#ff7f0e", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd",
];

/// An SVG with one panel per lane: p95 queue wait in windows of the run, one line per run.
pub fn svg(title: &str, runs: &[(&str, &SimResult)], windows: usize) -> String {
    let (width, panel_h, left, top) = (900.0, 220.0, 70.0, 40.0);
    let plot_w = width - left - 170.0;
    let end_s = runs
        .iter()
        .flat_map(|(_, r)| r.jobs.iter().map(|j| j.arrival_s))
        .fold(1.0_f64, f64::max);
    let window_s = end_s / windows.max(1) as f64;
    let y_of = |seconds: f64| {
        // log10(1 s) .. log10(1e5 s) over the panel's height.
        let v = (seconds.max(1.0)).log10().min(5.0) / 5.0;
        panel_h - 20.0 - v * (panel_h - 40.0)
    };
    let mut out = String::new();
    let height = top + panel_h * 3.0 + 20.0;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">{title}</text>\n"
    );
    for (panel, lane) in Lane::ALL.iter().enumerate() {
        let y0 = top + panel as f64 * panel_h;
        let _ = writeln!(
            out,
            "<g transform=\"translate(0,{y0})\"><text x=\"{left}\" y=\"12\">{} lane: p95 queue wait per window (log scale)</text>",
            lane.as_str()
        );
        for (label, seconds) in [
            ("1s", 1.0),
            ("10s", 10.0),
            ("1m", 60.0),
            ("10m", 600.0),
            ("1h", 3600.0),
            ("10h", 36000.0),
        ] {
            let y = y_of(seconds);
            let _ = writeln!(
                out,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                left + plot_w,
                left - 6.0,
                y + 4.0
            );
        }
        for (run_index, (name, run)) in runs.iter().enumerate() {
            let mut points = Vec::new();
            for window in 0..windows {
                let (from, to) = (window as f64 * window_s, (window + 1) as f64 * window_s);
                let mut waits: Vec<f64> = run
                    .jobs
                    .iter()
                    .filter(|j| j.lane == *lane && j.fate != Fate::Rejected)
                    .filter(|j| j.arrival_s >= from && j.arrival_s < to)
                    .map(|j| j.queued_s)
                    .collect();
                if waits.is_empty() {
                    continue;
                }
                let p95 = percentiles(&mut waits).p95;
                let x = left + (window as f64 + 0.5) / windows as f64 * plot_w;
                points.push(format!("{x:.1},{:.1}", y_of(p95)));
            }
            let colour = COLOURS[run_index % COLOURS.len()];
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" points=\"{}\"/>",
                points.join(" ")
            );
            if panel == 0 {
                let ly = 30.0 + run_index as f64 * 16.0;
                let _ = writeln!(
                    out,
                    "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{name}</text>",
                    left + plot_w + 15.0,
                    left + plot_w + 35.0,
                    left + plot_w + 40.0,
                    ly + 4.0
                );
            }
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">submission time (hours, {:.0} h in all)</text></g>",
            left + plot_w / 2.0,
            panel_h - 2.0,
            end_s / 3600.0
        );
    }
    out.push_str("</svg>\n");
    out
}
