//! `GET /v1/videos`: the caller's tenant's jobs a page at a time, newest first, from the
//! gateway's index, with the filters and cursors of the query.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use protocol::api::{JobView, VideoList, VideoStatus};
use protocol::{ErrorCode, JobId};

use crate::auth::{Action, Caller, Principal};
use crate::error::ApiError;
use crate::index::PageQuery;
use crate::openapi::Errors;
use crate::routes::lookup::current_view;
use crate::state::AppState;

/// Most jobs a list page holds.
pub const MAX_PAGE: usize = 100;

/// Jobs on a list page when `limit` is absent.
pub const DEFAULT_PAGE: usize = 20;

/// The query of `GET /v1/videos`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The previous page's `last_id`.
    pub after: Option<String>,
    /// Jobs per page, 1 to [`MAX_PAGE`].
    pub limit: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    pub order: Option<String>,
    /// Only jobs with this status (`queued`, `in_progress`, `completed`, `failed`).
    pub status: Option<String>,
    /// Only jobs created at or after this time, seconds since the epoch.
    pub created_after: Option<String>,
}

impl ListQuery {
    /// Checks the query; each bad parameter is a 422 naming it.
    fn page_query(&self) -> Result<PageQuery, ApiError> {
        // An empty parameter (`?after=&limit=`) is an absent one.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let query = Self {
            after: given(&self.after),
            limit: given(&self.limit),
            order: given(&self.order),
            status: given(&self.status),
            created_after: given(&self.created_after),
        };
        query.checked()
    }

    fn checked(&self) -> Result<PageQuery, ApiError> {
        let invalid =
            |field: &str, message: String| ApiError::field(ErrorCode::InvalidField, message, field);
        let after = self
            .after
            .as_deref()
            .map(|after| {
                after.parse::<JobId>().map_err(|_| {
                    invalid(
                        "after",
                        "after must be a job id: the last_id of the previous page".to_owned(),
                    )
                })
            })
            .transpose()?;
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_PAGE).contains(limit))
                .ok_or_else(|| invalid("limit", format!("limit must be 1 to {MAX_PAGE}")))?,
        };
        let ascending = match self.order.as_deref() {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(_) => {
                return Err(invalid(
                    "order",
                    "order must be asc (oldest first) or desc (newest first)".to_owned(),
                ));
            }
        };
        let status = self
            .status
            .as_deref()
            .map(|status| {
                VideoStatus::parse(status).ok_or_else(|| {
                    invalid(
                        "status",
                        "status must be queued, in_progress, completed or failed".to_owned(),
                    )
                })
            })
            .transpose()?;
        let created_after_ms = self
            .created_after
            .as_deref()
            .map(|text| {
                text.parse::<u64>()
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .ok_or_else(|| {
                        invalid(
                            "created_after",
                            "created_after must be a time in whole seconds since the Unix epoch"
                                .to_owned(),
                        )
                    })
            })
            .transpose()?;
        Ok(PageQuery {
            after,
            limit,
            ascending,
            status,
            created_after_ms,
        })
    }
}

/// `GET /v1/videos`: one page of the caller's tenant's jobs, newest first unless
/// `order=asc`, from the in-memory index (see `crate::index`).
#[utoipa::path(
    get,
    path = "/v1/videos",
    tag = "videos",
    params(ListQuery),
    responses((status = 200, body = VideoList, description = "A page of the tenant's jobs"), Errors)
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<VideoList>, ApiError> {
    caller.require(Action::Read)?;
    let Query(query) = query.map_err(|rejection| query_error(&rejection))?;
    let (data, has_more) = page_views(&state, &caller, &query.page_query()?).await?;
    Ok(Json(VideoList {
        object: "list".to_owned(),
        first_id: data.first().map(|view| view.id),
        last_id: data.last().map(|view| view.id),
        has_more,
        data,
    }))
}

/// One page of the caller's tenant's jobs as video objects, and whether more follow.
pub(crate) async fn page_views(
    state: &AppState,
    caller: &Principal,
    query: &PageQuery,
) -> Result<(Vec<JobView>, bool), ApiError> {
    let page = state.index.page(&caller.tenant, query).map_err(|error| {
        ApiError::field(
            ErrorCode::InvalidField,
            format!("{error}: pass the last_id of a page you were given"),
            "after",
        )
    })?;
    let views =
        futures::future::join_all(page.ids.iter().map(|&id| current_view(state, caller, id))).await;
    let mut data = Vec::with_capacity(views.len());
    for view in views {
        // A job deleted since the index listed it is left out.
        if let Some(view) = view? {
            data.push(view);
        }
    }
    Ok((data, page.has_more))
}

/// A query string that does not parse: a 422 naming the parameter where serde does.
pub fn query_error(rejection: &QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let message = text
        .split_once(": ")
        .map_or(text.as_str(), |(_, detail)| detail);
    let unknown = text
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split('`').next());
    match unknown {
        Some(field) => ApiError::field(
            ErrorCode::InvalidField,
            format!("unknown query parameter {field}; see the API reference for this route's"),
            field,
        ),
        None => ApiError::new(
            ErrorCode::InvalidField,
            format!("the query string cannot be read: {message}"),
        ),
    }
}
