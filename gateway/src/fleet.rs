//! The slots the gateway knows of, from the nodes' heartbeats in `mochi_nodes`, so that a job
//! no known slot can hold is refused at submit (422 `job_too_large`) instead of queued.
//!
//! The set only grows (like the coordinator's): a slot is remembered by node and index with
//! the memory its latest heartbeat reported, and kept when its node goes quiet, so that a node
//! restarting does not make the gateway refuse the jobs only it can hold. While no heartbeat
//! has ever been seen every job is accepted and the coordinator decides once nodes appear.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use protocol::JobShape;
use protocol::codec;
use protocol::memory::{self, Refusal, SlotMemory};
use protocol::messages::NodeHeartbeat;

/// Wait before watching again after the watch failed or ended.
const RETRY: Duration = Duration::from_secs(1);

/// The known slots, shared by the handlers and the watch task.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    slots: Arc<RwLock<HashMap<(String, u32), SlotMemory>>>,
}

impl Fleet {
    /// An empty fleet (every job accepted until a heartbeat is seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in one heartbeat's slots.
    pub fn node_seen(&self, heartbeat: &NodeHeartbeat) {
        let Ok(mut slots) = self.slots.write() else {
            return;
        };
        for report in &heartbeat.slots {
            slots.insert(
                (heartbeat.node_id.to_string(), report.slot),
                SlotMemory::new(&report.gpu_class, report.memory_total_bytes),
            );
        }
    }

    /// Slots known.
    pub fn len(&self) -> usize {
        self.slots.read().map_or(0, |slots| slots.len())
    }

    /// Whether no slot is known yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some known slot holds `shape` (always, while none is known); the refusal says
    /// what the job needs, what the largest slot has and what would fit.
    pub fn admit(&self, shape: &JobShape) -> Result<(), Refusal> {
        let Ok(slots) = self.slots.read() else {
            return Ok(());
        };
        memory::admit(shape, slots.values())
    }

    /// Keeps the fleet current from `nodes` (the `mochi_nodes` bucket) in a background task,
    /// which ends once every handle to this fleet is dropped.
    pub fn watch(&self, nodes: kv::Store) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::downgrade(&self.slots);
        tokio::spawn(watch(fleet, nodes))
    }
}

async fn watch(fleet: Weak<RwLock<HashMap<(String, u32), SlotMemory>>>, nodes: kv::Store) {
    loop {
        match nodes.watch_all_from_revision(1).await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Some(slots) = fleet.upgrade() else {
                        return;
                    };
                    let Ok(entry) = entry else {
                        break;
                    };
                    if entry.operation != Operation::Put {
                        continue;
                    }
                    // A heartbeat this build cannot read (another version) is skipped.
                    if let Ok(beat) = codec::decode::<NodeHeartbeat>(&entry.value) {
                        Fleet { slots }.node_seen(&beat);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot watch the node heartbeats; retrying"),
        }
        if fleet.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
