//! Persistence of the cost model's corrections in the `mochi_cost` KV bucket (JSON, one
//! document), so that a restarted coordinator keeps them.

use async_nats::jetstream::{self, kv};
use protocol::names;

use super::Corrections;

/// Why the corrections could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CostStoreError {
    /// The bucket could not be opened or created.
    #[error("cannot open the {bucket} bucket")]
    Open {
        /// The bucket.
        bucket: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing the document failed.
    #[error("cannot {what} the cost corrections")]
    Io {
        /// `read` or `write`.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Opens (or creates) the `mochi_cost` bucket.
pub async fn open(
    context: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, CostStoreError> {
    if let Ok(store) = context.get_key_value(names::BUCKET_COST).await {
        return Ok(store);
    }
    context
        .create_key_value(kv::Config {
            bucket: names::BUCKET_COST.to_owned(),
            description: "mochi-serve cost model corrections".to_owned(),
            history: 1,
            num_replicas: replicas.max(1),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| CostStoreError::Open {
            bucket: names::BUCKET_COST,
            source: Box::new(e),
        })
}

/// The stored corrections (empty when none were stored or the document is unreadable).
pub async fn load(store: &kv::Store) -> Result<Corrections, CostStoreError> {
    let value = store
        .get(names::COST_CORRECTIONS_KEY)
        .await
        .map_err(|e| CostStoreError::Io {
            what: "read",
            source: Box::new(e),
        })?;
    Ok(value
        .and_then(
            |bytes| match serde_json::from_slice::<Corrections>(&bytes) {
                Ok(corrections) => Some(corrections),
                Err(error) => {
                    tracing::warn!(%error, "unreadable cost corrections; starting from the priors");
                    None
                }
            },
        )
        .unwrap_or_default())
}

/// Stores `corrections` (last writer wins: every coordinator learns from the same jobs).
pub async fn save(store: &kv::Store, corrections: &Corrections) -> Result<(), CostStoreError> {
    let bytes = serde_json::to_vec(corrections).map_err(|e| CostStoreError::Io {
        what: "write",
        source: Box::new(e),
    })?;
    store
        .put(names::COST_CORRECTIONS_KEY, bytes.into())
        .await
        .map_err(|e| CostStoreError::Io {
            what: "write",
            source: Box::new(e),
        })?;
    Ok(())
}
