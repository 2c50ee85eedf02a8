//! `loadtest`: submits jobs at a fixed rate to a mochi-serve gateway and prints a JSON report;
//! `loadtest faults` runs the stack as separate processes, injects faults and checks every job.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use protocol::spec::JobSpec;

/// Open-loop load against the mochi-serve HTTP API (loopback targets only by default).
#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Gateway URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Jobs per second.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Jobs in all.
    #[arg(long, default_value_t = 20)]
    jobs: u32,
    /// Frames per job.
    #[arg(long, default_value_t = 31)]
    frames: u32,
    /// Denoising steps per job.
    #[arg(long, default_value_t = 8)]
    steps: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_duration_s: u64,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// API key to send (e.g. `$(cat data/api-key)` for `mochi up`).
    #[arg(long, env = "MOCHI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Start nats-server, two coordinators, three simulated GPU nodes and a gateway as
    /// processes on loopback, inject faults while jobs run, and check every accepted job.
    Faults(FaultArgs),
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: the fault harness binds its children to the thread that starts them.
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
    match args.command {
        Some(Command::Faults(faults)) => runtime.block_on(run_faults(faults)),
        None => runtime.block_on(run_load(args)),
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

async fn run_load(args: Args) -> ExitCode {
    let mut spec = JobSpec::new("loadtest");
    spec.num_frames = Some(args.frames);
    spec.steps = Some(args.steps);
    let config = loadtest::LoadConfig {
        base_url: args.url,
        rate_per_s: args.rate,
        jobs: args.jobs,
        spec,
        max_duration: Duration::from_secs(args.max_duration_s),
        allow_remote: args.allow_remote,
        api_key: args.api_key,
    };
    match loadtest::run(&config).await {
        Ok(report) => {
            print_json(&report);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(report: &impl serde::Serialize) {
    match serde_json::to_string_pretty(report) {
        Ok(json) => println!("{json}"),
        Err(error) => eprintln!("error: {error}"),
    }
}
