//! The documented load run: for each offered load, a fresh stack of separate processes on
//! loopback (nats-server with every write synced, two coordinators, two GPU nodes of four
//! simulated H100 slots each whose jobs take the cost model's time, scaled; one gateway
//! with API keys and a per-tenant quota), a trace from the standard mix at that load, the
//! open-loop run, and the simulator on the same trace.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use coordinator::sim::trace::{self, Arrivals, Mix, TraceJob};

use crate::cluster::{Cluster, ClusterError, ClusterSettings};
use crate::open_loop::{self, OpenLoopConfig};
use crate::report::{self, LoadResult};

/// One documented run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// The `mochi` binary.
    pub mochi: PathBuf,
    /// The `nats-server` binary.
    pub nats_server: PathBuf,
    /// Offered loads (1.0: arrivals of as much GPU time as the slots have).
    pub loads: Vec<f64>,
    /// Requests per load.
    pub jobs: usize,
    /// Wall seconds per trace second.
    pub time_scale: f64,
    /// GPU node processes (each with `slots_per_node` slots).
    pub nodes: usize,
    /// Slots per node.
    pub slots_per_node: u32,
    /// Arrivals: Poisson, or bursts (twice the mean rate a third of each period).
    pub arrivals: Arrivals,
    /// Tenants the requests are spread over (the trace's four, folded).
    pub tenants: u32,
    /// Queued + running jobs per tenant before `429 quota_exceeded`.
    pub quota: u32,
    /// Seed of the traces.
    pub seed: u64,
    /// Extra wall time for the last jobs to finish after the last arrival.
    pub drain: Duration,
    /// Print progress.
    pub progress: bool,
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The stack did not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The load could not run.
    #[error(transparent)]
    Load(#[from] crate::Error),
    /// A key could not be created.
    #[error("cannot create an API key: {0}")]
    Keys(String),
}

impl ScenarioConfig {
    /// Total slots.
    pub fn slots(&self) -> usize {
        self.nodes * self.slots_per_node as usize
    }

    /// The trace of one load: the standard mix, at `load` of the slots' capacity.
    pub fn trace(&self, load: f64, index: usize) -> Vec<TraceJob> {
        let rate = load * self.slots() as f64 / trace::mean_service_s(Mix::standard());
        trace::generate(
            Mix::standard(),
            self.arrivals,
            rate,
            self.jobs,
            self.seed + index as u64,
        )
    }
}

/// Runs every load in turn, each on a fresh stack; returns the results in order.
pub async fn run(config: &ScenarioConfig) -> Result<Vec<LoadResult>, ScenarioError> {
    let mut results = Vec::new();
    for (index, load) in config.loads.iter().copied().enumerate() {
        let trace = config.trace(load, index);
        if config.progress {
            let last = trace.last().map_or(0.0, |job| job.arrival_s);
            eprintln!(
                "load {load}: {} requests over {:.0} trace minutes ({:.0} s of wall time)",
                trace.len(),
                last / 60.0,
                last * config.time_scale
            );
        }
        results.push(run_one(config, load, &trace).await?);
    }
    Ok(results)
}

async fn run_one(
    config: &ScenarioConfig,
    load: f64,
    trace: &[TraceJob],
) -> Result<LoadResult, ScenarioError> {
    let dir = tempfile::Builder::new()
        .prefix("mochi-load-")
        .tempdir()
        .map_err(ClusterError::Io)?;
    let tick_ms: u32 = 100;
    let mut settings = ClusterSettings::new(
        config.mochi.clone(),
        config.nats_server.clone(),
        dir.path().to_owned(),
    );
    settings.time_scale = config.time_scale;
    settings.nodes = config.nodes;
    settings.slots_per_node = config.slots_per_node;
    settings.gpu_class = "h100-80gb".to_owned();
    settings.lease_ms = 5_000;
    settings.auth = true;
    settings.node_env = vec![
        (
            "MOCHI_GPU_NODE__SIMULATED__TIMING".into(),
            "cost-model".into(),
        ),
        (
            "MOCHI_GPU_NODE__SIMULATED__MAX_RENDER_SIDE".into(),
            "64".into(),
        ),
        (
            "MOCHI_GPU_NODE__MEMORY_BYTES_PER_SLOT".into(),
            (79u64 << 30).to_string(),
        ),
    ];
    // The policy's clock runs in model time, like the simulator's. The cost model does not
    // learn: the simulator does not, and the stack's own overheads (not scaled) would teach
    // it `1 / time_scale` times over.
    settings.coordinator_env = vec![
        (
            "MOCHI_COORDINATOR__TIME_SCALE".into(),
            config.time_scale.to_string(),
        ),
        ("MOCHI_COORDINATOR__LEARN_COSTS".into(), "false".into()),
        ("MOCHI_COORDINATOR__TICK_MS".into(), tick_ms.to_string()),
    ];
    // The follower reads every open job four times a second: that is the instrument, not
    // the load under test, so reads are not limited here (creates keep the default).
    settings.gateway_env = vec![
        (
            "MOCHI_GATEWAY__QUOTA__MAX_ACTIVE_JOBS".into(),
            config.quota.to_string(),
        ),
        (
            "MOCHI_GATEWAY__RATE_LIMIT__READS_PER_MINUTE".into(),
            "1000000".into(),
        ),
    ];
    let cluster = Cluster::start(settings)?;
    let mut keys = Vec::new();
    for tenant in 0..config.tenants.max(1) {
        let out = cluster
            .mochi(&[
                "keys",
                "create",
                "--tenant",
                &format!("tenant-{tenant}"),
                "--role",
                "submitter",
                "--name",
                "loadtest",
            ])
            .map_err(|error| ScenarioError::Keys(error.to_string()))?;
        let key = out.lines().last().unwrap_or_default().trim().to_owned();
        if key.is_empty() {
            return Err(ScenarioError::Keys(
                "`mochi keys create` printed no key".into(),
            ));
        }
        keys.push(key);
    }
    wait_until_ready(&cluster, &keys[0], config.slots()).await?;
    let last_arrival = trace.last().map_or(0.0, |job| job.arrival_s);
    let open_loop = OpenLoopConfig {
        base_url: cluster.gateway_url(),
        api_keys: keys,
        time_scale: config.time_scale,
        max_duration: Duration::from_secs_f64(last_arrival * config.time_scale) + config.drain,
        allow_remote: false,
        poll_interval: Duration::from_millis(250),
        check_artifacts: true,
        progress: config.progress,
    };
    let started = Instant::now();
    let jobs = open_loop::run(&open_loop, trace).await?;
    let wall_s = started.elapsed().as_secs_f64();
    drop(cluster);
    Ok(LoadResult {
        name: format!("load {load}"),
        target: "the stack on loopback (processes)".to_owned(),
        time_scale: config.time_scale,
        slots: u32::try_from(config.slots()).unwrap_or(u32::MAX),
        offered_load: Some(load),
        wall_s,
        jobs,
        simulated_start_s: report::simulate(
            trace,
            config.slots(),
            f64::from(tick_ms) / 1000.0 / config.time_scale,
        ),
    })
}

/// Waits until the gateway is ready and the leading coordinator has seen every slot (its
/// estimate answers with `known_slots`).
async fn wait_until_ready(cluster: &Cluster, key: &str, slots: usize) -> Result<(), ScenarioError> {
    let http = reqwest::Client::new();
    let base = cluster.gateway_url();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let estimate = http
            .post(format!("{base}/v1/videos/estimate"))
            .bearer_auth(key)
            .json(&protocol::JobSpec::new("ready?"))
            .send()
            .await
            .ok();
        let slots_known = match estimate {
            Some(response) if response.status().is_success() => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| {
                    v.pointer("/known_slots")
                        .and_then(serde_json::Value::as_u64)
                })
                .is_some_and(|known| known as usize >= slots),
            _ => false,
        };
        if ready && slots_known {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Startup(format!(
                "the stack was not ready after 60 s (gateway ready: {ready}); logs in {}",
                cluster.dir().display()
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
