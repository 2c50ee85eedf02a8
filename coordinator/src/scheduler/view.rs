//! The scheduler's picture of the cluster, kept from the watches and its own placements:
//! the jobs that are queued or on nodes (with the KV revision last seen), the placements in
//! flight, the nodes' last heartbeats. No I/O here, so every rule is unit-tested.

use std::collections::HashMap;

use protocol::messages::NodeHeartbeat;
use protocol::record::{Lease, Progress};
use protocol::spec::Priority;
use protocol::{JobId, JobRecord, JobShape, JobState, NodeId};

use super::{PlacementOutcome, SchedulerStatus, SlotKey};
use crate::cost::{CostModel, GpuClass, JobCost};
use crate::leases::OnNode;
use crate::policy::{self, LaneBounds, Running, Slot, Waiting};

/// A non-terminal job as last seen in the watch.
struct Tracked {
    revision: u64,
    state: JobState,
    created_at_ms: u64,
    not_before_ms: u64,
    attempt: u32,
    failed_attempts: u32,
    lease: Option<Lease>,
    shape: JobShape,
    cost: JobCost,
    tenant: u64,
    priority: Priority,
    progress: Option<Progress>,
    /// When `progress` last changed (the step boundary it marks), ms.
    progress_at_ms: u64,
    resumed: bool,
    /// Steps done before the current attempt (a paused job resumes from there).
    resume_step: u32,
    /// Times the job was paused.
    pauses: u32,
}

/// A pause asked of a node and not yet settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pausing {
    /// The waiting job the slot is freed for.
    for_job: JobId,
    /// The attempt asked to pause.
    attempt: u32,
}

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

/// A placement handed to a proxy. The job and its slot stay reserved until the watch has
/// delivered the proxy's last write (`settle_revision`), so the view never steps back.
struct Placing {
    slot: SlotKey,
    settle_revision: Option<u64>,
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

/// What is left of a job's cost: a paused job resumes after the steps it has done.
fn remaining_cost(job: &Tracked) -> JobCost {
    let mut cost = job.cost;
    let done = f64::from(job.resume_step.min(cost.steps));
    for (seconds, step) in cost.seconds.iter_mut().zip(cost.step_seconds) {
        *seconds = (*seconds - done * step).max(step);
    }
    cost
}

/// The scheduler's view of jobs, placements and nodes.
pub(crate) struct View {
    node_ttl_ms: u64,
    jobs: HashMap<JobId, Tracked>,
    placing: HashMap<JobId, Placing>,
    nodes: HashMap<NodeId, NodeHeartbeat>,
    /// Slots that refused a placement at this time: not free until a newer heartbeat.
    refused_at: HashMap<SlotKey, u64>,
    /// Pauses asked of nodes, by the job being paused.
    pausing: HashMap<JobId, Pausing>,
    /// Nodes that cannot pause a job (no answer to a pause request), with the start time of
    /// the node process that did not answer (a restarted node is asked again).
    cannot_pause: HashMap<NodeId, u64>,
    /// Slots a pause freed, held for the job they were freed for (until it is placed, stops
    /// waiting, or the hold runs out), with when the pause was seen. Without the hold the
    /// paused job, which has waited since it was submitted, could take its slot straight back.
    freed_for: HashMap<SlotKey, (JobId, u64)>,
}

/// How long a slot a pause freed is held for the job it was freed for, ms.
const FREED_SLOT_HOLD_MS: u64 = 10_000;

impl View {
    /// An empty view; a node is live while its last heartbeat is within `node_ttl_s`.
    pub(crate) fn new(node_ttl_s: u64) -> Self {
        Self {
            node_ttl_ms: node_ttl_s.saturating_mul(1_000),
            jobs: HashMap::new(),
            placing: HashMap::new(),
            nodes: HashMap::new(),
            refused_at: HashMap::new(),
            pausing: HashMap::new(),
            cannot_pause: HashMap::new(),
            freed_for: HashMap::new(),
        }
    }

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
        let settled = self
            .placing
            .get(&job_id)
            .and_then(|p| p.settle_revision)
            .is_some_and(|r| revision >= r);
        if settled {
            self.placing.remove(&job_id);
        }
        if record.state.is_terminal() {
            let finished = self.jobs.remove(&job_id).and_then(|job| {
                let lease = job.lease?;
                let class = self.class_of(&(lease.node, lease.slot))?;
                Some(Finished {
                    shape: job.shape,
                    class,
                    whole: !job.resumed && record.failed_attempts == 0,
                })
            });
            return FollowUp::Finished(finished);
        }
        let cost = match self.jobs.get(&job_id) {
            Some(known) => known.cost,
            None => model.cost(&record.shape),
        };
        let progress_at_ms = match self.jobs.get(&job_id) {
            Some(known) if known.progress == record.progress && known.attempt == record.attempt => {
                known.progress_at_ms
            }
            _ => record.updated_at_ms,
        };
        if let Some(pausing) = self.pausing.get(&job_id).copied()
            && (record.state != JobState::Running || record.attempt != pausing.attempt)
        {
            self.pausing.remove(&job_id);
            if record.state == JobState::Preempted
                && let Some(lease) = &record.lease
            {
                let slot = (lease.node.clone(), lease.slot);
                self.freed_for
                    .insert(slot, (pausing.for_job, record.updated_at_ms));
            }
        }
        let tracked = Tracked {
            revision,
            state: record.state,
            created_at_ms: record.created_at_ms,
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
        };
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
        self.pausing.remove(&job_id);
    }

    /// The job running on `slot` by our records, with its attempt, if it is running (only a
    /// running job can be paused).
    pub(crate) fn running_on(&self, slot: &SlotKey) -> Option<(JobId, u32)> {
        self.jobs.iter().find_map(|(job_id, job)| {
            let lease = job.lease.as_ref()?;
            (job.state == JobState::Running && lease.node == slot.0 && lease.slot == slot.1)
                .then_some((*job_id, job.attempt))
        })
    }

    /// A pause of `job_id` (`attempt`) was asked of its node, for `for_job`.
    pub(crate) fn pause_requested(&mut self, job_id: JobId, attempt: u32, for_job: JobId) {
        self.pausing.insert(job_id, Pausing { for_job, attempt });
    }

    /// The node will not pause the job (it refused: decoding already, another attempt). With
    /// `unsupported`, the node did not answer at all: it cannot pause, and its jobs are not
    /// offered for pausing again until the node restarts.
    pub(crate) fn pause_refused(&mut self, job_id: JobId, node: &NodeId, unsupported: bool) {
        self.pausing.remove(&job_id);
        if unsupported && let Some(heartbeat) = self.nodes.get(node) {
            self.cannot_pause
                .insert(node.clone(), heartbeat.started_at_ms);
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
        if self.freed_for.is_empty() {
            return Vec::new();
        }
        let free = self.free_slots(now, has_proxy);
        let mut placements = Vec::new();
        let jobs = &self.jobs;
        let placing = &self.placing;
        self.freed_for.retain(|slot, (job_id, at_ms)| {
            let waiting = jobs.get(job_id).is_some_and(|job| {
                job.state == JobState::Queued
                    && job.not_before_ms <= now
                    && !placing.contains_key(job_id)
            });
            if !waiting || now.saturating_sub(*at_ms) > FREED_SLOT_HOLD_MS {
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

    /// Whether a node can pause its jobs (until one of its processes failed to answer).
    fn can_pause(&self, node: &NodeId) -> bool {
        match (self.cannot_pause.get(node), self.nodes.get(node)) {
            (Some(started), Some(heartbeat)) => heartbeat.started_at_ms != *started,
            _ => true,
        }
    }

    /// Reserves the job and the slot for a placement handed to the slot's proxy.
    pub(crate) fn placing_started(&mut self, job_id: JobId, slot: SlotKey) {
        self.placing.insert(
            job_id,
            Placing {
                slot,
                settle_revision: None,
            },
        );
    }

    /// A proxy finished: the reservation ends once the watch has shown its last write.
    pub(crate) fn placement_done(
        &mut self,
        job_id: JobId,
        outcome: PlacementOutcome,
        revision: Option<u64>,
        now: u64,
    ) {
        let Some(placing) = self.placing.get_mut(&job_id) else {
            return;
        };
        if outcome == PlacementOutcome::Refused {
            self.refused_at.insert(placing.slot.clone(), now);
        }
        // A job no longer tracked has finished (or was deleted): nothing left to wait for.
        let known = self.jobs.get(&job_id).map(|job| job.revision);
        match (revision, known) {
            (Some(settle), Some(known)) if settle > known => placing.settle_revision = Some(settle),
            _ => {
                self.placing.remove(&job_id);
            }
        }
    }

    /// Drops the reservations of a slot whose proxy failed.
    pub(crate) fn slot_failed(&mut self, slot: &SlotKey) {
        self.placing.retain(|_, placing| &placing.slot != slot);
    }

    /// Takes in a heartbeat; returns whether the node is live (else it is forgotten).
    pub(crate) fn node_seen(&mut self, heartbeat: NodeHeartbeat, now: u64) -> bool {
        let node = heartbeat.node_id.clone();
        if !self.is_live(&heartbeat, now) {
            self.forget_node(&node);
            return false;
        }
        if self
            .nodes
            .get(&node)
            .is_none_or(|known| known.sent_at_ms <= heartbeat.sent_at_ms)
        {
            self.nodes.insert(node, heartbeat);
        }
        true
    }

    /// The slots the node's latest heartbeat reports.
    pub(crate) fn slots_of(&self, node: &NodeId) -> Vec<u32> {
        self.nodes
            .get(node)
            .map(|hb| hb.slots.iter().map(|slot| slot.slot).collect())
            .unwrap_or_default()
    }

    /// Forgets a node; returns whether it was known. Its placements in flight end with
    /// their proxy (the record's compare-and-set keeps them safe).
    pub(crate) fn forget_node(&mut self, node: &NodeId) -> bool {
        self.placing.retain(|_, placing| &placing.slot.0 != node);
        self.refused_at
            .retain(|(refused_node, _), _| refused_node != node);
        self.nodes.remove(node).is_some()
    }

    /// Nodes whose last heartbeat is older than the TTL.
    pub(crate) fn gone_nodes(&self, now: u64) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|hb| !self.is_live(hb, now))
            .map(|hb| hb.node_id.clone())
            .collect()
    }

    fn is_live(&self, heartbeat: &NodeHeartbeat, now: u64) -> bool {
        heartbeat.sent_at_ms.saturating_add(self.node_ttl_ms) >= now
    }

    /// Jobs on nodes, with their leases.
    pub(crate) fn on_node_jobs(&self) -> Vec<OnNode> {
        let on_node = self.jobs.iter().filter(|(_, job)| job.state.is_on_node());
        on_node
            .filter_map(|(job_id, job)| {
                let lease = job.lease.as_ref()?;
                Some(OnNode {
                    job_id: *job_id,
                    attempt: job.attempt,
                    failed_attempts: job.failed_attempts,
                    node: lease.node.clone(),
                    slot: lease.slot,
                    deadline_ms: lease.deadline_ms,
                })
            })
            .collect()
    }

    /// Queued jobs not being placed, as the policy sees them.
    pub(crate) fn queued_jobs(&self) -> Vec<Waiting> {
        let waiting = self
            .jobs
            .iter()
            .filter(|(id, job)| job.state == JobState::Queued && !self.placing.contains_key(*id));
        waiting
            .map(|(job_id, job)| Waiting {
                job_id: *job_id,
                tenant: job.tenant,
                priority: job.priority,
                created_at_ms: job.created_at_ms,
                not_before_ms: job.not_before_ms,
                cost: remaining_cost(job),
                pauses: job.pauses,
            })
            .collect()
    }

    /// The shape of a tracked job.
    pub(crate) fn shape_of(&self, job_id: JobId) -> Option<JobShape> {
        self.jobs.get(&job_id).map(|job| job.shape)
    }

    /// Index, class and memory of each slot of a node, by its last report.
    pub(crate) fn slot_sizes(&self, node: &NodeId) -> Vec<(u32, GpuClass, u64)> {
        self.nodes
            .get(node)
            .map(|hb| {
                hb.slots
                    .iter()
                    .map(|r| {
                        let class = GpuClass::parse_or_default(&r.gpu_class);
                        (r.slot, class, r.memory_total_bytes)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The class of a slot by its node's last report.
    pub(crate) fn class_of(&self, key: &SlotKey) -> Option<GpuClass> {
        let heartbeat = self.nodes.get(&key.0)?;
        let report = heartbeat.slots.iter().find(|r| r.slot == key.1)?;
        Some(GpuClass::parse_or_default(&report.gpu_class))
    }

    /// When a tracked job was created.
    pub(crate) fn created_at_ms(&self, job_id: JobId) -> Option<u64> {
        self.jobs.get(&job_id).map(|job| job.created_at_ms)
    }

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
        for (job_id, placing) in &self.placing {
            occupied.insert(placing.slot.clone(), *job_id);
        }
        let mut slots = Vec::new();
        for (node, heartbeat) in &self.nodes {
            if !heartbeat.accepting || !self.is_live(heartbeat, now) {
                continue;
            }
            for report in heartbeat.slots.iter().filter(|report| report.healthy) {
                let key = (node.clone(), report.slot);
                let refused = self
                    .refused_at
                    .get(&key)
                    .is_some_and(|at| *at >= heartbeat.sent_at_ms);
                if refused || !has_proxy(&key) {
                    continue;
                }
                let class = GpuClass::parse_or_default(&report.gpu_class);
                let job = occupied
                    .get(&key)
                    .copied()
                    .or(report.job.map(|job| job.job_id));
                let pausable = self.can_pause(node);
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
            let since_s = now.saturating_sub(job.progress_at_ms) as f64 / 1_000.0;
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
            pausing_for: self.pausing.get(&job_id).map(|p| p.for_job),
        }
    }

    /// The counts.
    pub(crate) fn status(&self, now: u64, has_proxy: impl Fn(&SlotKey) -> bool) -> SchedulerStatus {
        SchedulerStatus {
            queued: self
                .jobs
                .values()
                .filter(|job| job.state == JobState::Queued)
                .count(),
            on_node: self
                .jobs
                .values()
                .filter(|job| job.state.is_on_node())
                .count(),
            live_slots: self
                .nodes
                .values()
                .filter(|hb| self.is_live(hb, now))
                .map(|hb| hb.slots.len())
                .sum(),
            free_slots: self.free_slots(now, has_proxy).len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::messages::SlotReport;
    use protocol::{JobShape, JobSpec, TenantId};

    use super::*;
    use crate::cost::CostModel;

    const NOW: u64 = 1_000_000;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).expect("valid")
    }

    fn heartbeat(name: &str, slots: u32, sent_at_ms: u64) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: node(name),
            backend: "simulated".to_owned(),
            version: "test".to_owned(),
            started_at_ms: 0,
            sent_at_ms,
            accepting: true,
            slots: (0..slots)
                .map(|slot| SlotReport {
                    slot,
                    gpu_class: "cpu".to_owned(),
                    memory_total_bytes: 1 << 30,
                    memory_free_bytes: 1 << 30,
                    job: None,
                    healthy: true,
                    unhealthy_reason: None,
                })
                .collect(),
        }
    }

    fn queued() -> JobRecord {
        let shape = JobShape::new(7, 30, 64, 64, 3, true);
        JobRecord::queued(
            JobId::new(),
            TenantId::default_tenant(),
            JobSpec::new("x"),
            shape,
            1,
            3,
            NOW,
        )
    }

    fn assigned(record: &JobRecord, name: &str, slot: u32) -> JobRecord {
        let lease = Lease {
            node: node(name),
            slot,
            deadline_ms: NOW + 1_000,
        };
        record
            .apply(&protocol::JobEvent::Assigned { lease }, NOW)
            .expect("legal")
    }

    fn free(view: &View) -> Vec<SlotKey> {
        let mut slots: Vec<SlotKey> = view.free_slots(NOW, |_| true).into_iter().collect();
        slots.sort();
        slots
    }

    #[test]
    fn a_placement_reserves_its_slot_until_the_watch_shows_its_write() {
        let mut view = View::new(10);
        view.node_seen(heartbeat("a", 1, NOW), NOW);
        let job = queued();
        view.job_changed(&job, 1, &CostModel::default());
        view.placing_started(job.id, (node("a"), 0));
        assert!(free(&view).is_empty() && view.queued_jobs().is_empty());
        view.placement_done(job.id, PlacementOutcome::Accepted, Some(2), NOW);
        assert!(
            free(&view).is_empty(),
            "the watch has not shown revision 2 yet"
        );
        view.job_changed(&assigned(&job, "a", 0), 2, &CostModel::default());
        assert!(free(&view).is_empty(), "now the record holds the slot");
        assert_eq!(view.on_node_jobs().len(), 1);
    }

    #[test]
    fn a_job_finished_before_its_placement_reports_frees_the_slot() {
        let mut view = View::new(10);
        view.node_seen(heartbeat("a", 1, NOW), NOW);
        let job = queued();
        view.job_changed(&job, 1, &CostModel::default());
        view.placing_started(job.id, (node("a"), 0));
        let mut done = assigned(&job, "a", 0);
        done.state = JobState::Succeeded;
        assert!(matches!(
            view.job_changed(&done, 6, &CostModel::default()),
            FollowUp::Finished(_)
        ));
        view.placement_done(job.id, PlacementOutcome::Accepted, Some(2), NOW);
        assert_eq!(free(&view), vec![(node("a"), 0)]);
    }

    #[test]
    fn older_revisions_are_ignored() {
        let mut view = View::new(10);
        let job = queued();
        view.job_changed(&assigned(&job, "a", 0), 5, &CostModel::default());
        view.job_changed(&job, 4, &CostModel::default());
        assert_eq!(view.on_node_jobs().len(), 1);
        assert!(view.queued_jobs().is_empty());
    }

    #[test]
    fn a_refusing_slot_waits_for_a_newer_heartbeat() {
        let mut view = View::new(10);
        view.node_seen(heartbeat("a", 2, NOW - 10), NOW);
        let job = queued();
        view.job_changed(&job, 1, &CostModel::default());
        view.placing_started(job.id, (node("a"), 1));
        view.placement_done(job.id, PlacementOutcome::Refused, Some(3), NOW);
        assert!(
            view.queued_jobs().is_empty(),
            "not before the watch shows the hand-back"
        );
        let handed_back = assigned(&job, "a", 1)
            .apply(&protocol::JobEvent::AssignmentRejected { attempt: 1 }, NOW)
            .expect("legal");
        view.job_changed(&handed_back, 3, &CostModel::default());
        assert_eq!(free(&view), vec![(node("a"), 0)]);
        assert_eq!(view.queued_jobs().len(), 1, "the job is placeable again");
        view.node_seen(heartbeat("a", 2, NOW + 1), NOW);
        assert_eq!(free(&view), vec![(node("a"), 0), (node("a"), 1)]);
    }

    #[test]
    fn nodes_past_their_ttl_are_gone_and_offer_no_slots() {
        let mut view = View::new(3);
        assert!(
            !view.node_seen(heartbeat("old", 1, NOW - 3_001), NOW),
            "history from a dead node"
        );
        assert!(view.node_seen(heartbeat("b", 1, NOW - 2_000), NOW));
        assert_eq!(view.gone_nodes(NOW), Vec::<NodeId>::new());
        assert_eq!(view.gone_nodes(NOW + 1_001), vec![node("b")]);
        assert!(view.free_slots(NOW + 1_001, |_| true).is_empty());
        let mut busy = heartbeat("c", 1, NOW);
        busy.slots[0].job = Some(protocol::messages::SlotJob {
            job_id: JobId::new(),
            attempt: 1,
        });
        view.node_seen(busy, NOW);
        let mut closed = heartbeat("d", 1, NOW);
        closed.accepting = false;
        view.node_seen(closed, NOW);
        assert_eq!(free(&view), vec![(node("b"), 0)]);
        assert_eq!(view.status(NOW, |_| true).live_slots, 3);
    }

    fn running_record(name: &str, step: u32) -> JobRecord {
        let job = assigned(&queued(), name, 0);
        let started = job
            .apply(
                &protocol::JobEvent::Started {
                    attempt: 1,
                    lease_deadline_ms: NOW + 1_000,
                },
                NOW,
            )
            .expect("legal");
        started
            .apply(
                &protocol::JobEvent::Progressed {
                    attempt: 1,
                    progress: Progress {
                        step,
                        total_steps: 3,
                    },
                    lease_deadline_ms: NOW + 1_000,
                },
                NOW,
            )
            .expect("legal")
    }

    fn running_on_a(view: &View, now: u64) -> Running {
        let slots = view.slots(now, |_| true, LaneBounds::default());
        slots[0].1.running.expect("a job runs on the slot")
    }

    #[test]
    fn a_denoising_job_is_pausable_until_asked_and_its_node_is_not_asked_again_once_it_cannot() {
        let mut view = View::new(10);
        view.node_seen(heartbeat("a", 1, NOW), NOW);
        let job = running_record("a", 1);
        view.job_changed(&job, 4, &CostModel::default());
        let running = running_on_a(&view, NOW);
        assert!(
            !running.unpausable,
            "running, denoising, on a node that can pause"
        );
        assert_eq!((running.pauses, running.pausing_for), (0, None));
        assert_eq!(view.running_on(&(node("a"), 0)), Some((job.id, 1)));

        let waiting = JobId::new();
        view.pause_requested(job.id, 1, waiting);
        assert_eq!(running_on_a(&view, NOW).pausing_for, Some(waiting));
        view.pause_refused(job.id, &node("a"), false);
        assert_eq!(running_on_a(&view, NOW).pausing_for, None);
        assert!(
            !running_on_a(&view, NOW).unpausable,
            "a refusal is for this once"
        );

        view.pause_requested(job.id, 1, waiting);
        view.pause_refused(job.id, &node("a"), true);
        assert!(
            running_on_a(&view, NOW).unpausable,
            "the node did not answer"
        );
        let mut restarted = heartbeat("a", 1, NOW + 1);
        restarted.started_at_ms = 7;
        view.node_seen(restarted, NOW + 1);
        assert!(
            !running_on_a(&view, NOW + 1).unpausable,
            "a restarted node is asked again"
        );

        // Denoising done: nothing left to pause.
        let decoding = job
            .apply(
                &protocol::JobEvent::Progressed {
                    attempt: 1,
                    progress: Progress {
                        step: 3,
                        total_steps: 3,
                    },
                    lease_deadline_ms: NOW + 1_000,
                },
                NOW,
            )
            .expect("legal");
        view.job_changed(&decoding, 5, &CostModel::default());
        assert!(running_on_a(&view, NOW + 1).unpausable);
    }

    #[test]
    fn the_slot_a_pause_frees_is_held_for_the_job_it_was_freed_for() {
        let mut view = View::new(10);
        view.node_seen(heartbeat("a", 1, NOW), NOW);
        let long = running_record("a", 1);
        view.job_changed(&long, 4, &CostModel::default());
        let short = queued();
        view.job_changed(&short, 5, &CostModel::default());
        view.pause_requested(long.id, 1, short.id);
        assert!(view.freed_slot_placements(NOW, |_| true).is_empty());
        let paused = long
            .apply(
                &protocol::JobEvent::Preempted {
                    attempt: 1,
                    resume: protocol::record::ResumePoint {
                        step: 1,
                        latent_object: "x".to_owned(),
                    },
                },
                NOW,
            )
            .expect("legal");
        view.job_changed(&paused, 6, &CostModel::default());
        let requeued = paused
            .apply(&protocol::JobEvent::Requeued, NOW)
            .expect("legal");
        view.job_changed(&requeued, 7, &CostModel::default());
        assert_eq!(
            view.queued_jobs().len(),
            2,
            "both wait: the policy would rank them"
        );
        assert_eq!(
            view.freed_slot_placements(NOW, |_| true),
            vec![((node("a"), 0), short.id)]
        );
        assert!(
            view.freed_slot_placements(NOW, |_| true).is_empty(),
            "held once"
        );
    }

    #[test]
    fn a_paused_job_waits_with_its_pauses_and_the_cost_of_what_is_left() {
        let mut view = View::new(10);
        let job = running_record("a", 1);
        let whole = CostModel::default().cost(&job.shape);
        let paused = job
            .apply(
                &protocol::JobEvent::Preempted {
                    attempt: 1,
                    resume: protocol::record::ResumePoint {
                        step: 2,
                        latent_object: "x".to_owned(),
                    },
                },
                NOW,
            )
            .and_then(|r| r.apply(&protocol::JobEvent::Requeued, NOW))
            .expect("legal");
        view.job_changed(&paused, 6, &CostModel::default());
        let waiting = view.queued_jobs();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].pauses, 1);
        let left = waiting[0].cost.reference_seconds();
        assert!(
            left < whole.reference_seconds() && left > 0.0,
            "{left} of {}",
            whole.reference_seconds()
        );
    }

    #[test]
    fn preempted_jobs_ask_to_be_requeued() {
        let mut view = View::new(10);
        let mut job = queued();
        job.state = JobState::Preempted;
        assert_eq!(
            view.job_changed(&job, 3, &CostModel::default()),
            FollowUp::Preempted
        );
        assert!(view.queued_jobs().is_empty());
    }
}
