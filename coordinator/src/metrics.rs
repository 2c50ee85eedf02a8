//! Metric names of the coordinator and their descriptions (the binary installs the recorder).

use protocol::JobRecord;

use crate::policy::Lane;
use crate::scheduler::messages::SchedulerStatus;

/// Jobs waiting for a slot.
pub const QUEUE_DEPTH: &str = "mochi_coordinator_queue_depth";
/// Jobs on nodes (assigned, running, encoding).
pub const JOBS_ON_NODES: &str = "mochi_coordinator_jobs_on_nodes";
/// Slots of live nodes, by `state` (`live`, `free`).
pub const SLOTS: &str = "mochi_coordinator_slots";
/// Submissions taken in, by `outcome` (`queued`, `rejected`, `duplicate`, `unreadable`).
pub const INTAKE: &str = "mochi_coordinator_intake_total";
/// Jobs written as `queued` by the intake.
pub const JOBS_QUEUED: &str = "mochi_coordinator_jobs_queued_total";
/// Submissions refused by the intake (invalid spec, unreadable), by `reason`.
pub const INTAKE_REJECTED: &str = "mochi_coordinator_intake_rejected_total";
/// Jobs a node accepted.
pub const JOBS_ASSIGNED: &str = "mochi_coordinator_jobs_assigned_total";
/// Placements, by `outcome` (`accepted`, `refused`, `lost`).
pub const PLACEMENTS: &str = "mochi_coordinator_placements_total";
/// Leases that expired (the node went quiet).
pub const LEASES_EXPIRED: &str = "mochi_coordinator_leases_expired_total";
/// Dead jobs copied to `MOCHI_DLQ`.
pub const DEAD_LETTERS: &str = "mochi_coordinator_dead_letters_total";
/// Jobs ended for a missed deadline, by `deadline` (`start_deadline_missed`, `failed`).
pub const DEADLINES_MISSED: &str = "mochi_coordinator_deadlines_missed_total";
/// Times this replica became leader.
pub const LEADER_TERMS: &str = "mochi_coordinator_leader_terms_total";
/// Time from submission to placement, seconds, by `lane`.
pub const QUEUE_WAIT_SECONDS: &str = "mochi_coordinator_queue_wait_seconds";
/// Jobs that ended, by `state` (`succeeded`, `failed`, `cancelled`, `aborted`, `dead`).
pub const JOBS_FINISHED: &str = "mochi_coordinator_jobs_finished_total";
/// Time from submission to the end of a job, seconds, by `state` (end to end).
pub const JOB_SECONDS: &str = "mochi_coordinator_job_seconds";

/// Cost model error of finished jobs, `observed / predicted − 1` GPU seconds, by `class`.
pub const COST_ERROR: &str = "mochi_coordinator_cost_error_ratio";
/// Queued jobs no known slot can hold, refused with `job_too_large`.
pub const JOBS_TOO_LARGE: &str = "mochi_coordinator_jobs_too_large_total";
/// Jobs waiting for a slot, by `lane` (`short`, `medium`, `long`).
pub const QUEUE_DEPTH_LANE: &str = "mochi_coordinator_queue_depth_lane";

/// Running jobs asked to pause at their next step boundary for a waiting job.
pub const PAUSES_REQUESTED: &str = "mochi_coordinator_pauses_requested_total";

/// Nodes' writes to their jobs' records, by `outcome` (`applied`, `refused`: the record or
/// the lease refused it, `failed`: the store failed and the node will try again).
pub const RECORD_WRITES: &str = "mochi_coordinator_record_writes_total";

/// Time the scheduler spent estimating every waiting job's position and ETA in one refresh
/// (its writes go on in the background), seconds.
pub const ETA_REFRESH_SECONDS: &str = "mochi_coordinator_eta_refresh_seconds";

/// Counts one node record write by its outcome.
pub(crate) fn record_write(outcome: &'static str) {
    metrics::counter!(RECORD_WRITES, "outcome" => outcome).increment(1);
}

/// Describes every metric (call once; the binary installs the recorder).
pub fn describe() {
    // The counters the alert rules and the dashboard read exist from the start (at 0).
    for state in ["succeeded", "failed", "cancelled", "aborted", "dead"] {
        metrics::counter!(JOBS_FINISHED, "state" => state).increment(0);
    }
    metrics::counter!(DEAD_LETTERS).increment(0);
    metrics::counter!(LEASES_EXPIRED).increment(0);
    metrics::counter!(PAUSES_REQUESTED).increment(0);
    for outcome in ["applied", "refused", "failed"] {
        metrics::counter!(RECORD_WRITES, "outcome" => outcome).increment(0);
    }
    metrics::describe_counter!(
        RECORD_WRITES,
        "Nodes' writes to their jobs' records, by outcome (applied, refused, failed)"
    );
    metrics::describe_counter!(
        PAUSES_REQUESTED,
        "Running jobs asked to pause at their next step boundary for a waiting job"
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "Jobs waiting for a slot");
    metrics::describe_counter!(JOBS_FINISHED, "Jobs that ended, by state");
    metrics::describe_histogram!(
        JOB_SECONDS,
        metrics::Unit::Seconds,
        "Time from submission to the end of a job, by state"
    );
    metrics::describe_gauge!(JOBS_ON_NODES, "Jobs on nodes (assigned, running, encoding)");
    metrics::describe_gauge!(SLOTS, "Slots of live nodes, by state (live, free)");
    metrics::describe_counter!(INTAKE, "Submissions taken in, by outcome");
    metrics::describe_counter!(
        JOBS_QUEUED,
        "Jobs written as queued by the intake (published on NATS; the gateway writes its own)"
    );
    metrics::describe_counter!(
        INTAKE_REJECTED,
        "Submissions refused by the intake, by reason"
    );
    metrics::describe_counter!(JOBS_ASSIGNED, "Jobs a node accepted");
    metrics::describe_counter!(
        DEADLINES_MISSED,
        "Jobs ended for a missed deadline (time-to-start, longest run time)"
    );
    metrics::describe_counter!(LEADER_TERMS, "Times this replica became leader");
    metrics::describe_counter!(PLACEMENTS, "Placements by outcome");
    metrics::describe_counter!(LEASES_EXPIRED, "Leases that expired");
    metrics::describe_counter!(DEAD_LETTERS, "Dead jobs copied to the dead-letter stream");
    metrics::describe_histogram!(
        COST_ERROR,
        "Cost model error of finished jobs (observed / predicted - 1), by GPU class"
    );
    metrics::describe_counter!(
        JOBS_TOO_LARGE,
        "Jobs refused because no known slot holds them"
    );
    metrics::describe_gauge!(QUEUE_DEPTH_LANE, "Jobs waiting for a slot, by lane");
    metrics::describe_histogram!(
        ETA_REFRESH_SECONDS,
        metrics::Unit::Seconds,
        "Scheduler time of one queue-position and ETA refresh"
    );
    metrics::describe_histogram!(
        QUEUE_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time from submission to placement"
    );
}

/// Counts a job that just ended by its state and records its time from submission to end.
pub(crate) fn job_finished(record: &JobRecord) {
    let Some(ended) = record.finished_at_ms else {
        return;
    };
    let state = record.state.as_str();
    metrics::counter!(JOBS_FINISHED, "state" => state).increment(1);
    let seconds = ended.saturating_sub(record.created_at_ms) as f64 / 1_000.0;
    metrics::histogram!(JOB_SECONDS, "state" => state).record(seconds);
}

/// Sets the queue depth of each lane, given as `(lane, jobs)`.
pub(crate) fn lane_depths(depths: impl IntoIterator<Item = (Lane, usize)>) {
    for (lane, count) in depths {
        metrics::gauge!(QUEUE_DEPTH_LANE, "lane" => lane.as_str()).set(count as f64);
    }
}

/// Sets the gauges from the scheduler's counts.
pub(crate) fn gauges(status: &SchedulerStatus) {
    metrics::gauge!(QUEUE_DEPTH).set(status.queued as f64);
    metrics::gauge!(JOBS_ON_NODES).set(status.on_node as f64);
    metrics::gauge!(SLOTS, "state" => "live").set(status.live_slots as f64);
    metrics::gauge!(SLOTS, "state" => "free").set(status.free_slots as f64);
}
