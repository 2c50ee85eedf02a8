//! Each tenant's jobs in creation order, for `GET /v1/videos`: kept in memory by one watch
//! of `mochi_jobs` (which also feeds the quota counts), so that a page costs a range walk
//! of an ordered set and one record read per job shown, whatever the bucket holds.
//!
//! Every replica builds its own index from the watch: at start it replays the newest
//! revision of every record, then follows changes within milliseconds. A replica's own
//! submissions are listed at once, before its watch shows their record.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use protocol::api::VideoStatus;
use protocol::{JobId, JobRecord, TenantId, codec, now_ms};

use crate::auth::quota::TenantLoad;

/// How long a submission accepted here is listed before its record must have appeared.
const PENDING_FOR_MS: u64 = 60_000;
/// Wait before watching the bucket again after the watch ended.
const RETRY: Duration = Duration::from_secs(1);

/// Where a job sits in its tenant's order: creation time (ms), then id.
type Position = (u64, JobId);

#[derive(Debug, Clone)]
struct Entry {
    tenant: TenantId,
    created_ms: u64,
    status: VideoStatus,
    /// Accepted here; no record seen yet.
    pending: bool,
    /// When the job ended, while its files are still stored.
    ended_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Index {
    jobs: HashMap<JobId, Entry>,
    by_tenant: HashMap<TenantId, BTreeSet<Position>>,
    /// Pending submissions in order of acceptance, to expire them.
    pending: VecDeque<(u64, JobId)>,
}

impl Index {
    fn remove(&mut self, id: JobId) -> Option<Entry> {
        let entry = self.jobs.remove(&id)?;
        if let Some(set) = self.by_tenant.get_mut(&entry.tenant) {
            set.remove(&(entry.created_ms, id));
            if set.is_empty() {
                self.by_tenant.remove(&entry.tenant);
            }
        }
        Some(entry)
    }

    fn insert(&mut self, id: JobId, entry: Entry) {
        self.remove(id);
        self.by_tenant
            .entry(entry.tenant.clone())
            .or_default()
            .insert((entry.created_ms, id));
        self.jobs.insert(id, entry);
    }

    /// A record's newest revision (`None`: deleted, or a tombstone).
    fn record_seen(&mut self, id: JobId, record: Option<&JobRecord>) {
        match record {
            Some(record) => self.insert(
                id,
                Entry {
                    tenant: record.tenant.clone(),
                    created_ms: record.created_at_ms,
                    status: VideoStatus::of(record.state),
                    pending: false,
                    ended_ms: record
                        .finished_at_ms
                        .filter(|_| record.state.is_terminal())
                        .filter(|_| record.files_removed_at_ms.is_none()),
                },
            ),
            None => {
                self.remove(id);
            }
        }
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(at, id)) = self.pending.front() {
            if now.saturating_sub(at) < PENDING_FOR_MS {
                break;
            }
            self.pending.pop_front();
            if self.jobs.get(&id).is_some_and(|entry| entry.pending) {
                self.remove(id);
            }
        }
    }
}

/// What a page asks for.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    /// Continue after this job (the previous page's `last_id`).
    pub after: Option<JobId>,
    /// Most jobs on the page.
    pub limit: usize,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// Only jobs with this status.
    pub status: Option<VideoStatus>,
    /// Only jobs created at or after this time, ms since the epoch.
    pub created_after_ms: Option<u64>,
}

/// A page of job ids, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The ids.
    pub ids: Vec<JobId>,
    /// Whether more jobs match after the last one.
    pub has_more: bool,
}

/// Why a page cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// `after` names no job of the tenant.
    #[error("after names no job in this list")]
    UnknownCursor,
}

/// A [`JobIndex`] that does not keep it alive.
pub struct WeakIndex(Weak<RwLock<Index>>);

impl WeakIndex {
    /// The index, while some [`JobIndex`] holds it.
    pub fn upgrade(&self) -> Option<JobIndex> {
        self.0.upgrade().map(|index| JobIndex { index })
    }
}

/// Every tenant's jobs by creation time, as this replica knows them.
#[derive(Clone, Default)]
pub struct JobIndex {
    index: Arc<RwLock<Index>>,
}

impl JobIndex {
    /// Empty until [`watch`] feeds it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists a submission accepted here until its record appears (or a minute passes).
    pub fn submitted(&self, id: JobId, tenant: TenantId, at_ms: u64) {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        if index.jobs.contains_key(&id) {
            return;
        }
        index.insert(
            id,
            Entry {
                tenant,
                created_ms: at_ms,
                status: VideoStatus::Queued,
                pending: true,
                ended_ms: None,
            },
        );
        index.pending.push_back((at_ms, id));
    }

    /// Forgets a job at once (deleted here; the watch confirms it).
    pub fn forget(&self, id: JobId) {
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Up to `max` jobs that ended before `ended_before_ms` and still have their files (a
    /// walk of every job: the retention sweep's, once a minute).
    pub fn expired(&self, ended_before_ms: u64, max: usize) -> Vec<JobId> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index
            .jobs
            .iter()
            .filter(|(_, entry)| entry.ended_ms.is_some_and(|ended| ended < ended_before_ms))
            .map(|(id, _)| *id)
            .take(max)
            .collect()
    }

    /// A handle that does not keep the index alive (for tasks that should end with it).
    pub fn downgrade(&self) -> WeakIndex {
        WeakIndex(Arc::downgrade(&self.index))
    }

    /// Jobs of `tenant` in the tenant's index.
    pub fn len_of(&self, tenant: &TenantId) -> usize {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index.by_tenant.get(tenant).map_or(0, BTreeSet::len)
    }

    /// One page of `tenant`'s jobs: a walk of the tenant's ordered set from the cursor,
    /// skipping what the filters exclude.
    pub fn page(&self, tenant: &TenantId, query: &PageQuery) -> Result<Page, PageError> {
        let now = now_ms();
        let stale = |index: &Index| {
            index
                .pending
                .front()
                .is_some_and(|&(at, _)| now.saturating_sub(at) >= PENDING_FOR_MS)
        };
        // Readers share the lock; only a page that finds stale submissions takes it alone.
        if stale(&self.index.read().unwrap_or_else(|p| p.into_inner())) {
            self.index
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .expire(now);
        }
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let cursor = match query.after {
            Some(after) => match index.jobs.get(&after) {
                Some(entry) if &entry.tenant == tenant => Some((entry.created_ms, after)),
                _ => return Err(PageError::UnknownCursor),
            },
            None => None,
        };
        let Some(set) = index.by_tenant.get(tenant) else {
            return Ok(Page {
                ids: Vec::new(),
                has_more: false,
            });
        };
        let floor = query.created_after_ms.unwrap_or(0);
        let lowest = (floor, JobId(uuid::Uuid::nil()));
        let (low, high) = match (query.ascending, cursor) {
            (true, Some(cursor)) => (Bound::Excluded(cursor.max(lowest)), Bound::Unbounded),
            (true, None) => (Bound::Included(lowest), Bound::Unbounded),
            (false, Some(cursor)) => (Bound::Included(lowest), Bound::Excluded(cursor)),
            (false, None) => (Bound::Included(lowest), Bound::Unbounded),
        };
        if let (Bound::Included(low) | Bound::Excluded(low), Bound::Excluded(high)) = (low, high)
            && low >= high
        {
            return Ok(Page {
                ids: Vec::new(),
                has_more: false,
            });
        }
        let range = set.range((low, high));
        let wanted = |(_, id): &&Position| {
            query.status.is_none_or(|status| {
                index
                    .jobs
                    .get(id)
                    .is_some_and(|entry| entry.status == status)
            })
        };
        let mut ids: Vec<JobId> = if query.ascending {
            range
                .filter(wanted)
                .take(query.limit + 1)
                .map(|(_, id)| *id)
                .collect()
        } else {
            range
                .rev()
                .filter(wanted)
                .take(query.limit + 1)
                .map(|(_, id)| *id)
                .collect()
        };
        let has_more = ids.len() > query.limit;
        ids.truncate(query.limit);
        Ok(Page { ids, has_more })
    }

    fn record_seen(&self, id: JobId, record: Option<&JobRecord>) {
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .record_seen(id, record);
    }
}

/// Keeps `load` (quotas) and `index` (lists) current from `jobs`, for as long as either
/// lives.
pub fn watch(jobs: kv::Store, load: &TenantLoad, index: &JobIndex) -> tokio::task::JoinHandle<()> {
    let load = load.downgrade();
    let index = Arc::downgrade(&index.index);
    tokio::spawn(follow(jobs, load, index))
}

async fn follow(jobs: kv::Store, load: crate::auth::quota::WeakLoad, index: Weak<RwLock<Index>>) {
    loop {
        match jobs.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let (Some(load), Some(index)) = (load.upgrade(), index.upgrade()) else {
                        return;
                    };
                    let index = JobIndex { index };
                    let Ok(entry) = entry else { break };
                    let Ok(id) = entry.key.parse::<JobId>() else {
                        continue;
                    };
                    let record = match entry.operation {
                        Operation::Put => match codec::decode::<JobRecord>(&entry.value) {
                            Ok(record) if record.deleted_at_ms.is_none() => Some(record),
                            Ok(_) => None,
                            Err(_) => {
                                tracing::warn!(job_id = %id, "unreadable job record: not listed, not counted in its tenant's quota");
                                None
                            }
                        },
                        Operation::Delete | Operation::Purge => None,
                    };
                    let active = record
                        .as_ref()
                        .filter(|record| !record.state.is_terminal())
                        .map(|record| record.tenant.clone());
                    load.record_seen(id, active);
                    index.record_seen(id, record.as_ref());
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch the job records for lists and quotas; retrying")
            }
        }
        if index.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use protocol::JobState;

    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("tenant")
    }

    fn record(tenant: &TenantId, created_ms: u64, state: JobState) -> JobRecord {
        let spec = protocol::JobSpec::new("x");
        let shape = spec
            .validate(&protocol::spec::Limits::default())
            .expect("valid");
        let mut record =
            JobRecord::queued(JobId::new(), tenant.clone(), spec, shape, 1, 3, created_ms);
        record.state = state;
        record
    }

    fn filled(count: u64) -> (JobIndex, Vec<JobId>) {
        let index = JobIndex::new();
        let acme = tenant("acme");
        let mut ids = Vec::new();
        for i in 0..count {
            let state = if i % 2 == 0 {
                JobState::Succeeded
            } else {
                JobState::Queued
            };
            let record = record(&acme, 1_000 + i, state);
            index.record_seen(record.id, Some(&record));
            ids.push(record.id);
            let other = record_for_other(i);
            index.record_seen(other.id, Some(&other));
        }
        (index, ids)
    }

    fn record_for_other(i: u64) -> JobRecord {
        record(&tenant("other"), 1_000 + i, JobState::Queued)
    }

    fn query(limit: usize) -> PageQuery {
        PageQuery {
            limit,
            ..PageQuery::default()
        }
    }

    #[test]
    fn pages_walk_newest_first_then_continue_after_the_last_id() {
        let (index, ids) = filled(5);
        let acme = tenant("acme");
        let first = index.page(&acme, &query(2)).expect("page");
        assert_eq!(first.ids, vec![ids[4], ids[3]]);
        assert!(first.has_more);
        let second = index
            .page(
                &acme,
                &PageQuery {
                    after: Some(ids[3]),
                    ..query(2)
                },
            )
            .expect("page");
        assert_eq!(second.ids, vec![ids[2], ids[1]]);
        let last = index
            .page(
                &acme,
                &PageQuery {
                    after: Some(ids[1]),
                    ..query(2)
                },
            )
            .expect("page");
        assert_eq!((last.ids, last.has_more), (vec![ids[0]], false));
    }

    #[test]
    fn ascending_order_filters_and_lower_bounds() {
        let (index, ids) = filled(6);
        let acme = tenant("acme");
        let page = index
            .page(
                &acme,
                &PageQuery {
                    ascending: true,
                    ..query(10)
                },
            )
            .expect("page");
        assert_eq!(page.ids, ids);
        let done = index
            .page(
                &acme,
                &PageQuery {
                    status: Some(VideoStatus::Completed),
                    ..query(10)
                },
            )
            .expect("page");
        assert_eq!(done.ids, vec![ids[4], ids[2], ids[0]]);
        let recent = index
            .page(
                &acme,
                &PageQuery {
                    created_after_ms: Some(1_003),
                    ..query(10)
                },
            )
            .expect("page");
        assert_eq!(recent.ids, vec![ids[5], ids[4], ids[3]]);
        let after = index
            .page(
                &acme,
                &PageQuery {
                    after: Some(ids[4]),
                    created_after_ms: Some(1_003),
                    ..query(10)
                },
            )
            .expect("page");
        assert_eq!(after.ids, vec![ids[3]]);
    }

    #[test]
    fn another_tenants_job_is_no_cursor_and_never_listed() {
        let (index, _) = filled(3);
        let other = record_for_other(9);
        index.record_seen(other.id, Some(&other));
        assert_eq!(
            index.page(
                &tenant("acme"),
                &PageQuery {
                    after: Some(other.id),
                    ..query(5)
                }
            ),
            Err(PageError::UnknownCursor)
        );
        assert_eq!(
            index.page(&tenant("nobody"), &query(5)).expect("page").ids,
            vec![]
        );
        assert_eq!(index.len_of(&tenant("acme")), 3);
    }

    #[test]
    fn a_record_moves_the_pending_entry_and_a_delete_removes_it() {
        let index = JobIndex::new();
        let acme = tenant("acme");
        let now = now_ms();
        let mut record = record(&acme, now + 10, JobState::Running);
        index.submitted(record.id, acme.clone(), now);
        assert_eq!(
            index.page(&acme, &query(5)).expect("page").ids,
            vec![record.id]
        );
        index.record_seen(record.id, Some(&record));
        let only = index
            .page(
                &acme,
                &PageQuery {
                    status: Some(VideoStatus::InProgress),
                    ..query(5)
                },
            )
            .expect("page");
        assert_eq!(only.ids, vec![record.id]);
        record.state = JobState::Succeeded;
        index.record_seen(record.id, Some(&record));
        index.record_seen(record.id, None);
        assert_eq!(index.len_of(&acme), 0);
    }

    #[test]
    fn a_pending_entry_whose_record_never_comes_expires() {
        let index = JobIndex::new();
        let acme = tenant("acme");
        index.submitted(JobId::new(), acme.clone(), now_ms() - PENDING_FOR_MS - 1);
        index.submitted(JobId::new(), acme.clone(), now_ms());
        assert_eq!(index.page(&acme, &query(5)).expect("page").ids.len(), 1);
    }
}
