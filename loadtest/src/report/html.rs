//! The self-contained HTML report: per run, the success-metrics table, the requests by
//! outcome, latency percentiles, the live-against-simulator table and five SVG plots
//! (latency distributions, queue wait by arrival per lane, throughput, slot utilisation,
//! errors).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coordinator::cost::CostModel;

use super::{LoadResult, Quantiles, Summary, escape, lane_of, lanes, runs_of};
use crate::chart::{self, Kind, Labels, PALETTE, Series};

/// The names of a run's charts, in the order [`charts`] draws them.
pub const CHART_NAMES: [&str; 5] = ["latency", "waits", "throughput", "utilisation", "errors"];

/// A run's charts as standalone SVG files (white background): `(name, svg)` with the names
/// of [`CHART_NAMES`].
pub fn chart_files(result: &LoadResult) -> Vec<(&'static str, String)> {
    CHART_NAMES
        .into_iter()
        .zip(charts(result))
        .map(|(name, svg)| {
            let standalone = svg.replacen(
                "font-size=\"11\">",
                "font-size=\"11\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
                1,
            );
            (name, standalone)
        })
        .collect()
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
            Some((start - j.arrival_s).max(0.0) / 60.0)
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
            by_lane[lane_of(&lanes, &model, job).index()]
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
        .flat_map(|j| runs_of(j, Some(end)))
        .flat_map(|(start, stop)| [(minutes(start), 1), (minutes(stop), -1)])
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
pub fn render(title: &str, runs: &[LoadResult]) -> String {
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
