//! `mochi keys`: create, list and revoke API keys, straight in the `mochi_keys` bucket (so
//! that the first admin key can be made before any key exists). NATS is found as every
//! role finds it (`--config`, `MOCHI_NATS__*`), else from the embedded server of a
//! `mochi up` that runs on `--data-dir`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gateway::auth::Role;
use gateway::auth::keys::KeyStore;
use protocol::TenantId;
use protocol::config::NatsConfig;

use crate::roles;

/// `mochi keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a key; prints its details, then the key itself as the last line of stdout.
    Create(CreateArgs),
    /// List every key (never the keys themselves).
    List(CommonArgs),
    /// Revoke a key by its id (`key_…`); every gateway refuses it within seconds.
    Revoke(RevokeArgs),
}

/// Where the keys are.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Data directory of a local `mochi up` (its NATS address is read from there when no
    /// NATS URL is configured).
    #[arg(long, env = "MOCHI_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// `mochi keys create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The tenant whose jobs the key acts on.
    #[arg(long)]
    pub tenant: String,
    /// `admin`, `submitter` or `viewer`.
    #[arg(long)]
    pub role: String,
    /// A name for people (who holds it, what for).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Lifetime: `90s`, `30m`, `12h`, `30d` (default: no expiry).
    #[arg(long)]
    pub expires_in: Option<String>,
    /// Where the keys are.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `mochi keys revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The key's id, as `mochi keys list` shows it.
    pub id: String,
    /// Where the keys are.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs a `mochi keys` subcommand.
pub async fn run(command: KeysCommand, file: Option<&Path>) -> Result<()> {
    match command {
        KeysCommand::Create(args) => {
            let tenant = TenantId::new(args.tenant.as_str())?;
            let role: Role = args.role.parse().map_err(anyhow::Error::msg)?;
            let expires_in = args
                .expires_in
                .as_deref()
                .map(gateway::auth::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let store = store(&args.common, file).await?;
            let created = store
                .create(tenant, role, &args.name, expires_in)
                .await
                .context("cannot store the key")?;
            let record = &created.record;
            println!("id:      {}", record.id);
            println!("tenant:  {}", record.tenant);
            println!("role:    {}", record.role);
            if let Some(expiry) = record.expires_at_ms {
                println!("expires: {} (ms since the epoch)", expiry);
            }
            eprintln!("the key is shown once, on the next line; store it now");
            println!("{}", created.secret);
        }
        KeysCommand::List(common) => {
            let keys = store(&common, file).await?.list().await?;
            println!(
                "{:<22} {:<14} {:<16} {:<10} {:<8} NAME",
                "ID", "SHOWN", "TENANT", "ROLE", "STATE"
            );
            let now = protocol::now_ms();
            for key in keys {
                let state = if key.revoked_at_ms.is_some() {
                    "revoked"
                } else if key.expires_at_ms.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<22} {:<14} {:<16} {:<10} {:<8} {}",
                    key.id,
                    key.shown,
                    key.tenant.as_str(),
                    key.role.as_str(),
                    state,
                    key.name
                );
            }
        }
        KeysCommand::Revoke(args) => {
            let record = store(&args.common, file).await?.revoke(&args.id).await?;
            println!(
                "revoked {} (tenant {}, role {})",
                record.id, record.tenant, record.role
            );
        }
    }
    Ok(())
}

async fn store(common: &CommonArgs, file: Option<&Path>) -> Result<KeyStore> {
    let nats = nats_config(common, file)?;
    let (_client, resources) = roles::connect(&nats, "keys").await?;
    let keys = match resources.keys {
        Some(keys) => keys,
        None => protocol::jetstream::open_keys(&resources.context).await?,
    };
    Ok(KeyStore::new(keys))
}

/// The configured NATS; without a configured URL, the embedded server of `mochi up`.
fn nats_config(common: &CommonArgs, file: Option<&Path>) -> Result<NatsConfig> {
    let env = roles::env_map();
    let mut config: NatsConfig = protocol::config::load_section(file, &env, "nats")?;
    let configured = file.is_some() || env.contains_key("MOCHI_NATS__URL");
    if !configured
        && let Ok(url) = std::fs::read_to_string(crate::up::nats_url_file(&common.data_dir))
    {
        config.url = url.trim().to_owned();
        // The embedded server takes the admin user, whose password `mochi up` keeps here.
        let run_dir = common.data_dir.join("nats");
        if crate::nats_users::passwords_path(&run_dir).exists() {
            let passwords = crate::nats_users::Passwords::read(&run_dir)?;
            config = passwords.login(&config, &protocol::nats_users::NatsUser::Admin)?;
        }
    }
    config.connect_timeout_s = config.connect_timeout_s.min(10);
    Ok(config)
}
