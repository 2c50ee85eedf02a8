//! `GET /v1/videos/{id}/content`: the MP4 from the object store, whole or one byte range.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{ErrorCode, JobState};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use serde::Deserialize;

use crate::auth::signing::{LinkError, VARIANT_VIDEO};
use crate::auth::{AUDIT, Action, Caller};
use crate::error::ApiError;
use crate::routes::videos::{JobPath, any_entry, tenant_record};
use crate::state::AppState;

/// The query of a signed link.
#[derive(Debug, Default, Deserialize)]
pub struct LinkQuery {
    /// Expiry, seconds since the epoch.
    pub exp: Option<String>,
    /// `<key id>.<hex HMAC>`.
    pub sig: Option<String>,
    /// What the link is for (default `video`).
    pub variant: Option<String>,
}

/// `GET /v1/videos/{id}/content`: the MP4, with single-range requests so players can seek.
///
/// 409 `not_ready` (naming the state) until the job has succeeded; 409 `conflict` for a job
/// that ended without a video.
///
/// With `sig` in the query it needs no credentials: the link's signature and expiry decide
/// (403 with a sentence when expired, altered, or its job is gone).
pub async fn content(
    State(state): State<AppState>,
    caller: Option<Caller>,
    JobPath(job_id): JobPath,
    query: Result<Query<LinkQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the query string cannot be read: {rejection}"),
        )
    })?;
    let record = if query.sig.is_some() {
        signed_record(&state, job_id, &query).await?
    } else {
        let Some(Caller(caller)) = caller else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "send an API key as `Authorization: Bearer <key>`, or use the signed link of GET /v1/videos/{id}",
            ));
        };
        caller.require(Action::Read)?;
        tenant_record(&state, &caller, job_id).await?
    };
    let Some(record) = record else {
        return Err(ApiError::job_not_found(job_id));
    };
    let result = match (&record.state, &record.result) {
        (JobState::Succeeded, Some(result)) => result.clone(),
        (job_state, _) if job_state.is_terminal() => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {job_id} ended {job_state} and has no video"),
            ));
        }
        (job_state, _) => {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                format!(
                    "job {job_id} is {job_state}; the video is ready once the job has succeeded"
                ),
            ));
        }
    };
    let mut object = state
        .resources
        .videos
        .get(&result.object_name)
        .await
        .map_err(|e| ApiError::internal("open video object", &e))?;
    // The stored object is the authority on the length (Content-Length must be exact).
    let size = u64::try_from(object.info.size).unwrap_or(u64::MAX);
    if size != result.size_bytes {
        tracing::warn!(%job_id, stored = size, recorded = result.size_bytes, "video object size differs from its record");
    }
    let common = [
        (header::CONTENT_TYPE, "video/mp4".to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, format!("\"{}\"", result.sha256)),
        (
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{job_id}.mp4\""),
        ),
    ];
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some(range) = range else {
        let body = Body::from_stream(ReaderStream::new(object));
        return Ok((
            StatusCode::OK,
            common,
            [(header::CONTENT_LENGTH, size.to_string())],
            body,
        )
            .into_response());
    };
    let Some((start, end)) = parse_range(range, size) else {
        return Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [
                (header::CONTENT_RANGE, format!("bytes */{size}")),
                (header::ACCEPT_RANGES, "bytes".to_owned()),
            ],
        )
            .into_response());
    };
    // The object store reads front to back: skip to `start` without holding the skipped bytes.
    let skipped = tokio::io::copy(&mut (&mut object).take(start), &mut tokio::io::sink())
        .await
        .map_err(|e| ApiError::internal("read video object", &e))?;
    if skipped != start {
        return Err(ApiError::internal(
            "read video object",
            &format!("object ended after {skipped} of {start} bytes"),
        ));
    }
    let length = end - start + 1;
    let body = Body::from_stream(ReaderStream::new(object.take(length)));
    Ok((
        StatusCode::PARTIAL_CONTENT,
        common,
        [
            (header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Parses one `bytes=` range against `size` into inclusive `(start, end)`; `None` when it is
/// unsatisfiable, malformed or more than one range (answered 416).
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let last_byte = size - 1;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let length: u64 = suffix.parse().ok()?;
            if length == 0 {
                return None;
            }
            (size.saturating_sub(length), last_byte)
        }
        (start, "") => (start.parse().ok()?, last_byte),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(last_byte)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// The record a signed link names, once its signature and expiry hold.
async fn signed_record(
    state: &AppState,
    job_id: protocol::JobId,
    query: &LinkQuery,
) -> Result<Option<protocol::JobRecord>, ApiError> {
    let variant = query.variant.as_deref().unwrap_or(VARIANT_VIDEO);
    let refuse = |error: LinkError| {
        tracing::info!(target: AUDIT, event = "signed_link_refused", %job_id, reason = ?error, "signed link refused");
        ApiError::new(
            ErrorCode::Forbidden,
            format!("{error}; use the link GET /v1/videos/{job_id} gives now, exactly as given"),
        )
    };
    if variant != VARIANT_VIDEO {
        return Err(refuse(LinkError::Malformed));
    }
    let Some(signer) = state.links.get() else {
        return Err(ApiError::unavailable(
            "signed links are not loaded yet; retry shortly",
        ));
    };
    signer
        .verify(
            job_id,
            variant,
            query.exp.as_deref(),
            query.sig.as_deref(),
            protocol::now_ms() / 1000,
        )
        .map_err(refuse)?;
    match any_entry(state, job_id).await? {
        Some((record, _)) => Ok(Some(record)),
        None => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("job {job_id} of this download link no longer exists"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_and_clamped() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-5000", 1000), Some((0, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(parse_range("bytes=999-999", 1000), Some((999, 999)));
    }

    #[test]
    fn unsatisfiable_or_unsupported_ranges_are_refused() {
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-2", 1000), None);
        assert_eq!(parse_range("bytes=-0", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=a-b", 1000), None);
        assert_eq!(parse_range("bytes=-", 1000), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
        assert_eq!(
            parse_range("bytes=18446744073709551615-", u64::MAX),
            None,
            "start == size"
        );
    }
}
