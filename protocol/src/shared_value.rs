//! Values that every process of one role shares and the first to need makes: the gateway's
//! generated link-signing key, a tenant's webhook secret (feature `jetstream`). Stored
//! create-only in a KV bucket; a value a direct get does not find is read again from the
//! bucket's stream leader: on a replicated bucket a direct get may come from a replica a
//! write behind, which would hide a value another process stored a moment ago, and a bucket
//! made a moment ago may not answer writes until its leader is elected.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};
use bytes::Bytes;

/// The header of a KV delete or purge marker (`DEL`, `PURGE`); a put has none.
const KV_OPERATION: &str = "KV-Operation";
/// The header of a marker nats-server writes when a key's last value goes (age, purge).
const NATS_MARKER_REASON: &str = "Nats-Marker-Reason";

/// Pause between tries while the bucket does not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why a shared value could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum SharedValueError {
    /// The bucket's leader did not answer a read in time.
    #[error("cannot read {key} from the bucket's leader")]
    Read {
        /// The key.
        key: String,
        /// The last cause.
        #[source]
        source: LastRawMessageError,
    },
    /// The value could not be stored in time.
    #[error("cannot store {key}")]
    Store {
        /// The key.
        key: String,
        /// The last cause.
        #[source]
        source: kv::CreateError,
    },
    /// The value to store could not be made.
    #[error("cannot make the value of {key}: {reason}")]
    Make {
        /// The key.
        key: String,
        /// What failed.
        reason: String,
    },
    /// Every try found the value made and gone again.
    #[error("{key} was deleted each time it was read back")]
    KeepsChanging {
        /// The key.
        key: String,
    },
}

impl SharedValueError {
    /// The error followed by its causes, `: `-separated (for callers that report text).
    pub fn with_causes(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(source) = cause {
            message.push_str(": ");
            message.push_str(&source.to_string());
            cause = source.source();
        }
        message
    }
}

/// Reads `key` of `store` from the leader of the bucket's stream, which has every
/// acknowledged write: its value and revision, or `None` when it has none (or was deleted).
pub async fn get_latest(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(Bytes, u64)>, LastRawMessageError> {
    let subject = format!("{}{key}", store.prefix);
    let message = match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message,
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(error) => return Err(error),
    };
    // A delete or purge marker (a put carries neither header).
    if message.headers.get(KV_OPERATION).is_some()
        || message.headers.get(NATS_MARKER_REASON).is_some()
    {
        return Ok(None);
    }
    Ok(Some((message.payload, message.sequence)))
}

/// The value of `key` in `store`, or else the one `make` makes, stored create-only: every
/// process asking gets the value stored first. A value found by a direct get (any replica:
/// most calls, a webhook delivery's secret say) is taken at once; an absent one is read
/// again from the stream's leader before one is made. A read or a store that fails (a
/// bucket whose leader is still being elected) is tried again until `patience` has passed.
pub async fn get_or_create(
    store: &kv::Store,
    key: &str,
    make: impl Fn() -> Result<Bytes, String>,
    patience: Duration,
) -> Result<Bytes, SharedValueError> {
    if let Ok(Some(value)) = store.get(key).await {
        return Ok(value);
    }
    let deadline = Instant::now() + patience;
    // Made at most once: a store whose acknowledgement was lost and is tried again finds
    // its own value, not a second one.
    let mut made: Option<Bytes> = None;
    // Creates refused because the key exists: each is followed by a read, which finds the
    // value unless it was deleted meanwhile.
    let mut exists_refusals = 0;
    loop {
        match get_latest(store, key).await {
            Ok(Some((value, _))) => return Ok(value),
            Ok(None) => {}
            Err(source) if Instant::now() >= deadline => {
                return Err(SharedValueError::Read {
                    key: key.to_owned(),
                    source,
                });
            }
            Err(error) => {
                tracing::debug!(key, %error, "shared value not readable yet; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        let value = match &made {
            Some(value) => value.clone(),
            None => {
                let value = make().map_err(|reason| SharedValueError::Make {
                    key: key.to_owned(),
                    reason,
                })?;
                made = Some(value.clone());
                value
            }
        };
        match store.create(key, value.clone()).await {
            Ok(_) => return Ok(value),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                exists_refusals += 1;
                if exists_refusals >= 3 {
                    return Err(SharedValueError::KeepsChanging {
                        key: key.to_owned(),
                    });
                }
            }
            Err(source) if Instant::now() >= deadline => {
                return Err(SharedValueError::Store {
                    key: key.to_owned(),
                    source,
                });
            }
            Err(error) => {
                tracing::debug!(key, %error, "shared value not stored yet; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
