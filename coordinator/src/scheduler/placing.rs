//! Placing: the waiting jobs go to free slots. A slot a pause freed goes first to the job it
//! was freed for; the rest is the policy's decision on the slots as the view sees them, its
//! placements handed to the slots' proxies and its pauses sent through them.

use protocol::JobId;

use super::clock::ModelClock;
use super::messages::SlotKey;
use super::pause;
use super::proxies::Proxies;
use super::view::View;
use crate::metrics;
use crate::policy::{self, Lane, Policy, Waiting};
use crate::slots::SlotProxyMsg;

/// Places what can be placed at `now` from `queued` (admitted, not being placed); with
/// `preemption`, the policy may also pause running jobs for waiting ones. The policy reads
/// its times from `clock`.
pub(super) fn place(
    view: &mut View,
    proxies: &Proxies,
    policy: &dyn Policy,
    queued: Vec<Waiting>,
    preemption: bool,
    now: u64,
    clock: &ModelClock,
) {
    let mut queued = clock.waiting(queued);
    // A slot a pause freed goes to the job it was freed for first.
    for (key, job_id) in view.freed_slot_placements(now, |key| proxies.has(key)) {
        if !proxies.send(&key, SlotProxyMsg::Place(job_id)) {
            continue;
        }
        tracing::info!(%job_id, node = %key.0, slot = key.1, "placed on the slot a pause freed for it");
        record_wait(view, policy, &queued, job_id, now);
        view.placing_started(job_id, key);
        queued.retain(|job| job.job_id != job_id);
    }
    let slots = view.slots(now, |key| proxies.has(key), policy.lanes());
    // With every slot busy only a pause can help a waiting job.
    let all_busy = slots.iter().all(|(_, slot)| slot.running.is_some());
    if queued.is_empty() || (all_busy && !preemption) {
        return;
    }
    let (keys, slots): (Vec<SlotKey>, Vec<policy::Slot>) = slots.into_iter().unzip();
    let decision = policy.decide(
        &policy::View {
            now_ms: clock.model_ms(now),
            slots: &slots,
        },
        &queued,
    );
    for placement in decision.placements {
        let Some(key) = keys.get(placement.slot).cloned() else {
            continue;
        };
        if !proxies.send(&key, SlotProxyMsg::Place(placement.job_id)) {
            continue;
        }
        record_wait(view, policy, &queued, placement.job_id, now);
        view.placing_started(placement.job_id, key);
    }
    let pauses = decision
        .preemptions
        .iter()
        .filter_map(|p| Some((keys.get(p.slot)?.clone(), p.for_job)));
    pause::request(view, proxies, pauses);
}

/// Records how long `job_id`, placed now, waited, by its lane.
fn record_wait(view: &View, policy: &dyn Policy, queued: &[Waiting], job_id: JobId, now: u64) {
    let Some(created_at_ms) = view.created_at_ms(job_id) else {
        return;
    };
    let lane = queued
        .iter()
        .find(|job| job.job_id == job_id)
        .map_or(Lane::Long, |job| {
            policy.lanes().lane(job.cost.reference_seconds())
        });
    let waited_s = now.saturating_sub(created_at_ms) as f64 / 1_000.0;
    ::metrics::histogram!(metrics::QUEUE_WAIT_SECONDS, "lane" => lane.as_str()).record(waited_s);
}
