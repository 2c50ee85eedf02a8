//! Queue positions and ETAs: every `eta_refresh_ms` the scheduler asks its policy where each
//! waiting job stands and when it should start and finish (allowing for the later arrivals
//! that will overtake it), and publishes what changed to the `mochi_queue` bucket, which the
//! gateway reads for `GET /v1/videos/{id}` and the event stream.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::queue::QueueInfo;
use protocol::{JobId, JobRecord, JobState, names, now_ms};
use tokio::task::JoinHandle;

use super::clock::ModelClock;
use crate::cost::{CostModel, GpuClass};
use crate::policy::eta::{ARRIVAL_WINDOW_MS, Arrivals, QueueEstimate};
use crate::policy::{self, Lane, LaneBounds, Policy, Slot, Waiting};

/// A published ETA is rewritten when the estimate moved by more than this, ms.
const ETA_REPUBLISH_MS: u64 = 5_000;
/// Writes to `mochi_queue` in flight at once.
const QUEUE_WRITES_IN_FLIGHT: usize = 32;

/// The `mochi_queue` bucket, what was last published there, and the arrivals seen.
pub(super) struct QueuePublisher {
    store: Option<kv::Store>,
    published: HashMap<JobId, QueueInfo>,
    publishing: Option<JoinHandle<()>>,
    estimated_at_ms: u64,
    /// Recent arrivals by lane (ETAs allow for the later jobs that will go first).
    arrivals: Arrivals,
}

impl QueuePublisher {
    /// Opens (or creates) the `mochi_queue` bucket; entries expire a day after their last
    /// refresh, so a crashed coordinator leaves no stale positions for long.
    pub(super) async fn open(resources: &Resources, clock: ModelClock) -> Self {
        let store = match resources.context.get_key_value(names::BUCKET_QUEUE).await {
            Ok(store) => Some(store),
            Err(_) => {
                let created = resources
                    .context
                    .create_key_value(kv::Config {
                        bucket: names::BUCKET_QUEUE.to_owned(),
                        description: "mochi-serve queue positions and ETAs".to_owned(),
                        history: 1,
                        max_age: Duration::from_secs(24 * 3600),
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(store) => Some(store),
                    Err(error) => {
                        tracing::warn!(%error, "queue positions will not be published");
                        None
                    }
                }
            }
        };
        Self {
            store,
            published: HashMap::new(),
            publishing: None,
            estimated_at_ms: 0,
            arrivals: Arrivals::new(ARRIVAL_WINDOW_MS, clock.model_ms(now_ms())),
        }
    }

    /// Counts a newly queued job (first attempt) as an arrival in its lane.
    pub(super) fn observe(
        &mut self,
        record: &JobRecord,
        model: &CostModel,
        lanes: LaneBounds,
        clock: &ModelClock,
    ) {
        if record.state != JobState::Queued || record.attempt > 1 {
            return;
        }
        let reference_s = model.estimate(&record.shape, GpuClass::H100).gpu_seconds;
        let lane = lanes.lane(reference_s);
        self.arrivals.observe(
            record.id,
            clock.model_ms(record.created_at_ms),
            lane,
            reference_s,
        );
    }

    /// Whether the estimates are due at `now` (every `period_ms`, none while a write is
    /// under way; `period_ms` 0 turns them off).
    pub(super) fn due(&self, now: u64, period_ms: u64) -> bool {
        period_ms > 0
            && self.store.is_some()
            && now.saturating_sub(self.estimated_at_ms) >= period_ms
            && self
                .publishing
                .as_ref()
                .is_none_or(|task| task.is_finished())
    }

    /// Estimates every waiting job's position and ETA on `slots` and publishes the changed
    /// entries (and removes those of jobs no longer waiting) in the background.
    pub(super) fn publish(
        &mut self,
        now: u64,
        policy: &dyn Policy,
        queued: Vec<Waiting>,
        slots: &[Slot],
        clock: &ModelClock,
    ) {
        let Some(store) = self.store.clone() else {
            return;
        };
        self.estimated_at_ms = now;
        let lanes = policy.lanes();
        let model_now = clock.model_ms(now);
        let view = policy::View {
            now_ms: model_now,
            slots,
        };
        let queued = clock.waiting(queued);
        let capacity = slots
            .iter()
            .map(|slot| slot.class.spec().relative_speed)
            .sum();
        let overtaking = self.arrivals.overtaking(model_now, capacity);
        let mut estimates = policy::eta::estimate_with(policy, &view, &queued, overtaking);
        for estimate in &mut estimates {
            estimate.eta_start_ms = estimate.eta_start_ms.map(|ms| clock.wall_ms(ms));
            estimate.eta_finish_ms = estimate.eta_finish_ms.map(|ms| clock.wall_ms(ms));
        }
        let lane_of: HashMap<JobId, Lane> = queued
            .iter()
            .map(|job| (job.job_id, lanes.lane(job.cost.reference_seconds())))
            .collect();
        let (puts, gone) = self.changes(now, estimates, &lane_of);
        if puts.is_empty() && gone.is_empty() {
            return;
        }
        self.publishing = Some(tokio::spawn(write(store, puts, gone)));
    }

    /// The entries to write (new or moved) and the jobs whose entries to remove; what is
    /// published from now on is remembered.
    fn changes(
        &mut self,
        now: u64,
        estimates: Vec<QueueEstimate>,
        lane_of: &HashMap<JobId, Lane>,
    ) -> (Vec<(JobId, QueueInfo)>, Vec<JobId>) {
        let total = u32::try_from(estimates.len()).unwrap_or(u32::MAX);
        let mut current = HashMap::with_capacity(estimates.len());
        let mut puts = Vec::new();
        for estimate in estimates {
            let info = QueueInfo {
                position: estimate.position,
                queued: total,
                lane: lane_of
                    .get(&estimate.job_id)
                    .map_or("short", |lane| lane.as_str())
                    .to_owned(),
                eta_start_ms: estimate.eta_start_ms,
                eta_finish_ms: estimate.eta_finish_ms,
                updated_at_ms: now,
            };
            let changed = self
                .published
                .get(&estimate.job_id)
                .is_none_or(|old| moved(old, &info));
            if changed {
                puts.push((estimate.job_id, info.clone()));
                current.insert(estimate.job_id, info);
            } else if let Some(old) = self.published.remove(&estimate.job_id) {
                current.insert(estimate.job_id, old);
            }
        }
        let gone = self
            .published
            .keys()
            .filter(|job_id| !current.contains_key(*job_id))
            .copied()
            .collect();
        self.published = current;
        (puts, gone)
    }

    /// Stops a write under way.
    pub(super) fn shutdown(&mut self) {
        if let Some(publishing) = self.publishing.take() {
            publishing.abort();
        }
    }
}

/// Whether a job's published entry is out of date: another position, a queue length that
/// moved by more than a tenth (any change below ten jobs), an ETA that appeared or went, or
/// one that moved by more than [`ETA_REPUBLISH_MS`]. Without the tenth, every arrival or
/// departure behind a long queue would rewrite every waiting job's entry.
fn moved(old: &QueueInfo, new: &QueueInfo) -> bool {
    old.position != new.position
        || u64::from(old.queued.abs_diff(new.queued)) * 10 > u64::from(old.queued.max(9))
        || old.eta_start_ms.is_some() != new.eta_start_ms.is_some()
        || old
            .eta_start_ms
            .zip(new.eta_start_ms)
            .is_some_and(|(a, b)| a.abs_diff(b) > ETA_REPUBLISH_MS)
}

/// Writes the changed entries, then removes the gone ones, some at a time.
async fn write(store: kv::Store, puts: Vec<(JobId, QueueInfo)>, gone: Vec<JobId>) {
    let writes = puts.into_iter().map(|(job_id, info)| {
        let store = store.clone();
        async move {
            let Ok(bytes) = serde_json::to_vec(&info) else {
                return;
            };
            if let Err(error) = store.put(job_id.to_string(), bytes.into()).await {
                tracing::debug!(%job_id, %error, "queue position not published");
            }
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(QUEUE_WRITES_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let deletes = gone.into_iter().map(|job_id| {
        let store = store.clone();
        async move {
            let _ = store.purge(job_id.to_string()).await;
        }
    });
    futures::stream::iter(deletes)
        .buffer_unordered(QUEUE_WRITES_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u32, queued: u32, eta_start_ms: Option<u64>) -> QueueInfo {
        QueueInfo {
            position,
            queued,
            lane: "short".to_owned(),
            eta_start_ms,
            eta_finish_ms: None,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn an_entry_is_rewritten_when_its_position_or_eta_moves_not_for_every_arrival_behind_it() {
        let old = entry(5, 100, Some(60_000));
        assert!(!moved(&old, &entry(5, 100, Some(60_000))));
        assert!(moved(&old, &entry(4, 100, Some(60_000))), "position");
        assert!(!moved(&old, &entry(5, 110, Some(60_000))), "a tenth more");
        assert!(
            moved(&old, &entry(5, 111, Some(60_000))),
            "over a tenth more"
        );
        assert!(
            moved(&old, &entry(5, 89, Some(60_000))),
            "over a tenth less"
        );
        assert!(!moved(&old, &entry(5, 100, Some(64_000))), "ETA within 5 s");
        assert!(moved(&old, &entry(5, 100, Some(66_000))), "ETA beyond 5 s");
        assert!(moved(&old, &entry(5, 100, None)), "ETA gone");
        // Short queues show the exact length.
        assert!(moved(&entry(1, 3, None), &entry(1, 4, None)));
        assert!(moved(&entry(1, 9, None), &entry(1, 8, None)));
    }
}
