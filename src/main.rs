//! `mochi`: the one binary of mochi-serve. The role is a subcommand; this file only
//! parses arguments and dispatches.

mod generate;
mod keys;
mod model;
mod nats_server;
mod nats_users;
mod roles;
mod telemetry;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The version and the commit built from, as `mochi --version` prints them.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MOCHI_GIT_COMMIT"),
    ")"
);

/// Text-to-video with Genmo Mochi-1: one binary, the role is a subcommand.
#[derive(Debug, Parser)]
#[command(name = "mochi", version = VERSION, about)]
struct Cli {
    /// TOML configuration file (sections: nats, gateway, coordinator, gpu_node).
    #[arg(long, global = true, env = "MOCHI_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `text` for people, `json` for log collectors (default: json for the
    /// single roles, text otherwise).
    #[arg(long, global = true, env = "MOCHI_LOG_FORMAT")]
    log_format: Option<telemetry::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this machine: an embedded nats-server, the coordinator, one GPU
    /// node and the gateway.
    Up(up::UpArgs),
    /// Run the HTTP gateway alone.
    Gateway(roles::RoleArgs),
    /// Run the coordinator alone.
    Coordinator(roles::RoleArgs),
    /// Run one GPU node alone.
    GpuNode(roles::GpuNodeArgs),
    /// Submit a prompt, follow its progress and download the MP4.
    Generate(generate::GenerateArgs),
    /// API keys: create, list, revoke.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Model directories: check one, or write the embedded tiny model.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// NATS users: the server's authorization block, passwords, creating the resources.
    #[command(subcommand)]
    Nats(nats_users::NatsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_format = match cli.command {
        Command::Gateway(_) | Command::Coordinator(_) | Command::GpuNode(_) => {
            telemetry::LogFormat::Json
        }
        Command::Up(_)
        | Command::Generate(_)
        | Command::Model(_)
        | Command::Keys(_)
        | Command::Nats(_) => telemetry::LogFormat::Text,
    };
    telemetry::init_logging(cli.log_format.unwrap_or(default_format));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = cli.config.as_deref();
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => Box::pin(up::run(args, config)).await,
            Command::Gateway(args) => Box::pin(roles::gateway(args, config)).await,
            Command::Coordinator(args) => Box::pin(roles::coordinator(args, config)).await,
            Command::GpuNode(args) => Box::pin(roles::gpu_node(args, config)).await,
            Command::Generate(args) => generate::run(args).await.map(|path| {
                println!("{}", path.display());
            }),
            Command::Model(command) => model::run(command),
            Command::Keys(command) => keys::run(command, config).await,
            Command::Nats(command) => nats_users::run(command, config).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
