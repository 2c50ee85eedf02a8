//! `GET /v1/videos` page latency with 1,000 and with 100,000 jobs in `mochi_jobs`, against
//! one real nats-server, and two baselines measured in the same run: listing the bucket's
//! keys (the least any scan of the records must do) and a fresh gateway's index warm-up.
//! Prints medians and the ratios.
//!
//! `cargo run --release -p gateway --example listbench -- [--jobs 100000] [--pages 200]`
#![allow(clippy::unwrap_used, clippy::large_futures)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::VideoList;
use protocol::jetstream::{Resources, connect, ensure_resources};
use protocol::{JobId, JobRecord, JobSpec, JobState, Limits, TenantId};
use tower::ServiceExt;

mod common;

use common::arg;

/// Writes `count` records of `tenant` (every fourth succeeded), created 1 ms apart.
async fn fill(resources: &Resources, tenant: &str, from: usize, count: usize) {
    let spec = JobSpec::new("a red fox running through fresh snow at dawn, cinematic");
    let shape = spec.validate(&Limits::default()).unwrap();
    let tenant = TenantId::new(tenant).unwrap();
    futures::stream::iter(from..from + count)
        .map(|i| {
            let mut record = JobRecord::queued(
                JobId::new(),
                tenant.clone(),
                spec.clone(),
                shape,
                i as u64,
                3,
                1_700_000_000_000 + i as u64,
            );
            if i % 4 == 0 {
                record.state = JobState::Succeeded;
            }
            async move { resources.jobs.create(&record).await.unwrap() }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
}

async fn get(state: &AppState, uri: &str) -> VideoList {
    let response = gateway::app(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Median latency of `pages` list requests (first pages, deep pages, filtered pages).
async fn pages(state: &AppState, pages: usize) -> Duration {
    let mut times = Vec::with_capacity(pages);
    let mut after: Option<JobId> = None;
    for i in 0..pages {
        let uri = match (i % 3, after) {
            (1, Some(after)) => format!("/v1/videos?limit=20&after={after}"),
            (2, _) => "/v1/videos?limit=20&status=completed".to_owned(),
            _ => "/v1/videos?limit=20".to_owned(),
        };
        let started = Instant::now();
        let page = get(state, &uri).await;
        times.push(started.elapsed());
        assert_eq!(page.data.len(), 20, "{uri}");
        after = page.last_id;
    }
    times.sort();
    times[times.len() / 2]
}

/// Waits until `state`'s index lists `count` jobs of `tenant`; the time it took.
async fn warm(state: &AppState, tenant: &str, count: usize) -> Duration {
    let started = Instant::now();
    let tenant = TenantId::new(tenant).unwrap();
    while state.index.len_of(&tenant) < count {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "index never warmed up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let jobs = arg("--jobs", 100_000);
    let page_count = arg("--pages", 200);
    let small = 1_000.min(jobs);
    let server = testkit::NatsServer::start();
    let nats = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "listbench").await.unwrap();
    let resources = ensure_resources(client.clone(), &nats.jetstream)
        .await
        .unwrap();
    let state = AppState::new(Config::for_test(), resources.clone(), client.clone(), None);
    state.start().await.unwrap();

    fill(&resources, "default", 0, small).await;
    warm(&state, "default", small).await;
    let at_small = pages(&state, page_count).await;

    let started = Instant::now();
    fill(&resources, "default", small, jobs - small).await;
    eprintln!(
        "wrote {} records in {:.1} s",
        jobs - small,
        started.elapsed().as_secs_f64()
    );
    warm(&state, "default", jobs).await;
    let at_large = pages(&state, page_count).await;

    let fresh = AppState::new(Config::for_test(), resources.clone(), client.clone(), None);
    fresh.start().await.unwrap();
    let warm_up = warm(&fresh, "default", jobs).await;

    let started = Instant::now();
    let keys = resources.jobs.kv.keys().await.unwrap().count().await;
    let key_scan = started.elapsed();
    assert_eq!(keys, jobs);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "list page (20 jobs), median of {page_count}: {:.2} ms at {small} jobs, {:.2} ms at {jobs} jobs",
        ms(at_small),
        ms(at_large)
    );
    println!(
        "ratio page@{jobs} / page@{small}: {:.2}",
        ms(at_large) / ms(at_small)
    );
    println!(
        "baseline, listing the bucket's {jobs} keys once: {:.0} ms; ratio page / key listing: {:.4}",
        ms(key_scan),
        ms(at_large) / ms(key_scan)
    );
    println!(
        "a fresh gateway's index warm-up at {jobs} jobs: {:.0} ms",
        ms(warm_up)
    );
}
