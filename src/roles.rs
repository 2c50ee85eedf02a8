//! The single roles (`mochi gateway|coordinator|gpu-node`), as Kubernetes runs them:
//! configured by the TOML file and `MOCHI_*` environment variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use protocol::config::NatsConfig;
use protocol::jetstream::{self, Resources};
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Flags shared by the single roles.
#[derive(Debug, clap::Args)]
pub struct RoleArgs {
    /// Where to serve Prometheus `/metrics` (coordinator and gpu-node; the gateway serves
    /// it on its own port).
    #[arg(long, env = "MOCHI_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
}

/// The process environment as a map (configuration reads it, tests pass their own).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// Connects to NATS and opens (or creates) every JetStream resource.
pub async fn connect(nats: &NatsConfig, role: &str) -> Result<(async_nats::Client, Resources)> {
    let client = jetstream::connect(nats, &format!("mochi-{role}"))
        .await
        .with_context(|| format!("the {role} needs NATS at {}", nats.url))?;
    let resources = jetstream::ensure_resources(client.clone(), &nats.jetstream).await?;
    Ok((client, resources))
}

fn nats_config(file: Option<&Path>, env: &HashMap<String, String>) -> Result<NatsConfig> {
    Ok(protocol::config::load_section(file, env, "nats")?)
}

/// `mochi gateway`.
pub async fn gateway(_args: RoleArgs, file: Option<&Path>) -> Result<()> {
    let env = env_map();
    let nats = nats_config(file, &env)?;
    let config = gateway::Config::load(file, &env)?;
    tracing::info!(nats_url = %nats.url, config = ?config, "starting gateway");
    let metrics = gateway::install_metrics_recorder()?;
    let (client, resources) = connect(&nats, "gateway").await?;
    let (shutdown, _signals) = telemetry::shutdown_on_signal();
    let server = gateway::Server::bind(config, resources, client.clone(), Some(metrics)).await?;
    tracing::info!(addr = %server.local_addr(), "gateway listening");
    server.serve(shutdown).await?;
    client.flush().await.ok();
    Ok(())
}

/// `mochi coordinator`.
pub async fn coordinator(args: RoleArgs, file: Option<&Path>) -> Result<()> {
    let env = env_map();
    let config = coordinator::Config::load(file, &env)?;
    background_role(
        "coordinator",
        args,
        file,
        &env,
        format!("{config:?}"),
        |resources, client, shutdown| {
            Box::pin(async move {
                Box::pin(coordinator::run(config, resources, client, shutdown))
                    .await
                    .map_err(anyhow::Error::from)
            })
        },
    )
    .await
}

/// `mochi gpu-node`.
pub async fn gpu_node(args: RoleArgs, file: Option<&Path>) -> Result<()> {
    let env = env_map();
    let config = gpu_node::Config::load(file, &env)?;
    background_role(
        "gpu-node",
        args,
        file,
        &env,
        format!("{config:?}"),
        |resources, client, shutdown| {
            Box::pin(async move {
                Box::pin(gpu_node::run(config, resources, client, shutdown))
                    .await
                    .map_err(anyhow::Error::from)
            })
        },
    )
    .await
}

/// A role without an HTTP API of its own: NATS, a `/metrics` endpoint, then `run` until a signal.
async fn background_role(
    role: &str,
    args: RoleArgs,
    file: Option<&Path>,
    env: &HashMap<String, String>,
    config: String,
    run: impl FnOnce(Resources, async_nats::Client, CancellationToken) -> BoxFuture<'static, Result<()>>,
) -> Result<()> {
    let nats = nats_config(file, env)?;
    tracing::info!(nats_url = %nats.url, %config, "starting {role}");
    let metrics = gateway::install_metrics_recorder()?;
    let (client, resources) = connect(&nats, role).await?;
    let (shutdown, _signals) = telemetry::shutdown_on_signal();
    let metrics_server = tokio::spawn(gateway::serve_metrics(
        args.metrics_addr,
        metrics,
        shutdown.clone(),
    ));
    let outcome = run(resources, client.clone(), shutdown.clone()).await;
    shutdown.cancel();
    metrics_server.await.context("metrics server panicked")??;
    client.flush().await.ok();
    outcome
}
