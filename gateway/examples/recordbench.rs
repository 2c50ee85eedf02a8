//! The record-write benchmark: how many new job records per second the gateway's record
//! creator stores on one nats-server with every write synced (production's `sync_interval:
//! always`), for a closed loop of C submitters, without HTTP; the shipped batching against
//! the former one (batches from two records, two writes in flight) in the same run; and
//! what one atomic batch costs at idle, by size, against a single record.
//!
//! ```text
//! cargo run --release -p gateway --example recordbench -- [--seconds S] [--rounds R]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway::record_batch::{Batching, RecordCreator};
use protocol::config::{JetStreamConfig, NatsConfig};
use protocol::jetstream::{Resources, connect, ensure_resources};
use protocol::{JobId, JobRecord, codec};

fn record(n: usize) -> JobRecord {
    testkit::queued_record(JobId::new(), "bench", &format!("bench job {n}"))
}

/// A fresh nats-server syncing every write, and the project's streams and buckets on it.
async fn server() -> (testkit::NatsServer, Resources) {
    let server =
        testkit::NatsServer::start_with_config("jetstream {\n  sync_interval: always\n}\n");
    let nats = NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "recordbench").await.expect("connect");
    let resources = ensure_resources(client, &JetStreamConfig::default())
        .await
        .expect("resources");
    (server, resources)
}

/// `clients` submitters in a closed loop for `seconds`: records stored per second, and the
/// mean number of records in a batch.
async fn closed_loop(clients: usize, batching: Batching, seconds: f64) -> (f64, f64) {
    let (_server, resources) = server().await;
    let creator = Arc::new(RecordCreator::new(
        resources.jobs.clone(),
        resources.context.clone(),
        batching,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (creator, stop) = (Arc::clone(&creator), Arc::clone(&stop));
        tasks.spawn(async move {
            let mut stored = 0;
            while !stop.load(Ordering::Relaxed) {
                let record = record(c * 1_000_000 + stored);
                assert!(creator.create(&record).await.expect("stored"));
                stored += 1;
            }
            stored
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut stored = 0;
    while let Some(count) = tasks.join_next().await {
        stored += count.expect("submitter");
    }
    let per_batch = creator.batched_records() as f64 / creator.batches().max(1) as f64;
    (stored as f64 / started.elapsed().as_secs_f64(), per_batch)
}

/// Milliseconds one write of `size` records takes at idle (median of 21): one record alone,
/// or an atomic batch.
async fn idle_write(resources: &Resources, size: usize) -> f64 {
    let mut took = Vec::new();
    for _ in 0..21 {
        let records: Vec<_> = (0..size)
            .map(|n| {
                let record = record(n);
                (record.id, codec::encode(&record).unwrap())
            })
            .collect();
        let sent = Instant::now();
        if let [(job_id, bytes)] = records.as_slice() {
            let created = resources.jobs.create_encoded(*job_id, bytes.clone());
            assert!(created.await.expect("stored"));
        } else {
            let batch = resources.jobs.create_batch(&resources.context, &records);
            batch.await.expect("stored");
        }
        took.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    took[took.len() / 2]
}

fn args() -> (f64, usize) {
    let (mut seconds, mut rounds) = (4.0, 2);
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        match (flag.as_str(), given.next()) {
            ("--seconds", Some(v)) if v.parse::<f64>().is_ok_and(|s| s > 0.0) => {
                seconds = v.parse().unwrap();
            }
            ("--rounds", Some(v)) if v.parse::<usize>().is_ok_and(|r| r > 0) => {
                rounds = v.parse().unwrap();
            }
            _ => {
                eprintln!("usage: recordbench [--seconds S] [--rounds R]");
                std::process::exit(2);
            }
        }
    }
    (seconds, rounds)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (seconds, rounds) = args();
    let (_server, resources) = server().await;
    let single = idle_write(&resources, 1).await;
    println!("idle, one record alone: {single:.2} ms");
    for size in [2, 8, 32, 128] {
        let ms = idle_write(&resources, size).await;
        println!(
            "idle, an atomic batch of {size:>3}: {ms:.2} ms ({:.1} single writes)",
            ms / single
        );
    }
    drop(_server);
    let shipped = gateway::Config::default();
    let timeout = Duration::from_secs(5);
    let new = Batching {
        max: shipped.record_batch_max,
        min: shipped.record_batch_min,
        in_flight: shipped.record_writes_in_flight,
        timeout,
        linger: Duration::from_micros(shipped.record_batch_linger_us),
    };
    let former = Batching {
        max: 256,
        min: 2,
        in_flight: 2,
        timeout,
        linger: Duration::ZERO,
    };
    println!(
        "closed loops of {seconds} s, rounds alternating; shipped: min {} in flight {}, former: min 2 in flight 2",
        new.min, new.in_flight
    );
    for clients in [32, 128] {
        for round in 1..=rounds {
            let (former_rate, former_size) = Box::pin(closed_loop(clients, former, seconds)).await;
            let (new_rate, new_size) = Box::pin(closed_loop(clients, new, seconds)).await;
            println!(
                "{clients:>3} clients, round {round}: former {former_rate:>6.0} records/s ({former_size:.1} a batch), shipped {new_rate:>6.0}/s ({new_size:.1} a batch): {:.2}x",
                new_rate / former_rate
            );
        }
    }
}
