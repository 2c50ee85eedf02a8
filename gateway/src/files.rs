//! A job's files in the object store (every attempt's MP4, previews, saved latents): their
//! removal when the owner deletes the job, and when the retention of a finished job runs
//! out. Each gateway replica sweeps on its own from its job index; two replicas removing
//! the same files, or marking the same record, is harmless (removal is idempotent, the
//! mark a compare-and-set).

use std::time::Duration;

use async_nats::jetstream::object_store::DeleteErrorKind;
use protocol::jetstream::Resources;
use protocol::{JobId, JobRecord, names, now_ms};

use crate::index::JobIndex;
use serde::{Deserialize, Serialize};

/// Retention settings (`[gateway.retention]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long a finished job keeps its files, seconds after it ended (0: for ever).
    pub files_s: u64,
    /// Time between two sweeps, ms.
    pub sweep_interval_ms: u64,
    /// Most jobs one sweep handles (the next sweep takes the rest).
    pub max_per_sweep: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            files_s: 7 * 24 * 3600,
            sweep_interval_ms: 60_000,
            max_per_sweep: 500,
        }
    }
}

impl RetentionConfig {
    /// When `record`'s files are (or were) removed, seconds since the epoch: `None` while
    /// it runs, for a job whose files are kept for ever, or one deleted.
    pub fn expires_at_s(&self, record: &JobRecord) -> Option<u64> {
        let ended_ms = record
            .finished_at_ms
            .filter(|_| record.state.is_terminal() && record.deleted_at_ms.is_none())?;
        (self.files_s > 0).then(|| ended_ms / 1000 + self.files_s)
    }
}

/// Removes what job `record` left in the object store (every attempt's video, previews and
/// latents) and, with `dead_letter`, its copy in `MOCHI_DLQ`. Best effort: what cannot be
/// removed now is logged.
pub async fn remove(resources: &Resources, record: &JobRecord, dead_letter: bool) {
    let id = record.id;
    let job = id.to_string();
    let mut objects = Vec::new();
    for attempt in 1..=record.attempt {
        let video = names::video_object(&job, attempt);
        objects.push(names::thumbnail_object(&video));
        objects.push(names::spritesheet_object(&video));
        objects.push(video);
        objects.push(names::latent_object(&job, attempt));
        objects.push(names::paused_object(&job, attempt));
    }
    for name in objects {
        match resources.videos.delete(&name).await {
            Ok(()) => {}
            Err(error) if error.kind() == DeleteErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(job_id = %id, object = %name, %error, "cannot remove a job's file");
            }
        }
    }
    if dead_letter && record.state == protocol::JobState::Dead {
        let subject = names::dlq_subject(&job);
        if let Err(error) = resources.dlq.purge().filter(subject).await {
            tracing::warn!(job_id = %id, %error, "cannot remove a deleted job's dead letter");
        }
    }
}

/// Sweeps every `sweep_interval_ms` for as long as `index` lives: the files of jobs whose
/// retention ran out are removed and their records marked (`files_removed_at_ms`).
pub fn sweep(
    index: &JobIndex,
    resources: &Resources,
    config: &RetentionConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    let config = config.clone();
    if config.files_s == 0 {
        return None;
    }
    let index = index.downgrade();
    let resources = resources.clone();
    Some(tokio::spawn(async move {
        let interval = Duration::from_millis(config.sweep_interval_ms.max(1));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(index) = index.upgrade() else { return };
            let ended_before = now_ms().saturating_sub(config.files_s.saturating_mul(1000));
            let due = index.expired(ended_before, config.max_per_sweep);
            drop(index);
            for id in due {
                expire(&resources, &config, id).await;
            }
        }
    }))
}

/// Removes the files of job `id` if its retention ran out, and marks its record.
async fn expire(resources: &Resources, config: &RetentionConfig, id: JobId) {
    let due = |record: &JobRecord| {
        record.files_removed_at_ms.is_none()
            && config
                .expires_at_s(record)
                .is_some_and(|at| at * 1000 <= now_ms())
    };
    let record = match resources.jobs.get(id).await {
        Ok(Some((record, _))) if due(&record) => record,
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(job_id = %id, %error, "retention sweep cannot read a record");
            return;
        }
    };
    remove(resources, &record, false).await;
    let marked = resources
        .jobs
        .update(id, |current| {
            due(current).then(|| JobRecord {
                files_removed_at_ms: Some(now_ms()),
                ..current.clone()
            })
        })
        .await;
    match marked {
        Ok(Some(_)) => {
            tracing::info!(job_id = %id, tenant = %record.tenant, "retention ran out; files removed");
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(job_id = %id, %error, "retention sweep cannot mark a record"),
    }
}

#[cfg(test)]
mod tests {
    use protocol::{JobSpec, JobState, Limits, TenantId};

    use super::*;

    #[test]
    fn files_expire_after_the_job_ended_plus_the_retention() {
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
        let config = RetentionConfig::default();
        assert_eq!(config.expires_at_s(&record), None, "still queued");
        record.state = JobState::Succeeded;
        record.finished_at_ms = Some(10_000);
        assert_eq!(config.expires_at_s(&record), Some(10 + 7 * 24 * 3600));
        let forever = RetentionConfig {
            files_s: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(forever.expires_at_s(&record), None);
    }
}
