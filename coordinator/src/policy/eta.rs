//! Queue positions and predicted start times: the policy's order played forward on the
//! slots (list scheduling with the cost model's times, honouring the policy's cap on slots
//! held by non-short jobs). Jobs not yet submitted are accounted for on average: with
//! [`estimate_with`], a job's predicted wait is stretched by `1 / (1 − ρ)`, where ρ is the
//! share of the fleet that recent arrivals of shorter lanes (which overtake it) take up
//! ([`Arrivals`]).

use std::collections::{HashSet, VecDeque};

use protocol::JobId;

use super::{Aging, Lane, Policy, View, Waiting, fits};

/// Where a waiting job stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueEstimate {
    /// The job.
    pub job_id: JobId,
    /// Its index in the queue estimated.
    pub index: usize,
    /// 1 for the job served next.
    pub position: u32,
    /// Predicted start, ms since the epoch (`None` while no live slot can hold it).
    pub eta_start_ms: Option<u64>,
    /// Predicted finish, ms since the epoch.
    pub eta_finish_ms: Option<u64>,
}

/// The window over which [`Arrivals`] measures the arrival load, ms.
pub const ARRIVAL_WINDOW_MS: u64 = 3_600_000;

/// Most of the fleet that overtaking arrivals are taken to use (keeps the stretch finite).
const MAX_OVERTAKING: f64 = 0.8;

/// Recent arrivals by lane, for the load of jobs that will overtake a queued one.
#[derive(Debug, Clone)]
pub struct Arrivals {
    window_ms: u64,
    since_ms: u64,
    recent: VecDeque<(u64, JobId, Lane, f64)>,
    ids: HashSet<JobId>,
}

impl Arrivals {
    /// Counts arrivals over the last `window_ms`, from `now_ms` on.
    pub fn new(window_ms: u64, now_ms: u64) -> Self {
        Self {
            window_ms: window_ms.max(1),
            since_ms: now_ms,
            recent: VecDeque::new(),
            ids: HashSet::new(),
        }
    }

    /// Takes in a job submitted at `at_ms` in `lane`, predicted to take `reference_s` on the
    /// reference class; a job already counted is ignored.
    pub fn observe(&mut self, job_id: JobId, at_ms: u64, lane: Lane, reference_s: f64) {
        if at_ms.saturating_add(self.window_ms) < self.since_ms || !self.ids.insert(job_id) {
            return;
        }
        // Jobs from before the start (a restarted scheduler reads the records again): the
        // load is measured from the oldest arrival seen.
        self.since_ms = self.since_ms.min(at_ms);
        self.recent.push_back((at_ms, job_id, lane, reference_s));
    }

    /// For each lane, the share of a fleet of `capacity` reference slots that the recent
    /// arrivals of shorter lanes use (at most 0.8).
    pub fn overtaking(&mut self, now_ms: u64, capacity: f64) -> [f64; 3] {
        let from = now_ms.saturating_sub(self.window_ms);
        while let Some(&(at_ms, job_id, ..)) = self.recent.front() {
            if at_ms >= from {
                break;
            }
            self.recent.pop_front();
            self.ids.remove(&job_id);
        }
        let span_s = now_ms.saturating_sub(from.max(self.since_ms)).max(1) as f64 / 1_000.0;
        let mut work = [0.0; 3];
        for &(at_ms, _, lane, seconds) in &self.recent {
            if at_ms >= from {
                work[lane.index()] += seconds;
            }
        }
        let share =
            |seconds: f64| (seconds / span_s / capacity.max(1e-9)).clamp(0.0, MAX_OVERTAKING);
        [0.0, share(work[0]), share(work[0] + work[1])]
    }
}

/// Estimates for every eligible job in `queue`, in the policy's order; jobs that fit no
/// live slot get a position but no times. Ignores jobs not yet submitted.
pub fn estimate(policy: &dyn Policy, view: &View<'_>, queue: &[Waiting]) -> Vec<QueueEstimate> {
    estimate_with(policy, view, queue, [0.0; 3])
}

/// [`estimate`], with each lane's predicted wait stretched by `1 / (1 − overtaking[lane])`
/// for the jobs of shorter lanes that will arrive and go first (from [`Arrivals`]).
pub fn estimate_with(
    policy: &dyn Policy,
    view: &View<'_>,
    queue: &[Waiting],
    overtaking: [f64; 3],
) -> Vec<QueueEstimate> {
    let mut plan = Plan {
        policy,
        view,
        fit_aware: policy.traits().fit_aware,
        lanes: policy.lanes(),
        cap: policy.long_cap(view.slots.len()),
        overtaking,
        free_at_s: view
            .slots
            .iter()
            .map(|slot| slot.running.map_or(0.0, |r| r.remaining_s.max(0.0)))
            .collect(),
        long_ends: view
            .slots
            .iter()
            .filter_map(|slot| slot.running)
            .filter(|r| r.lane == Lane::Long)
            .map(|r| r.remaining_s.max(0.0))
            .collect(),
        estimates: Vec::new(),
    };
    let order = policy.order(view, queue);
    let mut rest = &order[..];
    if let Some(agings) = policy.aging(view, queue) {
        // The head of the queue played forward with each job's rank at the time a slot
        // frees (a short job submitted now overtakes long ones within minutes); the tail,
        // beyond `DYNAMIC_HEAD`, in today's order.
        let head = order.len().min(DYNAMIC_HEAD);
        let mut by_index = vec![None; queue.len()];
        for aging in agings {
            if let Some(entry) = by_index.get_mut(aging.index) {
                *entry = Some(aging);
            }
        }
        let mut pending: Vec<Aging> = order[..head]
            .iter()
            .filter_map(|&index| by_index[index])
            .collect();
        while !pending.is_empty() {
            let at_s = plan.free_at_s.iter().copied().fold(f64::INFINITY, f64::min);
            let at_s = if at_s.is_finite() { at_s } else { 0.0 };
            let mut best = 0;
            let mut best_score = f64::NEG_INFINITY;
            for (k, aging) in pending.iter().enumerate() {
                let score = aging.score(at_s);
                if score > best_score {
                    best = k;
                    best_score = score;
                }
            }
            let aging = pending.remove(best);
            plan.place(aging.index, &queue[aging.index]);
        }
        rest = &order[head..];
    }
    for &index in rest {
        plan.place(index, &queue[index]);
    }
    plan.estimates
}

/// Jobs at the head of the queue whose ETA plays ranks forward in time (O(n²) in this).
const DYNAMIC_HEAD: usize = 400;

/// List scheduling of the queue on the slots, one job at a time.
struct Plan<'a> {
    policy: &'a dyn Policy,
    view: &'a View<'a>,
    fit_aware: bool,
    lanes: super::LaneBounds,
    cap: Option<usize>,
    overtaking: [f64; 3],
    free_at_s: Vec<f64>,
    /// End times of the long jobs running or planned, for the cap.
    long_ends: Vec<f64>,
    estimates: Vec<QueueEstimate>,
}

impl Plan<'_> {
    /// Puts `job` (the queue's `index`th) on the slot that holds it and frees first; its
    /// estimate comes next.
    fn place(&mut self, index: usize, job: &Waiting) {
        let view = self.view;
        let lane = self.lanes.lane(job.cost.reference_seconds());
        let long = lane == Lane::Long;
        let stretch = if self.policy.overtakes() {
            1.0 / (1.0 - self.overtaking[lane.index()].clamp(0.0, MAX_OVERTAKING))
        } else {
            1.0
        };
        let mut ready_s = job.not_before_ms.saturating_sub(view.now_ms) as f64 / 1_000.0;
        if long && let Some(cap) = self.cap {
            ready_s = ready_s.max(cap_free_at(&mut self.long_ends, ready_s, cap));
        }
        let best = (0..view.slots.len())
            .filter(|&i| !self.fit_aware || fits(&view.slots[i], job))
            .map(|i| (i, self.free_at_s[i].max(ready_s)))
            .min_by(|(ia, a), (ib, b)| a.total_cmp(b).then(ia.cmp(ib)));
        let times = best.map(|(slot, start_s)| {
            let class = view.slots[slot].class;
            self.free_at_s[slot] = start_s + job.cost.seconds[class.index()];
            if long {
                self.long_ends.push(self.free_at_s[slot]);
            }
            // The slot plan stays as played; the client is told the stretched times.
            let told_s = start_s * stretch;
            (
                view.now_ms + (told_s * 1_000.0) as u64,
                view.now_ms + ((self.free_at_s[slot] - start_s + told_s) * 1_000.0) as u64,
            )
        });
        let position = self.estimates.len() + 1;
        self.estimates.push(QueueEstimate {
            job_id: job.job_id,
            index,
            position: u32::try_from(position).unwrap_or(u32::MAX),
            eta_start_ms: times.map(|t| t.0),
            eta_finish_ms: times.map(|t| t.1),
        });
    }
}

/// The earliest time from `at` when fewer than `cap` long jobs run.
fn cap_free_at(ends: &mut Vec<f64>, at: f64, cap: usize) -> f64 {
    ends.retain(|end| *end > at);
    if ends.len() < cap.max(1) {
        return at;
    }
    ends.sort_by(f64::total_cmp);
    ends[ends.len() - cap.max(1)]
}
