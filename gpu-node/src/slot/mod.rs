//! The `GpuSlot` actor: one per device. It owns a long-lived OS thread that runs the
//! backend, the MP4 encoder and the JPEG previews, and does every write about its job
//! (record transitions fenced by the attempt, progress events, the object-store uploads).
//!
//! One file, past 500 lines: the actor's handlers are one state machine over the running
//! job (start, step, pause, hand-back, finish); its messages, worker thread, uploads and
//! stop flag are apart (`messages.rs`, `worker.rs`, `output.rs`, `stop.rs`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::jetstream::Resources;
use protocol::messages::{Assign, AssignReply, PreemptReply, SlotJob, SlotReport};
use protocol::record::{JobEvent, JobFailure, Progress, ResumePoint};
use protocol::{ErrorCode, JobId, JobShape, JobState, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Notify;

use crate::backend::{Backend, BackendError, BackendJob};
use crate::device::{DeviceMemory, MemoryWatch};
use crate::metrics;
use crate::mp4::VideoConfig;

mod messages;
mod output;
mod stop;
mod worker;

pub use messages::{Encoded, GpuSlotMsg, Ran};
use output::{
    RETRY_DELAY_MS, SlotIo, latent_object, load_latent, paused_object, publish_progress,
    read_latent, save_latent, store_video, write,
};
use stop::{StopFlag, StopReason};
use worker::{WorkItem, worker};

/// The slot actor.
pub struct GpuSlot;

/// What a slot needs to start.
pub struct GpuSlotArgs {
    /// Device index.
    pub slot: u32,
    /// The model.
    pub backend: Arc<dyn Backend>,
    /// JetStream handles.
    pub resources: Resources,
    /// NATS client, for progress events.
    pub client: async_nats::Client,
    /// Where the records of its jobs are written (through the coordinator).
    pub records: crate::records::RecordWriter,
    /// MP4 settings.
    pub video: VideoConfig,
    /// Object-store chunk size, bytes.
    pub object_chunk_bytes: usize,
    /// The report heartbeats read; the slot keeps it current.
    pub report: Arc<Mutex<SlotReport>>,
    /// Woken whenever the slot becomes busy or free, so a heartbeat goes out at once.
    pub changed: Arc<Notify>,
    /// The device's memory, for the report.
    pub memory: DeviceMemory,
    /// Growth above the memory in use after the first job that marks the slot unhealthy
    /// (0: never).
    pub memory_growth_limit_bytes: u64,
    /// Where the memory after a job is read when the backend cannot measure its device (a
    /// CUDA device): the GPU's, from NVML.
    pub gpu_memory: crate::nvml::GpuMemory,
}

struct Running {
    job_id: JobId,
    attempt: u32,
    lease_ms: u64,
    shape: JobShape,
    stop: Arc<StopFlag>,
    started: Instant,
    last_step: Instant,
    /// Denoising steps done (as last reported by the worker).
    steps_done: u32,
}

/// The slot actor's state.
pub struct GpuSlotState {
    args: GpuSlotArgs,
    work: std::sync::mpsc::Sender<WorkItem>,
    running: Option<Running>,
    draining: bool,
    memory_watch: MemoryWatch,
    /// Memory in use after the last job, when measured.
    measured_used_bytes: Option<u64>,
    /// Why the slot takes no more work (its memory did not come back).
    unhealthy: Option<String>,
}

impl Drop for GpuSlotState {
    /// A slot actor that stops or fails abandons its job at the next step boundary, so a
    /// restarted slot never shares the device with a leftover run (the lease expires and
    /// the coordinator retries the job).
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.set(StopReason::Abandon);
        }
    }
}

impl GpuSlotState {
    /// What [`output`]'s writes go through, for the job running now.
    fn io(&self) -> SlotIo<'_> {
        SlotIo {
            resources: &self.args.resources,
            records: &self.args.records,
            client: &self.args.client,
            chunk_bytes: self.args.object_chunk_bytes,
            stop: self.running.as_ref().map(|running| &*running.stop),
        }
    }
}

impl Actor for GpuSlot {
    type Msg = GpuSlotMsg;
    type State = GpuSlotState;
    type Arguments = GpuSlotArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: GpuSlotArgs,
    ) -> Result<GpuSlotState, ActorProcessingErr> {
        let (work, queue) = std::sync::mpsc::channel::<WorkItem>();
        let backend = Arc::clone(&args.backend);
        let video = args.video.clone();
        let slot = args.slot;
        let gpu_memory = args.gpu_memory.clone();
        let gpu_memory_in_use = move || gpu_memory.used_bytes(slot);
        // The worker thread lives as long as the channel: dropping the state ends it.
        std::thread::Builder::new()
            .name(format!("gpu-slot-{slot}"))
            .spawn(move || worker(backend.as_ref(), &video, &gpu_memory_in_use, &queue))?;
        let memory_watch = MemoryWatch::new(args.memory_growth_limit_bytes);
        Ok(GpuSlotState {
            args,
            work,
            running: None,
            draining: false,
            memory_watch,
            measured_used_bytes: None,
            unhealthy: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: GpuSlotMsg,
        state: &mut GpuSlotState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GpuSlotMsg::Start(assign, reply) => start(myself, *assign, reply, state).await,
            GpuSlotMsg::Cancel { job_id, attempt } => {
                if let Some(running) = state
                    .running
                    .as_ref()
                    .filter(|r| r.job_id == job_id && r.attempt == attempt)
                {
                    tracing::info!(%job_id, attempt, "cancelling at the next step boundary");
                    running.stop.set(StopReason::Abandon);
                }
            }
            GpuSlotMsg::Pause {
                job_id,
                attempt,
                reply,
            } => {
                let _ = reply.send(pause(state, job_id, attempt));
            }
            GpuSlotMsg::Drain => state.draining = true,
            GpuSlotMsg::Abort => {
                if let Some(running) = &state.running {
                    hand_back(running);
                }
            }
            GpuSlotMsg::StepCompleted {
                job_id,
                attempt,
                progress,
            } => step_completed(job_id, attempt, progress, state).await,
            GpuSlotMsg::LatentDenoised {
                job_id,
                attempt,
                bytes,
            } => {
                if current(state, job_id, attempt).is_some() {
                    // A failure is logged there; the job goes on without a checkpoint.
                    save_latent(&state.io(), &latent_object(job_id, attempt), bytes).await;
                }
            }
            GpuSlotMsg::DecodeProgressed { job_id, attempt } => {
                if let Some(running) = current(state, job_id, attempt) {
                    // All steps are done; the write renews the lease (and a refusal stops
                    // the decode at its next chunk).
                    let steps = running.shape.steps;
                    let event = JobEvent::Progressed {
                        attempt,
                        progress: Progress {
                            step: steps,
                            total_steps: steps,
                        },
                        lease_deadline_ms: now_ms() + running.lease_ms,
                    };
                    write(&state.io(), job_id, &event).await;
                }
            }
            GpuSlotMsg::EncodingStarted { job_id, attempt } => {
                if let Some(running) = current(state, job_id, attempt) {
                    let event = JobEvent::EncodingStarted {
                        attempt,
                        lease_deadline_ms: now_ms() + running.lease_ms,
                    };
                    write(&state.io(), job_id, &event).await;
                    publish_progress(&state.io(), job_id, attempt, JobState::Encoding, None).await;
                }
            }
            GpuSlotMsg::JobFinished {
                job_id,
                attempt,
                outcome,
                memory_used_bytes,
            } => {
                if let Some(used) = memory_used_bytes {
                    measured_memory(state, used);
                }
                if current(state, job_id, attempt).is_some() {
                    finish(job_id, attempt, outcome, state).await;
                } else {
                    report_changed(state);
                }
            }
            GpuSlotMsg::MemoryMeasured { used_bytes } => {
                measured_memory(state, used_bytes);
                report_changed(state);
            }
            GpuSlotMsg::Status(reply) => {
                let _ = reply.send(report(state));
            }
        }
        Ok(())
    }
}

/// Whether the slot will pause `job_id` (`attempt`) at its next step boundary: only while
/// it runs that attempt, is still denoising and is not being stopped for another reason.
fn pause(state: &GpuSlotState, job_id: JobId, attempt: u32) -> PreemptReply {
    let refused = |reason: &str| PreemptReply::Refused {
        reason: reason.to_owned(),
    };
    let Some(running) = current(state, job_id, attempt) else {
        return refused("the slot is not running this attempt");
    };
    if state.draining {
        return refused("the node is shutting down");
    }
    if running.steps_done >= running.shape.steps {
        return refused("denoising is done; the job is decoding");
    }
    match running.stop.request(StopReason::Pause) {
        Ok(()) | Err(StopReason::Pause) => {
            tracing::info!(%job_id, attempt, steps_done = running.steps_done, "pausing at the next step boundary");
            PreemptReply::Pausing
        }
        Err(_) => refused("the job is being stopped"),
    }
}

/// Shutdown with a job still running: a job that still denoises pauses at its next step
/// boundary with its latent saved (another node resumes it from there); one that decodes
/// stops and is failed as retryable (its denoised latent is saved: the retry only decodes).
/// A job already being stopped for another reason keeps that reason.
fn hand_back(running: &Running) {
    let reason = if running.steps_done < running.shape.steps {
        StopReason::HandBack
    } else {
        StopReason::Shutdown
    };
    match running.stop.request(reason) {
        Ok(()) => {
            tracing::info!(job_id = %running.job_id, attempt = running.attempt, steps_done = running.steps_done, ?reason, "shutting down: handing the job back");
        }
        Err(already) => {
            tracing::info!(job_id = %running.job_id, attempt = running.attempt, ?already, "shutting down: the job is already being stopped");
        }
    }
}

fn current(state: &GpuSlotState, job_id: JobId, attempt: u32) -> Option<&Running> {
    state
        .running
        .as_ref()
        .filter(|r| r.job_id == job_id && r.attempt == attempt)
}

fn report(state: &GpuSlotState) -> SlotReport {
    state
        .args
        .report
        .lock()
        .map(|r| r.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
}

/// Brings the report in line with `state.running` and wakes the heartbeat.
fn report_changed(state: &GpuSlotState) {
    let running = state.running.as_ref();
    let mut report = state
        .args
        .report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    report.job = running.map(|r| SlotJob {
        job_id: r.job_id,
        attempt: r.attempt,
    });
    report.memory_total_bytes = state.args.memory.total_bytes();
    report.memory_free_bytes = match (running, state.measured_used_bytes) {
        // Idle with a measurement: what is really free.
        (None, Some(used)) => state.args.memory.total_bytes().saturating_sub(used),
        _ => state.args.memory.free_bytes(running.map(|r| &r.shape)),
    };
    report.healthy = state.unhealthy.is_none();
    report.unhealthy_reason.clone_from(&state.unhealthy);
    drop(report);
    metrics::set_slot_busy(state.args.slot, running.is_some());
    state.args.changed.notify_one();
}

async fn start(
    myself: ActorRef<GpuSlotMsg>,
    assign: Assign,
    reply: RpcReplyPort<AssignReply>,
    state: &mut GpuSlotState,
) {
    let refusal = if state.draining {
        Some("node is shutting down".to_owned())
    } else if let Some(reason) = &state.unhealthy {
        Some(format!("slot unhealthy: {reason}"))
    } else {
        state
            .running
            .as_ref()
            .map(|running| format!("slot busy with job {}", running.job_id))
    };
    if let Some(reason) = refusal {
        let _ = reply.send(AssignReply::Rejected { reason });
        return;
    }
    let _ = reply.send(AssignReply::Accepted);
    let (job_id, attempt) = (assign.job_id, assign.attempt);
    let started = JobEvent::Started {
        attempt,
        lease_deadline_ms: now_ms() + assign.lease_ms,
    };
    if let Err(error) = state.args.records.apply(job_id, &started).await {
        tracing::warn!(%job_id, attempt, %error, "not starting: the record refused the start");
        return;
    }
    let stop = Arc::new(StopFlag::new());
    let now = Instant::now();
    state.running = Some(Running {
        job_id,
        attempt,
        lease_ms: assign.lease_ms,
        shape: assign.shape,
        stop: Arc::clone(&stop),
        started: now,
        last_step: now,
        steps_done: assign.resume.as_ref().map_or(0, |r| r.step),
    });
    report_changed(state);
    tracing::info!(%job_id, attempt, slot = state.args.slot, frames = assign.shape.num_frames, "job started");
    let checkpoint = if attempt > 1 {
        load_latent(&state.io(), job_id, attempt).await
    } else {
        None
    };
    let resume_latent = match &assign.resume {
        Some(point) => read_latent(&state.io(), &point.latent_object).await,
        None => None,
    };
    let job = BackendJob {
        job_id,
        attempt,
        spec: assign.spec,
        shape: assign.shape,
        seed: assign.seed,
        resume: assign.resume,
        checkpoint,
        resume_latent,
    };
    if state
        .work
        .send(WorkItem {
            job,
            stop,
            slot: myself,
        })
        .is_err()
    {
        finish(
            job_id,
            attempt,
            Err(BackendError::Internal(
                "slot worker thread is gone".to_owned(),
            )),
            state,
        )
        .await;
    }
}

/// Records the memory in use after a job; memory that did not come back marks the slot
/// unhealthy (it refuses work and says why in its heartbeat).
fn measured_memory(state: &mut GpuSlotState, used_bytes: u64) {
    state.measured_used_bytes = Some(used_bytes);
    if let Err(reason) = state.memory_watch.after_job(used_bytes)
        && state.unhealthy.is_none()
    {
        tracing::error!(slot = state.args.slot, %reason, "slot unhealthy");
        state.unhealthy = Some(reason);
    }
}

async fn step_completed(job_id: JobId, attempt: u32, progress: Progress, state: &mut GpuSlotState) {
    let Some(running) = state
        .running
        .as_mut()
        .filter(|r| r.job_id == job_id && r.attempt == attempt)
    else {
        return;
    };
    metrics::record_step(running.last_step.elapsed(), &running.shape);
    running.last_step = Instant::now();
    running.steps_done = progress.step;
    let event = JobEvent::Progressed {
        attempt,
        progress,
        lease_deadline_ms: now_ms() + running.lease_ms,
    };
    write(&state.io(), job_id, &event).await;
    publish_progress(
        &state.io(),
        job_id,
        attempt,
        JobState::Running,
        Some(progress),
    )
    .await;
}

/// Applies `event`; a refusal (cancelled, fenced out) stops the job without further writes.
async fn finish(
    job_id: JobId,
    attempt: u32,
    outcome: Result<Ran, BackendError>,
    state: &mut GpuSlotState,
) {
    let stop_reason = state
        .running
        .as_ref()
        .map_or(StopReason::None, |r| r.stop.get());
    let elapsed = state.running.as_ref().map(|r| r.started.elapsed());
    let label = match (outcome, stop_reason) {
        (Ok(Ran::Encoded(encoded)), _) => store_video(job_id, attempt, encoded, &state.io()).await,
        (Err(BackendError::Stopped), StopReason::Abandon) => "abandoned",
        (Ok(Ran::Paused(paused)), reason) => {
            let paused_as = if reason == StopReason::HandBack {
                "handed_back"
            } else {
                "preempted"
            };
            paused_job(state, job_id, attempt, paused, paused_as).await
        }
        (Err(error), reason) => {
            let (failure, label) = if matches!(reason, StopReason::Shutdown | StopReason::HandBack)
            {
                let message =
                    "the GPU node shut down during the job; it will be retried".to_owned();
                (
                    JobFailure {
                        code: ErrorCode::Unavailable,
                        message,
                        retryable: true,
                    },
                    "handed_back",
                )
            } else {
                tracing::warn!(%job_id, attempt, %error, "job failed");
                (
                    JobFailure {
                        code: error.code(),
                        message: error.to_string(),
                        retryable: error.retryable(),
                    },
                    "failed",
                )
            };
            write(
                &state.io(),
                job_id,
                &JobEvent::Failed {
                    attempt,
                    failure,
                    retry_at_ms: now_ms() + RETRY_DELAY_MS,
                },
            )
            .await;
            label
        }
    };
    metrics::record_job(label, elapsed.unwrap_or_default());
    tracing::info!(%job_id, attempt, outcome = label, "slot free");
    state.running = None;
    report_changed(state);
}

/// Saves a paused job's state under `<job>/paused/<attempt>` (the latent checkpoint's format
/// and store, under its own name so that a retry never mistakes a half-denoised latent for
/// a denoised one) and writes `preempted` with where to resume (fenced by the attempt). A
/// state that cannot be saved resumes from step 0: the same video, later. Returns
/// `paused_as` (the outcome label) once written, `abandoned` if the record refused it.
async fn paused_job(
    state: &GpuSlotState,
    job_id: JobId,
    attempt: u32,
    paused: crate::backend::PausedState,
    paused_as: &'static str,
) -> &'static str {
    let object = paused_object(job_id, attempt);
    let saved = match paused.latent {
        Some(latent) => save_latent(&state.io(), &object, latent.to_bytes()).await,
        None => true,
    };
    let resume = ResumePoint {
        step: if saved { paused.steps_done } else { 0 },
        latent_object: object,
    };
    tracing::info!(%job_id, attempt, step = resume.step, "job paused; slot free");
    if write(
        &state.io(),
        job_id,
        &JobEvent::Preempted { attempt, resume },
    )
    .await
    {
        paused_as
    } else {
        "abandoned"
    }
}
