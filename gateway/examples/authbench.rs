//! Submit throughput with authentication on and off, in the same run, against one real
//! nats-server: two gateways in this process (one open on loopback, one checking an API key
//! on every request), driven alternately by the same HTTP client so that machine noise hits
//! both alike. Prints jobs/s per round, the medians and the ratio.
//!
//! `cargo run --release -p gateway --example authbench -- [--jobs 2000] [--concurrency 32] [--rounds 3]`
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::time::Instant;

use futures::StreamExt;
use gateway::Config;
use gateway::auth::Role;
use gateway::auth::keys::KeyStore;
use protocol::TenantId;
use protocol::jetstream::{connect, ensure_resources};
use tokio_util::sync::CancellationToken;

mod common;

use common::arg;

async fn round(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    jobs: usize,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..jobs)
        .map(|i| async move {
            let mut request = http
                .post(format!("{base}/v1/videos"))
                .json(&serde_json::json!({ "prompt": format!("bench {i}") }));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(
        accepted, jobs,
        "not every submission was accepted: {statuses:?}"
    );
    jobs as f64 / elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let jobs = arg("--jobs", 2_000);
    let concurrency = arg("--concurrency", 32);
    let rounds = arg("--rounds", 3);
    let server = testkit::NatsServer::start();
    let nats = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "authbench").await.unwrap();
    let resources = ensure_resources(client.clone(), &nats.jetstream)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut bases = Vec::new();
    for auth_on in [false, true] {
        let mut config = Config::for_test();
        config.auth.disabled = !auth_on;
        config.rate_limit.creates_per_minute = u32::MAX / 2;
        config.quota.max_active_jobs = u32::MAX;
        let gateway = gateway::Server::bind(config, resources.clone(), client.clone(), None)
            .await
            .unwrap();
        bases.push(format!("http://{}", gateway.local_addr()));
        drop(tokio::spawn(gateway.serve(shutdown.clone())));
    }
    let key = KeyStore::new(resources.keys.clone().unwrap())
        .create(
            TenantId::new("bench").unwrap(),
            Role::Submitter,
            "bench",
            None,
        )
        .await
        .unwrap()
        .secret;
    // Let the key watch deliver it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let http = reqwest::Client::new();
    // Warm both paths.
    round(&http, &bases[0], None, 200, concurrency).await;
    round(&http, &bases[1], Some(&key), 200, concurrency).await;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let a = round(&http, &bases[0], None, jobs, concurrency).await;
        let b = round(&http, &bases[1], Some(&key), jobs, concurrency).await;
        println!("round {r}: auth off {a:8.0} jobs/s   auth on {b:8.0} jobs/s");
        off.push(a);
        on.push(b);
    }
    let (off, on) = (median(off), median(on));
    println!(
        "median: auth off {off:.0} jobs/s, auth on {on:.0} jobs/s, on/off = {:.3} ({:+.1} %)",
        on / off,
        (on / off - 1.0) * 100.0
    );
    shutdown.cancel();
}
