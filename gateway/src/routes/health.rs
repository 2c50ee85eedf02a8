//! `/healthz`, `/readyz`, `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, body = String, content_type = "text/plain", description = "`ok` while the process runs"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the process can serve (NATS is connected).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, body = String, content_type = "text/plain", description = "`ready` while NATS is connected"),
        (status = 503, body = protocol::ErrorBody, description = "NATS is not connected")
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    nats_ready(&state.client)
}

/// `ready` while `client` is connected to NATS, else 503 `unavailable` saying its state.
pub fn nats_ready(client: &async_nats::Client) -> Response {
    match client.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ready").into_response(),
        other => ApiError::unavailable(format!("NATS connection is {other}")).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, body = String, content_type = "text/plain", description = "Prometheus text format"),
        (status = 404, body = protocol::ErrorBody, description = "No metrics recorder in this process")
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<String, ApiError> {
    let handle = state.metrics.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "metrics are not enabled in this process",
        )
    })?;
    handle.run_upkeep();
    Ok(handle.render())
}
