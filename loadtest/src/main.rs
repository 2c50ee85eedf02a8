//! `loadtest run` submits a trace open-loop to a gateway and writes a JSON result and an HTML
//! report; `loadtest trace` prints a trace; `loadtest report` is the documented run on stacks
//! of processes; `loadtest faults` injects faults and checks every job.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coordinator::sim::trace::{self, Arrivals, Mix, TraceJob};
use loadtest::open_loop::{JobTimeline, OpenLoopConfig};
use loadtest::report::LoadResult;
use loadtest::scenario::ScenarioConfig;

/// Load tests of mochi-serve (loopback targets only unless `--allow-remote`).
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Submit a trace's requests at their arrival times (open loop) to a gateway, follow
    /// every job, and write `<out>/<name>.json` and `<out>/<name>.html`.
    Run(RunArgs),
    /// Print a trace (CSV) of the standard mix at an offered load.
    Trace(TraceArgs),
    /// The documented run: each load on a fresh stack of processes with simulated H100
    /// slots, against the simulator on the same trace; writes `<out>/report.{json,html}`.
    Report(ReportArgs),
    /// The service's own capacity with zero GPU time against the FastAPI + Redis peer in
    /// the same run, and the time from submission to a free slot starting the job.
    Capacity(CapacityArgs),
    /// Start nats-server, two coordinators, three simulated GPU nodes and a gateway as
    /// processes on loopback, inject faults while jobs run, and check every accepted job.
    Faults(FaultArgs),
}

#[derive(Debug, clap::Args)]
struct CapacityArgs {
    /// The `mochi` binary (build the release: `cargo build --release -p mochi`).
    #[arg(long, default_value = "target/release/mochi")]
    mochi: PathBuf,
    /// The `nats-server` binary (default: MOCHI_NATS_SERVER, .venv/bin, PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// The `redis-server` binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// A Python with the peer's requirements (scripts/install-deps.sh makes .venv-peer).
    #[arg(long, default_value = ".venv-peer/bin/python")]
    peer_python: PathBuf,
    /// The peer's directory.
    #[arg(long, default_value = "loadtest/peers/fastapi_redis")]
    peer_dir: PathBuf,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    connections: Vec<usize>,
    /// Seconds of each closed-loop phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Rounds, alternating ours and the peer's.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Jobs of the start-latency phase.
    #[arg(long, default_value_t = 300)]
    start_jobs: usize,
    /// Their arrival rate, per second.
    #[arg(long, default_value_t = 20.0)]
    start_rate: f64,
    /// Let JetStream and Redis sync on an interval instead of before every acknowledgement
    /// (neither is durable on a crash then): the software paths alone.
    #[arg(long)]
    no_sync: bool,
    /// Our side on a JetStream cluster of this many nats-servers, every stream and bucket
    /// replicated on each (3: the prod overlay's shape), instead of one server.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_servers: u8,
}

#[derive(Debug, clap::Args)]
struct MixArgs {
    /// Offered load: GPU time arriving per second over the slots' capacity.
    #[arg(long, default_value_t = 0.85, value_parser = positive)]
    load: f64,
    /// Requests in the trace.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    jobs: usize,
    /// H100 slots the load is computed for.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    slots: usize,
    /// `poisson`, or `bursty` (twice the mean rate for a third of each 4-hour period).
    #[arg(long, default_value = "poisson")]
    arrivals: String,
    /// Seed of the trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl MixArgs {
    fn trace(&self) -> Result<Vec<TraceJob>, String> {
        let arrivals = parse_arrivals(&self.arrivals)?;
        let rate = self.load * self.slots as f64 / trace::mean_service_s(Mix::standard());
        Ok(trace::generate(
            Mix::standard(),
            arrivals,
            rate,
            self.jobs,
            self.seed,
        ))
    }
}

/// A number above zero (a load, a time scale): clap's refusal names the flag and the value.
fn positive(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text} is not a number above 0 (for example 0.5)")),
    }
}

/// A count of at least one (jobs, slots).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(value) if value >= 1 => Ok(value),
        _ => Err(format!("{text} is not a whole number of at least 1")),
    }
}

fn parse_arrivals(name: &str) -> Result<Arrivals, String> {
    match name {
        "poisson" => Ok(Arrivals::Poisson),
        "bursty" => Ok(Arrivals::Bursty {
            period_s: 4.0 * 3600.0,
        }),
        other => Err(format!("--arrivals {other}: use poisson or bursty")),
    }
}

#[derive(Debug, clap::Args)]
struct TraceArgs {
    #[command(flatten)]
    mix: MixArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Gateway URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A trace (CSV, as `loadtest trace` writes); without it one is generated from the mix.
    #[arg(long)]
    trace: Option<PathBuf>,
    #[command(flatten)]
    mix: MixArgs,
    /// Wall seconds per trace second (0.02: an hour of trace in 72 s).
    #[arg(long, default_value_t = 0.02, value_parser = positive)]
    time_scale: f64,
    /// API key; repeat it to spread the trace's tenants over several keys.
    #[arg(
        long = "api-key",
        env = "MOCHI_API_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    api_keys: Vec<String>,
    /// Slots serving the target (for utilisation; 0: unknown).
    #[arg(long, default_value_t = 8)]
    target_slots: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_duration_s: u64,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Skip downloading and checking each succeeded job's MP4.
    #[arg(long)]
    no_artifact_check: bool,
    /// Where the JSON and HTML go.
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
    /// The run's name (file names and the report's title).
    #[arg(long, default_value = "run")]
    name: String,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The `mochi` binary (build the release: `cargo build --release --bin mochi`).
    #[arg(long, default_value = "target/release/mochi")]
    mochi: PathBuf,
    /// The `nats-server` binary (default: MOCHI_NATS_SERVER, .venv/bin, PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// Offered loads, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.85,1.1", value_parser = positive)]
    loads: Vec<f64>,
    /// Requests per load.
    #[arg(long, default_value_t = 150, value_parser = at_least_one)]
    jobs: usize,
    /// Wall seconds per trace second.
    #[arg(long, default_value_t = 0.02, value_parser = positive)]
    time_scale: f64,
    /// GPU node processes, four slots each.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// `poisson` or `bursty`.
    #[arg(long, default_value = "poisson")]
    arrivals: String,
    /// Queued + running jobs per tenant (four tenants) before `429 quota_exceeded`.
    #[arg(long, default_value_t = 12)]
    quota: u32,
    /// Seed of the traces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Wall seconds allowed after the last arrival for the last jobs to end.
    #[arg(long, default_value_t = 120)]
    drain_s: u64,
    /// Where `report.json` and `report.html` go.
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct FaultArgs {
    /// The `mochi` binary.
    #[arg(long, default_value = "target/debug/mochi")]
    mochi: PathBuf,
    /// The `nats-server` binary (default: MOCHI_NATS_SERVER, .venv/bin, PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// Fault rounds (one fault each, kinds in turn).
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Jobs submitted per round.
    #[arg(long, default_value_t = 4)]
    jobs_per_round: u32,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop starting rounds after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    max_duration_s: u64,
    /// Keep the run's directory (JetStream store, process logs) even when it passes.
    #[arg(long)]
    keep: bool,
    /// A JetStream cluster of this many nats-servers, every stream and bucket replicated on
    /// each (3: the prod overlay's shape); a NATS fault kills one of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_servers: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: the harnesses bind their children to the thread that starts them.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Capacity(capacity) = args.command {
        // Several threads: the closed loop's clients must not be what limits the rate. The
        // children are still started from this thread (block_on runs the future here).
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run_capacity(capacity)),
            Err(error) => {
                eprintln!("error: cannot start the async runtime: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match args.command {
        Command::Capacity(_) => ExitCode::FAILURE,
        Command::Faults(faults) => runtime.block_on(run_faults(faults)),
        Command::Run(run) => runtime.block_on(run_load(run)),
        Command::Report(report) => runtime.block_on(run_report(report)),
        Command::Trace(trace) => match trace.mix.trace() {
            Ok(jobs) => {
                print!("{}", trace::to_csv(&jobs));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run_faults(args: FaultArgs) -> ExitCode {
    let Some(nats_server) = args.nats_server.or_else(loadtest::faults::find_nats_server) else {
        eprintln!(
            "error: nats-server not found: pass --nats-server or run scripts/install-deps.sh"
        );
        return ExitCode::FAILURE;
    };
    let mut config = loadtest::faults::FaultConfig::short(args.mochi, nats_server);
    config.rounds = args.rounds;
    config.jobs_per_round = args.jobs_per_round;
    config.seed = args.seed;
    config.max_duration = Duration::from_secs(args.max_duration_s);
    config.keep_dir = args.keep;
    config.nats_servers = usize::from(args.nats_servers);
    match Box::pin(loadtest::faults::run(&config)).await {
        Ok(report) => {
            print_json(&report);
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                eprintln!("faults: FAILED; see the violations above");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_load(args: RunArgs) -> ExitCode {
    let trace = match &args.trace {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))
            .and_then(|text| trace::from_csv(&text).map_err(|error| error.to_string())),
        None => args.mix.trace(),
    };
    let trace = match trace {
        Ok(trace) => trace,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = OpenLoopConfig {
        base_url: args.url.clone(),
        api_keys: args.api_keys,
        time_scale: args.time_scale,
        max_duration: Duration::from_secs(args.max_duration_s),
        allow_remote: args.allow_remote,
        poll_interval: Duration::from_millis(250),
        check_artifacts: !args.no_artifact_check,
        progress: true,
    };
    let started = std::time::Instant::now();
    let jobs = match loadtest::open_loop::run(&config, &trace).await {
        Ok(jobs) => jobs,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Written either way (the report shows every refusal), but a run in which nothing was
    // accepted says why and fails.
    let refused = (!jobs.is_empty() && !jobs.iter().any(JobTimeline::accepted))
        .then(|| loadtest::open_loop::refusals(&jobs));
    let result = LoadResult {
        name: args.name.clone(),
        target: args.url,
        time_scale: args.time_scale,
        slots: args.target_slots,
        offered_load: args.trace.is_none().then_some(args.mix.load),
        wall_s: started.elapsed().as_secs_f64(),
        jobs,
        simulated_start_s: Vec::new(),
    };
    let written = write_outputs(
        &args.out,
        &args.name,
        &format!("mochi-serve load test: {}", args.name),
        &[result],
    );
    match refused {
        Some(why) => {
            eprintln!("error: the gateway accepted none of the requests: {why}");
            ExitCode::FAILURE
        }
        None => written,
    }
}

async fn run_report(args: ReportArgs) -> ExitCode {
    let Some(nats_server) = args.nats_server.or_else(loadtest::faults::find_nats_server) else {
        eprintln!(
            "error: nats-server not found: pass --nats-server or run scripts/install-deps.sh"
        );
        return ExitCode::FAILURE;
    };
    let arrivals = match parse_arrivals(&args.arrivals) {
        Ok(arrivals) => arrivals,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = ScenarioConfig {
        mochi: args.mochi,
        nats_server,
        loads: args.loads,
        jobs: args.jobs,
        time_scale: args.time_scale,
        nodes: args.nodes,
        slots_per_node: 4,
        arrivals,
        tenants: 4,
        quota: args.quota,
        seed: args.seed,
        drain: Duration::from_secs(args.drain_s),
        progress: true,
    };
    match Box::pin(loadtest::scenario::run(&config)).await {
        Ok(results) => write_outputs(
            &args.out,
            "report",
            "mochi-serve load-test report",
            &results,
        ),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_capacity(args: CapacityArgs) -> ExitCode {
    let Some(nats_server) = args.nats_server.or_else(loadtest::faults::find_nats_server) else {
        eprintln!(
            "error: nats-server not found: pass --nats-server or run scripts/install-deps.sh"
        );
        return ExitCode::FAILURE;
    };
    let config = loadtest::capacity::CapacityConfig {
        mochi: args.mochi,
        nats_server,
        redis_server: args.redis_server,
        peer_python: args.peer_python,
        peer_dir: args.peer_dir,
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds,
        start_jobs: args.start_jobs,
        start_rate: args.start_rate,
        durable: !args.no_sync,
        nats_servers: usize::from(args.nats_servers),
    };
    match Box::pin(loadtest::capacity::run(&config)).await {
        Ok(report) => {
            println!(
                "nats-servers under ours: {} (every stream and bucket on each); ours at rest: {:.2} cores",
                report.nats_servers, report.resting_cpu
            );
            println!(
                "| target | clients | accepted/s | sustained/s (with drain) | settle s | steady/s (with drain and settle) | ours' CPU meanwhile, cores | p50 ms | p99 ms | errors |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|");
            for phase in &report.phases {
                let figure = |value: Option<f64>, digits: usize| {
                    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
                };
                let settle = figure(phase.settle_s, 1);
                let ours_cpu = figure(phase.ours_cpu, 2);
                println!(
                    "| {} | {} | {:.0} | {:.0} | {settle} | {:.0} | {ours_cpu} | {:.1} | {:.1} | {} |",
                    phase.target,
                    phase.connections,
                    phase.per_s,
                    phase.sustained_per_s,
                    phase.steady_per_s,
                    phase.latency_ms.p50,
                    phase.latency_ms.p99,
                    phase.errors
                );
            }
            for ((connections, ratio), (_, steady)) in
                report.ratios.iter().zip(&report.steady_ratios)
            {
                println!(
                    "ours / peer at {connections} clients (median of rounds): sustained {ratio:.2}x, steady {steady:.2}x"
                );
            }
            let q = &report.submit_to_start_ms;
            println!(
                "submit -> slot start: {} jobs started, {} succeeded; p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                report.started, report.succeeded, q.p50, q.p95, q.p99, q.max
            );
            if let Some(slowest) = &report.slowest_start {
                println!(
                    "slowest to start: job {} of the arrivals (0 first): {} ms to its record, then {} ms to its slot",
                    slowest.index, slowest.to_created_ms, slowest.created_to_start_ms
                );
            }
            print_json(&report);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `<name>.json` (every run's timelines) and `<name>.html`, and prints each run's
/// summary as JSON.
fn write_outputs(out: &Path, name: &str, title: &str, results: &[LoadResult]) -> ExitCode {
    let written = std::fs::create_dir_all(out)
        .and_then(|()| {
            let json = serde_json::to_string(results).map_err(std::io::Error::other)?;
            std::fs::write(out.join(format!("{name}.json")), json)
        })
        .and_then(|()| {
            std::fs::write(
                out.join(format!("{name}.html")),
                loadtest::report::html::render(title, results),
            )
        })
        .and_then(|()| {
            // Each chart on its own too (docs/loadtest/ holds the documented run's).
            for result in results {
                let run: String = result
                    .name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                for (chart, svg) in loadtest::report::html::chart_files(result) {
                    std::fs::write(out.join(format!("{name}-{run}-{chart}.svg")), svg)?;
                }
            }
            Ok(())
        });
    if let Err(error) = written {
        eprintln!("error: cannot write to {}: {error}", out.display());
        return ExitCode::FAILURE;
    }
    for result in results {
        let summary = result.summary();
        print_json(&serde_json::json!({ "name": result.name, "summary": summary }));
    }
    eprintln!(
        "wrote {} and {}",
        out.join(format!("{name}.json")).display(),
        out.join(format!("{name}.html")).display()
    );
    ExitCode::SUCCESS
}

fn print_json(report: &impl serde::Serialize) {
    match serde_json::to_string_pretty(report) {
        Ok(json) => println!("{json}"),
        Err(error) => eprintln!("error: {error}"),
    }
}
