//! Queue positions and ETAs: every `eta_refresh_ms` the scheduler asks its policy where each
//! waiting job stands and when it should start and finish (allowing for the later arrivals
//! that will overtake it), and publishes what changed to the `mochi_queue` bucket, which the
//! gateway reads for `GET /v1/videos/{id}` and the event stream.
//!
//! What a refresh writes is bounded by what moved, not by the queue's length: a job's entry
//! is rewritten when its own place or times move by enough to matter to its owner (see
//! [`moved`]), and the queue's counts go once per refresh into one [`QueueSummary`] entry
//! rather than into every job's. Over a job's wait its entry is written about twenty times
//! plus a number that grows with the logarithm of its starting position, whatever arrives
//! behind it.
//!
//! What was not stored is written again: an entry (or the summary) whose write failed at
//! the next refresh, and every entry once the bucket holds fewer writes than it
//! acknowledged (a single server with asynchronous persistence that crashed, a bucket
//! deleted and made again), which each refresh checks with one stream-info request.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{FutureExt, StreamExt};
use protocol::jetstream::Resources;
use protocol::queue::{QueueInfo, QueueSummary, SUMMARY_KEY};
use protocol::{JobId, JobRecord, JobState, names, now_ms};
use tokio::task::JoinHandle;

use super::clock::ModelClock;
use crate::cost::{CostModel, GpuClass};
use crate::policy::eta::{ARRIVAL_WINDOW_MS, Arrivals, QueueEstimate};
use crate::policy::{self, Lane, LaneBounds, Policy, Slot, Waiting};

/// A published ETA is rewritten when the estimate moved by more than this, ms (or by more
/// than a tenth of the wait left, if that is longer).
const ETA_REPUBLISH_MS: u64 = 5_000;
/// Positions up to this one are published exactly; later ones when they move by more than
/// a tenth.
const EXACT_POSITIONS: u32 = 20;
/// Writes to `mochi_queue` in flight at once.
const QUEUE_WRITES_IN_FLIGHT: usize = 32;

/// The `mochi_queue` bucket, what was last published there, and the arrivals seen.
pub(super) struct QueuePublisher {
    context: jetstream::Context,
    store: Option<kv::Store>,
    published: HashMap<JobId, QueueInfo>,
    /// The counts last published (none yet: the first refresh writes them).
    summary: Option<QueueSummary>,
    /// The highest revision the bucket acknowledged to this publisher.
    acknowledged: u64,
    publishing: Option<JoinHandle<Written>>,
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
            context: resources.context.clone(),
            store,
            published: HashMap::new(),
            summary: None,
            acknowledged: 0,
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
        self.settle_last_write();
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
        let summary = summary_of(now, &estimates, &lane_of);
        let summary = self
            .summary
            .as_ref()
            .is_none_or(|old| (old.queued, old.by_lane) != (summary.queued, summary.by_lane))
            .then_some(summary);
        let (puts, gone) = self.changes(now, estimates, &lane_of);
        if let Some(summary) = &summary {
            self.summary = Some(summary.clone());
        }
        // Also with nothing to write: the task checks that the bucket kept what it took.
        self.publishing = Some(tokio::spawn(write(
            self.context.clone(),
            store,
            self.acknowledged,
            Changes {
                summary,
                puts,
                gone,
            },
        )));
    }

    /// Takes in how the last refresh's writes went (it has finished: [`Self::due`]): what
    /// failed is forgotten, so the next refresh writes it again; everything is, when the
    /// bucket lost writes it had acknowledged.
    fn settle_last_write(&mut self) {
        let Some(Ok(written)) = self.publishing.take().and_then(|task| task.now_or_never()) else {
            return;
        };
        if written.lost {
            tracing::warn!(
                entries = self.published.len(),
                "mochi_queue holds fewer writes than it acknowledged; publishing every position again"
            );
        }
        forget_unwritten(
            &mut self.published,
            &mut self.summary,
            &mut self.acknowledged,
            &written,
        );
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
                .is_none_or(|old| moved(old, &info, now));
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

/// The queue's counts from this refresh's estimates.
fn summary_of(
    now: u64,
    estimates: &[QueueEstimate],
    lane_of: &HashMap<JobId, Lane>,
) -> QueueSummary {
    let mut by_lane = [0u32; 3];
    for estimate in estimates {
        let lane = lane_of.get(&estimate.job_id).map_or(0, |lane| lane.index());
        by_lane[lane] = by_lane[lane].saturating_add(1);
    }
    QueueSummary {
        queued: u32::try_from(estimates.len()).unwrap_or(u32::MAX),
        by_lane,
        updated_at_ms: now,
    }
}

/// Whether a job's published entry is out of date at `now`: another lane; a position that
/// moved (any move up to [`EXACT_POSITIONS`], beyond it a move by more than a tenth); an
/// ETA that appeared or went, or that moved by more than [`ETA_REPUBLISH_MS`] or a tenth
/// of the wait it predicted, whichever is longer. The queue's length is not a reason: it
/// is in the summary. Without the tenths, each job leaving the head of a long queue would
/// rewrite every waiting job's entry.
fn moved(old: &QueueInfo, new: &QueueInfo, now: u64) -> bool {
    let position_moved = old.position != new.position
        && (old.position <= EXACT_POSITIONS
            || u64::from(old.position.abs_diff(new.position)) * 10 > u64::from(old.position));
    let eta_moved = match (old.eta_start_ms, new.eta_start_ms) {
        (Some(a), Some(b)) => a.abs_diff(b) > ETA_REPUBLISH_MS.max(a.saturating_sub(now) / 10),
        (a, b) => a.is_some() != b.is_some(),
    };
    old.lane != new.lane || position_moved || eta_moved
}

/// Forgets what a refresh did not store, so that the next one writes it: the entries and
/// summary whose writes failed, or everything when the bucket lost acknowledged writes.
fn forget_unwritten(
    published: &mut HashMap<JobId, QueueInfo>,
    summary: &mut Option<QueueSummary>,
    acknowledged: &mut u64,
    written: &Written,
) {
    if written.lost {
        published.clear();
        *summary = None;
        *acknowledged = 0;
        return;
    }
    *acknowledged = (*acknowledged).max(written.acknowledged);
    for job_id in &written.failed {
        published.remove(job_id);
    }
    if written.summary_failed {
        *summary = None;
    }
}

/// What one refresh writes.
struct Changes {
    /// The queue's counts, if they changed.
    summary: Option<QueueSummary>,
    /// New and moved entries.
    puts: Vec<(JobId, QueueInfo)>,
    /// Jobs no longer waiting, whose entries go.
    gone: Vec<JobId>,
}

/// How a refresh's writes went.
#[derive(Debug, Default)]
struct Written {
    /// The bucket's last revision was below what it had acknowledged before this refresh.
    lost: bool,
    /// The highest revision acknowledged to this refresh's writes.
    acknowledged: u64,
    /// Jobs whose entries were not written.
    failed: Vec<JobId>,
    /// The summary was not written.
    summary_failed: bool,
}

/// Checks that the bucket still holds every write it acknowledged up to `acknowledged`,
/// writes the summary and the changed entries, then removes the gone ones, some at a time.
async fn write(
    context: jetstream::Context,
    store: kv::Store,
    acknowledged: u64,
    changes: Changes,
) -> Written {
    let Changes {
        summary,
        puts,
        gone,
    } = changes;
    let mut written = Written::default();
    if acknowledged > 0 {
        match context
            .get_stream(names::kv_stream(names::BUCKET_QUEUE))
            .await
        {
            Ok(stream) => written.lost = stream.cached_info().state.last_sequence < acknowledged,
            Err(error) => tracing::debug!(%error, "cannot read mochi_queue's state"),
        }
    }
    if let Some(summary) = summary
        && let Ok(bytes) = serde_json::to_vec(&summary)
    {
        match store.put(SUMMARY_KEY, bytes.into()).await {
            Ok(revision) => written.acknowledged = revision,
            Err(error) => {
                tracing::debug!(%error, "queue counts not published");
                written.summary_failed = true;
            }
        }
    }
    let writes = puts.into_iter().map(|(job_id, info)| {
        let store = store.clone();
        async move {
            let bytes = serde_json::to_vec(&info).map_err(|_| job_id)?;
            match store.put(job_id.to_string(), bytes.into()).await {
                Ok(revision) => Ok(revision),
                Err(error) => {
                    tracing::debug!(%job_id, %error, "queue position not published");
                    Err(job_id)
                }
            }
        }
    });
    let outcomes = futures::stream::iter(writes)
        .buffer_unordered(QUEUE_WRITES_IN_FLIGHT)
        .collect::<Vec<Result<u64, JobId>>>()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(revision) => written.acknowledged = written.acknowledged.max(revision),
            Err(job_id) => written.failed.push(job_id),
        }
    }
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
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_refresh_did_not_store_is_written_again() {
        let (a, b) = (JobId::new(), JobId::new());
        let mut published = HashMap::from([(a, entry(1, 2, None)), (b, entry(2, 2, None))]);
        let counts = QueueSummary {
            queued: 2,
            by_lane: [2, 0, 0],
            updated_at_ms: 0,
        };
        let mut summary = Some(counts.clone());
        let mut acknowledged = 10;
        let failed = Written {
            acknowledged: 12,
            failed: vec![b],
            summary_failed: true,
            ..Written::default()
        };
        forget_unwritten(&mut published, &mut summary, &mut acknowledged, &failed);
        assert!(published.contains_key(&a) && !published.contains_key(&b));
        assert_eq!((summary.is_none(), acknowledged), (true, 12));
        let mut summary = Some(counts);
        let lost = Written {
            lost: true,
            ..Written::default()
        };
        forget_unwritten(&mut published, &mut summary, &mut acknowledged, &lost);
        assert!(published.is_empty() && summary.is_none());
        assert_eq!(acknowledged, 0);
    }

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
    fn an_entry_is_rewritten_when_its_place_or_eta_moves_enough_never_for_the_length_alone() {
        // Half a minute before the ETA below.
        let now = 30_000;
        let old = entry(5, 100, Some(60_000));
        assert!(!moved(&old, &entry(5, 100, Some(60_000)), now));
        assert!(
            !moved(&old, &entry(5, 100_000, Some(60_000)), now),
            "length"
        );
        assert!(moved(&old, &entry(4, 100, Some(60_000)), now), "position");
        let mut other_lane = entry(5, 100, Some(60_000));
        other_lane.lane = "long".to_owned();
        assert!(moved(&old, &other_lane, now), "lane");
        // Within the first 20 every move counts; beyond, a move by more than a tenth.
        assert!(moved(&entry(20, 100, None), &entry(19, 100, None), now));
        assert!(!moved(&entry(300, 900, None), &entry(270, 900, None), now));
        assert!(moved(&entry(300, 900, None), &entry(269, 900, None), now));
        assert!(moved(&entry(300, 900, None), &entry(331, 900, None), now));
        // An ETA half a minute away: moves over 5 s count; an hour away: over 6 minutes.
        assert!(
            !moved(&old, &entry(5, 100, Some(64_000)), now),
            "ETA within 5 s"
        );
        assert!(
            moved(&old, &entry(5, 100, Some(66_000)), now),
            "ETA beyond 5 s"
        );
        let hour = now + 3_600_000;
        let far = entry(300, 900, Some(hour));
        assert!(!moved(&far, &entry(300, 900, Some(hour + 360_000)), now));
        assert!(moved(&far, &entry(300, 900, Some(hour + 360_001)), now));
        assert!(moved(&old, &entry(5, 100, None), now), "ETA gone");
        assert!(moved(&entry(5, 100, None), &old, now), "ETA came");
    }

    #[test]
    fn the_summary_counts_the_estimated_jobs_by_lane() {
        let estimate = |job_id| QueueEstimate {
            job_id,
            position: 1,
            eta_start_ms: None,
            eta_finish_ms: None,
        };
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        let lane_of = HashMap::from([(a, Lane::Long), (b, Lane::Short), (c, Lane::Long)]);
        let summary = summary_of(7, &[estimate(a), estimate(b), estimate(c)], &lane_of);
        assert_eq!(
            summary,
            QueueSummary {
                queued: 3,
                by_lane: [1, 0, 2],
                updated_at_ms: 7
            }
        );
    }
}
