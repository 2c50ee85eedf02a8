//! `mochi up`: the whole service on one machine — an embedded `nats-server` child, the
//! coordinator, one GPU node and the gateway in this process.
//!
//! The server refuses anonymous clients: `mochi up` generates one password per NATS user
//! on first start (`DATA_DIR/nats/users.json`, mode 0600, reused later), creates the
//! JetStream resources as `admin`, and connects each role with its own restricted user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use protocol::nats_users::NatsUser;

use crate::nats_server::{self, EmbeddedNats};
use crate::nats_users::Passwords;
use crate::roles;
use crate::telemetry;

/// How long the roles get to finish in-flight work after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `mochi up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where JetStream keeps jobs and videos across restarts.
    #[arg(long, env = "MOCHI_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "MOCHI_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The nats-server binary (default: `.venv/bin/nats-server`, then PATH).
    #[arg(long, env = "MOCHI_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,
    /// Port of the embedded nats-server (default: a free one, loopback only).
    #[arg(long)]
    pub nats_port: Option<u16>,
    /// GPU slots of the embedded node.
    #[arg(long)]
    pub slots: Option<u32>,
    /// What the embedded GPU node runs (default `mochi`, or `gpu_node.backend` of the
    /// configuration).
    #[command(flatten)]
    pub model: roles::ModelArgs,
}

/// Runs `mochi up` until SIGINT/SIGTERM, then stops everything it started.
pub async fn run(args: UpArgs, file: Option<&Path>) -> Result<()> {
    let binary = nats_server::find_binary(args.nats_server.as_deref())?;
    let (shutdown, _signals) = telemetry::shutdown_on_signal();
    let passwords = Passwords::load_or_create(&nats_server::run_dir(&args.data_dir)?)?;
    let nats = EmbeddedNats::start(
        &binary,
        &args.data_dir,
        args.nats_port,
        &protocol::nats_users::authorization_block(),
        &passwords.server_env()?,
    )
    .await?;
    tracing::info!(url = nats.url(), data_dir = %args.data_dir.display(), "embedded nats-server up");
    let outcome = Box::pin(run_roles(
        &args,
        file,
        nats.url(),
        &passwords,
        shutdown.clone(),
    ))
    .await;
    shutdown.cancel();
    let stopped = nats.stop().await;
    outcome?;
    stopped?;
    eprintln!("mochi-serve stopped");
    Ok(())
}

async fn run_roles(
    args: &UpArgs,
    file: Option<&Path>,
    nats_url: &str,
    passwords: &Passwords,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let env = roles::env_map();
    let mut nats_config: protocol::config::NatsConfig =
        protocol::config::load_section(file, &env, "nats")?;
    nats_config.url = nats_url.to_owned();
    let mut gateway_config = gateway::Config::load(file, &env)?;
    gateway_config.listen_addr = args.listen.to_string();
    let coordinator_config = coordinator::Config::load(file, &env)?;
    let mut node_config = gpu_node::Config::load(file, &env)?;
    if let Some(slots) = args.slots {
        node_config.slots = slots;
    }
    args.model.apply(&mut node_config, &args.data_dir)?;
    let node_config_summary = node_config.clone();
    let metrics = gateway::install_metrics_recorder()?;
    // The admin creates what is missing; each role then opens it with its own user.
    let admin = passwords.login(&nats_config, NatsUser::Admin)?;
    let (admin_client, _) = roles::connect(&admin, "up-admin").await?;
    admin_client.flush().await.ok();
    drop(admin_client);
    let login = |user| passwords.login(&nats_config, user);
    let (gateway_client, gateway_resources) =
        roles::connect(&login(NatsUser::Gateway)?, "gateway").await?;
    let (coordinator_client, coordinator_resources) =
        roles::connect(&login(NatsUser::Coordinator)?, "coordinator").await?;
    let (node_client, node_resources) =
        roles::connect(&login(NatsUser::GpuNode)?, "gpu-node").await?;
    let server = Box::pin(gateway::Server::bind(
        gateway_config,
        gateway_resources,
        gateway_client.clone(),
        Some(metrics),
    ))
    .await?;
    let url = format!("http://{}", server.local_addr());

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (resources, client, shutdown) = (
            coordinator_resources,
            coordinator_client.clone(),
            shutdown.clone(),
        );
        async move {
            Box::pin(coordinator::run(
                coordinator_config,
                resources,
                client,
                shutdown,
            ))
            .await
            .context("coordinator")
        }
    });
    tasks.spawn({
        let (resources, client, shutdown) = (node_resources, node_client.clone(), shutdown.clone());
        async move {
            Box::pin(gpu_node::run(node_config, resources, client, shutdown))
                .await
                .context("gpu-node")
        }
    });
    tasks.spawn({
        let shutdown = shutdown.clone();
        async move { Box::pin(server.serve(shutdown)).await.context("gateway") }
    });
    eprintln!("mochi-serve is up: {url}  (API: POST {url}/v1/videos; Ctrl-C to stop)");
    eprintln!("{}", roles::model_banner(&node_config_summary));
    println!("{url}");

    // Run until a signal, or until one role stops on its own (then stop the others).
    let mut first_error = None;
    tokio::select! {
        () = shutdown.cancelled() => {}
        Some(joined) = tasks.join_next() => {
            first_error = flatten(joined).err();
            shutdown.cancel();
        }
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = flatten(joined) {
                first_error.get_or_insert(error);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("roles did not stop within {DRAIN_TIMEOUT:?}; aborting them");
        tasks.abort_all();
    }
    for client in [gateway_client, coordinator_client, node_client] {
        client.flush().await.ok();
    }
    first_error.map_or(Ok(()), Err)
}

fn flatten(joined: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    joined.context("a role panicked")?
}
