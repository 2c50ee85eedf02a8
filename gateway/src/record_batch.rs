//! Group commit of new job records. With `sync_interval: always` a single nats-server syncs
//! each stored message of a stream on its own, so one record per write caps submissions at
//! the disk's synced writes per second. Submissions that arrive while earlier records'
//! writes are in flight are stored together, as one JetStream atomic batch
//! ([`JobStore::create_batch`]: all stored with one synced write, or none); an idle gateway
//! still writes each record at once, alone. Each submission learns its own record's fate,
//! as it would alone: a batch refused because one of its records exists already (a repeated
//! Idempotency-Key) is split in halves and each written again, and one refused otherwise (a
//! server without atomic batches, a lost acknowledgement) is written record by record.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_nats::jetstream;
use futures::future::{BoxFuture, join_all};
use protocol::jetstream::{BatchError, JobStore, StoreError};
use protocol::{JobId, JobRecord, codec};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics;

/// One submission's record, waiting for its write.
struct Pending {
    job_id: JobId,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// How long a creator writes every record alone after the stream refused a batch as
/// unsupported, before it tries a batch again (an admin may turn `allow_atomic` on).
const UNSUPPORTED_PAUSE_MS: u64 = 60_000;

/// What a creator's batches did, since it started.
#[derive(Debug, Default)]
struct Stats {
    batches: AtomicU64,
    batched_records: AtomicU64,
    /// Until when (ms since the epoch) every record is written alone: the stream refused a
    /// batch as unsupported.
    alone_until_ms: AtomicU64,
}

/// Creates job records, grouping concurrent creates into atomic batches of at most
/// `max_batch` records while the records' stream takes them.
pub struct RecordCreator {
    store: JobStore,
    context: jetstream::Context,
    max_batch: usize,
    in_flight: usize,
    stats: Arc<Stats>,
    /// The writer task's queue, started by the first create (inside the runtime).
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl RecordCreator {
    /// A creator writing to `store` through `context`, in batches of at most `max_batch`
    /// records (1: every record alone), with at most `in_flight` writes at a time
    /// (submissions arriving meanwhile wait for the next batch). A stream that takes no
    /// atomic batches (`mochi` turns `allow_atomic` on) refuses the first; then every
    /// record is written alone for a minute, and a batch is tried again.
    pub fn new(
        store: JobStore,
        context: jetstream::Context,
        max_batch: usize,
        in_flight: usize,
    ) -> Self {
        Self {
            store,
            context,
            max_batch: max_batch.clamp(1, protocol::jetstream::MAX_ATOMIC_BATCH),
            in_flight: in_flight.max(1),
            stats: Arc::default(),
            queue: OnceLock::new(),
        }
    }

    /// Largest batch this creator writes (1: it writes every record alone).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Atomic batches stored so far.
    pub fn batches(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// Records stored in atomic batches so far.
    pub fn batched_records(&self) -> u64 {
        self.stats.batched_records.load(Ordering::Relaxed)
    }

    /// Creates the record unless one exists; whether this call created it (as
    /// [`JobStore::create`]). A record whose caller stopped waiting (dropped the future)
    /// before its write began is not written.
    pub async fn create(&self, record: &JobRecord) -> Result<bool, StoreError> {
        let job_id = record.id;
        let bytes = codec::encode(record).map_err(|source| StoreError::Codec { job_id, source })?;
        if self.max_batch <= 1 {
            metrics::record_record_write(1);
            return self.store.create_encoded(job_id, bytes).await;
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_queued(
                self.store.clone(),
                self.context.clone(),
                self.max_batch,
                self.in_flight,
                Arc::clone(&self.stats),
                receiver,
            ));
            sender
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(pending)) = queue.send(Pending {
            job_id,
            bytes,
            reply,
        }) {
            // The writer task ended (only if the runtime is going away): write it here.
            return self.store.create_encoded(job_id, pending.bytes).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Nats {
                job_id,
                source: "the record writer stopped before storing the record".into(),
            })
        })
    }
}

/// Takes the queued records in batches, at most `in_flight` writes at a time, until every
/// sender is gone.
async fn write_queued(
    store: JobStore,
    context: jetstream::Context,
    max_batch: usize,
    in_flight: usize,
    stats: Arc<Stats>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // Whatever arrived while the writes in flight were busy goes in this batch, except
        // the submissions whose request stopped waiting (answered 503: retry), which are not
        // written at all.
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.extend(Some(first).filter(|pending| !pending.reply.is_closed()));
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(pending) if pending.reply.is_closed() => {}
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (store, context, stats) = (store.clone(), context.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            write(&store, &context, &stats, batch).await;
            drop(permit);
        });
    }
}

/// Answers a submission with its record's fate.
type Reply = oneshot::Sender<Result<bool, StoreError>>;

/// Writes `batch` and answers each submission. A job id twice in one batch (one
/// Idempotency-Key sent twice at once) would spoil it: the repeats are written alone after it.
async fn write(store: &JobStore, context: &jetstream::Context, stats: &Stats, batch: Vec<Pending>) {
    if stats.alone_until_ms.load(Ordering::Relaxed) > protocol::now_ms() {
        let (records, replies) = batch
            .into_iter()
            .map(|pending| ((pending.job_id, pending.bytes), pending.reply))
            .unzip();
        return write_alone(store, records, replies).await;
    }
    let mut seen = HashSet::with_capacity(batch.len());
    let (first, repeats): (Vec<Pending>, Vec<Pending>) = batch
        .into_iter()
        .partition(|pending| seen.insert(pending.job_id));
    let (records, replies) = first
        .into_iter()
        .map(|pending| ((pending.job_id, pending.bytes), pending.reply))
        .unzip();
    write_group(store, context, stats, records, replies).await;
    let (records, replies) = repeats
        .into_iter()
        .map(|pending| ((pending.job_id, pending.bytes), pending.reply))
        .unzip();
    write_alone(store, records, replies).await;
}

/// Writes `records` as one atomic batch. When one of them exists already (a repeated
/// Idempotency-Key), each half is written the same way, so a repeat costs its batch a few
/// more writes, not one per record; when the batch fails otherwise, record by record.
fn write_group<'a>(
    store: &'a JobStore,
    context: &'a jetstream::Context,
    stats: &'a Stats,
    mut records: Vec<(JobId, Vec<u8>)>,
    mut replies: Vec<Reply>,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if records.len() <= 1 {
            return write_alone(store, records, replies).await;
        }
        match store.create_batch(context, &records).await {
            Ok(()) => {
                metrics::record_record_write(records.len());
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
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
                futures::future::join(
                    write_group(store, context, stats, records, replies),
                    write_group(store, context, stats, later, later_replies),
                )
                .await;
            }
            Err(BatchError::Unsupported) => {
                metrics::record_batch_refused();
                let until = protocol::now_ms() + UNSUPPORTED_PAUSE_MS;
                if stats.alone_until_ms.swap(until, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        stream = %store.kv.stream_name,
                        "the job records' stream takes no atomic batches (nats-server 2.12+ with allow_atomic, which `mochi` sets up, does): new records are written one by one"
                    );
                }
                write_alone(store, records, replies).await;
            }
            Err(error) => {
                metrics::record_batch_refused();
                tracing::debug!(records = records.len(), error = ?error, "atomic batch not stored; writing its records one by one");
                write_alone(store, records, replies).await;
            }
        }
    })
}

/// Writes each of `records` alone, side by side, and answers its submission.
async fn write_alone(store: &JobStore, records: Vec<(JobId, Vec<u8>)>, replies: Vec<Reply>) {
    join_all(
        records
            .into_iter()
            .zip(replies)
            .map(|((job_id, bytes), reply)| async move {
                metrics::record_record_write(1);
                let _ = reply.send(store.create_encoded(job_id, bytes).await);
            }),
    )
    .await;
}
