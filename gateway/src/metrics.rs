//! Metric names of the gateway and their descriptions.

use std::time::Duration;

/// HTTP requests, by route template, method and status.
pub const REQUESTS: &str = "mochi_gateway_requests_total";
/// HTTP request latency, seconds, by route template.
pub const REQUEST_SECONDS: &str = "mochi_gateway_request_seconds";
/// Jobs submitted (their records stored by JetStream), by whether the submission repeated
/// an Idempotency-Key whose job exists (then nothing was written).
pub const JOBS_SUBMITTED: &str = "mochi_gateway_jobs_submitted_total";
/// Time to get JetStream's acknowledgement of a new job's record, seconds.
pub const SUBMIT_SECONDS: &str = "mochi_gateway_submit_seconds";

/// Writes of new job records, by `kind`: `batch` (several records in one atomic batch) or
/// `single`.
pub const RECORD_WRITES: &str = "mochi_gateway_record_writes_total";
/// New job records stored in atomic batches (over `RECORD_WRITES{kind="batch"}`: records per
/// batch).
pub const BATCHED_RECORDS: &str = "mochi_gateway_batched_records_total";
/// Atomic batches of new records the stream refused (a record existed already, or the
/// server takes no batches), each then written record by record.
pub const RECORD_BATCHES_REFUSED: &str = "mochi_gateway_record_batches_refused_total";

/// Submissions refused with `job_too_large`: no known slot holds the job.
pub const JOBS_TOO_LARGE: &str = "mochi_gateway_jobs_too_large_total";

/// Requests refused by the gateway's own layers, by reason (`overloaded`, `timeout`).
pub const REQUESTS_SHED: &str = "mochi_gateway_requests_shed_total";

/// Requests refused for their credentials (401).
pub const AUTH_FAILURES: &str = "mochi_gateway_auth_failures_total";
/// Requests refused by a rate limit (429 `rate_limited`), by class (`create`, `read`).
pub const RATE_LIMITED: &str = "mochi_gateway_rate_limited_total";
/// Submissions refused by a tenant quota (429 `quota_exceeded`).
pub const QUOTA_EXCEEDED: &str = "mochi_gateway_quota_exceeded_total";
/// Connections refused or closed by the connection guards, by reason (`limit`,
/// `header_timeout`, `idle`).
pub const CONNECTIONS_CLOSED: &str = "mochi_gateway_connections_closed_total";
/// Open client connections.
pub const CONNECTIONS_OPEN: &str = "mochi_gateway_connections_open";
/// Open `GET /v1/videos/{id}/events` streams.
pub const EVENT_STREAMS_OPEN: &str = "mochi_gateway_event_streams_open";

/// Webhook deliveries, by outcome (`delivered`, `retried`, `failed` after the last retry,
/// `refused` for a target that may not be reached).
pub const WEBHOOK_DELIVERIES: &str = "mochi_gateway_webhook_deliveries_total";
/// Webhook events queued for delivery, by event (`start`, `progress`, `completed`).
pub const WEBHOOK_EVENTS: &str = "mochi_gateway_webhook_events_total";

/// Job-record revisions the webhook source has still to read after its last one (0 when it
/// is caught up, and on a gateway not holding the source).
pub const WEBHOOK_SOURCE_PENDING: &str = "mochi_gateway_webhook_source_pending";
/// 1 on the gateway holding the webhook source's lease (reading the records), else 0.
pub const WEBHOOK_SOURCE_HOLDER: &str = "mochi_gateway_webhook_source_holder";

/// Counts a webhook delivery's outcome.
pub fn record_webhook_delivery(outcome: &'static str) {
    metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// Counts a webhook event queued.
pub fn record_webhook_event(event: &'static str) {
    metrics::counter!(WEBHOOK_EVENTS, "event" => event).increment(1);
}

/// Notes whether this gateway holds the webhook source; one that does not has nothing
/// pending.
pub fn record_webhook_source_holder(holding: bool) {
    metrics::gauge!(WEBHOOK_SOURCE_HOLDER).set(if holding { 1.0 } else { 0.0 });
    if !holding {
        metrics::gauge!(WEBHOOK_SOURCE_PENDING).set(0.0);
    }
}

/// Notes how many revisions the webhook source has still to read.
pub fn record_webhook_source_pending(pending: u64) {
    metrics::gauge!(WEBHOOK_SOURCE_PENDING).set(pending as f64);
}

/// Describes every metric (call once, after the recorder is installed).
pub fn describe() {
    // The counters the alert rules and the dashboard read exist from the start (at 0), so
    // that a rate over them is 0 rather than no data.
    for outcome in ["delivered", "refused", "retried", "failed"] {
        metrics::counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(0);
    }
    for class in ["create", "read"] {
        metrics::counter!(RATE_LIMITED, "class" => class).increment(0);
    }
    metrics::counter!(QUOTA_EXCEEDED).increment(0);
    metrics::counter!(JOBS_TOO_LARGE).increment(0);
    metrics::gauge!(EVENT_STREAMS_OPEN).increment(0.0);
    metrics::gauge!(WEBHOOK_SOURCE_HOLDER).increment(0.0);
    metrics::gauge!(WEBHOOK_SOURCE_PENDING).increment(0.0);
    metrics::describe_counter!(REQUESTS, "HTTP requests by route, method and status");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency by route"
    );
    metrics::describe_counter!(
        REQUESTS_SHED,
        "Requests answered 503 by load shedding or the request timeout"
    );
    metrics::describe_counter!(
        JOBS_SUBMITTED,
        "Jobs accepted (records stored by JetStream), by duplicate"
    );
    metrics::describe_counter!(
        RECORD_WRITES,
        "Writes of new job records, by kind (batch: several in one atomic batch; single)"
    );
    metrics::describe_counter!(BATCHED_RECORDS, "New job records stored in atomic batches");
    metrics::describe_counter!(
        RECORD_BATCHES_REFUSED,
        "Atomic batches of new records refused by the stream and written record by record"
    );
    metrics::describe_counter!(
        JOBS_TOO_LARGE,
        "Submissions refused because no known slot holds the job"
    );
    metrics::describe_counter!(AUTH_FAILURES, "Requests refused 401 for their credentials");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused 429 by a per-key rate limit");
    metrics::describe_counter!(QUOTA_EXCEEDED, "Submissions refused 429 by a tenant quota");
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections refused at the limit or closed for slowness or idleness"
    );
    metrics::describe_gauge!(CONNECTIONS_OPEN, "Open client connections");
    metrics::describe_counter!(WEBHOOK_DELIVERIES, "Webhook deliveries by outcome");
    metrics::describe_counter!(WEBHOOK_EVENTS, "Webhook events queued for delivery");
    metrics::describe_gauge!(
        EVENT_STREAMS_OPEN,
        "Open Server-Sent Events streams of job progress"
    );
    metrics::describe_histogram!(
        SUBMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to JetStream's acknowledgement of a new job's record"
    );
    metrics::describe_gauge!(
        WEBHOOK_SOURCE_PENDING,
        "Job-record revisions the webhook source has still to read"
    );
    metrics::describe_gauge!(
        WEBHOOK_SOURCE_HOLDER,
        "1 on the gateway reading job records into webhook events"
    );
}

pub(crate) fn record_submit(elapsed: Duration, duplicate: bool) {
    metrics::counter!(JOBS_SUBMITTED, "duplicate" => if duplicate { "true" } else { "false" })
        .increment(1);
    metrics::histogram!(SUBMIT_SECONDS).record(elapsed.as_secs_f64());
}

/// Counts one write of `records` new job records (more than one: an atomic batch).
pub(crate) fn record_record_write(records: usize) {
    if records > 1 {
        metrics::counter!(RECORD_WRITES, "kind" => "batch").increment(1);
        metrics::counter!(BATCHED_RECORDS).increment(records as u64);
    } else {
        metrics::counter!(RECORD_WRITES, "kind" => "single").increment(1);
    }
}

/// Counts an atomic batch of new records the stream refused.
pub(crate) fn record_batch_refused() {
    metrics::counter!(RECORD_BATCHES_REFUSED).increment(1);
}

pub(crate) fn record_too_large() {
    metrics::counter!(JOBS_TOO_LARGE).increment(1);
}

pub(crate) fn record_request(route: String, method: String, status: u16, elapsed: Duration) {
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string()).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route).record(elapsed.as_secs_f64());
}

pub(crate) fn record_shed(reason: &'static str) {
    metrics::counter!(REQUESTS_SHED, "reason" => reason).increment(1);
}

pub(crate) fn record_auth_failure() {
    metrics::counter!(AUTH_FAILURES).increment(1);
}

pub(crate) fn record_rate_limited(class: crate::auth::limits::RateClass) {
    let class = match class {
        crate::auth::limits::RateClass::Create => "create",
        crate::auth::limits::RateClass::Read => "read",
    };
    metrics::counter!(RATE_LIMITED, "class" => class).increment(1);
}

pub(crate) fn record_quota_exceeded() {
    metrics::counter!(QUOTA_EXCEEDED).increment(1);
}

pub(crate) fn record_connection_closed(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

pub(crate) fn set_connections_open(open: usize) {
    metrics::gauge!(CONNECTIONS_OPEN).set(open as f64);
}

pub(crate) fn event_stream_opened() {
    metrics::gauge!(EVENT_STREAMS_OPEN).increment(1.0);
}

pub(crate) fn event_stream_closed() {
    metrics::gauge!(EVENT_STREAMS_OPEN).decrement(1.0);
}
