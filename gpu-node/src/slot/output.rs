//! What a slot writes: its job's record transitions (fenced by the attempt), progress
//! events, latents, and the finished video (probed, hashed, uploaded to the object store
//! with its thumbnail and spritesheet, then recorded as the attempt's result). Everything
//! goes through a [`SlotIo`], which the slot actor lends; nothing here reaches back into
//! the actor's state.

use std::time::Duration;

use async_nats::jetstream::object_store::{ObjectMetadata, PutError, PutErrorKind};
use protocol::messages::ProgressEvent;
use protocol::record::{JobEvent, JobFailure, Progress, VideoResult};
use protocol::{ErrorCode, JobId, JobState, codec, names, now_ms};
use sha2::{Digest, Sha256};

use protocol::jetstream::Resources;

use super::messages::Encoded;
use super::stop::{StopFlag, StopReason};
use crate::backend::LatentCheckpoint;
use crate::records::{RecordWriteError, RecordWriter};
use crate::retry::Backoff;

/// Delay before a job failed on this node may be retried, ms.
pub(super) const RETRY_DELAY_MS: u64 = 2_000;
/// First wait before an upload is tried again.
const UPLOAD_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two tries of an upload.
const UPLOAD_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a slot's writes go through.
pub(super) struct SlotIo<'a> {
    /// The object store.
    pub(super) resources: &'a Resources,
    /// The job records (through the coordinator).
    pub(super) records: &'a RecordWriter,
    /// For progress events.
    pub(super) client: &'a async_nats::Client,
    /// Object-store chunk size of uploads, bytes.
    pub(super) chunk_bytes: usize,
    /// The running job's stop flag: a transition its record refuses abandons the job.
    pub(super) stop: Option<&'a StopFlag>,
}

/// Applies `event` to the job's record (through the coordinator); true once written. A
/// refusal (a newer attempt or another node owns the job, or it was cancelled or ended
/// elsewhere) abandons the running job at its next step boundary.
pub(super) async fn write(io: &SlotIo<'_>, job_id: JobId, event: &JobEvent) -> bool {
    match io.records.apply(job_id, event).await {
        Ok(()) => true,
        Err(RecordWriteError::Refused(reason)) => {
            tracing::info!(%job_id, event = event.name(), reason, "stopping job");
            if let Some(stop) = io.stop {
                stop.set(StopReason::Abandon);
            }
            false
        }
        Err(error) => {
            tracing::warn!(%job_id, event = event.name(), %error, "cannot write job record");
            false
        }
    }
}

pub(super) async fn publish_progress(
    io: &SlotIo<'_>,
    job_id: JobId,
    attempt: u32,
    job_state: JobState,
    progress: Option<Progress>,
) {
    let event = ProgressEvent {
        job_id,
        attempt,
        state: job_state,
        step: progress.map_or(0, |p| p.step),
        total_steps: progress.map_or(0, |p| p.total_steps),
        at_ms: now_ms(),
    };
    if let Ok(bytes) = codec::encode(&event) {
        let _ = io
            .client
            .publish(
                names::events_subject(&job_id.to_string(), io.records.node().as_str()),
                bytes.into(),
            )
            .await;
    }
}

/// Probes and hashes the MP4, uploads it and then its thumbnail and spritesheet beside it,
/// and records the attempt's result once all three are stored. An unreadable MP4 or a
/// failed upload fails the attempt (retryable) and records no result.
pub(super) async fn store_video(
    job_id: JobId,
    attempt: u32,
    encoded: Encoded,
    io: &SlotIo<'_>,
) -> &'static str {
    let Encoded {
        mp4,
        thumbnail,
        spritesheet,
    } = encoded;
    let info = match crate::mp4::probe(&mp4) {
        Ok(info) => info,
        Err(error) => {
            let message = format!("encoded video is unreadable: {error}");
            fail_retryable(io, job_id, attempt, ErrorCode::JobFailed, message).await;
            return "failed";
        }
    };
    let result = VideoResult {
        object_name: names::video_object(&job_id.to_string(), attempt),
        size_bytes: mp4.len() as u64,
        sha256: protocol::codec::hex(&Sha256::digest(&mp4)),
        duration_ms: u64::from(info.decoded_frames) * 1000 / u64::from(info.fps.max(1)),
        num_frames: info.decoded_frames,
        width: info.width,
        height: info.height,
        fps: info.fps,
    };
    let objects = [
        ("video", result.object_name.clone(), mp4),
        ("thumbnail", result.thumbnail_object(), thumbnail),
        ("spritesheet", result.spritesheet_object(), spritesheet),
    ];
    let stored: Vec<String> = objects.iter().map(|(_, name, _)| name.clone()).collect();
    let upload = std::time::Instant::now();
    for (what, name, bytes) in objects {
        if let Err(error) = put_object(io, &name, bytes, io.records.final_budget()).await {
            tracing::warn!(%job_id, attempt, object = %name, %error, "cannot store the {what}");
            let message = format!("the {what} could not be stored");
            fail_retryable(io, job_id, attempt, ErrorCode::Unavailable, message).await;
            return "failed";
        }
    }
    crate::metrics::record_phase("upload", upload.elapsed());
    if write(io, job_id, &JobEvent::Succeeded { attempt, result }).await {
        "succeeded"
    } else {
        // Cancelled, deleted or superseded meanwhile: nothing will ever point at these files.
        for name in stored {
            if let Err(error) = io.resources.videos.delete(&name).await {
                tracing::warn!(%job_id, attempt, object = %name, %error, "cannot remove an abandoned attempt's file");
            }
        }
        "abandoned"
    }
}

/// Uploads `bytes` to the object store under `name`, in chunks of `object_chunk_bytes`.
/// A failure JetStream may recover from (no stream leader while a replicated bucket elects
/// one after a server died, a timed-out chunk or metadata write) is tried again with
/// backoff for up to `budget`: the attempt's work is not thrown away over a few seconds
/// of failover. The chunks of a failed try are left to the bucket's age limit.
async fn put_object(
    io: &SlotIo<'_>,
    name: &str,
    bytes: Vec<u8>,
    budget: Duration,
) -> Result<(), PutError> {
    let metadata = ObjectMetadata {
        name: name.to_owned(),
        chunk_size: Some(io.chunk_bytes),
        ..Default::default()
    };
    let mut backoff = Backoff::new(UPLOAD_FIRST_BACKOFF, UPLOAD_MAX_BACKOFF, budget);
    loop {
        let put = io
            .resources
            .videos
            .put(metadata.clone(), &mut std::io::Cursor::new(&bytes))
            .await;
        let error = match put {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        let transient = matches!(
            error.kind(),
            PutErrorKind::PublishChunks | PutErrorKind::PublishMetadata | PutErrorKind::TimedOut
        );
        if !transient {
            return Err(error);
        }
        tracing::debug!(object = name, %error, "object not stored");
        if !backoff.pause().await {
            return Err(error);
        }
    }
}

/// Object name of the latent an attempt saved while decoding.
pub(super) fn latent_object(job_id: JobId, attempt: u32) -> String {
    names::latent_object(&job_id.to_string(), attempt)
}

/// Object name of the state a paused attempt saved (the latent after its last step).
pub(super) fn paused_object(job_id: JobId, attempt: u32) -> String {
    names::paused_object(&job_id.to_string(), attempt)
}

/// Saves a latent ([`LatentCheckpoint::to_bytes`]) under `name`: an attempt's denoised
/// latent ([`latent_object`]) or a paused attempt's state ([`paused_object`]); true once
/// stored.
pub(super) async fn save_latent(io: &SlotIo<'_>, name: &str, bytes: Vec<u8>) -> bool {
    match put_object(io, name, bytes, Duration::ZERO).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(object = name, %error, "cannot save the latent; a retry or resume will denoise again");
            false
        }
    }
}

/// The newest latent an earlier attempt of the job saved, if any.
pub(super) async fn load_latent(
    io: &SlotIo<'_>,
    job_id: JobId,
    attempt: u32,
) -> Option<LatentCheckpoint> {
    for earlier in (1..attempt).rev() {
        if let Some(checkpoint) = read_latent(io, &latent_object(job_id, earlier)).await {
            tracing::info!(%job_id, attempt, from_attempt = earlier, "resuming from a saved latent");
            return Some(checkpoint);
        }
    }
    None
}

/// A latent stored under `name` ([`LatentCheckpoint::to_bytes`]), if present and readable.
pub(super) async fn read_latent(io: &SlotIo<'_>, name: &str) -> Option<LatentCheckpoint> {
    use tokio::io::AsyncReadExt;
    let mut object = io.resources.videos.get(name).await.ok()?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.ok()?;
    let checkpoint = LatentCheckpoint::from_bytes(&bytes);
    if checkpoint.is_none() {
        tracing::warn!(object = name, "unreadable saved latent ignored");
    }
    checkpoint
}

/// Fails the attempt with a retryable error (another attempt, maybe elsewhere, may succeed).
pub(super) async fn fail_retryable(
    io: &SlotIo<'_>,
    job_id: JobId,
    attempt: u32,
    code: ErrorCode,
    message: String,
) {
    let failure = JobFailure {
        code,
        message,
        retryable: true,
    };
    let retry_at_ms = now_ms() + RETRY_DELAY_MS;
    write(
        io,
        job_id,
        &JobEvent::Failed {
            attempt,
            failure,
            retry_at_ms,
        },
    )
    .await;
}
