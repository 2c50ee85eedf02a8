//! Errors of the GPU node.

use protocol::jetstream::{SetupError, StoreError};

/// What can stop the node or fail a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid gpu_node configuration: {0}")]
    Config(String),
    /// Loading the configuration failed.
    #[error(transparent)]
    LoadConfig(#[from] protocol::config::ConfigError),
    /// NATS or JetStream failed at start-up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A job record could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Subscribing to a subject failed.
    #[error("cannot subscribe to {subject}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        #[source]
        source: async_nats::SubscribeError,
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
    /// The node actor stopped before shutdown was asked for.
    #[error("the node actor stopped unexpectedly")]
    NodeStopped,
    /// The Mochi model could not be loaded.
    #[error(transparent)]
    LoadModel(#[from] crate::backend::mochi::LoadError),
    /// The embedded tiny model could not be written.
    #[error("cannot prepare the embedded tiny model in {dir}: {reason}")]
    EmbeddedModel {
        /// Its directory.
        dir: String,
        /// What failed.
        reason: String,
    },
    /// A slot's device cannot be used.
    #[error("device for slot {slot}: {reason}")]
    Device {
        /// The slot.
        slot: u32,
        /// What failed.
        reason: String,
    },
    /// `nvml = "on"` and the GPUs cannot be read from NVML.
    #[error("gpu_node.nvml = \"on\": {0}")]
    Nvml(#[from] crate::nvml::NvmlSetupError),
    /// A blocking start-up task failed.
    #[error("start-up task failed: {0}")]
    Startup(String),
    /// MP4 encoding failed.
    #[error(transparent)]
    Mp4(#[from] crate::mp4::Mp4Error),
}

/// Result with the node's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
