//! The stack as separate OS processes on loopback: one nats-server (its store in the run's
//! directory, every write synced unless asked otherwise), coordinators, simulated GPU nodes and one gateway, as
//! many as the settings say. The fault harness and the load report both run on it. Only
//! processes started here are ever signalled; each child is told to die with the harness
//! (`PR_SET_PDEATHSIG`) and is killed when the cluster is dropped.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Why the stack could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    /// The stack did not come up.
    #[error("start-up failed: {0}")]
    Startup(String),
}

/// One process of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proc {
    /// The nats-server.
    Nats,
    /// Coordinator replica `i` (instance `coord-i`).
    Coordinator(usize),
    /// GPU node `i` (node id `node-i`).
    Node(usize),
    /// The gateway.
    Gateway,
}

impl Proc {
    /// A short name for logs and the report.
    pub fn name(self) -> String {
        match self {
            Self::Nats => "nats-server".to_owned(),
            Self::Coordinator(i) => format!("coord-{i}"),
            Self::Node(i) => format!("node-{i}"),
            Self::Gateway => "gateway".to_owned(),
        }
    }
}

/// Settings the processes are started with.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The `mochi` binary.
    pub mochi: PathBuf,
    /// The `nats-server` binary.
    pub nats_server: PathBuf,
    /// Where the store, the configuration and the logs go.
    pub dir: PathBuf,
    /// Job lease, ms.
    pub lease_ms: u64,
    /// Coordinator leader lease, ms.
    pub leader_lease_ms: u64,
    /// Simulated backend time scale (sets how long a job runs).
    pub time_scale: f64,
    /// Slots per node.
    pub slots_per_node: u32,
    /// Coordinator replicas.
    pub coordinators: usize,
    /// GPU node processes.
    pub nodes: usize,
    /// The GPU class the nodes report (`cpu`, `h100-80gb`, ...).
    pub gpu_class: String,
    /// Extra environment of every GPU node (e.g. the simulated backend's timing).
    pub node_env: Vec<(String, String)>,
    /// Extra environment of every coordinator.
    pub coordinator_env: Vec<(String, String)>,
    /// Extra environment of the gateway (e.g. quotas).
    pub gateway_env: Vec<(String, String)>,
    /// Whether the gateway checks API keys (off: open on loopback, one tenant).
    pub auth: bool,
    /// Whether JetStream syncs every write to disk before acknowledging it (production's
    /// setting); off, it syncs on its own interval.
    pub sync_always: bool,
}

impl ClusterSettings {
    /// The fault harness's stack: two coordinators, three `cpu` nodes, auth off.
    pub fn new(mochi: PathBuf, nats_server: PathBuf, dir: PathBuf) -> Self {
        Self {
            mochi,
            nats_server,
            dir,
            lease_ms: 3_000,
            leader_lease_ms: 1_500,
            time_scale: 60.0,
            slots_per_node: 2,
            coordinators: 2,
            nodes: 3,
            gpu_class: "cpu".to_owned(),
            node_env: Vec::new(),
            coordinator_env: Vec::new(),
            gateway_env: Vec::new(),
            auth: false,
            sync_always: true,
        }
    }
}

/// The running stack.
pub struct Cluster {
    settings: ClusterSettings,
    nats_port: u16,
    gateway_port: u16,
    children: Vec<(Proc, Child)>,
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ClusterError::Io)?;
    Ok(listener.local_addr().map_err(ClusterError::Io)?.port())
}

impl Cluster {
    /// Starts every process and waits until the gateway answers and NATS accepts connections.
    pub fn start(mut settings: ClusterSettings) -> Result<Self, ClusterError> {
        // The children run in the run's directory: make the binaries' paths absolute.
        for binary in [&mut settings.mochi, &mut settings.nats_server] {
            *binary = std::fs::canonicalize(&*binary)
                .map_err(|error| ClusterError::Startup(format!("{}: {error}", binary.display())))?;
        }
        std::fs::create_dir_all(settings.dir.join("logs")).map_err(ClusterError::Io)?;
        let mut cluster = Self {
            nats_port: free_port()?,
            gateway_port: free_port()?,
            settings,
            children: Vec::new(),
        };
        cluster.write_nats_config()?;
        cluster.spawn(Proc::Nats)?;
        cluster.wait_for_nats(Duration::from_secs(20))?;
        cluster.spawn(Proc::Gateway)?;
        for i in 0..cluster.settings.coordinators {
            cluster.spawn(Proc::Coordinator(i))?;
        }
        for i in 0..cluster.settings.nodes {
            cluster.spawn(Proc::Node(i))?;
        }
        Ok(cluster)
    }

    /// The NATS client URL.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// The stack's JetStream resources, through a client named `name` (created where
    /// missing); the error in words.
    pub async fn jetstream(&self, name: &str) -> Result<protocol::jetstream::Resources, String> {
        let nats = protocol::config::NatsConfig {
            url: self.nats_url(),
            connect_timeout_s: 30,
            ..protocol::config::NatsConfig::default()
        };
        let client = protocol::jetstream::connect(&nats, name)
            .await
            .map_err(|e| e.to_string())?;
        protocol::jetstream::ensure_resources(client, &nats.jetstream)
            .await
            .map_err(|e| e.to_string())
    }

    /// The gateway's base URL.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    fn write_nats_config(&self) -> Result<(), ClusterError> {
        let store = self.settings.dir.join("jetstream");
        // Without `sync_interval: always`, JetStream syncs every 2 minutes (its default).
        let sync = if self.settings.sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\nserver_name: mochi-stack\n\
             jetstream {{\n  store_dir: {store:?}{sync}\n}}\n",
            port = self.nats_port,
            store = store.display().to_string(),
        );
        std::fs::write(self.settings.dir.join("nats.conf"), config).map_err(ClusterError::Io)
    }

    /// Waits until the nats-server accepts TCP connections.
    pub fn wait_for_nats(&self, timeout: Duration) -> Result<(), ClusterError> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.nats_port));
        let deadline = Instant::now() + timeout;
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(ClusterError::Startup(
                    "nats-server did not come up".to_owned(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn command(&self, which: Proc) -> Command {
        let s = &self.settings;
        let mut command;
        if which == Proc::Nats {
            command = Command::new(&s.nats_server);
            command.arg("-c").arg(s.dir.join("nats.conf"));
            return command;
        }
        command = Command::new(&s.mochi);
        command
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info,async_nats=warn")
            .env("MOCHI_NATS__URL", self.nats_url())
            .env("MOCHI_NATS__CONNECT_TIMEOUT_S", "120")
            .env("MOCHI_NATS__JETSTREAM__NODE_TTL_S", "3");
        match which {
            Proc::Nats => {}
            Proc::Gateway => {
                command
                    .arg("gateway")
                    .env(
                        "MOCHI_GATEWAY__LISTEN_ADDR",
                        format!("127.0.0.1:{}", self.gateway_port),
                    )
                    .env("MOCHI_GATEWAY__PUBLISH_TIMEOUT_MS", "2000")
                    // Without auth the loopback gateway runs open (allowed on loopback
                    // only), as one tenant.
                    .env("MOCHI_GATEWAY__AUTH__DISABLED", (!s.auth).to_string())
                    .envs(s.gateway_env.iter().map(|(k, v)| (k, v)));
            }
            Proc::Coordinator(i) => {
                command
                    .args(["coordinator", "--metrics-addr", "127.0.0.1:0"])
                    .env("MOCHI_COORDINATOR__INSTANCE_ID", which.name())
                    .env("MOCHI_COORDINATOR__LEASE_MS", s.lease_ms.to_string())
                    .env(
                        "MOCHI_COORDINATOR__LEADER_LEASE_MS",
                        s.leader_lease_ms.to_string(),
                    )
                    .env("MOCHI_COORDINATOR__TICK_MS", "100")
                    .env("MOCHI_COORDINATOR__NODE_TTL_S", "3")
                    .env("MOCHI_COORDINATOR__ASSIGN_TIMEOUT_MS", "2000")
                    .env("MOCHI_COORDINATOR__BACKOFF_BASE_MS", "200")
                    .env("MOCHI_COORDINATOR__BACKOFF_MAX_MS", "1000")
                    .env("MOCHI_COORDINATOR__MAX_ATTEMPTS", "10")
                    .envs(s.coordinator_env.iter().map(|(k, v)| (k, v)));
                let _ = i;
            }
            Proc::Node(i) => {
                command
                    .args(["gpu-node", "--metrics-addr", "127.0.0.1:0"])
                    .env("MOCHI_DATA_DIR", s.dir.join(format!("node-{i}")))
                    .env("MOCHI_GPU_NODE__NODE_ID", which.name())
                    .env("MOCHI_GPU_NODE__BACKEND", "simulated")
                    .env("MOCHI_GPU_NODE__SLOTS", s.slots_per_node.to_string())
                    .env("MOCHI_GPU_NODE__HEARTBEAT_INTERVAL_MS", "500")
                    .env("MOCHI_GPU_NODE__DRAIN_TIMEOUT_MS", "2000")
                    .env("MOCHI_GPU_NODE__GPU_CLASS", &s.gpu_class)
                    .env(
                        "MOCHI_GPU_NODE__SIMULATED__TIME_SCALE",
                        s.time_scale.to_string(),
                    )
                    .envs(s.node_env.iter().map(|(k, v)| (k, v)));
            }
        }
        command
    }

    /// Starts (or restarts) one process, its output appended to `logs/<name>.log`.
    pub fn spawn(&mut self, which: Proc) -> Result<(), ClusterError> {
        let log_path = self
            .settings
            .dir
            .join("logs")
            .join(format!("{}.log", which.name()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(ClusterError::Io)?;
        let err_log = log.try_clone().map_err(ClusterError::Io)?;
        let mut command = self.command(which);
        command
            .current_dir(&self.settings.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        nats_process::die_with_parent(&mut command);
        let child = command.spawn().map_err(|error| {
            ClusterError::Startup(format!("cannot start {}: {error}", which.name()))
        })?;
        self.children.retain(|(proc, _)| *proc != which);
        self.children.push((which, child));
        Ok(())
    }

    fn pid(&self, which: Proc) -> Option<Pid> {
        self.children
            .iter()
            .find(|(proc, _)| *proc == which)
            .and_then(|(_, child)| i32::try_from(child.id()).ok())
            .map(Pid::from_raw)
    }

    /// Sends `signal` to one of our processes.
    pub fn signal(&self, which: Proc, signal: Signal) {
        if let Some(pid) = self.pid(which)
            && let Err(error) = kill(pid, signal)
        {
            eprintln!("faults: cannot send {signal} to {}: {error}", which.name());
        }
    }

    /// `kill -9` and reap one process.
    pub fn kill9(&mut self, which: Proc) {
        self.signal(which, Signal::SIGKILL);
        if let Some((_, child)) = self.children.iter_mut().find(|(proc, _)| *proc == which) {
            let _ = child.wait();
        }
    }

    /// Processes that exited without being killed here; each is restarted.
    pub fn restart_exited(&mut self) -> Result<Vec<Proc>, ClusterError> {
        let mut exited = Vec::new();
        for (proc, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("faults: {} exited on its own ({status})", proc.name());
                exited.push(*proc);
            }
        }
        for proc in &exited {
            self.spawn(*proc)?;
        }
        Ok(exited)
    }

    /// Kills every process (SIGCONT first, for a stopped one) and waits for each.
    pub fn shutdown(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// What the stack was started with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Runs `mochi <args>` against the stack's NATS (e.g. `keys create`) and returns its
    /// standard output.
    pub fn mochi(&self, args: &[&str]) -> Result<String, ClusterError> {
        let output = Command::new(&self.settings.mochi)
            .args(args)
            .current_dir(&self.settings.dir)
            .env("MOCHI_NATS__URL", self.nats_url())
            .stdin(Stdio::null())
            .output()
            .map_err(ClusterError::Io)?;
        if !output.status.success() {
            return Err(ClusterError::Startup(format!(
                "mochi {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
