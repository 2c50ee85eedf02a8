//! Per-tenant quota on queued + running jobs. The count comes from a watch of `mochi_jobs`
//! (every replica sees every record; the watch is `crate::index::watch`) plus this replica's
//! submissions its watch has not shown yet. Replicas check on their own, so N replicas accepting at the same instant
//! may overshoot by up to N − 1 jobs: the quota is a guard against one tenant filling the
//! queue, not an exact count.

use protocol::{JobId, TenantId, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

/// Quota settings (`[gateway.quota]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Queued + running jobs a tenant may have at once.
    pub max_active_jobs: u32,
    /// Per-tenant overrides of `max_active_jobs`.
    pub tenants: HashMap<String, u32>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            max_active_jobs: 1_000,
            tenants: HashMap::new(),
        }
    }
}

impl QuotaConfig {
    /// The limit of `tenant`.
    pub fn limit_of(&self, tenant: &TenantId) -> u32 {
        self.tenants
            .get(tenant.as_str())
            .copied()
            .unwrap_or(self.max_active_jobs)
    }
}

/// How long a submission counts as pending before its record must have appeared.
const PENDING_FOR_MS: u64 = 60_000;

#[derive(Debug, Default)]
struct Load {
    /// Active jobs by id, with their tenant.
    active: HashMap<JobId, TenantId>,
    /// Active jobs per tenant.
    per_tenant: HashMap<TenantId, u32>,
    /// Accepted here, not yet recorded: id → tenant.
    pending: HashMap<JobId, TenantId>,
    /// Pending submissions per tenant.
    pending_per_tenant: HashMap<TenantId, u32>,
    /// Pending submissions in order of acceptance (ms), to expire them.
    pending_order: VecDeque<(u64, JobId)>,
}

impl Load {
    fn unpend(&mut self, id: &JobId) {
        if let Some(tenant) = self.pending.remove(id)
            && let Some(count) = self.pending_per_tenant.get_mut(&tenant)
        {
            *count = count.saturating_sub(1);
        }
    }

    /// Forgets submissions whose record never appeared (refused, or lost to a restart).
    fn expire(&mut self, now: u64) {
        while let Some(&(at, id)) = self.pending_order.front() {
            if now.saturating_sub(at) < PENDING_FOR_MS {
                break;
            }
            self.pending_order.pop_front();
            self.unpend(&id);
        }
    }

    fn record_seen(&mut self, id: JobId, tenant: Option<TenantId>) {
        self.unpend(&id);
        let before = self.active.remove(&id);
        if let Some(tenant) = &before
            && let Some(count) = self.per_tenant.get_mut(tenant)
        {
            *count = count.saturating_sub(1);
        }
        if let Some(tenant) = tenant {
            *self.per_tenant.entry(tenant.clone()).or_default() += 1;
            self.active.insert(id, tenant);
        }
    }
}

/// A [`TenantLoad`] that does not keep it alive.
pub(crate) struct WeakLoad(Weak<Mutex<Load>>);

impl WeakLoad {
    /// The load, while some [`TenantLoad`] holds it.
    pub(crate) fn upgrade(&self) -> Option<TenantLoad> {
        self.0.upgrade().map(|load| TenantLoad { load })
    }
}

/// Each tenant's active jobs, as this replica knows them.
#[derive(Clone, Default)]
pub struct TenantLoad {
    load: Arc<Mutex<Load>>,
}

impl TenantLoad {
    /// Empty until the watch of `mochi_jobs` ([`crate::index::watch`]) feeds it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that does not keep the counts alive (for the watch that feeds them).
    pub(crate) fn downgrade(&self) -> WeakLoad {
        WeakLoad(Arc::downgrade(&self.load))
    }

    /// Active jobs of `tenant`, counting this replica's pending submissions.
    pub fn active(&self, tenant: &TenantId) -> u32 {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        load.expire(now_ms());
        load.per_tenant.get(tenant).copied().unwrap_or(0)
            + load.pending_per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// A record's newest revision: `tenant` while the job is active, `None` once it ended
    /// or was deleted.
    pub(crate) fn record_seen(&self, id: JobId, tenant: Option<TenantId>) {
        self.load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_seen(id, tenant);
    }

    /// Counts a submission accepted here until its record appears.
    pub fn submitted(&self, id: JobId, tenant: TenantId) {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        if !load.active.contains_key(&id) && !load.pending.contains_key(&id) {
            *load.pending_per_tenant.entry(tenant.clone()).or_default() += 1;
            load.pending.insert(id, tenant);
            load.pending_order.push_back((now_ms(), id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_records_and_pending_submissions() {
        let acme = TenantId::new("acme").expect("tenant");
        let other = TenantId::new("other").expect("tenant");
        let load = TenantLoad::new();
        let (a, b) = (JobId::new(), JobId::new());
        load.submitted(a, acme.clone());
        assert_eq!(load.active(&acme), 1);
        {
            let mut inner = load.load.lock().expect("lock");
            inner.record_seen(a, Some(acme.clone()));
            inner.record_seen(b, Some(other.clone()));
            inner.record_seen(a, Some(acme.clone()));
        }
        assert_eq!((load.active(&acme), load.active(&other)), (1, 1));
        load.load.lock().expect("lock").record_seen(a, None);
        assert_eq!(load.active(&acme), 0);
    }

    #[test]
    fn pending_submissions_expire_when_no_record_comes() {
        let acme = TenantId::new("acme").expect("tenant");
        let load = TenantLoad::new();
        load.submitted(JobId::new(), acme.clone());
        load.submitted(JobId::new(), acme.clone());
        assert_eq!(load.active(&acme), 2);
        let mut inner = load.load.lock().expect("lock");
        inner.expire(now_ms() + PENDING_FOR_MS);
        assert_eq!(inner.pending_per_tenant.get(&acme), Some(&0));
        assert!(inner.pending.is_empty() && inner.pending_order.is_empty());
    }

    #[test]
    fn overrides_win() {
        let config = QuotaConfig {
            max_active_jobs: 5,
            tenants: HashMap::from([("vip".to_owned(), 50)]),
        };
        assert_eq!(config.limit_of(&TenantId::new("vip").expect("t")), 50);
        assert_eq!(config.limit_of(&TenantId::new("x").expect("t")), 5);
    }
}
