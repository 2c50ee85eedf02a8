//! Pauses under way: the running jobs asked to pause and the waiting job each is paused
//! for, and the slots a pause freed, held for that waiting job.

use std::collections::HashMap;

use protocol::{JobId, JobRecord, JobState};

use crate::scheduler::messages::SlotKey;

/// How long a slot a pause freed is held for the job it was freed for, ms.
const FREED_SLOT_HOLD_MS: u64 = 10_000;

/// A pause asked of a node and not yet settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pausing {
    /// The waiting job the slot is freed for.
    for_job: JobId,
    /// The attempt asked to pause.
    attempt: u32,
}

/// The pauses asked and the slots they freed.
#[derive(Default)]
pub(crate) struct Pauses {
    /// Pauses asked of nodes, by the job being paused.
    pausing: HashMap<JobId, Pausing>,
    /// Slots a pause freed, held for the job they were freed for (until it is placed, stops
    /// waiting, or the hold runs out), with when the pause was seen. Without the hold the
    /// paused job, which has waited since it was submitted, could take its slot straight back.
    freed_for: HashMap<SlotKey, (JobId, u64)>,
}

impl Pauses {
    /// A pause of `job_id` (`attempt`) was asked of its node, for `for_job`.
    pub(crate) fn requested(&mut self, job_id: JobId, attempt: u32, for_job: JobId) {
        self.pausing.insert(job_id, Pausing { for_job, attempt });
    }

    /// The pause of `job_id` is over without freeing its slot (refused, or the job is gone).
    pub(crate) fn ended(&mut self, job_id: JobId) {
        self.pausing.remove(&job_id);
    }

    /// The waiting job a pause of `job_id` is under way for.
    pub(crate) fn pausing_for(&self, job_id: JobId) -> Option<JobId> {
        self.pausing.get(&job_id).map(|p| p.for_job)
    }

    /// Takes in a new record of a job: a pause under way is settled once the job is no
    /// longer running that attempt, and a job that paused holds its slot for the job it
    /// paused for.
    pub(crate) fn record_changed(&mut self, record: &JobRecord) {
        let Some(pausing) = self.pausing.get(&record.id).copied() else {
            return;
        };
        if record.state == JobState::Running && record.attempt == pausing.attempt {
            return;
        }
        self.pausing.remove(&record.id);
        if record.state == JobState::Preempted
            && let Some(lease) = &record.lease
        {
            let slot = (lease.node.clone(), lease.slot);
            self.freed_for
                .insert(slot, (pausing.for_job, record.updated_at_ms));
        }
    }

    /// Whether a slot is held for a job.
    pub(crate) fn holds_any(&self) -> bool {
        !self.freed_for.is_empty()
    }

    /// Placements on the held slots that are `free` now, for their job if it still
    /// `waiting`; holds that ran out, or whose job no longer waits, are dropped.
    pub(crate) fn take_freed(
        &mut self,
        now: u64,
        free: &[SlotKey],
        waiting: impl Fn(JobId) -> bool,
    ) -> Vec<(SlotKey, JobId)> {
        let mut placements = Vec::new();
        self.freed_for.retain(|slot, (job_id, at_ms)| {
            if !waiting(*job_id) || now.saturating_sub(*at_ms) > FREED_SLOT_HOLD_MS {
                return false;
            }
            if free.contains(slot) {
                placements.push((slot.clone(), *job_id));
                return false;
            }
            true
        });
        placements
    }
}
