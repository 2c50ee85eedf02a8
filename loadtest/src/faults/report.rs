//! What a fault run found: per-job outcomes, reruns, cancels and their timings, and the
//! violations that fail it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::report::Quantiles;

/// What a run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    /// Jobs answered 202.
    pub accepted: u32,
    /// Repeated submissions with an idempotency key already used.
    pub duplicate_submissions: u32,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u32>,
    /// Processes that exited without being killed (each was restarted), by name.
    pub unexpected_exits: BTreeMap<String, u32>,
    /// Accepted jobs by final state.
    pub final_states: BTreeMap<String, u32>,
    /// Accepted jobs without a terminal record at the end (must be 0).
    pub lost: u32,
    /// Results visible twice: a repeated key naming another job, or two success entries (must be 0).
    pub duplicated_results: u32,
    /// Jobs whose history holds more than one terminal entry (must be 0).
    pub multiple_terminal: u32,
    /// Jobs that started running more than once.
    pub ran_twice: u32,
    /// `ran_twice` as a share of accepted jobs, percent.
    pub ran_twice_pct: f64,
    /// Jobs that ran twice because an attempt failed while a GPU node was killed or stopped
    /// (expected: at most the victim's busy slots per such fault).
    pub ran_twice_after_worker_fault: u32,
    /// Jobs that ran twice with no worker fault to explain it (leader or NATS restarts should
    /// cost no rerun).
    pub ran_twice_unexplained: u32,
    /// Succeeded jobs whose MP4 is missing, differs from its record or is malformed (must be 0).
    pub invalid_videos: u32,
    /// Cancels sent (each to a job not cancelled before).
    pub cancels_sent: u32,
    /// Cancels answered 409: the job had ended already (a no-op).
    pub cancels_of_finished_jobs: u32,
    /// Cancels answered 200.
    pub cancels: u32,
    /// Of those, jobs that did not end `cancelled` (must be 0).
    pub cancels_not_honoured: u32,
    /// Cancels of running jobs whose slot was seen free again.
    pub cancel_to_free_samples: u32,
    /// Time from sending the cancel of a running job to its slot's heartbeat showing it free, ms.
    pub cancel_to_free_ms: Quantiles,
    /// The same for cancels during which no fault was being injected, ms.
    pub cancel_to_free_undisturbed_ms: Quantiles,
    /// Wall time, s.
    pub wall_s: f64,
    /// The first problems found, one line each.
    pub violations: Vec<String>,
    /// Findings that are not failures (e.g. reruns without a worker fault), one line each.
    pub notes: Vec<String>,
    /// Where the logs and the store were kept (only when the run failed).
    pub kept_dir: Option<String>,
}

impl FaultReport {
    /// Whether no accepted job was lost, duplicated, left without a valid video, or kept
    /// running after an honoured cancel.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated_results == 0
            && self.multiple_terminal == 0
            && self.invalid_videos == 0
            && self.cancels_not_honoured == 0
    }
}
