//! `/v1/videos`: submit, status, download, cancel.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::JobView;
use protocol::jetstream::StoreError;
use protocol::messages::{Cancel, SubmitRequest};
use protocol::record::TransitionError;
use protocol::{ErrorCode, JobEvent, JobId, JobRecord, JobSpec, JobState, codec, names, now_ms};
use tokio_util::io::ReaderStream;

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// Longest idempotency key accepted, bytes.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// `POST /v1/videos`: validates the spec, stores it durably in `MOCHI_SUBMIT`, answers 202.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the body is larger than {} bytes; shorten the prompt",
                    state.config.max_body_bytes
                ),
            )
        } else {
            ApiError::new(
                ErrorCode::MalformedRequest,
                format!("cannot read the body: {rejection}"),
            )
        }
    })?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "send the job as JSON with Content-Type: application/json",
        ));
    }
    let spec = parse_spec(&body)?;
    let shape = spec.validate(&state.config.limits)?;
    let idempotency_key = idempotency_key(&headers)?;
    let tenant = state.tenant.clone();
    let job_id = match &idempotency_key {
        Some(key) => JobId::derived(tenant.as_str(), key),
        None => JobId::new(),
    };
    let request = SubmitRequest {
        job_id: Some(job_id),
        spec: spec.clone(),
        idempotency_key: idempotency_key.clone(),
    };
    let payload =
        codec::to_json(&request).map_err(|e| ApiError::internal("encode submission", &e))?;
    let subject = names::submit_job_subject(tenant.as_str(), &job_id.to_string());
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(job_id.to_string());
    let started = std::time::Instant::now();
    let ack = async {
        let pending = state
            .resources
            .context
            .send_publish(subject, message)
            .await?;
        pending.await
    };
    let ack = tokio::time::timeout(Duration::from_millis(state.config.publish_timeout_ms), ack)
        .await
        .map_err(|_| ApiError::unavailable("the job queue did not acknowledge in time; retry with the same Idempotency-Key"))?
        .map_err(|error| match error.kind() {
            PublishErrorKind::Other | PublishErrorKind::MaxAckPending => {
                tracing::warn!(%error, "submission refused by JetStream");
                ApiError::unavailable("the job queue is full or unavailable; retry later with the same Idempotency-Key")
            }
            _ => ApiError::unavailable(format!("the job queue is unavailable ({}); retry later", error.kind())),
        })?;
    metrics::record_submit(started.elapsed(), ack.duplicate);
    tracing::info!(%job_id, %tenant, duplicate = ack.duplicate, frames = shape.num_frames, "job submitted");
    let view = match state.resources.jobs.get(job_id).await {
        Ok(Some((record, _))) if ack.duplicate && record.tenant == tenant => {
            JobView::from_record(&record)
        }
        _ => JobView::pending(job_id, spec, &shape, now_ms()),
    };
    let location = view.links.status.clone();
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

fn parse_spec(body: &[u8]) -> Result<JobSpec, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "the body is empty; send a JSON object with at least a prompt",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let spec: JobSpec = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = strip_position(&inner.to_string());
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = unknown_field(&message).unwrap_or(if path == "." {
                    String::new()
                } else {
                    path
                });
                if field.is_empty() {
                    ApiError::new(
                        ErrorCode::InvalidField,
                        format!("the job does not match the schema: {message}"),
                    )
                } else {
                    ApiError::field(
                        ErrorCode::InvalidField,
                        format!("{field}: {message}"),
                        field,
                    )
                }
            }
            _ => ApiError::new(
                ErrorCode::MalformedRequest,
                format!("the body is not valid JSON: {message}"),
            ),
        }
    })?;
    deserializer.end().map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the body has trailing data after the JSON object: {e}"),
        )
    })?;
    Ok(spec)
}

fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::field(
                ErrorCode::MalformedRequest,
                "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID works well)",
                "Idempotency-Key",
            )
        })?;
    Ok(Some(key.to_owned()))
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::job_not_found(id))
}

/// Reads the tenant's record of `id`; `None` when absent or another tenant's.
async fn record(state: &AppState, id: JobId) -> Result<Option<JobRecord>, ApiError> {
    match state.resources.jobs.get(id).await {
        Ok(Some((record, _))) if record.tenant == state.tenant => Ok(Some(record)),
        Ok(_) => Ok(None),
        Err(error) => Err(ApiError::internal("read job record", &error)),
    }
}

/// `GET /v1/videos/{id}`: the job's status.
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = parse_id(&id)?;
    if let Some(record) = record(&state, job_id).await? {
        return Ok(Json(JobView::from_record(&record)));
    }
    // Accepted but not yet taken in: the submission is still in MOCHI_SUBMIT.
    let subject = names::submit_job_subject(state.tenant.as_str(), &job_id.to_string());
    if let Ok(message) = state
        .resources
        .submit
        .get_last_raw_message_by_subject(&subject)
        .await
        && let Ok(request) = codec::from_json::<SubmitRequest>(&message.payload)
        && let Ok(shape) = request.spec.validate(&state.config.limits)
    {
        let at_ms = u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        return Ok(Json(JobView::pending(job_id, request.spec, &shape, at_ms)));
    }
    // The intake may have taken it in between the two reads.
    match record(&state, job_id).await? {
        Some(record) => Ok(Json(JobView::from_record(&record))),
        None => Err(ApiError::job_not_found(&id)),
    }
}

/// `GET /v1/videos/{id}/content`: the MP4, with single-range requests for seeking.
pub async fn content(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job_id = parse_id(&id)?;
    let Some(record) = record(&state, job_id).await? else {
        return Err(ApiError::job_not_found(&id));
    };
    let result = match (&record.state, &record.result) {
        (JobState::Succeeded, Some(result)) => result.clone(),
        (job_state, _) if job_state.is_terminal() => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {id} ended {job_state} and has no video"),
            ));
        }
        (job_state, _) => {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                format!("job {id} is {job_state}; the video is ready once the job has succeeded"),
            ));
        }
    };
    let object = state
        .resources
        .videos
        .get(&result.object_name)
        .await
        .map_err(|e| ApiError::internal("open video object", &e))?;
    let size = result.size_bytes;
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
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response());
    };
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut object = object;
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
        .await
        .map_err(|e| ApiError::internal("read video object", &e))?;
    let slice = bytes
        .get(
            usize::try_from(start).unwrap_or(usize::MAX)
                ..=usize::try_from(end).unwrap_or(usize::MAX),
        )
        .ok_or_else(|| ApiError::internal("video shorter than its record", &"size mismatch"))?
        .to_vec();
    Ok((
        StatusCode::PARTIAL_CONTENT,
        common,
        [
            (header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
            (header::CONTENT_LENGTH, slice.len().to_string()),
        ],
        slice,
    )
        .into_response())
}

/// Parses one `bytes=` range against `size`; `None` when unsatisfiable or not a single range.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let length: u64 = suffix.parse().ok()?;
            (size.saturating_sub(length), size - 1)
        }
        (start, "") => (start.parse().ok()?, size - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// `DELETE /v1/videos/{id}`: cancels the job in any non-terminal state.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = parse_id(&id)?;
    let Some(before) = record(&state, job_id).await? else {
        let subject = names::submit_job_subject(state.tenant.as_str(), &job_id.to_string());
        if state
            .resources
            .submit
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_ok()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {id} is still being taken in; retry in a second"),
            ));
        }
        return Err(ApiError::job_not_found(&id));
    };
    let cancelled = match state
        .resources
        .jobs
        .apply(job_id, &JobEvent::CancelRequested, now_ms())
        .await
    {
        Ok(record) => record,
        Err(StoreError::Transition(TransitionError::Illegal {
            state: job_state, ..
        })) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {id} already ended {job_state}; there is nothing to cancel"),
            ));
        }
        Err(error) => return Err(ApiError::internal("cancel job", &error)),
    };
    if let Some(lease) = &before.lease {
        let message = Cancel {
            job_id,
            attempt: before.attempt,
        };
        if let Ok(bytes) = codec::encode(&message) {
            let subject = names::node_cancel_subject(lease.node.as_str());
            if let Err(error) = state.client.publish(subject, bytes.into()).await {
                // The node also stops when its next progress write is refused.
                tracing::warn!(%job_id, %error, "cannot notify the node of the cancellation");
            }
        }
    }
    tracing::info!(%job_id, from = %before.state, "job cancelled");
    Ok(Json(JobView::from_record(&cancelled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_and_clamped() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-2", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let error = parse_spec(br#"{"prompt":"x","steps":"many"}"#).expect_err("wrong type");
        assert_eq!(
            (error.code, error.field.as_deref()),
            (ErrorCode::InvalidField, Some("steps"))
        );
        assert!(error.message.contains("invalid type"), "{}", error.message);
    }

    #[test]
    fn unknown_field_is_named() {
        let error = parse_spec(br#"{"prompt":"x","colour":"red"}"#).expect_err("unknown field");
        assert_eq!(error.field.as_deref(), Some("colour"));
    }

    #[test]
    fn broken_json_is_malformed() {
        assert_eq!(
            parse_spec(br#"{"prompt":"#).expect_err("eof").code,
            ErrorCode::MalformedRequest
        );
        assert_eq!(
            parse_spec(b"  ").expect_err("empty").code,
            ErrorCode::MalformedRequest
        );
        assert_eq!(
            parse_spec(br#"{"prompt":"x"} 7"#)
                .expect_err("trailing")
                .code,
            ErrorCode::MalformedRequest
        );
    }

    #[test]
    fn missing_prompt_is_an_invalid_field() {
        let error = parse_spec(br#"{"steps":4}"#).expect_err("missing prompt");
        assert_eq!(error.code, ErrorCode::InvalidField);
        assert!(error.message.contains("prompt"), "{}", error.message);
    }
}
