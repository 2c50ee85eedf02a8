//! Webhook events from the job records: a durable pull consumer shared by every gateway
//! reads each revision of `KV_mochi_jobs` once (it resumes where it stopped after a
//! restart) and queues the event a revision implies on `MOCHI_WEBHOOKS`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use protocol::api::JobView;
use protocol::jetstream::Resources;
use protocol::record::WebhookEvent;
use protocol::{JobId, JobRecord, JobState, codec, names, now_ms};

use super::types::{Delivery, WebhookConfig};
use crate::files::RetentionConfig;
use crate::index::{JobIndex, WeakIndex};
use crate::metrics;

/// Wait before starting over after the consumer failed.
const RETRY: Duration = Duration::from_secs(1);

/// Reads record revisions into deliveries for as long as `index` lives.
pub fn start(
    index: &JobIndex,
    resources: &Resources,
    config: &WebhookConfig,
    retention: &RetentionConfig,
) -> tokio::task::JoinHandle<()> {
    let index = index.downgrade();
    let context = resources.context.clone();
    let config = config.clone();
    let retention = retention.clone();
    tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            if let Err(error) = run(&context, &config, &retention, &index, &mut seen).await {
                tracing::warn!(%error, "webhook events: consumer failed; starting over");
            }
            if index.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    })
}

async fn run(
    context: &async_nats::jetstream::Context,
    config: &WebhookConfig,
    retention: &RetentionConfig,
    index: &WeakIndex,
    seen: &mut Seen,
) -> Result<(), String> {
    let stream = context
        .get_stream(names::kv_stream(names::BUCKET_JOBS))
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .get_or_create_consumer(
            names::CONSUMER_WEBHOOK_EVENTS,
            pull::Config {
                durable_name: Some(names::CONSUMER_WEBHOOK_EVENTS.to_owned()),
                description: Some("mochi-serve: job record revisions → webhook events".to_owned()),
                // From its creation on: records older than webhooks have no events to send.
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        if index.upgrade().is_none() {
            return Ok(());
        }
        let mut batch = consumer
            .fetch()
            .max_messages(200)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let deliveries = codec::decode::<JobRecord>(&message.payload)
                .map(|record| events_of(&record, config, retention, seen, now_ms()))
                .unwrap_or_default();
            let mut queued_all = true;
            for (event, delivery) in deliveries {
                let subject = names::webhooks_subject(delivery.tenant.as_str());
                let payload = serde_json::to_vec(&delivery).map_err(|e| e.to_string())?;
                let publish = PublishMessage::build()
                    .payload(payload.into())
                    .message_id(delivery.id.clone());
                let queued = async { context.send_publish(subject, publish).await?.await };
                match queued.await {
                    Ok(ack) if !ack.duplicate => metrics::record_webhook_event(event.as_str()),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(job_id = %delivery.job_id, %error, "cannot queue a webhook delivery");
                        queued_all = false;
                    }
                }
            }
            if !queued_all {
                // Unacknowledged: the revision comes back (if still the newest) and is
                // queued then; what was queued already is dropped as a duplicate.
                continue;
            }
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "webhook events: ack not sent");
            }
        }
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
