//! Where a queued job stands: its position and predicted start and finish, published by
//! the coordinator's scheduler in the `mochi_queue` KV bucket (JSON, keyed by job id) and
//! refreshed as the queue moves. Kept apart from the job record so that refreshing it never
//! contends with the record's compare-and-set writers.

use serde::{Deserialize, Serialize};

/// The key of the [`QueueSummary`] in `mochi_queue` (job ids are UUIDs: no job has it).
pub const SUMMARY_KEY: &str = "_summary";

/// A queued job's place in the queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// 1 for the job served next (in the scheduling policy's order).
    pub position: u32,
    /// Jobs queued in all when the entry was written (the entry is not rewritten for this
    /// alone: readers take the current count from the [`QueueSummary`]).
    pub queued: u32,
    /// The job's lane by predicted GPU time (`short`, `medium`, `long`).
    pub lane: String,
    /// Predicted start, ms since the epoch; absent while no live slot can hold the job.
    #[serde(default)]
    pub eta_start_ms: Option<u64>,
    /// Predicted finish, ms since the epoch.
    #[serde(default)]
    pub eta_finish_ms: Option<u64>,
    /// When this estimate was made, ms since the epoch.
    pub updated_at_ms: u64,
}

impl QueueInfo {
    /// Takes the queue's length from `summary` (newer than the entry's own); never fewer
    /// jobs than the position, since the summary may lag the entry by a refresh.
    pub fn count_from(&mut self, summary: &QueueSummary) {
        self.queued = summary.queued.max(self.position);
    }
}

/// The queue as a whole, published beside the positions each time its counts change, so
/// that a job's entry need not be rewritten whenever a job arrives or leaves behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Jobs queued in all.
    pub queued: u32,
    /// Jobs queued in the `short`, `medium` and `long` lanes.
    pub by_lane: [u32; 3],
    /// When these counts were made, ms since the epoch.
    pub updated_at_ms: u64,
}
