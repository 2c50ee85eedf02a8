//! The stack as separate OS processes on loopback: one nats-server, or a JetStream cluster
//! of several with every stream and bucket replicated on each (production's shape; their
//! stores in the run's directory, every write synced unless asked otherwise), coordinators,
//! simulated GPU nodes and one gateway, as many as the settings say. The fault harness and
//! the load report both run on it. Only processes started here are ever signalled; each
//! child is told to die with the harness (`PR_SET_PDEATHSIG`) and is killed when the
//! cluster is dropped.

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
    /// nats-server `i` (the only one, 0, unless the stack runs a cluster).
    Nats(usize),
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
            Self::Nats(0) => "nats-server".to_owned(),
            Self::Nats(i) => format!("nats-server-{i}"),
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
    /// nats-servers: 1, or a JetStream cluster of this many (3 is production's) on which
    /// every stream and bucket has a replica on each server.
    pub nats_servers: usize,
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
            nats_servers: 1,
        }
    }
}

/// The running stack.
pub struct Cluster {
    settings: ClusterSettings,
    /// Each nats-server's client, cluster (route) and monitoring ports.
    nats_ports: Vec<NatsPorts>,
    gateway_port: u16,
    children: Vec<(Proc, Child)>,
}

/// The ports of one nats-server.
#[derive(Debug, Clone, Copy)]
struct NatsPorts {
    client: u16,
    route: u16,
    monitor: u16,
}

/// `n` distinct free ports: every listener is held until all are bound, so that no two
/// can be the same port released and handed out again.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ClusterError::Io))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr().map_err(ClusterError::Io)?.port()))
        .collect()
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
        settings.nats_servers = settings.nats_servers.max(1);
        let ports = free_ports(3 * settings.nats_servers + 1)?;
        let nats_ports = ports[1..]
            .chunks_exact(3)
            .map(|three| NatsPorts {
                client: three[0],
                route: three[1],
                monitor: three[2],
            })
            .collect();
        let mut cluster = Self {
            nats_ports,
            gateway_port: ports[0],
            settings,
            children: Vec::new(),
        };
        for i in 0..cluster.settings.nats_servers {
            cluster.write_nats_config(i)?;
            cluster.spawn(Proc::Nats(i))?;
        }
        cluster.wait_for_nats(Duration::from_secs(20))?;
        if cluster.settings.nats_servers > 1 {
            cluster.wait_for_jetstream_cluster(Duration::from_secs(60))?;
        }
        cluster.spawn(Proc::Gateway)?;
        for i in 0..cluster.settings.coordinators {
            cluster.spawn(Proc::Coordinator(i))?;
        }
        for i in 0..cluster.settings.nodes {
            cluster.spawn(Proc::Node(i))?;
        }
        Ok(cluster)
    }

    /// The NATS client URL: every server's, comma-separated.
    pub fn nats_url(&self) -> String {
        self.nats_ports
            .iter()
            .map(|ports| format!("nats://127.0.0.1:{}", ports.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Replicas of every stream and bucket: one per nats-server.
    fn replicas(&self) -> u32 {
        u32::try_from(self.settings.nats_servers).unwrap_or(1)
    }

    /// The stack's JetStream resources, through a client named `name` (created where
    /// missing); the error in words.
    pub async fn jetstream(&self, name: &str) -> Result<protocol::jetstream::Resources, String> {
        let mut nats = protocol::config::NatsConfig {
            url: self.nats_url(),
            connect_timeout_s: 30,
            ..protocol::config::NatsConfig::default()
        };
        nats.jetstream.replicas = self.replicas();
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

    /// nats-server `i`'s configuration file.
    fn nats_config_path(&self, i: usize) -> PathBuf {
        match i {
            0 => self.settings.dir.join("nats.conf"),
            i => self.settings.dir.join(format!("nats-{i}.conf")),
        }
    }

    fn write_nats_config(&self, i: usize) -> Result<(), ClusterError> {
        let NatsPorts {
            client: port,
            route: route_port,
            monitor,
        } = self.nats_ports[i];
        let mut config = if self.settings.nats_servers == 1 {
            format!("listen: \"127.0.0.1:{port}\"\nserver_name: mochi-stack\n")
        } else {
            let routes = self
                .nats_ports
                .iter()
                .map(|ports| format!("\"nats-route://127.0.0.1:{}\"", ports.route))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "listen: \"127.0.0.1:{port}\"\nserver_name: mochi-stack-{i}\n\
                 http: \"127.0.0.1:{monitor}\"\n\
                 cluster {{\n  name: mochi-stack\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [{routes}]\n}}\n"
            )
        };
        let store = match i {
            0 => self.settings.dir.join("jetstream"),
            i => self.settings.dir.join(format!("jetstream-{i}")),
        };
        // Without `sync_interval: always`, JetStream syncs every 2 minutes (its default).
        let sync = if self.settings.sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        config.push_str(&format!(
            "jetstream {{\n  store_dir: {store:?}{sync}\n}}\n",
            store = store.display().to_string(),
        ));
        std::fs::write(self.nats_config_path(i), config).map_err(ClusterError::Io)
    }

    /// Waits until every nats-server accepts TCP connections.
    pub fn wait_for_nats(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        for ports in &self.nats_ports {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.client));
            while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return Err(ClusterError::Startup(
                        "nats-server did not come up".to_owned(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Waits until every server of the JetStream cluster reports itself healthy (`/healthz`
    /// answers 200 once JetStream is in contact with an elected meta leader): until then
    /// the roles' replicated streams cannot be made.
    fn wait_for_jetstream_cluster(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        for ports in &self.nats_ports {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.monitor));
            loop {
                let answer = http_get(address, "/healthz");
                if answer
                    .as_deref()
                    .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ClusterError::Startup(format!(
                        "the JetStream cluster did not form (monitoring port {}): {}",
                        ports.monitor,
                        answer.unwrap_or_else(|e| e.to_string())
                    )));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// `mochi`, pointed at the stack's NATS servers with its replica count.
    fn mochi_command(&self) -> Command {
        let mut command = Command::new(&self.settings.mochi);
        command.env("MOCHI_NATS__URL", self.nats_url()).env(
            "MOCHI_NATS__JETSTREAM__REPLICAS",
            self.replicas().to_string(),
        );
        command
    }

    fn command(&self, which: Proc) -> Command {
        let s = &self.settings;
        if let Proc::Nats(i) = which {
            let mut command = Command::new(&s.nats_server);
            command.arg("-c").arg(self.nats_config_path(i));
            return command;
        }
        let mut command = self.mochi_command();
        command
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info,async_nats=warn")
            .env("MOCHI_NATS__CONNECT_TIMEOUT_S", "120")
            .env("MOCHI_NATS__JETSTREAM__NODE_TTL_S", "3");
        match which {
            Proc::Nats(_) => {}
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

    /// CPU time every process of the stack has used so far (user and system), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100) as f64;
        let ticks: u64 = self
            .children
            .iter()
            .filter_map(|(_, child)| {
                std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok()
            })
            .map(|stat| cpu_ticks(&stat))
            .sum();
        ticks as f64 / ticks_per_s
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
        let output = self
            .mochi_command()
            .args(args)
            .current_dir(&self.settings.dir)
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

/// User plus system clock ticks in a `/proc/<pid>/stat` line (fields 14 and 15; the
/// command name before them may hold spaces, so fields count from its closing parenthesis).
fn cpu_ticks(stat: &str) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    rest.split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum()
}

/// A plain HTTP/1.1 GET on loopback: the whole answer, status line first.
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn cpu_ticks_are_user_plus_system_after_the_command_name() {
        let stat = "4242 (nats server) S 1 4242 4242 0 -1 4194560 1 0 0 0 70 30 0 0 20 0 1";
        assert_eq!(cpu_ticks(stat), 100);
        assert_eq!(cpu_ticks("garbage"), 0);
    }
}
