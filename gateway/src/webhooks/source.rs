//! Webhook events from the job records. One gateway at a time reads them: the holder of
//! the `webhooks.source` lease in `mochi_leader` ([`protocol::lease`]). It reads every
//! revision of `KV_mochi_jobs` through an ordered consumer (no acknowledgements, so nothing
//! is replicated per revision), queues the events each revision implies on
//! `MOCHI_WEBHOOKS`, and saves how far it got (`webhooks.cursor`, about once a second, and
//! when it stops). A new holder reads again from the saved position: what it queues again
//! is dropped as a duplicate (each event's message id is stable, and `MOCHI_WEBHOOKS`
//! remembers ids for an hour).
//!
//! Earlier versions shared a durable consumer among the gateways and acknowledged each
//! revision: a replicated write per revision (a running job writes one per step). A holder
//! that finds no saved position starts where that consumer's acknowledgements stopped and
//! deletes it; without either it starts after the newest revision (records older than
//! webhooks have no events to send).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use protocol::api::JobView;
use protocol::jetstream::{Resources, read_in_order};
use protocol::lease::{Election, Role};
use protocol::record::WebhookEvent;
use protocol::{JobId, JobRecord, JobState, codec, lease, names, now_ms};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::types::{Delivery, WebhookConfig};
use crate::files::RetentionConfig;
use crate::metrics;

/// Wait before starting over after the reader failed.
const RETRY: Duration = Duration::from_secs(1);
/// How often the holder saves its position (when it moved).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two tries to queue one delivery.
const QUEUE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the holder of the source lease got to (`webhooks.cursor` in `mochi_leader`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The first `KV_mochi_jobs` sequence whose events are not known to be queued.
    pub next_sequence: u64,
    /// The gateway that saved it.
    pub holder: String,
    /// Wall-clock time of the save, ms since the epoch (for people).
    pub saved_at_ms: u64,
}

/// Stops a running source, also when dropped (with its gateway's state): its position
/// saved, its lease released, so that a standby takes over at once.
pub struct Stopper {
    stop: tokio_util::sync::DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl Stopper {
    /// Stops the source and waits, at most `wait`, until it saved and released.
    pub async fn stop(self, wait: Duration) {
        let Self { stop, task } = self;
        drop(stop);
        if tokio::time::timeout(wait, task).await.is_err() {
            tracing::warn!("the webhook source did not stop in time; its lease runs out");
        }
    }
}

/// Stands for the source lease and, while this gateway holds it, reads record revisions
/// into deliveries; until stopped.
pub fn start(
    resources: &Resources,
    config: &WebhookConfig,
    retention: &RetentionConfig,
) -> Stopper {
    let resources = resources.clone();
    let config = config.clone();
    let retention = retention.clone();
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        let instance = lease::host_instance("gateway");
        let (role, mut roles) = watch::channel(Role::Standby);
        let election = Election::new(
            resources.leader.clone(),
            names::KEY_WEBHOOK_SOURCE,
            instance.clone(),
            config.source_lease_ms,
        );
        let release = CancellationToken::new();
        let election = tokio::spawn(election.run(role, release.clone().cancelled_owned()));
        let reader = Reader {
            resources: &resources,
            config: &config,
            retention: &retention,
            stopping: &stopping,
            instance: &instance,
        };
        let mut seen = Seen::default();
        loop {
            tokio::select! {
                held = roles.wait_for(|role| role.is_leader()) => {
                    if held.is_err() {
                        break;
                    }
                }
                () = stopping.cancelled() => break,
            }
            tracing::info!(%instance, "reading job records into webhook events");
            let read = reader.run(&mut roles, &mut seen).await;
            metrics::record_webhook_source_holder(false);
            if let Err(error) = read
                && !stopping.is_cancelled()
            {
                tracing::warn!(%error, "webhook events: reader failed; starting over");
                tokio::time::sleep(RETRY).await;
            }
            if stopping.is_cancelled() {
                break;
            }
        }
        // Released only now, after the position was saved.
        release.cancel();
        let _ = election.await;
    });
    Stopper {
        stop: stop.drop_guard(),
        task,
    }
}

/// What the holder reads with.
struct Reader<'a> {
    resources: &'a Resources,
    config: &'a WebhookConfig,
    retention: &'a RetentionConfig,
    stopping: &'a CancellationToken,
    instance: &'a str,
}

impl Reader<'_> {
    /// Reads from the saved position until the lease is lost (returns without saving: the
    /// new holder may have read it already) or the source is stopped (saves, then
    /// returns).
    async fn run(&self, roles: &mut watch::Receiver<Role>, seen: &mut Seen) -> Result<(), String> {
        let context = &self.resources.context;
        let mut stream = context
            .get_stream(names::kv_stream(names::BUCKET_JOBS))
            .await
            .map_err(|e| e.to_string())?;
        let mut next = self.start_position(&mut stream).await?;
        let mut messages = read_in_order(
            &stream,
            next,
            "mochi-serve: job record revisions → webhook events",
        )
        .await
        .map_err(|e| e.to_string())?;
        // Holding the lease and reading (a reader that cannot open its consumer shows 0).
        metrics::record_webhook_source_holder(true);
        let holding = roles.clone();
        let mut saved = next;
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                changed = roles.changed() => {
                    if changed.is_err() || !roles.borrow_and_update().is_leader() {
                        return Ok(());
                    }
                }
                () = self.stopping.cancelled() => return self.save(next).await,
                _ = save.tick() => {
                    if next != saved {
                        self.save(next).await?;
                        saved = next;
                    }
                }
                message = messages.next() => {
                    let message = message
                        .ok_or("the ordered consumer ended")?
                        .map_err(|e| e.to_string())?;
                    let info = message.info().map_err(|e| e.to_string())?;
                    let (sequence, pending) = (info.stream_sequence, info.pending);
                    metrics::record_webhook_source_pending(pending);
                    let deliveries = codec::decode::<JobRecord>(&message.payload)
                        .map(|record| events_of(&record, self.config, self.retention, seen, now_ms()))
                        .unwrap_or_default();
                    for (event, delivery) in deliveries {
                        queue(context, event, &delivery, &holding, self.stopping).await?;
                    }
                    next = sequence + 1;
                }
            }
        }
    }

    /// The saved position; else, once, where the durable consumer of earlier versions
    /// stopped (that consumer is then deleted); else after the newest revision. A position
    /// not read from the cursor is saved at once. A saved position past the stream's end
    /// (the bucket was made anew) starts at the stream's first revision.
    async fn start_position(&self, stream: &mut Stream) -> Result<u64, String> {
        let entry = self
            .resources
            .leader
            .entry(names::KEY_WEBHOOK_CURSOR)
            .await
            .map_err(|e| e.to_string())?;
        let state = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .clone();
        if let Some(entry) = entry.filter(|entry| entry.operation == Operation::Put) {
            match codec::from_json::<Cursor>(&entry.value) {
                Ok(cursor) if cursor.next_sequence <= state.last_sequence + 1 => {
                    return Ok(cursor.next_sequence);
                }
                Ok(cursor) => {
                    tracing::warn!(
                        saved = cursor.next_sequence,
                        last = state.last_sequence,
                        "the webhook position is past the records' stream (made anew?); reading it from its start"
                    );
                    let next = state.first_sequence.max(1);
                    self.save(next).await?;
                    return Ok(next);
                }
                Err(error) => tracing::warn!(%error, "unreadable webhook cursor; starting anew"),
            }
        }
        let next = match stream.consumer_info(names::CONSUMER_WEBHOOK_EVENTS).await {
            Ok(info) => {
                let next = info.ack_floor.stream_sequence + 1;
                tracing::info!(
                    next,
                    "webhook events: taking over from the shared consumer of earlier versions"
                );
                self.save(next).await?;
                // Best effort: gateways of an earlier version still running make it again.
                if let Err(error) = stream.delete_consumer(names::CONSUMER_WEBHOOK_EVENTS).await {
                    tracing::debug!(%error, "the shared webhook consumer of earlier versions was not deleted");
                }
                return Ok(next);
            }
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
                state.last_sequence + 1
            }
            Err(error) => return Err(error.to_string()),
        };
        self.save(next).await?;
        Ok(next)
    }

    /// Saves the position.
    async fn save(&self, next_sequence: u64) -> Result<(), String> {
        let cursor = Cursor {
            next_sequence,
            holder: self.instance.to_owned(),
            saved_at_ms: now_ms(),
        };
        let value = codec::to_json(&cursor).map_err(|e| e.to_string())?;
        self.resources
            .leader
            .put(names::KEY_WEBHOOK_CURSOR, value.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Queues one delivery, trying again (waits doubling up to [`QUEUE_BACKOFF_MAX`]) until it
/// is stored, the lease is lost or the source stops: revisions are read in order, and the
/// position passes one only once all its events are queued.
async fn queue(
    context: &async_nats::jetstream::Context,
    event: WebhookEvent,
    delivery: &Delivery,
    holding: &watch::Receiver<Role>,
    stopping: &CancellationToken,
) -> Result<(), String> {
    let subject = names::webhooks_subject(delivery.tenant.as_str());
    let payload = serde_json::to_vec(delivery).map_err(|e| e.to_string())?;
    let mut wait = Duration::from_millis(100);
    loop {
        let publish = PublishMessage::build()
            .payload(payload.clone().into())
            .message_id(delivery.id.clone());
        let queued = async { context.send_publish(subject.clone(), publish).await?.await };
        match queued.await {
            Ok(ack) => {
                if !ack.duplicate {
                    metrics::record_webhook_event(event.as_str());
                }
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(job_id = %delivery.job_id, %error, "cannot queue a webhook delivery; retrying");
            }
        }
        if !holding.borrow().is_leader() {
            return Err("the source lease was lost".to_owned());
        }
        if stopping.is_cancelled() {
            // The position stays before this revision: the next holder queues it.
            return Err("the source is stopping".to_owned());
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(QUEUE_BACKOFF_MAX);
    }
}

/// The deliveries a record revision implies, if its job has a webhook that asks for them.
///
/// The bucket keeps one revision per job, so a revision may be gone before it is read (a
/// step recorded right after the start replaces it): events are derived from the state a
/// revision shows, not from the change it made. A job seen running (or ended after running)
/// has started; a step seen is reported (at most one per `progress_interval_ms` per job,
/// the last step always); an ended job has completed. Each event's message id is stable, so
/// one seen twice (here, or by another gateway) is queued once.
fn events_of(
    record: &JobRecord,
    config: &WebhookConfig,
    retention: &RetentionConfig,
    seen: &mut Seen,
    now: u64,
) -> Vec<(WebhookEvent, Delivery)> {
    let Some(hook) = record.webhook.as_ref() else {
        return Vec::new();
    };
    if record.deleted_at_ms.is_some() {
        return Vec::new();
    }
    let id = record.id;
    let mut events = Vec::new();
    let ran = record.started_at_ms.is_some() && record.attempt > 0;
    if ran && seen.started.get(&id) != Some(&record.attempt) {
        seen.started.insert(id, record.attempt);
        events.push((
            WebhookEvent::Start,
            format!("msg_{id}_start_{}", record.attempt),
        ));
    }
    if record.state == JobState::Running
        && let Some(progress) = record.progress.filter(|p| p.step > 0)
    {
        let recent = seen
            .progress
            .get(&id)
            .is_some_and(|last| now.saturating_sub(*last) < config.progress_interval_ms);
        if !recent || progress.step >= progress.total_steps {
            seen.progress.insert(id, now);
            events.push((
                WebhookEvent::Progress,
                format!("msg_{id}_progress_{}_{}", record.attempt, progress.step),
            ));
        }
    }
    if record.state.is_terminal() {
        seen.started.remove(&id);
        seen.progress.remove(&id);
        events.push((WebhookEvent::Completed, format!("msg_{id}_completed")));
    }
    events
        .into_iter()
        .filter(|(event, _)| hook.events.contains(event))
        .map(|(event, message_id)| {
            let mut data = JobView::from_record(record);
            data.expires_at = retention.expires_at_s(record);
            let kind = match event {
                WebhookEvent::Start => "video.started",
                WebhookEvent::Progress => "video.progress",
                WebhookEvent::Completed => "video.completed",
            };
            let body = serde_json::json!({ "type": kind, "timestamp": now / 1000, "data": data });
            let delivery = Delivery {
                id: message_id,
                tenant: record.tenant.clone(),
                job_id: id,
                url: hook.url.clone(),
                body: body.to_string(),
            };
            (event, delivery)
        })
        .collect()
}

/// What this gateway already queued, per job: the attempt whose start it reported, and
/// when it last reported a step.
#[derive(Debug, Default)]
struct Seen {
    started: HashMap<JobId, u32>,
    progress: HashMap<JobId, u64>,
}

#[cfg(test)]
mod tests {
    use protocol::record::{HistoryEntry, Progress, Webhook};
    use protocol::{JobSpec, Limits, TenantId};

    use super::*;

    fn record(events: Vec<WebhookEvent>) -> JobRecord {
        let spec = JobSpec::new("x");
        let shape = spec.validate(&Limits::default()).expect("valid");
        let mut record = JobRecord::queued(
            JobId::new(),
            TenantId::default_tenant(),
            spec,
            shape,
            1,
            3,
            0,
        );
        record.webhook = Some(Webhook {
            url: "https://example.com/hook".into(),
            events,
        });
        record.attempt = 1;
        record
    }

    fn moved(record: &mut JobRecord, to: JobState, at_ms: u64) {
        record.history.push(HistoryEntry {
            at_ms,
            from: record.state,
            to,
            event: "test".into(),
            attempt: record.attempt,
        });
        record.state = to;
        record.updated_at_ms = at_ms;
    }

    fn ids(events: &[(WebhookEvent, Delivery)]) -> Vec<String> {
        events.iter().map(|(_, d)| d.id.clone()).collect()
    }

    #[test]
    fn states_become_events_with_stable_ids_even_when_revisions_are_missed() {
        let (config, retention) = (WebhookConfig::default(), RetentionConfig::default());
        let mut seen = Seen::default();
        let mut job = record(WebhookEvent::ALL.to_vec());
        moved(&mut job, JobState::Running, 10);
        job.started_at_ms = Some(10);
        let events = events_of(&job, &config, &retention, &mut seen, 10);
        assert_eq!(ids(&events), vec![format!("msg_{}_start_1", job.id)]);
        let body: serde_json::Value = serde_json::from_str(&events[0].1.body).expect("json");
        assert_eq!(body["type"], "video.started");
        assert_eq!(body["data"]["id"], job.id.to_string());
        // Steps: the first goes, the next within the interval does not, the last always;
        // the start is not reported again.
        job.progress = Some(Progress {
            step: 1,
            total_steps: 3,
        });
        assert_eq!(
            events_of(&job, &config, &retention, &mut seen, 1_000).len(),
            1
        );
        job.progress = Some(Progress {
            step: 2,
            total_steps: 3,
        });
        assert!(events_of(&job, &config, &retention, &mut seen, 1_100).is_empty());
        job.progress = Some(Progress {
            step: 3,
            total_steps: 3,
        });
        let last = events_of(&job, &config, &retention, &mut seen, 1_200);
        assert_eq!(ids(&last), vec![format!("msg_{}_progress_1_3", job.id)]);
        moved(&mut job, JobState::Succeeded, 50);
        let done = events_of(&job, &config, &retention, &mut seen, 1_300);
        assert_eq!(ids(&done), vec![format!("msg_{}_completed", job.id)]);
        // A gateway that only saw the end reports the start too (its id is the same).
        let fresh = events_of(&job, &config, &retention, &mut Seen::default(), 1_400);
        assert_eq!(
            ids(&fresh),
            vec![
                format!("msg_{}_start_1", job.id),
                format!("msg_{}_completed", job.id)
            ]
        );
    }

    #[test]
    fn only_the_events_asked_for_and_never_without_a_webhook() {
        let (config, retention) = (WebhookConfig::default(), RetentionConfig::default());
        let mut seen = Seen::default();
        let mut job = record(vec![WebhookEvent::Completed]);
        moved(&mut job, JobState::Running, 10);
        job.started_at_ms = Some(10);
        assert!(events_of(&job, &config, &retention, &mut seen, 10).is_empty());
        moved(&mut job, JobState::Cancelled, 20);
        assert_eq!(events_of(&job, &config, &retention, &mut seen, 20).len(), 1);
        job.webhook = None;
        assert!(events_of(&job, &config, &retention, &mut seen, 20).is_empty());
    }
}
