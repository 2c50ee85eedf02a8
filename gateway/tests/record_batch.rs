//! New job records in atomic batches, against a real nats-server: concurrent submissions are
//! stored together, each exactly once, with each request told its own record's fate; a
//! record that exists already (a repeated Idempotency-Key) spoils no other submission in its
//! batch; a stream without atomic batches refuses the first and gets every record alone.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::future::join_all;
use gateway::record_batch::{Batching, RecordCreator};
use protocol::api::JobView;
use protocol::jetstream::{JobStore, Resources};
use protocol::{JobId, JobRecord};

fn record(job_id: JobId, prompt: &str) -> JobRecord {
    testkit::queued_record(job_id, "acme", prompt)
}

/// A creator for `store` with one write in flight, batches of `min` to 64 records.
fn one_write_at_a_time(store: &JobStore, resources: &Resources, min: usize) -> RecordCreator {
    RecordCreator::new(
        store.clone(),
        resources.context.clone(),
        Batching {
            max: 64,
            min,
            in_flight: 1,
            timeout: Duration::from_secs(5),
            linger: Duration::ZERO,
        },
    )
}

async fn messages(store: &JobStore) -> u64 {
    store.kv.stream.get_info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_are_stored_in_batches_each_exactly_once() {
    // One write in flight: whatever arrives meanwhile goes in the next batch.
    let (server, client, resources) = common::nats().await;
    let config = gateway::Config {
        record_writes_in_flight: 1,
        ..gateway::Config::for_test()
    };
    let state = &gateway::AppState::new(config, resources.clone(), client, None);
    let info = resources.jobs.kv.stream.get_info().await.unwrap();
    assert!(
        info.config.allow_atomic_publish,
        "mochi enables atomic batches"
    );
    // 240 different submissions and 16 with one Idempotency-Key, all at once.
    let requests = (0..256).map(|i| {
        let mut request =
            Request::post("/v1/videos").header(header::CONTENT_TYPE, "application/json");
        if i % 16 == 5 {
            request = request.header("Idempotency-Key", "the-same-one");
        }
        let body = format!(r#"{{"prompt":"submission {i}"}}"#);
        let state = state.clone();
        tokio::spawn(
            async move { common::send(&state, request.body(Body::from(body)).unwrap()).await },
        )
    });
    let answers: Vec<_> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut ids = HashSet::new();
    let mut keyed = HashSet::new();
    for (i, (status, _, body)) in answers.iter().enumerate() {
        assert_eq!(
            *status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(body)
        );
        let view: JobView = serde_json::from_slice(body).unwrap();
        if i % 16 == 5 {
            keyed.insert(view.id);
        }
        ids.insert(view.id);
    }
    assert_eq!(keyed.len(), 1, "one Idempotency-Key, one job: {keyed:?}");
    assert_eq!(ids.len(), 241);
    // Each record stored once, and readable as its submission.
    assert_eq!(messages(&resources.jobs).await, 241);
    for id in &ids {
        let (stored, _) = resources.jobs.get(*id).await.unwrap().unwrap();
        assert!(
            stored.spec.prompt.starts_with("submission "),
            "{}",
            stored.spec.prompt
        );
    }
    assert!(
        state.records.batches() > 0 && state.records.batched_records() > 1,
        "{} batches, {} records in them",
        state.records.batches(),
        state.records.batched_records()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_exists_already_spoils_no_other_in_its_batch() {
    let (_server, _client, resources) = common::nats().await;
    let creator = Arc::new(one_write_at_a_time(&resources.jobs, &resources, 2));
    let existing = record(JobId::new(), "made before");
    assert!(resources.jobs.create(&existing).await.unwrap());
    // 200 new records with 8 repeats of the existing one among them.
    let fresh: Vec<JobRecord> = (0..200)
        .map(|i| record(JobId::new(), &format!("new {i}")))
        .collect();
    let mut all: Vec<(bool, JobRecord)> = fresh.iter().map(|r| (true, r.clone())).collect();
    for i in 0..8 {
        all.insert(i * 25 + 3, (false, existing.clone()));
    }
    let results = join_all(all.iter().map(|(_, record)| {
        let creator = Arc::clone(&creator);
        async move { creator.create(record).await }
    }))
    .await;
    for ((new, record), result) in all.iter().zip(results) {
        assert_eq!(result.unwrap(), *new, "job {}", record.id);
    }
    for record in &fresh {
        let (stored, _) = resources.jobs.get(record.id).await.unwrap().unwrap();
        assert_eq!(stored.spec.prompt, record.spec.prompt);
    }
    assert_eq!(messages(&resources.jobs).await, 201);
    assert!(creator.batched_records() > 0, "some batches had no repeat");
}

/// Creates 32 records at once through a creator with one write in flight and batches from
/// `min` records; each must be new. The creator, for its counts.
async fn create_32_at_once(resources: &Resources, min: usize) -> RecordCreator {
    let creator = one_write_at_a_time(&resources.jobs, resources, min);
    let records: Vec<JobRecord> = (0..32)
        .map(|i| record(JobId::new(), &format!("group from {min}: {i}")))
        .collect();
    let results = join_all(records.iter().map(|record| creator.create(record))).await;
    assert!(results.into_iter().all(|result| result.unwrap()));
    creator
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_smaller_than_the_batch_minimum_is_written_record_by_record() {
    let (_server, _client, resources) = common::nats().await;
    // One write at a time: the 32 creates queue behind the first; 31 are fewer than 64.
    let creator = create_32_at_once(&resources, 64).await;
    assert_eq!(messages(&resources.jobs).await, 32);
    assert_eq!(creator.batches(), 0, "no group reached 64 records");
    // The same with a minimum of 2: the queued records go together.
    let creator = create_32_at_once(&resources, 2).await;
    assert_eq!(messages(&resources.jobs).await, 64);
    assert!(creator.batches() > 0, "the queued records went as a batch");
    // A minimum above the maximum leaves no batch to make: every record goes alone.
    let settings = Batching {
        max: 4,
        min: 8,
        in_flight: 1,
        timeout: Duration::from_secs(5),
        linger: Duration::ZERO,
    };
    let never = RecordCreator::new(resources.jobs.clone(), resources.context.clone(), settings);
    assert_eq!(never.max_batch(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_atomic_batches_gets_every_record_alone() {
    let (_server, _client, resources) = common::nats().await;
    let plain = resources
        .context
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "plain_jobs".to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let store = JobStore { kv: plain };
    let creator = one_write_at_a_time(&store, &resources, 2);
    let records: Vec<JobRecord> = (0..20)
        .map(|i| record(JobId::new(), &format!("alone {i}")))
        .collect();
    let results = join_all(records.iter().map(|record| creator.create(record))).await;
    assert!(results.into_iter().all(|result| result.unwrap()));
    assert_eq!(messages(&store).await, 20);
    assert_eq!(creator.batches(), 0);
}

/// Closed-loop submitters (each sends its next record once its last is stored) are stored
/// together: a write waits, within its linger, for those the last write answered, instead
/// of the submitters splitting into groups that take turns. A lone submitter is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_within_its_linger_for_the_submitters_it_answered() {
    let (_server, _client, resources) = common::nats().await;
    let linger = Duration::from_millis(500);
    let creator = Arc::new(RecordCreator::new(
        resources.jobs.clone(),
        resources.context.clone(),
        Batching {
            max: 64,
            min: 2,
            in_flight: 1,
            timeout: Duration::from_secs(5),
            linger,
        },
    ));
    const SUBMITTERS: usize = 16;
    const ROUNDS: usize = 5;
    let started = std::time::Instant::now();
    join_all((0..SUBMITTERS).map(|submitter| {
        let creator = Arc::clone(&creator);
        async move {
            for round in 0..ROUNDS {
                let record = record(JobId::new(), &format!("{submitter}/{round}"));
                assert!(creator.create(&record).await.unwrap());
            }
        }
    }))
    .await;
    let took = started.elapsed();
    assert_eq!(
        messages(&resources.jobs).await,
        (SUBMITTERS * ROUNDS) as u64,
        "every record once"
    );
    // The first write finds one submitter or a few; from then on each write waits for all
    // sixteen: about one batch a round, not two or more.
    assert!(
        creator.batches() <= ROUNDS as u64 + 1,
        "{} batches for {ROUNDS} rounds",
        creator.batches()
    );
    assert!(
        creator.batched_records() >= ((ROUNDS - 1) * SUBMITTERS) as u64,
        "{} of {} records in batches",
        creator.batched_records(),
        SUBMITTERS * ROUNDS
    );
    // Nobody waited out the linger: the submitters came back long before it ended.
    assert!(took < linger * 2, "took {took:?}");
    // A lone submitter: the write after a lone one does not wait.
    creator
        .create(&record(JobId::new(), "alone"))
        .await
        .unwrap();
    let alone = std::time::Instant::now();
    creator
        .create(&record(JobId::new(), "alone again"))
        .await
        .unwrap();
    assert!(alone.elapsed() < linger / 2, "took {:?}", alone.elapsed());
}
