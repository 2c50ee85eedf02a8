//! What the scheduler's actors say to each other: the scheduler's start arguments, its
//! messages and the answers its children send back, and the counts it reports. A leaf module: it names protocol
//! types only, so the proxies, the keeper and the view can all use it without reaching
//! back into the actor.

use std::sync::Arc;

use protocol::jetstream::Resources;
use protocol::messages::{EstimateReply, NodeHeartbeat};
use protocol::{JobId, JobRecord, JobShape, NodeId};
use ractor::RpcReplyPort;

use crate::config::Config;

/// A slot: its node and device index.
pub type SlotKey = (NodeId, u32);

/// How a placement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementOutcome {
    /// The node took the job.
    Accepted,
    /// The node refused or did not answer; the job is back in the queue.
    Refused,
    /// The record was no longer queued (cancelled, placed elsewhere); nothing was written.
    Lost,
}

impl PlacementOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Lost => "lost",
        }
    }
}

/// How a pause request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseAnswer {
    /// The node will pause the job at its next step boundary.
    Pausing,
    /// The node will not pause it now (decoding already, another attempt, shutting down).
    Refused(String),
    /// No node answered: it cannot pause.
    Unsupported(String),
}

/// Messages of the scheduler.
pub enum SchedulerMsg {
    /// A job record changed (from the `mochi_jobs` watch).
    JobChanged {
        /// The record.
        record: Box<JobRecord>,
        /// Its KV revision.
        revision: u64,
    },
    /// A job record was deleted or purged.
    JobRemoved(JobId),
    /// A node heartbeat arrived (from the `mochi_nodes` watch).
    NodeSeen(Box<NodeHeartbeat>),
    /// A node deleted its heartbeat (clean shutdown).
    NodeLeft(NodeId),
    /// A proxy finished a placement.
    PlacementDone {
        /// The job.
        job_id: JobId,
        /// How it ended.
        outcome: PlacementOutcome,
        /// The revision of the proxy's last write, if it wrote.
        revision: Option<u64>,
    },
    /// The keeper settled a write the scheduler asked for (an expiry, a deadline, a
    /// refusal): the job may be asked about again.
    KeeperDone {
        /// The job.
        job_id: JobId,
        /// Whether the write landed (a refusal that did not is tried again).
        written: bool,
    },
    /// A node answered (or did not) a request to pause a job, through the slot's proxy.
    PauseAnswered {
        /// The job asked to pause.
        job_id: JobId,
        /// Its node.
        node: NodeId,
        /// The answer.
        answer: PauseAnswer,
    },
    /// Periodic work: node liveness, lease expiry, deadlines, placement.
    Tick,
    /// Place what can be placed (the scheduler sends this to itself once per burst of
    /// messages).
    Schedule,
    /// Counts for tests and `/debug`.
    Status(RpcReplyPort<SchedulerStatus>),
    /// A job's predicted cost, from the cost model and the slots seen.
    Estimate(Box<JobShape>, RpcReplyPort<EstimateReply>),
}

/// What the scheduler holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerStatus {
    /// Jobs waiting for a slot (including those being placed).
    pub queued: usize,
    /// Jobs on nodes (assigned, running, encoding).
    pub on_node: usize,
    /// Slots of live nodes.
    pub live_slots: usize,
    /// Live slots free now.
    pub free_slots: usize,
}

/// What the scheduler needs.
pub struct SchedulerArgs {
    /// Its configuration.
    pub config: Arc<Config>,
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client, for assignment and pause requests.
    pub client: async_nats::Client,
    /// Record writes seen failing (the keeper holds lease expiry off after one).
    pub store_failures: crate::store::StoreFailures,
}
