//! What a load run measured: the JSON result (every job's timeline), its summary in trace
//! time, the table of the seeds' success metrics (target, measured, pass or fail), the
//! comparison with the simulator on the same trace, and the self-contained HTML report.
//!
//! The HTML page is drawn by [`html`].
//!
//! Durations are reported in trace seconds (wall time divided by the time scale), the time
//! the simulated H100s stand for; the submit latency alone is wall time, since the service's
//! own overhead is not scaled.

pub mod html;

use std::collections::BTreeMap;

use coordinator::cost::CostModel;
use coordinator::policy::{Lane, LaneBounds};
use coordinator::sim::trace::TraceJob;
use coordinator::sim::{self, Fate, SimConfig};
use protocol::JobShape;
use serde::{Deserialize, Serialize};

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
    /// Nearest-rank quantiles of `samples` (the simulator's rule,
    /// [`coordinator::sim::report::percentiles`], so live and simulated figures compare).
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        let p = coordinator::sim::report::percentiles(&mut sorted);
        Self {
            p50: p.p50,
            p95: p.p95,
            p99: p.p99,
            max: sorted.last().copied().unwrap_or(0.0),
            count: p.count,
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
pub(crate) fn lanes() -> LaneBounds {
    let live = coordinator::Config::default();
    live.policy.build(live.length_aware).lanes()
}

pub(crate) fn shape_of(job: &JobTimeline) -> JobShape {
    let [frames, fps, width, height, steps, cfg] = job.shape;
    JobShape::new(frames, fps, width, height, steps, cfg == 1)
}

pub(crate) fn lane_of(lanes: &LaneBounds, model: &CostModel, job: &JobTimeline) -> Lane {
    lanes.lane(model.cost(&shape_of(job)).reference_seconds())
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
                by_lane[lane_of(&lanes, &model, job).index()].push(wait);
            }
            intervals.extend(runs_of(job, None));
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
            let simulated = (sim_start - job.arrival_s).max(0.0);
            let lane = lane_of(lanes, model, job).index();
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

/// A job's runs on a slot as `(start, end)`, ms: a run not seen ending ends with the job, or
/// at `open_end` (the chart's end), or at its start (the summary counts no unseen time).
pub(crate) fn runs_of(job: &JobTimeline, open_end: Option<u64>) -> Vec<(u64, u64)> {
    let close = |start: u64, end: Option<u64>| {
        let end = end.or(job.ended_ms).or(open_end).unwrap_or(start);
        (start, end.max(start))
    };
    if job.runs.is_empty() {
        return job
            .first_start_ms
            .map(|start| close(start, None))
            .into_iter()
            .collect();
    }
    job.runs
        .iter()
        .map(|&(start, end)| close(start, end))
        .collect()
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

/// `text` with `&`, `<` and `>` escaped for HTML.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
        let html = html::render("report", &[result]);
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
