//! `GET /v1/videos/{id}/content`: the MP4 or a preview from the object store, whole or one
//! byte range.

use async_nats::jetstream::object_store::GetErrorKind;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{ErrorCode, JobState};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use serde::Deserialize;

use crate::auth::signing::LinkError;
use crate::auth::{AUDIT, Action, Caller};
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::routes::list::query_error;
use crate::routes::lookup::{JobPath, any_entry, tenant_record};
use crate::routes::variant::Variant;
use crate::state::AppState;

/// The query of a content request (and of a signed link).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContentQuery {
    /// Expiry, seconds since the epoch.
    pub exp: Option<String>,
    /// `<key id>.<hex HMAC>`.
    pub sig: Option<String>,
    /// `video` (the default), `thumbnail` or `spritesheet`.
    pub variant: Option<String>,
}

/// `GET /v1/videos/{id}/content?variant=video|thumbnail|spritesheet`: the MP4 (or a
/// preview, JPEG), with single-range requests so that players can seek, `ETag`,
/// `If-None-Match` (304) and `If-Range`.
///
/// 409 `not_ready` (naming the state) until the job has succeeded; 409 `conflict` for a job
/// that ended without a video.
///
/// With `sig` in the query it needs no credentials: the link's signature and expiry decide
/// (403 with a sentence when expired, altered, or its job is gone).
#[utoipa::path(
    get,
    path = "/v1/videos/{id}/content",
    tag = "videos",
    params(("id" = String, Path, description = "The job's id"), ContentQuery),
    security(("bearer" = []), ("signed_link" = [])),
    responses(
        (status = 200, description = "The MP4 (`video/mp4`) or a preview (`image/jpeg`)", content(
            (Vec<u8> = "video/mp4"),
            (Vec<u8> = "image/jpeg")
        )),
        (status = 206, description = "One byte range"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 416, description = "The range starts past the end"),
        Errors
    )
)]
pub async fn content(
    State(state): State<AppState>,
    caller: Option<Caller>,
    JobPath(job_id): JobPath,
    query: Result<Query<ContentQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| query_error(&rejection))?;
    let variant = Variant::parse(query.variant.as_deref())?;
    let record = if query.sig.is_some() {
        signed_record(&state, job_id, variant, &query).await?
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
    if let Some(removed_ms) = record.files_removed_at_ms {
        return Err(ApiError::new(
            ErrorCode::Expired,
            format!(
                "the files of job {job_id} were removed at {} (Unix seconds) when their retention ran out; make it again (POST /v1/videos/{job_id}/remix keeps its seed)",
                removed_ms / 1000
            ),
        ));
    }
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
    let etag = match variant {
        Variant::Video => format!("\"{}\"", result.sha256),
        other => format!("\"{}-{}\"", result.sha256, other.as_str()),
    };
    let common = [
        (header::CONTENT_TYPE, variant.content_type().to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, etag.clone()),
        (
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{}\"", variant.file_name(job_id)),
        ),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| etag_matches(tags, &etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let mut object = match state.resources.videos.get(&variant.object(&result)).await {
        Ok(object) => object,
        Err(error) if error.kind() == GetErrorKind::NotFound && variant != Variant::Video => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "job {job_id} has no {}: it was made by a version that made no previews",
                    variant.as_str()
                ),
            ));
        }
        Err(error) => return Err(ApiError::internal("open video object", &error)),
    };
    // Every node may write any object (object names are not subjects NATS can scope), but
    // only the lease holder could record the video's hash: a stored video whose digest is
    // not the record's was replaced, and is not served. The object reader checks the bytes
    // against that digest at the end of a whole read (a mismatch aborts the body).
    if variant == Variant::Video && !digest_is(object.info.digest.as_deref(), &result.sha256) {
        tracing::error!(target: AUDIT, event = "video_digest_mismatch", %job_id, object = %result.object_name, "a stored video differs from the hash in its record; not served");
        return Err(ApiError::internal(
            "check video object",
            &"the stored video's digest differs from its record",
        ));
    }
    // The stored object is the authority on the length (Content-Length must be exact).
    let size = u64::try_from(object.info.size).unwrap_or(u64::MAX);
    if variant == Variant::Video && size != result.size_bytes {
        tracing::warn!(%job_id, stored = size, recorded = result.size_bytes, "video object size differs from its record");
    }
    // A range applies only while the client's copy is this one (`If-Range`).
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| {
            headers
                .get(header::IF_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|tag| tag.trim() == etag)
        });
    let (start, end) = match range.map_or(RangeRequest::Whole, |r| parse_range(r, size)) {
        RangeRequest::Whole => {
            let body = Body::from_stream(ReaderStream::new(object));
            return Ok((
                StatusCode::OK,
                common,
                [(header::CONTENT_LENGTH, size.to_string())],
                body,
            )
                .into_response());
        }
        RangeRequest::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [
                    (header::CONTENT_RANGE, format!("bytes */{size}")),
                    (header::ACCEPT_RANGES, "bytes".to_owned()),
                ],
            )
                .into_response());
        }
        RangeRequest::Part(start, end) => (start, end),
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

/// Whether an object store digest (`SHA-256=<base64url>`) is the SHA-256 `hex`.
fn digest_is(digest: Option<&str>, hex: &str) -> bool {
    use base64::Engine as _;
    let Some(encoded) = digest.and_then(|d| d.strip_prefix("SHA-256=")) else {
        return false;
    };
    let trimmed = encoded.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .is_ok_and(|bytes| protocol::codec::hex(&bytes).eq_ignore_ascii_case(hex))
}

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    /// The whole body: no range we serve (another unit, several ranges, bad syntax — a
    /// server may ignore those and answer 200).
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// One well-formed byte range that lies past the end (416).
    Unsatisfiable,
}

/// Parses a `Range` header against `size`, clamping the end to the last byte.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |text: &str| text.parse::<u64>().ok();
    let (start, end) = match (first, last) {
        ("", "") => return RangeRequest::Whole,
        ("", suffix) => match number(suffix) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(length) if size > 0 => (size.saturating_sub(length), size - 1),
            Some(_) => return RangeRequest::Unsatisfiable,
            None => return RangeRequest::Whole,
        },
        (start, "") => match number(start) {
            Some(start) => (start, u64::MAX),
            None => return RangeRequest::Whole,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start <= end => (start, end),
            _ => return RangeRequest::Whole,
        },
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part(start, end.min(size - 1))
}

/// Whether an `If-None-Match` list names `etag` (or is `*`).
fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|tag| {
        tag == "*" || tag == etag || tag.strip_prefix("W/").is_some_and(|weak| weak == etag)
    })
}

/// The record a signed link names, once its signature and expiry hold.
async fn signed_record(
    state: &AppState,
    job_id: protocol::JobId,
    variant: Variant,
    query: &ContentQuery,
) -> Result<Option<protocol::JobRecord>, ApiError> {
    let refuse = |error: LinkError| {
        tracing::info!(target: AUDIT, event = "signed_link_refused", %job_id, reason = ?error, "signed link refused");
        ApiError::new(
            ErrorCode::Forbidden,
            format!("{error}; use the link GET /v1/videos/{job_id} gives now, exactly as given"),
        )
    };
    let Some(signer) = state.links.get() else {
        return Err(ApiError::unavailable(
            "signed links are not loaded yet; retry shortly",
        ));
    };
    signer
        .verify(
            job_id,
            variant.as_str(),
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
    use protocol::record::VideoResult;

    use super::*;

    #[test]
    fn a_digest_matches_only_its_own_hash() {
        use base64::Engine as _;
        let bytes = [7u8; 32];
        let hex = protocol::codec::hex(&bytes);
        for encoded in [
            base64::engine::general_purpose::URL_SAFE.encode(bytes),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ] {
            assert!(digest_is(Some(&format!("SHA-256={encoded}")), &hex));
            assert!(!digest_is(
                Some(&format!("SHA-256={encoded}")),
                &"00".repeat(32)
            ));
        }
        assert!(!digest_is(None, &hex));
        assert!(!digest_is(Some("MD5=abc"), &hex));
        assert!(!digest_is(Some("SHA-256=!!!"), &hex));
    }

    #[test]
    fn ranges_are_parsed_and_clamped() {
        use RangeRequest::Part;
        assert_eq!(parse_range("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), Part(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(parse_range("bytes=990-2000", 1000), Part(990, 999));
        assert_eq!(parse_range("bytes=999-999", 1000), Part(999, 999));
        assert_eq!(parse_range(" bytes= 5 - 9 ", 1000), Part(5, 9));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        use RangeRequest::Unsatisfiable;
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=18446744073709551615-", u64::MAX),
            Unsatisfiable,
            "start == size"
        );
    }

    #[test]
    fn other_units_several_ranges_and_bad_syntax_get_the_whole_body() {
        for header in [
            "",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-",
            "bytes=",
            "bytes=7",
        ] {
            assert_eq!(parse_range(header, 1000), RangeRequest::Whole, "{header:?}");
        }
    }

    #[test]
    fn if_none_match_lists_match_strong_weak_and_any() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("\"x\", W/\"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("\"abd\"", etag));
    }

    #[test]
    fn variants_parse_and_name_their_objects() {
        assert_eq!(Variant::parse(None).expect("default"), Variant::Video);
        assert_eq!(
            Variant::parse(Some("spritesheet")).expect("known"),
            Variant::Spritesheet
        );
        let error = Variant::parse(Some("gif")).expect_err("unknown");
        assert_eq!(error.field.as_deref(), Some("variant"));
        let result = VideoResult {
            object_name: "j/2".into(),
            size_bytes: 1,
            sha256: "00".into(),
            duration_ms: 1,
            num_frames: 1,
            width: 16,
            height: 16,
            fps: 1,
        };
        assert_eq!(Variant::Thumbnail.object(&result), "j/2/thumbnail.jpg");
        assert_eq!(Variant::Video.content_type(), "video/mp4");
    }
}
