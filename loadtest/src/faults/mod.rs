//! Fault injection with real processes: the stack runs as separate OS processes on loopback
//! ([`crate::cluster`]); a stream of jobs is submitted through the gateway while the harness kills
//! (`kill -9`) a GPU node mid-job, the leading coordinator and the nats-server (restarted on
//! the same store), stops a node (SIGSTOP) for longer than its lease, repeats submissions
//! with the same idempotency key and cancels jobs at random moments. At the end every
//! accepted job is checked ([`check`]): exactly one terminal state, none lost, no duplicate
//! result, every succeeded MP4 present and matching its record, every cancel honoured.
//!
//! Run it on a current-thread runtime: children are bound to the thread that started them
//! (`PR_SET_PDEATHSIG`), which must outlive them.

pub mod check;
mod config;
mod error;
mod harness;
mod report;

pub use config::FaultConfig;
pub use error::FaultError;
pub use harness::{find_nats_server, run};
pub use report::FaultReport;
