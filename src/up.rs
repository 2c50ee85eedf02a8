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
    /// Turn authentication off (only on a loopback `--listen`): every request acts as an
    /// admin of tenant `local`. Without it, the first start writes an admin key to
    /// `<data-dir>/api-key`.
    #[arg(long)]
    pub no_auth: bool,
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
    // The embedded node's id, fixed now: its NATS user is named after it.
    let node_id = gpu_node::Config::load(file, &roles::env_map())?.resolved_node_id();
    let nodes = [node_id.to_string()];
    let passwords = Passwords::load_or_create(
        &nats_server::run_dir(&args.data_dir)?,
        &NatsUser::all(&nodes)?,
    )?;
    let nats = EmbeddedNats::start(
        &binary,
        &args.data_dir,
        args.nats_port,
        &protocol::nats_users::authorization_block(&nodes)?,
        &passwords.server_env()?,
    )
    .await?;
    tracing::info!(url = nats.url(), data_dir = %args.data_dir.display(), "embedded nats-server up");
    // `mochi keys` on this machine finds the server here.
    let url_file = nats_url_file(&args.data_dir);
    std::fs::write(&url_file, nats.url())
        .with_context(|| format!("cannot write {}", url_file.display()))?;
    let outcome = Box::pin(run_roles(
        &args,
        file,
        nats.url(),
        &passwords,
        &node_id,
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
    node_id: &protocol::NodeId,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let env = roles::env_map();
    let mut nats_config: protocol::config::NatsConfig =
        protocol::config::load_section(file, &env, "nats")?;
    nats_config.url = nats_url.to_owned();
    let mut gateway_config = gateway::Config::load(file, &env)?;
    gateway_config.listen_addr = args.listen.to_string();
    if args.no_auth {
        gateway_config.auth.disabled = true;
    }
    let coordinator_config = coordinator::Config::load(file, &env)?;
    let mut node_config = gpu_node::Config::load(file, &env)?;
    node_config.node_id = Some(node_id.to_string());
    if let Some(slots) = args.slots {
        node_config.slots = slots;
    }
    args.model.apply(&mut node_config, &args.data_dir)?;
    let node_config_summary = node_config.clone();
    let metrics = gateway::install_metrics_recorder()?;
    // The admin creates what is missing; each role then opens it with its own user.
    let admin = passwords.login(&nats_config, &NatsUser::Admin)?;
    let (admin_client, admin_resources) = roles::connect(&admin, "up-admin").await?;
    if !gateway_config.auth.disabled {
        ensure_api_key(&args.data_dir, &admin_resources).await?;
    }
    admin_client.flush().await.ok();
    drop(admin_client);
    let login = |user: NatsUser| passwords.login(&nats_config, &user);
    let (gateway_client, gateway_resources) =
        roles::connect(&login(NatsUser::Gateway)?, "gateway").await?;
    let (coordinator_client, coordinator_resources) =
        roles::connect(&login(NatsUser::Coordinator)?, "coordinator").await?;
    let (node_client, node_resources) =
        roles::connect(&login(NatsUser::GpuNode(node_id.to_string()))?, "gpu-node").await?;
    let server = Box::pin(gateway::Server::bind(
        gateway_config,
        gateway_resources,
        gateway_client.clone(),
        Some(metrics),
    ))
    .await?;
    let url = format!("http://{}", server.local_addr());

    // The coordinator stops after the node: the node's last record writes (a job finished
    // or handed back while draining) go through it.
    let coordinator_stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (resources, client, shutdown) = (
            coordinator_resources,
            coordinator_client.clone(),
            coordinator_stop.clone(),
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
        // Cancelled when the node ends, however it ends.
        let coordinator_stop = coordinator_stop.clone().drop_guard();
        async move {
            let _coordinator_stop = coordinator_stop;
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

/// The file holding the embedded nats-server's client URL while `mochi up` runs.
pub fn nats_url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("nats").join("client-url")
}

/// On first start, makes an admin key for tenant `local` and writes it to
/// `<data-dir>/api-key` (mode 0600), where `mochi generate` finds it.
async fn ensure_api_key(data_dir: &Path, resources: &protocol::jetstream::Resources) -> Result<()> {
    let path = data_dir.join("api-key");
    let store = gateway::auth::keys::KeyStore::new(
        resources
            .keys
            .clone()
            .context("the admin's resources lack mochi_keys")?,
    );
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let usable = store
            .find(existing.trim())
            .await?
            .is_some_and(|record| record.refusal(protocol::now_ms()).is_none());
        if usable {
            eprintln!("API key: {} (admin, tenant local)", path.display());
            return Ok(());
        }
        // The store was reset, or the key revoked or expired: replace it.
        eprintln!(
            "the key in {} is no longer valid; making a new one",
            path.display()
        );
    }
    let tenant = protocol::TenantId::new("local")?;
    let created = store
        .create(tenant, gateway::auth::Role::Admin, "mochi up", None)
        .await
        .context("cannot create the first API key")?;
    crate::nats_users::write_private(&path, &format!("{}\n", created.secret))?;
    eprintln!(
        "created an admin API key for tenant local ({}) in {} (mode 0600); `mochi generate` uses it, curl: -H \"Authorization: Bearer $(cat {})\"",
        created.record.id,
        path.display(),
        path.display()
    );
    Ok(())
}

fn flatten(joined: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    joined.context("a role panicked")?
}
