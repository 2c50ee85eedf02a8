//! Coordinator failover against a real nats-server: two replicas, one leads; when the lease
//! is taken from the leader it stops at once; when the leader goes silent or stops, the
//! other takes over, rebuilds its state from the buckets and the queued jobs complete.
//! Also the deadlines the leader enforces: time-to-start and the longest run time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::large_futures)]

mod common;

use std::time::Duration;

use common::{Behaviour, StandIn, eventually, nats, record, submit_jobs};
use protocol::lease::{LeaseRecord, Role};
use protocol::{JobId, JobState, codec, names};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Replica {
    role: watch::Receiver<Role>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<coordinator::Result<()>>,
}

impl Replica {
    fn start(nats: &common::Nats, instance: &str) -> Self {
        let config = coordinator::Config {
            instance_id: Some(instance.to_owned()),
            ..coordinator::Config::for_test()
        };
        Self::start_with(nats, config)
    }

    fn start_with(nats: &common::Nats, config: coordinator::Config) -> Self {
        let (role_tx, role) = watch::channel(Role::Standby);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(coordinator::run_replica(
            config,
            nats.resources.clone(),
            nats.client.clone(),
            role_tx,
            shutdown.clone(),
        ));
        Self {
            role,
            shutdown,
            task,
        }
    }

    fn leads(&self) -> bool {
        self.role.borrow().is_leader()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn all_succeeded_first_time(nats: &common::Nats, ids: &[JobId]) -> bool {
    for job_id in ids {
        match record(&nats.resources, *job_id).await {
            Some(r) if r.state == JobState::Succeeded => {}
            _ => return false,
        }
    }
    true
}

async fn holder(nats: &common::Nats) -> Option<(String, u64)> {
    let entry = nats
        .resources
        .leader
        .entry(names::KEY_LEADER)
        .await
        .unwrap()?;
    let record: LeaseRecord = codec::from_json(&entry.value).ok()?;
    Some((record.holder, entry.revision))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_silent_or_stopped_leader_and_the_queue_completes() {
    let nats = nats().await;
    let lease_ms = coordinator::Config::for_test().lease_ms;
    let node = StandIn::start(&nats, "node-a", 2, Behaviour::Complete, lease_ms).await;
    let a = Replica::start(&nats, "coord-a");
    eventually(WAIT, "replica a leads", || async { a.leads() }).await;
    let b = Replica::start(&nats, "coord-b");
    let first = submit_jobs(&nats, 4).await;
    eventually(WAIT, "the first jobs succeed under a", || {
        all_succeeded_first_time(&nats, &first)
    })
    .await;
    assert!(!b.leads(), "two leaders at once");
    assert_eq!(holder(&nats).await.unwrap().0, "coord-a");

    // The lease is taken over by a holder that never renews, as if a stalled leader had
    // lost it and then crashed: a must step down, and one replica must take over after it.
    let (_, revision) = holder(&nats).await.unwrap();
    let ghost = LeaseRecord {
        holder: "ghost".to_owned(),
        lease_ms: 1_000,
        renewed_at_ms: 0,
    };
    nats.resources
        .leader
        .update(
            names::KEY_LEADER,
            codec::to_json(&ghost).unwrap().into(),
            revision,
        )
        .await
        .unwrap();
    eventually(WAIT, "the deposed leader steps down", || async {
        !a.leads()
    })
    .await;
    let second = submit_jobs(&nats, 4).await;
    eventually(
        WAIT,
        "a replica takes over from the silent holder",
        || async { a.leads() || b.leads() },
    )
    .await;
    assert!(!(a.leads() && b.leads()), "two leaders at once");
    eventually(WAIT, "jobs queued while nobody led succeed", || {
        all_succeeded_first_time(&nats, &second)
    })
    .await;

    // The leader stops (releasing its lease): the other takes over and carries on.
    let (leader, standby) = if a.leads() { (a, b) } else { (b, a) };
    assert!(!standby.leads(), "two leaders at once");
    leader.stop().await;
    eventually(WAIT, "the standby takes over", || async { standby.leads() }).await;
    let third = submit_jobs(&nats, 4).await;
    eventually(WAIT, "jobs submitted after the failover succeed", || {
        all_succeeded_first_time(&nats, &third)
    })
    .await;

    for job_id in first.iter().chain(&second).chain(&third) {
        let done = record(&nats.resources, *job_id).await.unwrap();
        assert_eq!(
            (done.attempt, done.failed_attempts),
            (1, 0),
            "job {job_id} ran more than once across leader changes"
        );
    }
    assert_eq!(
        node.busy_slot_assigns(),
        0,
        "a busy slot was assigned a job"
    );
    standby.stop().await;
    node.stop().await;
    assert!(
        nats.resources
            .leader
            .entry(names::KEY_LEADER)
            .await
            .unwrap()
            .is_none_or(|entry| entry.operation != async_nats::jetstream::kv::Operation::Put),
        "the last replica released the lease on stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_missing_their_time_to_start_are_aborted_without_a_gpu() {
    let nats = nats().await;
    let config = coordinator::Config {
        start_timeout_ms: 300,
        ..coordinator::Config::for_test()
    };
    let replica = Replica::start_with(&nats, config);
    // No node: nothing can start.
    let ids = submit_jobs(&nats, 2).await;
    eventually(WAIT, "both jobs are aborted", || async {
        let mut all = true;
        for job_id in &ids {
            all &=
                record(&nats.resources, *job_id).await.map(|r| r.state) == Some(JobState::Aborted);
        }
        all
    })
    .await;
    for job_id in &ids {
        let aborted = record(&nats.resources, *job_id).await.unwrap();
        assert_eq!(aborted.attempt, 0, "an aborted job never reached a GPU");
        assert!(
            aborted
                .history
                .iter()
                .any(|h| h.event == "start_deadline_missed")
        );
    }
    assert!(replica.leads());
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_running_past_the_longest_run_time_fails_for_good() {
    let nats = nats().await;
    let config = coordinator::Config {
        max_run_ms: 300,
        ..coordinator::Config::for_test()
    };
    let replica = Replica::start_with(&nats, config);
    let ids = submit_jobs(&nats, 1).await;
    let job_id = ids[0];
    eventually(WAIT, "the job is queued", || async {
        record(&nats.resources, job_id).await.is_some()
    })
    .await;
    // Play a node that took the job and keeps its lease fresh but never finishes.
    let lease = protocol::record::Lease {
        node: protocol::NodeId::new("slow-node").unwrap(),
        slot: 0,
        deadline_ms: protocol::now_ms() + 600_000,
    };
    let jobs = &nats.resources.jobs;
    jobs.apply(
        job_id,
        &protocol::JobEvent::Assigned { lease },
        protocol::now_ms(),
    )
    .await
    .unwrap();
    let started = protocol::JobEvent::Started {
        attempt: 1,
        lease_deadline_ms: protocol::now_ms() + 600_000,
    };
    jobs.apply(job_id, &started, protocol::now_ms())
        .await
        .unwrap();
    eventually(WAIT, "the overrunning job fails", || async {
        record(&nats.resources, job_id).await.map(|r| r.state) == Some(JobState::Failed)
    })
    .await;
    let failed = record(&nats.resources, job_id).await.unwrap();
    let error = failed.error.unwrap();
    assert!(!error.retryable, "a job over its run time is not retried");
    assert!(
        error.message.contains("longest run time"),
        "{}",
        error.message
    );
    // The node's next write is refused, so it stops at its next step.
    let progressed = protocol::JobEvent::Progressed {
        attempt: 1,
        progress: protocol::record::Progress {
            step: 1,
            total_steps: 3,
        },
        lease_deadline_ms: protocol::now_ms() + 600_000,
    };
    assert!(
        jobs.apply(job_id, &progressed, protocol::now_ms())
            .await
            .is_err()
    );
    replica.stop().await;
}
