//! Step-boundary preemption on the live path: the policy's pause decisions become pause
//! requests, each sent through the proxy of the slot the job runs on. The node pauses the
//! job at its next denoising-step boundary, saves its state and writes `preempted` (fenced
//! by the attempt); the watch shows that, and the keeper puts the job back in the queue with
//! its resume point. A node that does not answer a pause request cannot pause (an older
//! build): the view stops offering its jobs for pausing until that node restarts.

use protocol::{JobId, NodeId};

use super::messages::{PauseAnswer, SlotKey};
use super::proxies::Proxies;
use super::view::View;
use crate::metrics;
use crate::slots::SlotProxyMsg;

/// Asks for the pauses the policy decided: for each, the job running on the slot (by our
/// records) is asked, through the slot's proxy, to pause for the waiting job `for_job`.
pub(super) fn request(
    view: &mut View,
    proxies: &Proxies,
    pauses: impl IntoIterator<Item = (SlotKey, JobId)>,
) {
    for (slot, for_job) in pauses {
        let Some((job_id, attempt)) = view.running_on(&slot) else {
            continue;
        };
        if !proxies.send(&slot, SlotProxyMsg::Pause { job_id, attempt }) {
            continue;
        }
        view.pause_requested(job_id, attempt, for_job);
        ::metrics::counter!(metrics::PAUSES_REQUESTED).increment(1);
        tracing::info!(%job_id, attempt, %for_job, node = %slot.0, slot = slot.1, "pausing a job at its next step boundary");
    }
}

/// Takes in a node's answer to a pause request.
pub(super) fn answered(view: &mut View, job_id: JobId, node: &NodeId, answer: &PauseAnswer) {
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
