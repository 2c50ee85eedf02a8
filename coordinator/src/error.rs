//! Errors of the coordinator.

/// What can stop the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid coordinator configuration: {0}")]
    Config(String),
    /// Loading the configuration failed.
    #[error(transparent)]
    LoadConfig(#[from] protocol::config::ConfigError),
    /// A JetStream consumer or watch could not be created.
    #[error("cannot open {what}")]
    JetStream {
        /// What was being opened.
        what: &'static str,
        /// The cause.
        #[source]
        source: protocol::jetstream::NatsError,
    },
    /// An actor could not be started.
    #[error("cannot start the {actor} actor")]
    Spawn {
        /// Which actor.
        actor: &'static str,
        /// The cause.
        #[source]
        source: ractor::SpawnErr,
    },
    /// A watch or the ticker ended; the coordinator stops so that a restart rebuilds its state.
    #[error("{0} ended")]
    WatchEnded(&'static str),
    /// The scheduler did not answer a status request.
    #[error("scheduler status unavailable: {0}")]
    Status(String),
}

/// Result with the coordinator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
