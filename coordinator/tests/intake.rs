//! The intake against a real nats-server: submissions become `queued` records exactly once,
//! invalid ones become `failed` records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::stream::RetentionPolicy;
use common::{Nats, Running, eventually, nats, record, small_job, submit};
use protocol::{ErrorCode, JobId, JobSpec, JobState, names};

const WAIT: Duration = Duration::from_secs(10);

async fn submit_stream_messages(nats: &Nats) -> u64 {
    nats.resources
        .submit
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

/// A `MOCHI_SUBMIT` made by an earlier version has work-queue retention, which nats-server
/// cannot change: the intake still takes its submissions in, each acknowledgement removes
/// one, and a coordinator restarted on it does not need a purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_submit_stream_made_before_still_drains() {
    use async_nats::jetstream::stream;
    let server = testkit::NatsServer::start();
    let config = protocol::config::NatsConfig {
        url: server.url().to_owned(),
        ..Default::default()
    };
    let client = protocol::jetstream::connect(&config, "legacy-test")
        .await
        .unwrap();
    async_nats::jetstream::new(client.clone())
        .create_stream(stream::Config {
            name: names::STREAM_SUBMIT.to_owned(),
            subjects: vec![names::SUBJECT_SUBMIT_ALL.to_owned()],
            retention: RetentionPolicy::WorkQueue,
            max_messages: 1000,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let resources = protocol::jetstream::ensure_resources(client.clone(), &config.jetstream)
        .await
        .unwrap();
    assert_eq!(
        resources.submit.cached_info().config.retention,
        RetentionPolicy::WorkQueue,
        "an existing stream is opened as it is"
    );
    let nats = Nats {
        server,
        client,
        resources,
    };
    let coordinator = Running::start(&nats, coordinator::Config::for_test()).await;
    let mut jobs = Vec::new();
    for prompt in ["one", "two", "three"] {
        let job = small_job(prompt);
        let job_id = job.job_id.unwrap();
        submit(&nats.resources, "acme", &job, &job_id.to_string()).await;
        jobs.push(job_id);
    }
    for job_id in jobs {
        eventually(WAIT, "each job is queued", || async {
            record(&nats.resources, job_id).await.is_some()
        })
        .await;
    }
    eventually(
        WAIT,
        "the acknowledgements empty the work queue",
        || async { submit_stream_messages(&nats).await == 0 },
    )
    .await;
    // The scheduler counts a record once its watch shows it, a moment after the write.
    eventually(WAIT, "the scheduler counts the three jobs", || async {
        coordinator.status().await.queued >= 3
    })
    .await;
    assert_eq!(coordinator.status().await.queued, 3);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_becomes_one_queued_record_even_when_delivered_twice() {
    let nats = nats().await;
    let coordinator = Running::start(&nats, coordinator::Config::for_test()).await;
    let first = small_job("a red fox");
    let job_id = first.job_id.unwrap();
    submit(&nats.resources, "acme", &first, &job_id.to_string()).await;
    eventually(WAIT, "the job is queued", || async {
        record(&nats.resources, job_id).await.is_some()
    })
    .await;
    let (created, revision) = nats.resources.jobs.get(job_id).await.unwrap().unwrap();
    assert_eq!(created.state, JobState::Queued);
    assert_eq!(created.tenant.as_str(), "acme");
    assert_eq!(created.attempt, 0);

    // The same job again under another message id (JetStream's dedup does not catch it),
    // with another prompt: the intake must keep the first record untouched.
    let mut again = first.clone();
    again.spec.prompt = "a blue fox".to_owned();
    submit(&nats.resources, "acme", &again, "another-message-id").await;
    // The stream keeps messages until purged (limits retention): the intake purges below a
    // batch once it took every submission of it in.
    let stream = nats.resources.submit.get_info().await.unwrap();
    assert_eq!(stream.config.retention, RetentionPolicy::Limits);
    eventually(WAIT, "the duplicate is taken in and purged", || async {
        submit_stream_messages(&nats).await == 0
    })
    .await;
    let (kept, kept_revision) = nats.resources.jobs.get(job_id).await.unwrap().unwrap();
    assert_eq!(kept_revision, revision, "the duplicate rewrote the record");
    assert_eq!(kept.spec.prompt, "a red fox");
    assert_eq!(coordinator.status().await.queued, 1);

    // Without a job id the id is derived from the message id, so a redelivery maps to it too.
    let mut anonymous = small_job("a green fox");
    anonymous.job_id = None;
    submit(&nats.resources, "acme", &anonymous, "client-key-7").await;
    let derived = JobId::derived("acme", "client-key-7");
    eventually(WAIT, "the anonymous job is queued", || async {
        record(&nats.resources, derived).await.is_some()
    })
    .await;
    eventually(WAIT, "the scheduler sees both jobs", || async {
        coordinator.status().await.queued == 2
    })
    .await;
    coordinator.stop().await;
}

/// The intake's position is the purge: a leader that took submissions in but died before
/// purging them leaves them to the next, which reads them again, finds their records and
/// leaves them untouched. The durable consumer of earlier versions is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_reads_again_what_was_not_purged_and_rewrites_nothing() {
    use async_nats::jetstream::consumer::pull;
    let nats = nats().await;
    let ids = common::submit_jobs(&nats, 6).await;
    // The first three were taken in by a leader that died before its purge.
    let mut revisions = Vec::new();
    for (index, job_id) in ids.iter().take(3).enumerate() {
        let mut record = record_of(*job_id, index);
        record.spec.prompt = format!("taken in before {index}");
        assert!(nats.resources.jobs.create(&record).await.unwrap());
        revisions.push(nats.resources.jobs.get(*job_id).await.unwrap().unwrap().1);
    }
    nats.resources
        .submit
        .create_consumer(pull::Config {
            durable_name: Some(names::CONSUMER_INTAKE.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    let coordinator = Running::start(&nats, coordinator::Config::for_test()).await;
    eventually(WAIT, "every submission is taken in and purged", || async {
        submit_stream_messages(&nats).await == 0
    })
    .await;
    for (index, job_id) in ids.iter().enumerate() {
        let (kept, revision) = nats.resources.jobs.get(*job_id).await.unwrap().unwrap();
        if index < 3 {
            assert_eq!(revision, revisions[index], "job {index} was written again");
            assert_eq!(kept.spec.prompt, format!("taken in before {index}"));
        } else {
            assert_eq!(kept.state, JobState::Queued, "job {index}");
        }
    }
    eventually(WAIT, "the scheduler sees every job", || async {
        coordinator.status().await.queued == 6
    })
    .await;
    assert!(
        nats.resources
            .submit
            .consumer_info(names::CONSUMER_INTAKE)
            .await
            .is_err(),
        "the durable consumer of earlier versions is still there"
    );
    coordinator.stop().await;
}

/// The queued record the intake would write for job `index` of `submit_jobs`.
fn record_of(job_id: JobId, index: usize) -> protocol::JobRecord {
    let request = small_job(&format!("job {index}"));
    let shape = request.spec.validate(&protocol::Limits::default()).unwrap();
    protocol::JobRecord::from_submission(
        job_id,
        protocol::TenantId::new("acme").unwrap(),
        request,
        shape,
        3,
        protocol::now_ms(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_published_directly_ends_failed_with_invalid_field() {
    let nats = nats().await;
    let coordinator = Running::start(&nats, coordinator::Config::for_test()).await;
    // A bare core-NATS publish (no gateway, no job id, no message id): the id comes from
    // the stream sequence, 1 on this fresh server.
    let mut spec = JobSpec::new("a cat");
    spec.steps = Some(0);
    let body = serde_json::json!({ "spec": spec });
    nats.client
        .publish(
            names::submit_subject("acme"),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
    // A message that is not JSON fails under its sequence's id, without blocking the next;
    // one with a wrong type fails under the job id it names.
    nats.client
        .publish(names::submit_subject("acme"), "not json".into())
        .await
        .unwrap();
    let named = JobId::new();
    let typo = format!(r#"{{"job_id":"{named}","spec":{{"prompt":"a dog","priority":null}}}}"#);
    nats.client
        .publish(names::submit_subject("acme"), typo.into())
        .await
        .unwrap();
    nats.client.flush().await.unwrap();
    eventually(WAIT, "the mistyped job has a record", || async {
        record(&nats.resources, named).await.is_some()
    })
    .await;
    let mistyped = record(&nats.resources, named).await.unwrap();
    let error = mistyped.error.expect("a failed record says why");
    assert_eq!(
        (mistyped.state, error.code),
        (JobState::Failed, ErrorCode::InvalidField)
    );
    assert!(error.message.contains("spec.priority"), "{}", error.message);
    let garbled = record(&nats.resources, JobId::derived("acme", "seq-2"))
        .await
        .unwrap();
    assert_eq!(
        garbled.error.map(|e| e.code),
        Some(ErrorCode::MalformedRequest)
    );
    let job_id = JobId::derived("acme", "seq-1");
    eventually(WAIT, "the invalid job has a record", || async {
        record(&nats.resources, job_id).await.is_some()
    })
    .await;
    let failed = record(&nats.resources, job_id).await.unwrap();
    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.expect("a failed record says why");
    assert_eq!(error.code, ErrorCode::InvalidField);
    assert!(!error.retryable);
    assert!(
        error.message.contains("steps"),
        "message names the field: {}",
        error.message
    );
    eventually(WAIT, "every message is purged", || async {
        submit_stream_messages(&nats).await == 0
    })
    .await;
    let status = coordinator.status().await;
    assert_eq!(
        (status.queued, status.on_node),
        (0, 0),
        "a failed job is neither queued nor on a node"
    );
    coordinator.stop().await;
}

/// What a job is made of is synced write by write; what the coordinator and the nodes
/// rewrite on their own (queue positions, heartbeats) persists asynchronously on a single
/// server, and so costs no sync per write.
#[tokio::test]
async fn only_the_derived_buckets_skip_the_sync_of_each_write() {
    use async_nats::jetstream::stream::PersistenceMode;
    let nats = nats().await;
    let mode = |stream: String| {
        let context = nats.resources.context.clone();
        async move {
            let mut stream = context.get_stream(&stream).await.unwrap();
            stream.info().await.unwrap().config.persist_mode
        }
    };
    for bucket in [names::BUCKET_QUEUE, names::BUCKET_NODES] {
        assert_eq!(
            mode(names::kv_stream(bucket)).await,
            Some(PersistenceMode::Async),
            "{bucket}"
        );
    }
    for stream in [
        names::STREAM_SUBMIT.to_owned(),
        names::STREAM_DLQ.to_owned(),
        names::STREAM_WEBHOOKS.to_owned(),
        names::kv_stream(names::BUCKET_JOBS),
        names::kv_stream(names::BUCKET_KEYS),
        names::kv_stream(names::BUCKET_LEADER),
        names::object_stream(names::OBJECT_STORE_VIDEOS),
    ] {
        assert_ne!(
            mode(stream.clone()).await,
            Some(PersistenceMode::Async),
            "{stream}"
        );
    }
    // The bucket works as any other.
    let queue = nats
        .resources
        .context
        .get_key_value(names::BUCKET_QUEUE)
        .await
        .unwrap();
    queue.put("job-1", "position".into()).await.unwrap();
    assert_eq!(
        queue.get("job-1").await.unwrap().as_deref(),
        Some(&b"position"[..])
    );
    queue.delete("job-1").await.unwrap();
    assert!(queue.get("job-1").await.unwrap().is_none());
}

/// `JobStore::get_latest` (the leader's answer a compare-and-set writer falls back on when a
/// replica's would refuse its change) reads what `get` reads: the record at its revision,
/// and nothing once the record is deleted or purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_read_from_the_stream_leader_is_the_record_at_its_revision() {
    let nats = Box::pin(nats()).await;
    let jobs = &nats.resources.jobs;
    let spec = JobSpec::new("a lighthouse at dusk");
    let shape = spec.validate(&protocol::Limits::default()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let record = protocol::JobRecord::queued(
            JobId::new(),
            protocol::TenantId::default_tenant(),
            spec.clone(),
            shape,
            1,
            3,
            protocol::now_ms(),
        );
        assert!(jobs.create(&record).await.unwrap());
        ids.push(record.id);
    }
    let [first, second] = ids[..] else {
        unreachable!()
    };
    let cancelled = jobs
        .apply(
            first,
            &protocol::JobEvent::CancelRequested,
            protocol::now_ms(),
        )
        .await
        .unwrap();
    let direct = jobs.get(first).await.unwrap().unwrap();
    let latest = jobs.get_latest(first).await.unwrap().unwrap();
    assert_eq!(latest, direct);
    assert_eq!(latest.0, cancelled);
    assert!(
        jobs.get_latest(JobId::new()).await.unwrap().is_none(),
        "never written"
    );

    jobs.kv.delete(first.to_string()).await.unwrap();
    jobs.kv.purge(second.to_string()).await.unwrap();
    for job_id in [first, second] {
        assert!(jobs.get_latest(job_id).await.unwrap().is_none());
        assert!(jobs.get(job_id).await.unwrap().is_none());
    }
}
