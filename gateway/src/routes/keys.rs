//! `/v1/admin/keys`: list, create and revoke API keys (admin credentials only). The key
//! itself is in the creation's answer and nowhere else.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::{ErrorCode, TenantId};
use serde::{Deserialize, Serialize};

use crate::auth::keys::{ApiKeyRecord, KeyError, KeyStore};
use crate::auth::{AUDIT, Action, Caller, Role, parse_duration};
use crate::error::ApiError;
use crate::routes::request::json_body;
use crate::state::AppState;

/// A key as listed: everything but its hash and the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    /// The key's id (`key_…`).
    pub id: String,
    /// Its first characters.
    pub shown: String,
    /// Its tenant.
    pub tenant: String,
    /// Its role.
    pub role: Role,
    /// Its name.
    pub name: String,
    /// Made at, ms since the epoch.
    pub created_at_ms: u64,
    /// Stops working at, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Revoked at, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    /// Last authenticated a request at (to within a minute), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<u64>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(record: ApiKeyRecord) -> Self {
        Self {
            id: record.id,
            shown: record.shown,
            tenant: record.tenant.to_string(),
            role: record.role,
            name: record.name,
            created_at_ms: record.created_at_ms,
            expires_at_ms: record.expires_at_ms,
            revoked_at_ms: record.revoked_at_ms,
            last_used_at_ms: record.last_used_at_ms,
        }
    }
}

/// `GET /v1/admin/keys` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    /// Every key, oldest first.
    pub keys: Vec<KeyView>,
}

/// `POST /v1/admin/keys` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The tenant the key acts for.
    pub tenant: String,
    /// `admin`, `submitter` or `viewer`.
    pub role: String,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// Lifetime like `90d` or `12h` (default: no expiry).
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// `POST /v1/admin/keys` answer: the key, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key itself; store it now, it cannot be shown again.
    pub key: String,
    /// What is stored.
    #[serde(flatten)]
    pub view: KeyView,
}

fn store(state: &AppState) -> Result<KeyStore, ApiError> {
    state
        .resources
        .keys
        .clone()
        .map(KeyStore::new)
        .ok_or_else(|| {
            ApiError::unavailable("the key store is not open on this gateway; retry shortly")
        })
}

fn store_error(error: KeyError) -> ApiError {
    match error {
        KeyError::NotFound(_) => ApiError::new(ErrorCode::NotFound, error.to_string()),
        KeyError::Store(_) => {
            tracing::warn!(%error, "key store unreachable");
            ApiError::unavailable("the key store is unreachable; retry shortly")
        }
        other => ApiError::internal("key store", &other),
    }
}

/// `GET /v1/admin/keys`: every key of every tenant (never the keys themselves).
#[utoipa::path(
    get,
    path = "/v1/admin/keys",
    tag = "admin",
    responses((status = 200, body = KeyList, description = "Every key, without its secret"), crate::openapi::Errors)
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<KeyList>, ApiError> {
    caller.require(Action::Admin)?;
    let keys = store(&state)?.list().await.map_err(store_error)?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// `POST /v1/admin/keys`: makes a key; 201 with the key, shown this once.
#[utoipa::path(
    post,
    path = "/v1/admin/keys",
    tag = "admin",
    request_body(content = CreateKey, content_type = "application/json"),
    responses((status = 201, body = CreatedKey, description = "The key, shown this once"), crate::openapi::Errors)
)]
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Action::Admin)?;
    let body = json_body(&headers, body, state.config.max_body_bytes)?;
    let request: CreateKey = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "send {{\"tenant\": \"…\", \"role\": \"admin|submitter|viewer\", \"name\": \"…\", \"expires_in\": \"90d\"}}: {}",
                error.to_string().split(" at line ").next().unwrap_or_default()
            ),
        )
    })?;
    let tenant = TenantId::new(request.tenant.as_str())
        .map_err(|e| ApiError::field(ErrorCode::InvalidField, e.to_string(), "tenant"))?;
    let role: Role = request
        .role
        .parse()
        .map_err(|e: String| ApiError::field(ErrorCode::InvalidField, e, "role"))?;
    let expires_in = request
        .expires_in
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::field(ErrorCode::InvalidField, e, "expires_in"))?;
    if request.name.len() > 200 {
        return Err(ApiError::field(
            ErrorCode::InvalidField,
            "name must be at most 200 bytes",
            "name",
        ));
    }
    let created = store(&state)?
        .create(tenant, role, &request.name, expires_in)
        .await
        .map_err(store_error)?;
    tracing::info!(target: AUDIT, event = "admin_key_created", key_id = %created.record.id, by = %caller.id, "key created through the admin API");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: created.secret,
            view: created.record.into(),
        }),
    )
        .into_response())
}

/// `DELETE /v1/admin/keys/{id}`: revokes a key (every replica refuses it within seconds).
#[utoipa::path(
    delete,
    path = "/v1/admin/keys/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, body = KeyView, description = "The key, revoked"), crate::openapi::Errors)
)]
pub async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require(Action::Admin)?;
    // Anything that is not a readable id names no key.
    let Ok(Path(id)) = id else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no such API key; `mochi keys list` or GET /v1/admin/keys shows the ids",
        ));
    };
    let record = store(&state)?.revoke(&id).await.map_err(store_error)?;
    tracing::info!(target: AUDIT, event = "admin_key_revoked", key_id = %record.id, by = %caller.id, "key revoked through the admin API");
    Ok(Json(record.into()))
}
