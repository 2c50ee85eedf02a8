//! `GET /v1/models`: the one model this service serves, in OpenAI's list shape.

use axum::Json;
use protocol::api::{MODEL_ID, Model, ModelList};

use crate::auth::{Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;

/// When Genmo published Mochi-1 preview (2024-10-22), seconds since the epoch.
const MODEL_CREATED: u64 = 1_729_555_200;

/// `GET /v1/models`: `mochi-1-preview`.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses((status = 200, body = ModelList, description = "The served model"), Errors)
)]
pub async fn models(Caller(caller): Caller) -> Result<Json<ModelList>, ApiError> {
    caller.require(Action::Read)?;
    Ok(Json(ModelList {
        object: "list".to_owned(),
        data: vec![Model {
            id: MODEL_ID.to_owned(),
            object: "model".to_owned(),
            created: MODEL_CREATED,
            owned_by: "genmo".to_owned(),
        }],
    }))
}
