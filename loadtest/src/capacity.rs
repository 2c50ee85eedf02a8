//! The service's own capacity with zero GPU time, against the seed-shaped FastAPI + Redis
//! path (`loadtest/peers/fastapi_redis`) in the same run on the same machine.
//!
//! * **Start latency** (first, on a quiet machine). On a stack with GPU nodes whose jobs
//!   take no time, jobs arrive open-loop at a rate the slots absorb; each one's time from
//!   the submission to its start on a slot is read from the service's timestamps.
//! * **Intake.** A closed loop of `connections` clients posts jobs for `seconds` to our
//!   gateway (API key checked, rate limits and quotas raised out of the way) over a
//!   nats-server (or a cluster of them) with every write synced, with one coordinator
//!   taking them in and no GPU node; then the run waits until the intake has turned every
//!   accepted submission into a stored record, and until our stack has settled (done the
//!   work the accepted jobs left behind, such as their queue positions). The same clients
//!   then post to the peer: uvicorn (one worker per core) LPUSHing onto a Redis list that
//!   fsyncs every write (`appendfsync always`; with `durable` off, both sides sync on an
//!   interval instead). Rounds alternate between the two so that machine noise falls on
//!   both.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coordinator::sim::trace::TraceJob;
use protocol::JobShape;
use protocol::spec::Priority;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterError, ClusterSettings};
use crate::open_loop::{self, OpenLoopConfig};
use crate::report::Quantiles;

/// One capacity run.
#[derive(Debug, Clone)]
pub struct CapacityConfig {
    /// The `mochi` binary.
    pub mochi: PathBuf,
    /// The `nats-server` binary.
    pub nats_server: PathBuf,
    /// The `redis-server` binary.
    pub redis_server: PathBuf,
    /// A Python with fastapi, uvicorn and redis (`.venv-peer/bin/python`).
    pub peer_python: PathBuf,
    /// The peer's directory (`loadtest/peers/fastapi_redis`).
    pub peer_dir: PathBuf,
    /// Concurrent clients of each closed-loop phase.
    pub connections: Vec<usize>,
    /// Seconds of each closed-loop phase.
    pub seconds: f64,
    /// Rounds (each: every connection count, ours and the peer's).
    pub rounds: usize,
    /// Jobs of the start-latency phase.
    pub start_jobs: usize,
    /// Their arrival rate, per second.
    pub start_rate: f64,
    /// Every write synced before it is acknowledged, on both sides (JetStream's
    /// `sync_interval: always`, Redis' `appendfsync always`); off: JetStream's default
    /// interval and Redis' `appendfsync everysec`, neither durable on a crash.
    pub durable: bool,
    /// nats-servers under our side: 1, or a JetStream cluster with every stream and bucket
    /// replicated on each (3: production's shape).
    pub nats_servers: usize,
}

/// Why a capacity run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// The stack did not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The peer did not start.
    #[error("the FastAPI + Redis peer: {0}")]
    Peer(String),
    /// The load failed.
    #[error(transparent)]
    Load(#[from] crate::Error),
    /// The run's own NATS connection failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// A process did not answer its health or readiness route in time.
    #[error("{what} did not answer {url} within {timeout_s} s")]
    NotReady {
        /// Which process.
        what: String,
        /// The route asked.
        url: String,
        /// How long it was asked.
        timeout_s: u64,
    },
    /// A phase on one of our stacks failed; the stack's directory (its processes' logs) is
    /// kept.
    #[error("{source} (the stack's logs are kept in {logs})")]
    Stack {
        /// The kept directory.
        logs: String,
        /// What failed.
        source: Box<CapacityError>,
    },
}

/// How long a process may take to answer its health or readiness route.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `result`; when it failed, `dir` (a stack's processes' logs) is kept and named in the
/// error, else removed.
fn keeping_logs<T>(
    result: Result<T, CapacityError>,
    dir: tempfile::TempDir,
) -> Result<T, CapacityError> {
    result.map_err(|error| CapacityError::Stack {
        logs: dir.keep().display().to_string(),
        source: Box::new(error),
    })
}

/// What a closed-loop phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// `mochi` or `fastapi+redis`.
    pub target: String,
    /// Concurrent clients.
    pub connections: usize,
    /// Requests answered `202`.
    pub accepted: u64,
    /// Other answers and failed connections.
    pub errors: u64,
    /// Accepted per second of the phase.
    pub per_s: f64,
    /// Latency of accepted requests, ms.
    pub latency_ms: Quantiles,
    /// Seconds after the phase until every accepted submission had its record (ours).
    pub drain_s: Option<f64>,
    /// Accepted over the phase plus the drain: what the service sustains durably.
    pub sustained_per_s: f64,
    /// Ours: seconds after the drain until the stack's CPU use fell back to its resting use
    /// plus a fifth of a core (at most 120 s): the work the accepted jobs left behind, such
    /// as their queue positions, done before the peer's phase starts so that it does not
    /// run on the peer's time.
    pub settle_s: Option<f64>,
    /// Accepted over the phase, the drain and the settling: a floor of what the service
    /// keeps up with when its background work is charged to it too.
    pub steady_per_s: f64,
    /// Seconds the closed loop ran.
    pub wall_s: f64,
    /// The peer's phases: the CPU our idle stack used meanwhile, in cores.
    pub ours_cpu: Option<f64>,
    /// Mean latency of accepted requests, ms (the client's whole round trip).
    pub latency_mean_ms: f64,
    /// Ours: where the requests' time went, from the gateway's own metrics over the phase.
    pub gateway: Option<GatewayShare>,
}

/// Ours: what the gateway's metrics (`/metrics`) say about a phase's submissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GatewayShare {
    /// Mean time a submission waited for its record's write, ms
    /// (`mochi_gateway_submit_seconds`: queued behind the write in flight, then its own).
    pub record_write_mean_ms: f64,
    /// That wait over the client's mean round trip: the rest is HTTP, parsing, checks and
    /// the client itself.
    pub share_of_latency: f64,
    /// Records per write (`mochi_gateway_record_writes_total`, batches and single records).
    pub records_per_write: f64,
}

/// The gateway's counters that [`GatewayShare`] is the difference of.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GatewayCounters {
    submit_seconds_sum: f64,
    submit_count: f64,
    writes: f64,
    records: f64,
}

impl GatewayCounters {
    /// Reads them from the Prometheus text `metrics`.
    fn parse(metrics: &str) -> Self {
        let mut counters = Self::default();
        let mut single = 0.0;
        let mut batched = 0.0;
        for line in metrics.lines().filter(|line| !line.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let series = |metric: &str| name == metric || name.starts_with(&format!("{metric}{{"));
            if series(&format!("{}_sum", gateway::metrics::SUBMIT_SECONDS)) {
                counters.submit_seconds_sum += value;
            } else if series(&format!("{}_count", gateway::metrics::SUBMIT_SECONDS)) {
                counters.submit_count += value;
            } else if series(gateway::metrics::RECORD_WRITES) {
                counters.writes += value;
                if name.contains(r#"kind="single""#) {
                    single += value;
                }
            } else if series(gateway::metrics::BATCHED_RECORDS) {
                batched += value;
            }
        }
        counters.records = single + batched;
        counters
    }

    /// The phase between `before` and `self`, against the client's mean latency.
    fn since(&self, before: &Self, latency_mean_ms: f64) -> Option<GatewayShare> {
        let count = self.submit_count - before.submit_count;
        let writes = self.writes - before.writes;
        if count <= 0.0 || writes <= 0.0 {
            return None;
        }
        let record_write_mean_ms =
            (self.submit_seconds_sum - before.submit_seconds_sum) / count * 1000.0;
        Some(GatewayShare {
            record_write_mean_ms,
            share_of_latency: if latency_mean_ms > 0.0 {
                record_write_mean_ms / latency_mean_ms
            } else {
                0.0
            },
            records_per_write: (self.records - before.records) / writes,
        })
    }
}

/// The gateway's counters now (`None`: `/metrics` did not answer).
async fn gateway_counters(http: &reqwest::Client, gateway: &str) -> Option<GatewayCounters> {
    let response = http.get(format!("{gateway}/metrics")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(GatewayCounters::parse(&response.text().await.ok()?))
}

/// What one closed loop counted: accepted, errors, latencies (ms), wall seconds.
type LoopResult = (u64, u64, Vec<f64>, f64);

impl Phase {
    /// A phase's figures from its closed loop and, for ours, the drain and the settling
    /// after it.
    fn of(target: &str, connections: usize, ran: LoopResult, after: Option<(f64, f64)>) -> Self {
        let (accepted, errors, latencies, wall) = ran;
        let latency_mean_ms = if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().sum::<f64>() / latencies.len() as f64
        };
        let drain_s = after.map(|(drain, _)| drain);
        let settle_s = after.map(|(_, settle)| settle);
        Self {
            target: target.to_owned(),
            connections,
            accepted,
            errors,
            per_s: accepted as f64 / wall,
            latency_ms: Quantiles::of(&latencies),
            drain_s,
            sustained_per_s: accepted as f64 / (wall + drain_s.unwrap_or(0.0)),
            settle_s,
            wall_s: wall,
            ours_cpu: None,
            latency_mean_ms,
            gateway: None,
            steady_per_s: accepted as f64
                / (wall + drain_s.unwrap_or(0.0) + settle_s.unwrap_or(0.0)),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapacityReport {
    /// Every closed-loop phase, in the order run.
    pub phases: Vec<Phase>,
    /// Ours over the peer's sustained rate, median over rounds, per connection count.
    pub ratios: Vec<(usize, f64)>,
    /// The same with ours charged its settling too (`steady_per_s`).
    pub steady_ratios: Vec<(usize, f64)>,
    /// nats-servers under our side (3: a cluster, every stream replicated on each).
    pub nats_servers: usize,
    /// Our stack's CPU use at rest, before the load, in cores.
    pub resting_cpu: f64,
    /// Submission to start on a free slot, wall ms.
    pub submit_to_start_ms: Quantiles,
    /// Jobs of that phase that started.
    pub started: usize,
    /// Jobs of that phase that succeeded.
    pub succeeded: usize,
    /// The job of that phase slowest to start, and where its time went.
    pub slowest_start: Option<SlowStart>,
}

/// The job slowest from submission to start, split at the creation of its record: the
/// gateway and the intake before, the scheduler and the slot's placement after.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlowStart {
    /// Its place in arrival order (0: the first job submitted).
    pub index: u64,
    /// Submission to its record's creation, ms.
    pub to_created_ms: u64,
    /// Its record's creation to its start on a slot, ms.
    pub created_to_start_ms: u64,
}

impl SlowStart {
    /// The slowest of `jobs` to start, if any started.
    fn of(jobs: &[crate::open_loop::JobTimeline]) -> Option<Self> {
        let (job, started) = jobs
            .iter()
            .filter_map(|job| Some((job, job.first_start_ms?)))
            .max_by_key(|(job, started)| started.saturating_sub(job.submitted_ms))?;
        let created = job.created_ms.unwrap_or(job.submitted_ms);
        Some(Self {
            index: job.trace_id,
            to_created_ms: created.saturating_sub(job.submitted_ms),
            created_to_start_ms: started.saturating_sub(created),
        })
    }
}

/// The peer's two processes, ended when dropped. Each runs in a process group of its own:
/// uvicorn's workers are its children, which a kill of the master alone would leave running.
struct Peer {
    children: Vec<Child>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for child in &mut self.children {
            end_group(child);
        }
    }
}

/// Ends `child`, started with `process_group(0)`, and every process of its group: SIGTERM
/// (uvicorn's master ends its workers before it exits), then SIGKILL after five seconds.
/// The group is signalled only while the child is not reaped, so its id cannot have been
/// reused.
fn end_group(child: &mut Child) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let signal = |signal: Signal| {
        let _ = killpg(Pid::from_raw(raw), signal);
    };
    signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(Signal::SIGKILL);
    let _ = child.wait();
}

impl Peer {
    fn start(config: &CapacityConfig, workers: usize) -> Result<Self, CapacityError> {
        let dir = tempfile::tempdir().map_err(|error| CapacityError::Peer(error.to_string()))?;
        let ports = crate::cluster::free_ports(2)?;
        let (redis_port, http_port) = (ports[0], ports[1]);
        let spawn = |command: &mut Command, what: &str| {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            nats_process::die_with_parent(command);
            command
                .process_group(0)
                .spawn()
                .map_err(|error| CapacityError::Peer(format!("cannot start {what}: {error}")))
        };
        let redis = spawn(
            Command::new(&config.redis_server)
                .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
                .args(["--appendonly", "yes", "--save", ""])
                .args([
                    "--appendfsync",
                    if config.durable { "always" } else { "everysec" },
                ])
                .arg("--dir")
                .arg(dir.path()),
            "redis-server",
        )?;
        let mut peer = Self {
            children: vec![redis],
            url: format!("http://127.0.0.1:{http_port}"),
            _dir: dir,
        };
        let uvicorn = spawn(
            Command::new(&config.peer_python)
                .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1"])
                .args(["--port", &http_port.to_string()])
                .args(["--workers", &workers.to_string()])
                .args(["--log-level", "warning", "--no-access-log"])
                .arg("--app-dir")
                .arg(&config.peer_dir)
                .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/0")),
            "uvicorn",
        )?;
        peer.children.push(uvicorn);
        Ok(peer)
    }
}

async fn wait_for(http: &reqwest::Client, url: &str, what: &str) -> Result<(), CapacityError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !http
        .get(url)
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(CapacityError::NotReady {
                what: what.to_owned(),
                url: url.to_owned(),
                timeout_s: READY_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until the gateway's estimate (which asks the leading coordinator) counts `slots`
/// known slots: a coordinator leads, has opened its resources and has seen every node. At
/// most 60 s.
async fn wait_for_slots(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    slots: u64,
) -> Result<(), CapacityError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http
            .post(format!("{base}/v1/videos/estimate"))
            .bearer_auth(key)
            .json(&body())
            .send()
            .await;
        let known = match answer {
            Ok(response) if response.status().is_success() => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|estimate| estimate["known_slots"].as_u64()),
            _ => None,
        };
        if known.is_some_and(|known| known >= slots) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CapacityError::Peer(format!(
                "no coordinator saw the stack's {slots} slots within 60 s (last count: {known:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The body every closed-loop request posts.
fn body() -> serde_json::Value {
    serde_json::json!({
        "prompt": "a red fox running through fresh snow",
        "num_frames": 31,
        "width": 848,
        "height": 480,
        "steps": 64
    })
}

/// `connections` clients post jobs back to back for `seconds`.
async fn closed_loop(
    url: &str,
    key: Option<&str>,
    connections: usize,
    seconds: f64,
) -> Result<LoopResult, CapacityError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(connections)
        .build()
        .map_err(crate::Error::Client)?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (http, url, key, stop) = (
            http.clone(),
            format!("{url}/v1/videos"),
            key.map(str::to_owned),
            Arc::clone(&stop),
        );
        clients.spawn(async move {
            let (mut accepted, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            let body = body();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let mut request = http.post(&url).json(&body);
                if let Some(key) = &key {
                    request = request.bearer_auth(key);
                }
                match request.send().await {
                    Ok(response) if response.status().as_u16() == 202 => {
                        let _ = response.bytes().await;
                        accepted += 1;
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(response) => {
                        let _ = response.bytes().await;
                        errors += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (accepted, errors, latencies)
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut accepted, mut errors, mut latencies) = (0, 0, Vec::new());
    while let Some(joined) = clients.join_next().await {
        if let Ok((a, e, l)) = joined {
            accepted += a;
            errors += e;
            latencies.extend(l);
        }
    }
    Ok((accepted, errors, latencies, started.elapsed().as_secs_f64()))
}

/// A stack for the intake phases: one coordinator, no GPU node, limits out of the way.
fn intake_stack(config: &CapacityConfig, dir: &std::path::Path) -> Result<Cluster, ClusterError> {
    let mut settings = ClusterSettings::new(
        config.mochi.clone(),
        config.nats_server.clone(),
        dir.to_owned(),
    );
    settings.coordinators = 1;
    settings.nodes = 0;
    settings.auth = true;
    settings.sync_always = config.durable;
    settings.nats_servers = config.nats_servers;
    settings.gateway_env = vec![
        (
            "MOCHI_GATEWAY__QUOTA__MAX_ACTIVE_JOBS".into(),
            "100000000".into(),
        ),
        (
            "MOCHI_GATEWAY__RATE_LIMIT__CREATES_PER_MINUTE".into(),
            "100000000".into(),
        ),
        (
            "MOCHI_GATEWAY__RATE_LIMIT__READS_PER_MINUTE".into(),
            "100000000".into(),
        ),
        ("RUST_LOG".into(), "warn".into()),
    ];
    settings.coordinator_env = vec![("RUST_LOG".into(), "warn".into())];
    Cluster::start(settings)
}

fn key_for(cluster: &Cluster, role: &str) -> Result<String, CapacityError> {
    let out = cluster.mochi(&["keys", "create", "--tenant", "capacity", "--role", role])?;
    out.lines()
        .last()
        .map(|line| line.trim().to_owned())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| ClusterError::Startup("`mochi keys create` printed no key".into()).into())
}

/// Seconds until `MOCHI_SUBMIT` holds no submission (every one has its record).
async fn drain(cluster: &Cluster) -> Result<f64, CapacityError> {
    let resources = cluster
        .jetstream("mochi-capacity")
        .await
        .map_err(CapacityError::Nats)?;
    let started = Instant::now();
    let mut submit = resources.submit.clone();
    loop {
        let info = submit
            .info()
            .await
            .map_err(|e| CapacityError::Nats(e.to_string()))?;
        if info.state.messages == 0 {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(CapacityError::Nats(format!(
                "{} submissions still not taken in after 600 s",
                info.state.messages
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU above its resting use that our stack may use and count as settled, in cores: a
/// stack holding tens of thousands of waiting jobs does more on each scheduler tick than an
/// empty one, without any work left over from the load.
const IDLE_MARGIN: f64 = 0.2;
/// The longest wait for the stack to settle; past it the peer's phase starts anyway (and
/// our stack's CPU during it is reported).
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// The stack's CPU use at rest (heartbeats, timers, Raft), in cores: the quietest of three
/// one-second windows.
async fn resting_cpu(cluster: &Cluster) -> f64 {
    let mut quietest = f64::INFINITY;
    let mut last = cluster.cpu_seconds();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cluster.cpu_seconds();
        quietest = quietest.min(now - last);
        last = now;
    }
    quietest
}

/// Seconds until the stack's processes use no more than `resting` plus [`IDLE_MARGIN`]
/// cores over a second (at most [`SETTLE_MAX`]).
async fn settle(cluster: &Cluster, resting: f64) -> f64 {
    let started = Instant::now();
    let mut last = cluster.cpu_seconds();
    while started.elapsed() < SETTLE_MAX {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cluster.cpu_seconds();
        if now - last <= resting + IDLE_MARGIN {
            // The quiet second itself is not work left over.
            return (started.elapsed().as_secs_f64() - 1.0).max(0.0);
        }
        last = now;
    }
    started.elapsed().as_secs_f64()
}

/// Runs the start-latency phase, then the intake rounds.
pub async fn run(config: &CapacityConfig) -> Result<CapacityReport, CapacityError> {
    let mut report = CapacityReport::default();
    // First, on a quiet machine: after the intake rounds the kernel is still writing back
    // the gigabytes they stored, and every synced write waits behind that.
    let (started, succeeded, to_start, slowest) = start_latency(config).await?;
    report.started = started;
    report.succeeded = succeeded;
    report.submit_to_start_ms = to_start;
    report.slowest_start = slowest;
    let http = reqwest::Client::new();
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let peer = Peer::start(config, workers)?;
    wait_for(&http, &format!("{}/healthz", peer.url), "the peer").await?;
    let dir = tempfile::Builder::new()
        .prefix("mochi-capacity-")
        .tempdir()
        .map_err(ClusterError::Io)?;
    let intake = Box::pin(intake_rounds(config, &http, &peer, dir.path(), &mut report)).await;
    let resting = keeping_logs(intake, dir)?;
    drop(peer);
    report.nats_servers = config.nats_servers;
    report.resting_cpu = resting;
    for &connections in &config.connections {
        let rate = |target: &str, of: fn(&Phase) -> f64| {
            let rates: Vec<f64> = report
                .phases
                .iter()
                .filter(|p| p.target == target && p.connections == connections)
                .map(of)
                .collect();
            Quantiles::of(&rates).p50
        };
        let peer = rate("fastapi+redis", |p| p.sustained_per_s).max(1e-9);
        report
            .ratios
            .push((connections, rate("mochi", |p| p.sustained_per_s) / peer));
        report
            .steady_ratios
            .push((connections, rate("mochi", |p| p.steady_per_s) / peer));
    }
    Ok(report)
}

/// Starts our intake stack in `dir`, then runs the rounds, ours and the peer's alternately,
/// into `report`; returns our stack's resting CPU, cores.
async fn intake_rounds(
    config: &CapacityConfig,
    http: &reqwest::Client,
    peer: &Peer,
    dir: &std::path::Path,
    report: &mut CapacityReport,
) -> Result<f64, CapacityError> {
    let ours = intake_stack(config, dir)?;
    let key = key_for(&ours, "submitter")?;
    wait_for(
        http,
        &format!("{}/readyz", ours.gateway_url()),
        "the gateway",
    )
    .await?;
    let resting = resting_cpu(&ours).await;
    for _ in 0..config.rounds {
        for &connections in &config.connections {
            let counted = gateway_counters(http, &ours.gateway_url()).await;
            let ran =
                closed_loop(&ours.gateway_url(), Some(&key), connections, config.seconds).await?;
            let counters = gateway_counters(http, &ours.gateway_url()).await;
            let drain_s = Box::pin(drain(&ours)).await?;
            let settle_s = settle(&ours, resting).await;
            let mut phase = Phase::of("mochi", connections, ran, Some((drain_s, settle_s)));
            phase.gateway = counted
                .zip(counters)
                .and_then(|(before, after)| after.since(&before, phase.latency_mean_ms));
            report.phases.push(phase);
            let before = ours.cpu_seconds();
            let ran = closed_loop(&peer.url, None, connections, config.seconds).await?;
            let mut phase = Phase::of("fastapi+redis", connections, ran, None);
            phase.ours_cpu = Some((ours.cpu_seconds() - before) / phase.wall_s);
            report.phases.push(phase);
        }
    }
    Ok(resting)
}

/// Jobs that take no GPU time arrive at `start_rate` on 16 slots; returns how many started
/// and succeeded, and their submission-to-start times.
/// Its stack's directory is kept when it fails, or when `MOCHI_LOADTEST_KEEP` is set.
async fn start_latency(config: &CapacityConfig) -> Result<StartLatency, CapacityError> {
    let dir = tempfile::Builder::new()
        .prefix("mochi-start-")
        .tempdir()
        .map_err(ClusterError::Io)?;
    match Box::pin(start_latency_in(config, dir.path())).await {
        Ok(measured) => {
            if std::env::var_os("MOCHI_LOADTEST_KEEP").is_some() {
                eprintln!(
                    "kept the start-latency run's logs in {}",
                    dir.keep().display()
                );
            }
            Ok(measured)
        }
        failed => keeping_logs(failed, dir),
    }
}

/// What the start-latency phase measured: jobs started, jobs succeeded, their
/// submission-to-start times, and the slowest.
type StartLatency = (usize, usize, Quantiles, Option<SlowStart>);

/// [`start_latency`] on a stack in `dir`.
async fn start_latency_in(
    config: &CapacityConfig,
    dir: &std::path::Path,
) -> Result<StartLatency, CapacityError> {
    let mut settings = ClusterSettings::new(
        config.mochi.clone(),
        config.nats_server.clone(),
        dir.to_owned(),
    );
    settings.coordinators = 1;
    settings.nodes = 2;
    settings.slots_per_node = 8;
    settings.time_scale = 0.0;
    settings.auth = true;
    settings.nats_servers = config.nats_servers;
    settings.node_env = vec![(
        "MOCHI_GPU_NODE__SIMULATED__MAX_RENDER_SIDE".into(),
        "32".into(),
    )];
    settings.gateway_env = vec![
        (
            "MOCHI_GATEWAY__RATE_LIMIT__CREATES_PER_MINUTE".into(),
            "100000000".into(),
        ),
        (
            "MOCHI_GATEWAY__RATE_LIMIT__READS_PER_MINUTE".into(),
            "100000000".into(),
        ),
    ];
    let slots = settings.nodes as u64 * u64::from(settings.slots_per_node);
    let cluster = Cluster::start(settings)?;
    let key = key_for(&cluster, "submitter")?;
    let http = reqwest::Client::new();
    wait_for(
        &http,
        &format!("{}/readyz", cluster.gateway_url()),
        "the gateway",
    )
    .await?;
    // Start-up is not start latency: wait until a coordinator leads and sees every slot.
    wait_for_slots(&http, &cluster.gateway_url(), &key, slots).await?;
    let trace: Vec<TraceJob> = (0..config.start_jobs)
        .map(|index| TraceJob {
            id: index as u64,
            arrival_s: index as f64 / config.start_rate.max(0.001),
            tenant: 0,
            priority: Priority::Normal,
            shape: JobShape::new(31, 30, 848, 480, 8, true),
        })
        .collect();
    let open_loop = OpenLoopConfig {
        base_url: cluster.gateway_url(),
        api_keys: vec![key],
        time_scale: 1.0,
        max_duration: Duration::from_secs_f64(
            config.start_jobs as f64 / config.start_rate.max(0.001) + 60.0,
        ),
        allow_remote: false,
        poll_interval: Duration::from_millis(250),
        check_artifacts: false,
        progress: false,
    };
    let jobs = open_loop::run(&open_loop, &trace).await?;
    let to_start: Vec<f64> = jobs
        .iter()
        .filter_map(|job| Some(job.first_start_ms?.saturating_sub(job.submitted_ms) as f64))
        .collect();
    drop(cluster);
    let succeeded = jobs
        .iter()
        .filter(|job| job.state.as_deref() == Some("succeeded"))
        .count();
    Ok((
        to_start.len(),
        succeeded,
        Quantiles::of(&to_start),
        SlowStart::of(&jobs),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_share_is_the_difference_of_its_counters() {
        let text = |sum: f64, count: u64, batches: u64, singles: u64, batched: u64| {
            format!(
                "# TYPE mochi_gateway_submit_seconds summary\n\
                 mochi_gateway_submit_seconds{{quantile=\"0.5\"}} 0.004\n\
                 mochi_gateway_submit_seconds_sum {sum}\n\
                 mochi_gateway_submit_seconds_count {count}\n\
                 mochi_gateway_record_writes_total{{kind=\"batch\"}} {batches}\n\
                 mochi_gateway_record_writes_total{{kind=\"single\"}} {singles}\n\
                 mochi_gateway_batched_records_total {batched}\n\
                 mochi_gateway_submit_seconds_total_other 99\n"
            )
        };
        let before = GatewayCounters::parse(&text(1.0, 100, 2, 10, 90));
        assert_eq!(
            before,
            GatewayCounters {
                submit_seconds_sum: 1.0,
                submit_count: 100.0,
                writes: 12.0,
                records: 100.0,
            }
        );
        // 1,000 submissions waited 5 s in all (5 ms each), in 53 writes: 38 batches of 985
        // records, and 15 records alone.
        let after = GatewayCounters::parse(&text(6.0, 1_100, 40, 25, 1_075));
        let share = after.since(&before, 8.0).expect("a phase with writes");
        assert!((share.record_write_mean_ms - 5.0).abs() < 1e-9, "{share:?}");
        assert!((share.share_of_latency - 0.625).abs() < 1e-9, "{share:?}");
        assert!(
            (share.records_per_write - 1_000.0 / 53.0).abs() < 1e-9,
            "{share:?}"
        );
        // No submission in between: nothing to say.
        assert_eq!(before.since(&before, 8.0), None);
    }
}
