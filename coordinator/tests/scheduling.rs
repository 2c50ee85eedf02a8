//! Scheduling against a real nats-server and stand-in GPU nodes: jobs run to the end one per
//! slot at a time, a job whose node dies comes back with its next attempt, and a restarted
//! coordinator places what an earlier one took in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Behaviour, Running, StandIn, create_jobs, eventually, nats, record, submit_jobs};
use protocol::{ErrorCode, JobId, JobState};

const WAIT: Duration = Duration::from_secs(15);

async fn all_in_state(nats: &common::Nats, ids: &[JobId], state: JobState) -> bool {
    for job_id in ids {
        if record(&nats.resources, *job_id).await.map(|r| r.state) != Some(state) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_jobs_succeed_on_a_two_slot_node_one_at_a_time_per_slot() {
    let nats = nats().await;
    let config = coordinator::Config::for_test();
    let node = StandIn::start(&nats, "node-a", 2, Behaviour::Complete, config.lease_ms).await;
    let coordinator = Running::start(&nats, config).await;
    eventually(WAIT, "the node's slots are live", || async {
        coordinator.status().await.live_slots == 2
    })
    .await;
    let ids = submit_jobs(&nats, 5).await;
    eventually(WAIT, "all five jobs succeed", || {
        all_in_state(&nats, &ids, JobState::Succeeded)
    })
    .await;

    assert_eq!(
        node.busy_slot_assigns(),
        0,
        "a slot was sent a job while running another"
    );
    let assigned = node.assigned();
    for job_id in &ids {
        let done = record(&nats.resources, *job_id).await.unwrap();
        assert_eq!(done.failed_attempts, 0);
        assert!(
            assigned.contains(&(*job_id, done.attempt)),
            "the succeeded attempt was assigned here"
        );
        assert!(done.result.is_some());
    }
    eventually(WAIT, "the scheduler holds nothing", || async {
        let status = coordinator.status().await;
        status.queued == 0 && status.on_node == 0
    })
    .await;
    coordinator.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_of_a_dead_node_is_requeued_with_its_next_attempt_after_the_lease() {
    let nats = nats().await;
    let config = coordinator::Config {
        lease_ms: 500,
        ..coordinator::Config::for_test()
    };
    let lease_ms = config.lease_ms;
    let dying = StandIn::start(&nats, "node-dying", 1, Behaviour::Die, lease_ms).await;
    let coordinator = Running::start(&nats, config).await;
    let ids = submit_jobs(&nats, 1).await;
    let job_id = ids[0];
    eventually(WAIT, "the dying node takes the job", || async {
        !dying.assigned().is_empty()
    })
    .await;
    assert_eq!(dying.assigned(), vec![(job_id, 1)]);

    eventually(
        WAIT,
        "the lease expires and the job is queued again",
        || async {
            record(&nats.resources, job_id)
                .await
                .is_some_and(|r| r.failed_attempts == 1 && r.state == JobState::Queued)
        },
    )
    .await;
    let requeued = record(&nats.resources, job_id).await.unwrap();
    assert_eq!(
        requeued.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Unavailable)
    );
    assert!(requeued.lease.is_none());
    assert!(
        requeued
            .history
            .iter()
            .any(|entry| entry.event == "lease_expired" && entry.attempt == 1)
    );

    let healthy = StandIn::start(&nats, "node-healthy", 1, Behaviour::Complete, lease_ms).await;
    eventually(WAIT, "the job succeeds on the healthy node", || {
        all_in_state(&nats, &ids, JobState::Succeeded)
    })
    .await;
    assert_eq!(
        healthy.assigned(),
        vec![(job_id, 2)],
        "the retry is attempt 2"
    );
    let done = record(&nats.resources, job_id).await.unwrap();
    assert_eq!((done.attempt, done.failed_attempts), (2, 1));
    coordinator.stop().await;
    dying.stop().await;
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_coordinator_places_jobs_an_earlier_one_took_in() {
    let nats = nats().await;
    let config = coordinator::Config::for_test();
    let first = Running::start(&nats, config.clone()).await;
    let ids = submit_jobs(&nats, 3).await;
    eventually(WAIT, "all three are queued", || {
        all_in_state(&nats, &ids, JobState::Queued)
    })
    .await;
    eventually(WAIT, "the first coordinator sees them", || async {
        first.status().await.queued == 3
    })
    .await;
    first.stop().await;

    let node = StandIn::start(&nats, "node-b", 2, Behaviour::Complete, config.lease_ms).await;
    let second = Running::start(&nats, config).await;
    eventually(WAIT, "all three succeed", || {
        all_in_state(&nats, &ids, JobState::Succeeded)
    })
    .await;
    let mut placed: Vec<JobId> = node
        .assigned()
        .into_iter()
        .map(|(job_id, _)| job_id)
        .collect();
    placed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        placed, expected,
        "each job placed once, by the second coordinator"
    );
    second.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_out_of_attempts_is_dead_and_copied_to_the_dead_letter_stream() {
    let nats = nats().await;
    let config = coordinator::Config {
        lease_ms: 300,
        max_attempts: 1,
        ..coordinator::Config::for_test()
    };
    // A stand-in dies with its first job: one for each of the two jobs.
    let dying = StandIn::start(&nats, "node-dying", 1, Behaviour::Die, config.lease_ms).await;
    let dying_too = StandIn::start(&nats, "node-dying-2", 1, Behaviour::Die, config.lease_ms).await;
    let coordinator = Running::start(&nats, config).await;
    // One job taken in from MOCHI_SUBMIT, one whose record a gateway wrote with the default
    // budget: the placing coordinator's `max_attempts` holds for both.
    let mut ids = submit_jobs(&nats, 1).await;
    ids.extend(create_jobs(&nats, 1).await);
    eventually(WAIT, "the jobs are dead", || {
        all_in_state(&nats, &ids, JobState::Dead)
    })
    .await;
    for &job_id in &ids {
        let record = record(&nats.resources, job_id).await.unwrap();
        assert_eq!(
            (record.failed_attempts, record.max_attempts),
            (1, 1),
            "{job_id}"
        );
    }
    let subject = protocol::names::dlq_subject(&ids[0].to_string());
    eventually(WAIT, "the dead job is in MOCHI_DLQ", || async {
        nats.resources
            .dlq
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_ok()
    })
    .await;
    let message = nats
        .resources
        .dlq
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let dead: protocol::JobRecord = protocol::codec::from_json(&message.payload).unwrap();
    assert_eq!(
        (dead.id, dead.state, dead.failed_attempts),
        (ids[0], JobState::Dead, 1)
    );
    coordinator.stop().await;
    dying.stop().await;
    dying_too.stop().await;
}
