//! `GET /v1/webhooks/secret`: the caller's tenant's webhook signing secret, for its
//! receivers to verify deliveries with (made on first use).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::auth::{Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::state::AppState;
use crate::webhooks::sign::secret_of;

/// The answer of `GET /v1/webhooks/secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// `whsec_<base64>`: configure a Standard Webhooks verifier with it.
    pub secret: String,
}

/// `GET /v1/webhooks/secret`: the tenant's secret (roles that may create jobs).
#[utoipa::path(
    get,
    path = "/v1/webhooks/secret",
    tag = "videos",
    responses((status = 200, body = WebhookSecret, description = "The tenant's webhook signing secret"), Errors)
)]
pub async fn secret(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<WebhookSecret>, ApiError> {
    caller.require(Action::Submit)?;
    let keys = state
        .resources
        .keys
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the secrets store is not open; retry shortly"))?;
    let secret = secret_of(keys, &caller.tenant).await.map_err(|error| {
        tracing::warn!(%error, tenant = %caller.tenant, "webhook secret unavailable");
        ApiError::unavailable("the webhook secret cannot be read now; retry shortly")
    })?;
    Ok(Json(WebhookSecret {
        secret: secret.shown(),
    }))
}
