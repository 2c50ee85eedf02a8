//! The intake benchmark: how many submissions per second the coordinator's intake turns into
//! durable `queued` records, with the record writes of a batch overlapping (the shipped
//! setting) against one at a time (the former intake), on a real nats-server, in one run.
//!
//! ```text
//! cargo run --release -p coordinator --example intakebench -- [--jobs N] [--concurrency C]
//! ```
//!
//! For each setting, with JetStream writes fsynced before their acknowledgement (production's
//! `sync_interval: always`) and with nats-server's default: a fresh nats-server, N valid submissions published to `MOCHI_SUBMIT`
//! first (pipelined), then the intake actor alone, timed until the stream is empty (a
//! submission is purged only once its record and every one before it are stored), and the
//! record count checked. The overlapped setting is the shipped default
//! (`intake_batch`, `intake_concurrency`) unless `--concurrency` is given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::Config;
use coordinator::intake::{Intake, IntakeArgs};
use protocol::config::{JetStreamConfig, NatsConfig};
use protocol::jetstream::{Resources, connect, ensure_resources};
use protocol::names;
use ractor::Actor;

struct Args {
    jobs: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut args = Args {
        jobs: 20_000,
        concurrency: Config::default().intake_concurrency,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--jobs", Some(v)) => args.jobs = v.max(1),
            ("--concurrency", Some(v)) => args.concurrency = v.max(1),
            _ => {
                eprintln!("usage: intakebench [--jobs N] [--concurrency C]");
                std::process::exit(2);
            }
        }
    }
    args
}

/// Publishes `jobs` submissions and waits for every acknowledgement.
async fn publish(resources: &Resources, jobs: usize) -> Duration {
    let started = Instant::now();
    let subject = names::submit_subject("bench");
    let mut pending = Vec::with_capacity(512);
    for n in 0..jobs {
        let body = format!(
            r#"{{"spec":{{"prompt":"bench job {n}","num_frames":13,"width":256,"height":144,"steps":4}}}}"#
        );
        let ack = resources
            .context
            .publish(subject.clone(), body.into())
            .await
            .expect("publish");
        pending.push(ack);
        if pending.len() == 512 {
            for ack in pending.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in pending {
        ack.await.expect("stored");
    }
    started.elapsed()
}

/// One setting on a fresh server (`sync_always`: every JetStream write fsynced before it is
/// acknowledged, as `k8s/` configures production): jobs taken in per second.
async fn run(jobs: usize, concurrency: usize, sync_always: bool) -> f64 {
    let server = if sync_always {
        testkit::NatsServer::start_with_config("jetstream {\n  sync_interval: always\n}\n")
    } else {
        testkit::NatsServer::start()
    };
    let nats = NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = connect(&nats, "intakebench").await.expect("connect");
    let resources = ensure_resources(
        client.clone(),
        &JetStreamConfig {
            submit_max_msgs: (jobs as i64).max(100_000),
            ..JetStreamConfig::default()
        },
    )
    .await
    .expect("resources");
    let published = publish(&resources, jobs).await;
    let mut submit = resources.submit.clone();
    let waiting = submit.info().await.expect("stream info").state.messages;
    assert_eq!(
        waiting, jobs as u64,
        "every submission is stored before the intake starts"
    );
    let config = Config {
        intake_concurrency: concurrency,
        ..Config::default()
    };
    let started = Instant::now();
    let (intake, handle) = Box::pin(Actor::spawn(
        None,
        Intake,
        IntakeArgs {
            config: Arc::new(config),
            resources: resources.clone(),
        },
    ))
    .await
    .expect("intake");
    loop {
        let left = submit.info().await.expect("stream info").state.messages;
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{left} submissions still waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    intake.stop(None);
    let _ = handle.await;
    let kv = resources.jobs.kv.clone();
    let mut jobs_stream = resources
        .context
        .get_stream(names::kv_stream(names::BUCKET_JOBS))
        .await
        .expect("the records' stream");
    let records = jobs_stream
        .info()
        .await
        .expect("stream info")
        .state
        .messages;
    let _ = kv;
    assert_eq!(records, jobs as u64, "every submission has its record");
    let rate = jobs as f64 / took.as_secs_f64();
    let sync = if sync_always { "always" } else { "default" };
    println!(
        "sync {sync:<7} concurrency {concurrency:>3}: {jobs} submissions published in {:.2} s, taken in in {:.2} s: {rate:.0} jobs/s",
        published.as_secs_f64(),
        took.as_secs_f64()
    );
    rate
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    println!(
        "intake of {} jobs (each a stored record, then an acknowledgement)",
        args.jobs
    );
    for sync_always in [true, false] {
        let sequential = Box::pin(run(args.jobs, 1, sync_always)).await;
        let overlapped = Box::pin(run(args.jobs, args.concurrency, sync_always)).await;
        println!(
            "  overlapped / one at a time: {:.2}x",
            overlapped / sequential
        );
    }
}
