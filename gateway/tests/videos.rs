//! The OpenAI-compatible video API against a real nats-server: create (JSON and forms),
//! models, lists, delete, remix, previews, conditional downloads, request ids and poll
//! hints.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::Config;
use protocol::api::{JobView, ModelList, VideoDeleted, VideoList, VideoStatus};
use protocol::record::{JobEvent, Lease};
use protocol::{
    ErrorBody, ErrorCode, JobId, JobRecord, JobSpec, JobState, Limits, NodeId, TenantId, names,
    now_ms,
};

use common::Client;

impl Client {
    async fn json(&self, method: &str, uri: &str, body: &str) -> (StatusCode, Vec<u8>) {
        let request = self
            .request(method, uri)
            .header(header::CONTENT_TYPE, "application/json");
        let (status, _, body) = self.send(request, Body::from(body.to_owned())).await;
        (status, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let (status, _, body) = self.send(self.request("GET", uri), Body::empty()).await;
        (status, body)
    }

    /// A stored record of this client's tenant, as the intake writes it.
    async fn stored(&self, tenant: &str, created_ms: u64) -> JobRecord {
        let mut spec = JobSpec::new(format!("job at {created_ms}"));
        spec.steps = Some(8);
        let shape = spec.validate(&Limits::default()).unwrap();
        let record = JobRecord::queued(
            JobId::new(),
            TenantId::new(tenant).unwrap(),
            spec,
            shape,
            4242,
            3,
            created_ms,
        );
        self.gateway.resources.jobs.create(&record).await.unwrap();
        record
    }

    async fn assign(&self, record: &JobRecord) -> JobRecord {
        let lease = Lease {
            node: NodeId::new("n1").unwrap(),
            slot: 0,
            deadline_ms: now_ms() + 60_000,
        };
        self.gateway
            .resources
            .jobs
            .apply(record.id, &JobEvent::Assigned { lease }, now_ms())
            .await
            .unwrap()
    }

    /// Lists until `expected` jobs show (the index follows the records by a watch).
    async fn list_until(&self, query: &str, expected: usize) -> VideoList {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(&format!("/v1/videos{query}")).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let list: VideoList = serde_json::from_slice(&body).unwrap();
            if list.data.len() == expected || Instant::now() > deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn view(body: &[u8]) -> JobView {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not a video ({e}): {}", String::from_utf8_lossy(body)))
}

fn error(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not an error ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn create_takes_openai_fields_as_json_and_as_a_form() {
    let client = Client::new().await;
    let (status, body) = client
        .json(
            "POST",
            "/v1/videos",
            r#"{"prompt":"a fox","model":"mochi-1-preview","seconds":"2","size":"480x848","steps":8}"#,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let video = view(&body);
    assert_eq!(
        (video.object.as_str(), video.model.as_str(), video.status),
        ("video", "mochi-1-preview", VideoStatus::Queued)
    );
    assert_eq!(
        (video.size.as_str(), video.seconds.as_str()),
        ("480x848", "2.03")
    );
    assert_eq!(
        (video.progress, video.steps, video.prompt.as_str()),
        (0, 8, "a fox")
    );

    let form = "--b0\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n\
        --b0\r\nContent-Disposition: form-data; name=\"seconds\"\r\n\r\n1\r\n\
        --b0\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n4\r\n--b0--\r\n";
    let request = client
        .request("POST", "/v1/videos")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=b0");
    let (status, _, body) = client.send(request, Body::from(form)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let video = view(&body);
    assert_eq!(
        (video.prompt.as_str(), video.steps, video.fps),
        ("a cat", 4, 30)
    );

    let (status, body) = client
        .json("POST", "/v1/videos", r#"{"prompt":"x","model":"sora-2"}"#)
        .await;
    let detail = error(&body).error;
    assert_eq!(
        (status, detail.code),
        (StatusCode::NOT_FOUND, ErrorCode::ModelNotFound)
    );
    assert_eq!(
        (detail.kind.as_deref(), detail.param.as_deref()),
        (Some("not_found_error"), Some("model"))
    );
    let (status, body) = client
        .json(
            "POST",
            "/v1/videos",
            r#"{"prompt":"x","input_reference":{"file_id":"f"}}"#,
        )
        .await;
    let detail = error(&body).error;
    assert_eq!(
        (status, detail.code, detail.kind.as_deref()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unsupported,
            Some("invalid_request_error")
        )
    );
    let (status, body) = client.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: ModelList = serde_json::from_slice(&body).unwrap();
    assert_eq!(models.data[0].id, "mochi-1-preview");
}

#[tokio::test]
async fn every_response_has_a_request_id_the_clients_when_usable() {
    let client = Client::new().await;
    for uri in ["/healthz", "/nowhere", "/v1/videos/nope", "/v1/models"] {
        let (_, headers, _) = client.send(client.request("GET", uri), Body::empty()).await;
        let id = headers["x-request-id"].to_str().unwrap();
        assert!(id.starts_with("req_") && id.len() > 10, "{uri}: {id}");
        let (_, headers, _) = client
            .send(
                client
                    .request("GET", uri)
                    .header("x-request-id", "trace-42:a"),
                Body::empty(),
            )
            .await;
        assert_eq!(headers["x-request-id"], "trace-42:a", "{uri}");
    }
    let (_, headers, _) = client
        .send(
            client
                .request("GET", "/healthz")
                .header("x-request-id", "has space"),
            Body::empty(),
        )
        .await;
    assert_ne!(headers["x-request-id"], "has space");
}

#[tokio::test]
async fn lists_page_through_the_tenants_jobs_only() {
    let client = Client::new().await;
    let base = now_ms() - 10_000;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(client.stored("acme", base + i * 100).await.id);
    }
    client.stored("other", base + 50).await;
    let done = client
        .assign(&client.stored("acme", base + 1_000).await)
        .await;
    common::succeed(&client.gateway.resources, done.id, b"mp4").await;
    ids.push(done.id);

    let first = client.list_until("?limit=4", 4).await;
    assert_eq!(first.object, "list");
    let newest: Vec<JobId> = ids.iter().rev().take(4).copied().collect();
    assert_eq!(first.data.iter().map(|v| v.id).collect::<Vec<_>>(), newest);
    assert_eq!(
        (first.first_id, first.last_id),
        (Some(ids[5]), Some(ids[2]))
    );
    assert!(first.has_more);
    let after = first.last_id.unwrap();
    let second = client
        .list_until(&format!("?limit=4&after={after}"), 2)
        .await;
    assert_eq!(
        second.data.iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );
    assert!(!second.has_more);
    let oldest = client.list_until("?order=asc&limit=2", 2).await;
    assert_eq!(
        oldest.data.iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![ids[0], ids[1]]
    );
    let completed = client.list_until("?status=completed", 1).await;
    assert_eq!(completed.data[0].id, done.id);
    assert_eq!(completed.data[0].progress, 100);
    let since = (base + 1_000) / 1000;
    let created: Vec<u64> = (0..5)
        .map(|i| base + i * 100)
        .chain([base + 1_000])
        .collect();
    let expected = created.iter().filter(|&&ms| ms >= since * 1000).count();
    let recent = client
        .list_until(&format!("?created_after={since}"), expected)
        .await;
    assert_eq!(recent.data.len(), expected);
    assert!(recent.data.iter().all(|v| v.created_at >= since));

    let other = client.as_tenant("other").await;
    let theirs = other.list_until("", 1).await;
    assert_eq!(theirs.data.len(), 1);
    let (status, body) = other.get(&format!("/v1/videos?after={}", ids[0])).await;
    let detail = error(&body).error;
    assert_eq!(
        (status, detail.param.as_deref()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("after"))
    );
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("order=up", "order"),
        ("status=running", "status"),
        ("created_after=yesterday", "created_after"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = client.get(&format!("/v1/videos?{query}")).await;
        let detail = error(&body).error;
        assert_eq!(
            (status, detail.code, detail.param.as_deref()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidField,
                Some(param)
            ),
            "{query}"
        );
    }
}

#[tokio::test]
async fn delete_cancels_first_then_removes_the_job_and_its_files() {
    let client = Client::new().await;
    let resources = &client.gateway.resources;
    let done = client.assign(&client.stored("acme", now_ms()).await).await;
    common::succeed(resources, done.id, b"mp4 bytes").await;
    let uri = format!("/v1/videos/{}", done.id);
    let (status, _, body) = client
        .send(client.request("DELETE", &uri), Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let deleted: VideoDeleted = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (deleted.id, deleted.object.as_str(), deleted.deleted),
        (done.id, "video.deleted", true)
    );
    assert_eq!(client.get(&uri).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        client.get(&format!("{uri}/content")).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = client
        .send(client.request("DELETE", &uri), Body::empty())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let video = names::video_object(&done.id.to_string(), 1);
    for name in [names::thumbnail_object(&video), video.clone()] {
        assert!(
            resources.videos.get(&name).await.is_err(),
            "{name} still stored"
        );
    }
    // The record is a tombstone: no prompt, and the intake cannot create the job again.
    let (tomb, _) = resources.jobs.get(done.id).await.unwrap().unwrap();
    assert!(tomb.deleted_at_ms.is_some() && tomb.spec.prompt.is_empty());
    assert!(!resources.jobs.create(&done).await.unwrap());

    // A job on a node is cancelled first (its node told), then deleted.
    let running = client.assign(&client.stored("acme", now_ms()).await).await;
    let mut cancels = client
        .gateway
        .state
        .client
        .subscribe(names::node_cancel_subject("n1"))
        .await
        .unwrap();
    client.gateway.state.client.flush().await.unwrap();
    let uri = format!("/v1/videos/{}", running.id);
    let (status, _, _) = client
        .send(client.request("DELETE", &uri), Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    use futures::StreamExt;
    let told = tokio::time::timeout(Duration::from_secs(10), cancels.next()).await;
    assert!(told.is_ok(), "the node was not told to stop");
    let (tomb, _) = resources.jobs.get(running.id).await.unwrap().unwrap();
    assert_eq!(tomb.state, JobState::Cancelled);
    // Never listed again; another tenant cannot delete ours.
    let list = client.list_until("", 0).await;
    assert!(list.data.is_empty(), "{:?}", list.data);
    let other = client.as_tenant("other").await;
    let theirs = client.stored("acme", now_ms()).await;
    let (status, _, _) = other
        .send(
            other.request("DELETE", &format!("/v1/videos/{}", theirs.id)),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn remix_keeps_the_parameters_and_seed_with_a_new_prompt() {
    let client = Client::new().await;
    let source = client.stored("acme", now_ms()).await;
    let uri = format!("/v1/videos/{}/remix", source.id);
    let (status, body) = client
        .json("POST", &uri, r#"{"prompt":"the same, at night"}"#)
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let remix = view(&body);
    assert_eq!(remix.remixed_from_video_id, Some(source.id));
    assert_eq!(
        (remix.spec.prompt.as_str(), remix.spec.seed, remix.steps),
        ("the same, at night", Some(4242), 8)
    );
    assert_ne!(remix.id, source.id);
    let (status, body) = client.get(&format!("/v1/videos/{}", remix.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view(&body).remixed_from_video_id, Some(source.id));
    for (body, code) in [
        (r#"{"prompt":"x","steps":2}"#, ErrorCode::InvalidField),
        (r#"{}"#, ErrorCode::InvalidField),
        (r#"{"prompt":"   "}"#, ErrorCode::InvalidField),
    ] {
        let (status, answer) = client.json("POST", &uri, body).await;
        assert_eq!(
            (status, error(&answer).error.code),
            (StatusCode::UNPROCESSABLE_ENTITY, code),
            "{body}"
        );
    }
    let (status, _) = client
        .json(
            "POST",
            &format!("/v1/videos/{}/remix", JobId::new()),
            r#"{"prompt":"x"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn previews_and_conditional_downloads() {
    let client = Client::new().await;
    let job = client.assign(&client.stored("acme", now_ms()).await).await;
    let uri = format!("/v1/videos/{}", job.id);
    let (_, headers, _) = client
        .send(client.request("GET", &uri), Body::empty())
        .await;
    let poll: u64 = headers["openai-poll-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((250..=10_000).contains(&poll), "{poll}");
    let video: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    common::succeed(&client.gateway.resources, job.id, &video).await;
    let (status, headers, body) = client
        .send(client.request("GET", &uri), Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers.get("openai-poll-after-ms").is_none(),
        "a finished job needs no polling"
    );
    let finished = view(&body);
    assert_eq!(
        (finished.status, finished.progress),
        (VideoStatus::Completed, 100)
    );
    assert!(finished.completed_at.is_some());

    let content = format!("{uri}/content");
    for (variant, bytes) in [
        ("thumbnail", common::THUMBNAIL),
        ("spritesheet", common::SPRITESHEET),
    ] {
        let (status, headers, body) = client
            .send(
                client.request("GET", &format!("{content}?variant={variant}")),
                Body::empty(),
            )
            .await;
        assert_eq!(
            (status, headers[header::CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, "image/jpeg")
        );
        assert_eq!(body, bytes, "{variant}");
    }
    let (status, body) = client.get(&format!("{content}?variant=gif")).await;
    assert_eq!(
        (status, error(&body).error.param.as_deref()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("variant"))
    );
    // The signed thumbnail link needs no key.
    let link = finished
        .links
        .signed_thumbnail
        .expect("a signed thumbnail link");
    let (status, _, body) = common::send(
        &client.gateway.state,
        Request::get(&link).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, common::THUMBNAIL)
    );

    let (_, headers, _) = client
        .send(client.request("GET", &content), Body::empty())
        .await;
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let (status, _, body) = client
        .send(
            client
                .request("GET", &content)
                .header(header::IF_NONE_MATCH, &etag),
            Body::empty(),
        )
        .await;
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    for (range, if_range, expected) in [
        (
            "bytes=0-9",
            Some(etag.as_str()),
            StatusCode::PARTIAL_CONTENT,
        ),
        ("bytes=0-9", Some("\"another\""), StatusCode::OK),
        ("items=0-9", None, StatusCode::OK),
        ("", None, StatusCode::OK),
    ] {
        let mut request = client.request("GET", &content).header(header::RANGE, range);
        if let Some(tag) = if_range {
            request = request.header(header::IF_RANGE, tag);
        }
        let (status, _, body) = client.send(request, Body::empty()).await;
        assert_eq!(status, expected, "{range} {if_range:?}");
        if status == StatusCode::OK {
            assert_eq!(body, video);
        }
    }

    // A video replaced in the object store (any node may write objects) is not served: its
    // digest is not the hash the record keeps.
    let object = format!("{}/1", job.id);
    client
        .gateway
        .resources
        .videos
        .put(
            object.as_str(),
            &mut std::io::Cursor::new(b"forged".to_vec()),
        )
        .await
        .unwrap();
    let (status, body) = client.get(&content).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error(&body).error.code, protocol::ErrorCode::Internal);
}

#[tokio::test]
async fn other_methods_on_the_probes_answer_with_our_error_body() {
    let client = Client::new().await;
    for (method, uri) in [
        ("TRACE", "/v1/videos/x/content"),
        ("PATCH", "/v1/videos"),
        ("POST", "/healthz"),
        ("DELETE", "/readyz"),
        ("PUT", "/metrics"),
    ] {
        let (status, _, body) = client
            .send(client.request(method, uri), Body::empty())
            .await;
        let detail = error(&body).error;
        assert_eq!(
            (status, detail.code),
            (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed),
            "{method} {uri}"
        );
        assert!(detail.message.contains(uri), "{}", detail.message);
    }
}

#[tokio::test]
async fn the_seed_endpoints_answer_as_the_seed_did() {
    let client = Client::new().await;
    let (status, body) = client
        .json(
            "POST",
            "/generate-video",
            r#"{"prompt":"a fox","duration":2,"fps":24,"resolution":"720p"}"#,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let job: gateway::routes::seed::SeedJob = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (job.status.as_str(), job.prompt.as_str()),
        ("queued", "a fox")
    );
    let (status, body) = client.get(&format!("/v1/videos/{}", job.job_id)).await;
    assert_eq!(status, StatusCode::OK);
    let video = view(&body);
    assert_eq!((video.size.as_str(), video.fps), ("1280x720", 24));

    let (status, body) = client
        .json(
            "POST",
            "/generate-video",
            r#"{"prompt":"a fox","resolution":"1080p"}"#,
        )
        .await;
    let detail = error(&body).error;
    assert_eq!(
        (status, detail.code),
        (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::JobTooLarge)
    );
    assert!(detail.message.contains("720p"), "{}", detail.message);

    let done = client.assign(&client.stored("acme", now_ms()).await).await;
    common::succeed(&client.gateway.resources, done.id, b"the mp4").await;
    let (status, body) = client.get(&format!("/jobs/{}", done.id)).await;
    assert_eq!(status, StatusCode::OK);
    let seen: gateway::routes::seed::SeedJob = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.status, "completed");
    let url = seen.video_url.expect("a completed job has its video's URL");
    let (status, body) = client.get(&url).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"the mp4"[..]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = client.get("/jobs").await;
        assert_eq!(status, StatusCode::OK);
        let jobs: gateway::routes::seed::SeedJobs = serde_json::from_slice(&body).unwrap();
        if jobs.jobs.len() == 2 {
            assert_eq!(jobs.jobs[0].job_id, done.id, "newest first");
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", jobs.jobs);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, body) = common::send(
        &client.gateway.state,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &br#"{"status":"ok"}"#[..])
    );
    let (status, _, _) = common::send(
        &client.gateway.state,
        Request::get("/jobs").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn files_are_removed_when_the_retention_runs_out() {
    let mut config = Config::for_test();
    config.retention.files_s = 1;
    config.retention.sweep_interval_ms = 100;
    let client = Client::with(config).await;
    let resources = &client.gateway.resources;
    let job = client.assign(&client.stored("acme", now_ms()).await).await;
    let done = common::succeed(resources, job.id, b"mp4").await;
    let uri = format!("/v1/videos/{}", job.id);
    let (_, body) = client.get(&uri).await;
    let expires_at = view(&body)
        .expires_at
        .expect("a finished job says when its files go");
    assert_eq!(expires_at, done.finished_at_ms.unwrap() / 1000 + 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let marked = loop {
        let (record, _) = resources.jobs.get(job.id).await.unwrap().unwrap();
        if record.files_removed_at_ms.is_some() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the sweep never removed the files"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(marked.files_removed_at_ms.unwrap() >= expires_at * 1000);
    let video = names::video_object(&job.id.to_string(), 1);
    for name in [
        names::thumbnail_object(&video),
        names::spritesheet_object(&video),
        video,
    ] {
        assert!(
            resources.videos.get(&name).await.is_err(),
            "{name} still stored"
        );
    }
    let (status, body) = client.get(&format!("{uri}/content")).await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::GONE, ErrorCode::Expired)
    );
    // The record stays, and says so.
    let (status, body) = client.get(&uri).await;
    assert_eq!(status, StatusCode::OK);
    assert!(view(&body).files_removed_at_ms.is_some());
}

#[tokio::test]
async fn long_uris_and_large_headers_answer_with_our_error_body() {
    let client = Client::new().await;
    let long = format!("/v1/videos?after={}", "a".repeat(gateway::MAX_URI_BYTES));
    let (status, _, body) = client
        .send(client.request("GET", &long), Body::empty())
        .await;
    assert_eq!(
        (status, error(&body).error.code),
        (StatusCode::URI_TOO_LONG, ErrorCode::UriTooLong)
    );
    let big = "x".repeat(gateway::MAX_HEADER_BYTES);
    let (status, headers, body) = client
        .send(
            client.request("GET", "/v1/models").header("x-big", big),
            Body::empty(),
        )
        .await;
    assert_eq!(
        (status, error(&body).error.code),
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge
        )
    );
    assert!(headers.contains_key("x-request-id"));
    let mut many = client.request("GET", "/v1/models");
    for i in 0..=gateway::MAX_HEADERS {
        many = many.header(format!("x-h{i}"), "1");
    }
    let (status, _, _) = client.send(many, Body::empty()).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_key_whose_job_was_deleted_gets_409_not_a_job_that_never_appears() {
    let client = Client::new().await;
    let post = || {
        client
            .request("POST", "/v1/videos")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "order-1")
    };
    let (status, _, body) = client
        .send(post(), Body::from(r#"{"prompt":"a fox"}"#))
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let created: JobView = serde_json::from_slice(&body).unwrap();
    let uri = format!("/v1/videos/{}", created.id);
    let (status, _, _) = client
        .send(client.request("DELETE", &uri), Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    // The same key again: a clear refusal, not a 202 for a job that stays 404.
    let (status, _, body) = client
        .send(post(), Body::from(r#"{"prompt":"a fox"}"#))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "conflict");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("new Idempotency-Key")
    );
    assert_eq!(client.get(&uri).await.0, StatusCode::NOT_FOUND);
    // A new key makes a new job.
    let (status, _, _) = client
        .send(
            client
                .request("POST", "/v1/videos")
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", "order-2"),
            Body::from(r#"{"prompt":"a fox"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}
