//! NATS users on the binary's side: the passwords `mochi up` generates and keeps in its data
//! directory, each role's login, and `mochi nats config|passwords|setup` for production.
//! The users and their permissions are [`protocol::nats_users`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use protocol::config::{NatsConfig, Secret};
use protocol::nats_users::{self, NatsUser};

use crate::roles;

/// Length of a generated password: 32 characters, ~190 bits.
const PASSWORD_LEN: usize = 32;
/// File of the embedded server's passwords, under `DATA_DIR/nats/`.
const PASSWORDS_FILE: &str = "users.json";

/// `mochi nats …`: the production NATS authorization.
#[derive(Debug, clap::Subcommand)]
pub enum NatsCommand {
    /// Print the nats-server `authorization` block (one user per role and one per GPU
    /// node; passwords read from the server's environment, `MOCHI_NATS_PASSWORD_<USER>`).
    Config {
        /// The GPU nodes.
        #[command(flatten)]
        nodes: NodeList,
    },
    /// Print fresh random passwords for every user as `MOCHI_NATS_PASSWORD_<USER>=…` lines
    /// (an env file for the server's and the roles' secrets).
    Passwords {
        /// The GPU nodes.
        #[command(flatten)]
        nodes: NodeList,
    },
    /// Create every stream, bucket and object store that is missing (run once as `admin`:
    /// `MOCHI_NATS__USER=admin MOCHI_NATS__PASSWORD=…`), then exit.
    Setup,
    /// Print the nats-server `cluster` block for a cluster whose routes authenticate
    /// (user `route`; the password from `MOCHI_NATS_ROUTE_PASSWORD`, else a fresh one). It
    /// holds the password: store it as a secret and include it from the server's config.
    Cluster {
        /// `host:port` of every server's cluster port (repeat).
        #[arg(long = "route", required = true)]
        routes: Vec<String>,
        /// The cluster's name.
        #[arg(long, default_value = "mochi")]
        name: String,
        /// The port this server listens on for routes.
        #[arg(long, default_value_t = 6222)]
        port: u16,
    },
}

/// The GPU nodes of a deployment, each with a NATS user of its own (`node-<id>`).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeList {
    /// A GPU node's id, its `MOCHI_GPU_NODE__NODE_ID` (repeat).
    #[arg(long = "gpu-node", value_name = "ID")]
    pub ids: Vec<String>,
    /// Also `gpu-node-0` … `gpu-node-<N-1>` (the ids of `k8s/`'s GPU node Deployments).
    #[arg(long = "gpu-nodes", value_name = "N")]
    pub count: Option<u32>,
}

impl NodeList {
    /// Every node id listed, the numbered ones first; at least one (the ids themselves are
    /// checked where the users are made, `NatsUser::all`).
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = (0..self.count.unwrap_or(0))
            .map(|index| format!("{K8S_NODE_PREFIX}{index}"))
            .collect();
        ids.extend(self.ids.iter().cloned());
        if ids.is_empty() {
            bail!(
                "list the GPU nodes, each gets a NATS user of its own: --gpu-node ID (repeat) or --gpu-nodes N"
            );
        }
        Ok(ids)
    }
}

/// The id prefix of [`NodeList::count`]'s nodes.
const K8S_NODE_PREFIX: &str = "gpu-node-";

/// The environment variable `mochi nats cluster` reads the route password from.
pub const ROUTE_PASSWORD_ENV: &str = "MOCHI_NATS_ROUTE_PASSWORD";

/// Runs a `mochi nats` subcommand.
pub async fn run(command: NatsCommand, file: Option<&Path>) -> Result<()> {
    match command {
        NatsCommand::Config { nodes } => {
            print!("{}", nats_users::authorization_block(&nodes.ids()?)?);
        }
        NatsCommand::Passwords { nodes } => {
            for user in NatsUser::all(&nodes.ids()?)? {
                println!(
                    "{}={}",
                    user.password_env_var(),
                    generate_password()?.expose()
                );
            }
        }
        NatsCommand::Cluster { routes, name, port } => {
            let password = match std::env::var(ROUTE_PASSWORD_ENV) {
                Ok(password) => Secret::new(password),
                Err(_) => generate_password()?,
            };
            let block = nats_users::cluster_block(&name, port, &routes, password.expose())
                .with_context(|| {
                    format!("cannot write the cluster block ({ROUTE_PASSWORD_ENV} or the flags)")
                })?;
            print!("{block}");
        }
        NatsCommand::Setup => {
            let env = roles::env_map();
            let nats: NatsConfig = protocol::config::load_section(file, &env, "nats")?;
            tracing::info!(nats = ?nats, "creating the JetStream resources");
            let client = protocol::jetstream::connect(&nats, "mochi-setup")
                .await
                .with_context(|| format!("cannot reach NATS at {}", nats.url))?;
            protocol::jetstream::ensure_resources(client.clone(), &nats.jetstream).await?;
            client.flush().await.ok();
            eprintln!("JetStream resources are in place");
        }
    }
    Ok(())
}

/// A fresh password: base62 from the OS's random source, redrawn until it starts with a
/// letter (the server would read a leading digit as a number).
pub fn generate_password() -> Result<Secret> {
    loop {
        let password = protocol::random::base62(PASSWORD_LEN)?;
        if password.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Ok(Secret::new(password));
        }
    }
}

/// The passwords of the embedded server's users, kept in `DATA_DIR/nats/users.json`
/// (mode 0600) so that a restart reuses them.
#[derive(Clone)]
pub struct Passwords {
    users: Vec<NatsUser>,
    by_user: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("users", &self.by_user.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// Reads the file under `run_dir` as it is, changing nothing (`mochi keys` beside a
    /// running `mochi up`).
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = passwords_path(run_dir);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            users: Vec::new(),
            by_user: parse(&path, &text)?,
        })
    }

    /// Reads the file under `run_dir`, generating it (or any of `users` it lacks) first. A
    /// node user not in `users` (a node of an earlier run) is dropped.
    pub fn load_or_create(run_dir: &Path, users: &[NatsUser]) -> Result<Self> {
        let path = passwords_path(run_dir);
        let mut by_user: BTreeMap<String, Secret> = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&path, &text)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let names: Vec<String> = users.iter().map(NatsUser::name).collect();
        let before = by_user.len();
        by_user.retain(|name, _| names.contains(name));
        let mut changed = by_user.len() != before;
        for name in names {
            let valid = by_user
                .get(&name)
                .is_some_and(|password| nats_users::is_valid_password(password.expose()));
            if !valid {
                by_user.insert(name, generate_password()?);
                changed = true;
            }
        }
        let passwords = Self {
            users: users.to_vec(),
            by_user,
        };
        if changed {
            passwords.write(&path)?;
            tracing::info!(path = %path.display(), "generated NATS passwords");
        } else {
            restrict_mode(&path)?;
        }
        Ok(passwords)
    }

    /// The password of `user`.
    pub fn get(&self, user: &NatsUser) -> Result<&Secret> {
        self.by_user
            .get(&user.name())
            .with_context(|| format!("no password for NATS user {}", user.name()))
    }

    /// The server's environment: `MOCHI_NATS_PASSWORD_<USER>` for every user.
    pub fn server_env(&self) -> Result<Vec<(String, String)>> {
        self.users
            .iter()
            .map(|user| Ok((user.password_env_var(), self.get(user)?.expose().to_owned())))
            .collect()
    }

    /// `base` logged in as `user`.
    pub fn login(&self, base: &NatsConfig, user: &NatsUser) -> Result<NatsConfig> {
        Ok(NatsConfig {
            user: Some(user.name()),
            password: Some(self.get(user)?.clone()),
            credentials_file: None,
            ..base.clone()
        })
    }

    fn write(&self, path: &Path) -> Result<()> {
        let plain: BTreeMap<&str, &str> = self
            .by_user
            .iter()
            .map(|(user, password)| (user.as_str(), password.expose()))
            .collect();
        write_private(path, &serde_json::to_string_pretty(&plain)?)
    }
}

/// Writes `text` to `path` so that only its owner can read it: into a file beside it made
/// with mode 0600 from the start, synced, then renamed over `path` (a reader never sees a
/// half-written or briefly readable file).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The passwords of a `users.json` read from `path`.
fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, Secret>> {
    Ok(serde_json::from_str::<BTreeMap<String, String>>(text)
        .with_context(|| format!("{} is not a JSON map of passwords", path.display()))?
        .into_iter()
        .map(|(user, password)| (user, Secret::new(password)))
        .collect())
}

/// Where the embedded server's passwords live.
pub fn passwords_path(run_dir: &Path) -> PathBuf {
    run_dir.join(PASSWORDS_FILE)
}

/// Tightens a passwords file that someone made readable to others back to 0600.
fn restrict_mode(path: &Path) -> Result<()> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a file", path.display());
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "NATS passwords file was readable by others; setting mode 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_valid_and_differ() {
        let first = generate_password().expect("password");
        let second = generate_password().expect("password");
        assert!(nats_users::is_valid_password(first.expose()));
        assert_eq!(first.expose().len(), PASSWORD_LEN);
        assert_ne!(first, second);
    }

    #[test]
    fn passwords_are_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = NatsUser::all(&["n1".to_owned()]).expect("users");
        let created = Passwords::load_or_create(dir.path(), &users).expect("create");
        let path = passwords_path(dir.path());
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let reused = Passwords::load_or_create(dir.path(), &users).expect("reuse");
        for user in &users {
            assert_eq!(
                created.get(user).expect("created"),
                reused.get(user).expect("reused")
            );
        }
        let node = NatsUser::GpuNode("n1".to_owned());
        assert_ne!(
            created.get(&NatsUser::Admin).expect("admin"),
            created.get(&node).expect("node")
        );
        let logged = format!("{created:?}");
        assert!(!logged.contains(created.get(&NatsUser::Admin).expect("admin").expose()));
        // The next run's node gets a user; the last run's node loses its own.
        let next = NatsUser::all(&["n2".to_owned()]).expect("users");
        let moved = Passwords::load_or_create(dir.path(), &next).expect("reuse");
        assert!(moved.get(&node).is_err());
        assert!(moved.get(&NatsUser::GpuNode("n2".to_owned())).is_ok());
        assert_eq!(
            created.get(&NatsUser::Admin).expect("admin"),
            moved.get(&NatsUser::Admin).expect("admin")
        );
        assert_eq!(moved.server_env().expect("env").len(), next.len());
    }

    #[test]
    fn a_loose_mode_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = NatsUser::ROLES.to_vec();
        Passwords::load_or_create(dir.path(), &users).expect("create");
        let path = passwords_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        Passwords::load_or_create(dir.path(), &users).expect("reuse");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
