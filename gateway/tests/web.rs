//! The web page's routes: the page and its assets without a credential, with their security
//! headers and validators; the page settings; unknown assets answer our error body.
#![allow(clippy::unwrap_used, clippy::large_futures)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::Config;
use gateway::routes::web::{CONTENT_SECURITY_POLICY, PageSettings};

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_need_no_key_and_carry_strict_headers() {
    let gateway = common::start_with_auth(Config::for_test()).await;
    let state = &gateway.state;
    let (status, headers, body) = common::send(state, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        CONTENT_SECURITY_POLICY
    );
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains(r#"<script type="module" src="/ui/app.js"></script>"#));

    for (asset, kind) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = common::send(state, get(asset)).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert_eq!(headers[header::CONTENT_TYPE], kind, "{asset}");
        assert!(!body.is_empty());
        // Unchanged: 304 without a body.
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let request = Request::get(asset)
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = common::send(state, request).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{asset}");
        assert_eq!(headers[header::ETAG], etag.as_str());
        assert!(body.is_empty());
    }

    // Only the embedded files: a path that climbs is no asset (and, as any unknown route
    // without a key, 401 with our body).
    let (status, headers, body) = common::send(state, get("/ui/../Cargo.toml")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "unauthorized");
    let (status, _, body) = common::send(state, get("/ui/nothing.js")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("open /")
    );
}

#[tokio::test]
async fn the_page_settings_say_whether_a_key_is_needed() {
    let with_auth = common::start_with_auth(Config::for_test()).await;
    let (status, headers, body) = common::send(&with_auth.state, get("/ui/config.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let settings: PageSettings = serde_json::from_slice(&body).unwrap();
    assert!(settings.auth);

    let open = common::start().await;
    let (_, _, body) = common::send(&open.state, get("/ui/config.json")).await;
    let settings: PageSettings = serde_json::from_slice(&body).unwrap();
    assert!(!settings.auth);
}
