//! The end-of-run checks on each accepted job (its record, its cancellation, its video),
//! as pure functions of what the harness read; and a structural MP4 check.

use protocol::{JobRecord, JobState};
use sha2::{Digest, Sha256};

/// What one accepted job's record shows at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordVerdict {
    /// Its state.
    pub state: JobState,
    /// History entries that end the job (a finished job has exactly one).
    pub terminal_entries: usize,
    /// History entries into `succeeded` (at most one).
    pub successes: usize,
    /// Times it started running.
    pub runs: usize,
    /// Each attempt a rerun follows (it failed or its lease expired): when it was placed
    /// and when it ended, ms.
    pub retried_ms: Vec<(u64, u64)>,
}

/// An invariant a finished run's record breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The job is not in a terminal state (it is lost).
    NeverFinished(JobState),
    /// Its history ends it this many times (not once).
    EndedTimes(usize),
    /// Its history holds this many successes (more than one).
    SucceededTimes(usize),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NeverFinished(state) => write!(f, "never finished: {state}"),
            Self::EndedTimes(n) => write!(f, "has {n} terminal entries"),
            Self::SucceededTimes(n) => write!(f, "succeeded {n} times"),
        }
    }
}

impl RecordVerdict {
    /// Every invariant this record breaks (an unfinished job: only that one).
    pub fn violations(&self) -> Vec<Violation> {
        if !self.state.is_terminal() {
            return vec![Violation::NeverFinished(self.state)];
        }
        let mut found = Vec::new();
        if self.terminal_entries != 1 {
            found.push(Violation::EndedTimes(self.terminal_entries));
        }
        if self.successes > 1 {
            found.push(Violation::SucceededTimes(self.successes));
        }
        found
    }
}

/// The verdict on `record`.
pub fn record_verdict(record: &JobRecord) -> RecordVerdict {
    let count = |wanted: fn(JobState) -> bool| {
        record
            .history
            .iter()
            .filter(|entry| wanted(entry.to))
            .count()
    };
    RecordVerdict {
        state: record.state,
        terminal_entries: count(JobState::is_terminal),
        successes: count(|state| state == JobState::Succeeded),
        runs: count(|state| state == JobState::Running),
        retried_ms: retried_attempts(record),
    }
}

/// The attempts of `record` that failed or whose lease expired, each from its placement
/// (or its start, when no placement was recorded since the last end) to that end.
fn retried_attempts(record: &JobRecord) -> Vec<(u64, u64)> {
    let mut placed_at = None;
    let mut retried = Vec::new();
    for entry in &record.history {
        match entry.to {
            JobState::Assigned => placed_at = Some(entry.at_ms),
            JobState::Running => {
                placed_at.get_or_insert(entry.at_ms);
            }
            _ => {}
        }
        if entry.event == "lease_expired" || entry.event == "failed" {
            retried.push((placed_at.unwrap_or(entry.at_ms), entry.at_ms));
        }
        if !entry.to.is_on_node() {
            placed_at = None;
        }
    }
    retried
}

/// A job cancelled with a 200: `Ok(true)` if it was running (or encoding) when the cancel
/// landed, `Ok(false)` if it was waiting; `Err` with the violation if it did not end
/// `cancelled`.
pub fn cancel_verdict(record: &JobRecord) -> Result<bool, String> {
    if record.state != JobState::Cancelled {
        return Err(format!("was cancelled (200) but ended {}", record.state));
    }
    Ok(record.history.iter().any(|entry| {
        entry.event == "cancel_requested"
            && matches!(entry.from, JobState::Running | JobState::Encoding)
    }))
}

/// Why a downloaded video does not match its record, if it does not.
pub fn video_problem(record: &JobRecord, bytes: &[u8]) -> Option<String> {
    let Some(result) = &record.result else {
        return Some("succeeded without a result".to_owned());
    };
    if bytes.len() as u64 != result.size_bytes {
        return Some(format!(
            "{} bytes downloaded, the record says {}",
            bytes.len(),
            result.size_bytes
        ));
    }
    let sha256 = protocol::codec::hex(&Sha256::digest(bytes));
    if sha256 != result.sha256 {
        return Some("sha256 differs from the record".to_owned());
    }
    mp4_problem(bytes)
}

/// Whether `bytes` is a well-formed MP4 at the top level: boxes that tile the file exactly,
/// with `ftyp` first and a `moov` and a non-empty `mdat`.
pub fn mp4_problem(bytes: &[u8]) -> Option<String> {
    let mut offset = 0usize;
    let mut kinds = Vec::new();
    let mut mdat_bytes = 0u64;
    while offset < bytes.len() {
        let Some(header) = bytes.get(offset..offset + 8) else {
            return Some(format!("truncated box header at byte {offset}"));
        };
        let mut size = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let kind = String::from_utf8_lossy(&header[4..8]).into_owned();
        let mut header_len = 8u64;
        if size == 1 {
            let Some(large) = bytes.get(offset + 8..offset + 16) else {
                return Some(format!("truncated 64-bit size of {kind}"));
            };
            let mut array = [0u8; 8];
            array.copy_from_slice(large);
            size = u64::from_be_bytes(array);
            header_len = 16;
        } else if size == 0 {
            size = (bytes.len() - offset) as u64;
        }
        if size < header_len || offset as u64 + size > bytes.len() as u64 {
            return Some(format!("box {kind} of {size} bytes overruns the file"));
        }
        if kind == "mdat" {
            mdat_bytes += size - header_len;
        }
        kinds.push(kind);
        offset += usize::try_from(size).unwrap_or(usize::MAX);
    }
    if kinds.first().map(String::as_str) != Some("ftyp") {
        return Some("no ftyp box first".to_owned());
    }
    if !kinds.iter().any(|k| k == "moov") {
        return Some("no moov box".to_owned());
    }
    if mdat_bytes == 0 {
        return Some("no media data".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let size = u32::try_from(body.len() + 8).expect("small");
        let mut out = size.to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn record(history: &[(JobState, &'static str)]) -> JobRecord {
        let spec = protocol::JobSpec::new("x");
        let shape = spec.validate(&protocol::Limits::default()).expect("valid");
        let mut record = JobRecord::queued(
            protocol::JobId::new(),
            protocol::TenantId::default_tenant(),
            spec,
            shape,
            1,
            3,
            0,
        );
        for (at_ms, (to, event)) in (1..).zip(history) {
            record.history.push(protocol::record::HistoryEntry {
                at_ms,
                from: record.state,
                to: *to,
                event: (*event).to_owned(),
                attempt: 1,
            });
            record.state = *to;
        }
        record
    }

    #[test]
    fn a_record_breaks_each_invariant_it_breaks() {
        use JobState::{Queued, Running, Succeeded};
        let clean = record(&[(Running, "started"), (Succeeded, "succeeded")]);
        let verdict = record_verdict(&clean);
        assert_eq!((verdict.runs, verdict.violations()), (1, vec![]));
        let lost = record(&[(Running, "started")]);
        assert_eq!(
            record_verdict(&lost).violations(),
            vec![Violation::NeverFinished(Running)]
        );
        let twice = record(&[
            (Running, "started"),
            (Succeeded, "succeeded"),
            (Queued, "lease_expired"),
            (Running, "started"),
            (Succeeded, "succeeded"),
        ]);
        let verdict = record_verdict(&twice);
        assert_eq!(
            verdict.violations(),
            vec![Violation::EndedTimes(2), Violation::SucceededTimes(2)]
        );
        // The lease expired after the job had ended: no attempt was on a node then.
        assert_eq!((verdict.runs, verdict.retried_ms), (2, vec![(3, 3)]));
    }

    #[test]
    fn a_retried_attempt_spans_from_its_placement_to_its_end() {
        use JobState::{Assigned, Queued, Running, Succeeded};
        let job = record(&[
            (Assigned, "assigned"),
            (Running, "started"),
            (Queued, "lease_expired"),
            (Assigned, "assigned"),
            (Queued, "failed"),
            (Running, "started"),
            (Succeeded, "succeeded"),
        ]);
        assert_eq!(record_verdict(&job).retried_ms, vec![(1, 3), (4, 5)]);
    }

    #[test]
    fn a_cancel_is_honoured_only_by_a_cancelled_end() {
        use JobState::{Cancelled, Running, Succeeded};
        let waiting = record(&[(Cancelled, "cancel_requested")]);
        assert_eq!(cancel_verdict(&waiting), Ok(false));
        let running = record(&[(Running, "started"), (Cancelled, "cancel_requested")]);
        assert_eq!(cancel_verdict(&running), Ok(true));
        let ignored = record(&[(Running, "started"), (Succeeded, "succeeded")]);
        assert!(cancel_verdict(&ignored).is_err());
    }

    #[test]
    fn accepts_tiled_boxes_and_refuses_broken_files() {
        let good = [
            mp4_box(b"ftyp", b"isom0000"),
            mp4_box(b"moov", b"...."),
            mp4_box(b"mdat", b"frames"),
        ]
        .concat();
        assert_eq!(mp4_problem(&good), None);
        assert!(mp4_problem(&good[..good.len() - 1]).is_some(), "truncated");
        let no_moov = [mp4_box(b"ftyp", b"isom"), mp4_box(b"mdat", b"x")].concat();
        assert!(mp4_problem(&no_moov).is_some());
        let empty_mdat = [
            mp4_box(b"ftyp", b"isom"),
            mp4_box(b"moov", b"x"),
            mp4_box(b"mdat", b""),
        ]
        .concat();
        assert!(mp4_problem(&empty_mdat).is_some());
        assert!(mp4_problem(b"not an mp4 at all").is_some());
    }
}
