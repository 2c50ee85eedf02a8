use proptest::prelude::*;
use protocol::spec::Priority;
use protocol::{JobId, JobShape};

use super::*;
use crate::cost::{CostModel, GpuClass};

const SHAPES: [(u32, u32, u32, u32); 8] = [
    (31, 848, 480, 64),
    (61, 848, 480, 32),
    (163, 848, 480, 64),
    (301, 848, 480, 64),
    (31, 1280, 720, 64),
    (151, 1280, 720, 64),
    (121, 1920, 1088, 64),
    (13, 848, 480, 16),
];

fn job(
    id: u128,
    shape: usize,
    tenant: u64,
    priority: u8,
    created: u64,
    not_before: u64,
) -> Waiting {
    let (frames, width, height, steps) = SHAPES[shape % SHAPES.len()];
    let shape = JobShape::new(frames, 30, width, height, steps, true);
    Waiting {
        job_id: JobId(uuid::Uuid::from_u128(id)),
        tenant,
        priority: match priority % 3 {
            0 => Priority::Low,
            1 => Priority::Normal,
            _ => Priority::High,
        },
        created_at_ms: created,
        not_before_ms: not_before,
        cost: CostModel::default().cost(&shape),
        pauses: 0,
    }
}

fn slot(class: usize, running: Option<(u8, f64, u64)>) -> Slot {
    let class = GpuClass::ALL[class % 4];
    Slot {
        class,
        memory_bytes: class.spec().memory_bytes,
        running: running.map(|(lane, remaining_s, tenant)| Running {
            job_id: JobId(uuid::Uuid::from_u128(u128::from(tenant) + 1_000_000)),
            lane: Lane::ALL[usize::from(lane % 3)],
            tenant,
            remaining_s,
            next_boundary_s: remaining_s.min(5.0),
            pauses: 0,
            unpausable: false,
            pausing_for: None,
        }),
    }
}

fn input() -> impl Strategy<Value = (Vec<Slot>, Vec<Waiting>, u64)> {
    let slots = prop::collection::vec(
        (
            0usize..4,
            prop::option::of((0u8..3, 1.0f64..5_000.0, 0u64..3)),
        ),
        0..12,
    );
    let jobs = prop::collection::vec(
        (0usize..8, 0u64..3, 0u8..3, 0u64..600_000, 0u64..300_000),
        0..40,
    );
    (slots, jobs, 0u64..600_000).prop_map(|(slots, jobs, now)| {
        let slots = slots.into_iter().map(|(c, r)| slot(c, r)).collect();
        let jobs = jobs
            .into_iter()
            .enumerate()
            .map(|(id, (shape, tenant, prio, created, nb))| {
                job(id as u128, shape, tenant, prio, created, nb)
            })
            .collect();
        (slots, jobs, now)
    })
}

fn check_common(policy: &dyn Policy, slots: &[Slot], queue: &[Waiting], now_ms: u64) -> Decision {
    let view = View { now_ms, slots };
    let decision = policy.decide(&view, queue);
    let mut used = std::collections::HashSet::new();
    let mut placed = std::collections::HashSet::new();
    for placement in &decision.placements {
        assert!(used.insert(placement.slot), "a slot got two jobs");
        assert!(placed.insert(placement.job_id), "a job was placed twice");
        let slot = &slots[placement.slot];
        assert!(slot.running.is_none(), "placed on a busy slot");
        let job = queue
            .iter()
            .find(|j| j.job_id == placement.job_id)
            .expect("queued");
        assert!(job.not_before_ms <= now_ms, "placed during its backoff");
        if policy.traits().fit_aware {
            assert!(fits(slot, job), "placed on a slot that cannot hold it");
        }
    }
    assert_eq!(decision, policy.decide(&view, queue), "not deterministic");
    decision
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_policy_keeps_the_basic_invariants((slots, queue, now) in input()) {
        for kind in PolicyKind::ALL {
            let policy = kind.build(LengthAwareConfig::default());
            check_common(policy.as_ref(), &slots, &queue, now);
        }
    }

    #[test]
    fn length_aware_leaves_no_slot_idle_unless_held_for_the_short_lane(
        (slots, queue, now) in input(),
        preemption in any::<bool>(),
    ) {
        let config = LengthAwareConfig { preemption, ..LengthAwareConfig::default() };
        let policy = LengthAware::new(config);
        let decision = check_common(&policy, &slots, &queue, now);
        let used: Vec<usize> = decision.placements.iter().map(|p| p.slot).collect();
        let placed: Vec<JobId> = decision.placements.iter().map(|p| p.job_id).collect();
        let lane = |job: &Waiting| config.lanes.lane(job.cost.reference_seconds());
        let reserved = (config.short_share * slots.len() as f64).floor() as usize;
        let non_short_after = slots.iter().filter(|s| s.running.is_some_and(|r| r.lane != Lane::Short)).count()
            + decision.placements.iter().filter(|p| {
                queue.iter().find(|j| j.job_id == p.job_id).is_some_and(|j| lane(j) != Lane::Short)
            }).count();
        let short_left = queue.iter().any(|j| j.not_before_ms <= now && lane(j) == Lane::Short && !placed.contains(&j.job_id));
        for (index, slot) in slots.iter().enumerate() {
            if slot.running.is_some() || used.contains(&index) {
                continue;
            }
            for job in queue.iter().filter(|j| j.not_before_ms <= now && !placed.contains(&j.job_id) && fits(slot, j)) {
                let held = lane(job) != Lane::Short
                    && non_short_after >= slots.len() - reserved
                    && (lane(job) == Lane::Long || short_left);
                prop_assert!(held, "slot {index} idle while {:?} ({:?}) fits it", job.job_id, lane(job));
            }
        }
        for preemption in &decision.preemptions {
            let running = slots[preemption.slot].running.expect("a running slot");
            prop_assert!(running.lane != Lane::Short);
            let job = queue.iter().find(|j| j.job_id == preemption.for_job).expect("queued");
            prop_assert_eq!(lane(job), Lane::Short);
            prop_assert!(fits(&slots[preemption.slot], job));
        }
        if !preemption {
            prop_assert!(decision.preemptions.is_empty());
        }
    }

    #[test]
    fn fifo_serves_in_submission_order((slots, queue, now) in input()) {
        let policy = fifo::Fifo::blind(false);
        let decision = check_common(&policy, &slots, &queue, now);
        let free = slots.iter().filter(|s| s.running.is_none()).count();
        let order = policy.order(&View { now_ms: now, slots: &slots }, &queue);
        let expected: Vec<JobId> = order.iter().take(free).map(|&i| queue[i].job_id).collect();
        let placed: Vec<JobId> = decision.placements.iter().map(|p| p.job_id).collect();
        prop_assert_eq!(placed, expected);
    }
}

#[test]
fn best_fit_keeps_the_big_card_for_the_big_job() {
    let slots = [slot(0, None), slot(3, None)]; // H100, L40
    let small = job(1, 0, 0, 1, 0, 0); // 480p 1 s: fits the L40
    let big = job(2, 4, 0, 1, 10, 0); // 720p: needs 80 GB
    let policy = LengthAware::new(LengthAwareConfig::default());
    let decision = policy.decide(
        &View {
            now_ms: 1_000,
            slots: &slots,
        },
        &[small, big],
    );
    assert_eq!(decision.placements.len(), 2);
    for placement in decision.placements {
        let expected = if placement.job_id == small.job_id {
            1
        } else {
            0
        };
        assert_eq!(placement.slot, expected, "{placement:?}");
    }
    // FIFO without size knowledge puts the first job on the first slot.
    let fifo = fifo::Fifo::blind(false).decide(
        &View {
            now_ms: 1_000,
            slots: &slots,
        },
        &[small, big],
    );
    assert_eq!(
        fifo.placements[0],
        Placement {
            job_id: small.job_id,
            slot: 0
        }
    );
}

#[test]
fn short_jobs_overtake_long_ones_and_long_ones_age() {
    let slots = [slot(0, None)];
    let long = job(1, 3, 0, 1, 0, 0); // 10 s 480p: long lane
    let short = job(2, 7, 1, 1, 50_000, 0); // 13 frames, 16 steps: short lane
    let policy = LengthAware::new(LengthAwareConfig::default());
    let now = 60_000;
    let placed = policy.decide(
        &View {
            now_ms: now,
            slots: &slots,
        },
        &[long, short],
    );
    assert_eq!(placed.placements[0].job_id, short.job_id);
    // Once the long job has waited several times its own size, it goes first.
    let late = 10 * (long.cost.reference_seconds() as u64) * 1_000;
    let mut fresh_short = short;
    fresh_short.created_at_ms = late;
    let placed = policy.decide(
        &View {
            now_ms: late,
            slots: &slots,
        },
        &[long, fresh_short],
    );
    assert_eq!(placed.placements[0].job_id, long.job_id);
}

#[test]
fn high_priority_and_a_tenant_below_its_share_go_first() {
    let busy = slot(0, Some((2, 1_000.0, 7)));
    let slots = [busy, busy, slot(0, None)];
    let heavy = job(1, 0, 7, 1, 0, 0); // tenant 7 already holds two slots
    let light = job(2, 0, 8, 1, 1_000, 0);
    let policy = LengthAware::new(LengthAwareConfig {
        short_share: 0.0,
        ..Default::default()
    });
    let placed = policy.decide(
        &View {
            now_ms: 2_000,
            slots: &slots,
        },
        &[heavy, light],
    );
    assert_eq!(placed.placements[0].job_id, light.job_id);
    let mut urgent = job(3, 0, 7, 2, 1_500, 0);
    urgent.priority = Priority::High;
    let placed = policy.decide(
        &View {
            now_ms: 2_000,
            slots: &slots,
        },
        &[heavy, light, urgent],
    );
    assert_eq!(placed.placements[0].job_id, urgent.job_id);
}

#[test]
fn the_reserve_holds_slots_for_short_jobs_and_medium_jobs_borrow_it() {
    let slots = [
        slot(0, Some((2, 5_000.0, 0))),
        slot(0, Some((2, 5_000.0, 0))),
        slot(0, Some((2, 5_000.0, 0))),
        slot(0, None),
    ];
    let long = job(1, 3, 0, 1, 0, 0);
    let medium = job(2, 2, 0, 1, 0, 0);
    let policy = LengthAware::new(LengthAwareConfig::default());
    let view = View {
        now_ms: 1_000,
        slots: &slots,
    };
    assert!(
        policy.decide(&view, &[long]).placements.is_empty(),
        "the last slot is the short lane's"
    );
    assert_eq!(
        policy.decide(&view, &[medium]).placements.len(),
        1,
        "medium borrows while no short job waits"
    );
    let short = job(3, 7, 0, 1, 900, 0);
    let placed = policy.decide(&view, &[medium, short]);
    assert_eq!(
        placed.placements,
        vec![Placement {
            job_id: short.job_id,
            slot: 3
        }]
    );
}

#[test]
fn preemption_pauses_the_long_job_nearest_its_step_boundary_once() {
    let mut slots = [
        slot(0, Some((2, 3_000.0, 0))),
        slot(0, Some((2, 3_000.0, 0))),
    ];
    if let Some(running) = slots[1].running.as_mut() {
        running.next_boundary_s = 1.0;
    }
    let short = job(9, 7, 1, 1, 0, 0);
    let config = LengthAwareConfig {
        preemption: true,
        ..Default::default()
    };
    let policy = LengthAware::new(config);
    let decision = policy.decide(
        &View {
            now_ms: 1_000,
            slots: &slots,
        },
        &[short],
    );
    assert_eq!(
        decision.preemptions,
        vec![Preemption {
            slot: 1,
            for_job: short.job_id
        }]
    );
    if let Some(running) = slots[1].running.as_mut() {
        running.pausing_for = Some(short.job_id);
    }
    let again = policy.decide(
        &View {
            now_ms: 2_000,
            slots: &slots,
        },
        &[short],
    );
    assert!(again.preemptions.is_empty(), "one pause per waiting job");
    if let Some(running) = slots[0].running.as_mut() {
        running.pauses = config.max_pauses;
    }
    slots[1].running = slots[0].running;
    assert!(
        policy
            .decide(
                &View {
                    now_ms: 2_000,
                    slots: &slots
                },
                &[short]
            )
            .preemptions
            .is_empty(),
        "pauses are bounded"
    );
}

#[test]
fn eta_plays_the_order_forward() {
    let slots = [slot(0, Some((2, 100.0, 0)))];
    let a = job(1, 0, 0, 1, 0, 0);
    let b = job(2, 0, 0, 1, 10, 0);
    let policy = fifo::Fifo::admit();
    let view = View {
        now_ms: 1_000,
        slots: &slots,
    };
    let estimates = eta::estimate(&policy, &view, &[b, a]);
    assert_eq!(estimates.len(), 2);
    assert_eq!((estimates[0].job_id, estimates[0].position), (a.job_id, 1));
    assert_eq!(estimates[0].eta_start_ms, Some(101_000));
    let after_a = 101_000 + (a.cost.seconds[0] * 1_000.0) as u64;
    assert!(
        estimates[1]
            .eta_start_ms
            .expect("a slot holds it")
            .abs_diff(after_a)
            <= 1
    );
    assert_eq!(estimates[0].eta_finish_ms, estimates[1].eta_start_ms);
    let none = eta::estimate(
        &policy,
        &View {
            now_ms: 0,
            slots: &[],
        },
        &[a],
    );
    assert_eq!((none[0].position, none[0].eta_start_ms), (1, None));
}

#[test]
fn a_starving_job_goes_first_whatever_its_priority() {
    let slots = [slot(0, None)];
    let policy = LengthAware::new(LengthAwareConfig::default());
    let mut low = job(1, 3, 0, 0, 0, 0); // 10 s 480p, low priority: long lane
    low.priority = Priority::Low;
    let own_ms = (low.cost.reference_seconds() * 1_000.0) as u64;
    // Just below its own GPU time of waiting, a fresh high-priority medium job goes first.
    let now = own_ms - 1_000;
    let mut high = job(2, 1, 1, 2, now, 0);
    high.priority = Priority::High;
    let placed = policy.decide(
        &View {
            now_ms: now,
            slots: &slots,
        },
        &[low, high],
    );
    assert_eq!(placed.placements[0].job_id, high.job_id);
    // Once it has waited its own GPU time, it goes before every job that is not starving.
    let now = own_ms + 1_000;
    high.created_at_ms = now;
    let placed = policy.decide(
        &View {
            now_ms: now,
            slots: &slots,
        },
        &[low, high],
    );
    assert_eq!(placed.placements[0].job_id, low.job_id);
}

#[test]
fn a_job_takes_the_faster_card_unless_a_bigger_job_needs_it() {
    let slots = [slot(3, None), slot(0, None)]; // L40, H100
    let small = job(1, 0, 0, 1, 0, 0); // 480p: fits both
    let policy = LengthAware::new(LengthAwareConfig {
        short_share: 0.0,
        ..Default::default()
    });
    let view = View {
        now_ms: 1_000,
        slots: &slots,
    };
    let alone = policy.decide(&view, &[small]);
    assert_eq!(
        alone.placements[0].slot, 1,
        "nothing bigger waits: the H100"
    );
    let big = job(2, 4, 0, 1, 500, 0); // 720p: only the H100
    let both = policy.decide(&view, &[small, big]);
    for placement in both.placements {
        let expected = if placement.job_id == small.job_id {
            0
        } else {
            1
        };
        assert_eq!(placement.slot, expected, "{placement:?}");
    }
}

#[test]
fn eta_lets_a_short_job_overtake_as_ranks_age() {
    let slots = [slot(0, Some((2, 300.0, 9)))];
    let long = job(1, 3, 0, 1, 0, 0); // 10 s 480p: long lane
    let short = job(2, 7, 1, 1, 600_000, 0); // submitted now: short lane
    let view = View {
        now_ms: 600_000,
        slots: &slots,
    };
    let policy = LengthAware::new(LengthAwareConfig::default());
    // Today the long job ranks first ...
    assert_eq!(policy.order(&view, &[long, short]), vec![0, 1]);
    // ... but by the time the slot frees the short job has aged past it.
    let estimates = eta::estimate(&policy, &view, &[long, short]);
    assert_eq!(
        (estimates[0].job_id, estimates[0].position),
        (short.job_id, 1)
    );
    assert_eq!(estimates[0].eta_start_ms, Some(900_000));
    assert!(estimates[1].eta_start_ms > estimates[0].eta_finish_ms.map(|ms| ms - 1));
}

#[test]
fn arrivals_of_shorter_lanes_stretch_the_wait_of_longer_ones() {
    let mut arrivals = eta::Arrivals::new(eta::ARRIVAL_WINDOW_MS, 0);
    for k in 0..100u128 {
        // 100 short jobs of 36 s in an hour: 1 slot-hour of work.
        arrivals.observe(
            JobId(uuid::Uuid::from_u128(k)),
            (k as u64) * 36_000,
            Lane::Short,
            36.0,
        );
    }
    arrivals.observe(JobId(uuid::Uuid::from_u128(0)), 0, Lane::Short, 36.0); // counted once
    let overtaking = arrivals.overtaking(3_600_000, 4.0);
    assert_eq!(overtaking[0], 0.0, "nothing overtakes the short lane");
    assert!((overtaking[1] - 0.25).abs() < 0.01, "{overtaking:?}");
    assert!((overtaking[2] - 0.25).abs() < 0.01, "{overtaking:?}");
    // An hour later with no arrivals, nothing is left.
    assert_eq!(arrivals.overtaking(7_300_000, 4.0), [0.0; 3]);
}
