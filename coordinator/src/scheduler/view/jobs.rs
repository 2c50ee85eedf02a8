//! The jobs the view tracks: every non-terminal job as last seen in the `mochi_jobs` watch,
//! with what placing, pausing, leases and deadlines need to know of it, and the counts and
//! indexes that let the scheduler's periodic work look at the few jobs it concerns (those
//! on nodes, those near their time-to-start deadline) instead of walking every waiting one.

use std::collections::hash_map::{self, HashMap};
use std::collections::{BTreeSet, HashSet};

use protocol::record::{Lease, Progress};
use protocol::spec::Priority;
use protocol::{JobId, JobRecord, JobShape, JobState, NodeId};

use crate::cost::JobCost;
use crate::policy::{self, Lane, LaneBounds};

/// Every tracked job by id, with counts and indexes kept up to date on each change.
pub(crate) struct Jobs {
    by_id: HashMap<JobId, Tracked>,
    /// The lane bounds the queued counts are kept by.
    lanes: LaneBounds,
    /// Queued jobs by the lane of what is left of their cost, in [`Lane::ALL`]'s order.
    queued_by_lane: [usize; 3],
    /// Jobs on a node (assigned, running, encoding).
    on_node: HashSet<JobId>,
    /// Queued jobs that never reached a GPU, by submission time (the time-to-start deadline).
    unstarted: BTreeSet<(u64, JobId)>,
}

impl Jobs {
    /// No jobs; queued ones are counted by `lanes`.
    pub(crate) fn new(lanes: LaneBounds) -> Self {
        Self {
            by_id: HashMap::new(),
            lanes,
            queued_by_lane: [0; 3],
            on_node: HashSet::new(),
            unstarted: BTreeSet::new(),
        }
    }

    /// The job, if tracked.
    pub(crate) fn get(&self, job_id: &JobId) -> Option<&Tracked> {
        self.by_id.get(job_id)
    }

    /// Tracks `job` as `job_id`'s latest state.
    pub(crate) fn insert(&mut self, job_id: JobId, job: Tracked) {
        if let Some(old) = self.by_id.get(&job_id) {
            let old = Indexed::of(old, self.lanes);
            self.unindex(job_id, old);
        }
        let new = Indexed::of(&job, self.lanes);
        self.index(job_id, new);
        self.by_id.insert(job_id, job);
    }

    /// Stops tracking the job; returns what was known of it.
    pub(crate) fn remove(&mut self, job_id: &JobId) -> Option<Tracked> {
        let job = self.by_id.remove(job_id)?;
        self.unindex(*job_id, Indexed::of(&job, self.lanes));
        Some(job)
    }

    /// Every tracked job.
    pub(crate) fn iter(&self) -> hash_map::Iter<'_, JobId, Tracked> {
        self.by_id.iter()
    }

    /// Queued jobs (being placed or not) by lane, in [`Lane::ALL`]'s order.
    pub(crate) fn queued_by_lane(&self) -> [usize; 3] {
        self.queued_by_lane
    }

    /// Queued jobs in all.
    pub(crate) fn queued(&self) -> usize {
        self.queued_by_lane.iter().sum()
    }

    /// Jobs on nodes.
    pub(crate) fn on_node(&self) -> impl Iterator<Item = (JobId, &Tracked)> + '_ {
        self.on_node
            .iter()
            .filter_map(|job_id| Some((*job_id, self.by_id.get(job_id)?)))
    }

    /// How many jobs are on nodes.
    pub(crate) fn on_node_count(&self) -> usize {
        self.on_node.len()
    }

    /// Queued jobs that never reached a GPU and were submitted before `before_ms`, oldest
    /// first.
    pub(crate) fn unstarted_before(
        &self,
        before_ms: u64,
    ) -> impl Iterator<Item = (JobId, &Tracked)> + '_ {
        self.unstarted
            .iter()
            .take_while(move |(created_at_ms, _)| *created_at_ms < before_ms)
            .filter_map(|(_, job_id)| Some((*job_id, self.by_id.get(job_id)?)))
    }

    fn index(&mut self, job_id: JobId, indexed: Indexed) {
        match indexed {
            Indexed::Queued { lane, unstarted } => {
                self.queued_by_lane[lane.index()] += 1;
                if let Some(created_at_ms) = unstarted {
                    self.unstarted.insert((created_at_ms, job_id));
                }
            }
            Indexed::OnNode => {
                self.on_node.insert(job_id);
            }
            Indexed::Other => {}
        }
    }

    fn unindex(&mut self, job_id: JobId, indexed: Indexed) {
        match indexed {
            Indexed::Queued { lane, unstarted } => {
                let count = &mut self.queued_by_lane[lane.index()];
                *count = count.saturating_sub(1);
                if let Some(created_at_ms) = unstarted {
                    self.unstarted.remove(&(created_at_ms, job_id));
                }
            }
            Indexed::OnNode => {
                self.on_node.remove(&job_id);
            }
            Indexed::Other => {}
        }
    }
}

/// Where a job is counted: a function of the job alone, so that what a change removes is
/// exactly what its previous version added.
#[derive(Clone, Copy)]
enum Indexed {
    /// Queued, in this lane, with its submission time if it never reached a GPU.
    Queued { lane: Lane, unstarted: Option<u64> },
    /// On a node.
    OnNode,
    /// Neither (preempted, waiting to be requeued).
    Other,
}

impl Indexed {
    fn of(job: &Tracked, lanes: LaneBounds) -> Self {
        if job.state == JobState::Queued {
            Self::Queued {
                lane: lanes.lane(job.remaining_cost().reference_seconds()),
                unstarted: (job.attempt == 0).then_some(job.created_at_ms),
            }
        } else if job.state.is_on_node() {
            Self::OnNode
        } else {
            Self::Other
        }
    }
}

/// A non-terminal job as last seen in the watch.
pub(crate) struct Tracked {
    pub(crate) revision: u64,
    pub(crate) state: JobState,
    pub(crate) created_at_ms: u64,
    pub(crate) started_at_ms: Option<u64>,
    pub(crate) not_before_ms: u64,
    pub(crate) attempt: u32,
    pub(crate) failed_attempts: u32,
    pub(crate) lease: Option<Lease>,
    pub(crate) shape: JobShape,
    pub(crate) cost: JobCost,
    pub(crate) tenant: u64,
    pub(crate) priority: Priority,
    pub(crate) progress: Option<Progress>,
    /// When `progress` last changed (the step boundary it marks), ms.
    pub(crate) progress_at_ms: u64,
    pub(crate) resumed: bool,
    /// Steps done before the current attempt (a paused job resumes from there).
    pub(crate) resume_step: u32,
    /// Times the job was paused.
    pub(crate) pauses: u32,
}

impl Tracked {
    /// The job as `record` at `revision` shows it; `previous` is what was known of it (its
    /// cost stays as first priced, and its progress time moves only when progress does).
    pub(crate) fn new(
        record: &JobRecord,
        revision: u64,
        cost: JobCost,
        previous: Option<&Self>,
    ) -> Self {
        let progress_at_ms = match previous {
            Some(known) if known.progress == record.progress && known.attempt == record.attempt => {
                known.progress_at_ms
            }
            _ => record.updated_at_ms,
        };
        Self {
            revision,
            state: record.state,
            created_at_ms: record.created_at_ms,
            started_at_ms: record.started_at_ms,
            not_before_ms: record.not_before_ms,
            attempt: record.attempt,
            failed_attempts: record.failed_attempts,
            lease: record.lease.clone(),
            shape: record.shape,
            cost,
            tenant: policy::tenant_hash(record.tenant.as_str()),
            priority: record.spec.priority,
            progress: record.progress,
            progress_at_ms,
            resumed: record.resume.is_some(),
            resume_step: record.resume.as_ref().map_or(0, |r| r.step),
            pauses: record.pauses(),
        }
    }

    /// What is left of the job's cost: a paused job resumes after the steps it has done.
    pub(crate) fn remaining_cost(&self) -> JobCost {
        let mut cost = self.cost;
        let done = f64::from(self.resume_step.min(cost.steps));
        for (seconds, step) in cost.seconds.iter_mut().zip(cost.step_seconds) {
            *seconds = (*seconds - done * step).max(step);
        }
        cost
    }

    /// Whether the job waits in the queue and may start at `now`.
    pub(crate) fn may_start(&self, now: u64) -> bool {
        self.state == JobState::Queued && self.not_before_ms <= now
    }

    /// The job on its node with its lease, if it is on one.
    pub(crate) fn on_node(&self, job_id: JobId) -> Option<OnNode> {
        if !self.state.is_on_node() {
            return None;
        }
        let lease = self.lease.as_ref()?;
        Some(OnNode {
            job_id,
            attempt: self.attempt,
            failed_attempts: self.failed_attempts,
            node: lease.node.clone(),
            slot: lease.slot,
            deadline_ms: lease.deadline_ms,
        })
    }

    /// What the deadlines are judged on.
    pub(crate) fn timed(&self, job_id: JobId) -> Timed {
        Timed {
            job_id,
            state: self.state,
            attempt: self.attempt,
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
        }
    }
}

/// A job held by a node, as the scheduler tracks it (what a lease expiry needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnNode {
    /// The job.
    pub job_id: JobId,
    /// The attempt the node runs.
    pub attempt: u32,
    /// Failed attempts so far (for the backoff of the next one).
    pub failed_attempts: u32,
    /// Its node.
    pub node: NodeId,
    /// Device index on the node.
    pub slot: u32,
    /// When the lease runs out, ms since the epoch.
    pub deadline_ms: u64,
}

/// A non-terminal job as the deadlines see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    /// The job.
    pub job_id: JobId,
    /// Its state.
    pub state: JobState,
    /// Its attempt (0 while it never reached a GPU).
    pub attempt: u32,
    /// When it was submitted, ms since the epoch.
    pub created_at_ms: u64,
    /// When its current attempt started, ms since the epoch.
    pub started_at_ms: Option<u64>,
}
