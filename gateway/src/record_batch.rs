//! Group commit of new job records. With `sync_interval: always` a single nats-server syncs
//! each stored message of a stream on its own, so one record per write caps submissions at
//! the disk's synced writes per second. Submissions that arrive while earlier records'
//! writes are in flight are stored together, as one JetStream atomic batch
//! ([`JobStore::create_batch`]: all stored with one synced write, or none); an idle gateway
//! still writes each record at once, alone, and so do a few records at a time: on one
//! nats-server a batch costs a fixed few synced writes (the server stages a batch for a
//! single-replica file stream in a file store of its own, made and removed per batch), so a
//! group smaller than [`Batching::min`] is written record by record, side by side. A write
//! may wait up to [`Batching::linger`] for the submitters the previous write answered, so
//! that closed-loop clients share one write instead of splitting into groups that take
//! turns. Each submission learns its own record's fate,
//! as it would alone: a batch refused because one of its records exists already (a repeated
//! Idempotency-Key) is split in halves and each written again, and one refused otherwise (a
//! server without atomic batches, a lost acknowledgement) is written record by record.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use futures::future::{BoxFuture, join_all};
use protocol::jetstream::{BatchError, JobStore, StoreError};
use protocol::{JobId, JobRecord, codec};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics;

/// How long a creator writes every record alone after the stream refused a batch as
/// unsupported, before it tries a batch again (an admin may turn `allow_atomic` on).
const UNSUPPORTED_PAUSE_MS: u64 = 60_000;

/// Most writes a linger that ran out is skipped for (after several in a row).
const MAX_LINGER_SKIP: u32 = 64;

/// Submissions waiting for the writer at most; a submission finding the queue full waits
/// (within its request's time) for room.
const QUEUE_CAPACITY: usize = 4096;

/// One submission's record, waiting for its write.
struct Pending {
    job_id: JobId,
    bytes: Vec<u8>,
    reply: Reply,
}

/// Answers a submission with its record's fate.
type Reply = oneshot::Sender<Result<bool, StoreError>>;

/// What a creator's batches did, since it started.
#[derive(Debug, Default)]
struct Stats {
    batches: AtomicU64,
    batched_records: AtomicU64,
    /// Until when (ms since the epoch) every record is written alone: the stream refused a
    /// batch as unsupported.
    alone_until_ms: AtomicU64,
}

/// How a [`RecordCreator`] groups its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most records in one atomic batch (1: every record alone).
    pub max: usize,
    /// Fewest records worth a batch: a smaller group is written record by record, side by
    /// side (at least 2).
    pub min: usize,
    /// Writes at a time: submissions arriving meanwhile wait for the next write.
    pub in_flight: usize,
    /// Longest one write (a batch, or one record) may take before it counts as failed.
    pub timeout: Duration,
    /// Longest a write waits for the submitters the previous one answered (zero: never).
    pub linger: Duration,
}

/// Writes the records the queue hands it, and counts what it did.
struct Writer {
    store: JobStore,
    context: jetstream::Context,
    /// Fewest records written as one batch.
    min_batch: usize,
    /// Longest one write (a batch, or one record) may take before it counts as failed.
    timeout: Duration,
    stats: Arc<Stats>,
    /// Submissions waiting for their record's write (queued or in a write in flight).
    waiting: AtomicUsize,
    /// The most submissions waiting at once since the last write began: about how many
    /// submitters write now (a write with [`Batching::linger`] waits for that many).
    peak: AtomicUsize,
    /// `peak` when the last write ended.
    expected: AtomicUsize,
}

/// Creates job records, grouping concurrent creates into atomic batches while the records'
/// stream takes them.
pub struct RecordCreator {
    writer: Arc<Writer>,
    max_batch: usize,
    in_flight: usize,
    linger: Duration,
    /// The writer task's queue, started by the first create (inside the runtime).
    queue: OnceLock<mpsc::Sender<Pending>>,
}

impl RecordCreator {
    /// A creator writing to `store` through `context`, grouping as `batching` says. A NATS
    /// server before 2.12 gets every record alone; a stream that takes no atomic batches
    /// (`mochi` turns `allow_atomic` on) refuses the first, and then every record is written
    /// alone for a minute before a batch is tried again.
    pub fn new(store: JobStore, context: jetstream::Context, batching: Batching) -> Self {
        let version = context.client().server_info().version;
        let batches = takes_atomic_batches(&version);
        if !batches && batching.max > 1 {
            tracing::info!(%version, "nats-server before 2.12 takes no atomic batches: each new job record is written alone");
        }
        let min_batch = batching.min.max(2);
        // A minimum above the maximum leaves no batch to make: every record goes alone, at
        // once, without the queue.
        let max_batch = if batches && batching.max >= min_batch {
            batching.max.min(protocol::jetstream::MAX_ATOMIC_BATCH)
        } else {
            1
        };
        Self {
            writer: Arc::new(Writer {
                store,
                context,
                min_batch,
                timeout: batching.timeout,
                stats: Arc::default(),
                waiting: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                expected: AtomicUsize::new(0),
            }),
            max_batch,
            in_flight: batching.in_flight.max(1),
            linger: batching.linger,
            queue: OnceLock::new(),
        }
    }

    /// Largest batch this creator writes (1: it writes every record alone).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Atomic batches stored so far.
    pub fn batches(&self) -> u64 {
        self.writer.stats.batches.load(Ordering::Relaxed)
    }

    /// Records stored in atomic batches so far.
    pub fn batched_records(&self) -> u64 {
        self.writer.stats.batched_records.load(Ordering::Relaxed)
    }

    /// Creates the record unless one exists; whether this call created it (as
    /// [`JobStore::create`]). A record whose caller stopped waiting (dropped the future)
    /// before its write began is not written.
    pub async fn create(&self, record: &JobRecord) -> Result<bool, StoreError> {
        let job_id = record.id;
        let bytes = codec::encode(record).map_err(|source| StoreError::Codec { job_id, source })?;
        if self.max_batch <= 1 {
            metrics::record_record_write(1);
            return self.writer.store.create_encoded(job_id, bytes).await;
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(write_queued(
                Arc::clone(&self.writer),
                self.max_batch,
                self.in_flight,
                self.linger,
                receiver,
            ));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            job_id,
            bytes,
            reply,
        };
        let _waiting = Waiting::new(&self.writer);
        if let Err(mpsc::error::SendError(pending)) = queue.send(pending).await {
            // The writer task ended (only if the runtime is going away): write it here.
            return self
                .writer
                .store
                .create_encoded(job_id, pending.bytes)
                .await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Nats {
                job_id,
                source: "the record writer stopped before storing the record".into(),
            })
        })
    }
}

/// Whether a nats-server of `version` (`2.12.0`, `2.15.1-beta`) takes atomic batches; a
/// version that does not read as one is taken to (the stream's answer decides then).
fn takes_atomic_batches(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|part| part.trim_start_matches('v').parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (2, 12),
        _ => true,
    }
}

/// Counts a submission as waiting for its record's write until it is answered or gives up.
struct Waiting<'a>(&'a Writer);

impl<'a> Waiting<'a> {
    fn new(writer: &'a Writer) -> Self {
        let now = writer.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        writer.peak.fetch_max(now, Ordering::Relaxed);
        Self(writer)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes the queued records in batches, at most `in_flight` writes at a time, until every
/// sender is gone. A batch smaller than the most submissions that waited at once during the
/// last write (those it stored, and those that queued behind it) waits up to `linger` for
/// the rest: closed-loop submitters come back once answered.
async fn write_queued(
    writer: Arc<Writer>,
    max_batch: usize,
    in_flight: usize,
    linger: Duration,
    mut queue: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(in_flight));
    // A linger that ran out before the submitters came back (they take longer than it, or
    // were not coming) is skipped for the next `skip` writes, twice as many each time in a
    // row (up to `MAX_LINGER_SKIP`): it would only delay them.
    let mut skip = 0_u32;
    let mut backoff = 0_u32;
    while let Some(first) = queue.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // Whatever arrived while the writes in flight were busy goes in this batch, except
        // the submissions whose request stopped waiting (answered 503: retry), which are not
        // written at all.
        let mut batch = Vec::with_capacity(max_batch.min(64));
        let take = |pending: Pending, batch: &mut Vec<Pending>| {
            if !pending.reply.is_closed() {
                batch.push(pending);
            }
        };
        take(first, &mut batch);
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(pending) => take(pending, &mut batch),
                Err(_) => break,
            }
        }
        let wanted = writer.expected.load(Ordering::Relaxed).min(max_batch);
        if !linger.is_zero() && !batch.is_empty() && batch.len() < wanted {
            if skip > 0 {
                skip -= 1;
            } else {
                let until = tokio::time::Instant::now() + linger;
                while batch.len() < wanted {
                    match tokio::time::timeout_at(until, queue.recv()).await {
                        Ok(Some(pending)) => take(pending, &mut batch),
                        Ok(None) | Err(_) => break,
                    }
                }
                if batch.len() >= wanted {
                    backoff = 0;
                } else {
                    backoff = (backoff * 2).clamp(1, MAX_LINGER_SKIP);
                    skip = backoff;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let writer = Arc::clone(&writer);
        writer
            .peak
            .store(writer.waiting.load(Ordering::Relaxed), Ordering::Relaxed);
        tokio::spawn(async move {
            writer.write(batch).await;
            // Read before the permit goes: the next batch's wait is decided after it.
            writer
                .expected
                .store(writer.peak.load(Ordering::Relaxed), Ordering::Relaxed);
            drop(permit);
        });
    }
}

impl Writer {
    /// Writes `batch` and answers each submission. A job id twice in one batch (one
    /// Idempotency-Key sent twice at once) would spoil it: the repeats are written alone
    /// after it.
    async fn write(&self, batch: Vec<Pending>) {
        let split = |pendings: Vec<Pending>| -> (Vec<(JobId, Vec<u8>)>, Vec<Reply>) {
            pendings
                .into_iter()
                .map(|pending| ((pending.job_id, pending.bytes), pending.reply))
                .unzip()
        };
        if self.stats.alone_until_ms.load(Ordering::Relaxed) > protocol::now_ms() {
            let (records, replies) = split(batch);
            return self.write_alone(records, replies).await;
        }
        let mut seen = HashSet::with_capacity(batch.len());
        let (first, repeats): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|pending| seen.insert(pending.job_id));
        let (records, replies) = split(first);
        self.write_group(records, replies).await;
        let (records, replies) = split(repeats);
        self.write_alone(records, replies).await;
    }

    /// Writes `records` as one atomic batch, or record by record when they are fewer than a
    /// batch is worth. When one of them exists already (a repeated Idempotency-Key), each
    /// half is written the same way, one after the other, so a repeat costs its batch a few
    /// more writes, not one per record; when the batch fails otherwise, record by record.
    fn write_group(
        &self,
        mut records: Vec<(JobId, Vec<u8>)>,
        mut replies: Vec<Reply>,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if records.len() < self.min_batch {
                return self.write_alone(records, replies).await;
            }
            let written = tokio::time::timeout(
                self.timeout,
                self.store.create_batch(&self.context, &records),
            )
            .await
            .unwrap_or_else(|_| Err(BatchError::Failed("no acknowledgement in time".into())));
            match written {
                Ok(()) => {
                    metrics::record_record_write(records.len());
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .batched_records
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    for reply in replies {
                        let _ = reply.send(Ok(true));
                    }
                }
                Err(BatchError::Exists) => {
                    metrics::record_batch_refused();
                    let half = records.len() / 2;
                    let later = records.split_off(half);
                    let later_replies = replies.split_off(half);
                    self.write_group(records, replies).await;
                    self.write_group(later, later_replies).await;
                }
                Err(BatchError::Unsupported) => {
                    metrics::record_batch_refused();
                    let now = protocol::now_ms();
                    let before = self
                        .stats
                        .alone_until_ms
                        .swap(now + UNSUPPORTED_PAUSE_MS, Ordering::Relaxed);
                    if before <= now {
                        tracing::warn!(
                            stream = %self.store.kv.stream_name,
                            "the job records' stream takes no atomic batches (`mochi` turns allow_atomic on): new records are written one by one for a minute"
                        );
                    }
                    self.write_alone(records, replies).await;
                }
                Err(error) => {
                    metrics::record_batch_refused();
                    tracing::debug!(records = records.len(), error = ?error, "atomic batch not stored; writing its records one by one");
                    self.write_alone(records, replies).await;
                }
            }
        })
    }

    /// Writes each of `records` whose submission still waits alone, side by side, and
    /// answers it.
    async fn write_alone(&self, records: Vec<(JobId, Vec<u8>)>, replies: Vec<Reply>) {
        join_all(
            records
                .into_iter()
                .zip(replies)
                .filter(|(_, reply)| !reply.is_closed())
                .map(|((job_id, bytes), reply)| async move {
                    metrics::record_record_write(1);
                    let created = tokio::time::timeout(
                        self.timeout,
                        self.store.create_encoded(job_id, bytes),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::Nats {
                            job_id,
                            source: "no acknowledgement in time".into(),
                        })
                    });
                    let _ = reply.send(created);
                }),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_batches_from_nats_server_2_12_on() {
        assert!(takes_atomic_batches("2.12.0"));
        assert!(takes_atomic_batches("2.15.1"));
        assert!(takes_atomic_batches("2.14.0-beta.2"));
        assert!(takes_atomic_batches("3.0.0"));
        assert!(!takes_atomic_batches("2.11.9"));
        assert!(!takes_atomic_batches("2.9.10"));
        assert!(takes_atomic_batches("unknown"));
    }
}
