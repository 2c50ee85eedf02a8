//! Admission: a queued job that no slot seen since start can hold (by the memory model) is
//! refused with `job_too_large` instead of waiting forever. Every slot ever seen counts, so
//! a big node's restart does not turn its jobs away. The refusal itself is written by the
//! keeper; until the watch shows it, the job is left out of placing and queue positions.
//! Each queued job is judged once, when it is new (or, with no slot seen yet, when the
//! first one is): judging never walks the whole queue.

use std::collections::{HashMap, HashSet};

use protocol::record::JobFailure;
use protocol::{ErrorCode, JobId};

use super::messages::SlotKey;
use super::view::View;
use crate::cost::{self, GpuClass};
use crate::policy::Waiting;

/// The slots seen and the jobs judged.
#[derive(Default)]
pub(super) struct Admission {
    /// Queued jobs not judged yet.
    unjudged: HashSet<JobId>,
    /// Every slot seen since start, with its class and memory.
    seen: HashMap<SlotKey, (GpuClass, u64)>,
    /// Jobs being refused (the keeper is writing it, or the watch has not shown it yet).
    refusing: HashSet<JobId>,
    /// Jobs found to fit a slot of `seen` (which only grows): not checked again.
    admitted: HashSet<JobId>,
}

impl Admission {
    /// Remembers a slot's class and memory.
    pub(super) fn slot_seen(&mut self, key: SlotKey, class: GpuClass, memory: u64) {
        self.seen.insert(key, (class, memory));
    }

    /// Class and memory of every slot seen.
    pub(super) fn fleet(&self) -> impl Iterator<Item = (GpuClass, u64)> + Clone + '_ {
        self.seen.values().copied()
    }

    /// Notes a queued job to judge, unless it was admitted (or is being refused) already.
    pub(super) fn queued(&mut self, job_id: JobId) {
        if !self.admitted.contains(&job_id) && !self.refusing.contains(&job_id) {
            self.unjudged.insert(job_id);
        }
    }

    /// The queued jobs not being placed and not being refused.
    pub(super) fn waiting(&self, view: &View) -> Vec<Waiting> {
        let mut queued = view.queued_jobs();
        queued.retain(|job| !self.refusing.contains(&job.job_id));
        queued
    }

    /// Judges the queued jobs not judged yet against every slot seen (none while no slot
    /// was seen); returns the refusals to write for those no slot holds (each then counts
    /// as being refused, and is left out of [`Self::waiting`]).
    pub(super) fn judge(&mut self, view: &View) -> Vec<(JobId, JobFailure)> {
        if self.seen.is_empty() || self.unjudged.is_empty() {
            return Vec::new();
        }
        let fleet: Vec<(GpuClass, u64)> = self.seen.values().copied().collect();
        let mut refusals = Vec::new();
        for job_id in std::mem::take(&mut self.unjudged) {
            // Ended, deleted or placed meanwhile: nothing to judge.
            let Some(job) = view.queued_job(job_id) else {
                continue;
            };
            let fits = fleet
                .iter()
                .any(|(class, memory)| job.cost.fits(*class, *memory));
            if fits {
                self.admitted.insert(job_id);
                continue;
            }
            let Some(shape) = view.shape_of(job_id) else {
                continue;
            };
            let Err(refusal) = cost::admit(&shape, fleet.iter().copied()) else {
                self.admitted.insert(job_id);
                continue;
            };
            self.refusing.insert(job_id);
            let failure = JobFailure {
                code: ErrorCode::JobTooLarge,
                message: refusal.message(),
                retryable: false,
            };
            refusals.push((job_id, failure));
        }
        refusals
    }

    /// The keeper could not write a refusal: the job is judged again at the next event.
    pub(super) fn refusal_failed(&mut self, job_id: JobId) {
        if self.refusing.remove(&job_id) {
            self.unjudged.insert(job_id);
        }
    }

    /// Forgets a job that ended or was deleted.
    pub(super) fn forget(&mut self, job_id: JobId) {
        self.unjudged.remove(&job_id);
        self.refusing.remove(&job_id);
        self.admitted.remove(&job_id);
    }
}

#[cfg(test)]
mod tests {
    use protocol::{JobRecord, JobShape, JobSpec, NodeId, TenantId};

    use super::*;
    use crate::cost::CostModel;
    use crate::policy::LaneBounds;

    fn job(view: &mut View, width: u32, height: u32, frames: u32, revision: u64) -> JobId {
        let shape = JobShape::new(frames, 30, width, height, 64, true);
        let record = JobRecord::queued(
            JobId::new(),
            TenantId::default_tenant(),
            JobSpec::new("x"),
            shape,
            1,
            3,
            1_000,
        );
        view.job_changed(&record, revision, &CostModel::default());
        record.id
    }

    #[test]
    fn each_queued_job_is_judged_once_when_a_slot_has_been_seen() {
        let mut view = View::new(10, 1.0, LaneBounds::default());
        let mut admission = Admission::default();
        let small = job(&mut view, 64, 64, 7, 1);
        let big = job(&mut view, 1280, 720, 61, 2);
        admission.queued(small);
        admission.queued(big);
        assert!(
            admission.judge(&view).is_empty(),
            "no slot seen: nothing judged"
        );

        let slot = (NodeId::new("a").expect("valid"), 0);
        admission.slot_seen(slot, GpuClass::Cpu, 1 << 30);
        let refusals = admission.judge(&view);
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].0, big);
        assert_eq!(refusals[0].1.code, ErrorCode::JobTooLarge);
        let waiting: Vec<JobId> = admission.waiting(&view).iter().map(|j| j.job_id).collect();
        assert_eq!(waiting, vec![small], "the refused job is left out");

        // Seen again (a requeue, a replay): neither is judged again.
        admission.queued(small);
        admission.queued(big);
        assert!(admission.judge(&view).is_empty());
        // A refusal that could not be written is judged again.
        admission.refusal_failed(big);
        assert_eq!(admission.judge(&view).len(), 1);
        // A job that ended is forgotten.
        admission.forget(small);
        admission.forget(big);
        assert!(admission.judge(&view).is_empty());
    }
}
