use proptest::prelude::*;

use super::*;

const ALL_STATES: [JobState; 10] = [
    JobState::Queued,
    JobState::Assigned,
    JobState::Running,
    JobState::Encoding,
    JobState::Preempted,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::Aborted,
    JobState::Dead,
];

fn record(state: JobState) -> JobRecord {
    let spec = JobSpec::new("a red fox");
    let shape = spec
        .validate(&crate::spec::Limits::default())
        .expect("valid");
    let mut record = JobRecord::queued(
        JobId::new(),
        TenantId::default_tenant(),
        spec,
        shape,
        7,
        3,
        1_000,
    );
    record.state = state;
    record.attempt = 1;
    record
}

fn lease() -> Lease {
    Lease {
        node: NodeId::new("n1").expect("valid"),
        slot: 0,
        deadline_ms: 5_000,
    }
}

fn result() -> VideoResult {
    VideoResult {
        object_name: "x".into(),
        size_bytes: 1,
        sha256: "00".into(),
        duration_ms: 1000,
        num_frames: 31,
        width: 848,
        height: 480,
        fps: 30,
    }
}

/// One event of each kind, for `attempt`.
fn events(attempt: u32, retryable: bool) -> Vec<JobEvent> {
    vec![
        JobEvent::Assigned { lease: lease() },
        JobEvent::AssignmentRejected { attempt },
        JobEvent::Started {
            attempt,
            lease_deadline_ms: 6_000,
        },
        JobEvent::Progressed {
            attempt,
            progress: Progress {
                step: 1,
                total_steps: 2,
            },
            lease_deadline_ms: 7_000,
        },
        JobEvent::EncodingStarted {
            attempt,
            lease_deadline_ms: 8_000,
        },
        JobEvent::Succeeded {
            attempt,
            result: result(),
        },
        JobEvent::Failed {
            attempt,
            failure: JobFailure {
                code: ErrorCode::Internal,
                message: "boom".into(),
                retryable,
            },
            retry_at_ms: 9_000,
        },
        JobEvent::LeaseExpired {
            attempt,
            retry_at_ms: 9_000,
        },
        JobEvent::Preempted {
            attempt,
            resume: ResumePoint {
                step: 3,
                latent_object: "l".into(),
            },
        },
        JobEvent::Requeued,
        JobEvent::Rejected {
            failure: JobFailure {
                code: ErrorCode::InvalidField,
                message: "bad".into(),
                retryable: false,
            },
        },
        JobEvent::CancelRequested,
        JobEvent::StartDeadlineMissed,
    ]
}

/// The transitions the design allows, as (state, event name) pairs.
fn allowed(state: JobState, event: &str) -> bool {
    use JobState as S;
    if event == "cancel_requested" {
        return !state.is_terminal();
    }
    matches!(
        (state, event),
        (S::Queued, "assigned")
            | (S::Queued, "start_deadline_missed")
            | (S::Queued, "rejected")
            | (S::Assigned, "assignment_rejected")
            | (S::Assigned, "started")
            | (S::Assigned | S::Running | S::Encoding, "failed")
            | (S::Assigned | S::Running | S::Encoding, "lease_expired")
            | (S::Running, "progressed")
            | (S::Running, "encoding_started")
            | (S::Running, "preempted")
            | (S::Encoding, "succeeded")
            | (S::Preempted, "requeued")
    )
}

#[test]
fn only_the_designed_transitions_are_accepted() {
    for state in ALL_STATES {
        for event in events(1, true) {
            let outcome = record(state).apply(&event, 2_000);
            assert_eq!(
                outcome.is_ok(),
                allowed(state, event.name()),
                "{state} + {}: {outcome:?}",
                event.name()
            );
        }
    }
}

#[test]
fn stale_attempt_is_refused() {
    let running = record(JobState::Running);
    let stale = JobEvent::Progressed {
        attempt: 0,
        progress: Progress {
            step: 1,
            total_steps: 2,
        },
        lease_deadline_ms: 1,
    };
    assert!(matches!(
        running.apply(&stale, 2_000),
        Err(TransitionError::StaleAttempt { .. })
    ));
}

#[test]
fn retryable_failure_requeues_until_max_attempts_then_dies() {
    let mut job = record(JobState::Queued);
    job.attempt = 0;
    for round in 1..=3 {
        job = job
            .apply(&JobEvent::Assigned { lease: lease() }, 2_000)
            .expect("assign");
        assert_eq!(job.attempt, round);
        job = job
            .apply(
                &JobEvent::LeaseExpired {
                    attempt: round,
                    retry_at_ms: 9_000,
                },
                3_000,
            )
            .expect("expire");
    }
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.failed_attempts, 3);
    assert!(job.finished_at_ms.is_some());
}

#[test]
fn a_redriven_dead_job_is_queued_with_a_fresh_retry_budget_and_its_history() {
    let mut dead = record(JobState::Dead);
    dead.failed_attempts = 3;
    dead.attempt = 3;
    dead.finished_at_ms = Some(5_000);
    let again = dead.apply(&JobEvent::Redriven, 6_000).expect("redrive");
    assert_eq!(again.state, JobState::Queued);
    assert_eq!((again.failed_attempts, again.attempt), (0, 3));
    assert_eq!(again.finished_at_ms, None);
    assert_eq!(
        again.history.last().map(|h| h.event.as_str()),
        Some("redriven")
    );
    // The next placement is a new attempt, so no write of an earlier one can land.
    let placed = again
        .apply(&JobEvent::Assigned { lease: lease() }, 7_000)
        .expect("assign");
    assert_eq!(placed.attempt, 4);
    for state in ALL_STATES {
        if state != JobState::Dead {
            assert!(
                record(state).apply(&JobEvent::Redriven, 6_000).is_err(),
                "{state}"
            );
        }
    }
}

#[test]
fn non_retryable_failure_fails_at_once() {
    let job = record(JobState::Running);
    let event = &events(1, false)[6];
    assert_eq!(
        job.apply(event, 2_000).expect("fail").state,
        JobState::Failed
    );
}

#[test]
fn progress_renews_lease_and_never_shortens_it() {
    let mut job = record(JobState::Running);
    job.lease = Some(lease());
    let later = JobEvent::Progressed {
        attempt: 1,
        progress: Progress {
            step: 1,
            total_steps: 2,
        },
        lease_deadline_ms: 9_000,
    };
    let job = job.apply(&later, 2_000).expect("progress");
    assert_eq!(job.lease.as_ref().map(|l| l.deadline_ms), Some(9_000));
    let earlier = JobEvent::Progressed {
        attempt: 1,
        progress: Progress {
            step: 2,
            total_steps: 2,
        },
        lease_deadline_ms: 100,
    };
    let job = job.apply(&earlier, 2_001).expect("progress");
    assert_eq!(job.lease.as_ref().map(|l| l.deadline_ms), Some(9_000));
}

fn arbitrary_event() -> impl Strategy<Value = JobEvent> {
    (0usize..13, 0u32..4, any::<bool>())
        .prop_map(|(kind, attempt, retryable)| events(attempt, retryable).swap_remove(kind))
}

proptest! {
    #[test]
    fn terminal_states_absorb_and_are_entered_once(sequence in prop::collection::vec(arbitrary_event(), 0..40)) {
        let mut job = record(JobState::Queued);
        job.attempt = 0;
        for event in &sequence {
            let before = job.clone();
            match job.apply(event, 2_000) {
                Ok(next) => {
                    prop_assert!(!before.state.is_terminal(), "left terminal state {}", before.state);
                    prop_assert!(next.attempt >= before.attempt);
                    prop_assert!(next.failed_attempts <= next.max_attempts);
                    if let Some(attempt) = event.attempt() {
                        prop_assert_eq!(attempt, before.attempt, "stale event accepted");
                    }
                    job = next;
                }
                Err(_) => prop_assert_eq!(&job, &before),
            }
        }
        let terminal_entries = job.history.iter().filter(|h| h.to.is_terminal()).count();
        prop_assert!(terminal_entries <= 1);
        prop_assert_eq!(terminal_entries == 1, job.state.is_terminal());
    }

    #[test]
    fn every_path_ends_in_exactly_one_terminal_state(sequence in prop::collection::vec(arbitrary_event(), 0..40)) {
        let mut job = record(JobState::Queued);
        job.attempt = 0;
        for event in &sequence {
            if let Ok(next) = job.apply(event, 2_000) {
                job = next;
            }
        }
        // Drain as a crash-prone cluster would: nodes keep disappearing.
        for _ in 0..(4 * job.max_attempts + 4) {
            let event = match job.state {
                JobState::Queued => JobEvent::Assigned { lease: lease() },
                JobState::Preempted => JobEvent::Requeued,
                state if state.is_on_node() => JobEvent::LeaseExpired { attempt: job.attempt, retry_at_ms: 0 },
                _ => break,
            };
            job = job.apply(&event, 3_000).expect("drain event is legal");
        }
        prop_assert!(job.state.is_terminal(), "stuck in {}", job.state);
        let terminal_entries = job.history.iter().filter(|h| h.to.is_terminal()).count();
        prop_assert_eq!(terminal_entries, 1);
    }
}

#[test]
fn a_paused_job_resumes_on_a_new_attempt_that_fences_the_old_one_and_counts_its_pauses() {
    let running = record(JobState::Queued)
        .apply(&JobEvent::Assigned { lease: lease() }, 2_000)
        .and_then(|r| {
            r.apply(
                &JobEvent::Started {
                    attempt: 2,
                    lease_deadline_ms: 9_000,
                },
                2_100,
            )
        })
        .expect("placed and started");
    assert_eq!((running.attempt, running.pauses()), (2, 0));
    let resume = ResumePoint {
        step: 5,
        latent_object: "job/latent/2".into(),
    };
    let paused = running
        .apply(
            &JobEvent::Preempted {
                attempt: 2,
                resume: resume.clone(),
            },
            3_000,
        )
        .expect("pausing a running attempt");
    assert_eq!(paused.state, JobState::Preempted);
    assert_eq!(paused.resume.as_ref(), Some(&resume));
    assert_eq!(paused.pauses(), 1);
    let requeued = paused.apply(&JobEvent::Requeued, 3_100).expect("requeue");
    assert_eq!(
        (
            requeued.state,
            requeued.lease.clone(),
            requeued.failed_attempts
        ),
        (JobState::Queued, None, 0),
        "a pause is not a failure"
    );
    let resumed = requeued
        .apply(&JobEvent::Assigned { lease: lease() }, 3_200)
        .expect("placed again");
    assert_eq!(resumed.attempt, 3);
    assert_eq!(
        resumed.resume.as_ref(),
        Some(&resume),
        "the placement carries it"
    );
    // The paused attempt's late writes are refused.
    let late = JobEvent::Progressed {
        attempt: 2,
        progress: Progress {
            step: 6,
            total_steps: 64,
        },
        lease_deadline_ms: 9_999,
    };
    assert!(matches!(
        resumed.apply(&late, 3_300),
        Err(TransitionError::StaleAttempt { .. })
    ));
    // A pause of a job that is no longer running is refused.
    assert!(matches!(
        record(JobState::Encoding).apply(
            &JobEvent::Preempted {
                attempt: 1,
                resume: resume.clone()
            },
            4_000
        ),
        Err(TransitionError::Illegal { .. })
    ));
    let second = resumed
        .apply(
            &JobEvent::Started {
                attempt: 3,
                lease_deadline_ms: 9_000,
            },
            3_400,
        )
        .and_then(|r| {
            r.apply(
                &JobEvent::Preempted {
                    attempt: 3,
                    resume: ResumePoint {
                        step: 9,
                        latent_object: "job/latent/3".into(),
                    },
                },
                3_500,
            )
        })
        .expect("paused twice");
    assert_eq!(second.pauses(), 2);
}

#[test]
fn a_record_stored_by_format_version_1_still_reads() {
    let mut current = record(JobState::Succeeded);
    current.history.push(HistoryEntry {
        at_ms: 5,
        from: JobState::Queued,
        to: JobState::Running,
        event: "started".into(),
        attempt: 1,
    });
    let bytes = crate::codec::encode(&current).expect("encode");
    // Version 1's layout is version 2's without the trailing `remixed_from`,
    // `deleted_at_ms`, `files_removed_at_ms` and `webhook` (None: one 0 byte each).
    assert_eq!(bytes[bytes.len() - 4..], [0, 0, 0, 0]);
    let mut old = bytes[..bytes.len() - 4].to_vec();
    old[2..4].copy_from_slice(&1u16.to_le_bytes());
    let read: JobRecord = crate::codec::decode(&old).expect("a version 1 record reads");
    assert_eq!(read, current);
    let remixed = JobRecord {
        remixed_from: Some(JobId::new()),
        ..current.clone()
    };
    let bytes = crate::codec::encode(&remixed).expect("encode");
    assert_eq!(
        crate::codec::decode::<JobRecord>(&bytes).expect("decode"),
        remixed
    );
}

#[test]
fn a_deleted_job_keeps_no_content_and_takes_no_event() {
    let mut done = record(JobState::Dead);
    assert!(done.apply(&JobEvent::Redriven, 10_000).is_ok());
    done.spec.negative_prompt = "blurry".into();
    done.idempotency_key = Some("k1".into());
    let tomb = done.tombstone(9_000);
    assert_eq!(tomb.deleted_at_ms, Some(9_000));
    assert!(tomb.spec.prompt.is_empty() && tomb.spec.negative_prompt.is_empty());
    assert_eq!(
        (tomb.id, tomb.state, &tomb.tenant),
        (done.id, done.state, &done.tenant)
    );
    assert!(tomb.idempotency_key.is_none() && tomb.history.is_empty());
    assert!(matches!(
        tomb.apply(&JobEvent::Redriven, 10_000),
        Err(TransitionError::Illegal { .. })
    ));
}

#[test]
fn only_the_lease_holder_writes_node_events_and_a_retried_write_is_a_duplicate() {
    let holder = NodeId::new("n1").expect("valid");
    let other = NodeId::new("n2").expect("valid");
    let mut assigned = record(JobState::Assigned);
    assigned.lease = Some(lease());
    let started = JobEvent::Started {
        attempt: 1,
        lease_deadline_ms: 9_000,
    };
    // The holder writes; another node is refused, naming the holder.
    let running = assigned
        .apply_from_node(&holder, &started, 2_000)
        .expect("holder")
        .expect("written");
    assert_eq!(running.state, JobState::Running);
    match assigned.apply_from_node(&other, &started, 2_000) {
        Err(NodeWriteRefusal::NotTheHolder { node, holder }) => {
            assert_eq!(node, other);
            assert_eq!(holder, "n1");
        }
        refused => panic!("another node's write went through: {refused:?}"),
    }
    // The same write again (its answer was lost) is a duplicate, not a refusal.
    assert_eq!(running.apply_from_node(&holder, &started, 2_100), Ok(None));
    assert!(running.apply_from_node(&other, &started, 2_100).is_err());
    // A stale attempt is refused as such.
    let stale = JobEvent::Progressed {
        attempt: 0,
        progress: Progress {
            step: 1,
            total_steps: 2,
        },
        lease_deadline_ms: 9_000,
    };
    assert!(matches!(
        running.apply_from_node(&holder, &stale, 2_100),
        Err(NodeWriteRefusal::Transition(
            TransitionError::StaleAttempt { .. }
        ))
    ));
    // Events that are not a node's are refused whoever sends them.
    for event in [
        JobEvent::CancelRequested,
        JobEvent::LeaseExpired {
            attempt: 1,
            retry_at_ms: 0,
        },
        JobEvent::Requeued,
        JobEvent::Redriven,
    ] {
        assert!(matches!(
            running.apply_from_node(&holder, &event, 2_100),
            Err(NodeWriteRefusal::NotANodeEvent(_))
        ));
    }
    // After the job ends nobody holds it: a new event is refused, the same success again
    // is a duplicate.
    let mut encoding = running.clone();
    encoding.state = JobState::Encoding;
    let succeeded = JobEvent::Succeeded {
        attempt: 1,
        result: result(),
    };
    let done = encoding
        .apply_from_node(&holder, &succeeded, 3_000)
        .expect("holder")
        .expect("written");
    assert_eq!(done.lease, None);
    assert_eq!(done.apply_from_node(&holder, &succeeded, 3_100), Ok(None));
    let failed = JobEvent::Failed {
        attempt: 1,
        failure: JobFailure {
            code: ErrorCode::JobFailed,
            message: "x".into(),
            retryable: true,
        },
        retry_at_ms: 0,
    };
    assert!(done.apply_from_node(&holder, &failed, 3_100).is_err());
    // A queued job (no lease) takes no node event from anyone.
    let mut queued = record(JobState::Queued);
    queued.lease = None;
    assert!(queued.apply_from_node(&holder, &started, 3_100).is_err());
}
