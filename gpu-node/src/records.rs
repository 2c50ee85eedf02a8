//! How a node changes the records of its jobs: not in `mochi_jobs` itself (its NATS user
//! has no access to the bucket) but by request to the leading coordinator on
//! `mochi.node.<node>.record`, which its user alone may publish on. The coordinator applies
//! the event only if this node holds the job's lease (`JobRecord::apply_from_node`), so a
//! node's credential cannot write another node's jobs.
//!
//! A write that gets no answer (no coordinator leads: a restart or a failover) is sent again
//! with backoff for a while; the coordinator recognises a repeated write whose first answer
//! was lost and answers it as applied.

use std::time::Duration;

use protocol::messages::{RecordWrite, RecordWriteReply};
use protocol::record::JobEvent;
use protocol::{JobId, NodeId, codec, names};

use crate::retry::Backoff;

/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause before sending a write again; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why a record write did not land.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordWriteError {
    /// The record refuses the event: the job was cancelled, ended, or is another attempt's
    /// or node's. The node stops the job.
    #[error("the record refused it: {0}")]
    Refused(String),
    /// No coordinator answered in time, or the record could not be written.
    #[error("no coordinator wrote it: {0}")]
    Unavailable(String),
}

/// Sends this node's record writes to the coordinator.
#[derive(Debug, Clone)]
pub struct RecordWriter {
    client: async_nats::Client,
    node: NodeId,
    subject: String,
    /// How long a write that ends the attempt (succeeded, failed, preempted), or that the
    /// attempt's success needs (the start of encoding: only an encoding job can succeed),
    /// keeps being tried while no coordinator answers.
    final_budget: Duration,
    /// The same for the other writes (started, progress), whose loss costs at most a lease.
    progress_budget: Duration,
}

impl RecordWriter {
    /// A writer for node `node` over `client`, trying a final write for up to
    /// `final_budget` and any other for up to `progress_budget`.
    pub fn new(
        client: async_nats::Client,
        node: &NodeId,
        final_budget: Duration,
        progress_budget: Duration,
    ) -> Self {
        Self {
            client,
            node: node.clone(),
            subject: names::node_record_subject(node.as_str()),
            final_budget,
            progress_budget,
        }
    }

    /// The node it writes for.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// How long a write that ends an attempt is tried (also what an attempt's upload of
    /// its video gets).
    pub fn final_budget(&self) -> Duration {
        self.final_budget
    }

    /// Applies `event` to job `job_id`'s record through the coordinator.
    pub async fn apply(&self, job_id: JobId, event: &JobEvent) -> Result<(), RecordWriteError> {
        let payload = codec::encode(&RecordWrite {
            job_id,
            event: event.clone(),
        })
        .map_err(|error| RecordWriteError::Unavailable(error.to_string()))?;
        let budget = if needed_to_end(event) {
            self.final_budget
        } else {
            self.progress_budget
        };
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, budget);
        loop {
            let reason = match self.try_once(payload.clone()).await {
                Ok(RecordWriteReply::Applied) => return Ok(()),
                Ok(RecordWriteReply::Refused { reason }) => {
                    return Err(RecordWriteError::Refused(reason));
                }
                Ok(RecordWriteReply::Failed { reason }) | Err(reason) => reason,
            };
            tracing::debug!(%job_id, event = event.name(), reason, "record write not answered");
            if !backoff.pause().await {
                return Err(RecordWriteError::Unavailable(reason));
            }
        }
    }

    async fn try_once(&self, payload: Vec<u8>) -> Result<RecordWriteReply, String> {
        let request = self.client.request(self.subject.clone(), payload.into());
        let message = tokio::time::timeout(ANSWER_TIMEOUT, request)
            .await
            .map_err(|_| format!("no answer within {} ms", ANSWER_TIMEOUT.as_millis()))?
            .map_err(|error| error.to_string())?;
        codec::decode::<RecordWriteReply>(&message.payload).map_err(|error| error.to_string())
    }
}

/// Whether `event` ends an attempt or is needed for it to end well, so that its write gets
/// the long budget. A lost `encoding_started` would leave the attempt unable to succeed:
/// the node would encode and upload, and then a running record would refuse `succeeded`.
fn needed_to_end(event: &JobEvent) -> bool {
    matches!(
        event,
        JobEvent::Succeeded { .. }
            | JobEvent::Failed { .. }
            | JobEvent::Preempted { .. }
            | JobEvent::EncodingStarted { .. }
    )
}

#[cfg(test)]
mod tests {
    use protocol::record::Progress;

    use super::*;

    #[test]
    fn the_start_of_encoding_gets_the_long_budget_and_progress_does_not() {
        let encoding = JobEvent::EncodingStarted {
            attempt: 1,
            lease_deadline_ms: 0,
        };
        let step = JobEvent::Progressed {
            attempt: 1,
            progress: Progress {
                step: 1,
                total_steps: 2,
            },
            lease_deadline_ms: 0,
        };
        assert!(needed_to_end(&encoding));
        assert!(!needed_to_end(&step));
    }
}
