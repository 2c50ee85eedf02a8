//! The answering side of the nodes' writes to their jobs' records (request/reply on
//! `mochi.node.<node>.record`; the leading coordinator serves it). Nodes have no access to
//! `mochi_jobs`: each event is applied by compare-and-set, and only if the node named by
//! the subject holds the job's lease ([`crate::record::JobRecord::apply_from_node`]). NATS
//! lets a node's user publish on its own subject alone, so the subject is the node's proven
//! identity and one node cannot write another's jobs. A write from another node than the
//! holder is an audit event (target `mochi::audit`).

use futures::StreamExt;

use crate::codec;
use crate::ids::NodeId;
use crate::jetstream::{CasError, JobStore, StoreError};
use crate::messages::{RecordWrite, RecordWriteReply, now_ms};
use crate::names;
use crate::record::NodeWriteRefusal;

/// Writes handled at once (each is a read and a compare-and-set).
const IN_FLIGHT: usize = 64;

/// Answers every write of `subscription` (of [`names::SUBJECT_NODE_RECORD_ALL`]), up to
/// [`IN_FLIGHT`] at once, until it ends; `observe` is shown each answer before it is sent.
pub async fn serve(
    client: async_nats::Client,
    jobs: JobStore,
    subscription: async_nats::Subscriber,
    observe: impl Fn(&RecordWriteReply) + Send + Sync,
) -> &'static str {
    let observe = &observe;
    subscription
        .for_each_concurrent(IN_FLIGHT, |message| {
            let (client, jobs) = (client.clone(), jobs.clone());
            async move {
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let reply = answer(&jobs, &message.subject, &message.payload).await;
                observe(&reply);
                let Ok(bytes) = codec::encode(&reply) else {
                    return;
                };
                if let Err(error) = client.publish(reply_to, bytes.into()).await {
                    tracing::warn!(%error, "record-write answer not sent");
                }
            }
        })
        .await;
    "the record-write responder"
}

/// A reply's outcome for metrics: `applied`, `refused` or `failed`.
pub fn outcome(reply: &RecordWriteReply) -> &'static str {
    match reply {
        RecordWriteReply::Applied => "applied",
        RecordWriteReply::Refused { .. } => "refused",
        RecordWriteReply::Failed { .. } => "failed",
    }
}

/// Applies one node's write and says how it went.
pub async fn answer(jobs: &JobStore, subject: &str, payload: &[u8]) -> RecordWriteReply {
    let Some(node) = names::node_of_record_subject(subject).and_then(|n| NodeId::new(n).ok())
    else {
        return RecordWriteReply::Refused {
            reason: format!("{subject} is not a node's record subject"),
        };
    };
    let write = match codec::decode::<RecordWrite>(payload) {
        Ok(write) => write,
        Err(error) => {
            tracing::warn!(%node, %error, "unreadable record write");
            return RecordWriteReply::Refused {
                reason: format!("unreadable record write: {error}"),
            };
        }
    };
    let RecordWrite { job_id, event } = write;
    let result = jobs
        .try_update(job_id, |record| {
            record.apply_from_node(&node, &event, now_ms())
        })
        .await;
    match result {
        Ok(_) => RecordWriteReply::Applied,
        Err(CasError::Refused(refusal)) => {
            if let NodeWriteRefusal::NotTheHolder { holder, .. } = &refusal
                && holder != "none"
            {
                tracing::warn!(target: "mochi::audit", event = "node_write_refused", %node, %job_id, %holder, write = event.name(), "a node wrote to a job another node holds");
            } else {
                tracing::info!(%node, %job_id, write = event.name(), %refusal, "record write refused");
            }
            RecordWriteReply::Refused {
                reason: refusal.to_string(),
            }
        }
        Err(CasError::Store(StoreError::NotFound(_))) => RecordWriteReply::Refused {
            reason: format!("job {job_id} has no record"),
        },
        Err(CasError::Store(error @ StoreError::Codec { .. })) => {
            tracing::error!(%node, %job_id, write = event.name(), %error, "a node's job has an unreadable record");
            RecordWriteReply::Refused {
                reason: error.to_string(),
            }
        }
        Err(CasError::Store(error)) => {
            tracing::warn!(%node, %job_id, write = event.name(), %error, "cannot write a node's record change");
            RecordWriteReply::Failed {
                reason: error.to_string(),
            }
        }
    }
}
