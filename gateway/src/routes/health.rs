//! `/healthz`, `/readyz`, `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the process can serve (NATS is connected).
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.client.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ready").into_response(),
        other => ApiError::unavailable(format!("NATS connection is {other}")).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<String, ApiError> {
    let handle = state.metrics.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "metrics are not enabled in this process",
        )
    })?;
    handle.run_upkeep();
    Ok(handle.render())
}
