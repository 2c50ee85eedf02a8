//! Why a running job is being stopped: one flag shared by the slot actor, which sets it,
//! and the worker thread, which reads it at every step boundary.

use std::sync::atomic::{AtomicU8, Ordering};

/// Why a running job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum StopReason {
    /// It is not: run on.
    None = 0,
    /// Cancelled by the client or fenced out by a newer attempt: write nothing more.
    Abandon = 1,
    /// The node is shutting down while the job decodes: fail it as retryable (its
    /// denoised latent is saved, so the retry only decodes).
    Shutdown = 2,
    /// Preempted for another job: pause at the next step boundary, save the state, write
    /// `preempted`.
    Pause = 3,
    /// The node is shutting down while the job denoises: pause it like a preemption, so
    /// that another node resumes it from the saved step instead of step 0.
    HandBack = 4,
}

impl StopReason {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Abandon,
            2 => Self::Shutdown,
            3 => Self::Pause,
            4 => Self::HandBack,
            _ => Self::None,
        }
    }

    /// Whether the worker should pause (save its state) rather than stop.
    pub(super) fn pauses(self) -> bool {
        matches!(self, Self::Pause | Self::HandBack)
    }
}

/// The running job's stop request.
#[derive(Debug)]
pub(super) struct StopFlag(AtomicU8);

impl StopFlag {
    /// A flag that asks for nothing yet.
    pub(super) fn new() -> Self {
        Self(AtomicU8::new(StopReason::None as u8))
    }

    /// The current request.
    pub(super) fn get(&self) -> StopReason {
        StopReason::from_u8(self.0.load(Ordering::SeqCst))
    }

    /// Asks for `reason` whatever was asked before (abandoning overrides everything).
    pub(super) fn set(&self, reason: StopReason) {
        self.0.store(reason as u8, Ordering::SeqCst);
    }

    /// Asks for `reason` only when nothing was asked yet; else returns what was.
    pub(super) fn request(&self, reason: StopReason) -> Result<(), StopReason> {
        self.0
            .compare_exchange(
                StopReason::None as u8,
                reason as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .map(|_| ())
            .map_err(StopReason::from_u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_survives_the_round_trip_through_the_flag() {
        let flag = StopFlag::new();
        assert_eq!(flag.get(), StopReason::None);
        for reason in [
            StopReason::Abandon,
            StopReason::Shutdown,
            StopReason::Pause,
            StopReason::HandBack,
            StopReason::None,
        ] {
            flag.set(reason);
            assert_eq!(flag.get(), reason);
        }
    }

    #[test]
    fn a_request_only_lands_on_a_job_nobody_is_stopping_yet() {
        let flag = StopFlag::new();
        assert_eq!(flag.request(StopReason::Pause), Ok(()));
        assert_eq!(
            flag.request(StopReason::HandBack),
            Err(StopReason::Pause),
            "a pending pause already hands the job back"
        );
        flag.set(StopReason::Abandon);
        assert_eq!(flag.request(StopReason::Shutdown), Err(StopReason::Abandon));
        assert!(StopReason::HandBack.pauses() && StopReason::Pause.pauses());
        assert!(!StopReason::Shutdown.pauses() && !StopReason::Abandon.pauses());
    }
}
