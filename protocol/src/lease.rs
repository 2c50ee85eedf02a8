//! Leases in the `mochi_leader` KV bucket: one holder among replicas, for each key. The
//! coordinators elect their leader on [`crate::names::KEY_LEADER`]; the gateways pick the one that
//! reads job records into webhook events on [`crate::names::KEY_WEBHOOK_SOURCE`].
//!
//! One key holds the holder's name. A replica takes the lease by creating the key (only one
//! create wins) or, when the holder went silent, by a compare-and-set on the revision it saw.
//! The holder renews by compare-and-set on its own last revision every third of the lease;
//! a refused renewal means another replica took over, and the holder steps down at once.
//!
//! Time is never compared across machines. The holder counts its lease from the moment it
//! *sent* its last successful renewal and steps down when that runs out without another;
//! a standby counts from the moment it *saw* a revision and takes over only when the revision
//! has not changed for a whole lease plus a margin. Since the send precedes the server's
//! write, which precedes the standby's read, the old holder has always stopped before a new
//! one starts (with equal clock rates). What a holder does must still be safe under an
//! overlap (clock rates differ): job records are written by compare-and-set, webhook events
//! carry stable message ids; the lease keeps an overlap from costing wasted work.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{codec, now_ms};

/// A name for this replica of `role` in logs and lease records: `<host>-<pid>`, and
/// `<host>-<pid>-<n>` for the n-th further one in the same process (tests, `mochi up`).
pub fn host_instance(role: &str) -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| role.to_owned());
    let name = format!("{}-{}", host.trim(), std::process::id());
    match MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => name,
        n => format!("{name}-{n}"),
    }
}

/// What a lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The replica holding the lease.
    pub holder: String,
    /// Lease length the holder uses, ms.
    pub lease_ms: u64,
    /// Wall-clock time of the write, ms since the epoch (for people, never for decisions).
    pub renewed_at_ms: u64,
}

/// A replica's role, as published on the election's watch channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another replica holds the lease (or nobody yet).
    Standby,
    /// This replica holds the lease; `term` is the revision of the write that won it.
    Leader {
        /// The fencing term: the KV revision at which the lease was won.
        term: u64,
    },
}

impl Role {
    /// Whether this replica holds the lease.
    pub fn is_leader(self) -> bool {
        matches!(self, Self::Leader { .. })
    }
}

/// One replica's view of the election for one key.
pub struct Election {
    kv: kv::Store,
    key: &'static str,
    instance: String,
    lease: Duration,
    on_term: Option<fn(u64)>,
}

/// Where this replica stands.
enum Standing {
    /// Leading: the revision of our last write and when our lease runs out.
    Leading {
        term: u64,
        revision: u64,
        until: Instant,
    },
    /// Waiting: the last revision seen, and when we saw it change.
    Waiting { seen: Option<(u64, Instant)> },
}

impl Election {
    /// An election for replica `instance` on `key` of `kv` (the `mochi_leader` bucket) with
    /// leases of `lease_ms`.
    pub fn new(kv: kv::Store, key: &'static str, instance: String, lease_ms: u64) -> Self {
        Self {
            kv,
            key,
            instance,
            lease: Duration::from_millis(lease_ms),
            on_term: None,
        }
    }

    /// Calls `hook` with the term each time this replica wins the lease (e.g. to count terms).
    #[must_use]
    pub fn on_term(mut self, hook: fn(u64)) -> Self {
        self.on_term = Some(hook);
        self
    }

    fn value(&self) -> Option<Vec<u8>> {
        let record = LeaseRecord {
            holder: self.instance.clone(),
            lease_ms: u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX),
            renewed_at_ms: now_ms(),
        };
        codec::to_json(&record).ok()
    }

    /// Campaigns until `shutdown` completes: publishes every change of role on `role`. On
    /// shutdown a holder deletes its key (only if it still holds it) so that a standby takes
    /// over at once.
    pub async fn run(self, role: watch::Sender<Role>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let renew_every = self.lease / 3;
        let mut standing = Standing::Waiting { seen: None };
        loop {
            standing = match standing {
                Standing::Leading {
                    term,
                    revision,
                    until,
                } => self.renew(term, revision, until, &role).await,
                Standing::Waiting { seen } => self.try_acquire(seen, &role).await,
            };
            let pause = match standing {
                // Renew early; never sleep past the lease.
                Standing::Leading { until, .. } => {
                    renew_every.min(until.saturating_duration_since(Instant::now()))
                }
                Standing::Waiting { .. } => renew_every / 2,
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Standing::Leading { revision, .. } = standing {
            role.send_replace(Role::Standby);
            match self
                .kv
                .delete_expect_revision(self.key, Some(revision))
                .await
            {
                Ok(()) => {
                    tracing::info!(instance = %self.instance, key = self.key, "lease released")
                }
                Err(error) => tracing::warn!(%error, "cannot release the lease; it expires"),
            }
        }
    }

    async fn renew(
        &self,
        term: u64,
        revision: u64,
        until: Instant,
        role: &watch::Sender<Role>,
    ) -> Standing {
        let sent = Instant::now();
        let step_down = |why: &str| {
            tracing::warn!(instance = %self.instance, key = self.key, term, reason = why, "stepping down");
            role.send_replace(Role::Standby);
            Standing::Waiting { seen: None }
        };
        if sent >= until {
            return step_down("lease ran out before it could be renewed");
        }
        let Some(value) = self.value() else {
            return step_down("cannot encode the lease");
        };
        let update = self.kv.update(self.key, value.into(), revision);
        match tokio::time::timeout(until - sent, update).await {
            Ok(Ok(revision)) => Standing::Leading {
                term,
                revision,
                until: sent + self.lease,
            },
            Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                step_down("another replica holds the lease")
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot renew the lease; retrying");
                if Instant::now() >= until {
                    step_down("lease ran out while NATS was unreachable")
                } else {
                    Standing::Leading {
                        term,
                        revision,
                        until,
                    }
                }
            }
            Err(_) => step_down("lease ran out while renewing"),
        }
    }

    async fn try_acquire(
        &self,
        seen: Option<(u64, Instant)>,
        role: &watch::Sender<Role>,
    ) -> Standing {
        let entry = match self.kv.entry(self.key).await {
            Ok(entry) => entry,
            Err(error) => {
                tracing::debug!(%error, "cannot read the lease");
                return Standing::Waiting { seen };
            }
        };
        let sent = Instant::now();
        let Some(value) = self.value() else {
            return Standing::Waiting { seen };
        };
        let won = match entry {
            // Nobody holds it (never did, or the holder released it): create wins for one replica.
            None => self.kv.create(self.key, value.into()).await.ok(),
            Some(entry) if entry.operation != Operation::Put => {
                self.kv.create(self.key, value.into()).await.ok()
            }
            Some(entry) => match seen {
                // The holder has not renewed for a whole lease (plus a margin) since we first
                // saw this revision: take over by compare-and-set on it.
                Some((revision, at))
                    if revision == entry.revision && at.elapsed() > self.lease + self.lease / 5 =>
                {
                    let holder = codec::from_json::<LeaseRecord>(&entry.value)
                        .map(|r| r.holder)
                        .unwrap_or_default();
                    tracing::warn!(instance = %self.instance, key = self.key, %holder, "lease expired; taking over");
                    self.kv
                        .update(self.key, value.into(), entry.revision)
                        .await
                        .ok()
                }
                Some((revision, at)) if revision == entry.revision => {
                    return Standing::Waiting {
                        seen: Some((revision, at)),
                    };
                }
                _ => {
                    return Standing::Waiting {
                        seen: Some((entry.revision, Instant::now())),
                    };
                }
            },
        };
        match won {
            Some(revision) => {
                if let Some(hook) = self.on_term {
                    hook(revision);
                }
                tracing::info!(instance = %self.instance, key = self.key, term = revision, "lease won");
                role.send_replace(Role::Leader { term: revision });
                Standing::Leading {
                    term: revision,
                    revision,
                    until: sent + self.lease,
                }
            }
            None => Standing::Waiting { seen: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_record_round_trips_as_json() {
        let record = LeaseRecord {
            holder: "coord-a".to_owned(),
            lease_ms: 1_000,
            renewed_at_ms: 5,
        };
        let bytes = codec::to_json(&record).expect("encode");
        assert_eq!(
            codec::from_json::<LeaseRecord>(&bytes).expect("decode"),
            record
        );
        assert!(Role::Leader { term: 3 }.is_leader());
        assert!(!Role::Standby.is_leader());
    }
}
