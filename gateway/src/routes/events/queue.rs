//! The queue side of an event stream: the job's own entry in `mochi_queue` and, once its
//! record shows it was never placed, its line in its submission time's page, each followed
//! by a watch; what the stream shows is the newer of the two ([`QueueInfo::current`]), with
//! the queue's length from the summary read when either changed. Best effort throughout:
//! without the bucket, no `queued` updates.

use async_nats::jetstream::kv;
use futures::StreamExt;
use protocol::queue::{QueueInfo, QueuePage, QueueSummary};
use protocol::{JobId, names};

use crate::routes::lookup::{counted_entry, line_of, queue_summary};
use crate::state::AppState;

/// One stream's view of its job's queue position.
pub(super) struct QueueFeed {
    job_id: JobId,
    store: Option<kv::Store>,
    own: Option<kv::Watch>,
    page: Option<kv::Watch>,
    /// The page to follow, once the record shows the job was never placed.
    wanted_page: Option<String>,
    page_followed: bool,
    /// The job's own entry, as read, with its revision.
    own_entry: Option<(QueueInfo, u64)>,
    own_revision: u64,
    /// The job's line in its page, with the page's revision.
    line: Option<(QueueInfo, u64)>,
    page_revision: u64,
    summary: Option<QueueSummary>,
}

impl QueueFeed {
    /// Starts watching job `job_id`'s own entry and reads it.
    pub(super) async fn open(state: &AppState, job_id: JobId) -> Self {
        let mut feed = Self {
            job_id,
            store: None,
            own: None,
            page: None,
            wanted_page: None,
            page_followed: false,
            own_entry: None,
            own_revision: 0,
            line: None,
            page_revision: 0,
            summary: None,
        };
        let Ok(store) = state
            .resources
            .context
            .get_key_value(names::BUCKET_QUEUE)
            .await
        else {
            return feed;
        };
        // The watch first, then the read: no change falls in between.
        feed.own = store.watch(job_id.to_string()).await.ok();
        let (entry, summary) = tokio::join!(store.entry(job_id.to_string()), queue_summary(&store));
        feed.summary = summary;
        if let Some(entry) = entry.ok().flatten() {
            feed.take(&entry);
        }
        feed.store = Some(store);
        feed
    }

    /// Asks for the page of a job submitted at `created_at_ms` to be followed too (from the
    /// next [`Self::follow_wanted`]); a job already placed has no page line that counts, so
    /// its page's watch, if any, is dropped.
    pub(super) fn want_page(&mut self, attempt: u32, created_at_ms: u64) {
        if attempt > 0 {
            self.wanted_page = None;
            self.page = None;
            self.line = None;
        } else if !self.page_followed {
            self.wanted_page = Some(QueuePage::key_for(self.job_id, created_at_ms));
        }
    }

    /// Starts the watch of the page asked for, if any, and reads the job's line in it; true
    /// if that changed what the feed knows.
    pub(super) async fn follow_wanted(&mut self) -> bool {
        let (Some(key), Some(store)) = (self.wanted_page.take(), self.store.clone()) else {
            return false;
        };
        self.page_followed = true;
        // The watch first, then the read: no change falls in between.
        self.page = store.watch(&key).await.ok();
        let (entry, summary) = tokio::join!(store.entry(&key), queue_summary(&store));
        match entry.ok().flatten() {
            Some(entry) if self.take(&entry) => {
                self.summary = summary;
                true
            }
            _ => false,
        }
    }

    /// The next change of either entry; pends forever once neither is watched.
    pub(super) async fn next(&mut self) -> kv::Entry {
        loop {
            let next = tokio::select! {
                entry = next_of(&mut self.own) => (entry, true),
                entry = next_of(&mut self.page) => (entry, false),
            };
            match next {
                (Some(Ok(entry)), _) => return entry,
                // A watch that failed or ended is dropped; the other goes on.
                (_, true) => self.own = None,
                (_, false) => self.page = None,
            }
        }
    }

    /// Takes in a change of either entry (older revisions than those read are skipped);
    /// true if it changed what the feed knows.
    pub(super) fn take(&mut self, entry: &kv::Entry) -> bool {
        let put = entry.operation == kv::Operation::Put;
        if entry.key == self.job_id.to_string() {
            if entry.revision <= self.own_revision {
                return false;
            }
            self.own_revision = entry.revision;
            self.own_entry = put
                .then(|| counted_entry(&entry.value, None))
                .flatten()
                .map(|info| (info, entry.revision));
        } else {
            if entry.revision <= self.page_revision {
                return false;
            }
            self.page_revision = entry.revision;
            let line = put.then(|| line_of(&entry.value, self.job_id)).flatten();
            if line.as_ref() == self.line.as_ref().map(|(info, _)| info) {
                // The page was written again for jobs that joined it: nothing new here.
                return false;
            }
            self.line = line.map(|info| (info, entry.revision));
        }
        true
    }

    /// Reads the queue's length again (after a change).
    pub(super) async fn refresh_summary(&mut self) {
        if let Some(store) = &self.store {
            self.summary = queue_summary(store).await;
        }
    }

    /// Where the job, at `attempt`, stands now, with the revision of the entry that says so.
    pub(super) fn current(&self, attempt: u32) -> Option<(QueueInfo, u64)> {
        let (mut info, revision) =
            QueueInfo::current(attempt, self.own_entry.clone(), self.line.clone())?;
        if let Some(summary) = &self.summary {
            info.count_from(summary);
        }
        Some((info, revision))
    }
}

async fn next_of(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}
