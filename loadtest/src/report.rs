//! What a load run measured: the JSON result (every job's timeline), its summary in trace
//! time, the table of the seeds' success metrics (target, measured, pass or fail), the
//! comparison with the simulator on the same trace, and the self-contained HTML report.
//!
//! Durations are reported in trace seconds (wall time divided by the time scale), the time
//! the simulated H100s stand for; the submit latency alone is wall time, since the service's
//! own overhead is not scaled.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coordinator::cost::CostModel;
use coordinator::policy::{Lane, LaneBounds};
use coordinator::sim::trace::TraceJob;
use coordinator::sim::{self, Fate, SimConfig};
use protocol::JobShape;
use serde::{Deserialize, Serialize};

use crate::chart::{self, Kind, Labels, PALETTE, Series};
use crate::open_loop::JobTimeline;

/// One load run: what was asked and what every job did (written as `<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    /// A name for the run (`load-0.85`).
    pub name: String,
    /// The gateway loaded.
    pub target: String,
    /// Wall seconds per trace second.
    pub time_scale: f64,
    /// Slots serving the run (for utilisation; 0 when unknown).
    pub slots: u32,
    /// The offered load the trace was generated for, if it was.
    pub offered_load: Option<f64>,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Every submitted request.
    pub jobs: Vec<JobTimeline>,
    /// The simulator's first start per trace job on the same trace, trace seconds from the
    /// trace's start (absent: not simulated, or the job never started there).
    pub simulated_start_s: Vec<Option<f64>>,
}

/// p50, p95, p99 and max of some samples, with their count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: usize,
}

impl Quantiles {
    /// Nearest-rank quantiles of `samples`.
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        Self {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: sorted.last().copied().unwrap_or(0.0),
            count: sorted.len(),
        }
    }
}

/// One row of the success-metrics table.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// What is measured.
    pub name: &'static str,
    /// The seeds' target, in words.
    pub target: &'static str,
    /// What was measured, in words.
    pub measured: String,
    /// Whether the target is met (`None`: not measurable in this run).
    pub pass: Option<bool>,
}

/// Live against simulated first waits of one lane, trace seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LaneComparison {
    /// Jobs that started in both.
    pub jobs: usize,
    /// Live waits.
    pub live: Quantiles,
    /// The simulator's waits for the same jobs.
    pub simulated: Quantiles,
    /// Mean of live − simulated, per job.
    pub mean_difference_s: f64,
}

/// A run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests submitted.
    pub submitted: usize,
    /// Accepted (202).
    pub accepted: usize,
    /// Refusals by error code (`connection` when no answer came).
    pub refused: BTreeMap<String, usize>,
    /// Accepted jobs by last state seen.
    pub states: BTreeMap<String, usize>,
    /// Submit latency, wall ms.
    pub submit_ms: Quantiles,
    /// From sending the submission to its first start on a slot, wall ms (the service's
    /// own path when a slot is free: gateway, NATS, intake, scheduler, node).
    pub submit_to_start_ms: Quantiles,
    /// Wait from creation to the first start, trace s.
    pub wait_s: Quantiles,
    /// The same per lane: short, medium, long.
    pub wait_by_lane_s: [Quantiles; 3],
    /// Submission to end of succeeded jobs, trace s.
    pub end_to_end_s: Quantiles,
    /// Most jobs running at once.
    pub max_parallel: usize,
    /// Busy slot time over slots × the span from the first arrival to the last end.
    pub utilisation: Option<f64>,
    /// Succeeded jobs per trace hour over the span.
    pub throughput_per_h: f64,
    /// Live waits against the simulator's, per lane (empty: not simulated).
    pub versus_simulator: Vec<(String, LaneComparison)>,
    /// The seeds' success metrics.
    pub metrics: Vec<Metric>,
}

/// The lanes of the coordinator's default policy.
fn lanes() -> LaneBounds {
    let live = coordinator::Config::default();
    live.policy.build(live.length_aware).lanes()
}

fn shape_of(job: &JobTimeline) -> JobShape {
    let [frames, fps, width, height, steps, cfg] = job.shape;
    JobShape::new(frames, fps, width, height, steps, cfg == 1)
}

fn lane_of(lanes: &LaneBounds, model: &CostModel, job: &JobTimeline) -> Lane {
    lanes.lane(model.cost(&shape_of(job)).reference_seconds())
}

fn lane_index(lane: Lane) -> usize {
    Lane::ALL.iter().position(|l| *l == lane).unwrap_or(0)
}

/// Runs the simulator on `trace` with the live stack's physics, in model time: `slots`
/// H100s whose jobs take the cost model's time (no noise: the simulated backend takes
/// exactly that; pausing costs nothing there), the coordinator's default policy, and its
/// tick (`tick_s`, model seconds). Returns each job's first start, trace seconds.
pub fn simulate(trace: &[TraceJob], slots: usize, tick_s: f64) -> Vec<Option<f64>> {
    let mut config = SimConfig::new(vec![coordinator::cost::GpuClass::H100; slots]);
    config.noise_sigma = 0.0;
    config.pause_save_s = 0.0;
    config.resume_s = 0.0;
    config.tick_s = tick_s;
    let live = coordinator::Config::default();
    let policy = live.policy.build(live.length_aware);
    let result = sim::run(policy.as_ref(), trace, &config);
    result
        .jobs
        .iter()
        .map(|job| match job.fate {
            Fate::Rejected => None,
            _ => job.first_start_s,
        })
        .collect()
}

impl LoadResult {
    /// The run's figures.
    pub fn summary(&self) -> Summary {
        let scale = self.time_scale.max(1e-12);
        let trace_s = |ms: u64| ms as f64 / 1000.0 / scale;
        let (lanes, model) = (lanes(), CostModel::default());
        let mut refused = BTreeMap::new();
        let mut states = BTreeMap::new();
        let (mut submit_ms, mut waits, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
        let mut to_start_ms = Vec::new();
        let mut by_lane: [Vec<f64>; 3] = Default::default();
        let mut intervals = Vec::new();
        let (mut retried, mut dead, mut checked, mut valid, mut unavailable) = (0, 0, 0, 0, 0);
        for job in &self.jobs {
            if let Some(answered) = job.answered_ms {
                submit_ms.push(answered.saturating_sub(job.submitted_ms) as f64);
            }
            if job.http_status.is_none_or(|status| status >= 500) {
                unavailable += 1;
            }
            if !job.accepted() {
                let code = job
                    .error_code
                    .clone()
                    .unwrap_or_else(|| "unknown".to_owned());
                *refused.entry(code).or_insert(0) += 1;
                continue;
            }
            let state = job.state.clone().unwrap_or_else(|| "unknown".to_owned());
            if job.ended() {
                *states.entry(state.clone()).or_insert(0) += 1;
            } else {
                *states.entry(format!("unfinished ({state})")).or_insert(0) += 1;
            }
            if let (Some(created), Some(start)) = (job.created_ms, job.first_start_ms) {
                to_start_ms.push(start.saturating_sub(job.submitted_ms) as f64);
                let wait = trace_s(start.saturating_sub(created));
                waits.push(wait);
                by_lane[lane_index(lane_of(&lanes, &model, job))].push(wait);
                let end = job.ended_ms.unwrap_or(start);
                intervals.push((start, end.max(start)));
            }
            if state == "succeeded"
                && let Some(end) = job.ended_ms
            {
                e2e.push(trace_s(end.saturating_sub(job.submitted_ms)));
            }
            retried += usize::from(job.failed_attempts > 0);
            dead += usize::from(state == "dead");
            if let Some(ok) = job.artifact_ok {
                checked += 1;
                valid += usize::from(ok);
            }
        }
        let accepted = self.jobs.iter().filter(|j| j.accepted()).count();
        let succeeded = states.get("succeeded").copied().unwrap_or(0);
        let max_parallel = max_overlap(&intervals);
        let first = self.jobs.iter().map(|j| j.submitted_ms).min().unwrap_or(0);
        let last = intervals.iter().map(|(_, end)| *end).max().unwrap_or(first);
        let span_s = trace_s(last.saturating_sub(first)).max(1e-9);
        let busy_s: f64 = intervals
            .iter()
            .map(|(start, end)| trace_s(end - start))
            .sum();
        let utilisation = (self.slots > 0).then(|| busy_s / (f64::from(self.slots) * span_s));
        let wait = Quantiles::of(&waits);
        let end_to_end = Quantiles::of(&e2e);
        let ratio = |part: usize, whole: usize| part as f64 / whole.max(1) as f64;
        let percent = |value: f64| format!("{:.1} %", 100.0 * value);
        let minutes = |seconds: f64| format!("{:.1} min", seconds / 60.0);
        let success = ratio(succeeded, accepted);
        let availability = 1.0 - ratio(unavailable, self.jobs.len());
        let metrics = vec![
            Metric {
                name: "job success",
                target: "≥ 95 % of accepted jobs",
                measured: format!("{} ({succeeded}/{accepted})", percent(success)),
                pass: Some(success >= 0.95),
            },
            Metric {
                name: "P95 end-to-end",
                target: "≤ 10 min (production ≤ 6 min)",
                measured: minutes(end_to_end.p95),
                pass: Some(end_to_end.count > 0 && end_to_end.p95 <= 600.0),
            },
            Metric {
                name: "P99 end-to-end",
                target: "≤ 10 min (production)",
                measured: minutes(end_to_end.p99),
                pass: Some(end_to_end.count > 0 && end_to_end.p99 <= 600.0),
            },
            Metric {
                name: "P95 queue wait",
                target: "≤ 2 min",
                measured: minutes(wait.p95),
                pass: Some(wait.count > 0 && wait.p95 <= 120.0),
            },
            Metric {
                name: "parallel jobs",
                target: "≥ 4 at once",
                measured: max_parallel.to_string(),
                pass: Some(max_parallel >= 4),
            },
            Metric {
                name: "availability",
                target: "≥ 99 % (production 99.9 %) of submissions answered without 5xx",
                measured: percent(availability),
                pass: Some(availability >= 0.99),
            },
            Metric {
                name: "retries",
                target: "< 1 % of jobs",
                measured: percent(ratio(retried, accepted)),
                pass: Some(ratio(retried, accepted) < 0.01),
            },
            Metric {
                name: "dead letters",
                target: "< 0.1 % of jobs",
                measured: percent(ratio(dead, accepted)),
                pass: Some(ratio(dead, accepted) < 0.001),
            },
            Metric {
                name: "slot utilisation",
                target: "70–90 % (GPU utilisation)",
                measured: utilisation.map_or_else(|| "unknown".to_owned(), percent),
                pass: utilisation.map(|u| (0.7..=0.9).contains(&u)),
            },
            Metric {
                name: "valid artifacts",
                target: "100 % of succeeded jobs",
                measured: format!(
                    "{} ({valid}/{checked} checked)",
                    percent(ratio(valid, checked))
                ),
                pass: (checked > 0).then_some(valid == checked),
            },
        ];
        Summary {
            submitted: self.jobs.len(),
            accepted,
            refused,
            states,
            submit_ms: Quantiles::of(&submit_ms),
            submit_to_start_ms: Quantiles::of(&to_start_ms),
            wait_s: wait,
            wait_by_lane_s: by_lane.map(|samples| Quantiles::of(&samples)),
            end_to_end_s: end_to_end,
            max_parallel,
            utilisation,
            throughput_per_h: succeeded as f64 / span_s * 3600.0,
            versus_simulator: self.versus_simulator(&lanes, &model),
            metrics,
        }
    }

    fn versus_simulator(
        &self,
        lanes: &LaneBounds,
        model: &CostModel,
    ) -> Vec<(String, LaneComparison)> {
        if self.simulated_start_s.is_empty() {
            return Vec::new();
        }
        let scale = self.time_scale.max(1e-12);
        let mut pairs: [Vec<(f64, f64)>; 4] = Default::default();
        for job in &self.jobs {
            let Some(Some(sim_start)) = self.simulated_start_s.get(job.trace_id as usize) else {
                continue;
            };
            let (Some(created), Some(start)) = (job.created_ms, job.first_start_ms) else {
                continue;
            };
            let live = start.saturating_sub(created) as f64 / 1000.0 / scale;
            let simulated = sim_start - job.arrival_s;
            let lane = lane_index(lane_of(lanes, model, job));
            pairs[lane].push((live, simulated));
            pairs[3].push((live, simulated));
        }
        ["short", "medium", "long", "all"]
            .into_iter()
            .zip(pairs)
            .map(|(name, pairs)| {
                let live: Vec<f64> = pairs.iter().map(|p| p.0).collect();
                let simulated: Vec<f64> = pairs.iter().map(|p| p.1).collect();
                let difference =
                    pairs.iter().map(|(l, s)| l - s).sum::<f64>() / pairs.len().max(1) as f64;
                (
                    name.to_owned(),
                    LaneComparison {
                        jobs: pairs.len(),
                        live: Quantiles::of(&live),
                        simulated: Quantiles::of(&simulated),
                        mean_difference_s: difference,
                    },
                )
            })
            .collect()
    }
}

/// The most intervals that overlap at one moment.
fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // Ends before starts at the same instant: a slot handed over is not two jobs.
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The charts of one run.
fn charts(result: &LoadResult) -> Vec<String> {
    let scale = result.time_scale.max(1e-12);
    let origin = result
        .jobs
        .iter()
        .map(|j| j.submitted_ms)
        .min()
        .unwrap_or(0);
    let minutes = |ms: u64| ms.saturating_sub(origin) as f64 / 1000.0 / scale / 60.0;
    let span_ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0 / scale / 60.0;
    let (lanes, model) = (lanes(), CostModel::default());
    let mut out = Vec::new();

    // Latency distributions.
    let waits: Vec<f64> = result
        .jobs
        .iter()
        .filter_map(|j| Some(span_ms(j.created_ms?, j.first_start_ms?)))
        .collect();
    let e2e: Vec<f64> = result
        .jobs
        .iter()
        .filter(|j| j.state.as_deref() == Some("succeeded"))
        .filter_map(|j| Some(span_ms(j.submitted_ms, j.ended_ms?)))
        .collect();
    let simulated: Vec<f64> = result
        .jobs
        .iter()
        .filter(|j| j.first_start_ms.is_some())
        .filter_map(|j| {
            let start = (*result.simulated_start_s.get(j.trace_id as usize)?)?;
            Some((start - j.arrival_s) / 60.0)
        })
        .collect();
    let mut series = vec![
        Series {
            name: "queue wait".to_owned(),
            colour: PALETTE[0],
            points: chart::cdf(&waits),
            kind: Kind::Step,
        },
        Series {
            name: "end to end".to_owned(),
            colour: PALETTE[1],
            points: chart::cdf(&e2e),
            kind: Kind::Step,
        },
    ];
    if !simulated.is_empty() {
        series.push(Series {
            name: "wait, simulator".to_owned(),
            colour: PALETTE[5],
            points: chart::cdf(&simulated),
            kind: Kind::Step,
        });
    }
    out.push(chart::svg(
        Labels {
            title: "Latency distributions",
            x: "minutes (trace time)",
            y: "fraction of jobs ≤ x",
        },
        &series,
    ));

    // Queue wait over time by lane.
    let mut by_lane: [Vec<(f64, f64)>; 3] = Default::default();
    for job in &result.jobs {
        if let (Some(created), Some(start)) = (job.created_ms, job.first_start_ms) {
            by_lane[lane_index(lane_of(&lanes, &model, job))]
                .push((minutes(job.submitted_ms), span_ms(created, start)));
        }
    }
    let series: Vec<Series> = ["short", "medium", "long"]
        .into_iter()
        .zip(by_lane)
        .enumerate()
        .map(|(i, (name, points))| Series {
            name: format!("{name} lane"),
            colour: PALETTE[i],
            points,
            kind: Kind::Dots,
        })
        .collect();
    out.push(chart::svg(
        Labels {
            title: "Queue wait by arrival, per lane",
            x: "arrival, minutes (trace time)",
            y: "wait, minutes",
        },
        &series,
    ));

    // Throughput and utilisation over windows.
    let end = result
        .jobs
        .iter()
        .filter_map(|j| j.ended_ms.or(j.answered_ms))
        .max()
        .unwrap_or(origin);
    let total_min = minutes(end).max(1e-6);
    let windows = 30usize;
    let width = total_min / windows as f64;
    let window_of = |at: f64| ((at / width) as usize).min(windows - 1);
    let (mut arrivals, mut completions) = (vec![0.0; windows], vec![0.0; windows]);
    let mut refusals: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for job in &result.jobs {
        arrivals[window_of(minutes(job.submitted_ms))] += 1.0;
        if let (Some("succeeded"), Some(ended)) = (job.state.as_deref(), job.ended_ms) {
            completions[window_of(minutes(ended))] += 1.0;
        }
        if !job.accepted() {
            let code = job
                .error_code
                .clone()
                .unwrap_or_else(|| "unknown".to_owned());
            refusals.entry(code).or_insert_with(|| vec![0.0; windows])
                [window_of(minutes(job.submitted_ms))] += 1.0;
        }
        if matches!(job.state.as_deref(), Some("failed" | "dead" | "aborted")) {
            refusals
                .entry(format!("job {}", job.state.as_deref().unwrap_or("")))
                .or_insert_with(|| vec![0.0; windows])
                [window_of(minutes(job.ended_ms.unwrap_or(job.submitted_ms)))] += 1.0;
        }
    }
    let per_hour = 60.0 / width;
    let steps = |counts: &[f64]| -> Vec<(f64, f64)> {
        counts
            .iter()
            .enumerate()
            .map(|(i, count)| (i as f64 * width, count * per_hour))
            .collect()
    };
    out.push(chart::svg(
        Labels {
            title: "Throughput",
            x: "minutes (trace time)",
            y: "jobs per hour",
        },
        &[
            Series {
                name: "arrivals".to_owned(),
                colour: PALETTE[5],
                points: steps(&arrivals),
                kind: Kind::Step,
            },
            Series {
                name: "completed".to_owned(),
                colour: PALETTE[2],
                points: steps(&completions),
                kind: Kind::Step,
            },
        ],
    ));

    let mut edges: Vec<(f64, i32)> = result
        .jobs
        .iter()
        .filter_map(|j| {
            let start = j.first_start_ms?;
            Some([
                (minutes(start), 1),
                (minutes(j.ended_ms.unwrap_or(end)), -1),
            ])
        })
        .flatten()
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut busy = vec![(0.0, 0.0)];
    let mut running = 0;
    for (at, delta) in edges {
        running += delta;
        busy.push((at, f64::from(running)));
    }
    let mut series = vec![Series {
        name: "busy slots".to_owned(),
        colour: PALETTE[0],
        points: busy,
        kind: Kind::Step,
    }];
    if result.slots > 0 {
        series.push(Series {
            name: "slots".to_owned(),
            colour: PALETTE[5],
            points: vec![
                (0.0, f64::from(result.slots)),
                (total_min, f64::from(result.slots)),
            ],
            kind: Kind::Line,
        });
    }
    out.push(chart::svg(
        Labels {
            title: "Slot utilisation",
            x: "minutes (trace time)",
            y: "slots running a job",
        },
        &series,
    ));

    let series: Vec<Series> = refusals
        .iter()
        .enumerate()
        .map(|(i, (code, counts))| Series {
            name: code.clone(),
            colour: PALETTE[(i + 1) % PALETTE.len()],
            points: steps(counts),
            kind: Kind::Step,
        })
        .collect();
    out.push(chart::svg(
        Labels {
            title: "Errors: refusals and failed jobs",
            x: "minutes (trace time)",
            y: "per hour",
        },
        &series,
    ));
    out
}

fn cell(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => r#"<td class="pass">pass</td>"#,
        Some(false) => r#"<td class="fail">fail</td>"#,
        None => "<td>n/a</td>",
    }
}

/// The section of one run: its tables and charts.
fn section(result: &LoadResult, summary: &Summary) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<section><h2>{}</h2><p>Target {}, time scale {} (1 trace second = {:.3} wall s), {} slots{}; {} requests in {:.0} s of wall time.</p>",
        escape(&result.name),
        escape(&result.target),
        result.time_scale,
        result.time_scale,
        result.slots,
        result
            .offered_load
            .map_or_else(String::new, |load| format!(", offered load {load}")),
        summary.submitted,
        result.wall_s,
    );
    html.push_str("<h3>The seeds' success metrics</h3><table><tr><th>metric</th><th>target</th><th>measured</th><th></th></tr>");
    for metric in &summary.metrics {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            metric.name,
            escape(metric.target),
            escape(&metric.measured),
            cell(metric.pass)
        );
    }
    html.push_str("</table><h3>Requests</h3><table><tr><th>outcome</th><th>count</th></tr>");
    let _ = write!(
        html,
        "<tr><td>accepted</td><td>{}</td></tr>",
        summary.accepted
    );
    for (code, count) in &summary.refused {
        let _ = write!(
            html,
            "<tr><td>refused: {}</td><td>{count}</td></tr>",
            escape(code)
        );
    }
    for (state, count) in &summary.states {
        let _ = write!(
            html,
            "<tr><td>ended {}</td><td>{count}</td></tr>",
            escape(state)
        );
    }
    let q = |q: &Quantiles, unit: f64| {
        format!(
            "<td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td>",
            q.p50 / unit,
            q.p95 / unit,
            q.p99 / unit,
            q.max / unit,
            q.count
        )
    };
    html.push_str("</table><h3>Latencies</h3><table><tr><th>what</th><th>unit</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>n</th></tr>");
    let _ = write!(
        html,
        "<tr><td>submit (wall)</td><td>ms</td>{}</tr><tr><td>submit to slot start (wall)</td><td>ms</td>{}</tr><tr><td>queue wait</td><td>min</td>{}</tr>",
        q(&summary.submit_ms, 1.0),
        q(&summary.submit_to_start_ms, 1.0),
        q(&summary.wait_s, 60.0)
    );
    for (name, lane) in ["short", "medium", "long"]
        .iter()
        .zip(&summary.wait_by_lane_s)
    {
        let _ = write!(
            html,
            "<tr><td>queue wait, {name} lane</td><td>min</td>{}</tr>",
            q(lane, 60.0)
        );
    }
    let _ = write!(
        html,
        "<tr><td>end to end (succeeded)</td><td>min</td>{}</tr></table>",
        q(&summary.end_to_end_s, 60.0)
    );
    if !summary.versus_simulator.is_empty() {
        html.push_str("<h3>Live scheduler against the simulator, same trace</h3><table><tr><th>lane</th><th>jobs</th><th>live p50</th><th>sim p50</th><th>live p95</th><th>sim p95</th><th>mean live − sim</th></tr>");
        for (lane, c) in &summary.versus_simulator {
            let _ = write!(
                html,
                "<tr><td>{lane}</td><td>{}</td><td>{:.2} min</td><td>{:.2} min</td><td>{:.2} min</td><td>{:.2} min</td><td>{:+.1} s</td></tr>",
                c.jobs,
                c.live.p50 / 60.0,
                c.simulated.p50 / 60.0,
                c.live.p95 / 60.0,
                c.simulated.p95 / 60.0,
                c.mean_difference_s
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<div class=\"charts\">");
    for svg in charts(result) {
        html.push_str(&svg);
    }
    html.push_str("</div></section>");
    html
}

/// The self-contained HTML report of one or more runs.
pub fn html(title: &str, runs: &[LoadResult]) -> String {
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:1320px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}.pass{{background:#dfd}}.fail{{background:#fdd}}.charts svg{{margin:4px;border:1px solid #eee}}</style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    for run in runs {
        html.push_str(&section(run, &run.summary()));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(trace_id: u64, created: u64, start: Option<u64>, end: u64, state: &str) -> JobTimeline {
        JobTimeline {
            trace_id,
            shape: [31, 30, 848, 480, 64, 1],
            submitted_ms: created,
            answered_ms: Some(created + 5),
            http_status: Some(202),
            job_id: Some(format!("job-{trace_id}")),
            created_ms: Some(created),
            first_start_ms: start,
            ended_ms: Some(end),
            state: Some(state.to_owned()),
            attempts: 1,
            artifact_ok: (state == "succeeded").then_some(true),
            ..JobTimeline::default()
        }
    }

    #[test]
    fn summary_scales_back_to_trace_time_and_fills_the_metrics() {
        // Time scale 0.01: 1 wall s stands for 100 trace s.
        let jobs = vec![
            job(0, 0, Some(600), 3_000, "succeeded"),
            job(1, 100, Some(1_300), 3_100, "succeeded"),
            job(2, 200, None, 400, "failed"),
            JobTimeline {
                trace_id: 3,
                submitted_ms: 300,
                answered_ms: Some(302),
                http_status: Some(429),
                error_code: Some("quota_exceeded".to_owned()),
                ..JobTimeline::default()
            },
        ];
        let result = LoadResult {
            name: "t".to_owned(),
            target: "http://127.0.0.1:1".to_owned(),
            time_scale: 0.01,
            slots: 2,
            offered_load: None,
            wall_s: 3.1,
            jobs,
            simulated_start_s: vec![Some(50.0), Some(100.0), None, None],
        };
        let summary = result.summary();
        assert_eq!((summary.submitted, summary.accepted), (4, 3));
        assert_eq!(summary.refused.get("quota_exceeded"), Some(&1));
        // Waits 0.6 s and 1.2 s wall: 60 and 120 trace seconds.
        assert!(
            (summary.wait_s.p50 - 60.0).abs() < 1e-9,
            "{:?}",
            summary.wait_s
        );
        assert!((summary.wait_s.max - 120.0).abs() < 1e-9);
        assert_eq!(summary.max_parallel, 2);
        let success = &summary.metrics[0];
        assert_eq!((success.name, success.pass), ("job success", Some(false)));
        // A 429 is not unavailability.
        let availability = summary.metrics.iter().find(|m| m.name == "availability");
        assert_eq!(availability.and_then(|m| m.pass), Some(true));
        // The simulator started job 0 at 50 s (wait 50) and job 1 at 100 s (wait 100).
        let all = &summary.versus_simulator[3];
        assert_eq!(all.0, "all");
        assert_eq!(all.1.jobs, 2);
        assert!((all.1.mean_difference_s - 15.0).abs() < 1e-6, "{all:?}");
        let html = html("report", &[result]);
        assert!(html.contains("quota_exceeded") && html.contains("<svg"));
        assert!(html.contains(r#"<td class="fail">fail</td>"#));
    }

    #[test]
    fn overlap_counts_a_handover_once() {
        assert_eq!(max_overlap(&[(0, 10), (10, 20)]), 1);
        assert_eq!(max_overlap(&[(0, 10), (5, 20), (6, 7)]), 3);
        assert_eq!(max_overlap(&[]), 0);
    }
}
