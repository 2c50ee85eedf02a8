//! Every type that crosses a process boundary in mochi-serve: the job request and its
//! validation, the job's shape, its durable record and state machine, the messages between
//! gateway, coordinator and GPU nodes, every NATS name, and the wire encoding (JSON at the
//! edges, bincode with a version tag inside).
//!
//! With the `jetstream` feature it also connects to NATS and creates the JetStream
//! resources; without it the crate has no async runtime dependency.

pub mod api;
pub mod codec;
pub mod config;
pub mod cost;
pub mod error;
pub mod ids;
#[cfg(feature = "jetstream")]
pub mod jetstream;
#[cfg(feature = "jetstream")]
pub mod lease;
pub mod memory;
pub mod messages;
pub mod names;
pub mod nats_users;
pub mod queue;
pub mod random;
pub mod record;
#[cfg(feature = "jetstream")]
pub mod record_writes;
pub mod shape;
#[cfg(feature = "jetstream")]
pub mod shared_value;
pub mod spec;

pub use codec::{CodecError, WireMessage};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{JobId, NodeId, TenantId};
pub use messages::now_ms;
pub use record::{JobEvent, JobRecord, JobState};
pub use shape::JobShape;
pub use spec::{JobSpec, Limits, SpecError};
