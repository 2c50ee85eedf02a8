//! Answers to `mochi.estimate`: a job's predicted cost from the scheduler's own cost model
//! (learned corrections applied), per class of the slots it has seen, with its lane and
//! whether any slot holds it, so that a client sees before submitting what admission and
//! the lanes will make of the job.

use std::collections::BTreeMap;

use futures::StreamExt;
use protocol::JobShape;
use protocol::codec;
use protocol::messages::{ClassEstimate, EstimateReply, EstimateRequest};
use ractor::ActorRef;

use super::messages::SchedulerMsg;
use crate::cost::{self, CostModel, GpuClass};
use crate::policy::LaneBounds;

/// How long the responder waits for the scheduler before leaving a request unanswered (the
/// gateway's own timeout then answers its client).
const ASK_TIMEOUT_MS: u64 = 2_000;

/// The prediction for `shape` given the cost model, the slots seen (class and memory),
/// the lane bounds and the jobs queued now.
pub fn estimate(
    shape: &JobShape,
    model: &CostModel,
    fleet: impl IntoIterator<Item = (GpuClass, u64)> + Clone,
    lanes: LaneBounds,
    queued_jobs: usize,
) -> EstimateReply {
    let mut by_class: BTreeMap<GpuClass, (u32, u32)> = BTreeMap::new();
    for (class, memory) in fleet.clone() {
        let entry = by_class.entry(class).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += u32::from(cost::prior(shape, class).peak_bytes <= memory);
    }
    let mut classes: Vec<ClassEstimate> = by_class
        .into_iter()
        .map(|(class, (slots, fitting_slots))| {
            let predicted = model.estimate(shape, class);
            ClassEstimate {
                gpu_class: class.name().to_owned(),
                slots,
                fitting_slots,
                gpu_seconds: predicted.gpu_seconds,
                step_seconds: predicted.step_seconds,
                peak_memory_bytes: predicted.peak_bytes,
            }
        })
        .collect();
    classes.sort_by(|a, b| a.gpu_seconds.total_cmp(&b.gpu_seconds));
    let cost = model.cost(shape);
    EstimateReply {
        peak_memory_bytes: cost::gpu_peak_bytes(shape),
        lane: lanes.lane(cost.reference_seconds()).as_str().to_owned(),
        reference_gpu_seconds: cost.reference_seconds(),
        reference_step_seconds: cost.step_seconds[GpuClass::H100.index()],
        classes,
        refusal: cost::admit(shape, fleet)
            .err()
            .map(|refusal| refusal.message()),
        queued_jobs: u32::try_from(queued_jobs).unwrap_or(u32::MAX),
    }
}

/// Answers estimate requests from `subscription` by asking `scheduler`, one at a time,
/// until the subscription or the scheduler ends; returns what ended.
pub async fn respond(
    client: async_nats::Client,
    mut subscription: async_nats::Subscriber,
    scheduler: ActorRef<SchedulerMsg>,
) -> &'static str {
    while let Some(message) = subscription.next().await {
        let Some(reply_to) = message.reply else {
            continue;
        };
        let request = match codec::decode::<EstimateRequest>(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%error, "unreadable estimate request; not answered");
                continue;
            }
        };
        let answer = ractor::call_t!(
            scheduler,
            |reply| SchedulerMsg::Estimate(Box::new(request.shape), reply),
            ASK_TIMEOUT_MS
        );
        let answer = match answer {
            Ok(answer) => answer,
            Err(ractor::RactorErr::Timeout) => {
                tracing::warn!("the scheduler did not answer an estimate in time");
                continue;
            }
            Err(_) => break,
        };
        match codec::encode(&answer) {
            Ok(bytes) => {
                if let Err(error) = client.publish(reply_to, bytes.into()).await {
                    tracing::warn!(%error, "estimate answer not sent");
                }
            }
            Err(error) => tracing::error!(%error, "estimate answer not encoded"),
        }
    }
    "the estimate responder"
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn classes_come_fastest_first_and_say_whether_they_hold_the_job() {
        let shape = JobShape::new(163, 30, 848, 480, 64, true);
        let fleet = vec![
            (GpuClass::L40, 45 * GIB),
            (GpuClass::H100, 79 * GIB),
            (GpuClass::H100, 79 * GIB),
        ];
        let reply = estimate(
            &shape,
            &CostModel::default(),
            fleet,
            LaneBounds::default(),
            3,
        );
        let names: Vec<&str> = reply.classes.iter().map(|c| c.gpu_class.as_str()).collect();
        assert_eq!(names, ["h100-80gb", "l40-48gb"]);
        assert_eq!(reply.classes[0].slots, 2);
        assert_eq!(reply.classes[0].fitting_slots, 2);
        assert!(reply.classes[0].gpu_seconds < reply.classes[1].gpu_seconds);
        assert_eq!(reply.lane, "medium");
        assert_eq!(reply.queued_jobs, 3);
        assert!(reply.refusal.is_none());
    }

    #[test]
    fn a_job_no_slot_holds_carries_the_admission_sentence() {
        let shape = JobShape::new(301, 30, 1280, 720, 64, true);
        let reply = estimate(
            &shape,
            &CostModel::default(),
            vec![(GpuClass::L40, 45 * GIB)],
            LaneBounds::default(),
            0,
        );
        assert_eq!(reply.classes[0].fitting_slots, 0);
        let refusal = reply.refusal.unwrap_or_default();
        assert!(refusal.contains("largest slot"), "{refusal}");
        assert_eq!(reply.lane, "long");
    }

    #[test]
    fn without_known_slots_the_reference_class_still_predicts() {
        let shape = JobShape::new(31, 30, 848, 480, 64, true);
        let reply = estimate(
            &shape,
            &CostModel::default(),
            Vec::new(),
            LaneBounds::default(),
            0,
        );
        assert!(reply.classes.is_empty());
        assert!(reply.reference_gpu_seconds > 0.0);
        assert!(reply.refusal.is_none());
        assert!(reply.peak_memory_bytes > 0);
    }
}
