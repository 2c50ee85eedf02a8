//! Queue positions and ETAs: every `eta_refresh_ms` the scheduler asks its policy where each
//! waiting job stands and when it should start and finish (allowing for the later arrivals
//! that will overtake it), and publishes what changed to the `mochi_queue` bucket, which the
//! gateway reads for `GET /v1/videos/{id}` and the event stream.
//!
//! What a refresh writes is bounded by what moved, not by the queue's length nor by the
//! arrivals: the jobs first seen join pages, sixteen per [`protocol::queue::PAGE_MS`] of
//! submissions ([`QueuePage`], written when jobs join them); a job gets an entry of its own
//! when its place or times move by enough to matter to its owner ([`book`]); and the
//! queue's counts go once per refresh into one [`QueueSummary`] entry rather than into every
//! job's. Over a job's wait its position is written about twenty times plus a number that
//! grows with the logarithm of its starting position, whatever arrives behind it; a burst
//! of arrivals costs one write per page.
//!
//! What was not stored is written again: an entry, a page (with its jobs) or the summary
//! whose write failed at the next refresh, and every entry once the bucket holds fewer
//! writes than it acknowledged (a single server with asynchronous persistence that crashed,
//! a bucket deleted and made again), which each refresh checks with one stream-info request.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{FutureExt, StreamExt};
use protocol::jetstream::Resources;
use protocol::queue::{QueueInfo, QueuePage, QueueSummary, SUMMARY_KEY};
use protocol::{JobId, JobRecord, JobState, names, now_ms};
use tokio::task::JoinHandle;

use self::book::{Book, Estimate, Plan};
use super::clock::ModelClock;
use crate::cost::{CostModel, GpuClass};
use crate::policy::eta::{ARRIVAL_WINDOW_MS, Arrivals, QueueEstimate};
use crate::policy::{self, Lane, LaneBounds, Policy, Slot, Waiting};

mod book;

/// Writes to `mochi_queue` in flight at once.
const QUEUE_WRITES_IN_FLIGHT: usize = 32;

/// A refresh is due no sooner than this many times the scheduler time the last one took, so
/// that refreshes take at most a tenth of the scheduler's time however long the queue grows
/// (the period stretches beyond `eta_refresh_ms` only for queues of hundreds of thousands).
const REFRESH_TIME_SHARE_INVERSE: u64 = 10;

/// The `mochi_queue` bucket, what was last published there, and the arrivals seen.
pub(super) struct QueuePublisher {
    context: jetstream::Context,
    store: Option<kv::Store>,
    /// What the bucket shows of each waiting job.
    book: Book,
    /// The counts last published (none yet: the first refresh writes them).
    summary: Option<QueueSummary>,
    /// The highest revision the bucket acknowledged to this publisher.
    acknowledged: u64,
    publishing: Option<JoinHandle<Written>>,
    estimated_at_ms: u64,
    /// Scheduler time the last refresh took, ms.
    refresh_cost_ms: u64,
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
            book: Book::default(),
            summary: None,
            acknowledged: 0,
            publishing: None,
            estimated_at_ms: 0,
            refresh_cost_ms: 0,
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

    /// Whether the estimates are due at `now` (every `period_ms`, or every
    /// [`REFRESH_TIME_SHARE_INVERSE`] times the last refresh's time if that is longer; none
    /// while a write is under way; `period_ms` 0 turns them off).
    pub(super) fn due(&self, now: u64, period_ms: u64) -> bool {
        period_ms > 0
            && self.store.is_some()
            && now.saturating_sub(self.estimated_at_ms)
                >= refresh_gap_ms(period_ms, self.refresh_cost_ms)
            && self
                .publishing
                .as_ref()
                .is_none_or(|task| task.is_finished())
    }

    /// Estimates every waiting job's position and ETA on the slots of `snapshot` and
    /// publishes the changed entries (and removes those of jobs no longer waiting) in the
    /// background.
    pub(super) fn publish(&mut self, snapshot: Snapshot<'_, impl Fn(JobId) -> bool>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        self.settle_last_write();
        self.estimated_at_ms = snapshot.now;
        let (summary, plan) = refresh(
            &mut self.book,
            &mut self.summary,
            &mut self.arrivals,
            snapshot,
        );
        // Also with nothing to write: the task checks that the bucket kept what it took.
        self.publishing = Some(tokio::spawn(write(
            self.context.clone(),
            store,
            self.acknowledged,
            summary,
            plan,
        )));
    }

    /// Notes the scheduler time a refresh took (from gathering the waiting jobs to handing
    /// its writes to the background): it spaces the next one ([`Self::due`]).
    pub(super) fn refreshed_in(&mut self, took: Duration) {
        self.refresh_cost_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        metrics::histogram!(crate::metrics::ETA_REFRESH_SECONDS).record(took.as_secs_f64());
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
                entries = self.book.len(),
                "mochi_queue holds fewer writes than it acknowledged; publishing every position again"
            );
        }
        forget_unwritten(
            &mut self.book,
            &mut self.summary,
            &mut self.acknowledged,
            &written,
        );
    }

    /// Stops a write under way.
    pub(super) fn shutdown(&mut self) {
        if let Some(publishing) = self.publishing.take() {
            publishing.abort();
        }
    }
}

/// What one refresh estimates: the waiting jobs on the live slots at `now`.
pub(super) struct Snapshot<'a, F> {
    /// Now, ms.
    pub(super) now: u64,
    /// The policy that orders the queue.
    pub(super) policy: &'a dyn Policy,
    /// Every waiting job.
    pub(super) queued: Vec<Waiting>,
    /// Every live slot, free or running.
    pub(super) slots: &'a [Slot],
    /// The policy's clock.
    pub(super) clock: &'a ModelClock,
    /// Whether a job was never placed (it may be listed in its submission time's page).
    pub(super) never_placed: F,
}

/// Estimates every waiting job of `snapshot` and compares the estimates with what `book`
/// shows: the summary to write (`None`: the counts did not change since `last`, which it
/// updates) and the entries and pages to write and remove.
fn refresh(
    book: &mut Book,
    last: &mut Option<QueueSummary>,
    arrivals: &mut Arrivals,
    snapshot: Snapshot<'_, impl Fn(JobId) -> bool>,
) -> (Option<QueueSummary>, Plan) {
    let Snapshot {
        now,
        policy,
        queued,
        slots,
        clock,
        never_placed,
    } = snapshot;
    let lanes = policy.lanes();
    let model_now = clock.model_ms(now);
    let view = policy::View {
        now_ms: model_now,
        slots,
    };
    // By the job's index in `queued`, as the estimates give it.
    let pages: Vec<Option<u64>> = queued
        .iter()
        .map(|job| {
            never_placed(job.job_id).then(|| QueuePage::number(job.job_id, job.created_at_ms))
        })
        .collect();
    let queued = clock.waiting(queued);
    let capacity = slots
        .iter()
        .map(|slot| slot.class.spec().relative_speed)
        .sum();
    let overtaking = arrivals.overtaking(model_now, capacity);
    let mut estimates = policy::eta::estimate_with(policy, &view, &queued, overtaking);
    for estimate in &mut estimates {
        estimate.eta_start_ms = estimate.eta_start_ms.map(|ms| clock.wall_ms(ms));
        estimate.eta_finish_ms = estimate.eta_finish_ms.map(|ms| clock.wall_ms(ms));
    }
    let lane_of: Vec<Lane> = queued
        .iter()
        .map(|job| lanes.lane(job.cost.reference_seconds()))
        .collect();
    let summary = summary_of(now, &estimates, &lane_of);
    let summary = last
        .as_ref()
        .is_none_or(|old| (old.queued, old.by_lane) != (summary.queued, summary.by_lane))
        .then_some(summary);
    let plan = book.plan(now, infos(now, estimates, &lane_of, &pages));
    if let Some(summary) = &summary {
        *last = Some(summary.clone());
    }
    (summary, plan)
}

/// The time from one refresh to the next, ms: `period_ms`, or
/// [`REFRESH_TIME_SHARE_INVERSE`] times what the last one took (`cost_ms`) if that is longer.
fn refresh_gap_ms(period_ms: u64, cost_ms: u64) -> u64 {
    period_ms.max(cost_ms.saturating_mul(REFRESH_TIME_SHARE_INVERSE))
}

/// Each estimate as a reader will see it, with the page its job may be listed in.
fn infos(
    now: u64,
    estimates: Vec<QueueEstimate>,
    lane_of: &[Lane],
    pages: &[Option<u64>],
) -> Vec<Estimate> {
    let total = u32::try_from(estimates.len()).unwrap_or(u32::MAX);
    estimates
        .into_iter()
        .map(|estimate| Estimate {
            job_id: estimate.job_id,
            info: QueueInfo {
                position: estimate.position,
                queued: total,
                lane: lane_of
                    .get(estimate.index)
                    .map_or("short", |lane| lane.as_str())
                    .to_owned(),
                eta_start_ms: estimate.eta_start_ms,
                eta_finish_ms: estimate.eta_finish_ms,
                updated_at_ms: now,
            },
            page: pages.get(estimate.index).copied().flatten(),
        })
        .collect()
}

/// The queue's counts from this refresh's estimates.
fn summary_of(now: u64, estimates: &[QueueEstimate], lane_of: &[Lane]) -> QueueSummary {
    let mut by_lane = [0u32; 3];
    for estimate in estimates {
        let lane = lane_of.get(estimate.index).map_or(0, |lane| lane.index());
        by_lane[lane] = by_lane[lane].saturating_add(1);
    }
    QueueSummary {
        queued: u32::try_from(estimates.len()).unwrap_or(u32::MAX),
        by_lane,
        updated_at_ms: now,
    }
}

/// Forgets what a refresh did not store, so that the next one writes it: the entries,
/// pages and summary whose writes failed, or everything when the bucket lost acknowledged
/// writes.
fn forget_unwritten(
    book: &mut Book,
    summary: &mut Option<QueueSummary>,
    acknowledged: &mut u64,
    written: &Written,
) {
    if written.lost {
        book.clear();
        *summary = None;
        *acknowledged = 0;
        return;
    }
    *acknowledged = (*acknowledged).max(written.acknowledged);
    book.forget(&written.failed, &written.failed_pages);
    if written.summary_failed {
        *summary = None;
    }
}

/// How a refresh's writes went.
#[derive(Debug, Default)]
struct Written {
    /// The bucket's last revision was below what it had acknowledged before this refresh.
    lost: bool,
    /// The highest revision acknowledged to this refresh's writes.
    acknowledged: u64,
    /// Jobs whose own entries were not written.
    failed: Vec<JobId>,
    /// Pages not written.
    failed_pages: Vec<u64>,
    /// The summary was not written.
    summary_failed: bool,
}

/// A `mochi_queue` entry a refresh writes.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// A job's own.
    Job(JobId),
    /// A page, by number.
    Page(u64),
}

impl Entry {
    fn key(self) -> String {
        match self {
            Self::Job(job_id) => job_id.to_string(),
            Self::Page(number) => QueuePage::key(number),
        }
    }
}

/// Checks that the bucket still holds every write it acknowledged up to `acknowledged`,
/// writes the summary, the new pages and the changed entries, then removes the gone ones,
/// some at a time.
async fn write(
    context: jetstream::Context,
    store: kv::Store,
    acknowledged: u64,
    summary: Option<QueueSummary>,
    plan: Plan,
) -> Written {
    let Plan {
        pages,
        puts,
        gone,
        gone_pages,
    } = plan;
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
    let pages = pages
        .into_iter()
        .map(|(number, page)| (Entry::Page(number), serde_json::to_vec(&page)));
    let puts = puts
        .into_iter()
        .map(|(job_id, info)| (Entry::Job(job_id), serde_json::to_vec(&info)));
    let writes = pages.chain(puts).map(|(entry, bytes)| {
        let store = store.clone();
        async move {
            let bytes = bytes.map_err(|_| entry)?;
            match store.put(entry.key(), bytes.into()).await {
                Ok(revision) => Ok(revision),
                Err(error) => {
                    tracing::debug!(key = entry.key(), %error, "queue position not published");
                    Err(entry)
                }
            }
        }
    });
    let outcomes = futures::stream::iter(writes)
        .buffer_unordered(QUEUE_WRITES_IN_FLIGHT)
        .collect::<Vec<Result<u64, Entry>>>()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(revision) => written.acknowledged = written.acknowledged.max(revision),
            Err(Entry::Job(job_id)) => written.failed.push(job_id),
            Err(Entry::Page(number)) => written.failed_pages.push(number),
        }
    }
    let gone = gone
        .into_iter()
        .map(Entry::Job)
        .chain(gone_pages.into_iter().map(Entry::Page));
    let deletes = gone.map(|entry| {
        let store = store.clone();
        async move {
            let _ = store.purge(entry.key()).await;
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

    fn estimate(job_id: JobId, position: u32, page: Option<u64>) -> Estimate {
        Estimate {
            job_id,
            info: QueueInfo {
                position,
                queued: 2,
                lane: "short".to_owned(),
                eta_start_ms: None,
                eta_finish_ms: None,
                updated_at_ms: 0,
            },
            page,
        }
    }

    #[test]
    fn what_a_refresh_did_not_store_is_written_again() {
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        let estimates = || {
            vec![
                estimate(a, 1, None),
                estimate(b, 2, None),
                estimate(c, 3, Some(4)),
            ]
        };
        let mut book = Book::default();
        let first = book.plan(0, estimates());
        assert_eq!((first.puts.len(), first.pages.len()), (2, 1));
        let counts = QueueSummary {
            queued: 3,
            by_lane: [3, 0, 0],
            updated_at_ms: 0,
        };
        let mut summary = Some(counts.clone());
        let mut acknowledged = 10;
        let failed = Written {
            acknowledged: 12,
            failed: vec![b],
            failed_pages: vec![4],
            summary_failed: true,
            ..Written::default()
        };
        forget_unwritten(&mut book, &mut summary, &mut acknowledged, &failed);
        assert_eq!((summary.is_none(), acknowledged), (true, 12));
        let again = book.plan(0, estimates());
        let puts: Vec<JobId> = again.puts.iter().map(|(job_id, _)| *job_id).collect();
        assert_eq!(puts, [b]);
        assert_eq!(again.pages.len(), 1);
        assert!(again.pages[0].1.jobs.contains_key(&c));
        let mut summary = Some(counts);
        let lost = Written {
            lost: true,
            ..Written::default()
        };
        forget_unwritten(&mut book, &mut summary, &mut acknowledged, &lost);
        assert!(summary.is_none());
        assert_eq!((book.len(), acknowledged), (0, 0));
        let everything = book.plan(0, estimates());
        assert_eq!((everything.puts.len(), everything.pages.len()), (2, 1));
    }

    /// The scheduler time of a refresh over a long queue on 8 busy H100 slots, as the
    /// capacity runs leave it (150,000 jobs waiting): the first refresh (every job new) and
    /// the next ones (nothing moved), median of five. Run:
    /// `cargo test --release -p coordinator --lib -- --ignored --nocapture refresh_time`
    #[test]
    #[ignore = "a benchmark: prints figures"]
    fn refresh_time_of_a_long_queue() {
        use crate::cost::CostModel;
        use crate::policy::{LengthAwareConfig, PolicyKind, Running};
        use protocol::JobShape;
        use protocol::spec::Priority;
        const JOBS: u64 = 150_000;
        let policy = PolicyKind::LengthAware.build(LengthAwareConfig::default());
        let model = CostModel::default();
        let shapes = [
            JobShape::new(31, 30, 848, 480, 64, true),
            JobShape::new(163, 30, 848, 480, 64, true),
            JobShape::new(13, 30, 848, 480, 16, true),
        ];
        let now = 1_764_000_000_000;
        let queued: Vec<Waiting> = (0..JOBS)
            .map(|n| Waiting {
                job_id: JobId::new(),
                tenant: n % 7,
                priority: Priority::Normal,
                created_at_ms: now - 60_000 + n / 3,
                not_before_ms: 0,
                cost: model.cost(&shapes[(n % 3) as usize]),
                pauses: 0,
            })
            .collect();
        let slots: Vec<Slot> = (0..8)
            .map(|n| Slot {
                class: GpuClass::H100,
                memory_bytes: GpuClass::H100.spec().memory_bytes,
                running: Some(Running {
                    job_id: JobId::new(),
                    lane: Lane::Short,
                    tenant: 100 + n,
                    remaining_s: 30.0 + n as f64,
                    next_boundary_s: 1.0,
                    pauses: 0,
                    unpausable: false,
                    pausing_for: None,
                }),
            })
            .collect();
        let clock = ModelClock::wall();
        let mut arrivals = Arrivals::new(ARRIVAL_WINDOW_MS, now);
        let (mut book, mut last) = (Book::default(), None);
        let mut times_ms = Vec::new();
        for round in 0..6 {
            let started = std::time::Instant::now();
            let snapshot = Snapshot {
                now: now + round * 2_000,
                policy: policy.as_ref(),
                queued: queued.clone(),
                slots: &slots,
                clock: &clock,
                never_placed: |_| true,
            };
            let (_, plan) = refresh(&mut book, &mut last, &mut arrivals, snapshot);
            times_ms.push(started.elapsed().as_secs_f64() * 1e3);
            if round == 0 {
                assert!(!plan.pages.is_empty());
            }
        }
        let first = times_ms[0];
        let mut next = times_ms[1..].to_vec();
        next.sort_by(f64::total_cmp);
        println!(
            "refresh of {JOBS} waiting jobs: first {first:.0} ms, then median {:.0} ms (all: {times_ms:.0?})",
            next[next.len() / 2]
        );
    }

    #[test]
    fn a_slow_refresh_stretches_the_period_to_keep_its_share_of_the_scheduler() {
        // A quick refresh: the configured period.
        assert_eq!(refresh_gap_ms(2_000, 0), 2_000);
        assert_eq!(refresh_gap_ms(2_000, 150), 2_000);
        // One that took 700 ms (a queue of about a million) comes back after 7 s.
        assert_eq!(refresh_gap_ms(2_000, 700), 7_000);
        assert_eq!(refresh_gap_ms(2_000, u64::MAX), u64::MAX);
    }

    #[test]
    fn the_summary_counts_the_estimated_jobs_by_lane() {
        let estimate = |index| QueueEstimate {
            job_id: JobId::new(),
            index,
            position: 1,
            eta_start_ms: None,
            eta_finish_ms: None,
        };
        let lane_of = [Lane::Long, Lane::Short, Lane::Long];
        let summary = summary_of(7, &[estimate(2), estimate(0), estimate(1)], &lane_of);
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
