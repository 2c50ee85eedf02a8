//! Metric names of the GPU node and their descriptions.

use std::time::Duration;

/// Jobs a slot finished, by outcome (`succeeded`, `failed`, `abandoned`, `handed_back`, `preempted`).
pub const JOBS_FINISHED: &str = "mochi_node_jobs_finished_total";
/// Wall time of a job on its slot, seconds.
pub const JOB_SECONDS: &str = "mochi_node_job_seconds";
/// Denoising steps completed.
pub const STEPS: &str = "mochi_node_steps_total";
/// Wall time of one denoising step, seconds.
pub const STEP_SECONDS: &str = "mochi_node_step_seconds";
/// 1 while a slot runs a job.
pub const SLOT_BUSY: &str = "mochi_node_slot_busy";
/// Time of one phase of a job that ran through, seconds, by `phase` (`denoise` with the
/// text encoding, `decode`, `encode` with the previews, `upload`).
pub const PHASE_SECONDS: &str = "mochi_node_phase_seconds";
/// Device memory in use on a slot, bytes (as its latest heartbeat reported).
pub const SLOT_MEMORY_USED: &str = "mochi_node_slot_memory_used_bytes";
/// Device memory of a slot, bytes.
pub const SLOT_MEMORY_TOTAL: &str = "mochi_node_slot_memory_total_bytes";
/// Share of the driver's last sample period in which a kernel ran on a slot's GPU, 0 to 1
/// (NVML).
pub const GPU_UTILISATION: &str = "mochi_node_gpu_utilisation_ratio";
/// A slot's GPU utilisation at each reading while the slot ran a job (NVML; its decode,
/// encode and upload included, which use the GPU little or not at all); its mean is the
/// utilisation while jobs run.
pub const GPU_JOB_UTILISATION: &str = "mochi_node_gpu_job_utilisation";
/// Device memory in use on a slot's GPU, by every process, bytes (NVML).
pub const GPU_MEMORY_USED: &str = "mochi_node_gpu_memory_used_bytes";
/// Device memory of a slot's GPU, bytes (NVML).
pub const GPU_MEMORY_TOTAL: &str = "mochi_node_gpu_memory_total_bytes";
/// 1 while NVML reads every slot it should; 0 when it does not (only on nodes that read it).
pub const NVML_UP: &str = "mochi_node_nvml_up";
/// Heartbeats that could not be written.
pub const HEARTBEAT_FAILURES: &str = "mochi_node_heartbeat_failures_total";

/// Describes every metric (call once, after the recorder is installed).
pub fn describe() {
    // Exists from the start (at 0), for the heartbeat alert.
    metrics::counter!(HEARTBEAT_FAILURES).increment(0);
    metrics::describe_counter!(JOBS_FINISHED, "Jobs a slot finished, by outcome");
    metrics::describe_histogram!(
        JOB_SECONDS,
        metrics::Unit::Seconds,
        "Wall time of a job on its slot"
    );
    metrics::describe_counter!(STEPS, "Denoising steps completed");
    metrics::describe_histogram!(
        STEP_SECONDS,
        metrics::Unit::Seconds,
        "Wall time of one denoising step"
    );
    metrics::describe_gauge!(SLOT_BUSY, "1 while a slot runs a job");
    metrics::describe_counter!(HEARTBEAT_FAILURES, "Heartbeats that could not be written");
    metrics::describe_histogram!(
        PHASE_SECONDS,
        metrics::Unit::Seconds,
        "Time of one phase of a job (denoise, decode, encode, upload)"
    );
    metrics::describe_gauge!(
        SLOT_MEMORY_USED,
        metrics::Unit::Bytes,
        "Device memory in use on a slot"
    );
    metrics::describe_gauge!(
        SLOT_MEMORY_TOTAL,
        metrics::Unit::Bytes,
        "Device memory of a slot"
    );
    metrics::describe_gauge!(NVML_UP, "1 while NVML reads every slot's GPU it should");
    metrics::describe_gauge!(
        GPU_UTILISATION,
        "Share of the last sample period in which a kernel ran on the slot's GPU (NVML)"
    );
    metrics::describe_histogram!(
        GPU_JOB_UTILISATION,
        "GPU utilisation at each reading while the slot ran a job (NVML)"
    );
    metrics::describe_gauge!(
        GPU_MEMORY_USED,
        metrics::Unit::Bytes,
        "Device memory in use on the slot's GPU, every process (NVML)"
    );
    metrics::describe_gauge!(
        GPU_MEMORY_TOTAL,
        metrics::Unit::Bytes,
        "Device memory of the slot's GPU (NVML)"
    );
}

pub(crate) fn set_nvml_up(up: bool) {
    metrics::gauge!(NVML_UP).set(if up { 1.0 } else { 0.0 });
}

/// Registers `slot`'s utilisation histogram (empty) before its first reading; the gauges
/// appear with the first reading, not as a false 0.
pub(crate) fn register_gpu_slot(slot: u32) {
    let _registered = metrics::histogram!(GPU_JOB_UTILISATION, "slot" => slot.to_string());
}

/// One NVML reading of `slot`'s GPU (`utilisation`: `None` when it measures none); `busy`:
/// the slot runs a job.
pub(crate) fn record_gpu(
    slot: u32,
    utilisation: Option<f64>,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    busy: bool,
) {
    let slot = slot.to_string();
    metrics::gauge!(GPU_MEMORY_USED, "slot" => slot.clone()).set(memory_used_bytes as f64);
    metrics::gauge!(GPU_MEMORY_TOTAL, "slot" => slot.clone()).set(memory_total_bytes as f64);
    if let Some(utilisation) = utilisation {
        metrics::gauge!(GPU_UTILISATION, "slot" => slot.clone()).set(utilisation);
        if busy {
            metrics::histogram!(GPU_JOB_UTILISATION, "slot" => slot).record(utilisation);
        }
    }
}

pub(crate) fn set_slot_memory(slot: u32, total_bytes: u64, free_bytes: u64) {
    let slot = slot.to_string();
    metrics::gauge!(SLOT_MEMORY_TOTAL, "slot" => slot.clone()).set(total_bytes as f64);
    metrics::gauge!(SLOT_MEMORY_USED, "slot" => slot)
        .set(total_bytes.saturating_sub(free_bytes) as f64);
}

/// One denoising step of a job of `shape`, labelled by its shape bucket: `tokens`, the
/// half-octave of its visual tokens (`t15` holds 2^7.5 to 2^8 tokens), and `cfg`.
pub(crate) fn record_step(elapsed: Duration, shape: &protocol::JobShape) {
    metrics::counter!(STEPS).increment(1);
    metrics::histogram!(
        STEP_SECONDS,
        "tokens" => format!("t{}", shape.token_bucket()),
        "cfg" => if shape.cfg { "true" } else { "false" }
    )
    .record(elapsed.as_secs_f64());
}

pub(crate) fn record_phase(phase: &'static str, elapsed: Duration) {
    metrics::histogram!(PHASE_SECONDS, "phase" => phase).record(elapsed.as_secs_f64());
}

pub(crate) fn record_job(outcome: &'static str, elapsed: Duration) {
    metrics::counter!(JOBS_FINISHED, "outcome" => outcome).increment(1);
    metrics::histogram!(JOB_SECONDS).record(elapsed.as_secs_f64());
}

pub(crate) fn set_slot_busy(slot: u32, busy: bool) {
    metrics::gauge!(SLOT_BUSY, "slot" => slot.to_string()).set(if busy { 1.0 } else { 0.0 });
}
