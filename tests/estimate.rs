//! `POST /v1/videos/estimate` over a real nats-server: the gateway asks the leading
//! coordinator, which answers from its cost model and the slots it has seen; without a
//! coordinator the gateway answers 503 with our error body; nothing is ever created.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::{Duration, Instant};

use coordinator::cost::{CostModel, GpuClass};
use protocol::messages::{NodeHeartbeat, SlotReport};
use protocol::{JobShape, NodeId, codec, now_ms};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;

fn heartbeat(node: &str, slots: &[(&str, u64)]) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: NodeId::new(node).unwrap(),
        backend: "simulated".to_owned(),
        version: "0.1.0".to_owned(),
        started_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        accepting: true,
        slots: slots
            .iter()
            .enumerate()
            .map(|(index, (class, memory))| SlotReport {
                slot: u32::try_from(index).unwrap(),
                gpu_class: (*class).to_owned(),
                memory_total_bytes: *memory,
                memory_free_bytes: *memory,
                job: None,
                healthy: true,
                unhealthy_reason: None,
            })
            .collect(),
    }
}

async fn estimate(http: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}/v1/videos/estimate"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Asks until the coordinator has seen `slots` slots.
async fn estimate_with_slots(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
    slots: u64,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, answer) = estimate(http, base, body).await;
        if status == 200 && answer["known_slots"] == slots {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "no estimate with {slots} slots: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_estimates_a_job_from_its_cost_model_and_fleet() {
    let (_server, client, resources) = common::nats("estimate").await;
    let shutdown = CancellationToken::new();
    let gateway = gateway::Server::bind(
        gateway::Config::for_test(),
        resources.clone(),
        client.clone(),
        None,
    )
    .await
    .unwrap();
    let base = format!("http://{}", gateway.local_addr());
    let gateway_task = tokio::spawn(gateway.serve(shutdown.clone()));
    let http = reqwest::Client::new();
    let native = json!({"prompt": "a red fox in snow", "num_frames": 163});
    let large = json!({"prompt": "a red fox in snow", "resolution": "720p", "duration_s": 10});

    // No coordinator yet: 503 with our body and a sentence.
    let (status, answer) = estimate(&http, &base, &native).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("coordinator")
    );

    let mut roles = common::Roles::new();
    common::spawn_coordinator(
        &mut roles,
        coordinator::Config::for_test(),
        resources.clone(),
        client.clone(),
        &shutdown,
    );

    // Only an L40 known: the long job does not fit, and the answer says what would.
    let l40 = heartbeat("node-l40", &[("l40-48gb", 45 * GIB)]);
    resources
        .nodes
        .put("node-l40", codec::encode(&l40).unwrap().into())
        .await
        .unwrap();
    let refused = estimate_with_slots(&http, &base, &large, 1).await;
    assert_eq!(refused["fits"], false, "{refused}");
    assert_eq!(refused["fitting_slots"], 0);
    assert!(refused["gpu_class"].is_null());
    assert_eq!(refused["lane"], "long");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("largest slot"), "{message}");
    assert_eq!(refused["size"], "1280x720");
    assert_eq!(refused["num_frames"], 301);

    // Two H100s join: the fastest class that holds the job is chosen, and the figures are
    // the cost model's.
    let h100 = heartbeat(
        "node-h100",
        &[("h100-80gb", 79 * GIB), ("h100-80gb", 79 * GIB)],
    );
    resources
        .nodes
        .put("node-h100", codec::encode(&h100).unwrap().into())
        .await
        .unwrap();
    let placed = estimate_with_slots(&http, &base, &large, 3).await;
    assert_eq!(placed["fits"], true, "{placed}");
    assert_eq!(placed["gpu_class"], "h100-80gb");
    assert_eq!(placed["fitting_slots"], 2);
    assert!(placed.get("message").is_none());
    let shape = JobShape::new(301, 30, 1280, 720, 64, true);
    let model = CostModel::default().estimate(&shape, GpuClass::H100);
    let seconds = placed["gpu_seconds"].as_f64().unwrap();
    assert!((seconds - model.gpu_seconds).abs() < 1e-6 * model.gpu_seconds);
    assert_eq!(placed["peak_memory_bytes"], model.peak_bytes);
    let classes: Vec<&str> = placed["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|class| class["gpu_class"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["h100-80gb", "l40-48gb"], "fastest first");

    // The native clip is shorter: a shorter lane than ten seconds of 720p.
    let short = estimate_with_slots(&http, &base, &native, 3).await;
    assert!(short["gpu_seconds"].as_f64().unwrap() < seconds);
    assert_eq!(short["seconds"], "5.43");

    // A bad field is the create route's error, naming the field.
    let (status, answer) = estimate(&http, &base, &json!({"prompt": "a fox", "steps": 500})).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "steps");

    // Nothing was created.
    let list: Value = http
        .get(format!("{base}/v1/videos"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));

    shutdown.cancel();
    gateway_task.await.unwrap().unwrap();
    while let Some(ended) = roles.join_next().await {
        ended.unwrap().unwrap();
    }
}
