//! Where a queued job stands: its position and predicted start and finish, published by
//! the coordinator's scheduler in the `mochi_queue` KV bucket (JSON) and refreshed as the
//! queue moves. Kept apart from the job record so that refreshing it never contends with
//! the record's compare-and-set writers.
//!
//! A job's first position is a line of a [`QueuePage`]: one entry for the jobs submitted
//! within the same [`PAGE_MS`] whose ids end in the same hex digit, written when jobs join
//! it, so that a burst of arrivals costs the bucket one replicated write per page instead of
//! one per job. Once its place moves, the job gets
//! an entry of its own, keyed by its id. Readers take the newer of the two
//! ([`QueueInfo::current`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// The key of the [`QueueSummary`] in `mochi_queue` (job ids are UUIDs: no job has it).
pub const SUMMARY_KEY: &str = "_summary";

/// The span of submission times whose jobs share a [`QueuePage`], ms.
pub const PAGE_MS: u64 = 1_000;

/// Pages per [`PAGE_MS`]: a job's page is chosen by its id's last hex digit (random in v7
/// and v5 UUIDs), so that a reader parses a sixteenth of a second's arrivals, not all.
pub const PAGES_PER_SPAN: u64 = 16;

/// Most lines in one page (about 190 bytes each, so under 100 kB); the jobs beyond get
/// entries of their own.
pub const PAGE_MAX_JOBS: usize = 500;

/// A queued job's place in the queue.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// 1 for the job served next (in the scheduling policy's order).
    pub position: u32,
    /// Jobs queued in all when the entry was written (the entry is not rewritten for this
    /// alone: readers take the current count from the [`QueueSummary`]).
    pub queued: u32,
    /// The job's lane by predicted GPU time (`short`, `medium`, `long`).
    pub lane: String,
    /// Predicted start, ms since the epoch; absent while no live slot can hold the job.
    #[serde(default)]
    pub eta_start_ms: Option<u64>,
    /// Predicted finish, ms since the epoch.
    #[serde(default)]
    pub eta_finish_ms: Option<u64>,
    /// When this estimate was made, ms since the epoch.
    pub updated_at_ms: u64,
}

impl QueueInfo {
    /// Takes the queue's length from `summary` (newer than the entry's own); never fewer
    /// jobs than the position, since the summary may lag the entry by a refresh.
    pub fn count_from(&mut self, summary: &QueueSummary) {
        self.queued = summary.queued.max(self.position);
    }

    /// Where a queued job at `attempt` stands, from its own entry and its line in its page
    /// ([`QueuePage::key_for`] its id and submission time), each with what the reader keeps beside
    /// it (a revision, or nothing): the newer of the two. A page line counts only while the
    /// job was never placed (attempt 0): a page is written when a job is first queued, and
    /// a job queued again after an attempt gets its own entry.
    pub fn current<T>(
        attempt: u32,
        own: Option<(QueueInfo, T)>,
        line: Option<(QueueInfo, T)>,
    ) -> Option<(QueueInfo, T)> {
        let line = line.filter(|_| attempt == 0);
        match (own, line) {
            (Some(own), Some(line)) if line.0.updated_at_ms > own.0.updated_at_ms => Some(line),
            (Some(own), _) => Some(own),
            (None, line) => line,
        }
    }
}

/// The first positions of the jobs submitted within one [`PAGE_MS`] span whose ids end in
/// the same hex digit, as one `mochi_queue` entry ([`QueuePage::key`]). Written again only
/// when jobs join it: a job whose place moves gets an entry of its own, and its line may
/// stay, older than that entry, until the page is written again. Removed once none of its
/// jobs relies on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePage {
    /// Each job's position when the page was written.
    pub jobs: BTreeMap<JobId, QueueInfo>,
}

impl QueuePage {
    /// The number of the page for job `job_id`, submitted at `created_at_ms`.
    pub fn number(job_id: JobId, created_at_ms: u64) -> u64 {
        let span = created_at_ms / PAGE_MS;
        let digit = u64::from(job_id.0.as_bytes()[15] & 0x0f);
        span.saturating_mul(PAGES_PER_SPAN).saturating_add(digit)
    }

    /// The `mochi_queue` key of page `number`: `_page.<span>.<digit>` (no job id starts
    /// with `_`).
    pub fn key(number: u64) -> String {
        format!(
            "_page.{}.{:x}",
            number / PAGES_PER_SPAN,
            number % PAGES_PER_SPAN
        )
    }

    /// The key of the page job `job_id`, submitted at `created_at_ms`, is listed in, if any.
    pub fn key_for(job_id: JobId, created_at_ms: u64) -> String {
        Self::key(Self::number(job_id, created_at_ms))
    }
}

/// The queue as a whole, published beside the positions each time its counts change, so
/// that a job's entry need not be rewritten whenever a job arrives or leaves behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Jobs queued in all.
    pub queued: u32,
    /// Jobs queued in the `short`, `medium` and `long` lanes.
    pub by_lane: [u32; 3],
    /// When these counts were made, ms since the epoch.
    pub updated_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(position: u32, updated_at_ms: u64) -> QueueInfo {
        QueueInfo {
            position,
            queued: 40,
            lane: "short".to_owned(),
            eta_start_ms: Some(9_000),
            eta_finish_ms: None,
            updated_at_ms,
        }
    }

    #[test]
    fn a_page_round_trips_through_json_keyed_by_job_id() {
        let job_id = JobId::new();
        let page = QueuePage {
            jobs: BTreeMap::from([(job_id, info(3, 2_000))]),
        };
        let json = serde_json::to_string(&page).expect("encodes");
        assert!(json.contains(&format!("\"{job_id}\"")), "{json}");
        let back: QueuePage = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, page);
        let digit = format!("{job_id}").chars().last().expect("a uuid");
        assert_eq!(
            QueuePage::key_for(job_id, 12_500),
            format!("_page.12.{digit}")
        );
        assert_eq!(
            QueuePage::key_for(job_id, 12_999),
            QueuePage::key(QueuePage::number(job_id, 12_000))
        );
    }

    #[test]
    fn the_newer_of_the_own_entry_and_the_page_line_is_current() {
        let line = Some((info(9, 2_000), "page"));
        let current = |own| QueueInfo::current(0, own, line.clone()).map(|(_, from)| from);
        assert_eq!(current(None), Some("page"));
        assert_eq!(current(Some((info(4, 3_000), "own"))), Some("own"));
        // A new leader's page is newer than an entry its predecessor left.
        assert_eq!(current(Some((info(4, 1_500), "own"))), Some("page"));
        assert_eq!(QueueInfo::current::<()>(0, None, None), None);
    }

    #[test]
    fn a_page_line_counts_only_before_the_first_placement() {
        let line = Some((info(9, 2_000), "page"));
        assert_eq!(QueueInfo::current(1, None, line.clone()), None);
        let own = Some((info(2, 1_000), "own"));
        assert_eq!(
            QueueInfo::current(1, own, line).map(|(_, from)| from),
            Some("own")
        );
    }
}
