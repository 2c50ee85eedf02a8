//! `GET /v1/videos/{id}/events`: a job's progress as Server-Sent Events, from its record
//! (`mochi_jobs`), its queue position (`mochi_queue`: its own entry or its page's line) and
//! the per-step events its node publishes (`mochi.events.<job>`).
//!
//! Every event's id is an [`EventId`], `attempt.phase.number`, and ids only grow over a job's
//! life: a stream never sends an id twice or goes back, and a client that reconnects with the
//! last id it saw (`Last-Event-ID`) gets from the current record what came after it. No task
//! runs beside a stream: the response body itself reads NATS, so a client that goes away
//! drops the subscription and the watches with it.

mod queue;
mod tracker;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use protocol::messages::ProgressEvent;
use protocol::{JobId, JobRecord, TenantId, codec, names};

use crate::auth::{Action, Caller};
use crate::error::ApiError;
use crate::metrics;
use crate::routes::lookup::{JobPath, submitted, tenant_entry, view_of};
use crate::state::AppState;
use queue::QueueFeed;
use tracker::{Emitted, Tracker};
pub use tracker::{EventId, NotAnEventId, Phase};

/// Longest quiet time before a `: keep-alive` comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Shortest keep-alive period, however short the connections' idle timeout.
const MIN_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// One open stream: its sources and what it still has to send.
struct Live {
    state: AppState,
    tenant: TenantId,
    job_id: JobId,
    tracker: Tracker,
    /// Events to send; at most one record's worth (bounded by the job's steps).
    pending: VecDeque<Emitted>,
    progress: async_nats::Subscriber,
    records: kv::Watch,
    /// The revision of the last record read (older ones in the watch are skipped).
    record_revision: u64,
    /// The job's queue position.
    queue: QueueFeed,
    /// The node holding the job's lease, as last read: only its progress events count.
    holder: Option<String>,
    _open: OpenStream,
}

/// What one of a stream's sources delivered.
enum Input {
    Progress(Option<async_nats::Message>),
    Record(Option<Result<kv::Entry, kv::WatcherError>>),
    Queue(kv::Entry),
}

/// Counts an open stream in the gauge for as long as it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::event_stream_opened();
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::event_stream_closed();
    }
}

/// `GET /v1/videos/{id}/events`: the job's progress as Server-Sent Events until it ends
/// (see `docs/api.md`); `Last-Event-ID` resumes after that event. 204 when the client has
/// already seen the job end; 404 like the status route.
#[utoipa::path(
    get,
    path = "/v1/videos/{id}/events",
    tag = "videos",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id seen: the stream resumes after it")
    ),
    responses(
        (status = 200, description = "Server-Sent Events until the job ends; each event's data is one JSON object", content_type = "text/event-stream", body = serde_json::Value),
        (status = 204, description = "The client has already seen the job end"),
        crate::openapi::Errors
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobPath(job_id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Action::Read)?;
    let key = job_id.to_string();
    // Subscribed and watching before the first read, so that no change falls in between.
    let progress = state
        .client
        .subscribe(names::job_events_subject(&key))
        .await
        .map_err(|error| store_unreachable(job_id, &error))?;
    let records = state
        .resources
        .jobs
        .kv
        .watch(&key)
        .await
        .map_err(|error| store_unreachable(job_id, &error))?;
    let mut queue = QueueFeed::open(&state, job_id).await;
    let found = match tenant_entry(&state, &caller, job_id).await? {
        Some(found) => Some(found),
        None if waiting(&state, &caller, job_id).await? => None,
        // The intake may have taken it in between the two reads.
        None => Some(
            tenant_entry(&state, &caller, job_id)
                .await?
                .ok_or_else(|| ApiError::job_not_found(job_id))?,
        ),
    };
    let attempt = found.as_ref().map_or(0, |(record, _)| record.attempt);
    if let Some((record, _)) = &found {
        queue.want_page(record.attempt, record.created_at_ms);
        // What it read goes into the tracker below.
        queue.follow_wanted().await;
    }
    let mut tracker = Tracker::new(last_event_id(&headers), queue.current(attempt));
    let holder = found.as_ref().and_then(|(record, _)| lease_holder(record));
    let (first, record_revision) = match &found {
        Some((record, revision)) => {
            tracker.forget_future(record.attempt);
            let first = tracker.on_record(record, false, || view_of(&state, record));
            (first, *revision)
        }
        None => {
            tracker.forget_future(0);
            (tracker.on_pending(), 0)
        }
    };
    if tracker.ended() && first.is_empty() {
        // It saw the end already: 204 stops an EventSource from reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let keep_alive = KeepAlive::new()
        .interval(keep_alive_period(state.config.connections.idle_timeout_ms))
        .text("keep-alive");
    let live = Live {
        tenant: caller.tenant.clone(),
        state,
        job_id,
        tracker,
        pending: first.into(),
        progress,
        records,
        record_revision,
        queue,
        holder,
        _open: OpenStream::new(),
    };
    let stream = futures::stream::unfold(live, next_event);
    let mut response = Sse::new(stream).keep_alive(keep_alive).into_response();
    // Proxies that buffer responses (nginx) pass this one through as it comes.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Whether the caller's submission `job_id` waits to be taken in (as the status route shows it).
async fn waiting(
    state: &AppState,
    caller: &crate::auth::Principal,
    job_id: JobId,
) -> Result<bool, ApiError> {
    Ok(submitted(state, caller, job_id)
        .await?
        .is_some_and(|(request, _)| request.spec.validate(&state.config.limits).is_ok()))
}

fn store_unreachable(job_id: JobId, error: &dyn fmt::Display) -> ApiError {
    tracing::warn!(%job_id, %error, "cannot follow a job");
    ApiError::unavailable("the job store is unreachable; retry shortly")
}

/// The client's `Last-Event-ID`; one that is not ours is ignored.
fn last_event_id(headers: &HeaderMap) -> Option<EventId> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// [`KEEP_ALIVE`], or half the connections' idle timeout if that is shorter (a quiet
/// stream must not be closed as idle).
fn keep_alive_period(idle_timeout_ms: u64) -> Duration {
    KEEP_ALIVE
        .min(Duration::from_millis(idle_timeout_ms / 2))
        .max(MIN_KEEP_ALIVE)
}

/// The next event of a stream; `None` ends it (the job ended, went away, or a source closed:
/// the client reconnects and resumes by `Last-Event-ID`).
async fn next_event(mut live: Live) -> Option<(Result<Event, Infallible>, Live)> {
    loop {
        if let Some(emitted) = live.pending.pop_front() {
            return Some((Ok(emitted.into_sse()), live));
        }
        if live.tracker.ended() {
            return None;
        }
        // A record showed the job's submission time: its page is followed from now on.
        if live.queue.follow_wanted().await {
            let current = live.queue.current(live.tracker.attempt());
            let events = live.tracker.on_queue(current);
            live.pending.extend(events);
            continue;
        }
        // Records first: a node event is only taken against a record at least as new as it.
        let input = tokio::select! {
            biased;
            entry = live.records.next() => Input::Record(entry),
            entry = live.queue.next() => Input::Queue(entry),
            message = live.progress.next() => Input::Progress(message),
        };
        if let Input::Queue(_) = &input {
            live.queue.refresh_summary().await;
        }
        if !live.take(input) {
            return None;
        }
    }
}

impl Live {
    /// Takes in what a source delivered; false ends the stream.
    fn take(&mut self, input: Input) -> bool {
        let job_id = self.job_id;
        match input {
            Input::Progress(None) | Input::Record(None) => {
                tracing::debug!(%job_id, "event stream source closed");
                false
            }
            Input::Progress(Some(message)) => {
                let node = names::node_of_events_subject(&message.subject);
                if node.is_none() || node != self.holder.as_deref() {
                    // Not the lease holder: a stale node, or one posing as another's.
                    return true;
                }
                match codec::decode::<ProgressEvent>(&message.payload) {
                    Ok(event) if event.job_id == job_id => {
                        let events = self.tracker.on_progress(&event);
                        self.pending.extend(events);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%job_id, %error, "unreadable progress event"),
                }
                true
            }
            Input::Record(Some(Err(error))) => {
                tracing::warn!(%job_id, %error, "job record watch failed; stream ended");
                false
            }
            Input::Record(Some(Ok(entry))) => self.take_record(&entry),
            Input::Queue(entry) => {
                if self.queue.take(&entry) {
                    let current = self.queue.current(self.tracker.attempt());
                    let events = self.tracker.on_queue(current);
                    self.pending.extend(events);
                }
                true
            }
        }
    }

    fn take_record(&mut self, entry: &kv::Entry) -> bool {
        let job_id = self.job_id;
        if entry.revision <= self.record_revision {
            // Older than the record already read.
            return true;
        }
        self.record_revision = entry.revision;
        if entry.operation != kv::Operation::Put {
            return false;
        }
        let record = match codec::decode::<JobRecord>(&entry.value) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%job_id, key = %job_id, %error, "unreadable job record; stream ended");
                return false;
            }
        };
        if record.deleted_at_ms.is_some() || record.tenant != self.tenant {
            return false;
        }
        self.holder = lease_holder(&record);
        self.queue.want_page(record.attempt, record.created_at_ms);
        // A job queued again after an attempt: its page line no longer counts.
        self.tracker.set_queue(self.queue.current(record.attempt));
        let state = &self.state;
        let events = self
            .tracker
            .on_record(&record, true, || view_of(state, &record));
        self.pending.extend(events);
        true
    }
}

/// The node holding `record`'s lease, if any.
fn lease_holder(record: &JobRecord) -> Option<String> {
    record.lease.as_ref().map(|lease| lease.node.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_comes_before_the_idle_timeout() {
        assert_eq!(keep_alive_period(60_000), KEEP_ALIVE);
        assert_eq!(keep_alive_period(10_000), Duration::from_secs(5));
        assert_eq!(keep_alive_period(1), MIN_KEEP_ALIVE);
    }
}
