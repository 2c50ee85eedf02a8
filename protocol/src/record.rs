//! `JobRecord`, the job's durable state in the `mochi_jobs` bucket, and the job state
//! machine as a pure transition function.
//!
//! `queued → assigned → running → encoding → succeeded`, with `failed`, `cancelled`,
//! `aborted` and `dead` as the other terminal states and `preempted` as a pause that
//! returns to `queued`. Writers apply an event to the record they read and store the
//! result by compare-and-set on the KV revision, so two writers never both win.
//!
//! One file, past 500 lines: the state machine is one transition function over one record;
//! splitting it would scatter the transitions a reviewer checks together.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{JobId, NodeId, TenantId};
use crate::shape::JobShape;
use crate::spec::JobSpec;

/// Most history entries a record keeps (the oldest are dropped first).
pub const MAX_HISTORY: usize = 64;

/// Attempts a job gets when the coordinator's `max_attempts` is not set: the default of that
/// setting, and what a record carries until a coordinator places it (placing sets the budget).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Where a job is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a slot.
    Queued,
    /// Placed on a slot; the node has confirmed, the run has not begun.
    Assigned,
    /// Denoising.
    Running,
    /// Decoding and writing the MP4.
    Encoding,
    /// Paused at a step boundary; goes back to `queued` to resume from that step.
    Preempted,
    /// Finished; the video is in the object store.
    Succeeded,
    /// Failed with an error that retrying cannot fix.
    Failed,
    /// Cancelled by the client.
    Cancelled,
    /// Missed its time-to-start without using a GPU.
    Aborted,
    /// Retries exhausted; copied to the dead-letter stream.
    Dead,
}

impl JobState {
    /// Whether no event can move the job any more (save an operator's re-drive of a dead job).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Aborted | Self::Dead
        )
    }

    /// Whether a node holds the job (assigned, running or encoding).
    pub fn is_on_node(self) -> bool {
        matches!(self, Self::Assigned | Self::Running | Self::Encoding)
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Encoding => "encoding",
            Self::Preempted => "preempted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Aborted => "aborted",
            Self::Dead => "dead",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The slot a job is placed on and how long the placement holds without news.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node running the job.
    pub node: NodeId,
    /// The slot (device index) on that node.
    pub slot: u32,
    /// Wall-clock deadline (ms since the Unix epoch); progress pushes it forward.
    pub deadline_ms: u64,
}

/// Denoising progress.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps finished.
    pub step: u32,
    /// Steps in all.
    pub total_steps: u32,
}

/// Where a preempted job resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The first step still to run.
    pub step: u32,
    /// Object-store name of the saved latent.
    pub latent_object: String,
}

/// The finished video.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoResult {
    /// Object-store name of the MP4 (`<job id>/<attempt>`).
    pub object_name: String,
    /// Size of the MP4 in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the MP4, lowercase hex.
    pub sha256: String,
    /// Length of the video in milliseconds.
    pub duration_ms: u64,
    /// Frames in the video.
    pub num_frames: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
}

impl VideoResult {
    /// Object name of the thumbnail stored beside the MP4: its middle frame, JPEG.
    pub fn thumbnail_object(&self) -> String {
        crate::names::thumbnail_object(&self.object_name)
    }

    /// Object name of the spritesheet stored beside the MP4: evenly spaced frames in a
    /// grid, JPEG.
    pub fn spritesheet_object(&self) -> String {
        crate::names::spritesheet_object(&self.object_name)
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// Stable code for clients.
    pub code: ErrorCode,
    /// What happened, in one sentence a client may see (no internal details).
    pub message: String,
    /// Whether another attempt may succeed (out of memory, lost node) or not (bad weights).
    pub retryable: bool,
}

/// Something that happens to a job. Events from a node carry the attempt they belong
/// to and are refused for any other attempt (fencing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The scheduler placed the job and the node confirmed. Starts a new attempt.
    Assigned {
        /// The placement and its lease.
        lease: Lease,
    },
    /// The node refused the placement before starting; the attempt does not count.
    AssignmentRejected {
        /// The attempt refused.
        attempt: u32,
    },
    /// The node began running the attempt.
    Started {
        /// The attempt.
        attempt: u32,
        /// New lease deadline.
        lease_deadline_ms: u64,
    },
    /// A denoising step finished; renews the lease.
    Progressed {
        /// The attempt.
        attempt: u32,
        /// Steps done and in all.
        progress: Progress,
        /// New lease deadline.
        lease_deadline_ms: u64,
    },
    /// Denoising finished; decoding and encoding began.
    EncodingStarted {
        /// The attempt.
        attempt: u32,
        /// New lease deadline.
        lease_deadline_ms: u64,
    },
    /// The video is stored.
    Succeeded {
        /// The attempt.
        attempt: u32,
        /// The stored video.
        result: VideoResult,
    },
    /// The attempt failed; retryable failures go back to the queue while attempts remain.
    Failed {
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        failure: JobFailure,
        /// Earliest time a retry may start (backoff).
        retry_at_ms: u64,
    },
    /// The lease ran out: the node is gone or hung. Counts as a retryable failure.
    LeaseExpired {
        /// The attempt whose lease expired.
        attempt: u32,
        /// Earliest time a retry may start (backoff).
        retry_at_ms: u64,
    },
    /// The job was paused at a step boundary with its latent saved.
    Preempted {
        /// The attempt.
        attempt: u32,
        /// Where to resume.
        resume: ResumePoint,
    },
    /// A preempted job goes back to the queue.
    Requeued,
    /// The intake refused the job (invalid spec from a publisher that bypassed the gateway).
    Rejected {
        /// Why.
        failure: JobFailure,
    },
    /// The client cancelled the job.
    CancelRequested,
    /// The job missed its time-to-start.
    StartDeadlineMissed,
    /// An operator re-drove a dead job: it is queued again with a fresh retry budget (the
    /// only way out of a terminal state; the history keeps the earlier life).
    Redriven,
}

impl JobEvent {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Assigned { .. } => "assigned",
            Self::AssignmentRejected { .. } => "assignment_rejected",
            Self::Started { .. } => "started",
            Self::Progressed { .. } => "progressed",
            Self::EncodingStarted { .. } => "encoding_started",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::LeaseExpired { .. } => "lease_expired",
            Self::Preempted { .. } => "preempted",
            Self::Requeued => "requeued",
            Self::Rejected { .. } => "rejected",
            Self::CancelRequested => "cancel_requested",
            Self::StartDeadlineMissed => "start_deadline_missed",
            Self::Redriven => "redriven",
        }
    }

    /// Whether a node writes this event (through [`JobRecord::apply_from_node`]): what
    /// happens on a slot, never a placement, a cancellation or a lease expiry.
    pub fn is_from_node(&self) -> bool {
        matches!(
            self,
            Self::Started { .. }
                | Self::Progressed { .. }
                | Self::EncodingStarted { .. }
                | Self::Succeeded { .. }
                | Self::Failed { .. }
                | Self::Preempted { .. }
        )
    }

    /// The attempt a node-originated event belongs to.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            Self::AssignmentRejected { attempt }
            | Self::Started { attempt, .. }
            | Self::Progressed { attempt, .. }
            | Self::EncodingStarted { attempt, .. }
            | Self::Succeeded { attempt, .. }
            | Self::Failed { attempt, .. }
            | Self::LeaseExpired { attempt, .. }
            | Self::Preempted { attempt, .. } => Some(*attempt),
            Self::Assigned { .. }
            | Self::Requeued
            | Self::Rejected { .. }
            | Self::CancelRequested
            | Self::StartDeadlineMissed
            | Self::Redriven => None,
        }
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The event does not apply to the job's state.
    #[error("event {event} is not allowed in state {state}")]
    Illegal {
        /// The job's state.
        state: JobState,
        /// The refused event.
        event: &'static str,
    },
    /// The event belongs to an attempt that is no longer current.
    #[error("event {event} is for attempt {event_attempt} but the job is on attempt {current}")]
    StaleAttempt {
        /// The refused event.
        event: &'static str,
        /// The attempt it names.
        event_attempt: u32,
        /// The job's current attempt.
        current: u32,
    },
}

/// Why a node's write to a job record was refused ([`JobRecord::apply_from_node`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeWriteRefusal {
    /// Nodes write only what happens on a slot; placements, cancellations and lease
    /// expiries are the coordinator's and the gateway's.
    #[error("event {0} is not one a node writes")]
    NotANodeEvent(&'static str),
    /// Another node holds the job, or none does.
    #[error("node {node} does not hold the job (its holder: {holder})")]
    NotTheHolder {
        /// The node that wrote.
        node: NodeId,
        /// The node holding the lease, or `none`.
        holder: String,
    },
    /// The record's state or attempt refuses the event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

/// One entry of a record's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// State before.
    pub from: JobState,
    /// State after.
    pub to: JobState,
    /// The event's name.
    pub event: String,
    /// The attempt at the time.
    pub attempt: u32,
}

/// A job's durable record: what was asked, where it is, what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// Its tenant.
    pub tenant: TenantId,
    /// What the client asked for.
    pub spec: JobSpec,
    /// The shape computed at validation.
    pub shape: JobShape,
    /// The seed used (the client's or one picked at intake).
    pub seed: u64,
    /// Current state.
    pub state: JobState,
    /// The current attempt, counted from 1 at the first placement; it fences node writes.
    pub attempt: u32,
    /// Attempts that ended in a retryable failure.
    pub failed_attempts: u32,
    /// Most failed attempts before the job is dead.
    pub max_attempts: u32,
    /// Earliest time the job may be placed again (retry backoff), ms since the epoch.
    pub not_before_ms: u64,
    /// The placement, while the job is on a node.
    pub lease: Option<Lease>,
    /// Denoising progress of the current attempt.
    pub progress: Option<Progress>,
    /// Where to resume after a preemption.
    pub resume: Option<ResumePoint>,
    /// The video, once succeeded.
    pub result: Option<VideoResult>,
    /// The last failure.
    pub error: Option<JobFailure>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
    /// When the current attempt started running.
    pub started_at_ms: Option<u64>,
    /// When the job reached its terminal state.
    pub finished_at_ms: Option<u64>,
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Transitions so far (at most [`MAX_HISTORY`], oldest dropped).
    pub history: Vec<HistoryEntry>,
    /// The job this one remixes (same parameters and seed, another prompt), if any.
    pub remixed_from: Option<JobId>,
    /// When the owner deleted the job: the record is then a tombstone (prompts, result and
    /// history erased) that reads as absent and keeps a late redelivery of the submission
    /// from creating the job again.
    pub deleted_at_ms: Option<u64>,
    /// When the retention sweep removed the job's files (video, previews, latents).
    pub files_removed_at_ms: Option<u64>,
    /// Where the job's events are posted, if anywhere.
    pub webhook: Option<Webhook>,
}

/// A job's webhook: where its events are posted, and which.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// The receiver: an `http` or `https` URL.
    pub url: String,
    /// The events posted (Replicate's names).
    pub events: Vec<WebhookEvent>,
}

/// An event a webhook may ask for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// An attempt started running.
    Start,
    /// Denoising progressed (at most two a second).
    Progress,
    /// The job ended, whichever way.
    Completed,
}

impl WebhookEvent {
    /// Every event, the default filter.
    pub const ALL: [Self; 3] = [Self::Start, Self::Progress, Self::Completed];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Progress => "progress",
            Self::Completed => "completed",
        }
    }
}

impl JobRecord {
    /// A new record in state `queued`.
    pub fn queued(
        id: JobId,
        tenant: TenantId,
        spec: JobSpec,
        shape: JobShape,
        seed: u64,
        max_attempts: u32,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            tenant,
            spec,
            shape,
            seed,
            state: JobState::Queued,
            attempt: 0,
            failed_attempts: 0,
            max_attempts: max_attempts.max(1),
            not_before_ms: 0,
            lease: None,
            progress: None,
            resume: None,
            result: None,
            error: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            idempotency_key: None,
            history: Vec::new(),
            remixed_from: None,
            deleted_at_ms: None,
            files_removed_at_ms: None,
            webhook: None,
        }
    }

    /// The tombstone that replaces this (terminal) record when its owner deletes it: ids,
    /// tenant, state and times stay; what the client wrote and what the job made go.
    pub fn tombstone(&self, now_ms: u64) -> Self {
        let mut spec = self.spec.clone();
        spec.prompt.clear();
        spec.negative_prompt.clear();
        Self {
            spec,
            lease: None,
            progress: None,
            resume: None,
            result: None,
            error: None,
            idempotency_key: None,
            history: Vec::new(),
            updated_at_ms: now_ms,
            deleted_at_ms: Some(now_ms),
            ..self.clone()
        }
    }

    /// Times the job was paused at a step boundary (`preempted` entries of its history).
    pub fn pauses(&self) -> u32 {
        let count = self
            .history
            .iter()
            .filter(|entry| entry.to == JobState::Preempted)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Applies `event` at time `now_ms`, returning the next record or why it is refused.
    /// The record itself is not changed: store the result by compare-and-set.
    pub fn apply(&self, event: &JobEvent, now_ms: u64) -> Result<Self, TransitionError> {
        if let Some(event_attempt) = event.attempt()
            && event_attempt != self.attempt
            && !self.state.is_terminal()
        {
            return Err(TransitionError::StaleAttempt {
                event: event.name(),
                event_attempt,
                current: self.attempt,
            });
        }
        let illegal = || TransitionError::Illegal {
            state: self.state,
            event: event.name(),
        };
        if self.deleted_at_ms.is_some() {
            return Err(illegal());
        }
        let mut next = self.clone();
        use JobState as S;
        match (self.state, event) {
            (S::Queued, JobEvent::Assigned { lease }) => {
                next.state = S::Assigned;
                next.attempt += 1;
                next.lease = Some(lease.clone());
                next.progress = None;
            }
            (S::Assigned, JobEvent::AssignmentRejected { .. }) => {
                next.state = S::Queued;
                next.lease = None;
            }
            (
                S::Assigned,
                JobEvent::Started {
                    lease_deadline_ms, ..
                },
            ) => {
                next.state = S::Running;
                next.started_at_ms = Some(now_ms);
                renew(&mut next, *lease_deadline_ms);
            }
            (
                S::Running,
                JobEvent::Progressed {
                    progress,
                    lease_deadline_ms,
                    ..
                },
            ) => {
                next.progress = Some(*progress);
                renew(&mut next, *lease_deadline_ms);
            }
            (
                S::Running,
                JobEvent::EncodingStarted {
                    lease_deadline_ms, ..
                },
            ) => {
                next.state = S::Encoding;
                renew(&mut next, *lease_deadline_ms);
            }
            (S::Encoding, JobEvent::Succeeded { result, .. }) => {
                next.state = S::Succeeded;
                next.result = Some(result.clone());
                next.error = None;
                next.resume = None;
            }
            (
                S::Assigned | S::Running | S::Encoding,
                JobEvent::Failed {
                    failure,
                    retry_at_ms,
                    ..
                },
            ) => {
                next.error = Some(failure.clone());
                if failure.retryable {
                    retry_or_die(&mut next, *retry_at_ms);
                } else {
                    next.state = S::Failed;
                }
            }
            (
                S::Assigned | S::Running | S::Encoding,
                JobEvent::LeaseExpired { retry_at_ms, .. },
            ) => {
                next.error = Some(JobFailure {
                    code: ErrorCode::Unavailable,
                    message: "the node running this job stopped responding".to_owned(),
                    retryable: true,
                });
                retry_or_die(&mut next, *retry_at_ms);
            }
            (S::Running, JobEvent::Preempted { resume, .. }) => {
                next.state = S::Preempted;
                next.resume = Some(resume.clone());
            }
            (S::Preempted, JobEvent::Requeued) => {
                next.state = S::Queued;
                next.lease = None;
            }
            (state, JobEvent::CancelRequested) if !state.is_terminal() => {
                next.state = S::Cancelled;
            }
            (S::Queued, JobEvent::Rejected { failure }) => {
                next.state = S::Failed;
                next.error = Some(failure.clone());
            }
            (S::Queued, JobEvent::StartDeadlineMissed) => {
                next.state = S::Aborted;
            }
            (S::Dead, JobEvent::Redriven) => {
                next.state = S::Queued;
                next.failed_attempts = 0;
                next.not_before_ms = 0;
                next.progress = None;
                next.finished_at_ms = None;
            }
            _ => return Err(illegal()),
        }
        if next.state.is_terminal() {
            next.lease = None;
            next.finished_at_ms = Some(now_ms);
        }
        next.updated_at_ms = now_ms;
        if next.state != self.state {
            if next.history.len() >= MAX_HISTORY {
                next.history.remove(0);
            }
            next.history.push(HistoryEntry {
                at_ms: now_ms,
                from: self.state,
                to: next.state,
                event: event.name().to_owned(),
                attempt: next.attempt,
            });
        }
        Ok(next)
    }
}

impl JobRecord {
    /// The record after `event`, written by node `node` through the coordinator: only a
    /// node event ([`JobEvent::is_from_node`]), only for the current attempt, and only from
    /// the node holding the lease. `Ok(None)` when the record already shows the event (a
    /// retried write whose answer was lost): nothing to write, and the node goes on.
    pub fn apply_from_node(
        &self,
        node: &NodeId,
        event: &JobEvent,
        now_ms: u64,
    ) -> Result<Option<Self>, NodeWriteRefusal> {
        if !event.is_from_node() {
            return Err(NodeWriteRefusal::NotANodeEvent(event.name()));
        }
        let holder = self.lease.as_ref().map(|lease| &lease.node);
        let holds = holder == Some(node);
        if self.already_shows(event) && (holds || self.state.is_terminal()) {
            return Ok(None);
        }
        let next = self.apply(event, now_ms)?;
        if !holds {
            return Err(NodeWriteRefusal::NotTheHolder {
                node: node.clone(),
                holder: holder.map_or_else(|| "none".to_owned(), ToString::to_string),
            });
        }
        Ok(Some(next))
    }

    /// Whether this record is what `event` (of its current attempt) leaves behind, so that
    /// applying it again would be a duplicate rather than news.
    fn already_shows(&self, event: &JobEvent) -> bool {
        if event.attempt() != Some(self.attempt) {
            return false;
        }
        match (self.state, event) {
            (JobState::Running, JobEvent::Started { .. })
            | (JobState::Encoding, JobEvent::EncodingStarted { .. }) => true,
            (JobState::Preempted, JobEvent::Preempted { resume, .. }) => {
                self.resume.as_ref() == Some(resume)
            }
            (JobState::Succeeded, JobEvent::Succeeded { result, .. }) => {
                self.result.as_ref() == Some(result)
            }
            _ => false,
        }
    }
}

fn renew(record: &mut JobRecord, deadline_ms: u64) {
    if let Some(lease) = record.lease.as_mut() {
        lease.deadline_ms = lease.deadline_ms.max(deadline_ms);
    }
}

fn retry_or_die(record: &mut JobRecord, retry_at_ms: u64) {
    record.failed_attempts += 1;
    record.lease = None;
    record.progress = None;
    if record.failed_attempts >= record.max_attempts {
        record.state = JobState::Dead;
    } else {
        record.state = JobState::Queued;
        record.not_before_ms = retry_at_ms;
    }
}

pub(crate) mod v1;

#[cfg(test)]
mod tests;
