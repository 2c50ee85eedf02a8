//! The nodes the view knows: each node's latest heartbeat (its slots, their class, memory
//! and health), liveness by the heartbeat's age, and which node processes cannot pause.

use std::collections::HashMap;

use protocol::NodeId;
use protocol::messages::{NodeHeartbeat, SlotReport};

use crate::cost::GpuClass;
use crate::scheduler::messages::SlotKey;

/// The nodes' heartbeats and what the view learned about each node process.
pub(crate) struct Nodes {
    ttl_ms: u64,
    heartbeats: HashMap<NodeId, NodeHeartbeat>,
    /// Nodes that cannot pause a job (no answer to a pause request), with the start time of
    /// the node process that did not answer (a restarted node is asked again).
    cannot_pause: HashMap<NodeId, u64>,
}

impl Nodes {
    /// No node yet; a node is live while its last heartbeat is within `ttl_ms`.
    pub(crate) fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            heartbeats: HashMap::new(),
            cannot_pause: HashMap::new(),
        }
    }

    /// Keeps a heartbeat unless a newer one is known; returns whether the node is live
    /// (a stale heartbeat is not kept).
    pub(crate) fn seen(&mut self, heartbeat: NodeHeartbeat, now: u64) -> bool {
        if !self.is_live(&heartbeat, now) {
            return false;
        }
        if self
            .heartbeats
            .get(&heartbeat.node_id)
            .is_none_or(|known| known.sent_at_ms <= heartbeat.sent_at_ms)
        {
            self.heartbeats.insert(heartbeat.node_id.clone(), heartbeat);
        }
        true
    }

    /// Forgets a node; returns whether it was known.
    pub(crate) fn forget(&mut self, node: &NodeId) -> bool {
        self.heartbeats.remove(node).is_some()
    }

    /// Whether a heartbeat is within the TTL at `now`.
    pub(crate) fn is_live(&self, heartbeat: &NodeHeartbeat, now: u64) -> bool {
        heartbeat.sent_at_ms.saturating_add(self.ttl_ms) >= now
    }

    /// Nodes whose last heartbeat is older than the TTL.
    pub(crate) fn gone(&self, now: u64) -> Vec<NodeId> {
        self.heartbeats
            .values()
            .filter(|hb| !self.is_live(hb, now))
            .map(|hb| hb.node_id.clone())
            .collect()
    }

    /// The live nodes that accept work, with their latest heartbeat.
    pub(crate) fn accepting(&self, now: u64) -> impl Iterator<Item = &NodeHeartbeat> {
        self.heartbeats
            .values()
            .filter(move |hb| hb.accepting && self.is_live(hb, now))
    }

    /// Slots of live nodes (accepting or not).
    pub(crate) fn live_slots(&self, now: u64) -> usize {
        self.heartbeats
            .values()
            .filter(|hb| self.is_live(hb, now))
            .map(|hb| hb.slots.len())
            .sum()
    }

    /// The slots the node's latest heartbeat reports.
    pub(crate) fn slots_of(&self, node: &NodeId) -> Vec<u32> {
        self.heartbeats
            .get(node)
            .map(|hb| hb.slots.iter().map(|slot| slot.slot).collect())
            .unwrap_or_default()
    }

    /// Index, class and memory of each slot of a node, by its last report.
    pub(crate) fn slot_sizes(&self, node: &NodeId) -> Vec<(u32, GpuClass, u64)> {
        self.heartbeats
            .get(node)
            .map(|hb| {
                hb.slots
                    .iter()
                    .map(|r| (r.slot, class(r), r.memory_total_bytes))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The class of a slot by its node's last report.
    pub(crate) fn class_of(&self, key: &SlotKey) -> Option<GpuClass> {
        let heartbeat = self.heartbeats.get(&key.0)?;
        let report = heartbeat.slots.iter().find(|r| r.slot == key.1)?;
        Some(class(report))
    }

    /// The node did not answer a pause request: none of its jobs is offered for pausing
    /// until a new process of it sends a heartbeat.
    pub(crate) fn cannot_pause(&mut self, node: &NodeId) {
        if let Some(heartbeat) = self.heartbeats.get(node) {
            self.cannot_pause
                .insert(node.clone(), heartbeat.started_at_ms);
        }
    }

    /// Whether a node can pause its jobs (until one of its processes failed to answer).
    pub(crate) fn can_pause(&self, node: &NodeId) -> bool {
        match (self.cannot_pause.get(node), self.heartbeats.get(node)) {
            (Some(started), Some(heartbeat)) => heartbeat.started_at_ms != *started,
            _ => true,
        }
    }
}

/// A slot report's GPU class.
pub(crate) fn class(report: &SlotReport) -> GpuClass {
    GpuClass::parse_or_default(&report.gpu_class)
}
