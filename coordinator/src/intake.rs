//! The intake actor: takes submissions from `MOCHI_SUBMIT`, checks them again (internal
//! publishers bypass the gateway) and writes each job's record as `queued` (create-only, so
//! reading a submission twice is harmless; up to `intake_concurrency` writes in flight).
//! Only the leading coordinator runs it.
//!
//! `MOCHI_SUBMIT` keeps its messages until they are purged (limits retention), and the purge
//! is the intake's only position: it reads with an ordered consumer from the first message
//! not purged, in slices of at most a quarter second or `intake_batch` submissions, and
//! after each slice purges below the last submission that has its record and every one
//! before it: one synced write per slice. Nothing is acknowledged, so nothing is
//! replicated per submission besides the submission and its record (a shared durable
//! consumer costs two replicated entries per message on a cluster: its delivery and its
//! acknowledgement). A new leader reads again what its predecessor took in but had not
//! purged yet, and finds the records there.
//!
//! A stream made by an earlier version keeps its work-queue retention, which cannot be
//! changed: there the intake reads through the durable consumer `mochi-intake` and
//! acknowledges each submission after its record, which deletes it (docs/operations.md says
//! how to convert such a stream).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::RetentionPolicy;
use futures::StreamExt;
use protocol::ErrorCode;
use protocol::jetstream::{Resources, read_in_order};
use protocol::messages::SubmitRequest;
use protocol::record::JobFailure;
use protocol::{JobEvent, JobId, JobRecord, JobShape, TenantId, names, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics;

/// How long one fetch waits for submissions before the actor checks its mailbox again.
const FETCH_EXPIRES: Duration = Duration::from_millis(500);
/// Delay before a submission whose record could not be written is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest a read of the ordered consumer runs before the intake purges what it took in
/// and checks its mailbox.
const SLICE: Duration = Duration::from_millis(250);

/// The intake actor.
pub struct Intake;

/// Messages of the intake actor.
pub enum IntakeMsg {
    /// Read and take in the next slice (the actor sends this to itself).
    Pull,
}

/// Where the intake reads from.
enum Source {
    /// Limits retention: an ordered consumer from the first submission not purged.
    Ordered {
        /// The submissions in stream order (`None` until opened, and after it failed).
        messages: Option<Box<pull::Ordered>>,
        /// Every submission below this stream sequence is purged.
        purged_below: u64,
        /// Every submission below this stream sequence has its record (or was given up).
        taken_below: u64,
    },
    /// Work-queue retention (a stream made by an earlier version): the shared durable
    /// consumer; each acknowledgement deletes its submission.
    Durable(Box<PullConsumer>),
}

/// The intake's state.
pub struct IntakeState {
    config: Arc<Config>,
    resources: Resources,
    source: Source,
}

/// What the intake needs.
pub struct IntakeArgs {
    /// The coordinator's configuration.
    pub config: Arc<Config>,
    /// JetStream handles.
    pub resources: Resources,
}

/// Opens (or creates) the durable intake consumer of a work-queue `MOCHI_SUBMIT`.
pub async fn consumer(resources: &Resources, config: &Config) -> Result<PullConsumer> {
    let consumer_config = pull::Config {
        durable_name: Some(names::CONSUMER_INTAKE.to_owned()),
        description: Some("mochi-serve coordinator intake".to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(config.intake_ack_wait_s),
        max_deliver: config.intake_max_deliver,
        ..Default::default()
    };
    resources
        .submit
        .get_or_create_consumer(names::CONSUMER_INTAKE, consumer_config)
        .await
        .map_err(|e| Error::JetStream {
            what: "the intake consumer",
            source: Box::new(e),
        })
}

impl Actor for Intake {
    type Msg = IntakeMsg;
    type State = IntakeState;
    type Arguments = IntakeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: IntakeArgs,
    ) -> Result<IntakeState, ActorProcessingErr> {
        let work_queue =
            args.resources.submit.cached_info().config.retention == RetentionPolicy::WorkQueue;
        let source = if work_queue {
            tracing::info!(
                "MOCHI_SUBMIT has work-queue retention (made by an earlier version): each acknowledgement deletes its submission; docs/operations.md says how to convert it"
            );
            Source::Durable(Box::new(consumer(&args.resources, &args.config).await?))
        } else {
            // The durable consumer of earlier versions is not read any more: its
            // acknowledgements are not the position, the purges are.
            if let Err(error) = args
                .resources
                .submit
                .delete_consumer(names::CONSUMER_INTAKE)
                .await
            {
                // Most often: there is none.
                tracing::debug!(%error, "the intake consumer of earlier versions was not deleted");
            }
            Source::Ordered {
                messages: None,
                purged_below: 0,
                taken_below: 0,
            }
        };
        myself.cast(IntakeMsg::Pull)?;
        Ok(IntakeState {
            config: args.config,
            resources: args.resources,
            source,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: IntakeMsg,
        state: &mut IntakeState,
    ) -> Result<(), ActorProcessingErr> {
        let IntakeMsg::Pull = message;
        let IntakeState {
            config,
            resources,
            source,
        } = state;
        match source {
            Source::Ordered {
                messages,
                purged_below,
                taken_below,
            } => {
                if let Err(error) = read_ordered(config, resources, messages, taken_below).await {
                    tracing::warn!(%error, "intake cannot read MOCHI_SUBMIT; retrying");
                    *messages = None;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                if *taken_below > *purged_below {
                    purge_below(resources, *taken_below, purged_below).await;
                }
            }
            Source::Durable(consumer) => read_durable(config, resources, consumer).await,
        }
        myself.cast(IntakeMsg::Pull)?;
        Ok(())
    }
}

/// Reads from the ordered consumer (opened first, from the first submission not purged) for
/// one slice, at most [`SLICE`] or `intake_batch` submissions, and takes each in: up to
/// `intake_concurrency` record writes in flight at all times, the next submission read as
/// soon as one finishes. `taken_below` moves past each submission once it and every one
/// before it have their records (or were given up).
async fn read_ordered(
    config: &Config,
    resources: &Resources,
    messages: &mut Option<Box<pull::Ordered>>,
    taken_below: &mut u64,
) -> std::result::Result<(), String> {
    let reader = match messages {
        Some(reader) => reader,
        None => {
            let mut stream = resources.submit.clone();
            let first = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .first_sequence
                .max(1);
            let reader = read_in_order(&stream, first, "mochi-serve coordinator intake")
                .await
                .map_err(|e| e.to_string())?;
            tracing::debug!(first, "intake reading MOCHI_SUBMIT");
            messages.insert(Box::new(reader))
        }
    };
    let first = match tokio::time::timeout(FETCH_EXPIRES, reader.next()).await {
        Err(_) => return Ok(()),
        Ok(None) => return Err("the ordered consumer ended".to_owned()),
        Ok(Some(next)) => next.map_err(|e| e.to_string())?,
    };
    let slice_end = tokio::time::sleep(SLICE);
    let rest = reader
        .by_ref()
        .take_until(slice_end)
        .take(config.intake_batch.saturating_sub(1))
        .filter_map(|next| async move {
            // The ordered consumer starts over from the last message it delivered.
            next.map_err(|error| tracing::debug!(%error, "intake read interrupted"))
                .ok()
        });
    let taken = futures::stream::once(async { first })
        .chain(rest)
        .map(|message| async move {
            take_in_retrying(config, resources, &message).await;
            message.info().map(|info| info.stream_sequence).ok()
        })
        .buffered(config.intake_concurrency);
    let mut taken = std::pin::pin!(taken);
    while let Some(sequence) = taken.next().await {
        if let Some(sequence) = sequence {
            *taken_below = (*taken_below).max(sequence + 1);
        }
    }
    Ok(())
}

/// Takes one submission in, trying its record up to `intake_max_deliver` times.
async fn take_in_retrying(
    config: &Config,
    resources: &Resources,
    message: &async_nats::jetstream::Message,
) {
    let max_tries = u64::try_from(config.intake_max_deliver.max(1)).unwrap_or(1);
    for tries in 1.. {
        match take_in(config, resources, message).await {
            Ok(()) => return,
            Err(error) if tries >= max_tries => {
                // The purge below the batch removes it: the job the publisher was told about
                // has no record.
                ::metrics::counter!(metrics::INTAKE, "outcome" => "given_up").increment(1);
                tracing::error!(%error, tries, subject = %message.subject, "cannot write the record; the submission is given up");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, tries, "cannot write the record; trying again");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// Purges the submissions below `below` (each has its record, or was given up). A failure
/// is logged and left to the next batch: the submissions stay, their records exist, and a
/// new reader would find them.
async fn purge_below(resources: &Resources, below: u64, purged_below: &mut u64) {
    match resources.submit.purge().sequence(below).await {
        Ok(response) => {
            *purged_below = below;
            tracing::debug!(
                purged = response.purged,
                below,
                "taken-in submissions purged"
            );
        }
        Err(error) => {
            tracing::warn!(%error, below, "cannot purge taken-in submissions; purging later")
        }
    }
}

/// Fetches a batch from the durable consumer of a work-queue stream and takes each in,
/// acknowledging it after its record (the acknowledgement deletes it); one whose record
/// could not be written is redelivered after [`RETRY_DELAY`], up to `intake_max_deliver`
/// deliveries.
async fn read_durable(config: &Config, resources: &Resources, consumer: &PullConsumer) {
    let batch = match consumer
        .fetch()
        .max_messages(config.intake_batch)
        .expires(FETCH_EXPIRES)
        .messages()
        .await
    {
        Ok(batch) => batch,
        Err(error) => {
            tracing::warn!(%error, "intake cannot fetch; retrying");
            tokio::time::sleep(RETRY_DELAY).await;
            return;
        }
    };
    batch
        .for_each_concurrent(config.intake_concurrency, |next| async move {
            let message = match next {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "intake fetch interrupted");
                    return;
                }
            };
            match take_in(config, resources, &message).await {
                Ok(()) => {
                    if let Err(error) = message.double_ack().await {
                        // The record exists: a redelivery finds it and is acknowledged then.
                        tracing::warn!(%error, "intake ack not confirmed");
                    }
                }
                Err(error) => {
                    let delivered = message.info().map(|info| info.delivered).unwrap_or(0);
                    if delivered >= config.intake_max_deliver {
                        ::metrics::counter!(metrics::INTAKE, "outcome" => "given_up").increment(1);
                        tracing::error!(%error, delivered, "cannot write the record; the submission is given up after its last delivery");
                    } else {
                        tracing::warn!(%error, "cannot write the record; the submission will be redelivered");
                    }
                    if let Err(error) = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await {
                        tracing::warn!(%error, "cannot nak the submission; it is redelivered after ack_wait");
                    }
                }
            }
        })
        .await;
}

/// Takes one submission in: its record is created (or found there already); an error when
/// the record could not be written.
async fn take_in(
    config: &Config,
    resources: &Resources,
    message: &async_nats::jetstream::Message,
) -> std::result::Result<(), String> {
    let outcome = match record_for(config, message) {
        Some(record) => match resources.jobs.create(&record).await {
            Ok(true) if record.state.is_terminal() => {
                ::metrics::counter!(metrics::INTAKE_REJECTED, "reason" => "invalid_spec")
                    .increment(1);
                "rejected"
            }
            Ok(true) => {
                ::metrics::counter!(metrics::JOBS_QUEUED).increment(1);
                "queued"
            }
            Ok(false) => {
                tracing::debug!(job_id = %record.id, "submission already taken in");
                "duplicate"
            }
            Err(error) => return Err(format!("job {}: {error}", record.id)),
        },
        None => {
            ::metrics::counter!(metrics::INTAKE_REJECTED, "reason" => "unreadable").increment(1);
            "unreadable"
        }
    };
    ::metrics::counter!(metrics::INTAKE, "outcome" => outcome).increment(1);
    Ok(())
}

/// The record a submission becomes: `queued`, or `failed` when the spec is invalid;
/// `None` when the message cannot be attributed to a tenant or parsed at all.
fn record_for(config: &Config, message: &async_nats::jetstream::Message) -> Option<JobRecord> {
    let Some(tenant) =
        names::tenant_of_submit_subject(&message.subject).and_then(|t| TenantId::new(t).ok())
    else {
        tracing::warn!(subject = %message.subject, "submission on a subject without a valid tenant; dropped");
        return None;
    };
    let (request, unreadable) = match read_request(&message.payload) {
        Ok(request) => (request, None),
        Err(unreadable) => {
            let (salvaged, failure) = *unreadable;
            // serde's message may quote the payload (the prompt): the record keeps it for
            // its owner; the log says only which tenant and how long.
            tracing::warn!(%tenant, bytes = message.payload.len(), code = %failure.code, "unreadable submission; recorded as failed");
            (salvaged, Some(failure))
        }
    };
    let message_id = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|value| value.as_str().to_owned());
    let sequence = message
        .info()
        .map(|info| info.stream_sequence)
        .unwrap_or_default();
    let job_id = job_id_for(&tenant, &request, message_id.as_deref(), sequence);
    let now = now_ms();
    let (shape, rejection) = match request.spec.validate(&config.limits) {
        _ if unreadable.is_some() => (JobShape::new(1, 1, 16, 16, 1, false), unreadable),
        Ok(shape) => (shape, None),
        Err(error) => {
            let failure = JobFailure {
                code: error.code(),
                message: error.to_string(),
                retryable: false,
            };
            (JobShape::new(1, 1, 16, 16, 1, false), Some(failure))
        }
    };
    let mut record =
        JobRecord::from_submission(job_id, tenant, request, shape, config.max_attempts, now);
    if let Some(failure) = rejection {
        tracing::info!(%job_id, code = %failure.code, "submission refused at intake");
        record = record
            .apply(&JobEvent::Rejected { failure }, now)
            .unwrap_or_else(|error| {
                tracing::error!(%job_id, %error, "a fresh record refused Rejected");
                record.clone()
            });
    } else {
        tracing::info!(%job_id, tenant = %record.tenant, frames = record.shape.num_frames, "job queued");
    }
    Some(record)
}

/// Reads a submission. One that does not read still becomes a job (recorded `failed`, so
/// that its publisher finds the reason under the id it expects): the error comes with what
/// could be salvaged for the id (`job_id`, `idempotency_key`) and an empty spec.
pub(crate) fn read_request(
    payload: &[u8],
) -> Result<SubmitRequest, Box<(SubmitRequest, JobFailure)>> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let error = match serde_path_to_error::deserialize::<_, SubmitRequest>(&mut deserializer)
        .map_err(|error| {
            let path = error.path().to_string();
            (path, error.into_inner())
        })
        .and_then(|request| {
            deserializer
                .end()
                .map(|()| request)
                .map_err(|error| (".".to_owned(), error))
        }) {
        Ok(request) => return Ok(request),
        Err(error) => error,
    };
    let (path, error) = error;
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    let fields = serde_json::from_slice::<serde_json::Value>(payload).ok();
    let text = |name: &str| {
        fields
            .as_ref()
            .and_then(|value| value.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let salvaged = SubmitRequest {
        job_id: text("job_id").and_then(|id| id.parse().ok()),
        spec: protocol::JobSpec::new(String::new()),
        idempotency_key: text("idempotency_key"),
        remixed_from: None,
        webhook: None,
    };
    let failure = if fields.as_ref().is_some_and(serde_json::Value::is_object) {
        let field = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        JobFailure {
            code: ErrorCode::InvalidField,
            message: format!("the submission does not read as a SubmitRequest: {field}{message}"),
            retryable: false,
        }
    } else {
        JobFailure {
            code: ErrorCode::MalformedRequest,
            message: format!("the submission is not one JSON object: {message}"),
            retryable: false,
        }
    };
    Err(Box::new((salvaged, failure)))
}

/// The id of a submission's job. A publisher may not pick an id in the space of ids derived
/// from idempotency keys (UUIDv5), since another tenant's key maps there: with a key the id
/// is always derived from the subject's tenant and the key; a given v5 id is moved into the
/// publisher's own tenant's space; a given random id (v4, v7) is kept, as nobody can guess
/// another request's; without either, the id derives from the message id or the sequence.
pub(crate) fn job_id_for(
    tenant: &TenantId,
    request: &SubmitRequest,
    message_id: Option<&str>,
    sequence: u64,
) -> JobId {
    let derived = |name: &str| JobId::derived(tenant.as_str(), name);
    match (&request.idempotency_key, request.job_id) {
        (Some(key), given) => {
            let id = derived(key);
            if given.is_some_and(|given| given != id) {
                tracing::warn!(%tenant, job_id = %id, "submission named a job id that its idempotency key does not map to; using the key's");
            }
            id
        }
        (None, Some(given)) if given.0.get_version_num() == 5 => {
            tracing::warn!(%tenant, "submission named a derived (v5) job id without its key; moved into the tenant's own id space");
            derived(&format!("job-id/{given}"))
        }
        (None, Some(given)) => given,
        (None, None) => match message_id {
            Some(message_id) => derived(message_id),
            None => derived(&format!("seq-{sequence}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(job_id: Option<JobId>, key: Option<&str>) -> SubmitRequest {
        SubmitRequest {
            job_id,
            spec: protocol::JobSpec::new("x"),
            idempotency_key: key.map(str::to_owned),
            remixed_from: None,
            webhook: None,
        }
    }

    #[test]
    fn a_publisher_cannot_take_an_id_another_tenants_key_maps_to() {
        let evil = TenantId::new("evil").expect("tenant");
        let victims = JobId::derived("victim", "key-1");
        // Named outright, with or without a key of its own: never the victim's id.
        for key in [None, Some("key-1"), Some("other")] {
            let id = job_id_for(&evil, &request(Some(victims), key), None, 1);
            assert_ne!(id, victims, "{key:?}");
        }
        // Its own key maps into its own space, and is stable.
        assert_eq!(
            job_id_for(&evil, &request(None, Some("key-1")), None, 1),
            JobId::derived("evil", "key-1")
        );
        // A random id it picked is kept.
        let random = JobId::new();
        assert_eq!(
            job_id_for(&evil, &request(Some(random), None), None, 1),
            random
        );
    }

    #[test]
    fn unreadable_submissions_fail_under_the_id_they_name() {
        let id = JobId::new();
        let (salvaged, failure) = *read_request(
            format!(r#"{{"job_id":"{id}","spec":{{"prompt":"x","steps":"many"}}}}"#).as_bytes(),
        )
        .expect_err("steps of the wrong type");
        assert_eq!(salvaged.job_id, Some(id));
        assert_eq!(failure.code, ErrorCode::InvalidField);
        assert!(
            failure.message.contains("spec.steps"),
            "{}",
            failure.message
        );
        let (_, failure) =
            *read_request(br#"{"spec":{"prompt":"x"},"colour":1}"#).expect_err("unknown field");
        assert!(failure.message.contains("colour"), "{}", failure.message);
        let (salvaged, failure) = *read_request(b"not json").expect_err("not json");
        assert_eq!(
            (salvaged.job_id, failure.code),
            (None, ErrorCode::MalformedRequest)
        );
        assert!(read_request(br#"{"spec":{"prompt":"x"}}"#).is_ok());
    }

    #[test]
    fn seed_is_stable_per_job() {
        let id = JobId::new();
        assert_eq!(JobRecord::seed_for(id), JobRecord::seed_for(id));
        assert_ne!(JobRecord::seed_for(id), JobRecord::seed_for(JobId::new()));
    }
}
