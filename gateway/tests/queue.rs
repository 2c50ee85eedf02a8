//! `GET /v1/videos/{id}` shows a queued job's position and ETA from the scheduler's
//! `mochi_queue` bucket (its own entry or its page's line, the newer), and nothing once the
//! job left the queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::large_futures)]

mod common;

use gateway::AppState;
use protocol::api::JobView;
use protocol::queue::{QueueInfo, QueuePage, QueueSummary, SUMMARY_KEY};
use protocol::record::{JobEvent, Lease};
use protocol::{JobId, JobRecord, JobSpec, Limits, NodeId, TenantId, names, now_ms};

async fn get(state: &AppState, id: JobId) -> JobView {
    common::get_json(state, format!("/v1/videos/{id}")).await
}

#[tokio::test]
async fn a_queued_job_shows_its_position_and_eta() {
    let common::Gateway {
        server: _server,
        resources,
        state,
    } = common::start().await;
    let spec = JobSpec::new("x");
    let shape = spec.validate(&Limits::default()).unwrap();
    let record = JobRecord::queued(
        JobId::new(),
        TenantId::default_tenant(),
        spec,
        shape,
        1,
        3,
        now_ms(),
    );
    resources.jobs.create(&record).await.unwrap();
    assert_eq!(get(&state, record.id).await.queue, None, "no entry yet");

    // Created with the other resources (by the admin in production).
    let bucket = resources
        .context
        .get_key_value(names::BUCKET_QUEUE)
        .await
        .unwrap();
    let info = QueueInfo {
        position: 2,
        queued: 5,
        lane: "short".to_owned(),
        eta_start_ms: Some(now_ms() + 30_000),
        eta_finish_ms: Some(now_ms() + 90_000),
        updated_at_ms: now_ms(),
    };
    bucket
        .put(
            record.id.to_string(),
            serde_json::to_vec(&info).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(get(&state, record.id).await.queue, Some(info.clone()));
    // The queue's length comes from its summary (the entry's own is as of its writing),
    // never fewer jobs than the position.
    for (counted, shown) in [(9, 9), (1, 2)] {
        let summary = QueueSummary {
            queued: counted,
            by_lane: [counted, 0, 0],
            updated_at_ms: now_ms(),
        };
        bucket
            .put(SUMMARY_KEY, serde_json::to_vec(&summary).unwrap().into())
            .await
            .unwrap();
        let queue = get(&state, record.id).await.queue.unwrap();
        assert_eq!((queue.position, queue.queued), (2, shown));
    }

    // Listed in its page too: the newer of the two counts.
    let page = QueuePage {
        jobs: [(
            record.id,
            QueueInfo {
                position: 7,
                updated_at_ms: now_ms() + 1,
                ..info.clone()
            },
        )]
        .into(),
    };
    let page_key = QueuePage::key_for(record.id, record.created_at_ms);
    bucket
        .put(&page_key, serde_json::to_vec(&page).unwrap().into())
        .await
        .unwrap();
    assert_eq!(get(&state, record.id).await.queue.unwrap().position, 7);
    bucket.purge(record.id.to_string()).await.unwrap();
    assert_eq!(
        get(&state, record.id).await.queue.unwrap().position,
        7,
        "the page alone"
    );

    let lease = Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    resources
        .jobs
        .apply(record.id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap();
    assert_eq!(
        get(&state, record.id).await.queue,
        None,
        "a placed job has no queue position even if a stale entry remains"
    );
}
