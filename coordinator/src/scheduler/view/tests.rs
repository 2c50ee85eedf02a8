use protocol::messages::SlotReport;
use protocol::record::{Lease, Progress};
use protocol::{JobShape, JobSpec, TenantId};

use super::*;
use crate::cost::CostModel;

const NOW: u64 = 1_000_000;

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid")
}

fn heartbeat(name: &str, slots: u32, sent_at_ms: u64) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: node(name),
        backend: "simulated".to_owned(),
        version: "test".to_owned(),
        started_at_ms: 0,
        sent_at_ms,
        accepting: true,
        slots: (0..slots)
            .map(|slot| SlotReport {
                slot,
                gpu_class: "cpu".to_owned(),
                memory_total_bytes: 1 << 30,
                memory_free_bytes: 1 << 30,
                job: None,
                healthy: true,
                unhealthy_reason: None,
            })
            .collect(),
    }
}

fn queued() -> JobRecord {
    let shape = JobShape::new(7, 30, 64, 64, 3, true);
    JobRecord::queued(
        JobId::new(),
        TenantId::default_tenant(),
        JobSpec::new("x"),
        shape,
        1,
        3,
        NOW,
    )
}

fn assigned(record: &JobRecord, name: &str, slot: u32) -> JobRecord {
    let lease = Lease {
        node: node(name),
        slot,
        deadline_ms: NOW + 1_000,
    };
    record
        .apply(&protocol::JobEvent::Assigned { lease }, NOW)
        .expect("legal")
}

fn free(view: &View) -> Vec<SlotKey> {
    let mut slots: Vec<SlotKey> = view.free_slots(NOW, |_| true).into_iter().collect();
    slots.sort();
    slots
}

#[test]
fn a_placement_reserves_its_slot_until_the_watch_shows_its_write() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    view.node_seen(heartbeat("a", 1, NOW), NOW);
    let job = queued();
    view.job_changed(&job, 1, &CostModel::default());
    view.placing_started(job.id, (node("a"), 0));
    assert!(free(&view).is_empty() && view.queued_jobs().is_empty());
    view.placement_done(job.id, PlacementOutcome::Accepted, Some(2), NOW);
    assert!(
        free(&view).is_empty(),
        "the watch has not shown revision 2 yet"
    );
    view.job_changed(&assigned(&job, "a", 0), 2, &CostModel::default());
    assert!(free(&view).is_empty(), "now the record holds the slot");
    assert_eq!(view.on_node_jobs().len(), 1);
}

#[test]
fn a_job_finished_before_its_placement_reports_frees_the_slot() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    view.node_seen(heartbeat("a", 1, NOW), NOW);
    let job = queued();
    view.job_changed(&job, 1, &CostModel::default());
    view.placing_started(job.id, (node("a"), 0));
    let mut done = assigned(&job, "a", 0);
    done.state = JobState::Succeeded;
    assert!(matches!(
        view.job_changed(&done, 6, &CostModel::default()),
        FollowUp::Finished(_)
    ));
    view.placement_done(job.id, PlacementOutcome::Accepted, Some(2), NOW);
    assert_eq!(free(&view), vec![(node("a"), 0)]);
}

#[test]
fn older_revisions_are_ignored() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    let job = queued();
    view.job_changed(&assigned(&job, "a", 0), 5, &CostModel::default());
    view.job_changed(&job, 4, &CostModel::default());
    assert_eq!(view.on_node_jobs().len(), 1);
    assert!(view.queued_jobs().is_empty());
}

#[test]
fn a_refusing_slot_waits_for_a_newer_heartbeat() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    view.node_seen(heartbeat("a", 2, NOW - 10), NOW);
    let job = queued();
    view.job_changed(&job, 1, &CostModel::default());
    view.placing_started(job.id, (node("a"), 1));
    view.placement_done(job.id, PlacementOutcome::Refused, Some(3), NOW);
    assert!(
        view.queued_jobs().is_empty(),
        "not before the watch shows the hand-back"
    );
    let handed_back = assigned(&job, "a", 1)
        .apply(&protocol::JobEvent::AssignmentRejected { attempt: 1 }, NOW)
        .expect("legal");
    view.job_changed(&handed_back, 3, &CostModel::default());
    assert_eq!(free(&view), vec![(node("a"), 0)]);
    assert_eq!(view.queued_jobs().len(), 1, "the job is placeable again");
    view.node_seen(heartbeat("a", 2, NOW + 1), NOW);
    assert_eq!(free(&view), vec![(node("a"), 0), (node("a"), 1)]);
}

#[test]
fn nodes_past_their_ttl_are_gone_and_offer_no_slots() {
    let mut view = View::new(3, 1.0, LaneBounds::default());
    assert!(
        !view.node_seen(heartbeat("old", 1, NOW - 3_001), NOW),
        "history from a dead node"
    );
    assert!(view.node_seen(heartbeat("b", 1, NOW - 2_000), NOW));
    assert_eq!(view.gone_nodes(NOW), Vec::<NodeId>::new());
    assert_eq!(view.gone_nodes(NOW + 1_001), vec![node("b")]);
    assert!(view.free_slots(NOW + 1_001, |_| true).is_empty());
    let mut busy = heartbeat("c", 1, NOW);
    busy.slots[0].job = Some(protocol::messages::SlotJob {
        job_id: JobId::new(),
        attempt: 1,
    });
    view.node_seen(busy, NOW);
    let mut closed = heartbeat("d", 1, NOW);
    closed.accepting = false;
    view.node_seen(closed, NOW);
    assert_eq!(free(&view), vec![(node("b"), 0)]);
    assert_eq!(view.status(NOW, |_| true).live_slots, 3);
}

fn running_record(name: &str, step: u32) -> JobRecord {
    let job = assigned(&queued(), name, 0);
    let started = job
        .apply(
            &protocol::JobEvent::Started {
                attempt: 1,
                lease_deadline_ms: NOW + 1_000,
            },
            NOW,
        )
        .expect("legal");
    started
        .apply(
            &protocol::JobEvent::Progressed {
                attempt: 1,
                progress: Progress {
                    step,
                    total_steps: 3,
                },
                lease_deadline_ms: NOW + 1_000,
            },
            NOW,
        )
        .expect("legal")
}

fn running_on_a(view: &View, now: u64) -> Running {
    let slots = view.slots(now, |_| true, LaneBounds::default());
    slots[0].1.running.expect("a job runs on the slot")
}

#[test]
fn a_denoising_job_is_pausable_until_asked_and_its_node_is_not_asked_again_once_it_cannot() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    view.node_seen(heartbeat("a", 1, NOW), NOW);
    let job = running_record("a", 1);
    view.job_changed(&job, 4, &CostModel::default());
    let running = running_on_a(&view, NOW);
    assert!(
        !running.unpausable,
        "running, denoising, on a node that can pause"
    );
    assert_eq!((running.pauses, running.pausing_for), (0, None));
    assert_eq!(view.running_on(&(node("a"), 0)), Some((job.id, 1)));

    let waiting = JobId::new();
    view.pause_requested(job.id, 1, waiting);
    assert_eq!(running_on_a(&view, NOW).pausing_for, Some(waiting));
    view.pause_refused(job.id, &node("a"), false);
    assert_eq!(running_on_a(&view, NOW).pausing_for, None);
    assert!(
        !running_on_a(&view, NOW).unpausable,
        "a refusal is for this once"
    );

    view.pause_requested(job.id, 1, waiting);
    view.pause_refused(job.id, &node("a"), true);
    assert!(
        running_on_a(&view, NOW).unpausable,
        "the node did not answer"
    );
    let mut restarted = heartbeat("a", 1, NOW + 1);
    restarted.started_at_ms = 7;
    view.node_seen(restarted, NOW + 1);
    assert!(
        !running_on_a(&view, NOW + 1).unpausable,
        "a restarted node is asked again"
    );

    // Denoising done: nothing left to pause.
    let decoding = job
        .apply(
            &protocol::JobEvent::Progressed {
                attempt: 1,
                progress: Progress {
                    step: 3,
                    total_steps: 3,
                },
                lease_deadline_ms: NOW + 1_000,
            },
            NOW,
        )
        .expect("legal");
    view.job_changed(&decoding, 5, &CostModel::default());
    assert!(running_on_a(&view, NOW + 1).unpausable);
}

#[test]
fn the_slot_a_pause_frees_is_held_for_the_job_it_was_freed_for() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    view.node_seen(heartbeat("a", 1, NOW), NOW);
    let long = running_record("a", 1);
    view.job_changed(&long, 4, &CostModel::default());
    let short = queued();
    view.job_changed(&short, 5, &CostModel::default());
    view.pause_requested(long.id, 1, short.id);
    assert!(view.freed_slot_placements(NOW, |_| true).is_empty());
    let paused = long
        .apply(
            &protocol::JobEvent::Preempted {
                attempt: 1,
                resume: protocol::record::ResumePoint {
                    step: 1,
                    latent_object: "x".to_owned(),
                },
            },
            NOW,
        )
        .expect("legal");
    view.job_changed(&paused, 6, &CostModel::default());
    let requeued = paused
        .apply(&protocol::JobEvent::Requeued, NOW)
        .expect("legal");
    view.job_changed(&requeued, 7, &CostModel::default());
    assert_eq!(
        view.queued_jobs().len(),
        2,
        "both wait: the policy would rank them"
    );
    assert_eq!(
        view.freed_slot_placements(NOW, |_| true),
        vec![((node("a"), 0), short.id)]
    );
    assert!(
        view.freed_slot_placements(NOW, |_| true).is_empty(),
        "held once"
    );
}

#[test]
fn a_paused_job_waits_with_its_pauses_and_the_cost_of_what_is_left() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    let job = running_record("a", 1);
    let whole = CostModel::default().cost(&job.shape);
    let paused = job
        .apply(
            &protocol::JobEvent::Preempted {
                attempt: 1,
                resume: protocol::record::ResumePoint {
                    step: 2,
                    latent_object: "x".to_owned(),
                },
            },
            NOW,
        )
        .and_then(|r| r.apply(&protocol::JobEvent::Requeued, NOW))
        .expect("legal");
    view.job_changed(&paused, 6, &CostModel::default());
    let waiting = view.queued_jobs();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].pauses, 1);
    let left = waiting[0].cost.reference_seconds();
    assert!(
        left < whole.reference_seconds() && left > 0.0,
        "{left} of {}",
        whole.reference_seconds()
    );
}

#[test]
fn preempted_jobs_ask_to_be_requeued() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    let mut job = queued();
    job.state = JobState::Preempted;
    assert_eq!(
        view.job_changed(&job, 3, &CostModel::default()),
        FollowUp::Preempted
    );
    assert!(view.queued_jobs().is_empty());
}

#[test]
fn counts_and_deadline_candidates_follow_each_change() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    let model = CostModel::default();
    let total = |view: &View| view.queued_by_lane().map(|(_, jobs)| jobs).sum::<usize>();
    let ids = |timed: Vec<Timed>| timed.into_iter().map(|job| job.job_id).collect::<Vec<_>>();
    let mut old = queued();
    old.created_at_ms = NOW - 10_000;
    let young = queued();
    view.job_changed(&old, 1, &model);
    view.job_changed(&young, 2, &model);
    assert_eq!(
        view.queued_by_lane().collect::<Vec<_>>(),
        vec![(Lane::Short, 2), (Lane::Medium, 0), (Lane::Long, 0)],
        "a tiny job is short"
    );
    assert_eq!(view.status(NOW, |_| true).queued, 2);
    // A 5 s time to start: only the older job may have missed it; none without one.
    assert_eq!(ids(view.deadline_candidates(NOW, 5_000)), vec![old.id]);
    assert!(view.deadline_candidates(NOW, 0).is_empty());

    let on_a = assigned(&young, "a", 0);
    view.job_changed(&on_a, 3, &model);
    assert_eq!(total(&view), 1);
    let status = view.status(NOW, |_| true);
    assert_eq!((status.queued, status.on_node), (1, 1));
    assert_eq!(
        ids(view.deadline_candidates(NOW, 0)),
        vec![young.id],
        "on a node"
    );
    view.job_changed(&young, 2, &model);
    assert_eq!(total(&view), 1, "an older revision changes nothing");

    view.job_removed(young.id);
    view.job_removed(old.id);
    assert_eq!(total(&view), 0);
    assert_eq!(view.status(NOW, |_| true).on_node, 0);
    assert!(view.deadline_candidates(NOW, 5_000).is_empty());
}

#[test]
fn a_slot_counts_only_on_a_live_accepting_node_with_a_proxy() {
    let mut view = View::new(10, 1.0, LaneBounds::default());
    assert!(!view.any_slot(NOW, |_| true), "no node");
    view.node_seen(heartbeat("a", 1, NOW), NOW);
    assert!(view.any_slot(NOW, |_| true));
    assert!(!view.any_slot(NOW, |_| false), "no proxy yet");
    assert!(!view.any_slot(NOW + 11_000, |_| true), "past its TTL");
    let mut closed = heartbeat("a", 1, NOW + 1);
    closed.accepting = false;
    view.node_seen(closed, NOW + 1);
    assert!(!view.any_slot(NOW + 1, |_| true), "not accepting");
}
