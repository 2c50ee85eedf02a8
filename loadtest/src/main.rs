//! `loadtest`: submits jobs at a fixed rate to a mochi-serve gateway and prints a JSON report.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use protocol::spec::JobSpec;

/// Open-loop load against the mochi-serve HTTP API (loopback targets only by default).
#[derive(Debug, Parser)]
struct Args {
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
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
    };
    match loadtest::run(&config).await {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
