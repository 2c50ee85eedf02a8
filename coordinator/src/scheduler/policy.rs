//! Placement policy: a pure function from the cluster's free slots and the queued jobs to
//! placements, so that it can be tested exhaustively and swapped (the length-aware policy
//! comes later) or driven by a simulator.

use protocol::{JobId, NodeId};

/// A slot that can take a job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSlot {
    /// Its node.
    pub node: NodeId,
    /// Device index on the node.
    pub slot: u32,
    /// Device memory free, bytes.
    pub memory_free_bytes: u64,
}

/// What the policy sees of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Slots that are live, healthy, idle and not being assigned to.
    pub free_slots: Vec<FreeSlot>,
    /// Now, ms since the epoch (for retry backoff).
    pub now_ms: u64,
}

/// A job waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job.
    pub job_id: JobId,
    /// When it was created (FIFO order), ms since the epoch.
    pub created_at_ms: u64,
    /// Earliest time it may be placed (retry backoff), ms since the epoch.
    pub not_before_ms: u64,
}

/// One decision: run `job_id` on `node`/`slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The job.
    pub job_id: JobId,
    /// Its node.
    pub node: NodeId,
    /// Device index on the node.
    pub slot: u32,
}

/// FIFO onto any free slot: the oldest eligible jobs take the free slots, in a stable order
/// (slots by node then index), as the seeds' one-queue design did. Jobs in retry backoff
/// wait without blocking younger jobs.
pub fn place(view: &ClusterView, queued: &[QueuedJob]) -> Vec<Placement> {
    let mut jobs: Vec<&QueuedJob> = queued
        .iter()
        .filter(|job| job.not_before_ms <= view.now_ms)
        .collect();
    jobs.sort_by_key(|job| (job.created_at_ms, job.job_id));
    let mut seen = std::collections::HashSet::new();
    jobs.retain(|job| seen.insert(job.job_id));
    let mut slots: Vec<&FreeSlot> = view.free_slots.iter().collect();
    slots.sort_by(|a, b| (&a.node, a.slot).cmp(&(&b.node, b.slot)));
    slots.dedup_by(|a, b| a.node == b.node && a.slot == b.slot);
    jobs.into_iter()
        .zip(slots)
        .map(|(job, slot)| Placement {
            job_id: job.job_id,
            node: slot.node.clone(),
            slot: slot.slot,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn job(n: u128, created_at_ms: u64, not_before_ms: u64) -> QueuedJob {
        QueuedJob {
            job_id: JobId(uuid::Uuid::from_u128(n)),
            created_at_ms,
            not_before_ms,
        }
    }

    fn slot(node: &str, index: u32) -> FreeSlot {
        FreeSlot {
            node: NodeId::new(node).expect("valid"),
            slot: index,
            memory_free_bytes: 1 << 30,
        }
    }

    #[test]
    fn oldest_jobs_go_first_and_backoff_is_respected() {
        let view = ClusterView {
            free_slots: vec![slot("b", 0), slot("a", 1)],
            now_ms: 100,
        };
        let queued = [job(1, 30, 0), job(2, 10, 500), job(3, 20, 0), job(4, 40, 0)];
        let placed = place(&view, &queued);
        let ids: Vec<u128> = placed.iter().map(|p| p.job_id.0.as_u128()).collect();
        assert_eq!(
            ids,
            vec![3, 1],
            "job 2 is in backoff, then FIFO by creation"
        );
        assert_eq!((placed[0].node.as_str(), placed[0].slot), ("a", 1));
    }

    fn arbitrary_input() -> impl Strategy<Value = (ClusterView, Vec<QueuedJob>)> {
        let slots = prop::collection::vec((0u8..4, 0u32..4), 0..10);
        let jobs = prop::collection::vec((0u128..30, 0u64..100, 0u64..100), 0..30);
        (slots, jobs, 0u64..100).prop_map(|(slots, jobs, now_ms)| {
            let free_slots = slots
                .into_iter()
                .map(|(n, i)| slot(&format!("n{n}"), i))
                .collect();
            let queued = jobs
                .into_iter()
                .map(|(id, created, not_before)| job(id, created, not_before))
                .collect();
            (ClusterView { free_slots, now_ms }, queued)
        })
    }

    proptest! {
        #[test]
        fn invariants_hold((view, queued) in arbitrary_input()) {
            let placed = place(&view, &queued);
            let slots: HashSet<_> = placed.iter().map(|p| (p.node.clone(), p.slot)).collect();
            prop_assert_eq!(slots.len(), placed.len(), "a slot got two jobs");
            let jobs: HashSet<_> = placed.iter().map(|p| p.job_id).collect();
            prop_assert_eq!(jobs.len(), placed.len(), "a job was placed twice");
            for placement in &placed {
                prop_assert!(view.free_slots.iter().any(|s| s.node == placement.node && s.slot == placement.slot));
                prop_assert!(queued.iter().any(|j| j.job_id == placement.job_id && j.not_before_ms <= view.now_ms));
            }
            prop_assert_eq!(&placed, &place(&view, &queued), "not deterministic");
            // FIFO: every eligible job left waiting is no older than every placed job.
            let newest_placed = placed.iter().filter_map(|p| queued.iter().filter(|j| j.job_id == p.job_id).map(|j| j.created_at_ms).min()).max();
            if let Some(newest) = newest_placed {
                for waiting in queued.iter().filter(|j| j.not_before_ms <= view.now_ms && !jobs.contains(&j.job_id)) {
                    prop_assert!(waiting.created_at_ms >= newest, "older job {:?} skipped", waiting.job_id);
                }
            }
        }
    }
}
