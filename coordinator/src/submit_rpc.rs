//! Submissions by request/reply on `mochi.rpc.submit.<tenant>`: the publisher gets the job
//! (or the error) back instead of JetStream's bare acknowledgement. The leading coordinator
//! checks the request the way the intake will, stores it durably on the tenant's submit
//! subject (so it goes through the one intake path, deduplicated by its message id), waits
//! for the record the intake writes and answers with that job as the API shows it.
//!
//! The answer is JSON: the video object, or our error body (`{"error": {code, message,
//! field}}`); its `Mochi-Status` header carries the HTTP status the gateway would have used
//! (`202`, `200` for a repeated idempotency key, `4xx`, `503`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use protocol::api::JobView;
use protocol::error::ErrorBody;
use protocol::jetstream::JobStore;
use protocol::{ErrorCode, JobId, Limits, TenantId, names, now_ms};

use crate::intake::{job_id_for, read_request};

/// Requests answered at once (each waits for its record).
const IN_FLIGHT: usize = 64;
/// Longest wait for the intake's record before answering with the job as submitted.
const RECORD_WAIT: Duration = Duration::from_secs(5);
/// Pause between looks at the record.
const RECORD_POLL: Duration = Duration::from_millis(20);
/// The header that carries the answer's HTTP-like status.
pub const STATUS_HEADER: &str = "Mochi-Status";

/// What a request is answered with.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn job(status: u16, view: &JobView) -> Self {
        Self {
            status,
            body: serde_json::to_vec(view).unwrap_or_default(),
        }
    }

    fn error(code: ErrorCode, message: impl Into<String>, field: Option<&str>) -> Self {
        let body = ErrorBody::new(code, message, field);
        Self {
            status: code.http_status(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

/// What answering needs.
#[derive(Clone)]
pub struct Responder {
    /// For the answers.
    pub client: async_nats::Client,
    /// For the durable publish.
    pub context: jetstream::Context,
    /// For the records.
    pub jobs: JobStore,
    /// The limits the intake checks against.
    pub limits: Limits,
}

/// Answers every request of `subscription`, up to [`IN_FLIGHT`] at once, until it ends.
pub async fn respond(responder: Responder, subscription: async_nats::Subscriber) -> &'static str {
    subscription
        .for_each_concurrent(IN_FLIGHT, |message| {
            let responder = responder.clone();
            async move {
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let answer = responder.answer(&message.subject, &message.payload).await;
                let mut headers = HeaderMap::new();
                headers.insert(STATUS_HEADER, answer.status.to_string().as_str());
                if let Err(error) = responder
                    .client
                    .publish_with_headers(reply_to, headers, answer.body.into())
                    .await
                {
                    tracing::warn!(%error, "submission answer not sent");
                }
            }
        })
        .await;
    "the submission responder"
}

impl Responder {
    async fn answer(&self, subject: &str, payload: &[u8]) -> Answer {
        let Some(tenant) =
            names::tenant_of_submit_rpc_subject(subject).and_then(|t| TenantId::new(t).ok())
        else {
            return Answer::error(
                ErrorCode::MalformedRequest,
                "send to mochi.rpc.submit.<tenant>, the tenant being 1 to 64 letters, digits, - or _",
                None,
            );
        };
        let request = match read_request(payload) {
            Ok(request) => request,
            Err(unreadable) => {
                let (_, failure) = *unreadable;
                return Answer::error(failure.code, failure.message, None);
            }
        };
        let shape = match request.spec.validate(&self.limits) {
            Ok(shape) => shape,
            Err(error) => {
                return Answer::error(error.code(), error.to_string(), Some(error.field()));
            }
        };
        // The message id decides the job id when the request names neither an id nor a key,
        // exactly as the intake will derive it.
        let message_id = match (&request.idempotency_key, request.job_id) {
            (None, None) => format!("rpc-{}", JobId::new()),
            _ => format!("rpc-{}", job_id_for(&tenant, &request, None, 0)),
        };
        let job_id = job_id_for(&tenant, &request, Some(&message_id), 0);
        let repeated = match self.jobs.get(job_id).await {
            Ok(Some((record, _))) if record.deleted_at_ms.is_some() => {
                return Answer::error(
                    ErrorCode::Conflict,
                    format!(
                        "the job this request names ({job_id}) was deleted; send it with a new idempotency_key or job_id"
                    ),
                    None,
                );
            }
            Ok(found) => found.is_some(),
            Err(error) => {
                tracing::warn!(%job_id, %error, "cannot read the record before submitting");
                false
            }
        };
        if let Err(answer) = self.store(&tenant, &message_id, payload).await {
            return answer;
        }
        let submitted_at = now_ms();
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            match self.jobs.get(job_id).await {
                Ok(Some((record, _))) => {
                    let status = if repeated { 200 } else { 202 };
                    return Answer::job(status, &JobView::from_record(&record));
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%job_id, %error, "record not readable yet"),
            }
            if tokio::time::Instant::now() >= deadline {
                // Stored durably: the intake takes it in when it can.
                tracing::warn!(%job_id, "no record within the wait; answering with the job as submitted");
                let mut view = JobView::pending(job_id, request.spec, &shape, submitted_at);
                view.remixed_from_video_id = request.remixed_from;
                return Answer::job(202, &view);
            }
            tokio::time::sleep(RECORD_POLL).await;
        }
    }

    /// Stores the submission on the tenant's submit subject; the answer when it could not.
    async fn store(
        &self,
        tenant: &TenantId,
        message_id: &str,
        payload: &[u8],
    ) -> Result<(), Answer> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        let unavailable = |error: &dyn std::fmt::Display| {
            tracing::warn!(%error, "submission by request/reply not stored");
            Answer::error(
                ErrorCode::Unavailable,
                "the submission could not be stored; retry shortly",
                None,
            )
        };
        let acknowledgement = self
            .context
            .publish_with_headers(
                names::submit_subject(tenant.as_str()),
                headers,
                payload.to_vec().into(),
            )
            .await
            .map_err(|error| unavailable(&error))?;
        acknowledgement.await.map_err(|error| unavailable(&error))?;
        Ok(())
    }
}
