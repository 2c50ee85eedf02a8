//! Admission and the cost model against a real nats-server: a job no known slot can hold
//! is refused with `job_too_large` and a message saying what would fit, nothing is sent to a
//! node for it, and the cost model's corrections from finished jobs land in `mochi_cost`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::large_futures)]

mod common;

use std::time::Duration;

use common::{Behaviour, Nats, Running, StandIn, eventually, nats, record, small_job, submit};
use coordinator::cost::Corrections;
use protocol::queue::{QueueInfo, QueuePage, QueueSummary, SUMMARY_KEY};
use protocol::{ErrorCode, JobState, names};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_slot_holds_is_refused_and_finished_jobs_teach_the_cost_model() {
    let nats = Box::pin(nats()).await;
    let config = coordinator::Config::for_test();
    // The stand-in's slots are `cpu` class with 1 GiB: the tiny model's small jobs fit.
    let node = StandIn::start(&nats, "node-a", 1, Behaviour::Complete, config.lease_ms).await;
    let coordinator = Running::start(&nats, config).await;
    eventually(WAIT, "the node's slot is live", || async {
        coordinator.status().await.live_slots == 1
    })
    .await;

    let mut big = small_job("a long 720p clip");
    big.spec.num_frames = Some(61);
    big.spec.width = Some(1280);
    big.spec.height = Some(720);
    let big_id = big.job_id.unwrap();
    submit(&nats.resources, "acme", &big, &big_id.to_string()).await;
    let small = small_job("a short clip");
    let small_id = small.job_id.unwrap();
    submit(&nats.resources, "acme", &small, &small_id.to_string()).await;

    eventually(WAIT, "the big job is refused", || async {
        record(&nats.resources, big_id).await.map(|r| r.state) == Some(JobState::Failed)
    })
    .await;
    let refused = record(&nats.resources, big_id).await.unwrap();
    let error = refused.error.unwrap();
    assert_eq!(error.code, ErrorCode::JobTooLarge);
    assert!(!error.retryable);
    assert!(
        error.message.contains("largest slot (cpu)") && error.message.contains("what fits"),
        "{}",
        error.message
    );
    assert_eq!(refused.attempt, 0, "never placed");
    assert!(node.assigned().iter().all(|(job, _)| *job != big_id));

    eventually(WAIT, "the small job succeeds", || async {
        record(&nats.resources, small_id).await.map(|r| r.state) == Some(JobState::Succeeded)
    })
    .await;
    let bucket = nats
        .resources
        .context
        .get_key_value(names::BUCKET_COST)
        .await
        .unwrap();
    eventually(WAIT, "the corrections are stored", || async {
        let Ok(Some(bytes)) = bucket.get(names::COST_CORRECTIONS_KEY).await else {
            return false;
        };
        let corrections: Corrections = serde_json::from_slice(&bytes).unwrap();
        corrections
            .buckets
            .iter()
            .any(|(key, bucket)| key.starts_with("cpu/") && bucket.count >= 1)
    })
    .await;
    coordinator.stop().await;
    node.stop().await;
}

/// Each job's position as a reader sees it: its own entry or its page's line, the newer.
async fn queue_entries(
    nats: &Nats,
    bucket: &async_nats::jetstream::kv::Store,
    ids: &[protocol::JobId],
) -> Vec<Option<QueueInfo>> {
    let mut entries = Vec::new();
    for job_id in ids {
        let Some(record) = record(&nats.resources, *job_id).await else {
            entries.push(None);
            continue;
        };
        let (own, page) = stored(bucket, &record).await;
        let line = page.and_then(|mut page| page.jobs.remove(job_id));
        let current =
            QueueInfo::current(record.attempt, own.map(|o| (o, ())), line.map(|l| (l, ())));
        entries.push(current.map(|(info, ())| info));
    }
    entries
}

/// The job's own entry and its page, as stored.
async fn stored(
    bucket: &async_nats::jetstream::kv::Store,
    record: &protocol::JobRecord,
) -> (Option<QueueInfo>, Option<QueuePage>) {
    let own = bucket.get(record.id.to_string()).await.ok().flatten();
    let page = bucket
        .get(QueuePage::key_for(record.id, record.created_at_ms))
        .await
        .ok()
        .flatten();
    (
        own.map(|bytes| serde_json::from_slice(&bytes).unwrap()),
        page.map(|bytes| serde_json::from_slice(&bytes).unwrap()),
    )
}

/// Submits three small jobs for tenant `acme`, one after the other; returns their ids.
async fn submit_three(nats: &Nats) -> Vec<protocol::JobId> {
    let mut ids = Vec::new();
    for index in 0..3 {
        let request = small_job(&format!("job {index}"));
        let job_id = request.job_id.unwrap();
        submit(&nats.resources, "acme", &request, &job_id.to_string()).await;
        ids.push(job_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

/// Waits until each of `ids` has its position in `bucket`.
async fn wait_for_positions(
    nats: &Nats,
    bucket: &async_nats::jetstream::kv::Store,
    ids: &[protocol::JobId],
    what: &str,
) {
    eventually(WAIT, what, || async {
        queue_entries(nats, bucket, ids)
            .await
            .iter()
            .all(Option::is_some)
    })
    .await;
}

async fn summary(bucket: &async_nats::jetstream::kv::Store) -> Option<QueueSummary> {
    let bytes = bucket.get(SUMMARY_KEY).await.ok()??;
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_get_positions_that_go_away_once_they_run() {
    let nats = Box::pin(nats()).await;
    let config = coordinator::Config {
        eta_refresh_ms: 50,
        ..coordinator::Config::for_test()
    };
    let coordinator = Running::start(&nats, config.clone()).await;
    let ids = submit_three(&nats).await;
    let bucket = nats
        .resources
        .context
        .get_key_value(names::BUCKET_QUEUE)
        .await
        .unwrap();
    wait_for_positions(&nats, &bucket, &ids, "every queued job has its position").await;
    let entries = queue_entries(&nats, &bucket, &ids).await;
    let positions: Vec<u32> = entries.iter().flatten().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3], "oldest first among equal jobs");
    // The counts go into the summary (a refresh may have run between two submissions, and
    // an entry is not rewritten for the length alone).
    eventually(WAIT, "the counts show three queued jobs", || async {
        summary(&bucket)
            .await
            .is_some_and(|counts| counts.queued == 3)
    })
    .await;
    let counts = summary(&bucket)
        .await
        .expect("the queue's counts are published");
    assert_eq!(counts.by_lane, [3, 0, 0]);
    for entry in entries.iter().flatten() {
        assert_eq!(entry.lane, "short");
        assert!(entry.queued <= 3, "{entry:?}");
        let mut counted = entry.clone();
        counted.count_from(&counts);
        assert_eq!(counted.queued, 3, "what a reader sees");
        assert_eq!(entry.eta_start_ms, None, "no slot is live yet");
    }
    let node = StandIn::start(&nats, "node-a", 1, Behaviour::Complete, config.lease_ms).await;
    eventually(WAIT, "the jobs ran", || async {
        for job_id in &ids {
            let state = record(&nats.resources, *job_id).await.map(|r| r.state);
            if state != Some(JobState::Succeeded) {
                return false;
            }
        }
        true
    })
    .await;
    // Not only unread: removed, their own entries and their pages.
    eventually(WAIT, "their positions are gone", || async {
        for job_id in &ids {
            let record = record(&nats.resources, *job_id).await.unwrap();
            if stored(&bucket, &record).await != (None, None) {
                return false;
            }
        }
        true
    })
    .await;
    eventually(WAIT, "the counts show an empty queue", || async {
        summary(&bucket)
            .await
            .is_some_and(|counts| counts.queued == 0)
    })
    .await;
    coordinator.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_the_bucket_lost_are_published_again() {
    let nats = Box::pin(nats()).await;
    let config = coordinator::Config {
        eta_refresh_ms: 50,
        ..coordinator::Config::for_test()
    };
    let coordinator = Running::start(&nats, config).await;
    let ids = submit_three(&nats).await;
    let context = &nats.resources.context;
    let bucket = context.get_key_value(names::BUCKET_QUEUE).await.unwrap();
    wait_for_positions(&nats, &bucket, &ids, "every queued job has its position").await;
    // The bucket loses what it had acknowledged (as a single server with asynchronous
    // persistence may in a crash): nothing in the queue moved, so only the check that the
    // bucket kept its writes brings the entries back.
    context.delete_key_value(names::BUCKET_QUEUE).await.unwrap();
    let bucket = context
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: names::BUCKET_QUEUE.to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for_positions(&nats, &bucket, &ids, "every position is published again").await;
    let counts = summary(&bucket)
        .await
        .expect("the queue's counts are published again");
    assert_eq!(counts.queued, 3);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_arrivals_costs_a_write_per_page_not_one_per_job() {
    let nats = Box::pin(nats()).await;
    // Waiting before the coordinator starts: its first refreshes find them all at once.
    let ids = common::submit_jobs(&nats, 200).await;
    let config = coordinator::Config {
        eta_refresh_ms: 1_000,
        ..coordinator::Config::for_test()
    };
    let coordinator = Running::start(&nats, config).await;
    let context = &nats.resources.context;
    let bucket = context.get_key_value(names::BUCKET_QUEUE).await.unwrap();
    wait_for_positions(&nats, &bucket, &ids, "every job has its position").await;
    let mut positions: Vec<u32> = queue_entries(&nats, &bucket, &ids)
        .await
        .iter()
        .flatten()
        .map(|entry| entry.position)
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=200).collect::<Vec<u32>>());
    // One entry per job would be 200 writes; pages are at most 16 a second of submissions,
    // each written again only when jobs join it.
    let mut stream = context
        .get_stream(names::kv_stream(names::BUCKET_QUEUE))
        .await
        .unwrap();
    let writes = stream.info().await.unwrap().state.last_sequence;
    assert!(writes < 100, "{writes} writes to mochi_queue for 200 jobs");
    coordinator.stop().await;
}
