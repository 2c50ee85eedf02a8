//! One proxy actor per remote slot: everything the scheduler asks of a node about the slot
//! goes through it, one request at a time.
//!
//! - A placement: first the record moves `queued → assigned` with a lease
//!   (compare-and-set), then the `Assign` request goes to the node; a refused or unanswered
//!   placement is handed back to the queue (`AssignmentRejected`). Either way the proxy
//!   tells the scheduler how it ended.
//! - A pause: the `Preempt` request goes to the node, and its answer (or its silence) goes
//!   back to the scheduler.

use std::sync::Arc;
use std::time::Duration;

use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, Preempt, PreemptReply};
use protocol::record::Lease;
use protocol::{JobEvent, JobId, JobState, NodeId, codec, names, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::metrics;
use crate::scheduler::messages::{PauseAnswer, PlacementOutcome, SchedulerMsg};
use crate::store::{self, Written};

/// The proxy actor of one remote slot.
pub struct SlotProxy;

/// Messages of a slot proxy.
pub enum SlotProxyMsg {
    /// Place this queued job on the slot.
    Place(JobId),
    /// Ask the node to pause this attempt of the job running on the slot at its next step
    /// boundary.
    Pause {
        /// The running job.
        job_id: JobId,
        /// Its attempt (a node running another attempt refuses).
        attempt: u32,
    },
}

/// What a proxy needs.
pub struct SlotProxyArgs {
    /// The slot's node.
    pub node: NodeId,
    /// The slot's device index.
    pub slot: u32,
    /// The coordinator's configuration.
    pub config: Arc<Config>,
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client, for the assignment request.
    pub client: async_nats::Client,
    /// Told when each placement is over.
    pub scheduler: ActorRef<SchedulerMsg>,
}

impl Actor for SlotProxy {
    type Msg = SlotProxyMsg;
    type State = SlotProxyArgs;
    type Arguments = SlotProxyArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SlotProxyArgs,
    ) -> Result<SlotProxyArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: SlotProxyMsg,
        state: &mut SlotProxyArgs,
    ) -> Result<(), ActorProcessingErr> {
        let answer = match message {
            SlotProxyMsg::Place(job_id) => {
                let (outcome, revision) = place(state, job_id).await;
                ::metrics::counter!(metrics::PLACEMENTS, "outcome" => outcome.as_str())
                    .increment(1);
                SchedulerMsg::PlacementDone {
                    job_id,
                    outcome,
                    revision,
                }
            }
            SlotProxyMsg::Pause { job_id, attempt } => {
                let timeout = Duration::from_millis(state.config.assign_timeout_ms);
                SchedulerMsg::PauseAnswered {
                    job_id,
                    node: state.node.clone(),
                    answer: ask(&state.client, &state.node, job_id, attempt, timeout).await,
                }
            }
        };
        let _ = state.scheduler.cast(answer);
        Ok(())
    }
}

async fn place(state: &SlotProxyArgs, job_id: JobId) -> (PlacementOutcome, Option<u64>) {
    let now = now_ms();
    let lease = Lease {
        node: state.node.clone(),
        slot: state.slot,
        deadline_ms: now + state.config.lease_ms,
    };
    let still_queued = |record: &protocol::JobRecord| {
        record.state == JobState::Queued && record.not_before_ms <= now
    };
    // The placing coordinator's attempt budget holds (a gateway writes the default).
    let max_attempts = state.config.max_attempts.max(1);
    let assigned = match store::apply_adjusted_if(
        &state.resources.jobs,
        job_id,
        &JobEvent::Assigned { lease },
        now,
        still_queued,
        |record| record.max_attempts = max_attempts,
    )
    .await
    {
        Ok(Some(written)) => written,
        Ok(None) => {
            tracing::debug!(%job_id, "job no longer queued; placement dropped");
            return (PlacementOutcome::Lost, None);
        }
        Err(error) => {
            tracing::warn!(%job_id, %error, "cannot write the placement");
            return (PlacementOutcome::Lost, None);
        }
    };
    match request(state, &assigned).await {
        AssignReply::Accepted => {
            ::metrics::counter!(metrics::JOBS_ASSIGNED).increment(1);
            tracing::info!(
                %job_id,
                tenant = %assigned.record.tenant,
                attempt = assigned.record.attempt,
                node = %state.node,
                slot = state.slot,
                "job placed"
            );
            (PlacementOutcome::Accepted, Some(assigned.revision))
        }
        AssignReply::Rejected { reason } => {
            tracing::info!(%job_id, node = %state.node, slot = state.slot, %reason, "placement refused; job back in the queue");
            (
                PlacementOutcome::Refused,
                Some(hand_back(state, &assigned).await),
            )
        }
    }
}

/// Sends the `Assign` request and waits for the answer; no answer counts as a refusal.
async fn request(state: &SlotProxyArgs, assigned: &Written) -> AssignReply {
    let record = &assigned.record;
    let assign = Assign {
        job_id: record.id,
        attempt: record.attempt,
        slot: state.slot,
        spec: record.spec.clone(),
        shape: record.shape,
        seed: record.seed,
        lease_ms: state.config.lease_ms,
        resume: record.resume.clone(),
    };
    let bytes = match codec::encode(&assign) {
        Ok(bytes) => bytes,
        Err(error) => {
            return AssignReply::Rejected {
                reason: format!("cannot encode the assignment: {error}"),
            };
        }
    };
    let subject = names::node_assign_subject(state.node.as_str());
    let timeout = Duration::from_millis(state.config.assign_timeout_ms);
    match tokio::time::timeout(timeout, state.client.request(subject, bytes.into())).await {
        Ok(Ok(reply)) => codec::decode::<AssignReply>(&reply.payload).unwrap_or_else(|error| {
            AssignReply::Rejected {
                reason: format!("unreadable reply: {error}"),
            }
        }),
        Ok(Err(error)) => AssignReply::Rejected {
            reason: format!("request failed: {error}"),
        },
        Err(_) => AssignReply::Rejected {
            reason: "no answer in time".to_owned(),
        },
    }
}

/// Moves a refused placement back to `queued`; returns the revision of the last write.
async fn hand_back(state: &SlotProxyArgs, assigned: &Written) -> u64 {
    let job_id = assigned.record.id;
    let attempt = assigned.record.attempt;
    let event = JobEvent::AssignmentRejected { attempt };
    let still_assigned = |record: &protocol::JobRecord| {
        record.state == JobState::Assigned && record.attempt == attempt
    };
    match store::apply_if(
        &state.resources.jobs,
        job_id,
        &event,
        now_ms(),
        still_assigned,
    )
    .await
    {
        Ok(Some(written)) => written.revision,
        // The node started it after all (a late answer): its writes and the lease decide.
        Ok(None) => assigned.revision,
        Err(error) => {
            tracing::warn!(%job_id, %error, "cannot hand the refused placement back; its lease will");
            assigned.revision
        }
    }
}

/// Sends a `Preempt` request; silence on the subject means the node cannot pause.
async fn ask(
    client: &async_nats::Client,
    node: &NodeId,
    job_id: JobId,
    attempt: u32,
    timeout: Duration,
) -> PauseAnswer {
    let bytes = match codec::encode(&Preempt { job_id, attempt }) {
        Ok(bytes) => bytes,
        Err(error) => return PauseAnswer::Refused(format!("cannot encode: {error}")),
    };
    let subject = names::node_preempt_subject(node.as_str());
    match tokio::time::timeout(timeout, client.request(subject, bytes.into())).await {
        Ok(Ok(reply)) => match codec::decode::<PreemptReply>(&reply.payload) {
            Ok(PreemptReply::Pausing) => PauseAnswer::Pausing,
            Ok(PreemptReply::Refused { reason }) => PauseAnswer::Refused(reason),
            Err(error) => PauseAnswer::Unsupported(format!("unreadable reply: {error}")),
        },
        Ok(Err(error)) if error.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            PauseAnswer::Unsupported("no responder on the preempt subject".to_owned())
        }
        Ok(Err(error)) => PauseAnswer::Refused(format!("request failed: {error}")),
        Err(_) => PauseAnswer::Refused("no answer in time".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures::StreamExt;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Answers every pause request on `n1`'s subject with `reply`.
    async fn responder(client: &async_nats::Client, reply: PreemptReply) {
        let mut requests = client
            .subscribe(names::node_preempt_subject("n1"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let request: Preempt = codec::decode(&message.payload).unwrap();
                assert_eq!(request.attempt, 3);
                if let Some(to) = message.reply {
                    let bytes = codec::encode(&reply).unwrap();
                    client.publish(to, bytes.into()).await.unwrap();
                }
            }
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_is_asked_and_its_silence_means_it_cannot_pause() {
        // Bounded as a whole: a lost message fails the test instead of hanging CI.
        tokio::time::timeout(Duration::from_secs(30), ask_a_node())
            .await
            .unwrap();
    }

    async fn ask_a_node() {
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let node = NodeId::new("n1").unwrap();
        let job = JobId::new();
        assert!(matches!(
            ask(&client, &node, job, 3, TIMEOUT).await,
            PauseAnswer::Unsupported(_)
        ));
        responder(&client, PreemptReply::Pausing).await;
        assert_eq!(
            ask(&client, &node, job, 3, TIMEOUT).await,
            PauseAnswer::Pausing
        );
    }
}
