//! Tenants end to end over a real nats-server, authentication on: a NATS publisher of one
//! tenant cannot squat the job id another tenant's idempotency key maps to (the attack is
//! tried and the HTTP client's job runs), and no log line of any role carries a prompt or a
//! key. Every log line of the process (debug level, all roles) is captured and searched.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use gateway::auth::Role;
use gateway::auth::keys::KeyStore;
use protocol::messages::SubmitRequest;
use protocol::{JobId, JobSpec, JobState, TenantId, names};
use tokio_util::sync::CancellationToken;

/// Every formatted log line of this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MARKER: &str = "zebra-marker-7f3a9c prompt text";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publisher_cannot_squat_another_tenants_job_and_logs_hold_no_prompt_or_key() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let (_server, client, resources) = common::nats("tenants").await;
    let shutdown = CancellationToken::new();
    let mut roles = common::Roles::new();
    common::spawn_coordinator(
        &mut roles,
        coordinator::Config::for_test(),
        resources.clone(),
        client.clone(),
        &shutdown,
    );
    common::spawn_node(
        &mut roles,
        "node-a",
        resources.clone(),
        client.clone(),
        &shutdown,
    );
    let mut gateway_config = gateway::Config::for_test();
    gateway_config.auth.disabled = false;
    let gateway = gateway::Server::bind(gateway_config, resources.clone(), client.clone(), None)
        .await
        .unwrap();
    let base = format!("http://{}", gateway.local_addr());
    let gateway_task = tokio::spawn(gateway.serve(shutdown.clone()));
    let key = KeyStore::new(resources.keys.clone().unwrap())
        .create(
            TenantId::new("victim").unwrap(),
            Role::Submitter,
            "ci",
            None,
        )
        .await
        .unwrap()
        .secret;

    // The attack: a publisher on tenant `evil` names the id that `victim`'s key maps to.
    let idempotency_key = "order-42";
    let victims_id = JobId::derived("victim", idempotency_key);
    let squat = SubmitRequest {
        job_id: Some(victims_id),
        spec: JobSpec::new("squatter"),
        idempotency_key: None,
        remixed_from: None,
        webhook: None,
    };
    resources
        .context
        .send_publish(
            names::submit_subject("evil"),
            PublishMessage::build().payload(serde_json::to_vec(&squat).unwrap().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // Let the intake take it in first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        resources.jobs.get(victims_id).await.unwrap().is_none(),
        "the publisher created a record under another tenant's id"
    );

    // A damaged record in the job store: an error for that job alone, no role stops.
    let damaged = JobId::new();
    resources
        .jobs
        .kv
        .put(damaged.to_string(), b"\x07not a record".to_vec().into())
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "prompt": MARKER, "num_frames": 7, "width": 64, "height": 64, "steps": 2,
    });
    let view = common::submit(&http, &base, &body, Some(&key), Some(idempotency_key)).await;
    assert_eq!(view.id, victims_id);
    let mut ids = vec![view.id];
    for _ in 0..2 {
        ids.push(
            common::submit(&http, &base, &body, Some(&key), None)
                .await
                .id,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        let view = common::wait_terminal(&http, &base, *id, Some(&key), deadline).await;
        assert_eq!(view.state, JobState::Succeeded, "{id}: {:?}", view.error);
        let link = view.links.signed_content.unwrap();
        let video = http.get(format!("{base}{link}")).send().await.unwrap();
        assert_eq!(video.status(), 200);
    }
    let response = http
        .get(format!("{base}/v1/videos/{damaged}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("cannot be read"));
    let (record, _) = resources.jobs.get(victims_id).await.unwrap().unwrap();
    assert_eq!(record.tenant.as_str(), "victim");
    assert_eq!(record.spec.prompt, MARKER);

    shutdown.cancel();
    gateway_task.await.unwrap().unwrap();
    // Both roles ran to the end (none stopped on the damaged record).
    while let Some(joined) = roles.join_next().await {
        joined.unwrap().unwrap();
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().count() > 20,
        "too few log lines captured to mean anything"
    );
    assert!(
        logs.contains("job submitted"),
        "the gateway's lines are missing"
    );
    for line in logs.lines() {
        assert!(
            !line.contains("zebra-marker"),
            "a prompt in the logs: {line}"
        );
        assert!(!line.contains(&key), "an API key in the logs: {line}");
        assert!(
            !line.contains(&key[8..24]),
            "part of an API key in the logs: {line}"
        );
    }
}
