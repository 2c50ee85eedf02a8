//! `GET /v1/backends`: which backends (and models) the live GPU nodes run, read from their
//! heartbeats in `mochi_nodes`, so clients can tell a real model from a test setup.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use futures::StreamExt;
use protocol::api::{BackendView, BackendsView};
use protocol::codec;
use protocol::messages::NodeHeartbeat;

use crate::auth::{Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::state::AppState;

/// Most heartbeats read for one answer.
const MAX_NODES: usize = 1024;

/// `GET /v1/backends`.
#[utoipa::path(
    get,
    path = "/v1/backends",
    tag = "fleet",
    responses((status = 200, body = protocol::api::BackendsView, description = "What the live GPU nodes run"), Errors)
)]
pub async fn backends(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<BackendsView>, ApiError> {
    caller.require(Action::Read)?;
    let nodes = &state.resources.nodes;
    let unavailable = |what: &str| {
        ApiError::unavailable(format!(
            "cannot read the node heartbeats ({what}); retry shortly"
        ))
    };
    let mut keys = nodes.keys().await.map_err(|_| unavailable("keys"))?;
    let mut by_backend: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut read = 0;
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        read += 1;
        if read > MAX_NODES {
            break;
        }
        let Ok(Some(bytes)) = nodes.get(&key).await else {
            continue;
        };
        // A heartbeat this build cannot read (another version) is skipped, not an error.
        let Ok(beat) = codec::decode::<NodeHeartbeat>(&bytes) else {
            continue;
        };
        let entry = by_backend.entry(beat.backend).or_default();
        entry.0 += 1;
        entry.1 += u32::try_from(beat.slots.len()).unwrap_or(u32::MAX);
    }
    let mut backends: Vec<BackendView> = by_backend
        .into_iter()
        .map(|(backend, (nodes, slots))| BackendView {
            backend,
            nodes,
            slots,
        })
        .collect();
    backends.sort_by(|a, b| {
        b.slots
            .cmp(&a.slots)
            .then_with(|| a.backend.cmp(&b.backend))
    });
    Ok(Json(BackendsView { backends }))
}
