//! Pauses between the tries of a write that may fail for a moment (no coordinator leads,
//! a replicated stream elects a leader): the first pause, doubling up to the longest,
//! until the write's budget runs out. Record writes ([`crate::records`]) and uploads
//! ([`crate::slot`]) both go through it.

use std::time::Duration;

use tokio::time::Instant;

/// The pauses left to one write.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    longest: Duration,
    deadline: Instant,
}

impl Backoff {
    /// Pauses that start at `first`, double up to `longest`, and end `budget` from now.
    pub fn new(first: Duration, longest: Duration, budget: Duration) -> Self {
        Self {
            next: first,
            longest,
            deadline: Instant::now() + budget,
        }
    }

    /// Waits before the next try and says true; says false at once, without waiting,
    /// when that pause would pass the deadline (the write gives up).
    pub async fn pause(&mut self) -> bool {
        if Instant::now() + self.next >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.longest);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_the_longest_and_end_before_the_budget() {
        let start = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
            Duration::from_millis(1_500),
        );
        let mut waits = Vec::new();
        let mut last = start;
        while backoff.pause().await {
            waits.push(last.elapsed());
            last = Instant::now();
        }
        // 100 + 200 + 400 = 700; the next 400 ends at 1,100, the one after at 1,500: too late.
        let millis: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [100, 200, 400, 400]);
        assert!(start.elapsed() < Duration::from_millis(1_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_never_waits() {
        let start = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        assert!(!backoff.pause().await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
