//! The policy we ship. Every decision:
//! 1. ranks the eligible jobs by `weight(priority) · (wait + s) / s / (1 + tenant load)`, where
//!    `s` is the job's own predicted GPU time (aging relative to size, so a long job's rank
//!    grows slowly but without bound) and the tenant load is its running slots over its fair
//!    share; a job that has waited `starvation_factor` times its own GPU time or more is
//!    *starving* and ranks before every other job whatever its priority or tenant (most
//!    starved first), which bounds the priority's and the tenant's effect on waiting;
//! 2. places them in that order, each on the free slot that holds it with the least memory
//!    (best fit: an L40 job never takes an H100 that a 720p job needs) while some waiting job
//!    needs more memory than the smallest free slot has; otherwise on the fitting free slot
//!    where it finishes soonest (a 480p job takes a free H100 before an L40);
//! 3. keeps `short_share` of the slots for the short lane: medium and long jobs together may
//!    hold at most the rest, except that medium (and starving) jobs may borrow the reserve
//!    while no short job waits;
//! 4. with preemption on, pauses a long job at its next step boundary for a short job that
//!    nothing else can take (bounded pauses per job, only jobs close to a boundary).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use protocol::JobId;
use protocol::spec::Priority;
use serde::{Deserialize, Serialize};

use super::{
    Aging, Decision, Lane, LaneBounds, Placement, Policy, Preemption, Running, STARVING, Traits,
    View, Waiting, fits,
};

/// Settings of the length-aware policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LengthAwareConfig {
    /// Lane bounds.
    pub lanes: LaneBounds,
    /// Share of the slots kept for the short lane while short jobs wait.
    pub short_share: f64,
    /// Whether running long jobs may be paused for short ones (needs node support).
    pub preemption: bool,
    /// Most pauses of one job.
    pub max_pauses: u32,
    /// Only jobs with at least this much left are paused, s.
    pub min_remaining_to_pause_s: f64,
    /// Only jobs whose next step boundary is this close are paused, s.
    pub max_boundary_wait_s: f64,
    /// Rank multiplier of `high` priority jobs (`low` gets its inverse).
    pub priority_weight: f64,
    /// Aging counts a job's size up to this many seconds: a long job's rank grows as fast as
    /// that of a job of this size, so no long job waits many times its own GPU time.
    pub aging_cap_s: f64,
    /// A job that has waited this many times its own predicted GPU time ranks before every
    /// job that has not (0: off).
    pub starvation_factor: f64,
}

impl Default for LengthAwareConfig {
    fn default() -> Self {
        Self {
            lanes: LaneBounds::default(),
            short_share: 0.25,
            preemption: false,
            max_pauses: 2,
            min_remaining_to_pause_s: 120.0,
            max_boundary_wait_s: 12.0,
            priority_weight: 4.0,
            aging_cap_s: 900.0,
            starvation_factor: 1.0,
        }
    }
}

/// The length-aware policy.
#[derive(Debug, Clone, Copy)]
pub struct LengthAware {
    config: LengthAwareConfig,
}

impl LengthAware {
    /// The policy with `config`.
    pub fn new(config: LengthAwareConfig) -> Self {
        Self { config }
    }

    /// Slots kept for the short lane out of `slots`.
    fn reserved(&self, slots: usize) -> usize {
        ((self.config.short_share * slots as f64).floor() as usize).min(slots)
    }

    fn weight(&self, priority: Priority) -> f64 {
        match priority {
            Priority::High => self.config.priority_weight,
            Priority::Normal => 1.0,
            Priority::Low => 1.0 / self.config.priority_weight.max(1e-9),
        }
    }

    /// How each eligible job's rank grows with time.
    fn agings(&self, view: &View<'_>, queue: &[Waiting]) -> Vec<Aging> {
        let mut agings = Vec::with_capacity(queue.len());
        self.each_aging(view, queue, |aging| agings.push(aging));
        agings
    }

    /// Calls `each` with how every eligible job's rank grows, in queue order (no allocation
    /// per job: a decision over 10 000 queued jobs stays well under a millisecond).
    fn each_aging(&self, view: &View<'_>, queue: &[Waiting], mut each: impl FnMut(Aging)) {
        let mut running_by_tenant: TenantMap<f64> = TenantMap::default();
        for running in view.slots.iter().filter_map(|slot| slot.running) {
            *running_by_tenant.entry(running.tenant).or_default() += 1.0;
        }
        let mut tenants: TenantSet = running_by_tenant.keys().copied().collect();
        let mut last_tenant = None;
        for job in queue {
            // Queues come in runs of one tenant: skip the hash while the tenant repeats.
            if last_tenant != Some(job.tenant) {
                tenants.insert(job.tenant);
                last_tenant = Some(job.tenant);
            }
        }
        let fair_slots = view.slots.len().max(1) as f64 / tenants.len().max(1) as f64;
        let starvation = self.config.starvation_factor;
        let aging_cap = self.config.aging_cap_s.max(1.0);
        let mut last_load = (None, 0.0);
        for (index, job) in queue.iter().enumerate() {
            if job.not_before_ms > view.now_ms {
                continue;
            }
            let full_s = job.cost.reference_seconds().max(1.0);
            let own_s = full_s.min(aging_cap);
            let tenant_load = if running_by_tenant.is_empty() {
                0.0
            } else if last_load.0 == Some(job.tenant) {
                last_load.1
            } else {
                let load = running_by_tenant.get(&job.tenant).copied().unwrap_or(0.0) / fair_slots;
                last_load = (Some(job.tenant), load);
                load
            };
            each(Aging {
                index,
                waited_s: view.now_ms.saturating_sub(job.created_at_ms) as f64 / 1_000.0,
                factor: self.weight(job.priority) / own_s / (1.0 + tenant_load),
                own_s,
                full_s,
                starve_after_s: if starvation > 0.0 {
                    starvation * full_s
                } else {
                    f64::INFINITY
                },
            });
        }
    }

    /// Ranked eligible jobs: (index, score), best first; only the best `top` are sorted
    /// (the rest follow unsorted, see [`sort_more`]), so a decision over a long queue stays
    /// cheap.
    fn ranked(&self, view: &View<'_>, queue: &[Waiting], top: usize) -> Vec<(usize, f64)> {
        let mut scored: Vec<(usize, f64)> = Vec::with_capacity(queue.len());
        self.each_aging(view, queue, |aging| {
            scored.push((aging.index, aging.score(0.0)));
        });
        sort_more(&mut scored, 0, top, queue);
        scored
    }
}

/// Tenant keys are already hashes (`tenant_hash`): a multiply spreads them, no SipHash.
#[derive(Default)]
struct TenantHasher(u64);

impl Hasher for TenantHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TenantMap<V> = HashMap<u64, V, BuildHasherDefault<TenantHasher>>;
type TenantSet = HashSet<u64, BuildHasherDefault<TenantHasher>>;

/// Best first: higher score, then older, then lower id.
fn better(queue: &[Waiting], a: &(usize, f64), b: &(usize, f64)) -> Ordering {
    b.1.total_cmp(&a.1).then_with(|| {
        let (ja, jb) = (&queue[a.0], &queue[b.0]);
        (ja.created_at_ms, ja.job_id).cmp(&(jb.created_at_ms, jb.job_id))
    })
}

/// Sorts the best `count` of `scored[from..]` into place (the rest stay unsorted after
/// them); returns how far `scored` is sorted now.
fn sort_more(scored: &mut [(usize, f64)], from: usize, count: usize, queue: &[Waiting]) -> usize {
    let rest = &mut scored[from..];
    if count < rest.len() {
        rest.select_nth_unstable_by(count, |a, b| better(queue, a, b));
        rest[..count].sort_unstable_by(|a, b| better(queue, a, b));
        from + count
    } else {
        rest.sort_unstable_by(|a, b| better(queue, a, b));
        scored.len()
    }
}

/// The lane counts that limit placements.
struct Reserve {
    cap_non_short: usize,
    non_short: usize,
    short_waiting: usize,
    /// Long jobs may borrow the reserve too (with preemption, a pause takes it back).
    long_borrows: bool,
}

impl Reserve {
    fn allows(&self, lane: Lane, starving: bool) -> bool {
        let borrow = self.short_waiting == 0;
        match lane {
            Lane::Short => true,
            Lane::Medium => self.non_short < self.cap_non_short || borrow,
            Lane::Long => {
                self.non_short < self.cap_non_short || (borrow && (self.long_borrows || starving))
            }
        }
    }
}

impl Policy for LengthAware {
    fn name(&self) -> &'static str {
        "length-aware"
    }

    fn traits(&self) -> Traits {
        Traits {
            admission: true,
            fit_aware: true,
            fail_fast: true,
        }
    }

    fn lanes(&self) -> LaneBounds {
        self.config.lanes
    }

    fn overtakes(&self) -> bool {
        true
    }

    fn aging(&self, view: &View<'_>, queue: &[Waiting]) -> Option<Vec<Aging>> {
        Some(self.agings(view, queue))
    }

    fn long_cap(&self, slots: usize) -> Option<usize> {
        (!self.config.preemption).then(|| slots - self.reserved(slots))
    }

    fn decide(&self, view: &View<'_>, queue: &[Waiting]) -> Decision {
        let mut free: Vec<usize> = (0..view.slots.len())
            .filter(|&i| view.slots[i].running.is_none())
            .collect();
        let preempting = self.config.preemption
            && view
                .slots
                .iter()
                .any(|slot| slot.running.is_some_and(|r| r.lane != Lane::Short));
        if free.is_empty() && !preempting {
            return Decision::default();
        }
        // Best fit: least memory first, then the fastest class; a stable order per view.
        free.sort_by(|&a, &b| {
            let (sa, sb) = (&view.slots[a], &view.slots[b]);
            sa.memory_bytes
                .cmp(&sb.memory_bytes)
                .then(
                    sb.class
                        .spec()
                        .relative_speed
                        .total_cmp(&sa.class.spec().relative_speed),
                )
                .then(a.cmp(&b))
        });
        let lanes = self.config.lanes;
        let lane_of = |job: &Waiting| lanes.lane(job.cost.reference_seconds());
        // Enough candidates for the free slots even when many do not fit or are held; more
        // are sorted only when the candidates run out.
        let top = (free.len() * 16).max(64);
        let mut ranked = self.ranked(view, queue, top);
        let mut sorted = top.min(ranked.len());
        let slots = view.slots.len();
        let mut reserve = Reserve {
            cap_non_short: slots - self.reserved(slots),
            non_short: view
                .slots
                .iter()
                .filter(|slot| slot.running.is_some_and(|r| r.lane != Lane::Short))
                .count(),
            short_waiting: ranked
                .iter()
                .filter(|(i, _)| lane_of(&queue[*i]) == Lane::Short)
                .count(),
            long_borrows: self.config.preemption,
        };
        // Waiting jobs (among the candidates) that the smallest free slot cannot hold: while
        // there are any, jobs take the smallest slot that holds them (best fit on memory),
        // else the one where they finish soonest.
        let smallest = free.first().map(|&slot| &view.slots[slot]);
        let mut need_bigger = smallest.map_or(0, |small| {
            ranked[..sorted]
                .iter()
                .filter(|(i, _)| !fits(small, &queue[*i]))
                .count()
        });
        let mut decision = Decision::default();
        let mut unplaced_short: Vec<usize> = Vec::new();
        // Jobs held back for the short lane; reconsidered if every short job got a slot.
        let mut held: Vec<(usize, f64)> = Vec::new();
        let mut position = 0;
        while position < ranked.len() {
            if position == sorted && !free.is_empty() {
                // Out of sorted candidates with slots still free: sort as many again.
                sorted = sort_more(&mut ranked, sorted, sorted.max(64), queue);
            }
            let (index, score) = ranked[position];
            let candidate = position < top;
            position += 1;
            let job = &queue[index];
            let lane = lane_of(job);
            if free.is_empty() {
                if lane == Lane::Short {
                    unplaced_short.push(index);
                }
                if !preempting {
                    break;
                }
                continue;
            }
            let bigger = candidate && smallest.is_some_and(|small| !fits(small, job));
            let allowed = reserve.allows(lane, score >= STARVING);
            if !allowed {
                held.push((index, score));
            }
            let slot = if !allowed {
                None
            } else if need_bigger > 0 {
                free.iter().position(|&slot| fits(&view.slots[slot], job))
            } else {
                soonest(view, &free, job)
            };
            if bigger && slot.is_some() {
                need_bigger = need_bigger.saturating_sub(1);
            }
            let placed = slot.is_some();
            if let Some(position) = slot {
                decision.placements.push(Placement {
                    job_id: job.job_id,
                    slot: free.remove(position),
                });
            }
            match (lane, placed) {
                (Lane::Short, true) => reserve.short_waiting -= 1,
                (Lane::Short, false) => unplaced_short.push(index),
                (_, true) => reserve.non_short += 1,
                (_, false) => {}
            }
        }
        // A job held for the short lane while short jobs still waited further down the
        // ranking may borrow the reserve once they all have a slot: no slot stays idle
        // while a job that fits it waits and no short job does.
        if reserve.short_waiting == 0 {
            for (index, score) in held {
                if free.is_empty() {
                    break;
                }
                let job = &queue[index];
                if !reserve.allows(lane_of(job), score >= STARVING) {
                    continue;
                }
                if let Some(position) = free.iter().position(|&slot| fits(&view.slots[slot], job)) {
                    decision.placements.push(Placement {
                        job_id: job.job_id,
                        slot: free.remove(position),
                    });
                    reserve.non_short += 1;
                }
            }
        }
        if preempting {
            decision.preemptions = self.preemptions(view, queue, &unplaced_short);
        }
        decision
    }

    fn order(&self, view: &View<'_>, queue: &[Waiting]) -> Vec<usize> {
        self.ranked(view, queue, usize::MAX)
            .into_iter()
            .map(|(index, _)| index)
            .collect()
    }
}

/// The position in `free` of the fitting slot where `job` finishes soonest (least memory,
/// then the order of `free`, among equals).
fn soonest(view: &View<'_>, free: &[usize], job: &Waiting) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (position, &slot) in free.iter().enumerate() {
        let slot = &view.slots[slot];
        if !fits(slot, job) {
            continue;
        }
        let seconds = job.cost.seconds[slot.class.index()];
        if best.is_none_or(|(_, known)| seconds < known) {
            best = Some((position, seconds));
        }
    }
    best.map(|(position, _)| position)
}

impl LengthAware {
    /// Pauses for short jobs nothing else can take: one per job, at most one per slot,
    /// each on the running job closest to its step boundary.
    fn preemptions(&self, view: &View<'_>, queue: &[Waiting], short: &[usize]) -> Vec<Preemption> {
        let pending: Vec<JobId> = view
            .slots
            .iter()
            .filter_map(|slot| slot.running.and_then(|r| r.pausing_for))
            .collect();
        let mut taken = vec![false; view.slots.len()];
        let mut preemptions = Vec::new();
        for &index in short {
            let job = &queue[index];
            if pending.contains(&job.job_id) {
                continue;
            }
            let pausable = |running: &Running| {
                running.lane != Lane::Short
                    && !running.unpausable
                    && running.pausing_for.is_none()
                    && running.pauses < self.config.max_pauses
                    && running.remaining_s >= self.config.min_remaining_to_pause_s
                    && running.next_boundary_s <= self.config.max_boundary_wait_s
            };
            let best = (0..view.slots.len())
                .filter(|&i| !taken[i] && fits(&view.slots[i], job))
                .filter_map(|i| view.slots[i].running.filter(pausable).map(|r| (i, r)))
                .min_by(|(ia, a), (ib, b)| {
                    a.next_boundary_s
                        .total_cmp(&b.next_boundary_s)
                        .then(b.remaining_s.total_cmp(&a.remaining_s))
                        .then(ia.cmp(ib))
                });
            if let Some((slot, _)) = best {
                taken[slot] = true;
                preemptions.push(Preemption {
                    slot,
                    for_job: job.job_id,
                });
            }
        }
        preemptions
    }
}
