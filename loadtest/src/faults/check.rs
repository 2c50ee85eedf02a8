//! The end-of-run checks on each accepted job, and a structural MP4 check.

use protocol::{JobRecord, JobState};
use sha2::{Digest, Sha256};

/// What is wrong with a finished job's record, if anything: `(terminal entries, runs)`.
pub fn terminal_entries_and_runs(record: &JobRecord) -> (usize, usize) {
    let terminal = record
        .history
        .iter()
        .filter(|entry| entry.to.is_terminal())
        .count();
    let runs = record
        .history
        .iter()
        .filter(|entry| entry.to == JobState::Running)
        .count();
    (terminal, runs)
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
