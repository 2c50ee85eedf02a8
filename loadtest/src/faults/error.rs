//! Why a fault run could not be carried out (as opposed to what it found).

/// Why a fault run could not be carried out (distinct from what it found).
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// A file or process operation failed.
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    /// The stack did not come up.
    #[error("start-up failed: {0}")]
    Startup(String),
    /// The harness's own NATS connection failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// The stack could not be started.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The HTTP client failed to build.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}
