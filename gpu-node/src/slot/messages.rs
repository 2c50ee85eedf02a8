//! What the slot actor is told (by the node, the NATS handlers and its own worker thread)
//! and what the worker hands back when a job ends. A leaf module, so the actor, the worker
//! and the upload can all use it without reaching back into one another.

use protocol::JobId;
use protocol::messages::{Assign, AssignReply, PreemptReply, SlotReport};
use protocol::record::Progress;
use ractor::RpcReplyPort;

use crate::backend::{BackendError, PausedState};

/// Messages of the slot actor.
pub enum GpuSlotMsg {
    /// Take a job, replying whether the slot accepts it.
    Start(Box<Assign>, RpcReplyPort<AssignReply>),
    /// Stop a job at its next step boundary.
    Cancel {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// Pause a job at its next denoising-step boundary (preempted for another job),
    /// replying whether the slot will.
    Pause {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// Told whether the slot pauses it.
        reply: RpcReplyPort<PreemptReply>,
    },
    /// Refuse new work from now on (shutdown).
    Drain,
    /// Stop the running job and hand it back (shutdown deadline passed).
    Abort,
    /// The worker finished a denoising step.
    StepCompleted {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// Steps done and in all.
        progress: Progress,
    },
    /// The worker decoded another chunk of latent frames (renews the lease while decoding).
    DecodeProgressed {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// The worker denoised the job and decodes on: save the latent meanwhile, so that a
    /// retry skips denoising (the mailbox is in order: it is saved before the job's end is
    /// handled).
    LatentDenoised {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// The serialised latent.
        bytes: Vec<u8>,
    },
    /// The worker finished denoising and decoding and is encoding the MP4.
    EncodingStarted {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// The worker finished the job: the MP4 and its previews, or why not.
    JobFinished {
        /// The job.
        job_id: JobId,
        /// The attempt.
        attempt: u32,
        /// The MP4 and its previews, or the failure.
        outcome: Result<Ran, BackendError>,
        /// Memory the device had in use after the job, when the backend measures it.
        memory_used_bytes: Option<u64>,
    },
    /// The worker read the GPU's memory in use after the job it last reported finished
    /// (from NVML, after the job's end so that a slow driver never holds the job up).
    MemoryMeasured {
        /// Bytes in use.
        used_bytes: u64,
    },
    /// The slot's report, for heartbeats and tests.
    Status(RpcReplyPort<SlotReport>),
}

/// What a finished job hands to the slot actor for upload.
#[derive(Debug)]
pub struct Encoded {
    /// The H.264 MP4.
    pub mp4: Vec<u8>,
    /// The middle frame, JPEG ([`crate::preview::thumbnail`]).
    pub thumbnail: Vec<u8>,
    /// Evenly spaced frames in a grid, JPEG ([`crate::preview::spritesheet`]).
    pub spritesheet: Vec<u8>,
}

/// How a job that did not fail ended on the thread.
#[derive(Debug)]
pub enum Ran {
    /// Generated and encoded, ready for upload.
    Encoded(Encoded),
    /// Paused at a step boundary with this state (preempted, or the node shutting down).
    Paused(PausedState),
}
