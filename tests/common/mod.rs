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
