//! Connecting to NATS, creating the JetStream resources idempotently, and the job-record
//! store whose every write is a compare-and-set (feature `jetstream`).
//!
//! One file, past 500 lines: every stream and bucket is declared next to the one
//! compare-and-set loop that writes records, so their settings and the store that relies on
//! them are read together.

use std::time::Duration;

use async_nats::ConnectErrorKind;
use async_nats::jetstream::{self, kv, object_store, stream};

use crate::codec::{self, CodecError};
use crate::config::{JetStreamConfig, NatsConfig};
use crate::ids::JobId;
use crate::names;
use crate::record::{JobEvent, JobRecord, TransitionError};
use crate::shared_value;

/// A boxed error from the NATS client.
pub type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Why NATS or a JetStream resource could not be reached or created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The connection failed.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: NatsError,
    },
    /// A user is configured without a password.
    #[error("NATS user {user} has no password; set nats.password (MOCHI_NATS__PASSWORD)")]
    MissingPassword {
        /// The user.
        user: String,
    },
    /// A stream, bucket or object store could not be created or opened.
    #[error("cannot create or open JetStream resource {resource}")]
    Resource {
        /// Its name.
        resource: &'static str,
        /// The cause.
        #[source]
        source: NatsError,
    },
}

/// Gauge per NATS client (`client` label: the connection's name): 1 while connected, 0
/// while the client is reconnecting.
pub const NATS_CONNECTED: &str = "mochi_nats_connected";

/// Connects to NATS with this role's name and credentials (a `.creds` file, or a user and
/// password whose inboxes are then [`names::inbox_prefix`]), retrying for up to
/// `connect_timeout_s` so that a role may start before the server is ready. A refused
/// login is not retried.
pub async fn connect(
    config: &NatsConfig,
    client_name: &str,
) -> Result<async_nats::Client, SetupError> {
    let connect_error = |source: NatsError| SetupError::Connect {
        url: config.url.clone(),
        source,
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(config.connect_timeout_s.max(1));
    loop {
        let name = client_name.to_owned();
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let name = name.clone();
                async move {
                    let connected = match event {
                        async_nats::Event::Connected => 1.0,
                        async_nats::Event::Disconnected => 0.0,
                        _ => return,
                    };
                    metrics::gauge!(NATS_CONNECTED, "client" => name).set(connected);
                }
            });
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| connect_error(Box::new(e)))?;
        }
        if let Some(user) = &config.user {
            let password = config
                .password
                .as_ref()
                .ok_or_else(|| SetupError::MissingPassword { user: user.clone() })?;
            options = options
                .user_and_password(user.clone(), password.expose().to_owned())
                .custom_inbox_prefix(names::inbox_prefix(user));
        }
        match options.connect(seed_urls(&config.url)).await {
            Ok(client) => {
                metrics::describe_gauge!(
                    NATS_CONNECTED,
                    "1 while the NATS client is connected, 0 while it reconnects"
                );
                metrics::gauge!(NATS_CONNECTED, "client" => client_name.to_owned()).set(1.0);
                return Ok(client);
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
                ) =>
            {
                return Err(connect_error(Box::new(error)));
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(connect_error(Box::new(error)));
            }
            Err(error) => {
                tracing::debug!(%error, url = %config.url, "NATS not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The servers of a `url` setting: one URL, or several separated by commas (any server of
/// a cluster; the client learns the others from the one it reaches). A setting with no URL
/// in it is passed on whole, for the client to refuse.
pub fn seed_urls(url: &str) -> Vec<&str> {
    let seeds: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .collect();
    if seeds.is_empty() { vec![url] } else { seeds }
}

/// Handles to every JetStream resource mochi-serve uses.
#[derive(Clone)]
pub struct Resources {
    /// The JetStream context.
    pub context: jetstream::Context,
    /// `MOCHI_SUBMIT`, the submissions waiting for the intake.
    pub submit: stream::Stream,
    /// `MOCHI_DLQ`, dead letters.
    pub dlq: stream::Stream,
    /// `mochi_jobs`, the job records.
    pub jobs: JobStore,
    /// `mochi_nodes`, node heartbeats.
    pub nodes: kv::Store,
    /// `mochi_leader`, the coordinator leader lease.
    pub leader: kv::Store,
    /// `mochi_videos`, the MP4 files.
    pub videos: object_store::ObjectStore,
    /// `mochi_keys`, the API key records (hashes only) and the link-signing key: opened by
    /// [`ensure_resources`] (the admin), and by [`open_resources`] only for a role whose
    /// NATS user may read it (the gateway); `None` otherwise.
    pub keys: Option<kv::Store>,
}

/// How long start-up keeps trying to open the JetStream resources (JetStream may still be
/// recovering its store, or electing stream leaders, right after the server came up).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates every stream, bucket and object store that is missing, then opens the
/// [`Resources`] (safe to run from every process at once). This is the admin's job (and an
/// anonymous development setup's): a role's restricted NATS user may only open them, with
/// [`open_resources`]. Retries for up to a minute while JetStream is not ready yet, so that
/// a process started together with (or just before) its NATS server waits instead of crashing.
pub async fn ensure_resources(
    client: async_nats::Client,
    config: &JetStreamConfig,
) -> Result<Resources, SetupError> {
    retry_setup("JetStream not ready yet, retrying", || {
        Box::pin(try_ensure_resources(client.clone(), config))
    })
    .await
}

/// Opens the [`Resources`] without creating anything (what a role's restricted NATS user
/// may do: look streams up, never create them). Retries for up to a minute while a
/// resource is missing, so that a role may start before the admin has created them.
pub async fn open_resources(client: async_nats::Client) -> Result<Resources, SetupError> {
    retry_setup(
        "JetStream resources not there yet (an admin creates them), retrying",
        || Box::pin(try_open_resources(client.clone())),
    )
    .await
}

async fn retry_setup<F>(
    waiting: &'static str,
    mut attempt: impl FnMut() -> F,
) -> Result<Resources, SetupError>
where
    F: Future<Output = Result<Resources, SetupError>>,
{
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        match attempt().await {
            Ok(resources) => return Ok(resources),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "{waiting}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn try_open_resources(client: async_nats::Client) -> Result<Resources, SetupError> {
    let context = jetstream::new(client);
    let submit = context
        .get_stream(names::STREAM_SUBMIT)
        .await
        .map_err(resource_error("MOCHI_SUBMIT"))?;
    let dlq = context
        .get_stream(names::STREAM_DLQ)
        .await
        .map_err(resource_error("MOCHI_DLQ"))?;
    let jobs = context
        .get_key_value(names::BUCKET_JOBS)
        .await
        .map_err(resource_error("mochi_jobs"))?;
    let nodes = context
        .get_key_value(names::BUCKET_NODES)
        .await
        .map_err(resource_error("mochi_nodes"))?;
    let leader = context
        .get_key_value(names::BUCKET_LEADER)
        .await
        .map_err(resource_error("mochi_leader"))?;
    let videos = context
        .get_object_store(names::OBJECT_STORE_VIDEOS)
        .await
        .map_err(resource_error("mochi_videos"))?;
    Ok(Resources {
        context,
        submit,
        dlq,
        jobs: JobStore { kv: jobs },
        nodes,
        leader,
        videos,
        keys: None,
    })
}

/// Reads `stream` in order from `start_sequence` through an ordered pull consumer: R1, in
/// memory, no acknowledgements (nothing replicated per message), and it starts over by
/// itself from the last message it delivered when it loses its place. How the intake reads
/// `MOCHI_SUBMIT` and the webhook source `KV_mochi_jobs`, each from a position it keeps.
pub async fn read_in_order(
    stream: &stream::Stream,
    start_sequence: u64,
    description: &str,
) -> Result<jetstream::consumer::pull::Ordered, async_nats::Error> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            description: Some(description.to_owned()),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Opens `mochi_keys` (the gateway's and the admin's; other users may not read it).
pub async fn open_keys(context: &jetstream::Context) -> Result<kv::Store, SetupError> {
    context
        .get_key_value(names::BUCKET_KEYS)
        .await
        .map_err(resource_error("mochi_keys"))
}

async fn try_ensure_resources(
    client: async_nats::Client,
    config: &JetStreamConfig,
) -> Result<Resources, SetupError> {
    let context = jetstream::new(client);
    let replicas = config.replicas.max(1) as usize;
    let submit = get_or_create_stream(
        &context,
        stream::Config {
            name: names::STREAM_SUBMIT.to_owned(),
            description: Some("mochi-serve submitted jobs awaiting intake".to_owned()),
            subjects: vec![names::SUBJECT_SUBMIT_ALL.to_owned()],
            // Not a work queue: acknowledgements move the intake's ack floor and the intake
            // purges below it once per batch (one synced write for many submissions,
            // instead of a synced deletion per acknowledgement). `max_messages` with
            // `DiscardPolicy::New` still refuses submissions while the queue is full.
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_messages: config.submit_max_msgs,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(config.duplicate_window_s),
            max_message_size: 256 * 1024,
            ..Default::default()
        },
        "MOCHI_SUBMIT",
    )
    .await?;
    let dlq = get_or_create_stream(
        &context,
        stream::Config {
            name: names::STREAM_DLQ.to_owned(),
            description: Some("mochi-serve jobs whose retries are exhausted".to_owned()),
            subjects: vec![names::SUBJECT_DLQ_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: Duration::from_secs(config.dlq_max_age_s),
            ..Default::default()
        },
        "MOCHI_DLQ",
    )
    .await?;
    // Opened by the gateways alone (`crate::names::STREAM_WEBHOOKS`).
    get_or_create_stream(
        &context,
        stream::Config {
            name: names::STREAM_WEBHOOKS.to_owned(),
            description: Some("mochi-serve webhook deliveries awaiting success".to_owned()),
            subjects: vec![names::SUBJECT_WEBHOOKS_ALL.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            // Retries end after about two hours; a day covers a long outage of every gateway.
            max_age: Duration::from_secs(24 * 3600),
            // One event of one job is queued once, whichever gateway saw it first.
            duplicate_window: Duration::from_secs(3600),
            max_message_size: 1024 * 1024,
            ..Default::default()
        },
        "MOCHI_WEBHOOKS",
    )
    .await?;
    let jobs = get_or_create_kv(
        &context,
        kv::Config {
            bucket: names::BUCKET_JOBS.to_owned(),
            description: "mochi-serve job records (compare-and-set)".to_owned(),
            history: 1,
            max_value_size: 1024 * 1024,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        "mochi_jobs",
    )
    .await?;
    allow_atomic_batches(&context, &jobs).await;
    let nodes = get_or_create_derived_kv(
        &context,
        kv::Config {
            bucket: names::BUCKET_NODES.to_owned(),
            description: "mochi-serve node heartbeats (expire when a node goes quiet)".to_owned(),
            history: 1,
            max_age: Duration::from_secs(config.node_ttl_s.max(1)),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        "mochi_nodes",
    )
    .await?;
    let leader = get_or_create_kv(
        &context,
        kv::Config {
            bucket: names::BUCKET_LEADER.to_owned(),
            description: "mochi-serve coordinator leader lease (compare-and-set)".to_owned(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        "mochi_leader",
    )
    .await?;
    let keys = get_or_create_kv(
        &context,
        kv::Config {
            bucket: names::BUCKET_KEYS.to_owned(),
            description: "mochi-serve API keys (hashes only) and link-signing keys".to_owned(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        "mochi_keys",
    )
    .await?;
    // Written by the coordinator only; created here so that its restricted user need not.
    get_or_create_kv(
        &context,
        kv::Config {
            bucket: names::BUCKET_COST.to_owned(),
            description: "mochi-serve cost model corrections".to_owned(),
            history: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        "mochi_cost",
    )
    .await?;
    get_or_create_derived_kv(
        &context,
        kv::Config {
            bucket: names::BUCKET_QUEUE.to_owned(),
            description: "mochi-serve queue positions and ETAs".to_owned(),
            history: 1,
            max_age: Duration::from_secs(24 * 3600),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        "mochi_queue",
    )
    .await?;
    let videos = get_or_create_object_store(
        &context,
        object_store::Config {
            bucket: names::OBJECT_STORE_VIDEOS.to_owned(),
            description: Some("mochi-serve finished videos".to_owned()),
            max_age: Duration::from_secs(config.videos_max_age_s),
            max_bytes: config.videos_max_bytes,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(Resources {
        context,
        submit,
        dlq,
        jobs: JobStore { kv: jobs },
        nodes,
        leader,
        videos,
        keys: Some(keys),
    })
}

fn resource_error<E: std::error::Error + Send + Sync + 'static>(
    resource: &'static str,
) -> impl Fn(E) -> SetupError {
    move |error| SetupError::Resource {
        resource,
        source: Box::new(error),
    }
}

async fn get_or_create_stream(
    context: &jetstream::Context,
    config: stream::Config,
    resource: &'static str,
) -> Result<stream::Stream, SetupError> {
    context
        .get_or_create_stream(config)
        .await
        .map_err(resource_error(resource))
}

async fn get_or_create_kv(
    context: &jetstream::Context,
    config: kv::Config,
    resource: &'static str,
) -> Result<kv::Store, SetupError> {
    if let Ok(store) = context.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    match context.create_key_value(config.clone()).await {
        Ok(store) => Ok(store),
        // Another process may have created it between our two calls.
        Err(error) => context
            .get_key_value(config.bucket)
            .await
            .map_err(|_| resource_error(resource)(error)),
    }
}

/// Lets `bucket`'s stream take atomic batches (`allow_atomic`, nats-server 2.12+, a setting
/// a stream may change later), through which a gateway stores the records of many
/// submissions with one synced write ([`JobStore::create_batch`]). A server that refuses
/// it leaves the gateways writing record by record, as before: a warning, not a failure.
/// Every process of a fresh stack asks at once, and on a replicated stream just made some
/// of the updates time out while one goes through: a failed update reads the settings
/// again before it counts, and is tried [`ALLOW_ATOMIC_TRIES`] times.
async fn allow_atomic_batches(context: &jetstream::Context, bucket: &kv::Store) {
    let mut last_error = None;
    for _ in 0..ALLOW_ATOMIC_TRIES {
        let info = match bucket.stream.get_info().await {
            Ok(info) => info,
            Err(error) => {
                last_error = Some(error.to_string());
                continue;
            }
        };
        if info.config.allow_atomic_publish {
            return;
        }
        let config = stream::Config {
            allow_atomic_publish: true,
            ..info.config
        };
        match context.update_stream(config).await {
            Ok(_) => return,
            Err(error) => last_error = Some(error.to_string()),
        }
    }
    if let Some(error) = last_error {
        tracing::warn!(stream = %bucket.stream_name, %error, "the stream takes no atomic batches (nats-server 2.12+ does); new records are written one by one");
    }
}

/// Reads and updates of the job stream's `allow_atomic` before a start gives up on it.
const ALLOW_ATOMIC_TRIES: usize = 2;

/// [`get_or_create_kv`] for a bucket whose entries their writers rewrite on their own
/// (queue positions, which the leading coordinator republishes; heartbeats, which nodes
/// write every few seconds and which expire anyway): on a single server its stream is
/// created with asynchronous persistence (`persist_mode: async`, nats-server 2.12+), so
/// its writes are not synced one by one even under `sync_interval: always`. A crash of
/// the server may lose the last of them; the next refresh writes them again. Replicated
/// buckets, and buckets created before, keep the default (the mode cannot be changed
/// after creation).
async fn get_or_create_derived_kv(
    context: &jetstream::Context,
    config: kv::Config,
    resource: &'static str,
) -> Result<kv::Store, SetupError> {
    if config.num_replicas > 1 {
        return get_or_create_kv(context, config, resource).await;
    }
    if let Ok(store) = context.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    // The stream a KV bucket is (what `create_key_value` makes), with the persistence mode.
    let stream_config = stream::Config {
        name: names::kv_stream(&config.bucket),
        description: Some(config.description.clone()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history.max(1),
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        max_message_size: config.max_value_size,
        storage: config.storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: stream::DiscardPolicy::New,
        persist_mode: Some(stream::PersistenceMode::Async),
        ..Default::default()
    };
    match context.create_stream(stream_config).await {
        Ok(_) => context
            .get_key_value(config.bucket.clone())
            .await
            .map_err(resource_error(resource)),
        // An older server without the mode, or another process created it meanwhile.
        Err(error) => {
            tracing::debug!(bucket = %config.bucket, %error, "no asynchronous persistence for the bucket");
            get_or_create_kv(context, config, resource).await
        }
    }
}

async fn get_or_create_object_store(
    context: &jetstream::Context,
    config: object_store::Config,
) -> Result<object_store::ObjectStore, SetupError> {
    if let Ok(store) = context.get_object_store(&config.bucket).await {
        return Ok(store);
    }
    match context.create_object_store(config.clone()).await {
        Ok(store) => Ok(store),
        Err(error) => context
            .get_object_store(&config.bucket)
            .await
            .map_err(|_| resource_error("mochi_videos")(error)),
    }
}

/// Why [`JobStore::create_batch`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A record of the batch exists already (the stream checks each create): none stored.
    #[error("a record of the batch exists already")]
    Exists,
    /// The stream takes no atomic batches (no `allow_atomic`: none stored; or a server
    /// before 2.12, which stores each message of the batch as it comes, each by its own
    /// create-only check).
    #[error("the stream takes no atomic batches")]
    Unsupported,
    /// The stream refused the batch, or NATS failed (when the commit's acknowledgement was
    /// lost, whether the batch was stored is unknown).
    #[error("the atomic batch was not stored")]
    Failed(#[source] NatsError),
}

/// JetStream's error code for an atomic batch sent to a stream without `allow_atomic`.
const ATOMIC_PUBLISH_DISABLED: u64 = 10174;

/// The JetStream API error code behind a failed publish, when the server answered with one.
fn api_error_code(error: &jetstream::context::PublishError) -> Option<u64> {
    let source = std::error::Error::source(error)?;
    source
        .downcast_ref::<jetstream::Error>()
        .map(|api| api.error_code().0)
}

/// Most messages nats-server takes in one atomic batch.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// Most compare-and-set retries before a record update gives up.
const MAX_CAS_RETRIES: u32 = 16;

/// Why a job-record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No record exists for the job.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The event does not apply to the record as it is now.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The stored bytes are not a record this build can read.
    #[error("stored record of job {job_id} is unreadable")]
    Codec {
        /// The job.
        job_id: JobId,
        /// The cause.
        #[source]
        source: CodecError,
    },
    /// Too many concurrent writers.
    #[error("job {0} is being updated concurrently; gave up after {MAX_CAS_RETRIES} tries")]
    Contended(JobId),
    /// NATS failed.
    #[error("NATS error on job {job_id}")]
    Nats {
        /// The job.
        job_id: JobId,
        /// The cause.
        #[source]
        source: NatsError,
    },
}

/// The `mochi_jobs` bucket: job records, each write a compare-and-set on the revision.
#[derive(Clone)]
pub struct JobStore {
    /// The underlying bucket.
    pub kv: kv::Store,
}

impl JobStore {
    /// Creates the record unless one exists; returns whether this call created it.
    pub async fn create(&self, record: &JobRecord) -> Result<bool, StoreError> {
        let job_id = record.id;
        let bytes = codec::encode(record).map_err(|source| StoreError::Codec { job_id, source })?;
        self.create_encoded(job_id, bytes).await
    }

    /// [`Self::create`] of a record already encoded (`bytes`, the record of `job_id`).
    pub async fn create_encoded(&self, job_id: JobId, bytes: Vec<u8>) -> Result<bool, StoreError> {
        match self.kv.create(job_id.to_string(), bytes.into()).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(StoreError::Nats {
                job_id,
                source: Box::new(error),
            }),
        }
    }

    /// Creates every record of `records` (each a job id and its encoded record) in one
    /// JetStream atomic batch (nats-server 2.12+, on a stream with `allow_atomic`): either
    /// all are stored, which a single server syncs to disk once for the whole batch, or none
    /// is (`Err`, as when one of them exists already or the stream has no `allow_atomic`;
    /// [`Self::create`] then tells each record's fate). A server before 2.12 stores each
    /// message on its own, each by its own create-only check, and its answer is
    /// [`BatchError::Unsupported`]: do not send batches to one. `context` publishes the messages
    /// before the commit without waiting, and waits for the stream's acknowledgement of the
    /// commit.
    pub async fn create_batch(
        &self,
        context: &jetstream::Context,
        records: &[(JobId, Vec<u8>)],
    ) -> Result<(), BatchError> {
        let Some(((last_id, last_bytes), before)) = records.split_last() else {
            return Ok(());
        };
        if records.len() > MAX_ATOMIC_BATCH {
            return Err(BatchError::Failed(
                format!(
                    "{} records are more than an atomic batch holds ({MAX_ATOMIC_BATCH})",
                    records.len()
                )
                .into(),
            ));
        }
        if self.kv.use_jetstream_prefix {
            return Err(BatchError::Failed(
                "a bucket behind a JetStream domain prefix takes no batches here".into(),
            ));
        }
        let prefix = self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix);
        let batch_id = JobId::new().to_string();
        // Every message create-only (the key has no message yet, as `kv::Store::create`
        // asks), numbered in the batch from 1.
        let headers = |sequence: usize| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_BATCH_ID, batch_id.as_str());
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                sequence.to_string().as_str(),
            );
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
            headers
        };
        let client = context.client();
        for (index, (job_id, bytes)) in before.iter().enumerate() {
            client
                .publish_with_headers(
                    format!("{prefix}{job_id}"),
                    headers(index + 1),
                    bytes.clone().into(),
                )
                .await
                .map_err(|error| BatchError::Failed(error.into()))?;
        }
        let mut commit = headers(records.len());
        commit.insert(
            async_nats::header::NATS_BATCH_COMMIT,
            async_nats::header::NATS_BATCH_COMMIT_FINAL,
        );
        let acked = match context
            .publish_with_headers(
                format!("{prefix}{last_id}"),
                commit,
                last_bytes.clone().into(),
            )
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        match acked {
            Ok(ack) if ack.batch_id.as_deref() == Some(batch_id.as_str()) => {
                if ack.batch_size == Some(records.len() as u64) {
                    Ok(())
                } else {
                    Err(BatchError::Failed(
                        format!(
                            "the atomic batch's commit counted {:?} records, not {}",
                            ack.batch_size,
                            records.len()
                        )
                        .into(),
                    ))
                }
            }
            // A server without atomic batches stores each message on its own.
            Ok(_) => Err(BatchError::Unsupported),
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                Err(BatchError::Exists)
            }
            Err(error) if api_error_code(&error) == Some(ATOMIC_PUBLISH_DISABLED) => {
                Err(BatchError::Unsupported)
            }
            Err(error) => Err(BatchError::Failed(error.into())),
        }
    }

    /// Reads a record and its revision.
    pub async fn get(&self, job_id: JobId) -> Result<Option<(JobRecord, u64)>, StoreError> {
        let entry = self
            .kv
            .entry(job_id.to_string())
            .await
            .map_err(|error| StoreError::Nats {
                job_id,
                source: Box::new(error),
            })?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record =
            codec::decode(&entry.value).map_err(|source| StoreError::Codec { job_id, source })?;
        Ok(Some((record, entry.revision)))
    }

    /// Applies `event` to the current record and stores it by compare-and-set, re-reading
    /// and re-applying when another writer got there first.
    pub async fn apply(
        &self,
        job_id: JobId,
        event: &JobEvent,
        now_ms: u64,
    ) -> Result<JobRecord, StoreError> {
        match self
            .try_update(job_id, |record| record.apply(event, now_ms).map(Some))
            .await
        {
            Ok(Some(updated)) => Ok(updated.after),
            Ok(None) => Err(StoreError::Contended(job_id)),
            Err(CasError::Store(error)) => Err(error),
            Err(CasError::Refused(error)) => Err(error.into()),
        }
    }

    /// Stores `change` of the current record by compare-and-set, re-reading and changing
    /// again when another writer got there first; `None` when `change` declines (returns
    /// `None`) for the record as it is now.
    pub async fn update(
        &self,
        job_id: JobId,
        mut change: impl FnMut(&JobRecord) -> Option<JobRecord>,
    ) -> Result<Option<Updated>, StoreError> {
        self.try_update(job_id, |record| {
            Ok::<_, std::convert::Infallible>(change(record))
        })
        .await
        .map_err(|error| match error {
            CasError::Store(error) => error,
            CasError::Refused(never) => match never {},
        })
    }

    /// Reads a record and its revision by direct get, and when that finds none, from the
    /// stream's leader: a replica a write behind must not hide a record just written (JetStream
    /// acknowledges a write once a majority of the replicas has it). For reads whose "absent"
    /// is an answer to a client.
    pub async fn find(&self, job_id: JobId) -> Result<Option<(JobRecord, u64)>, StoreError> {
        match self.get(job_id).await? {
            None => self.get_latest(job_id).await,
            found => Ok(found),
        }
    }

    /// Reads a record and its revision from the leader of the bucket's stream, which has
    /// every acknowledged write. [`Self::get`] is a direct get, which any replica of a
    /// replicated bucket may answer, a little behind the leader.
    pub async fn get_latest(&self, job_id: JobId) -> Result<Option<(JobRecord, u64)>, StoreError> {
        let latest = shared_value::get_latest(&self.kv, &job_id.to_string())
            .await
            .map_err(|error| StoreError::Nats {
                job_id,
                source: Box::new(error),
            })?;
        let Some((bytes, revision)) = latest else {
            return Ok(None);
        };
        let record =
            codec::decode(&bytes).map_err(|source| StoreError::Codec { job_id, source })?;
        Ok(Some((record, revision)))
    }

    /// The one compare-and-set loop on job records: reads the record, asks `change` for its
    /// successor (`Ok(None)`: leave it, `Err`: give up with that refusal), and writes it only
    /// if nobody wrote since the read; else reads and asks again, at most
    /// `MAX_CAS_RETRIES` times (then [`StoreError::Contended`]). The first read may come
    /// from any replica (a direct get); a record it finds absent, or that `change` would
    /// not write, is read again from the stream's leader before that answer stands, and so
    /// is every read after a conflict: a replica lagging by a write never refuses a
    /// transition the record allows.
    pub async fn try_update<E>(
        &self,
        job_id: JobId,
        mut change: impl FnMut(&JobRecord) -> Result<Option<JobRecord>, E>,
    ) -> Result<Option<Updated>, CasError<E>> {
        let mut from_leader = false;
        for _ in 0..MAX_CAS_RETRIES {
            let read = if from_leader {
                self.get_latest(job_id).await?
            } else {
                self.get(job_id).await?
            };
            let outcome = match &read {
                Some((record, _)) => change(record).map_err(CasError::Refused),
                None => Err(StoreError::NotFound(job_id).into()),
            };
            let (record, revision, next) = match (outcome, read) {
                (Ok(Some(next)), Some((record, revision))) => (record, revision, next),
                (Ok(None), _) if from_leader => return Ok(None),
                (Err(error), _) if from_leader => return Err(error),
                // Not written, on a replica's word: ask the leader.
                _ => {
                    from_leader = true;
                    continue;
                }
            };
            let bytes =
                codec::encode(&next).map_err(|source| StoreError::Codec { job_id, source })?;
            match self
                .kv
                .update(job_id.to_string(), bytes.into(), revision)
                .await
            {
                Ok(revision) => {
                    return Ok(Some(Updated {
                        before: record,
                        after: next,
                        revision,
                    }));
                }
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    from_leader = true;
                }
                Err(error) => {
                    return Err(StoreError::Nats {
                        job_id,
                        source: Box::new(error),
                    }
                    .into());
                }
            }
        }
        Err(StoreError::Contended(job_id).into())
    }
}

/// A job record changed by compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// The record the change was made to.
    pub before: JobRecord,
    /// The record as written.
    pub after: JobRecord,
    /// The KV revision the write created (a watch has caught up with it once it saw it).
    pub revision: u64,
}

/// Why [`JobStore::try_update`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum CasError<E> {
    /// Reading or writing the record failed (absent, unreadable, contended, NATS).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change refused the record as it is now.
    #[error("the change was refused")]
    Refused(E),
}

#[cfg(test)]
mod tests {
    use super::seed_urls;

    #[test]
    fn a_url_setting_names_one_server_or_several() {
        assert_eq!(seed_urls("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            seed_urls("nats://a:4222, nats://b:4222,,nats://c:4222 "),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        // Each seed is a server address async-nats accepts (the whole list was not).
        for seed in seed_urls("nats://a:4222,nats://b:4222") {
            assert!(seed.parse::<async_nats::ServerAddr>().is_ok(), "{seed}");
        }
        assert!(
            "nats://a:4222,nats://b:4222"
                .parse::<async_nats::ServerAddr>()
                .is_err()
        );
        assert_eq!(seed_urls(" , "), [" , "]);
    }
}
