//! The monitoring kit against real tools: `promtool` checks the configuration and the rules
//! and runs the rules' unit tests; a real Prometheus (Debian's package) scrapes
//! `mochi up --backend simulated` while jobs run, loads the rules without an evaluation
//! error, and every series the rules and the dashboard use exists with its labels, and
//! every dashboard panel's expression returns data from the query API. No GPU here: the
//! node reads its slots' GPUs through a stand-in for the driver's NVML library
//! (`testkit::fake_nvml_library`), so the NVML series carry the stand-in's figures.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Metrics the rules and the dashboard read, with the labels they group or filter by.
const EXPECTED: &[(&str, &[&str])] = &[
    ("mochi_coordinator_queue_depth_lane", &["lane"]),
    (
        "mochi_coordinator_queue_wait_seconds_bucket",
        &["lane", "le"],
    ),
    ("mochi_coordinator_queue_wait_seconds_count", &["lane"]),
    ("mochi_coordinator_job_seconds_bucket", &["state", "le"]),
    ("mochi_coordinator_jobs_finished_total", &["state"]),
    ("mochi_coordinator_queue_depth", &[]),
    ("mochi_coordinator_jobs_on_nodes", &[]),
    ("mochi_coordinator_slots", &["state"]),
    ("mochi_coordinator_dead_letters_total", &[]),
    ("mochi_coordinator_leases_expired_total", &[]),
    ("mochi_coordinator_record_writes_total", &["outcome"]),
    (
        "mochi_coordinator_cost_error_ratio_bucket",
        &["class", "le"],
    ),
    ("mochi_node_slot_busy", &["slot"]),
    ("mochi_node_slot_memory_used_bytes", &["slot"]),
    ("mochi_node_slot_memory_total_bytes", &["slot"]),
    ("mochi_node_step_seconds_bucket", &["tokens", "cfg", "le"]),
    ("mochi_node_phase_seconds_bucket", &["phase", "le"]),
    ("mochi_node_heartbeat_failures_total", &[]),
    ("mochi_node_gpu_utilisation_ratio", &["slot"]),
    ("mochi_node_gpu_job_utilisation_sum", &["slot"]),
    ("mochi_node_gpu_job_utilisation_count", &["slot"]),
    ("mochi_node_gpu_memory_used_bytes", &["slot"]),
    ("mochi_node_gpu_memory_total_bytes", &["slot"]),
    ("mochi_node_nvml_up", &[]),
    ("mochi_nats_connected", &["client"]),
    ("mochi_gateway_webhook_deliveries_total", &["outcome"]),
    ("mochi_gateway_rate_limited_total", &["class"]),
    ("mochi_gateway_quota_exceeded_total", &[]),
    ("mochi_gateway_jobs_too_large_total", &[]),
    ("mochi_gateway_requests_total", &["route", "status"]),
    ("mochi_gateway_event_streams_open", &[]),
    ("mochi_gateway_webhook_source_pending", &[]),
    ("mochi_gateway_webhook_source_holder", &[]),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(repo("monitoring"))
        .output()
        .unwrap_or_else(|e| {
            panic!("{PROMTOOL}: {e}: run scripts/install-deps.sh (Debian's prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_configuration_and_every_alert_passes_its_unit_test() {
    let checked = promtool(&["check", "config", "prometheus.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let rules = promtool(&["check", "rules", "mochi.rules.yml"]);
    assert!(rules.contains("SUCCESS: 19 rules found"), "{rules}");
    let tested = promtool(&["test", "rules", "mochi.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert of the rules has a unit test.
    let rules_text = std::fs::read_to_string(repo("monitoring/mochi.rules.yml")).unwrap();
    let tests_text = std::fs::read_to_string(repo("monitoring/mochi.rules.test.yml")).unwrap();
    for line in rules_text.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests_text.contains(&format!("alertname: {alert}")),
                "{alert} has no unit test"
            );
        }
    }
}

/// The metric names (`mochi_…`) an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mochi_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every panel's expressions, from the dashboard JSON.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("monitoring/grafana/mochi-serve.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    exprs
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: mochi\n    static_configs:\n      - targets: [{target:?}]\n",
            repo("monitoring/mochi.rules.yml").display().to_string()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{PROMETHEUS}: {e}: run scripts/install-deps.sh"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Vec<Value> {
    let url =
        reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), &[("query", expr)])
            .unwrap();
    let answer: Value = http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_finds_every_series_and_panel_while_jobs_run() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: run scripts/install-deps.sh (Debian's prometheus)"
    );
    let nvml_dir = tempfile::tempdir().unwrap();
    let nvml = testkit::fake_nvml_library(nvml_dir.path()).unwrap();
    let up = common::MochiUp::start_with_env(
        "simulated",
        &[
            ("MOCHI_GPU_NODE__NVML", "on".as_ref()),
            ("MOCHI_GPU_NODE__NVML_LIBRARY", nvml.as_os_str()),
            ("MOCHI_GPU_NODE__NVML_INTERVAL_MS", "200".as_ref()),
        ],
    );
    let target = up.url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target);
    let http = reqwest::Client::new();

    // Jobs to completion, and a refused one.
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = serde_json::json!({"prompt": format!("monitored {n}"), "num_frames": 13, "width": 256, "height": 144, "steps": 8});
        ids.push(
            common::submit(&http, &up.url, &body, Some(&up.key), None)
                .await
                .id,
        );
    }
    let refused = http
        .post(format!("{}/v1/videos", up.url))
        .bearer_auth(&up.key)
        .json(&serde_json::json!({"prompt": "x", "steps": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in ids {
        let done = common::wait_terminal(&http, &up.url, id, Some(&up.key), deadline).await;
        assert_eq!(
            done.state,
            protocol::JobState::Succeeded,
            "{:?}",
            done.error
        );
    }

    // Every series the rules and the dashboard read, with its labels.
    let rules = std::fs::read_to_string(repo("monitoring/mochi.rules.yml")).unwrap();
    let exprs = dashboard_exprs();
    let mut used = metric_names(&rules);
    for (_, expr) in &exprs {
        used.extend(metric_names(expr));
    }
    let expected: BTreeSet<String> = EXPECTED
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let unlisted: Vec<&String> = used.difference(&expected).collect();
    assert!(
        unlisted.is_empty(),
        "series used but not checked here: {unlisted:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, labels) in EXPECTED {
        loop {
            let series = query(&http, &prometheus.url, name).await;
            let labelled = series
                .iter()
                .any(|s| labels.iter().all(|label| s["metric"].get(*label).is_some()));
            if labelled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} with labels {labels:?} not in Prometheus: {series:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The one gateway of `mochi up` holds the webhook source.
    loop {
        let series = query(
            &http,
            &prometheus.url,
            "mochi_gateway_webhook_source_holder",
        )
        .await;
        if series.iter().any(|s| s["value"][1] == "1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no gateway holds the webhook source: {series:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The node reads slot 0's GPU (the stand-in's GPU 0: 37 %, 2 GiB of 80 GiB in use).
    for (expr, value) in [
        ("mochi_node_nvml_up", "1"),
        ("mochi_node_gpu_utilisation_ratio{slot=\"0\"}", "0.37"),
        ("mochi_node_gpu_memory_used_bytes{slot=\"0\"}", "2147483648"),
        (
            "mochi_node_gpu_memory_total_bytes{slot=\"0\"}",
            "85899345920",
        ),
    ] {
        loop {
            let series = query(&http, &prometheus.url, expr).await;
            if series.iter().any(|s| s["value"][1] == value) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} is not {value}: {series:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Every panel's expression returns data (rates need two scrapes of each series).
    for (title, expr) in &exprs {
        loop {
            let result = query(&http, &prometheus.url, expr).await;
            if !result.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the panel {title:?} has no data: {expr}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The rules loaded and evaluate without error.
    let rules: Value = http
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{rules}");
    for group in groups {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    assert!(up.stop(), "mochi up did not exit cleanly");
}
