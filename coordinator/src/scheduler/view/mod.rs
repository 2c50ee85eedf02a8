//! The scheduler's picture of the cluster, kept from the watches and its own decisions, in
//! four parts by what each tracks: the non-terminal jobs ([`jobs`]), the nodes and their
//! slots ([`nodes`]), the placements in flight ([`placements`]) and the pauses under way
//! ([`pauses`]). This module answers the questions that need more than one part (which
//! slots are free, what runs where, what the policy sees). No I/O here, so every rule is
//! unit-tested.

mod jobs;
mod nodes;
mod pauses;
mod placements;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use protocol::messages::{NodeHeartbeat, SlotReport};
use protocol::{JobId, JobRecord, JobShape, JobState, NodeId};

use jobs::{Jobs, Tracked};
pub(crate) use jobs::{OnNode, Timed};
use nodes::Nodes;
use pauses::Pauses;
use placements::Placements;

use crate::cost::{CostModel, GpuClass};
use crate::policy::{self, Lane, LaneBounds, Running, Slot, Waiting};
use crate::scheduler::messages::{PlacementOutcome, SchedulerStatus, SlotKey};

/// What the view knew of a job that just finished, for the cost model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Finished {
    /// Its shape.
    pub(crate) shape: JobShape,
    /// The class of the slot it ran on.
    pub(crate) class: GpuClass,
    /// Whether it ran in one piece (no pause, no retry), so its run time is its cost.
    pub(crate) whole: bool,
}

/// What a record change asks of the scheduler besides updating the view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FollowUp {
    /// Nothing more.
    None,
    /// The job reached a terminal state (with what is known of where it ran).
    Finished(Option<Finished>),
    /// The job was preempted and must go back to the queue.
    Preempted,
}

/// The scheduler's view of jobs, nodes, placements and pauses.
pub(crate) struct View {
    jobs: Jobs,
    nodes: Nodes,
    placements: Placements,
    pauses: Pauses,
    /// Wall seconds per model second (the policy's clock; 1 but in time-scaled load tests).
    time_scale: f64,
}

impl View {
    /// An empty view; a node is live while its last heartbeat is within `node_ttl_s`; the
    /// policy's clock runs at `time_scale` wall seconds per model second; queued jobs are
    /// counted by the policy's `lanes`.
    pub(crate) fn new(node_ttl_s: u64, time_scale: f64, lanes: LaneBounds) -> Self {
        Self {
            jobs: Jobs::new(lanes),
            nodes: Nodes::new(node_ttl_s.saturating_mul(1_000)),
            placements: Placements::default(),
            pauses: Pauses::default(),
            time_scale,
        }
    }

    // --- Jobs -----------------------------------------------------------------------

    /// Takes in a record from the watch (older revisions than the one known are ignored);
    /// `model` prices new jobs.
    pub(crate) fn job_changed(
        &mut self,
        record: &JobRecord,
        revision: u64,
        model: &CostModel,
    ) -> FollowUp {
        let job_id = record.id;
        if self
            .jobs
            .get(&job_id)
            .is_some_and(|known| known.revision >= revision)
        {
            return FollowUp::None;
        }
        self.placements.seen(job_id, revision);
        self.pauses.record_changed(record);
        if record.state.is_terminal() {
            let finished = self.jobs.remove(&job_id).and_then(|job| {
                let lease = job.lease?;
                let class = self.nodes.class_of(&(lease.node, lease.slot))?;
                Some(Finished {
                    shape: job.shape,
                    class,
                    whole: !job.resumed && record.failed_attempts == 0,
                })
            });
            return FollowUp::Finished(finished);
        }
        let previous = self.jobs.get(&job_id);
        let cost = previous.map_or_else(|| model.cost(&record.shape), |known| known.cost);
        let tracked = Tracked::new(record, revision, cost, previous);
        self.jobs.insert(job_id, tracked);
        if record.state == JobState::Preempted {
            FollowUp::Preempted
        } else {
            FollowUp::None
        }
    }

    /// Forgets a deleted record.
    pub(crate) fn job_removed(&mut self, job_id: JobId) {
        self.jobs.remove(&job_id);
        self.pauses.ended(job_id);
    }

    /// Jobs on nodes, with their leases.
    pub(crate) fn on_node_jobs(&self) -> Vec<OnNode> {
        self.jobs
            .on_node()
            .filter_map(|(job_id, job)| job.on_node(job_id))
            .collect()
    }

    /// The jobs that may have missed a deadline at `now`, as the deadlines see them: those
    /// on nodes (the longest run time) and the queued ones that never reached a GPU and
    /// were submitted more than `start_timeout_ms` ago (the time to start; 0: none). Every
    /// other job is within its deadlines, so a long queue costs nothing here.
    pub(crate) fn deadline_candidates(&self, now: u64, start_timeout_ms: u64) -> Vec<Timed> {
        let late = if start_timeout_ms == 0 {
            0
        } else {
            now.saturating_sub(start_timeout_ms)
        };
        self.jobs
            .on_node()
            .chain(self.jobs.unstarted_before(late))
            .map(|(job_id, job)| job.timed(job_id))
            .collect()
    }

    /// Queued jobs (being placed or not) by lane, in [`Lane::ALL`]'s order, without walking
    /// the queue.
    pub(crate) fn queued_by_lane(&self) -> impl Iterator<Item = (Lane, usize)> {
        Lane::ALL.into_iter().zip(self.jobs.queued_by_lane())
    }

    /// Queued jobs not being placed, as the policy sees them.
    pub(crate) fn queued_jobs(&self) -> Vec<Waiting> {
        self.jobs
            .iter()
            .filter(|(id, job)| job.state == JobState::Queued && !self.placements.contains(id))
            .map(|(job_id, job)| waiting(*job_id, job))
            .collect()
    }

    /// A queued job (being placed or not) as the policy sees it.
    pub(crate) fn queued_job(&self, job_id: JobId) -> Option<Waiting> {
        self.jobs
            .get(&job_id)
            .filter(|job| job.state == JobState::Queued)
            .map(|job| waiting(job_id, job))
    }

    /// Whether a job was never placed (attempt 0): its first queue position may be a line
    /// of its submission time's page.
    pub(crate) fn never_placed(&self, job_id: JobId) -> bool {
        self.jobs.get(&job_id).is_some_and(|job| job.attempt == 0)
    }

    /// Whether some slot of a live, accepting node could take a job now or later (one with
    /// a proxy, `has_proxy`): without one there is nothing to place on or to pause.
    pub(crate) fn any_slot(&self, now: u64, has_proxy: impl Fn(&SlotKey) -> bool) -> bool {
        self.offered(now, has_proxy).next().is_some()
    }

    /// The healthy slots of live, accepting nodes that have a proxy (`has_proxy`), each
    /// with its node's last heartbeat and its report there.
    fn offered<'a>(
        &'a self,
        now: u64,
        has_proxy: impl Fn(&SlotKey) -> bool + 'a,
    ) -> impl Iterator<Item = (SlotKey, &'a NodeHeartbeat, &'a SlotReport)> + 'a {
        self.nodes
            .accepting(now)
            .flat_map(|heartbeat| {
                let healthy = heartbeat.slots.iter().filter(|report| report.healthy);
                healthy.map(move |report| {
                    ((heartbeat.node_id.clone(), report.slot), heartbeat, report)
                })
            })
            .filter(move |(key, _, _)| has_proxy(key))
    }

    /// The shape of a tracked job.
    pub(crate) fn shape_of(&self, job_id: JobId) -> Option<JobShape> {
        self.jobs.get(&job_id).map(|job| job.shape)
    }

    /// When a tracked job was created.
    pub(crate) fn created_at_ms(&self, job_id: JobId) -> Option<u64> {
        self.jobs.get(&job_id).map(|job| job.created_at_ms)
    }

    // --- Nodes ----------------------------------------------------------------------

    /// Takes in a heartbeat; returns whether the node is live (else it is forgotten).
    pub(crate) fn node_seen(&mut self, heartbeat: NodeHeartbeat, now: u64) -> bool {
        let node = heartbeat.node_id.clone();
        if !self.nodes.seen(heartbeat, now) {
            self.forget_node(&node);
            return false;
        }
        true
    }

    /// Forgets a node; returns whether it was known. Its placements in flight end with
    /// their proxy (the record's compare-and-set keeps them safe).
    pub(crate) fn forget_node(&mut self, node: &NodeId) -> bool {
        self.placements.forget_node(node);
        self.nodes.forget(node)
    }

    /// The slots the node's latest heartbeat reports.
    pub(crate) fn slots_of(&self, node: &NodeId) -> Vec<u32> {
        self.nodes.slots_of(node)
    }

    /// Index, class and memory of each slot of a node, by its last report.
    pub(crate) fn slot_sizes(&self, node: &NodeId) -> Vec<(u32, GpuClass, u64)> {
        self.nodes.slot_sizes(node)
    }

    /// Nodes whose last heartbeat is older than the TTL.
    pub(crate) fn gone_nodes(&self, now: u64) -> Vec<NodeId> {
        self.nodes.gone(now)
    }

    // --- Placements -----------------------------------------------------------------

    /// Reserves the job and the slot for a placement handed to the slot's proxy.
    pub(crate) fn placing_started(&mut self, job_id: JobId, slot: SlotKey) {
        self.placements.started(job_id, slot);
    }

    /// A proxy finished: the reservation ends once the watch has shown its last write.
    pub(crate) fn placement_done(
        &mut self,
        job_id: JobId,
        outcome: PlacementOutcome,
        revision: Option<u64>,
        now: u64,
    ) {
        let known = self.jobs.get(&job_id).map(|job| job.revision);
        self.placements.done(job_id, outcome, revision, known, now);
    }

    /// Drops the reservations of a slot whose proxy failed.
    pub(crate) fn slot_failed(&mut self, slot: &SlotKey) {
        self.placements.slot_failed(slot);
    }

    // --- Pauses ---------------------------------------------------------------------

    /// The job running on `slot` by our records, with its attempt, if it is running (only a
    /// running job can be paused).
    pub(crate) fn running_on(&self, slot: &SlotKey) -> Option<(JobId, u32)> {
        self.jobs.on_node().find_map(|(job_id, job)| {
            let lease = job.lease.as_ref()?;
            (job.state == JobState::Running && lease.node == slot.0 && lease.slot == slot.1)
                .then_some((job_id, job.attempt))
        })
    }

    /// A pause of `job_id` (`attempt`) was asked of its node, for `for_job`.
    pub(crate) fn pause_requested(&mut self, job_id: JobId, attempt: u32, for_job: JobId) {
        self.pauses.requested(job_id, attempt, for_job);
    }

    /// The node will not pause the job (it refused: decoding already, another attempt). With
    /// `unsupported`, the node did not answer at all: it cannot pause, and its jobs are not
    /// offered for pausing again until the node restarts.
    pub(crate) fn pause_refused(&mut self, job_id: JobId, node: &NodeId, unsupported: bool) {
        self.pauses.ended(job_id);
        if unsupported {
            self.nodes.cannot_pause(node);
        }
    }

    /// Placements of waiting jobs on the slots paused jobs freed for them: each held slot
    /// that is free now, for its job if it still waits and may start. Holds that ran out, or
    /// whose job no longer waits, are dropped.
    pub(crate) fn freed_slot_placements(
        &mut self,
        now: u64,
        has_proxy: impl Fn(&SlotKey) -> bool,
    ) -> Vec<(SlotKey, JobId)> {
        if !self.pauses.holds_any() {
            return Vec::new();
        }
        let free = self.free_slots(now, has_proxy);
        let (jobs, placements) = (&self.jobs, &self.placements);
        let waiting = |job_id: JobId| {
            jobs.get(&job_id)
                .is_some_and(|job| job.may_start(now) && !placements.contains(&job_id))
        };
        self.pauses.take_freed(now, &free, waiting)
    }

    // --- Slots, as the policy sees them ---------------------------------------------

    /// Slots of live, accepting nodes that are healthy and idle by their node's report, hold
    /// no job by our records, have no placement in flight, have not refused one since their
    /// node's last heartbeat, and have a proxy (`has_proxy`).
    pub(crate) fn free_slots(
        &self,
        now: u64,
        has_proxy: impl Fn(&SlotKey) -> bool,
    ) -> Vec<SlotKey> {
        self.slots(now, has_proxy, LaneBounds::default())
            .into_iter()
            .filter(|(_, slot)| slot.running.is_none())
            .map(|(key, _)| key)
            .collect()
    }

    /// The slots the policy sees: those of live, accepting nodes, healthy by their node's
    /// report, with a proxy (`has_proxy`), and not refusing since their node's last
    /// heartbeat; each free, or running the job our records (or a placement in flight, or
    /// the node's report) put there. Sorted by key, so decisions are stable.
    pub(crate) fn slots(
        &self,
        now: u64,
        has_proxy: impl Fn(&SlotKey) -> bool,
        lanes: LaneBounds,
    ) -> Vec<(SlotKey, Slot)> {
        let mut occupied: HashMap<SlotKey, JobId> = self
            .on_node_jobs()
            .into_iter()
            .map(|job| ((job.node, job.slot), job.job_id))
            .collect();
        for (slot, job_id) in self.placements.occupied() {
            occupied.insert(slot.clone(), job_id);
        }
        let mut slots = Vec::new();
        for (key, heartbeat, report) in self.offered(now, has_proxy) {
            if self.placements.refused_since(&key, heartbeat.sent_at_ms) {
                continue;
            }
            let class = nodes::class(report);
            let job = occupied
                .get(&key)
                .copied()
                .or(report.job.map(|job| job.job_id));
            let pausable = self.nodes.can_pause(&heartbeat.node_id);
            let running = job.map(|job_id| self.running(job_id, class, lanes, now, pausable));
            slots.push((
                key,
                Slot {
                    class,
                    memory_bytes: report.memory_total_bytes,
                    running,
                },
            ));
        }
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        slots
    }

    /// A job on a slot as the policy sees it: pausable while it is running (denoising) on
    /// a node that can pause, with its pauses so far and any pause under way.
    fn running(
        &self,
        job_id: JobId,
        class: GpuClass,
        lanes: LaneBounds,
        now: u64,
        node_can_pause: bool,
    ) -> Running {
        let job = self.jobs.get(&job_id);
        let total_s = job.map_or(0.0, |job| job.cost.seconds[class.index()]);
        let done = job
            .and_then(|job| job.progress)
            .map_or(0.0, |p| f64::from(p.step) / f64::from(p.total_steps.max(1)));
        let next_boundary_s = job.map_or(f64::INFINITY, |job| {
            let step_s = job.cost.step_seconds[class.index()];
            let since_s = now.saturating_sub(job.progress_at_ms) as f64 / 1_000.0 / self.time_scale;
            (step_s - since_s).max(0.0)
        });
        let denoising = job.is_some_and(|job| {
            job.state == JobState::Running && job.progress.is_none_or(|p| p.step < p.total_steps)
        });
        Running {
            job_id,
            lane: job.map_or(policy::Lane::Long, |job| {
                lanes.lane(job.cost.reference_seconds())
            }),
            tenant: job.map_or(0, |job| job.tenant),
            remaining_s: total_s * (1.0 - done.clamp(0.0, 1.0)),
            next_boundary_s,
            pauses: job.map_or(0, |job| job.pauses),
            unpausable: !(denoising && node_can_pause),
            pausing_for: self.pauses.pausing_for(job_id),
        }
    }

    /// The counts.
    pub(crate) fn status(&self, now: u64, has_proxy: impl Fn(&SlotKey) -> bool) -> SchedulerStatus {
        SchedulerStatus {
            queued: self.jobs.queued(),
            on_node: self.jobs.on_node_count(),
            live_slots: self.nodes.live_slots(now),
            free_slots: self.free_slots(now, has_proxy).len(),
        }
    }
}

/// A tracked queued job as the policy sees it.
fn waiting(job_id: JobId, job: &Tracked) -> Waiting {
    Waiting {
        job_id,
        tenant: job.tenant,
        priority: job.priority,
        created_at_ms: job.created_at_ms,
        not_before_ms: job.not_before_ms,
        cost: job.remaining_cost(),
        pauses: job.pauses,
    }
}
