//! Authentication and isolation against a real nats-server: every credential state × every
//! API route, cross-tenant attempts, rate limits, quotas and signed links.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use gateway::auth::Role;
use gateway::auth::keys::KeyStore;
use gateway::{AppState, Config};
use http_body_util::BodyExt;
use protocol::api::JobView;
use protocol::record::Lease;
use protocol::{
    ErrorBody, ErrorCode, JobEvent, JobId, JobRecord, JobSpec, JobState, Limits, NodeId, TenantId,
    now_ms,
};
use tower::ServiceExt;

async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = gateway::app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body.to_vec())
}

fn request(method: &str, uri: &str, auth: Option<&str>, body: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

/// `GET uri` with `key`.
async fn get(state: &AppState, uri: &str, key: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    send(state, request("GET", uri, Some(&bearer(key)), None)).await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn error_code(body: &[u8]) -> ErrorCode {
    serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_else(|_| panic!("not our error body: {}", String::from_utf8_lossy(body)))
        .error
        .code
}

/// A job of `tenant` stored as the intake writes it, then (optionally) run to success with
/// a video in the object store.
async fn stored_job(state: &AppState, tenant: &str, succeeded: bool) -> JobRecord {
    let spec = JobSpec::new("x");
    let shape = spec.validate(&Limits::default()).unwrap();
    let record = JobRecord::queued(
        JobId::new(),
        TenantId::new(tenant).unwrap(),
        spec,
        shape,
        1,
        3,
        now_ms(),
    );
    let jobs = &state.resources.jobs;
    jobs.create(&record).await.unwrap();
    if !succeeded {
        return record;
    }
    let lease = Lease {
        node: NodeId::new("n1").unwrap(),
        slot: 0,
        deadline_ms: now_ms() + 60_000,
    };
    jobs.apply(record.id, &JobEvent::Assigned { lease }, now_ms())
        .await
        .unwrap();
    let video: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    common::succeed(&state.resources, record.id, &video).await
}

/// Waits until `state` sees the key revoked.
async fn wait_revoked(state: &AppState, key: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let record = state.auth.keys().lookup(key).unwrap();
        if record.revoked_at_ms.is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "revocation never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn every_credential_state_on_every_route() {
    let gateway = common::start_with_auth(Config::for_test()).await;
    let state = &gateway.state;
    let admin = common::key(state, "acme", Role::Admin).await;
    let submitter = common::key(state, "acme", Role::Submitter).await;
    let viewer = common::key(state, "acme", Role::Viewer).await;
    let revoked = common::key(state, "acme", Role::Admin).await;
    let store = KeyStore::new(gateway.resources.keys.clone().unwrap());
    let revoked_id = state.auth.keys().lookup(&revoked).unwrap().id;
    store.revoke(&revoked_id).await.unwrap();
    let took = wait_revoked(state, &revoked).await;
    assert!(took < Duration::from_secs(2), "revocation took {took:?}");
    let expired = store
        .create(
            TenantId::new("acme").unwrap(),
            Role::Admin,
            "short",
            Some(Duration::from_millis(1)),
        )
        .await
        .unwrap()
        .secret;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(state.auth.keys().lookup(&expired).is_some());

    let job = stored_job(state, "acme", true).await.id;
    let victim_key = common::key(state, "acme", Role::Viewer).await;
    let victim_key_id = state.auth.keys().lookup(&victim_key).unwrap().id;
    let routes: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "POST",
            "/v1/videos".into(),
            Some(r#"{"prompt":"a fox"}"#),
            "submit",
        ),
        ("GET", format!("/v1/videos/{job}"), None, "read"),
        ("GET", format!("/v1/videos/{job}/content"), None, "read"),
        ("GET", "/v1/backends".into(), None, "read"),
        ("GET", "/v1/admin/dead".into(), None, "admin"),
        ("GET", "/v1/admin/dead?limit=lots".into(), None, "admin"),
        (
            "POST",
            format!("/v1/admin/dead/{job}/redrive"),
            None,
            "admin",
        ),
        ("GET", "/v1/admin/keys".into(), None, "admin"),
        (
            "POST",
            "/v1/admin/keys".into(),
            Some(r#"{"tenant":"acme","role":"viewer","name":"matrix"}"#),
            "admin",
        ),
        ("DELETE", "/v1/admin/keys/key_nope".into(), None, "admin"),
        ("DELETE", "/v1/admin/keys/%FF%FE".into(), None, "admin"),
        ("GET", "/v1/no-such-route".into(), None, "read"),
        ("GET", "/v1/videos".into(), None, "read"),
        ("GET", "/v1/videos?limit=0".into(), None, "read"),
        ("GET", format!("/v1/videos/{job}/events"), None, "read"),
        (
            "GET",
            format!("/v1/videos/{job}/content?variant=thumbnail"),
            None,
            "read",
        ),
        ("GET", "/v1/models".into(), None, "read"),
        // A bad field: answered without a coordinator (none runs here).
        (
            "POST",
            "/v1/videos/estimate".into(),
            Some(r#"{"prompt":"a fox","steps":0}"#),
            "read",
        ),
        ("POST", format!("/v1/videos/{job}/cancel"), None, "cancel"),
        (
            "POST",
            format!("/v1/videos/{job}/remix"),
            Some(r#"{"prompt":"a fox at night"}"#),
            "submit",
        ),
        ("GET", "/v1/webhooks/secret".into(), None, "submit"),
        (
            "POST",
            "/generate-video".into(),
            Some(r#"{"prompt":"a fox"}"#),
            "submit",
        ),
        ("GET", "/jobs".into(), None, "read"),
        ("GET", format!("/jobs/{job}"), None, "read"),
        ("GET", format!("/videos/{job}"), None, "read"),
        // Last: it deletes the job the routes above use.
        ("DELETE", format!("/v1/videos/{job}"), None, "cancel"),
    ];
    let refused_401: Vec<(String, Option<String>)> = vec![
        ("none".into(), None),
        ("revoked".into(), Some(bearer(&revoked))),
        ("expired".into(), Some(bearer(&expired))),
        ("malformed".into(), Some("Basic abc".into())),
        ("empty bearer".into(), Some("Bearer ".into())),
        (
            "unknown key".into(),
            Some(bearer(&format!("mk_live_{}", "A".repeat(43)))),
        ),
        ("not a key".into(), Some(bearer("hello"))),
    ];
    for (method, uri, body, _) in &routes {
        for (what, auth) in &refused_401 {
            let (status, _, response) =
                send(state, request(method, uri, auth.as_deref(), *body)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} {method} {uri}");
            assert_eq!(error_code(&response), ErrorCode::Unauthorized);
        }
    }
    let roles = [
        (
            "admin",
            &admin,
            ["read", "submit", "cancel", "admin"].as_slice(),
        ),
        (
            "submitter",
            &submitter,
            ["read", "submit", "cancel"].as_slice(),
        ),
        ("viewer", &viewer, ["read"].as_slice()),
    ];
    for (role, key, allowed) in roles {
        for (method, uri, body, action) in &routes {
            let (status, _, response) =
                send(state, request(method, uri, Some(&bearer(key)), *body)).await;
            if allowed.contains(action) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{role} {method} {uri}: {status}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {uri}");
                assert_eq!(error_code(&response), ErrorCode::Forbidden);
            }
            if status.is_client_error() || status.is_server_error() {
                error_code(&response);
                assert!(!status.is_server_error(), "{role} {method} {uri}: {status}");
            }
        }
    }
    // The keys themselves never come back from the list.
    let (_, _, listed) = get(state, "/v1/admin/keys", &admin).await;
    let listed = String::from_utf8_lossy(&listed);
    assert!(listed.contains(&victim_key_id));
    for key in [&admin, &submitter, &viewer, &victim_key] {
        assert!(!listed.contains(key.as_str()));
        assert!(!listed.contains(&gateway::auth::keys::hash_key(key)));
    }
}

#[tokio::test]
async fn another_tenants_job_is_404_on_every_route_and_left_alone() {
    let gateway = common::start_with_auth(Config::for_test()).await;
    let state = &gateway.state;
    let owner = common::key(state, "acme", Role::Admin).await;
    let intruder = common::key(state, "globex", Role::Admin).await;
    let done = stored_job(state, "acme", true).await;
    let queued = stored_job(state, "acme", false).await;
    for (method, uri) in [
        ("GET", format!("/v1/videos/{}", done.id)),
        ("GET", format!("/v1/videos/{}/content", done.id)),
        (
            "GET",
            format!("/v1/videos/{}/content?variant=spritesheet", done.id),
        ),
        ("GET", format!("/v1/videos/{}/events", done.id)),
        ("POST", format!("/v1/videos/{}/remix", done.id)),
        ("GET", format!("/jobs/{}", done.id)),
        ("GET", format!("/videos/{}", done.id)),
        ("DELETE", format!("/v1/videos/{}", done.id)),
        ("POST", format!("/v1/videos/{}/cancel", queued.id)),
        ("DELETE", format!("/v1/videos/{}", queued.id)),
        ("GET", format!("/v1/videos/{}", queued.id)),
    ] {
        let json = (method == "POST").then_some(r#"{"prompt":"x"}"#);
        let (status, _, body) =
            send(state, request(method, &uri, Some(&bearer(&intruder)), json)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
        let missing = format!("/v1/videos/{}", JobId::new());
        let (_, _, missing_body) = get(state, &missing, &intruder).await;
        assert_eq!(error_code(&body), error_code(&missing_body));
    }
    let (record, _) = gateway
        .resources
        .jobs
        .get(queued.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.state,
        JobState::Queued,
        "the intruder's cancel changed the job"
    );
    let (kept, _) = gateway.resources.jobs.get(done.id).await.unwrap().unwrap();
    assert!(
        kept.deleted_at_ms.is_none() && !kept.spec.prompt.is_empty(),
        "the intruder's delete touched the job"
    );
    // The owner still sees both, and an idempotency key means something per tenant only.
    let (status, _, _) = get(state, &format!("/v1/videos/{}", done.id), &owner).await;
    assert_eq!(status, StatusCode::OK);
    let submit = |key: &str| {
        Request::post("/v1/videos")
            .header(header::AUTHORIZATION, bearer(key))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "shared-key")
            .body(Body::from(r#"{"prompt":"secret plans"}"#))
            .unwrap()
    };
    let (status, _, body) = send(state, submit(&owner)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first: JobView = serde_json::from_slice(&body).unwrap();
    let (status, _, body) = send(state, submit(&intruder)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let second: JobView = serde_json::from_slice(&body).unwrap();
    assert_ne!(first.id, second.id, "two tenants' equal keys named one job");
}

#[tokio::test]
async fn creates_are_rate_limited_per_key_with_headers() {
    let mut config = Config::for_test();
    config.rate_limit.creates_per_minute = 3;
    let gateway = common::start_with_auth(config).await;
    let state = &gateway.state;
    let key = common::key(state, "acme", Role::Submitter).await;
    let other = common::key(state, "acme", Role::Submitter).await;
    let post = |key: &str| {
        request(
            "POST",
            "/v1/videos",
            Some(&bearer(key)),
            Some(r#"{"prompt":"x"}"#),
        )
    };
    for left in [2, 1, 0] {
        let (status, headers, _) = send(state, post(&key)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(headers["ratelimit-limit"], "3");
        assert_eq!(headers["ratelimit-remaining"], left.to_string());
    }
    let (status, headers, body) = send(state, post(&key)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), ErrorCode::RateLimited);
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(headers["ratelimit-remaining"], "0");
    // Reads and other keys are not held back.
    let (status, _, _) = get(state, "/v1/backends", &key).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(state, post(&other)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_tenant_over_its_quota_gets_429_until_a_job_ends() {
    let mut config = Config::for_test();
    config.quota.max_active_jobs = 2;
    config.quota.tenants.insert("vip".into(), 10);
    let gateway = common::start_with_auth(config).await;
    let state = &gateway.state;
    let acme = common::key(state, "acme", Role::Submitter).await;
    let vip = common::key(state, "vip", Role::Submitter).await;
    let post = |key: &str| {
        request(
            "POST",
            "/v1/videos",
            Some(&bearer(key)),
            Some(r#"{"prompt":"x"}"#),
        )
    };
    let keyed = || {
        let mut request = post(&acme);
        request
            .headers_mut()
            .insert("idempotency-key", "order-1".parse().unwrap());
        request
    };
    let mut ids = Vec::new();
    for request in [post(&acme), keyed()] {
        let (status, _, body) = send(state, request).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(serde_json::from_slice::<JobView>(&body).unwrap().id);
    }
    // At the quota, a repeated key is the job it made, not a refusal.
    let (status, _, body) = send(state, keyed()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(serde_json::from_slice::<JobView>(&body).unwrap().id, ids[1]);
    let (status, _, body) = send(state, post(&acme)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), ErrorCode::QuotaExceeded);
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .unwrap()
        .error
        .message;
    assert!(message.contains("limit is 2"), "{message}");
    for _ in 0..3 {
        let (status, _, _) = send(state, post(&vip)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "the override of tenant vip");
    }
    // Cancelling one frees a place once the record says so.
    let (status, _, _) = send(
        state,
        request(
            "DELETE",
            &format!("/v1/videos/{}", ids[0]),
            Some(&bearer(&acme)),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = send(state, post(&acme)).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled job still counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn signed_links_work_without_a_key_until_they_expire() {
    let gateway = common::start_with_auth(Config::for_test()).await;
    let state = &gateway.state;
    let key = common::key(state, "acme", Role::Viewer).await;
    let job = stored_job(state, "acme", true).await;
    let (status, _, body) = get(state, &format!("/v1/videos/{}", job.id), &key).await;
    assert_eq!(status, StatusCode::OK);
    let view: JobView = serde_json::from_slice(&body).unwrap();
    let link = view
        .links
        .signed_content
        .expect("a signed link once succeeded");
    let expires = view.links.signed_content_expires_at.unwrap();
    let now_s = now_ms() / 1000;
    assert!(
        (now_s + 3_590..=now_s + 3_610).contains(&expires),
        "expiry {expires}"
    );

    let (status, _, body) = send(state, request("GET", &link, None, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 5_000);
    let ranged = Request::get(&link)
        .header(header::RANGE, "bytes=100-199")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(state, ranged).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body.len(), 100);

    let signer = state.links.get().unwrap();
    let stale = signer.sign(job.id, "video", now_s - 1).unwrap();
    let altered_exp = link.replace(
        &format!("exp={expires}"),
        &format!("exp={}", expires + 3_600),
    );
    let other_job = stored_job(state, "acme", true).await;
    let swapped = link.replace(&job.id.to_string(), &other_job.id.to_string());
    let mut tampered_sig = link.clone();
    let last = tampered_sig.pop().unwrap();
    tampered_sig.push(if last == '0' { '1' } else { '0' });
    for (what, uri, needle) in [
        (
            "expired",
            format!(
                "/v1/videos/{}/content?exp={}&sig={stale}",
                job.id,
                now_s - 1
            ),
            "expired",
        ),
        ("altered expiry", altered_exp, "signature"),
        ("other job", swapped, "signature"),
        ("altered signature", tampered_sig, "signature"),
        (
            "no expiry",
            format!("/v1/videos/{}/content?sig=x", job.id),
            "malformed",
        ),
    ] {
        let (status, _, body) = send(state, request("GET", &uri, None, None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        let detail = serde_json::from_slice::<ErrorBody>(&body).unwrap().error;
        assert_eq!(detail.code, ErrorCode::Forbidden);
        assert!(
            detail.message.contains(needle),
            "{what}: {}",
            detail.message
        );
    }
    // A job since deleted: the link no longer works.
    gateway
        .resources
        .jobs
        .kv
        .delete(job.id.to_string())
        .await
        .unwrap();
    let (status, _, body) = send(state, request("GET", &link, None, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("no longer exists"));
}

#[tokio::test]
async fn an_unreadable_record_is_an_error_for_that_job_only() {
    let gateway = common::start_with_auth(Config::for_test()).await;
    let state = &gateway.state;
    let key = common::key(state, "acme", Role::Admin).await;
    let good = stored_job(state, "acme", false).await;
    let broken = JobId::new();
    gateway
        .resources
        .jobs
        .kv
        .put(broken.to_string(), b"\x07garbage".to_vec().into())
        .await
        .unwrap();
    for method in ["GET", "DELETE"] {
        let (status, _, body) = send(
            state,
            request(
                method,
                &format!("/v1/videos/{broken}"),
                Some(&bearer(&key)),
                None,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method}");
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .unwrap()
            .error
            .message;
        assert!(
            message.contains(&broken.to_string()) && message.contains("cannot be read"),
            "{message}"
        );
    }
    let (status, _, _) = get(state, &format!("/v1/videos/{}", good.id), &key).await;
    assert_eq!(status, StatusCode::OK);
}

/// A key made through one replica works at once on another whose watch has not delivered it
/// (here: a replica with no watch at all): the unknown key is read from the bucket's leader.
/// A made-up key is refused, and when the leader cannot be asked the answer is 503, not 401.
#[tokio::test]
async fn a_key_made_through_another_replica_works_at_once() {
    let (server, client, resources) = common::nats().await;
    let mut config = Config::for_test();
    config.auth.disabled = false;
    // Never started: its key cache stays empty, as a replica's does until its watch delivers.
    let replica = AppState::new(config, resources.clone(), client, None);
    let store = KeyStore::new(resources.keys.clone().unwrap());
    let made = store
        .create(TenantId::new("acme").unwrap(), Role::Viewer, "new", None)
        .await
        .unwrap();
    assert!(replica.auth.keys().lookup(&made.secret).is_none());
    let (status, _, body) = get(&replica, "/v1/videos", &made.secret).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // Now known to the replica: no second read.
    assert_eq!(
        replica.auth.keys().lookup(&made.secret).map(|r| r.id),
        Some(made.record.id.clone())
    );

    let made_up = format!("mk_live_{}", "A".repeat(43));
    let (status, _, body) = get(&replica, "/v1/videos", &made_up).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), ErrorCode::Unauthorized);

    // A revoked key read from the leader is refused as revoked.
    let revoked = store
        .create(TenantId::new("acme").unwrap(), Role::Viewer, "gone", None)
        .await
        .unwrap();
    store.revoke(&revoked.record.id).await.unwrap();
    let (status, _, body) = get(&replica, "/v1/videos", &revoked.secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        String::from_utf8_lossy(&body).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    drop(server);
    let other = format!("mk_live_{}", "B".repeat(43));
    let started = std::time::Instant::now();
    let (status, _, body) = get(&replica, "/v1/videos", &other).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(error_code(&body), ErrorCode::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The key it learnt still works without NATS for authentication (the list itself then
    // needs NATS, so only the answer's status class is checked: not 401).
    let (status, _, _) = get(&replica, "/v1/videos", &made.secret).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED);
}
