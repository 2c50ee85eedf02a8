//! Messages between our processes: submissions, assignments, cancellations, progress,
//! heartbeats.

use serde::{Deserialize, Serialize};

use crate::codec::WireMessage;
use crate::ids::{JobId, NodeId, TenantId};
use crate::record::{JobRecord, JobState, ResumePoint};
use crate::shape::JobShape;
use crate::spec::JobSpec;

/// A submission on `mochi.submit.<tenant>` (JSON: internal services publish these too).
/// The tenant is the subject's last token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The job id; when absent the intake derives one from the message id or sequence.
    #[serde(default)]
    pub job_id: Option<JobId>,
    /// What to make.
    pub spec: JobSpec,
    /// The client's idempotency key, if any.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The job this one remixes, if any (recorded as given: a label, not a reference the
    /// intake checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remixed_from: Option<JobId>,
    /// Where the job's events are posted (checked by the gateway; a NATS publisher's is
    /// checked again, against server-side request forgery, at each delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::record::Webhook>,
}

impl JobRecord {
    /// The `queued` record of a submission taken in as job `id` of `tenant`: its spec,
    /// idempotency key, remix source and webhook, and the seed it asked for or else
    /// [`JobRecord::seed_for`] its id (so that a redelivered submission gets the same one).
    /// Every writer that creates a record from a submission (the intake, the gateway's
    /// cancel of a job not taken in yet) builds it here.
    pub fn from_submission(
        id: JobId,
        tenant: TenantId,
        request: SubmitRequest,
        shape: JobShape,
        max_attempts: u32,
        now_ms: u64,
    ) -> Self {
        let seed = request.spec.seed.unwrap_or_else(|| Self::seed_for(id));
        let mut record = Self::queued(id, tenant, request.spec, shape, seed, max_attempts, now_ms);
        record.idempotency_key = request.idempotency_key;
        record.remixed_from = request.remixed_from;
        record.webhook = request.webhook;
        record
    }

    /// The seed of job `id` when its submission names none: derived from the id.
    pub fn seed_for(id: JobId) -> u64 {
        let bits = id.0.as_u128();
        (bits as u64) ^ ((bits >> 64) as u64)
    }
}

/// The coordinator places a job on a slot (request/reply on `mochi.node.<node>.assign`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assign {
    /// The job.
    pub job_id: JobId,
    /// The attempt this placement starts; every write about it carries this number.
    pub attempt: u32,
    /// The slot (device index) on the node.
    pub slot: u32,
    /// What to make.
    pub spec: JobSpec,
    /// Its shape.
    pub shape: JobShape,
    /// The seed to use.
    pub seed: u64,
    /// How long the lease lasts without progress, in ms.
    pub lease_ms: u64,
    /// Where to resume, for a preempted job.
    pub resume: Option<ResumePoint>,
}

impl WireMessage for Assign {
    const KIND: u8 = 1;
    const NAME: &'static str = "assign";
}

/// The node's answer to an [`Assign`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AssignReply {
    /// The slot took the job; the node writes `running` itself.
    Accepted,
    /// The slot cannot take it (busy, unhealthy, unknown slot).
    Rejected {
        /// Why, for logs.
        reason: String,
    },
}

impl WireMessage for AssignReply {
    const KIND: u8 = 2;
    const NAME: &'static str = "assign_reply";
}

/// Stop a job at its next step boundary (on `mochi.node.<node>.cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// The job.
    pub job_id: JobId,
    /// The attempt to stop.
    pub attempt: u32,
}

impl WireMessage for Cancel {
    const KIND: u8 = 3;
    const NAME: &'static str = "cancel";
}

/// Pause a job at its next denoising-step boundary so that its slot can take another job
/// (request/reply on `mochi.node.<node>.preempt`). The slot saves the job's latent and step
/// to the object store, writes `preempted` (fenced by the attempt) and frees itself; the
/// coordinator puts the job back in the queue with its [`ResumePoint`]. A node that does
/// not answer cannot pause (an older build): its jobs are not paused again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preempt {
    /// The job.
    pub job_id: JobId,
    /// The attempt to pause.
    pub attempt: u32,
}

impl WireMessage for Preempt {
    const KIND: u8 = 7;
    const NAME: &'static str = "preempt";
}

/// The node's answer to a [`Preempt`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PreemptReply {
    /// The slot will pause the job at its next step boundary and write `preempted`.
    Pausing,
    /// The job will not be paused (not running that attempt, already decoding, shutting down).
    Refused {
        /// Why, for logs.
        reason: String,
    },
}

impl WireMessage for PreemptReply {
    const KIND: u8 = 8;
    const NAME: &'static str = "preempt_reply";
}

/// A node's change to the record of a job it runs (request/reply on
/// [`crate::names::node_record_subject`], answered by the leading coordinator with a
/// [`RecordWriteReply`]). Nodes have no write access to `mochi_jobs`: the coordinator
/// applies the event only if the node named by the subject (which its NATS user alone may
/// publish on) holds the job's lease ([`crate::record::JobRecord::apply_from_node`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordWrite {
    /// The job.
    pub job_id: JobId,
    /// What happened to it (a node event: started, progressed, encoding, succeeded, failed,
    /// preempted), fenced by its attempt.
    pub event: crate::record::JobEvent,
}

impl WireMessage for RecordWrite {
    const KIND: u8 = 11;
    const NAME: &'static str = "record_write";
}

/// The coordinator's answer to a [`RecordWrite`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordWriteReply {
    /// The record holds the event (written now, or by an earlier try of the same write).
    Applied,
    /// The record refuses it: the job was cancelled, ended, or belongs to another attempt
    /// or node. The node stops the job.
    Refused {
        /// Why, for logs.
        reason: String,
    },
    /// The record could not be read or written; the node may try again.
    Failed {
        /// Why, for logs.
        reason: String,
    },
}

impl WireMessage for RecordWriteReply {
    const KIND: u8 = 12;
    const NAME: &'static str = "record_write_reply";
}

/// Asks for a job's predicted cost (request/reply on [`crate::names::SUBJECT_ESTIMATE`],
/// answered by the leading coordinator from its cost model and the slots it knows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateRequest {
    /// The validated job's shape.
    pub shape: JobShape,
}

impl WireMessage for EstimateRequest {
    const KIND: u8 = 9;
    const NAME: &'static str = "estimate_request";
}

/// The prediction for one GPU class the fleet has.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEstimate {
    /// The class (`h100-80gb`, `cpu`, ...).
    pub gpu_class: String,
    /// Slots of this class seen since the coordinator started.
    pub slots: u32,
    /// Those of them that hold the job.
    pub fitting_slots: u32,
    /// Predicted GPU seconds from start to stored video (learned corrections applied).
    pub gpu_seconds: f64,
    /// Predicted seconds of one denoising step.
    pub step_seconds: f64,
    /// Peak device memory on this class, bytes (the CPU class runs the tiny model).
    pub peak_memory_bytes: u64,
}

/// The leading coordinator's prediction for an [`EstimateRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateReply {
    /// Peak device memory on a GPU running the full model, bytes (weights included).
    pub peak_memory_bytes: u64,
    /// The job's lane (`short`, `medium`, `long`), by predicted seconds on an H100.
    pub lane: String,
    /// Predicted GPU seconds on the reference class (an H100).
    pub reference_gpu_seconds: f64,
    /// Predicted seconds of one denoising step on the reference class.
    pub reference_step_seconds: f64,
    /// One entry per class of the known slots, fastest first.
    pub classes: Vec<ClassEstimate>,
    /// Why no known slot holds the job (`None` when one does, or none is known yet).
    pub refusal: Option<String>,
    /// Jobs waiting for a slot now.
    pub queued_jobs: u32,
}

impl WireMessage for EstimateReply {
    const KIND: u8 = 10;
    const NAME: &'static str = "estimate_reply";
}

/// What a job is doing, published on `mochi.events.<job>` (best effort; the record is the truth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// The job.
    pub job_id: JobId,
    /// The attempt.
    pub attempt: u32,
    /// The job's state.
    pub state: JobState,
    /// Denoising steps done.
    pub step: u32,
    /// Denoising steps in all.
    pub total_steps: u32,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

impl WireMessage for ProgressEvent {
    const KIND: u8 = 4;
    const NAME: &'static str = "progress_event";
}

/// A job a slot is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotJob {
    /// The job.
    pub job_id: JobId,
    /// The attempt.
    pub attempt: u32,
}

/// One slot (one device) as its node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotReport {
    /// Device index on the node.
    pub slot: u32,
    /// The device class (`h100-80gb`, `cpu`, ...), for the cost model.
    pub gpu_class: String,
    /// Device memory in all, bytes.
    pub memory_total_bytes: u64,
    /// Device memory free now, bytes.
    pub memory_free_bytes: u64,
    /// The job it runs, if any.
    pub job: Option<SlotJob>,
    /// Whether it can take work.
    pub healthy: bool,
    /// Why not, when unhealthy.
    pub unhealthy_reason: Option<String>,
}

/// A node's heartbeat, the value of its key in `mochi_nodes` (which expires when it goes quiet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// The node.
    pub node_id: NodeId,
    /// Which backend it runs (`mochi`, `simulated`).
    pub backend: String,
    /// The node's software version.
    pub version: String,
    /// When the node process started, ms since the epoch.
    pub started_at_ms: u64,
    /// When this heartbeat was sent, ms since the epoch.
    pub sent_at_ms: u64,
    /// Whether the node takes new work (false while draining for shutdown).
    pub accepting: bool,
    /// Its slots.
    pub slots: Vec<SlotReport>,
}

impl WireMessage for NodeHeartbeat {
    const KIND: u8 = 5;
    const NAME: &'static str = "node_heartbeat";
}

impl WireMessage for crate::record::JobRecord {
    const KIND: u8 = 6;
    const NAME: &'static str = "job_record";
    const SINCE: u16 = 2;

    /// Records stored by version 1 read as neither remixed nor deleted.
    fn upgrade(version: u16, body: &[u8]) -> Result<Self, crate::codec::CodecError> {
        match version {
            1 => crate::codec::decode_body::<crate::record::v1::JobRecordV1>(body, Self::NAME)
                .map(Into::into),
            _ => Err(crate::codec::CodecError::RetiredVersion {
                found: version,
                supported: Self::SINCE,
            }),
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
