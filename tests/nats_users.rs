//! The NATS users of `protocol::nats_users` against a real nats-server configured with the
//! generated `authorization` block: anonymous clients are refused, each credential is held
//! to what its role does, and the whole job path (coordinator, simulated GPU node, gateway,
//! each with its own user) still turns an HTTP request into an MP4 without one permission
//! violation in the server's log.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions, Event};
use futures::StreamExt;
use protocol::config::{NatsConfig, Secret};
use protocol::jetstream::{connect, ensure_resources, open_resources};
use protocol::names;
use protocol::nats_users::{NatsUser, authorization_block};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a denied JetStream request waits before the client gives up.
const DENIED_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the server to report a violation.
const VIOLATION_WAIT: Duration = Duration::from_secs(5);

/// A nats-server with the generated authorization block and a log file.
struct Secured {
    server: testkit::NatsServer,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The GPU nodes the server has users for.
const NODES: [&str; 2] = ["node-a", "node-b"];

fn node_user(id: &str) -> NatsUser {
    NatsUser::GpuNode(id.to_owned())
}

fn password(user: &NatsUser) -> String {
    format!("testPassword{}", user.name().replace('-', ""))
}

impl Secured {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("nats-server.log");
        let nodes: Vec<String> = NODES.iter().map(|id| (*id).to_owned()).collect();
        let config = format!(
            "log_file: {:?}\n{}",
            log.display().to_string(),
            authorization_block(&nodes).unwrap()
        );
        let env: Vec<(String, String)> = NatsUser::all(&nodes)
            .unwrap()
            .iter()
            .map(|user| (user.password_env_var(), password(user)))
            .collect();
        let server = testkit::NatsServer::start_with_config_and_env(&config, &env);
        Self {
            server,
            log,
            _dir: dir,
        }
    }

    fn config(&self, user: &NatsUser) -> NatsConfig {
        NatsConfig {
            url: self.server.url().to_owned(),
            user: Some(user.name()),
            password: Some(Secret::new(password(user))),
            connect_timeout_s: 5,
            ..Default::default()
        }
    }

    /// The resources, created by the admin.
    async fn resources_by_admin(&self) -> (Client, protocol::jetstream::Resources) {
        let config = self.config(&NatsUser::Admin);
        let client = connect(&config, "test-admin").await.unwrap();
        let resources = ensure_resources(client.clone(), &config.jetstream)
            .await
            .unwrap();
        (client, resources)
    }

    /// A raw client of `user` that reports the server's errors (permission violations).
    async fn login(&self, user: &NatsUser) -> (Client, mpsc::UnboundedReceiver<String>) {
        let (errors_tx, errors) = mpsc::unbounded_channel();
        let client = ConnectOptions::with_user_and_password(user.name(), password(user))
            .custom_inbox_prefix(names::inbox_prefix(&user.name()))
            .request_timeout(Some(DENIED_REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let errors_tx = errors_tx.clone();
                async move {
                    if let Event::ServerError(error) = event {
                        let _ = errors_tx.send(error.to_string());
                    }
                }
            })
            .connect(self.server.url())
            .await
            .unwrap();
        (client, errors)
    }

    fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }
}

/// Waits for the server to report a permission violation naming `subject`.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + VIOLATION_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(error)) if error.contains(subject) => return,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no permission violation reported for {subject}"),
        }
    }
}

#[tokio::test]
async fn anonymous_and_wrong_password_connections_are_refused() {
    let secured = Secured::start();
    let anonymous = NatsConfig {
        url: secured.server.url().to_owned(),
        connect_timeout_s: 5,
        ..Default::default()
    };
    assert!(connect(&anonymous, "anonymous").await.is_err());
    let mut wrong = secured.config(&NatsUser::Gateway);
    wrong.password = Some(Secret::new("wrongPassword12345"));
    assert!(connect(&wrong, "wrong").await.is_err());
    let mut missing = secured.config(&NatsUser::Gateway);
    missing.password = None;
    assert!(connect(&missing, "missing").await.is_err());
    // The right password works.
    connect(&secured.config(&NatsUser::Gateway), "gateway")
        .await
        .unwrap();
}

#[tokio::test]
async fn gpu_node_cannot_submit_read_api_keys_or_create_streams() {
    let secured = Secured::start();
    let (admin, admin_resources) = secured.resources_by_admin().await;
    let admin_js = jetstream::new(admin.clone());
    let keys = admin_js.get_key_value(names::BUCKET_KEYS).await.unwrap();
    keys.put("key-1", "secret record".into()).await.unwrap();

    // It opens what a role opens.
    let node = connect(&secured.config(&node_user("node-a")), "node")
        .await
        .unwrap();
    open_resources(node).await.unwrap();

    let (node, mut errors) = secured.login(&node_user("node-a")).await;
    let js = jetstream::new(node.clone());

    // No submissions.
    node.publish("mochi.submit.x", "{}".into()).await.unwrap();
    node.flush().await.unwrap();
    expect_violation(&mut errors, "mochi.submit.x").await;
    let submit = admin_resources.submit.get_info().await.unwrap().state;
    assert_eq!(submit.messages, 0, "a denied submission was stored");

    // No API keys: not the bucket, not a key, not the live writes.
    assert!(js.get_key_value(names::BUCKET_KEYS).await.is_err());
    expect_violation(&mut errors, "$JS.API.STREAM.INFO.KV_mochi_keys").await;
    let direct = "$JS.API.DIRECT.GET.KV_mochi_keys.$KV.mochi_keys.key-1";
    assert!(node.request(direct, "".into()).await.is_err());
    expect_violation(&mut errors, direct).await;
    let mut live = node.subscribe("$KV.mochi_keys.>").await.unwrap();
    expect_violation(&mut errors, "$KV.mochi_keys.>").await;
    keys.put("key-2", "another".into()).await.unwrap();
    let leaked = tokio::time::timeout(Duration::from_millis(300), live.next()).await;
    assert!(
        !matches!(leaked, Ok(Some(_))),
        "a key write reached the node"
    );
    // Nor other users' replies.
    node.subscribe("_INBOX_gateway.>").await.unwrap();
    expect_violation(&mut errors, "_INBOX_gateway.>").await;

    // No job records: not read, not written (its writes go through the coordinator).
    assert!(js.get_key_value(names::BUCKET_JOBS).await.is_ok());
    let record = "$JS.API.DIRECT.GET.KV_mochi_jobs.$KV.mochi_jobs.job-1";
    assert!(node.request(record, "".into()).await.is_err());
    expect_violation(&mut errors, record).await;
    node.publish("$KV.mochi_jobs.job-1", "forged".into())
        .await
        .unwrap();
    node.flush().await.unwrap();
    expect_violation(&mut errors, "$KV.mochi_jobs.job-1").await;
    // Nothing under another node's id: its record writes, its heartbeat, its requests,
    // its progress events.
    for subject in [
        "mochi.node.node-b.record",
        "$KV.mochi_nodes.node-b",
        "mochi.events.job-1.node-b",
    ] {
        node.publish(subject, "forged".into()).await.unwrap();
        node.flush().await.unwrap();
        expect_violation(&mut errors, subject).await;
    }
    node.subscribe("mochi.node.node-b.assign").await.unwrap();
    expect_violation(&mut errors, "mochi.node.node-b.assign").await;
    let jobs_stream = admin_resources.jobs.kv.status().await.unwrap();
    assert_eq!(jobs_stream.values(), 0, "a denied record write was stored");
    let nodes = admin_js.get_key_value(names::BUCKET_NODES).await.unwrap();
    assert!(nodes.get("node-b").await.unwrap().is_none());

    // No new streams or buckets, no deleting ours.
    let created = js
        .create_stream(stream::Config {
            name: "EVIL".to_owned(),
            subjects: vec!["evil.>".to_owned()],
            ..Default::default()
        })
        .await;
    assert!(created.is_err());
    expect_violation(&mut errors, "$JS.API.STREAM.CREATE.EVIL").await;
    assert!(
        js.create_key_value(kv::Config {
            bucket: "evil".to_owned(),
            ..Default::default()
        })
        .await
        .is_err()
    );
    assert!(js.delete_stream(names::STREAM_SUBMIT).await.is_err());
    expect_violation(&mut errors, "$JS.API.STREAM.DELETE.MOCHI_SUBMIT").await;
    assert!(admin_js.get_stream("EVIL").await.is_err());
    assert!(admin_js.get_stream(names::STREAM_SUBMIT).await.is_ok());
    // The server's log names them too (what the full-path test checks is empty).
    let logged = secured.violations();
    assert!(
        logged.iter().any(|line| line.contains("mochi.submit.x")),
        "{logged:?}"
    );
}

/// A node writes the records of the jobs it holds through the coordinator, and nothing of
/// another node's jobs: not through its own subject (the lease says otherwise), not through
/// the other node's (NATS refuses it).
#[tokio::test]
async fn a_node_writes_only_the_records_of_the_jobs_it_holds() {
    use protocol::messages::{RecordWrite, RecordWriteReply};
    use protocol::record::{JobEvent, Lease};

    let secured = Secured::start();
    let (_admin, admin_resources) = secured.resources_by_admin().await;
    // The coordinator's responder, as the coordinator user.
    let coordinator = connect(&secured.config(&NatsUser::Coordinator), "coordinator")
        .await
        .unwrap();
    let coordinator_resources = open_resources(coordinator.clone()).await.unwrap();
    testkit::answer_record_writes(&coordinator, coordinator_resources.jobs.clone()).await;

    // A job placed on node-b.
    let spec = protocol::JobSpec::new("a red fox");
    let shape = spec.validate(&protocol::Limits::default()).unwrap();
    let id = protocol::JobId::new();
    let record = protocol::JobRecord::queued(
        id,
        protocol::TenantId::default_tenant(),
        spec,
        shape,
        1,
        3,
        protocol::now_ms(),
    );
    admin_resources.jobs.create(&record).await.unwrap();
    let lease = Lease {
        node: protocol::NodeId::new("node-b").unwrap(),
        slot: 0,
        deadline_ms: protocol::now_ms() + 60_000,
    };
    admin_resources
        .jobs
        .apply(id, &JobEvent::Assigned { lease }, protocol::now_ms())
        .await
        .unwrap();
    let started = protocol::codec::encode(&RecordWrite {
        job_id: id,
        event: JobEvent::Started {
            attempt: 1,
            lease_deadline_ms: protocol::now_ms() + 60_000,
        },
    })
    .unwrap();
    let ask = |client: Client, subject: String, payload: Vec<u8>| async move {
        let reply = client.request(subject, payload.into()).await.unwrap();
        protocol::codec::decode::<RecordWriteReply>(&reply.payload).unwrap()
    };

    // node-a, through its own subject: refused by the lease.
    let (node_a, mut errors) = secured.login(&node_user("node-a")).await;
    let reply = ask(
        node_a.clone(),
        names::node_record_subject("node-a"),
        started.clone(),
    )
    .await;
    assert!(
        matches!(&reply, RecordWriteReply::Refused { reason } if reason.contains("node-b")),
        "{reply:?}"
    );
    // node-a, through node-b's subject: refused by NATS.
    assert!(
        node_a
            .request(names::node_record_subject("node-b"), started.clone().into())
            .await
            .is_err()
    );
    expect_violation(&mut errors, "mochi.node.node-b.record").await;
    let (unchanged, _) = admin_resources.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(unchanged.state, protocol::JobState::Assigned);

    // node-b, the holder: applied, and a retry of the same write is answered the same.
    let (node_b, _) = secured.login(&node_user("node-b")).await;
    for _ in 0..2 {
        let reply = ask(
            node_b.clone(),
            names::node_record_subject("node-b"),
            started.clone(),
        )
        .await;
        assert_eq!(reply, RecordWriteReply::Applied);
    }
    let (running, _) = admin_resources.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(running.state, protocol::JobState::Running);
    // A cancellation is not a node's to write, even the holder's.
    let cancel = protocol::codec::encode(&RecordWrite {
        job_id: id,
        event: JobEvent::CancelRequested,
    })
    .unwrap();
    let reply = ask(node_b, names::node_record_subject("node-b"), cancel).await;
    assert!(
        matches!(reply, RecordWriteReply::Refused { .. }),
        "{reply:?}"
    );
    let (still, _) = admin_resources.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(still.state, protocol::JobState::Running);
}

#[tokio::test]
async fn submitter_publishes_submissions_but_cannot_read_jobs_or_prompts() {
    let secured = Secured::start();
    let (_admin, admin_resources) = secured.resources_by_admin().await;
    let (submitter, mut errors) = secured.login(&NatsUser::Submitter).await;
    let js = jetstream::new(submitter.clone());

    let ack = js
        .publish(names::submit_subject("acme"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, names::STREAM_SUBMIT);

    assert!(js.get_key_value(names::BUCKET_JOBS).await.is_err());
    expect_violation(&mut errors, "$JS.API.STREAM.INFO.KV_mochi_jobs").await;
    let direct = "$JS.API.DIRECT.GET.KV_mochi_jobs.$KV.mochi_jobs.any";
    assert!(submitter.request(direct, "".into()).await.is_err());
    expect_violation(&mut errors, direct).await;
    // Other tenants' prompts: neither live nor from the stream.
    submitter.subscribe("mochi.submit.>").await.unwrap();
    expect_violation(&mut errors, "mochi.submit.>").await;
    let consumer = "$JS.API.CONSUMER.CREATE.MOCHI_SUBMIT.peek";
    assert!(submitter.request(consumer, "{}".into()).await.is_err());
    expect_violation(&mut errors, consumer).await;
    // The gateway's per-job subjects are the gateway's.
    submitter
        .publish("mochi.submit.acme.job1", "{}".into())
        .await
        .unwrap();
    submitter.flush().await.unwrap();
    expect_violation(&mut errors, "mochi.submit.acme.job1").await;
    let submit = admin_resources.submit.get_info().await.unwrap().state;
    assert_eq!(submit.messages, 1, "only the allowed submission is stored");
}

#[tokio::test]
async fn gateway_reads_and_writes_what_it_serves_and_nothing_of_the_scheduler() {
    let secured = Secured::start();
    let (admin, _) = secured.resources_by_admin().await;
    let admin_js = jetstream::new(admin.clone());
    admin_js
        .get_key_value(names::BUCKET_QUEUE)
        .await
        .unwrap()
        .put("job-1", "{}".into())
        .await
        .unwrap();
    let videos = admin_js
        .get_object_store(names::OBJECT_STORE_VIDEOS)
        .await
        .unwrap();
    videos
        .put("job-1/1", &mut std::io::Cursor::new(vec![7u8; 300_000]))
        .await
        .unwrap();
    admin
        .publish(names::dlq_subject("job-1"), "{}".into())
        .await
        .unwrap();
    admin.flush().await.unwrap();

    let config = secured.config(&NatsUser::Gateway);
    let client = connect(&config, "gateway").await.unwrap();
    let resources = open_resources(client.clone()).await.unwrap();
    let js = resources.context.clone();

    // Submit on the per-job subject and read it back by subject.
    let subject = names::submit_job_subject("acme", "job-2");
    js.publish(subject.clone(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    resources
        .submit
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    // Job records: create, read, compare-and-set.
    let revision = resources
        .jobs
        .kv
        .create("job-2", "record".into())
        .await
        .unwrap();
    resources
        .jobs
        .kv
        .update("job-2", "cancelled".into(), revision)
        .await
        .unwrap();
    assert!(resources.jobs.kv.get("job-2").await.unwrap().is_some());
    // The fleet: watch and list the nodes.
    resources.nodes.watch_all_from_revision(1).await.unwrap();
    resources.nodes.keys().await.unwrap();
    // Queue positions, videos, dead letters.
    let queue = js.get_key_value(names::BUCKET_QUEUE).await.unwrap();
    assert!(queue.get("job-1").await.unwrap().is_some());
    let mut object = resources.videos.get("job-1/1").await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes.len(), 300_000);
    let dlq = resources.dlq.get_info().await.unwrap().state;
    resources
        .dlq
        .get_raw_message(dlq.last_sequence)
        .await
        .unwrap();
    // API keys: write, read, watch.
    let keys = js.get_key_value(names::BUCKET_KEYS).await.unwrap();
    keys.put("key-1", "record".into()).await.unwrap();
    assert!(keys.get("key-1").await.unwrap().is_some());
    keys.watch_all().await.unwrap();
    // The shared values there (the generated link-signing key), read back from the leader.
    let signing = gateway::auth::signing::LinkSigner::load(&Default::default(), &keys)
        .await
        .unwrap();
    let job_id = protocol::JobId::new();
    assert!(signing.link(job_id, "video", 1_000).is_some());
    assert!(
        protocol::shared_value::get_latest(&keys, "signing.auto")
            .await
            .unwrap()
            .is_some()
    );
    // Cancellations to nodes.
    client
        .publish(names::node_cancel_subject("n1"), "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(secured.violations(), Vec::<String>::new());

    // Not the scheduler's: assignments, the leader lease, the intake's consumer.
    let (gateway, mut errors) = secured.login(&NatsUser::Gateway).await;
    gateway
        .publish(names::node_assign_subject("n1"), "".into())
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    expect_violation(&mut errors, "mochi.node.n1.assign").await;
    gateway
        .publish("$KV.mochi_leader.coordinator", "me".into())
        .await
        .unwrap();
    gateway.flush().await.unwrap();
    expect_violation(&mut errors, "$KV.mochi_leader.coordinator").await;
    let next = "$JS.API.CONSUMER.MSG.NEXT.MOCHI_SUBMIT.mochi-intake";
    assert!(gateway.request(next, "1".into()).await.is_err());
    expect_violation(&mut errors, next).await;
    gateway
        .subscribe(names::node_assign_subject("*"))
        .await
        .unwrap();
    expect_violation(&mut errors, "mochi.node.*.assign").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_path_runs_with_one_restricted_user_per_role() {
    const JOBS: usize = 4;
    let secured = Secured::start();
    let (admin, _) = secured.resources_by_admin().await;
    drop(admin);
    let shutdown = CancellationToken::new();
    let role = |user: NatsUser| {
        let config = secured.config(&user);
        async move {
            let client = connect(&config, &user.name()).await.unwrap();
            let resources = open_resources(client.clone()).await.unwrap();
            (client, resources)
        }
    };

    let mut roles = common::Roles::new();
    let (client, resources) = role(NatsUser::Coordinator).await;
    common::spawn_coordinator(
        &mut roles,
        coordinator::Config::for_test(),
        resources,
        client,
        &shutdown,
    );
    let (client, resources) = role(node_user("node-a")).await;
    common::spawn_node(&mut roles, "node-a", resources, client, &shutdown);
    let (client, resources) = role(NatsUser::Gateway).await;
    let mut gateway_config = gateway::Config::for_test();
    gateway_config.listen_addr = "127.0.0.1:0".to_owned();
    let gateway = gateway::Server::bind(gateway_config, resources, client, None)
        .await
        .unwrap();
    let base = format!("http://{}", gateway.local_addr());
    let gateway_task = tokio::spawn(gateway.serve(shutdown.clone()));

    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for index in 0..JOBS {
        let body = serde_json::json!({
            "prompt": format!("test pattern {index}"),
            "num_frames": 13,
            "width": 256,
            "height": 144,
            "steps": 4,
        });
        ids.push(common::submit(&http, &base, &body, None, None).await.id);
    }
    // A submission by request/reply, as the `submitter` user: answered with the job, then
    // run like any other.
    let (submitter, _) = secured.login(&NatsUser::Submitter).await;
    let tenant = protocol::TenantId::default_tenant();
    let subject = names::submit_rpc_subject(tenant.as_str());
    let ask = |payload: Vec<u8>| {
        let submitter = submitter.clone();
        let subject = subject.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(15),
                submitter.request(subject, payload.into()),
            )
            .await
            .unwrap()
            .unwrap();
            let status = reply
                .headers
                .as_ref()
                .and_then(|headers| headers.get(coordinator::submit_rpc::STATUS_HEADER))
                .map(|value| value.as_str().to_owned())
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            (status, body)
        }
    };
    let spec = serde_json::json!({
        "prompt": "by request and reply", "num_frames": 13, "width": 256, "height": 144, "steps": 4,
    });
    let (status, job) = ask(serde_json::to_vec(&serde_json::json!({"spec": spec})).unwrap()).await;
    assert_eq!(status, "202", "{job}");
    assert_eq!(job["object"], "video");
    assert_eq!(job["prompt"], "by request and reply");
    ids.push(job["id"].as_str().unwrap().parse().unwrap());
    let keyed =
        serde_json::to_vec(&serde_json::json!({"spec": spec, "idempotency_key": "rpc-1"})).unwrap();
    let (status, first) = ask(keyed.clone()).await;
    assert_eq!(status, "202", "{first}");
    let (status, again) = ask(keyed).await;
    assert_eq!(status, "200", "a repeated key is the same job: {again}");
    assert_eq!(first["id"], again["id"]);
    // A deleted job's key cannot make it again: a clear refusal.
    let other =
        serde_json::to_vec(&serde_json::json!({"spec": spec, "idempotency_key": "rpc-2"})).unwrap();
    let (status, doomed) = ask(other.clone()).await;
    assert_eq!(status, "202", "{doomed}");
    let deleted = http
        .delete(format!(
            "{base}/v1/videos/{}",
            doomed["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let (status, refused) = ask(other).await;
    assert_eq!(status, "409", "{refused}");
    assert_eq!(refused["error"]["code"], "conflict");
    ids.push(first["id"].as_str().unwrap().parse().unwrap());
    let (status, refused) = ask(br#"{"spec": {"prompt": "x", "steps": 0}}"#.to_vec()).await;
    assert_eq!(status, "422", "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_field");
    assert_eq!(refused["error"]["field"], "steps");
    let (status, unreadable) = ask(b"not json".to_vec()).await;
    assert_eq!(status, "400", "{unreadable}");
    assert_eq!(unreadable["error"]["code"], "malformed_request");

    // The estimate: the gateway asks the coordinator, each as its own user.
    let estimate: serde_json::Value = http
        .post(format!("{base}/v1/videos/estimate"))
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(estimate["object"], "video.estimate", "{estimate}");

    let backends = http
        .get(format!("{base}/v1/backends"))
        .send()
        .await
        .unwrap();
    assert_eq!(backends.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let view = common::wait_terminal(&http, &base, *id, None, deadline).await;
        assert_eq!(
            view.state,
            protocol::JobState::Succeeded,
            "job {id}: {:?}",
            view.error
        );
        let response = http
            .get(format!("{base}/v1/videos/{id}/content"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        let info = gpu_node::mp4::probe(&bytes).unwrap();
        assert_eq!(info.decoded_frames, 13);
    }

    shutdown.cancel();
    gateway_task.await.unwrap().unwrap();
    while let Some(joined) = roles.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(
        secured.violations(),
        Vec::<String>::new(),
        "a role was denied something it does"
    );
}
