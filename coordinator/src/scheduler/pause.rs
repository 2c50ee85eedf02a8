//! Step-boundary preemption on the live path: the policy's pause decisions become
//! [`Preempt`] requests to the nodes. The node pauses the job at its next denoising-step
//! boundary, saves its state and writes `preempted` (fenced by the attempt); the watch
//! shows that, and the lease keeper puts the job back in the queue with its resume point.
//! A node that does not answer a pause request cannot pause (an older build): the view
//! stops offering its jobs for pausing until that node restarts.

use std::time::Duration;

use protocol::messages::{Preempt, PreemptReply};
use protocol::{JobId, NodeId, codec, names};
use ractor::ActorRef;

use super::view::View;
use super::{SchedulerMsg, SlotKey};
use crate::metrics;

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

/// Asks the nodes for the pauses the policy decided: for each, the job running on the slot
/// (by our records) is asked to pause, for the waiting job `for_job`.
pub(crate) fn request(
    myself: &ActorRef<SchedulerMsg>,
    view: &mut View,
    client: &async_nats::Client,
    timeout: Duration,
    pauses: impl IntoIterator<Item = (SlotKey, JobId)>,
) {
    for (slot, for_job) in pauses {
        let Some((job_id, attempt)) = view.running_on(&slot) else {
            continue;
        };
        view.pause_requested(job_id, attempt, for_job);
        ::metrics::counter!(metrics::PAUSES_REQUESTED).increment(1);
        tracing::info!(%job_id, attempt, %for_job, node = %slot.0, slot = slot.1, "pausing a job at its next step boundary");
        let (client, myself, node) = (client.clone(), myself.clone(), slot.0);
        tokio::spawn(async move {
            let answer = ask(&client, &node, job_id, attempt, timeout).await;
            let _ = myself.cast(SchedulerMsg::PauseAnswered {
                job_id,
                node,
                answer,
            });
        });
    }
}

/// Takes in a node's answer to a pause request.
pub(crate) fn answered(view: &mut View, job_id: JobId, node: &NodeId, answer: &PauseAnswer) {
    match answer {
        PauseAnswer::Pausing => {}
        PauseAnswer::Refused(reason) => {
            tracing::info!(%job_id, %node, %reason, "pause refused");
            view.pause_refused(job_id, node, false);
        }
        PauseAnswer::Unsupported(reason) => {
            tracing::warn!(%job_id, %node, %reason, "the node cannot pause jobs; its jobs are not paused until it restarts");
            view.pause_refused(job_id, node, true);
        }
    }
}

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
