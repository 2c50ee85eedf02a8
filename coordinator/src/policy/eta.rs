//! Queue positions and predicted start times: the policy's order played forward on the
//! slots (list scheduling with the cost model's times), ignoring jobs not yet submitted.

use protocol::JobId;

use super::{Policy, View, Waiting, fits};

/// Where a waiting job stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueEstimate {
    /// The job.
    pub job_id: JobId,
    /// 1 for the job served next.
    pub position: u32,
    /// Predicted start, ms since the epoch.
    pub eta_start_ms: u64,
}

/// Estimates for every eligible job in `queue`, in the policy's order. Jobs that fit no
/// slot get no estimate.
pub fn estimate(policy: &dyn Policy, view: &View<'_>, queue: &[Waiting]) -> Vec<QueueEstimate> {
    let fit_aware = policy.traits().fit_aware;
    let mut free_at_s: Vec<f64> = view
        .slots
        .iter()
        .map(|slot| slot.running.map_or(0.0, |r| r.remaining_s.max(0.0)))
        .collect();
    let mut estimates = Vec::new();
    let mut position = 0u32;
    for index in policy.order(view, queue) {
        let job = &queue[index];
        let ready_s = job.not_before_ms.saturating_sub(view.now_ms) as f64 / 1_000.0;
        let best = (0..view.slots.len())
            .filter(|&i| !fit_aware || fits(&view.slots[i], job))
            .map(|i| (i, free_at_s[i].max(ready_s)))
            .min_by(|(ia, a), (ib, b)| a.total_cmp(b).then(ia.cmp(ib)));
        let Some((slot, start_s)) = best else {
            continue;
        };
        position += 1;
        let class = view.slots[slot].class;
        free_at_s[slot] = start_s + job.cost.seconds[class.index()];
        estimates.push(QueueEstimate {
            job_id: job.job_id,
            position,
            eta_start_ms: view.now_ms + (start_s * 1_000.0) as u64,
        });
    }
    estimates
}
