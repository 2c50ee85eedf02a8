//! Lease expiry. The scheduler finds the jobs whose lease deadline has passed ([`due`]); the
//! keeper sends each back to the queue with `LeaseExpired` and a retry backoff, by
//! compare-and-set and only while the stored lease is still past its deadline (a node that
//! renewed in the meantime keeps its job), and not during the grace after it started or
//! last saw NATS unreachable ([`Grace`]).

use protocol::{JobEvent, JobRecord, now_ms};

use crate::config::Config;
use crate::scheduler::view::OnNode;
use crate::{metrics, store};
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
/// started (a new leader, a rebuilt coordinator) and after it last saw NATS unreachable
/// (their renewals could not land meanwhile either).
pub(super) struct Grace {
    until_ms: u64,
}

impl Grace {
    /// The grace of a keeper starting at `now_ms`.
    pub(super) fn new(now_ms: u64, lease_ms: u64) -> Self {
        Self {
            until_ms: now_ms.saturating_add(lease_ms),
        }
    }

    /// Looks at the NATS connection of `client` and says whether leases are in their grace
    /// at `now`.
    pub(super) fn active(&mut self, client: &async_nats::Client, now: u64, lease_ms: u64) -> bool {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        self.until_ms = grace_until(self.until_ms, now, connected, lease_ms);
        now < self.until_ms
    }
}

/// The end of the expiry grace after looking at the NATS connection at `now_ms`.
fn grace_until(current_ms: u64, now_ms: u64, nats_connected: bool, lease_ms: u64) -> u64 {
    if nats_connected {
        current_ms
    } else {
        current_ms.max(now_ms.saturating_add(lease_ms))
    }
}

/// Expires the lease while it is still past its deadline; returns whether it was written.
pub(super) async fn expire(jobs: &JobStore, config: &Config, job: &OnNode) -> bool {
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

    #[test]
    fn an_unreachable_nats_extends_the_expiry_grace_by_a_lease() {
        assert_eq!(grace_until(500, 1_000, true, 300), 500);
        assert_eq!(grace_until(500, 1_000, false, 300), 1_300);
        assert_eq!(grace_until(5_000, 1_000, false, 300), 5_000);
    }

    #[test]
    fn nothing_is_due_before_any_deadline() {
        assert!(due(&[job(500), job(600)], 499).is_empty());
    }
}
