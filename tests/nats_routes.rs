//! Route authentication between NATS servers, with the `cluster` block `mochi nats cluster`
//! prints: three servers sharing the route password form one cluster, and a server with
//! another password, or with none, is refused by all three.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the three servers get to connect their routes.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an intruder gets to try (it dials every second).
const INTRUDER_WAIT: Duration = Duration::from_secs(4);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mochi nats cluster` for routes to `ports`, this server listening on `port`.
fn cluster_block(port: u16, ports: &[u16], password: &str) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mochi"));
    command.args(["nats", "cluster", "--name", "routes-test", "--port"]);
    command.arg(port.to_string());
    for route in ports {
        command.arg("--route").arg(format!("127.0.0.1:{route}"));
    }
    let output = command
        .env("MOCHI_NATS_ROUTE_PASSWORD", password)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let block = String::from_utf8(output.stdout).unwrap();
    assert!(block.contains(&format!(
        "nats-route://route:{password}@127.0.0.1:{}",
        ports[0]
    )));
    block
}

struct Member {
    server: testkit::NatsServer,
    monitor: u16,
}

fn start(name: &str, cluster: &str) -> Member {
    let monitor = free_port();
    let config = format!("server_name: {name}\nhttp: \"127.0.0.1:{monitor}\"\n{cluster}");
    Member {
        server: testkit::NatsServer::start_with_config(&config),
        monitor,
    }
}

/// The names of the servers `member` has a route to, from its monitoring endpoint.
async fn peers(http: &reqwest::Client, member: &Member) -> BTreeSet<String> {
    let url = format!("http://127.0.0.1:{}/routez", member.monitor);
    let Ok(response) = http.get(&url).send().await else {
        return BTreeSet::new();
    };
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["routes"]
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .filter_map(|route| route["remote_name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn only_servers_with_the_route_password_join_the_cluster() {
    let password = "RoutesTestPassword2026x";
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| start(&format!("m{i}"), &cluster_block(*port, &ports, password)))
        .collect();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        let mut formed = true;
        for (i, member) in members.iter().enumerate() {
            let expected: BTreeSet<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("m{j}"))
                .collect();
            formed &= peers(&http, member).await == expected;
        }
        if formed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three servers did not connect their routes within {FORM_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Another password, and no credentials at all: both dial all three, and are refused.
    let wrong_port = free_port();
    let mut wrong_ports = ports.clone();
    wrong_ports.push(wrong_port);
    let wrong = start(
        "wrong-password",
        &cluster_block(wrong_port, &wrong_ports, "SomeOtherPassword2026y"),
    );
    let bare_port = free_port();
    let routes: Vec<String> = ports
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    let bare = start(
        "no-password",
        &format!(
            "cluster {{\n  name: \"routes-test\"\n  port: {bare_port}\n  routes: [{}]\n}}\n",
            routes.join(", ")
        ),
    );
    tokio::time::sleep(INTRUDER_WAIT).await;
    assert!(peers(&http, &wrong).await.is_empty());
    assert!(peers(&http, &bare).await.is_empty());
    for (i, member) in members.iter().enumerate() {
        let found = peers(&http, member).await;
        assert_eq!(found.len(), 2, "m{i} has routes to {found:?}");
        assert!(
            !found.contains("wrong-password") && !found.contains("no-password"),
            "{found:?}"
        );
        assert!(member.server.pid() > 0);
    }
}
