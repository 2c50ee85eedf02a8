//! Shared set-up of the end-to-end tests: the roles started in this process, and a job
//! polled over HTTP until it ends.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use protocol::api::JobView;
use protocol::jetstream::Resources;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The role tasks; each ends with `Err(<role>: <error>)` if its role failed.
pub type Roles = JoinSet<Result<(), String>>;

/// Starts a nats-server (killed when the returned guard drops), connects to it as `name`
/// and creates the JetStream resources.
pub async fn nats(name: &str) -> (testkit::NatsServer, async_nats::Client, Resources) {
    testkit::jetstream(name).await
}

/// Starts a coordinator with `config` on `roles`.
pub fn spawn_coordinator(
    roles: &mut Roles,
    config: coordinator::Config,
    resources: Resources,
    client: async_nats::Client,
    shutdown: &CancellationToken,
) {
    let shutdown = shutdown.clone();
    roles.spawn(async move {
        coordinator::run(config, resources, client, shutdown)
            .await
            .map_err(|e| format!("coordinator: {e}"))
    });
}

/// Starts a GPU node with the test configuration (simulated backend) as `name` on `roles`.
pub fn spawn_node(
    roles: &mut Roles,
    name: &str,
    resources: Resources,
    client: async_nats::Client,
    shutdown: &CancellationToken,
) {
    let mut config = gpu_node::Config::for_test();
    config.node_id = Some(name.to_owned());
    let shutdown = shutdown.clone();
    roles.spawn(async move {
        gpu_node::run(config, resources, client, shutdown)
            .await
            .map_err(|e| format!("gpu-node: {e}"))
    });
}

/// `POST {base}/v1/videos` with `body` (with `key` and `idempotency_key`, if any); asserts
/// `202` and returns the job.
pub async fn submit(
    http: &reqwest::Client,
    base: &str,
    body: &serde_json::Value,
    key: Option<&str>,
    idempotency_key: Option<&str>,
) -> JobView {
    let mut request = http.post(format!("{base}/v1/videos")).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// Polls `GET {base}/v1/videos/{id}` (with `key`, if any) until the job ends or `deadline`.
pub async fn wait_terminal(
    http: &reqwest::Client,
    base: &str,
    id: protocol::JobId,
    key: Option<&str>,
    deadline: Instant,
) -> JobView {
    loop {
        let mut request = http.get(format!("{base}/v1/videos/{id}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let view: JobView = request.send().await.unwrap().json().await.unwrap();
        if view.state.is_terminal() {
            return view;
        }
        assert!(Instant::now() < deadline, "job {id} still {}", view.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `mochi up --backend simulated` on a free loopback port with its own data directory,
/// stopped with SIGTERM when dropped.
pub struct MochiUp {
    child: std::process::Child,
    /// The API's base URL.
    pub url: String,
    /// The admin key `mochi up` wrote on first start.
    pub key: String,
    /// The directory `data/` (the data directory) is in.
    pub dir: std::path::PathBuf,
    _work: tempfile::TempDir,
}

impl MochiUp {
    /// Starts the stack with the simulated backend and waits until it serves.
    pub fn start() -> Self {
        Self::start_with("simulated")
    }

    /// Starts the stack with `backend` (`simulated`, or `mochi`: the embedded tiny model)
    /// and waits until it serves.
    pub fn start_with(backend: &str) -> Self {
        Self::start_with_env(backend, &[])
    }

    /// Starts the stack with `backend` and the variables `env` added to its environment
    /// (configuration: `MOCHI_<SECTION>__<KEY>`), and waits until it serves.
    pub fn start_with_env(backend: &str, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        use std::io::BufRead;
        let nats_server =
            testkit::nats_server_binary().expect("nats-server: run scripts/install-deps.sh");
        let work = tempfile::tempdir().unwrap();
        let data_dir = work.path().join("data");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mochi"))
            .args(["up", "--backend", backend, "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--nats-server")
            .arg(&nats_server)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut url = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        let url = url.trim().to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "mochi up printed {url:?}"
        );
        let key = std::fs::read_to_string(data_dir.join("api-key"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            url,
            key,
            dir: work.path().to_owned(),
            _work: work,
        }
    }

    /// Stops the stack with SIGTERM; whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().is_ok_and(|status| status.success())
    }
}

impl Drop for MochiUp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// A program in the repository's `.venv` (installed by `scripts/install-deps.sh`).
pub fn venv_program(name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps.sh",
        path.display()
    );
    path
}
