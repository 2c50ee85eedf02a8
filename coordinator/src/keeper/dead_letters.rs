//! Dead letters: a job that ran out of attempts is copied to the `MOCHI_DLQ` stream, once per
//! attempt (JetStream deduplicates by message id), for an operator to inspect or replay. The
//! scheduler asks for the copy when the watch shows a job that just died.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use protocol::{JobRecord, codec, names};

use crate::metrics;

/// Publishes the dead job's record to `MOCHI_DLQ`.
pub(super) async fn copy(context: &Context, record: &JobRecord) {
    let job_id = record.id.to_string();
    let payload = match codec::to_json(record) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%job_id, %error, "cannot encode the dead job");
            return;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dead-{job_id}-{}", record.attempt).as_str(),
    );
    let published = context
        .publish_with_headers(names::dlq_subject(&job_id), headers, payload.into())
        .await;
    let acked = match published {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match acked {
        Ok(()) => {
            ::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
            tracing::warn!(%job_id, tenant = %record.tenant, attempts = record.failed_attempts, "job dead; copied to the dead-letter stream");
        }
        Err(error) => {
            tracing::error!(%job_id, %error, "cannot copy the dead job to the dead-letter stream")
        }
    }
}
