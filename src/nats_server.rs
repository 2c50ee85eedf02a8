//! The embedded `nats-server` that `mochi up` runs as a child process.
//!
//! The child gets its own config file (JetStream under the data directory, every write
//! synced to disk, the `authorization` block of [`protocol::nats_users`] with the passwords
//! passed in its environment, so the file holds no secret), binds loopback on a free port
//! and reports it through a ports file.
//! The child dies with its parent ([`nats_process::die_with_parent`]), so even a `kill -9`
//! of `mochi` leaves no server behind; a normal stop sends SIGTERM and waits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long to wait for the server to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for a graceful exit before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running child `nats-server`.
pub struct EmbeddedNats {
    child: Child,
    url: String,
}

/// Finds the `nats-server` binary: the flag/env value, then `.venv/bin` beside the working
/// directory, then `PATH` ([`nats_process::find_binary`]).
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    match nats_process::find_binary(explicit, &[Path::new(".")]) {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!("nats-server not found at {}", path.display()),
        None => bail!(
            "nats-server not found on PATH: {}, or pass --nats-server /path/to/nats-server",
            nats_process::INSTALL_HINT
        ),
    }
}

/// The directory of the server's config, ports file, log and passwords, created if missing.
pub fn run_dir(data_dir: &Path) -> Result<PathBuf> {
    let run_dir = data_dir.join("nats");
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    Ok(run_dir)
}

impl EmbeddedNats {
    /// Starts the server with its store under `data_dir` and waits until it listens.
    /// `authorization` is appended to the config file; `env` (the passwords it refers to) is
    /// passed to the child only.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        port: Option<u16>,
        authorization: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        let run_dir = run_dir(data_dir)?;
        let store_dir = data_dir.join("jetstream");
        let listen_port = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let config = format!(
            "# Written by `mochi up` at every start; edit flags instead.\n\
             listen: \"127.0.0.1:{listen_port}\"\n\
             server_name: mochi-embedded\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
             {authorization}",
            store = store_dir.display().to_string(),
        );
        let config_path = run_dir.join("nats.conf");
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = run_dir.join("nats-server.log");
        let mut command = std::process::Command::new(binary);
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--ports_file_dir")
            .arg(&run_dir)
            .arg("-l")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .envs(env.iter().map(|(key, value)| (key, value)));
        nats_process::die_with_parent(&mut command);
        let mut child = Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("nats-server exited at once")?;
        let ports_file = nats_process::ports_file(&run_dir, pid);
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            if let Some(url) = nats_process::read_client_url(&ports_file) {
                break url;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited during start-up ({status}); see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not come up within {START_TIMEOUT:?}; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self { child, url })
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server: SIGTERM, wait, then SIGKILL if it hangs.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
            let _ = kill(pid, Signal::SIGTERM);
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
            tracing::warn!("nats-server ignored SIGTERM; killing it");
        }
        self.child.kill().await.context("cannot kill nats-server")?;
        Ok(())
    }
}
