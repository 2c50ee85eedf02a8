//! Metric names of the gateway and their descriptions.

use std::time::Duration;

/// HTTP requests, by route template, method and status.
pub const REQUESTS: &str = "mochi_gateway_requests_total";
/// HTTP request latency, seconds, by route template.
pub const REQUEST_SECONDS: &str = "mochi_gateway_request_seconds";
/// Jobs submitted (accepted by JetStream), by whether the submission was a duplicate.
pub const JOBS_SUBMITTED: &str = "mochi_gateway_jobs_submitted_total";
/// Time to get JetStream's acknowledgement of a submission, seconds.
pub const SUBMIT_SECONDS: &str = "mochi_gateway_submit_seconds";

/// Submissions refused with `job_too_large`: no known slot holds the job.
pub const JOBS_TOO_LARGE: &str = "mochi_gateway_jobs_too_large_total";

/// Requests refused by the gateway's own layers, by reason (`overloaded`, `timeout`).
pub const REQUESTS_SHED: &str = "mochi_gateway_requests_shed_total";

/// Describes every metric (call once, after the recorder is installed).
pub fn describe() {
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
    metrics::describe_counter!(JOBS_SUBMITTED, "Jobs accepted by JetStream");
    metrics::describe_counter!(
        JOBS_TOO_LARGE,
        "Submissions refused because no known slot holds the job"
    );
    metrics::describe_histogram!(
        SUBMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to JetStream's acknowledgement of a submission"
    );
}

pub(crate) fn record_submit(elapsed: Duration, duplicate: bool) {
    metrics::counter!(JOBS_SUBMITTED, "duplicate" => if duplicate { "true" } else { "false" })
        .increment(1);
    metrics::histogram!(SUBMIT_SECONDS).record(elapsed.as_secs_f64());
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
