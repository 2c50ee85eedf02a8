//! What `mochi_queue` shows of each waiting job, as this publisher wrote it, and what a
//! refresh must write for it to show the new estimates: the pages that jobs first seen join
//! (those never placed, grouped by id and submission time, [`QueuePage`]; a page is written
//! again only when jobs join it), an entry of its own for a job whose place moved or that no
//! page takes, removals for the jobs gone and the pages none of whose jobs relies on any
//! more.

use std::collections::{BTreeSet, HashMap};

use protocol::JobId;
use protocol::queue::{PAGE_MAX_JOBS, QueueInfo, QueuePage};

/// A published ETA is rewritten when the estimate moved by more than this, ms (or by more
/// than a tenth of the wait left, if that is longer).
const ETA_REPUBLISH_MS: u64 = 5_000;
/// Positions up to this one are published exactly; later ones when they move by more than
/// a tenth.
const EXACT_POSITIONS: u32 = 20;

/// One waiting job's new estimate, and the page it may be listed in (`None`: it was placed
/// before, so it needs an entry of its own).
pub(super) struct Estimate {
    /// The job.
    pub(super) job_id: JobId,
    /// Where it stands now.
    pub(super) info: QueueInfo,
    /// [`QueuePage::number`] of its id and submission time, if it was never placed.
    pub(super) page: Option<u64>,
}

/// What one refresh writes to show its estimates.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Pages to write (new, or joined by new jobs), whole.
    pub(super) pages: Vec<(u64, QueuePage)>,
    /// Entries of their own to write (jobs that moved, or that no page takes).
    pub(super) puts: Vec<(JobId, QueueInfo)>,
    /// Jobs no longer waiting whose own entries go.
    pub(super) gone: Vec<JobId>,
    /// Pages none of whose jobs relies on any more.
    pub(super) gone_pages: Vec<u64>,
}

/// What a reader sees of one job.
#[derive(Debug, Clone)]
struct Shown {
    info: QueueInfo,
    /// The page whose line it is; `None` for an entry of its own.
    page: Option<u64>,
    /// The last plan that estimated the job.
    seen: u64,
}

/// What `mochi_queue` shows, as far as this publisher knows.
#[derive(Debug, Default)]
pub(super) struct Book {
    /// By job id, hashed with foldhash: a plan looks up every waiting job, and the standard
    /// map's SipHash costs several times more per id (with the in-place update, 84 → 75 ms
    /// a refresh at 150,000 jobs).
    jobs: HashMap<JobId, Shown, foldhash::fast::RandomState>,
    /// Pages written, with the lines of the jobs that still rely on them.
    pages: HashMap<u64, QueuePage>,
    /// Plans made, for [`Shown::seen`].
    plans: u64,
}

impl Book {
    /// Jobs whose position is shown.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Compares `estimates` (every waiting job) with what is shown and says what to write;
    /// from then on it counts the plan as written (see [`Self::forget`]).
    pub(super) fn plan(&mut self, now: u64, estimates: Vec<Estimate>) -> Plan {
        self.plans += 1;
        let this = self.plans;
        let mut plan = Plan::default();
        let mut joined = BTreeSet::new();
        for Estimate { job_id, info, page } in estimates {
            let old_page = match self.jobs.get_mut(&job_id) {
                Some(shown) if !moved(&shown.info, &info, now) => {
                    shown.seen = this;
                    continue;
                }
                Some(shown) => Some(shown.page),
                None => None,
            };
            let shown_before = old_page.is_some();
            if let Some(Some(number)) = old_page {
                self.release(number, job_id);
            }
            // A job already shown never rejoins a page: its own entry is newer.
            let paged = page.filter(|_| !shown_before).filter(|number| {
                let page = self.pages.entry(*number).or_default();
                page.jobs.len() < PAGE_MAX_JOBS && page.jobs.insert(job_id, info.clone()).is_none()
            });
            match paged {
                Some(number) => {
                    joined.insert(number);
                }
                None => plan.puts.push((job_id, info.clone())),
            }
            self.jobs.insert(
                job_id,
                Shown {
                    info,
                    page: paged,
                    seen: this,
                },
            );
        }
        // The jobs this plan did not estimate are no longer waiting.
        let mut released = Vec::new();
        self.jobs.retain(|job_id, shown| {
            if shown.seen == this {
                return true;
            }
            match shown.page {
                Some(number) => released.push((number, *job_id)),
                None => plan.gone.push(*job_id),
            }
            false
        });
        for (number, job_id) in released {
            self.release(number, job_id);
        }
        // A long queue that drained leaves no map of its peak size behind.
        if self.jobs.capacity() > 4 * self.jobs.len() + 4096 {
            self.jobs.shrink_to_fit();
        }
        for number in joined {
            if let Some(page) = self.pages.get(&number) {
                plan.pages.push((number, page.clone()));
            }
        }
        self.pages.retain(|number, page| {
            if page.jobs.is_empty() {
                plan.gone_pages.push(*number);
            }
            !page.jobs.is_empty()
        });
        plan
    }

    /// Forgets what was not stored, so that the next plan writes it again: the jobs whose
    /// own entries failed, and the pages that failed with every job they listed.
    pub(super) fn forget(&mut self, jobs: &[JobId], pages: &[u64]) {
        for job_id in jobs {
            self.jobs.remove(job_id);
        }
        for number in pages {
            let Some(page) = self.pages.remove(number) else {
                continue;
            };
            for job_id in page.jobs.keys() {
                self.jobs.remove(job_id);
            }
        }
    }

    /// Forgets everything (the bucket lost writes): the next plan writes every position.
    pub(super) fn clear(&mut self) {
        self.jobs.clear();
        self.pages.clear();
    }

    /// Job `job_id` no longer relies on its line in page `number`.
    fn release(&mut self, number: u64, job_id: JobId) {
        if let Some(page) = self.pages.get_mut(&number) {
            page.jobs.remove(&job_id);
        }
    }
}

/// Whether a job's published entry is out of date at `now`: another lane; a position that
/// moved (any move up to [`EXACT_POSITIONS`], beyond it a move by more than a tenth); an
/// ETA that appeared or went, or that moved by more than [`ETA_REPUBLISH_MS`] or a tenth
/// of the wait it predicted, whichever is longer. The queue's length is not a reason: it
/// is in the summary. Without the tenths, each job leaving the head of a long queue would
/// rewrite every waiting job's entry.
fn moved(old: &QueueInfo, new: &QueueInfo, now: u64) -> bool {
    let position_moved = old.position != new.position
        && (old.position <= EXACT_POSITIONS
            || u64::from(old.position.abs_diff(new.position)) * 10 > u64::from(old.position));
    let eta_moved = match (old.eta_start_ms, new.eta_start_ms) {
        (Some(a), Some(b)) => a.abs_diff(b) > ETA_REPUBLISH_MS.max(a.saturating_sub(now) / 10),
        (a, b) => a.is_some() != b.is_some(),
    };
    old.lane != new.lane || position_moved || eta_moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(job_id: JobId, position: u32, page: Option<u64>) -> Estimate {
        Estimate {
            job_id,
            info: entry(position, 100, None),
            page,
        }
    }

    fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
        items.sort_unstable();
        items
    }

    /// A plan's pages, own entries, removed entries and removed pages, each sorted.
    fn keys(plan: &Plan) -> (Vec<u64>, Vec<JobId>, Vec<JobId>, Vec<u64>) {
        (
            sorted(plan.pages.iter().map(|(number, _)| *number).collect()),
            sorted(plan.puts.iter().map(|(job_id, _)| *job_id).collect()),
            sorted(plan.gone.clone()),
            sorted(plan.gone_pages.clone()),
        )
    }

    #[test]
    fn arrivals_share_a_page_and_get_their_own_entry_only_once_they_move() {
        let mut ids: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
        ids.sort_unstable();
        let [a, b, c, d] = ids[..] else {
            unreachable!("four ids")
        };
        let mut book = Book::default();
        // a and b arrived in the same tenth of a second, c in the next; d was placed before.
        let first = book.plan(
            0,
            vec![
                estimate(a, 1, Some(7)),
                estimate(b, 2, Some(7)),
                estimate(c, 3, Some(8)),
                estimate(d, 4, None),
            ],
        );
        assert_eq!(keys(&first), (vec![7, 8], vec![d], vec![], vec![]));
        let page = &first.pages[0].1;
        assert_eq!(page.jobs.keys().copied().collect::<Vec<_>>(), [a, b]);
        // Nothing moved: nothing to write.
        let same = book.plan(
            0,
            vec![
                estimate(a, 1, Some(7)),
                estimate(b, 2, Some(7)),
                estimate(c, 3, Some(8)),
                estimate(d, 4, None),
            ],
        );
        assert_eq!(keys(&same), (vec![], vec![], vec![], vec![]));
        // a ran: b, c and d move up and get their own entries, so page 8 has no one
        // left. A late arrival of page 7 (e) joins it: the page is written again, with e
        // and without the jobs that left it.
        let e = JobId::new();
        let moved = book.plan(
            0,
            vec![
                estimate(b, 1, Some(7)),
                estimate(c, 2, Some(8)),
                estimate(d, 3, None),
                estimate(e, 4, Some(7)),
            ],
        );
        assert_eq!(
            keys(&moved),
            (vec![7], sorted(vec![b, c, d]), vec![], vec![8])
        );
        assert_eq!(
            moved.pages[0].1.jobs.keys().copied().collect::<Vec<_>>(),
            [e]
        );
        // b and d ran: their own entries go; e moved, so page 7 has no one left.
        let later = book.plan(0, vec![estimate(c, 1, Some(8)), estimate(e, 2, Some(7))]);
        assert_eq!(
            keys(&later),
            (vec![], sorted(vec![c, e]), vec![b, d], vec![7])
        );
    }

    #[test]
    fn a_full_page_leaves_the_rest_to_their_own_entries() {
        let mut book = Book::default();
        let estimates = (0..=PAGE_MAX_JOBS)
            .map(|i| {
                estimate(
                    JobId::new(),
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    Some(3),
                )
            })
            .collect();
        let plan = book.plan(0, estimates);
        assert_eq!(plan.pages.len(), 1);
        assert_eq!(plan.pages[0].1.jobs.len(), PAGE_MAX_JOBS);
        assert_eq!(plan.puts.len(), 1);
    }

    fn entry(position: u32, queued: u32, eta_start_ms: Option<u64>) -> QueueInfo {
        QueueInfo {
            position,
            queued,
            lane: "short".to_owned(),
            eta_start_ms,
            eta_finish_ms: None,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn an_entry_is_rewritten_when_its_place_or_eta_moves_enough_never_for_the_length_alone() {
        // Half a minute before the ETA below.
        let now = 30_000;
        let old = entry(5, 100, Some(60_000));
        assert!(!moved(&old, &entry(5, 100, Some(60_000)), now));
        assert!(
            !moved(&old, &entry(5, 100_000, Some(60_000)), now),
            "length"
        );
        assert!(moved(&old, &entry(4, 100, Some(60_000)), now), "position");
        let mut other_lane = entry(5, 100, Some(60_000));
        other_lane.lane = "long".to_owned();
        assert!(moved(&old, &other_lane, now), "lane");
        // Within the first 20 every move counts; beyond, a move by more than a tenth.
        assert!(moved(&entry(20, 100, None), &entry(19, 100, None), now));
        assert!(!moved(&entry(300, 900, None), &entry(270, 900, None), now));
        assert!(moved(&entry(300, 900, None), &entry(269, 900, None), now));
        assert!(moved(&entry(300, 900, None), &entry(331, 900, None), now));
        // An ETA half a minute away: moves over 5 s count; an hour away: over 6 minutes.
        assert!(
            !moved(&old, &entry(5, 100, Some(64_000)), now),
            "ETA within 5 s"
        );
        assert!(
            moved(&old, &entry(5, 100, Some(66_000)), now),
            "ETA beyond 5 s"
        );
        let hour = now + 3_600_000;
        let far = entry(300, 900, Some(hour));
        assert!(!moved(&far, &entry(300, 900, Some(hour + 360_000)), now));
        assert!(moved(&far, &entry(300, 900, Some(hour + 360_001)), now));
        assert!(moved(&old, &entry(5, 100, None), now), "ETA gone");
        assert!(moved(&entry(5, 100, None), &old, now), "ETA came");
    }
}
