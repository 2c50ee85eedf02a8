//! The contract between the schedulers and a policy: the [`Policy`] trait and what it is
//! given (slots, running and waiting jobs, lanes) and gives back (placements, preemptions,
//! aging for ETAs).

use protocol::JobId;
use protocol::spec::Priority;
use serde::{Deserialize, Serialize};

use crate::cost::{GpuClass, JobCost};

/// A job's lane, by predicted GPU seconds on the reference class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Up to `short_max_s`.
    Short,
    /// Up to `medium_max_s`.
    Medium,
    /// The rest.
    Long,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Self; 3] = [Self::Short, Self::Medium, Self::Long];

    /// The lane's name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Medium => "medium",
            Self::Long => "long",
        }
    }

    /// Its place in [`Lane::ALL`] (the index of per-lane arrays).
    pub fn index(self) -> usize {
        match self {
            Self::Short => 0,
            Self::Medium => 1,
            Self::Long => 2,
        }
    }
}

/// Lane bounds, in predicted seconds on an H100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneBounds {
    /// Longest short job.
    pub short_max_s: f64,
    /// Longest medium job.
    pub medium_max_s: f64,
}

impl Default for LaneBounds {
    fn default() -> Self {
        Self {
            short_max_s: 120.0,
            medium_max_s: 900.0,
        }
    }
}

impl LaneBounds {
    /// The lane of a job predicted to take `reference_s` on an H100.
    pub fn lane(&self, reference_s: f64) -> Lane {
        if reference_s <= self.short_max_s {
            Lane::Short
        } else if reference_s <= self.medium_max_s {
            Lane::Medium
        } else {
            Lane::Long
        }
    }
}

/// A job on a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Running {
    /// The job.
    pub job_id: JobId,
    /// Its lane.
    pub lane: Lane,
    /// Its tenant (a hash of the name).
    pub tenant: u64,
    /// Predicted seconds until it finishes.
    pub remaining_s: f64,
    /// Predicted seconds until its next step boundary (where it can be paused).
    pub next_boundary_s: f64,
    /// Times it was paused already.
    pub pauses: u32,
    /// Whether it cannot be paused at all (its node does not support it).
    pub unpausable: bool,
    /// The waiting job it is being paused for, if a pause is under way.
    pub pausing_for: Option<JobId>,
}

/// One slot as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// Its class.
    pub class: GpuClass,
    /// Device memory, bytes.
    pub memory_bytes: u64,
    /// The job on it; `None` when it is free.
    pub running: Option<Running>,
}

/// A job waiting for a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waiting {
    /// The job.
    pub job_id: JobId,
    /// Its tenant (a hash of the name).
    pub tenant: u64,
    /// The priority it asked for.
    pub priority: Priority,
    /// When it was submitted, ms.
    pub created_at_ms: u64,
    /// Earliest time it may be placed (retry backoff), ms.
    pub not_before_ms: u64,
    /// Its predicted cost (of what is left, for a paused job).
    pub cost: JobCost,
    /// Times it was paused.
    pub pauses: u32,
}

/// What the policy sees.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Now, ms.
    pub now_ms: u64,
    /// Every live slot, free or running.
    pub slots: &'a [Slot],
}

/// Run a job on a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The job.
    pub job_id: JobId,
    /// Index of the slot in [`View::slots`].
    pub slot: usize,
}

/// Pause the job on a slot at its next step boundary, for a waiting job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preemption {
    /// Index of the slot in [`View::slots`].
    pub slot: usize,
    /// The waiting job the slot is freed for.
    pub for_job: JobId,
}

/// A policy's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Jobs to place now.
    pub placements: Vec<Placement>,
    /// Jobs to pause.
    pub preemptions: Vec<Preemption>,
}

/// How a policy's jobs meet the hardware (what the simulator and the live path honour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traits {
    /// Jobs no known slot can hold are refused at submit.
    pub admission: bool,
    /// Placement knows job sizes (never puts a job on a slot that cannot hold it).
    pub fit_aware: bool,
    /// An over-sized job fails at its first step rather than where memory peaks.
    pub fail_fast: bool,
}

/// A scheduling policy.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Its name (`fifo`, `length-aware`, ...).
    fn name(&self) -> &'static str;
    /// How it meets the hardware.
    fn traits(&self) -> Traits;
    /// Lane bounds (for metrics and reports).
    fn lanes(&self) -> LaneBounds {
        LaneBounds::default()
    }
    /// Most slots long jobs may hold at once out of `slots` (`None`: no cap).
    fn long_cap(&self, slots: usize) -> Option<usize> {
        let _ = slots;
        None
    }
    /// Whether jobs submitted later, of shorter lanes, may start before a queued job (ETAs
    /// then allow for them, see [`eta::estimate_with`]).
    fn overtakes(&self) -> bool {
        false
    }
    /// How each eligible job's rank grows with time, for ETAs that play the queue forward
    /// (`None`: the order does not change with time, as in FIFO).
    fn aging(&self, view: &View<'_>, queue: &[Waiting]) -> Option<Vec<Aging>> {
        let _ = (view, queue);
        None
    }
    /// Placements and preemptions for this moment.
    fn decide(&self, view: &View<'_>, queue: &[Waiting]) -> Decision;
    /// The order in which it would serve `queue` now (indices into `queue`), for queue
    /// positions and ETAs.
    fn order(&self, view: &View<'_>, queue: &[Waiting]) -> Vec<usize>;
}

/// Ranks at or above this belong to starving jobs (see [`LengthAwareConfig::starvation_factor`]).
pub const STARVING: f64 = 1e12;

/// How one waiting job's rank grows with time: `factor · (waited + own)` until it has waited
/// `starve_after_s`, then [`STARVING`] `+ waited / full` (most starved first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aging {
    /// Index of the job in the queue.
    pub index: usize,
    /// Seconds it has waited so far.
    pub waited_s: f64,
    /// `weight(priority) / own / (1 + tenant load)`.
    pub factor: f64,
    /// Its own predicted seconds, capped for aging.
    pub own_s: f64,
    /// Its own predicted seconds, uncapped.
    pub full_s: f64,
    /// Total wait at which it starves (infinite: never).
    pub starve_after_s: f64,
}

impl Aging {
    /// Its rank `later_s` seconds from now.
    pub fn score(&self, later_s: f64) -> f64 {
        let waited_s = self.waited_s + later_s;
        if waited_s >= self.starve_after_s {
            STARVING + waited_s / self.full_s
        } else {
            self.factor * (waited_s + self.own_s)
        }
    }
}

/// Whether a slot holds a job (by its class's predicted peak).
pub fn fits(slot: &Slot, job: &Waiting) -> bool {
    job.cost.fits(slot.class, slot.memory_bytes)
}

/// A stable 64-bit hash of a tenant name (FNV-1a), for [`Waiting::tenant`].
pub fn tenant_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
