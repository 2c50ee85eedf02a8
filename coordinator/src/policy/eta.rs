//! Queue positions and predicted start times: the policy's order played forward on the
//! slots (list scheduling with the cost model's times, honouring the policy's cap on slots
//! held by non-short jobs), ignoring jobs not yet submitted.

use protocol::JobId;

use super::{Lane, Policy, View, Waiting, fits};

/// Where a waiting job stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueEstimate {
    /// The job.
    pub job_id: JobId,
    /// 1 for the job served next.
    pub position: u32,
    /// Predicted start, ms since the epoch (`None` while no live slot can hold it).
    pub eta_start_ms: Option<u64>,
    /// Predicted finish, ms since the epoch.
    pub eta_finish_ms: Option<u64>,
}

/// Estimates for every eligible job in `queue`, in the policy's order; jobs that fit no
/// live slot get a position but no times.
pub fn estimate(policy: &dyn Policy, view: &View<'_>, queue: &[Waiting]) -> Vec<QueueEstimate> {
    let fit_aware = policy.traits().fit_aware;
    let lanes = policy.lanes();
    let cap = policy.long_cap(view.slots.len());
    let mut free_at_s: Vec<f64> = view
        .slots
        .iter()
        .map(|slot| slot.running.map_or(0.0, |r| r.remaining_s.max(0.0)))
        .collect();
    // End times of the long jobs running or planned, for the cap.
    let mut long_ends: Vec<f64> = view
        .slots
        .iter()
        .filter_map(|slot| slot.running)
        .filter(|r| r.lane == Lane::Long)
        .map(|r| r.remaining_s.max(0.0))
        .collect();
    let mut estimates = Vec::new();
    for (position, index) in policy.order(view, queue).into_iter().enumerate() {
        let job = &queue[index];
        let long = lanes.lane(job.cost.reference_seconds()) == Lane::Long;
        let mut ready_s = job.not_before_ms.saturating_sub(view.now_ms) as f64 / 1_000.0;
        if long && let Some(cap) = cap {
            ready_s = ready_s.max(cap_free_at(&mut long_ends, ready_s, cap));
        }
        let best = (0..view.slots.len())
            .filter(|&i| !fit_aware || fits(&view.slots[i], job))
            .map(|i| (i, free_at_s[i].max(ready_s)))
            .min_by(|(ia, a), (ib, b)| a.total_cmp(b).then(ia.cmp(ib)));
        let times = best.map(|(slot, start_s)| {
            let class = view.slots[slot].class;
            free_at_s[slot] = start_s + job.cost.seconds[class.index()];
            if long {
                long_ends.push(free_at_s[slot]);
            }
            (
                view.now_ms + (start_s * 1_000.0) as u64,
                view.now_ms + (free_at_s[slot] * 1_000.0) as u64,
            )
        });
        estimates.push(QueueEstimate {
            job_id: job.job_id,
            position: u32::try_from(position + 1).unwrap_or(u32::MAX),
            eta_start_ms: times.map(|t| t.0),
            eta_finish_ms: times.map(|t| t.1),
        });
    }
    estimates
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
