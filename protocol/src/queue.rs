//! Where a queued job stands: its position and predicted start and finish, published by
//! the coordinator's scheduler in the `mochi_queue` KV bucket (JSON, keyed by job id) and
//! refreshed as the queue moves. Kept apart from the job record so that refreshing it never
//! contends with the record's compare-and-set writers.

use serde::{Deserialize, Serialize};

/// A queued job's place in the queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// 1 for the job served next (in the scheduling policy's order).
    pub position: u32,
    /// Jobs queued in all when the entry was written (rewritten when it moves by more
    /// than a tenth; exact below ten jobs).
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
