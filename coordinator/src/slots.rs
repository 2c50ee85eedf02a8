//! One proxy actor per remote slot. It places one job at a time on its slot: first the
//! record moves `queued → assigned` with a lease (compare-and-set), then the `Assign`
//! request goes to the node; a refused or unanswered placement is handed back to the queue
//! (`AssignmentRejected`). Either way it tells the scheduler how it ended.

use std::sync::Arc;
use std::time::Duration;

use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply};
use protocol::record::Lease;
use protocol::{JobEvent, JobId, JobState, NodeId, codec, names, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::metrics;
use crate::scheduler::{PlacementOutcome, SchedulerMsg};
use crate::store::{self, Written};

/// The proxy actor of one remote slot.
pub struct SlotProxy;

/// Messages of a slot proxy.
pub enum SlotProxyMsg {
    /// Place this queued job on the slot.
    Place(JobId),
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
        let SlotProxyMsg::Place(job_id) = message;
        let (outcome, revision) = place(state, job_id).await;
        let label = match outcome {
            PlacementOutcome::Accepted => "accepted",
            PlacementOutcome::Refused => "refused",
            PlacementOutcome::Lost => "lost",
        };
        ::metrics::counter!(metrics::PLACEMENTS, "outcome" => label).increment(1);
        let _ = state.scheduler.cast(SchedulerMsg::PlacementDone {
            job_id,
            outcome,
            revision,
        });
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
    let assigned = match store::apply_if(
        &state.resources.jobs,
        job_id,
        &JobEvent::Assigned { lease },
        now,
        still_queued,
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
