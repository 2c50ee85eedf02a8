//! Placements in flight: each job handed to a slot's proxy, reserved with its slot until the
//! watch has delivered the proxy's last write, and the slots that refused one.

use std::collections::HashMap;

use protocol::{JobId, NodeId};

use crate::scheduler::messages::{PlacementOutcome, SlotKey};

/// A placement handed to a proxy. The job and its slot stay reserved until the watch has
/// delivered the proxy's last write (`settle_revision`), so the view never steps back.
struct Placing {
    slot: SlotKey,
    settle_revision: Option<u64>,
}

/// The placements in flight and the slots that refused one.
#[derive(Default)]
pub(crate) struct Placements {
    placing: HashMap<JobId, Placing>,
    /// Slots that refused a placement at this time: not free until a newer heartbeat.
    refused_at: HashMap<SlotKey, u64>,
}

impl Placements {
    /// Reserves the job and the slot for a placement handed to the slot's proxy.
    pub(crate) fn started(&mut self, job_id: JobId, slot: SlotKey) {
        self.placing.insert(
            job_id,
            Placing {
                slot,
                settle_revision: None,
            },
        );
    }

    /// A proxy finished: the reservation ends once the watch has shown its last write
    /// (`known` is the revision the view holds of the job; none when it no longer tracks
    /// the job, which then has nothing left to wait for).
    pub(crate) fn done(
        &mut self,
        job_id: JobId,
        outcome: PlacementOutcome,
        revision: Option<u64>,
        known: Option<u64>,
        now: u64,
    ) {
        let Some(placing) = self.placing.get_mut(&job_id) else {
            return;
        };
        if outcome == PlacementOutcome::Refused {
            self.refused_at.insert(placing.slot.clone(), now);
        }
        match (revision, known) {
            (Some(settle), Some(known)) if settle > known => placing.settle_revision = Some(settle),
            _ => {
                self.placing.remove(&job_id);
            }
        }
    }

    /// The watch delivered `revision` of the job: a reservation waiting for it ends.
    pub(crate) fn seen(&mut self, job_id: JobId, revision: u64) {
        let settled = self
            .placing
            .get(&job_id)
            .and_then(|p| p.settle_revision)
            .is_some_and(|r| revision >= r);
        if settled {
            self.placing.remove(&job_id);
        }
    }

    /// Whether a placement of the job is in flight.
    pub(crate) fn contains(&self, job_id: &JobId) -> bool {
        self.placing.contains_key(job_id)
    }

    /// The slots reserved by placements in flight, with their job.
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (&SlotKey, JobId)> {
        self.placing
            .iter()
            .map(|(job_id, placing)| (&placing.slot, *job_id))
    }

    /// Whether the slot refused a placement at or after `since` (its node's last heartbeat).
    pub(crate) fn refused_since(&self, slot: &SlotKey, since: u64) -> bool {
        self.refused_at.get(slot).is_some_and(|at| *at >= since)
    }

    /// Drops the reservations of a slot whose proxy failed.
    pub(crate) fn slot_failed(&mut self, slot: &SlotKey) {
        self.placing.retain(|_, placing| &placing.slot != slot);
    }

    /// Drops everything of a node that is gone (its placements end with their proxy; the
    /// record's compare-and-set keeps them safe).
    pub(crate) fn forget_node(&mut self, node: &NodeId) {
        self.placing.retain(|_, placing| &placing.slot.0 != node);
        self.refused_at
            .retain(|(refused_node, _), _| refused_node != node);
    }
}
