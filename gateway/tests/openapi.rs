//! `/openapi.json` describes exactly the routes the router serves: every operation in the
//! document is routed (not the fallback), the document lists exactly the expected
//! operations, and every schema it refers to is defined.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;

/// Every operation of the API: the contract. A route added or removed must change this.
const OPERATIONS: &[(&str, &str)] = &[
    ("delete", "/v1/admin/keys/{id}"),
    ("delete", "/v1/videos/{id}"),
    ("get", "/health"),
    ("get", "/healthz"),
    ("get", "/jobs"),
    ("get", "/jobs/{job_id}"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/readyz"),
    ("get", "/v1/admin/dead"),
    ("get", "/v1/admin/keys"),
    ("get", "/v1/backends"),
    ("get", "/v1/models"),
    ("get", "/v1/videos"),
    ("get", "/v1/videos/{id}"),
    ("get", "/v1/videos/{id}/content"),
    ("get", "/v1/videos/{id}/events"),
    ("get", "/v1/webhooks/secret"),
    ("get", "/videos/{job_id}"),
    ("post", "/generate-video"),
    ("post", "/v1/admin/dead/{id}/redrive"),
    ("post", "/v1/admin/keys"),
    ("post", "/v1/videos"),
    ("post", "/v1/videos/estimate"),
    ("post", "/v1/videos/{id}/cancel"),
    ("post", "/v1/videos/{id}/remix"),
];

fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => {
                        out.insert(target.clone());
                    }
                    _ => refs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let gateway = common::start().await;
    let (status, headers, body) = common::send(
        &gateway.state,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let document: Value = serde_json::from_slice(&body).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    let mut listed = BTreeSet::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                listed.insert((method.to_owned(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(listed, expected, "the document's operations changed");

    // Every operation is routed: never the fallback's 404 nor the wrong-method answer.
    let id = uuid::Uuid::now_v7().to_string();
    for (method, path) in &listed {
        let uri = path.replace("{id}", &id).replace("{job_id}", &id);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, _, body) = common::send(
            &gateway.state,
            Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("no such route") && !text.contains("is not allowed on"),
            "{method} {uri} is not routed: {status} {text}"
        );
    }
    // And a path the document lacks is not routed.
    let (status, _, body) = common::send(
        &gateway.state,
        Request::get("/v1/videos/x/y/z")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("no such route"));

    // Every schema referred to is defined; authenticated operations name their errors.
    let mut targets = BTreeSet::new();
    refs(&document, &mut targets);
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for target in &targets {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "{target} is not defined");
    }
    for name in ["JobView", "ErrorBody", "VideoList", "JobSpec", "ErrorCode"] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
    let create = &paths["/v1/videos"]["post"];
    for status in ["202", "401", "404", "422", "429", "503"] {
        assert!(
            create["responses"].get(status).is_some(),
            "POST /v1/videos lacks {status}"
        );
    }
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .unwrap();
    assert!(schemes.contains_key("bearer") && schemes.contains_key("signed_link"));
}
