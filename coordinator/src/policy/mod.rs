//! Scheduling policies behind one trait, used by the live scheduler and by the simulator
//! alike: a pure function from the slots (free or running) and the waiting jobs to
//! placements and preemptions.
//!
//! * [`fifo`]: the seeds' design — oldest job onto any free slot, no size knowledge.
//! * `fifo-failfast`: the same; an over-sized job fails at its first step instead of late.
//! * `fifo-admit`: FIFO with our admission control and fit-aware placement.
//! * [`length_aware`]: lanes by predicted GPU time, a short-lane reserve, aging relative to
//!   a job's own size, best fit on memory and class, tenant fair share, priorities, and
//!   preemption at step boundaries.

mod contract;
pub mod eta;
pub mod fifo;
pub mod length_aware;

use serde::{Deserialize, Serialize};

pub use contract::{
    Aging, Decision, Lane, LaneBounds, Placement, Policy, Preemption, Running, STARVING, Slot,
    Traits, View, Waiting, fits, tenant_hash,
};
pub use length_aware::{LengthAware, LengthAwareConfig};

/// Which policy to run (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// The seeds' FIFO.
    Fifo,
    /// FIFO; over-sized jobs fail at the first step.
    FifoFailfast,
    /// FIFO with admission control.
    FifoAdmit,
    /// Ours.
    #[default]
    LengthAware,
}

impl PolicyKind {
    /// Every kind, baselines first.
    pub const ALL: [Self; 4] = [
        Self::Fifo,
        Self::FifoFailfast,
        Self::FifoAdmit,
        Self::LengthAware,
    ];

    /// The kind of a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fifo => "fifo",
            Self::FifoFailfast => "fifo-failfast",
            Self::FifoAdmit => "fifo-admit",
            Self::LengthAware => "length-aware",
        }
    }

    /// The policy, with `config` for the length-aware one.
    pub fn build(self, config: LengthAwareConfig) -> Box<dyn Policy> {
        match self {
            Self::Fifo => Box::new(fifo::Fifo::blind(false)),
            Self::FifoFailfast => Box::new(fifo::Fifo::blind(true)),
            Self::FifoAdmit => Box::new(fifo::Fifo::admit()),
            Self::LengthAware => Box::new(LengthAware::new(config)),
        }
    }
}

#[cfg(test)]
mod tests;
