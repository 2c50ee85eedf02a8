//! Lease expiry. The scheduler finds the jobs whose lease deadline has passed ([`due`]); the
//! keeper sends each back to the queue with `LeaseExpired` and a retry backoff, by
//! compare-and-set and only while the stored lease is still past its deadline (a node that
//! renewed in the meantime keeps its job), and not during the grace after it started, last
//! saw NATS unreachable or last saw a record write fail ([`Grace`], [`StoreFailures`]).

use protocol::jetstream::StoreError;
use protocol::{JobEvent, JobRecord, now_ms};

use crate::config::Config;
use crate::metrics;
use crate::scheduler::view::OnNode;
use crate::store::{self, StoreFailures};
use protocol::jetstream::JobStore;

/// The jobs whose lease deadline has passed at `now_ms`.
pub fn due<'a>(on_node: impl IntoIterator<Item = &'a OnNode>, now_ms: u64) -> Vec<OnNode> {
    on_node
        .into_iter()
        .filter(|job| job.deadline_ms < now_ms)
        .cloned()
        .collect()
}

/// No lease is expired before `until_ms`: nodes get a whole lease to renew after the keeper
/// started (a new leader, a rebuilt coordinator), after it last saw NATS unreachable, and
/// after a job-record write last failed (their renewals could not land meanwhile either).
pub(super) struct Grace {
    until_ms: u64,
    store_failures: StoreFailures,
}

impl Grace {
    /// The grace of a keeper starting at `now_ms`, extended by the write failures noted in
    /// `store_failures`.
    pub(super) fn new(now_ms: u64, lease_ms: u64, store_failures: StoreFailures) -> Self {
        Self {
            until_ms: now_ms.saturating_add(lease_ms),
            store_failures,
        }
    }

    /// Looks at the NATS connection of `client` and at the last failed record write, and
    /// says whether leases are in their grace at `now`.
    pub(super) fn active(&mut self, client: &async_nats::Client, now: u64, lease_ms: u64) -> bool {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let seen = Seen {
            nats_connected: connected,
            write_failed_at_ms: self.store_failures.last_ms(),
        };
        self.until_ms = grace_until(self.until_ms, now, seen, lease_ms);
        now < self.until_ms
    }

    /// Notes that one of the keeper's own record writes failed at `now_ms`.
    pub(super) fn write_failed(&self, now_ms: u64) {
        self.store_failures.note(now_ms);
    }
}

/// What the grace looks at.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Whether the NATS connection is up now.
    nats_connected: bool,
    /// When a job-record write last failed for want of the store.
    write_failed_at_ms: Option<u64>,
}

/// The end of the expiry grace after looking at the NATS connection and the last failed
/// record write at `now_ms`: a lease after whichever came last.
fn grace_until(current_ms: u64, now_ms: u64, seen: Seen, lease_ms: u64) -> u64 {
    let mut until = current_ms;
    if !seen.nats_connected {
        until = until.max(now_ms.saturating_add(lease_ms));
    }
    if let Some(failed_at) = seen.write_failed_at_ms {
        until = until.max(failed_at.saturating_add(lease_ms));
    }
    until
}

/// Expires the lease while it is still past its deadline; returns whether it was written.
/// A write that finds no store is noted in `grace`: no lease expires for a lease after it.
pub(super) async fn expire(jobs: &JobStore, config: &Config, job: &OnNode, grace: &Grace) -> bool {
    let now = now_ms();
    let retry_at_ms = now + config.backoff_ms(job.failed_attempts + 1);
    let event = JobEvent::LeaseExpired {
        attempt: job.attempt,
        retry_at_ms,
    };
    let still_due = |record: &JobRecord| {
        record.attempt == job.attempt
            && record.state.is_on_node()
            && record
                .lease
                .as_ref()
                .is_some_and(|lease| lease.deadline_ms < now)
    };
    match store::apply_if(jobs, job.job_id, &event, now, still_due).await {
        Ok(Some(written)) => {
            ::metrics::counter!(metrics::LEASES_EXPIRED).increment(1);
            tracing::warn!(
                job_id = %job.job_id,
                tenant = %written.record.tenant,
                attempt = job.attempt,
                node = %job.node,
                slot = job.slot,
                next_state = %written.record.state,
                retry_in_ms = retry_at_ms - now,
                "lease expired"
            );
            true
        }
        Ok(None) => {
            tracing::debug!(job_id = %job.job_id, "lease renewed or job moved on; not expired");
            false
        }
        Err(error) => {
            if matches!(error, StoreError::Nats { .. }) {
                grace.write_failed(now_ms());
            }
            tracing::warn!(job_id = %job.job_id, %error, "cannot expire the lease; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{JobId, NodeId};

    use super::*;

    fn job(deadline_ms: u64) -> OnNode {
        OnNode {
            job_id: JobId::new(),
            attempt: 1,
            failed_attempts: 0,
            node: NodeId::new("n").expect("valid"),
            slot: 0,
            deadline_ms,
        }
    }

    #[test]
    fn only_past_deadlines_are_due() {
        let jobs = [job(99), job(100), job(101)];
        let gone = due(&jobs, 100);
        assert_eq!(
            gone.iter().map(|j| j.deadline_ms).collect::<Vec<_>>(),
            vec![99]
        );
    }

    fn seen(nats_connected: bool, write_failed_at_ms: Option<u64>) -> Seen {
        Seen {
            nats_connected,
            write_failed_at_ms,
        }
    }

    #[test]
    fn an_unreachable_nats_extends_the_expiry_grace_by_a_lease() {
        assert_eq!(grace_until(500, 1_000, seen(true, None), 300), 500);
        assert_eq!(grace_until(500, 1_000, seen(false, None), 300), 1_300);
        assert_eq!(grace_until(5_000, 1_000, seen(false, None), 300), 5_000);
    }

    #[test]
    fn a_failed_record_write_extends_the_expiry_grace_to_a_lease_after_it() {
        // The store came back (writes succeed again) but the last failure was at 900:
        // renewals lost to the same outage get until 1_200 to land.
        assert_eq!(grace_until(500, 1_000, seen(true, Some(900)), 300), 1_200);
        // An old failure changes nothing.
        assert_eq!(grace_until(500, 1_000, seen(true, Some(100)), 300), 500);
        // Both: whichever ends later.
        assert_eq!(grace_until(500, 1_000, seen(false, Some(900)), 300), 1_300);
    }

    #[test]
    fn store_failures_keep_the_latest_time_across_clones() {
        let failures = StoreFailures::default();
        assert_eq!(failures.last_ms(), None);
        let clone = failures.clone();
        clone.note(700);
        failures.note(500);
        assert_eq!(failures.last_ms(), Some(700));
    }

    #[test]
    fn nothing_is_due_before_any_deadline() {
        assert!(due(&[job(500), job(600)], 499).is_empty());
    }
}
