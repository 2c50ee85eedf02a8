//! Admission: a queued job that no slot seen since start can hold (by the memory model) is
//! refused with `job_too_large` instead of waiting forever. Every slot ever seen counts, so
//! a big node's restart does not turn its jobs away. The refusal itself is written by the
//! keeper; until the watch shows it, the job is left out of placing and queue positions.

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

    /// The queued jobs not being placed and not being refused.
    pub(super) fn waiting(&self, view: &View) -> Vec<Waiting> {
        let mut queued = view.queued_jobs();
        queued.retain(|job| !self.refusing.contains(&job.job_id));
        queued
    }

    /// Keeps in `queued` the jobs some seen slot holds; returns the refusals to write for
    /// the others (each then counts as being refused).
    pub(super) fn judge(
        &mut self,
        queued: &mut Vec<Waiting>,
        view: &View,
    ) -> Vec<(JobId, JobFailure)> {
        if self.seen.is_empty() {
            return Vec::new();
        }
        let fleet: Vec<(GpuClass, u64)> = self.seen.values().copied().collect();
        let mut too_large = Vec::new();
        let admitted = &mut self.admitted;
        queued.retain(|job| {
            if admitted.contains(&job.job_id) {
                return true;
            }
            let fits = fleet
                .iter()
                .any(|(class, memory)| job.cost.fits(*class, *memory));
            if fits {
                admitted.insert(job.job_id);
            } else {
                too_large.push(job.job_id);
            }
            fits
        });
        let mut refusals = Vec::new();
        for job_id in too_large {
            let Some(shape) = view.shape_of(job_id) else {
                continue;
            };
            let Err(refusal) = cost::admit(&shape, fleet.iter().copied()) else {
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
        self.refusing.remove(&job_id);
    }

    /// Forgets a job that ended or was deleted.
    pub(super) fn forget(&mut self, job_id: JobId) {
        self.refusing.remove(&job_id);
        self.admitted.remove(&job_id);
    }
}
