use proptest::prelude::*;

use super::*;
use crate::ids::{JobId, NodeId, TenantId};
use crate::messages::{
    Assign, AssignReply, Cancel, NodeHeartbeat, Preempt, PreemptReply, ProgressEvent, SlotJob,
    SlotReport,
};
use crate::record::{JobRecord, JobState};
use crate::spec::{JobSpec, Limits};

fn job_id() -> JobId {
    JobId(uuid::Uuid::from_u128(
        0x0192_0000_0000_7000_8000_0000_0000_0001,
    ))
}

fn assign() -> Assign {
    let spec = JobSpec::new("a red fox");
    let shape = spec.validate(&Limits::default()).expect("valid");
    Assign {
        job_id: job_id(),
        attempt: 1,
        slot: 0,
        spec,
        shape,
        seed: 42,
        lease_ms: 30_000,
        resume: None,
    }
}

fn heartbeat() -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: NodeId::new("node-a").expect("valid"),
        backend: "simulated".into(),
        version: "0.1.0".into(),
        started_at_ms: 1,
        sent_at_ms: 2,
        accepting: true,
        slots: vec![SlotReport {
            slot: 0,
            gpu_class: "h100-80gb".into(),
            memory_total_bytes: 80 << 30,
            memory_free_bytes: 50 << 30,
            job: Some(SlotJob {
                job_id: job_id(),
                attempt: 1,
            }),
            healthy: true,
            unhealthy_reason: None,
        }],
    }
}

#[test]
fn golden_bytes_cancel() {
    let bytes = encode(&Cancel {
        job_id: job_id(),
        attempt: 3,
    })
    .expect("encode");
    assert_eq!(
        hex(&bytes),
        "4d4f020003100192000000007000800000000000000103"
    );
}

#[test]
fn golden_bytes_preempt() {
    let bytes = encode(&Preempt {
        job_id: job_id(),
        attempt: 3,
    })
    .expect("encode");
    assert_eq!(
        hex(&bytes),
        "4d4f020007100192000000007000800000000000000103"
    );
    assert_eq!(
        hex(&encode(&PreemptReply::Pausing).expect("encode")),
        "4d4f02000800"
    );
    assert!(matches!(
        decode::<Cancel>(&bytes),
        Err(CodecError::WrongKind { found: 7, .. })
    ));
}

#[test]
fn golden_bytes_assign_reply() {
    assert_eq!(
        hex(&encode(&AssignReply::Accepted).expect("encode")),
        "4d4f02000200"
    );
    let rejected = AssignReply::Rejected {
        reason: "busy".into(),
    };
    assert_eq!(
        hex(&encode(&rejected).expect("encode")),
        "4d4f020002010462757379"
    );
}

#[test]
fn golden_bytes_progress_event() {
    let event = ProgressEvent {
        job_id: job_id(),
        attempt: 1,
        state: JobState::Running,
        step: 5,
        total_steps: 64,
        at_ms: 1000,
    };
    assert_eq!(
        hex(&encode(&event).expect("encode")),
        "4d4f020004100192000000007000800000000000000101020540fbe803"
    );
}

#[test]
fn golden_bytes_assign_and_heartbeat_are_stable() {
    // Long messages: pin a digest of the body (after the 5-byte header, which the other
    // goldens pin) rather than the bytes themselves.
    let digest = |bytes: Vec<u8>| {
        bytes[5..].iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    assert_eq!(digest(encode(&assign()).expect("encode")), ASSIGN_DIGEST);
    assert_eq!(
        digest(encode(&heartbeat()).expect("encode")),
        HEARTBEAT_DIGEST
    );
}

const ASSIGN_DIGEST: u64 = 2912970792537297597;
const HEARTBEAT_DIGEST: u64 = 39860643205862226;

#[test]
fn refuses_a_newer_version_with_a_clear_error() {
    let mut bytes = encode(&Cancel {
        job_id: job_id(),
        attempt: 1,
    })
    .expect("encode");
    bytes[2..4].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
    let error = decode::<Cancel>(&bytes).expect_err("newer version");
    assert!(
        matches!(error, CodecError::UnsupportedVersion { found, supported } if found == WIRE_VERSION + 1 && supported == WIRE_VERSION)
    );
    assert!(error.to_string().contains("upgrade"));
}

#[test]
fn an_older_version_of_an_unchanged_message_still_reads() {
    let message = Cancel {
        job_id: job_id(),
        attempt: 1,
    };
    let mut bytes = encode(&message).expect("encode");
    bytes[2..4].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(decode::<Cancel>(&bytes).expect("version 1 reads"), message);
    bytes[2..4].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        decode::<Cancel>(&bytes),
        Err(CodecError::RetiredVersion { found: 0, .. })
    ));
}

#[test]
fn refuses_another_message_kind() {
    let bytes = encode(&Cancel {
        job_id: job_id(),
        attempt: 1,
    })
    .expect("encode");
    assert!(matches!(
        decode::<AssignReply>(&bytes),
        Err(CodecError::WrongKind {
            expected: "assign_reply",
            found: 3
        })
    ));
}

#[test]
fn refuses_foreign_and_truncated_bytes() {
    assert!(matches!(
        decode::<Cancel>(b"{\"job_id\":1}"),
        Err(CodecError::NotOurs { .. })
    ));
    let bytes = encode(&assign()).expect("encode");
    assert!(matches!(
        decode::<Assign>(&bytes[..bytes.len() - 3]),
        Err(CodecError::Decode { .. })
    ));
}

#[test]
fn job_record_round_trips() {
    let spec = JobSpec::new("a red fox");
    let shape = spec.validate(&Limits::default()).expect("valid");
    let record = JobRecord::queued(job_id(), TenantId::default_tenant(), spec, shape, 9, 3, 5);
    assert_eq!(
        decode::<JobRecord>(&encode(&record).expect("encode")).expect("decode"),
        record
    );
}

proptest! {
    #[test]
    fn assign_round_trips(prompt in "\\PC{1,40}", seed in any::<u64>(), attempt in any::<u32>(), slot in any::<u32>(), steps in 1u32..200) {
        let mut message = assign();
        message.spec.prompt = prompt;
        message.spec.steps = Some(steps);
        message.seed = seed;
        message.attempt = attempt;
        message.slot = slot;
        prop_assert_eq!(decode::<Assign>(&encode(&message).expect("encode")).expect("decode"), message);
    }

    #[test]
    fn heartbeat_round_trips(free in any::<u64>(), healthy in any::<bool>(), reason in proptest::option::of("\\PC{0,20}")) {
        let mut message = heartbeat();
        message.slots[0].memory_free_bytes = free;
        message.slots[0].healthy = healthy;
        message.slots[0].unhealthy_reason = reason;
        prop_assert_eq!(decode::<NodeHeartbeat>(&encode(&message).expect("encode")).expect("decode"), message);
    }

    #[test]
    fn cancel_and_progress_round_trip(attempt in any::<u32>(), step in any::<u32>(), at_ms in any::<u64>()) {
        let cancel = Cancel { job_id: JobId::new(), attempt };
        prop_assert_eq!(decode::<Cancel>(&encode(&cancel).expect("encode")).expect("decode"), cancel);
        let event = ProgressEvent { job_id: JobId::new(), attempt, state: JobState::Encoding, step, total_steps: step, at_ms };
        prop_assert_eq!(decode::<ProgressEvent>(&encode(&event).expect("encode")).expect("decode"), event);
        let preempt = Preempt { job_id: JobId::new(), attempt };
        prop_assert_eq!(decode::<Preempt>(&encode(&preempt).expect("encode")).expect("decode"), preempt);
        let refused = PreemptReply::Refused { reason: format!("step {step}") };
        prop_assert_eq!(decode::<PreemptReply>(&encode(&refused).expect("encode")).expect("decode"), refused);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode::<Assign>(&bytes);
        let _ = decode::<NodeHeartbeat>(&bytes);
    }
}
