//! The single roles (`mochi gateway|coordinator|gpu-node`), as Kubernetes runs them:
//! configured by the TOML file and `MOCHI_*` environment variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use protocol::config::NatsConfig;
use protocol::jetstream::{self, Resources};
use protocol::nats_users::NatsUser;
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

/// Which backend a GPU node runs (the `--backend` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The Mochi-1 pipeline: the official release with `--model-dir`, else the embedded
    /// tiny model (random weights: its videos are noise).
    Mochi,
    /// A test pattern after a simulated inference time (load tests; never production).
    Simulated,
}

/// The model flags of `mochi up` and `mochi gpu-node`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Backend of the GPU node (default: `gpu_node.backend` of the configuration, `mochi`).
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// The official Mochi release in its diffusers layout (`genmo/mochi-1-preview`);
    /// without it the `mochi` backend runs the embedded tiny model, whose videos are noise.
    #[arg(long, env = "MOCHI_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl ModelArgs {
    /// Applies the flags to a node configuration; the embedded tiny model lives under
    /// `data_dir/models/mochi-tiny` unless the configuration names another place.
    pub fn apply(&self, config: &mut gpu_node::Config, data_dir: &Path) -> Result<()> {
        if let Some(backend) = self.backend {
            config.backend = match backend {
                BackendArg::Mochi => gpu_node::config::BackendKind::Mochi,
                BackendArg::Simulated => gpu_node::config::BackendKind::Simulated,
            };
        }
        if let Some(dir) = &self.model_dir {
            if config.backend != gpu_node::config::BackendKind::Mochi {
                anyhow::bail!("--model-dir needs the mochi backend (drop `--backend simulated`)");
            }
            config.mochi.model_dir = Some(dir.clone());
        }
        if config.mochi.embedded_dir == gpu_node::config::MochiConfig::default().embedded_dir {
            config.mochi.embedded_dir = data_dir.join("models").join("mochi-tiny");
        }
        Ok(())
    }
}

/// One line saying what the GPU node will run (and that the tiny model's videos are noise).
pub fn model_banner(config: &gpu_node::Config) -> String {
    match (config.backend, &config.mochi.model_dir) {
        (gpu_node::config::BackendKind::Simulated, _) => {
            "backend: simulated (videos are a test pattern; `--backend mochi` runs the model)"
                .to_owned()
        }
        (gpu_node::config::BackendKind::Mochi, Some(dir)) => {
            format!("model: Mochi from {}", dir.display())
        }
        (gpu_node::config::BackendKind::Mochi, None) => format!(
            "model: the embedded tiny Mochi ({}, in {}): random weights, so its videos are NOISE; `--model-dir DIR` runs the official release",
            gpu_node::model_dir::tiny::TINY_MODEL_NAME,
            config.mochi.embedded_dir.display()
        ),
    }
}

/// Flags of `mochi gpu-node`.
#[derive(Debug, clap::Args)]
pub struct GpuNodeArgs {
    /// Shared role flags.
    #[command(flatten)]
    pub role: RoleArgs,
    /// Backend and model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where the embedded tiny model is created when no `--model-dir` is given.
    #[arg(long, env = "MOCHI_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// The process environment as a map (configuration reads it, tests pass their own).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// Connects to NATS and opens every JetStream resource. An anonymous client (development)
/// also creates what is missing; a named user (production, `mochi up`) only opens them, as
/// its permissions allow: the `admin` user creates them (`mochi nats setup`). The `admin`
/// user itself creates what is missing.
pub async fn connect(nats: &NatsConfig, role: &str) -> Result<(async_nats::Client, Resources)> {
    let client = jetstream::connect(nats, &format!("mochi-{role}"))
        .await
        .with_context(|| format!("the {role} needs NATS at {}", nats.url))?;
    let creates = match nats.user.as_deref() {
        None => nats.credentials_file.is_none(),
        Some(user) => user == NatsUser::Admin.name(),
    };
    let resources = if creates {
        jetstream::ensure_resources(client.clone(), &nats.jetstream).await?
    } else {
        jetstream::open_resources(client.clone()).await?
    };
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
    let server = Box::pin(gateway::Server::bind(
        config,
        resources,
        client.clone(),
        Some(metrics),
    ))
    .await?;
    tracing::info!(addr = %server.local_addr(), "gateway listening");
    Box::pin(server.serve(shutdown)).await?;
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
pub async fn gpu_node(args: GpuNodeArgs, file: Option<&Path>) -> Result<()> {
    let env = env_map();
    let mut config = gpu_node::Config::load(file, &env)?;
    args.model.apply(&mut config, &args.data_dir)?;
    tracing::info!("{}", model_banner(&config));
    background_role(
        "gpu-node",
        args.role,
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

/// A role without an HTTP API of its own: NATS, `/metrics`, `/healthz` and `/readyz`, then
/// `run` until a signal.
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
        client.clone(),
        shutdown.clone(),
    ));
    let outcome = run(resources, client.clone(), shutdown.clone()).await;
    shutdown.cancel();
    metrics_server.await.context("metrics server panicked")??;
    client.flush().await.ok();
    outcome
}
