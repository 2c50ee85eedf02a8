//! The whole job path in one process over a real nats-server: gateway → job record →
//! coordinator → two GPU nodes (simulated backend) → MP4 in the object store → download.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::{JobRecord, JobState};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 20;
const FRAMES: u32 = 13;
const WIDTH: u32 = 256;
const HEIGHT: u32 = 144;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_jobs_on_two_nodes_all_succeed_and_decode() {
    let (_server, client, resources) = common::nats("e2e").await;
    let shutdown = CancellationToken::new();

    // Watch placements to see that both nodes did work.
    let mut watch = resources.jobs.kv.watch_all().await.unwrap();
    let nodes_seen = tokio::spawn(async move {
        let mut nodes = HashSet::new();
        while let Some(Ok(entry)) = watch.next().await {
            if let Ok(record) = protocol::codec::decode::<JobRecord>(&entry.value)
                && let Some(lease) = record.lease
            {
                nodes.insert(lease.node.to_string());
                if nodes.len() == 2 {
                    break;
                }
            }
        }
        nodes
    });

    let mut roles = common::Roles::new();
    common::spawn_coordinator(
        &mut roles,
        coordinator::Config::for_test(),
        resources.clone(),
        client.clone(),
        &shutdown,
    );
    for name in ["node-a", "node-b"] {
        common::spawn_node(
            &mut roles,
            name,
            resources.clone(),
            client.clone(),
            &shutdown,
        );
    }
    let mut gateway_config = gateway::Config::for_test();
    gateway_config.listen_addr = "127.0.0.1:0".to_owned();
    let gateway = gateway::Server::bind(gateway_config, resources.clone(), client.clone(), None)
        .await
        .unwrap();
    let base = format!("http://{}", gateway.local_addr());
    let gateway_task = tokio::spawn(gateway.serve(shutdown.clone()));

    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for index in 0..JOBS {
        let body = serde_json::json!({
            "prompt": format!("test pattern {index}"),
            "num_frames": FRAMES,
            "width": WIDTH,
            "height": HEIGHT,
            "steps": 4,
        });
        ids.push(common::submit(&http, &base, &body, None, None).await.id);
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finished = Vec::new();
    for id in &ids {
        finished.push(common::wait_terminal(&http, &base, *id, None, deadline).await);
    }
    for view in &finished {
        assert_eq!(
            view.state,
            JobState::Succeeded,
            "job {} failed: {:?}",
            view.id,
            view.error
        );
        let response = http
            .get(format!("{base}/v1/videos/{}/content", view.id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "video/mp4");
        let bytes = response.bytes().await.unwrap();
        let result = view.result.as_ref().unwrap();
        assert_eq!(bytes.len() as u64, result.size_bytes);
        let info = gpu_node::mp4::probe(&bytes).unwrap();
        assert_eq!(info.decoded_frames, FRAMES, "job {}", view.id);
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        assert_eq!(info.fps, 30);
    }
    let nodes = tokio::time::timeout(Duration::from_secs(5), nodes_seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nodes.len(), 2, "jobs ran only on {nodes:?}");

    shutdown.cancel();
    gateway_task.await.unwrap().unwrap();
    while let Some(joined) = roles.join_next().await {
        joined.unwrap().unwrap();
    }
}
