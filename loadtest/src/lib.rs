//! Load generation against the mochi-serve HTTP API, with a report.
//!
//! * [`open_loop`]: a trace's requests are submitted at their own arrival times whatever
//!   the service answers (open loop), so queueing shows up as waiting instead of being
//!   hidden by a slow client; every job is followed to its end and its timeline recorded.
//! * [`report`]: the JSON result, the seeds' success metrics, the comparison with the
//!   simulator on the same trace, and a self-contained HTML report ([`chart`] draws it).
//! * [`scenario`]: the documented run, each offered load on a fresh stack of processes
//!   ([`cluster`]).
//! * [`capacity`]: what the service itself takes in with zero GPU time, against a FastAPI +
//!   Redis peer in the same run.
//! * [`faults`]: the stack as processes with faults injected while jobs run.
//!
//! Every run is bounded in job count and wall time, and targets loopback addresses unless
//! the caller explicitly allows others.

pub mod capacity;
pub mod chart;
pub mod cluster;
pub mod faults;
pub mod open_loop;
pub mod report;
pub mod scenario;

use std::net::IpAddr;

/// Why a load run could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target URL is not valid.
    #[error("invalid target URL {0}")]
    BadUrl(String),
    /// The target is not a loopback address and remote targets were not allowed.
    #[error("refusing to load {0}: only loopback targets unless allow_remote is set")]
    NotLoopback(String),
    /// The HTTP client failed to build.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The gateway did not answer before the run.
    #[error(
        "cannot reach the gateway at {url} ({reason}); start it (`mochi up`) or pass its address with --url"
    )]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why no answer came.
        reason: String,
    },
    /// The gateway refused a credential, or answered with an error, before the run.
    #[error("before the run, the gateway answered {status} to {credential}: {message}")]
    Refused {
        /// The API key's first characters, or "a request without a key".
        credential: String,
        /// The HTTP status.
        status: u16,
        /// The error's sentence, and what to do.
        message: String,
    },
}

/// Checks that `base_url` may be loaded under `allow_remote`.
pub fn check_target(base_url: &str, allow_remote: bool) -> Result<(), Error> {
    let url = url::Url::parse(base_url).map_err(|_| Error::BadUrl(base_url.to_owned()))?;
    let host = url
        .host_str()
        .ok_or_else(|| Error::BadUrl(base_url.to_owned()))?;
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || allow_remote {
        Ok(())
    } else {
        Err(Error::NotLoopback(base_url.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_remote_targets_unless_allowed() {
        assert!(check_target("http://127.0.0.1:8080", false).is_ok());
        assert!(check_target("http://[::1]:8080", false).is_ok());
        assert!(check_target("http://localhost:8080", false).is_ok());
        assert!(matches!(
            check_target("http://10.0.0.5:8080", false),
            Err(Error::NotLoopback(_))
        ));
        assert!(check_target("http://10.0.0.5:8080", true).is_ok());
        assert!(matches!(
            check_target("not a url", false),
            Err(Error::BadUrl(_))
        ));
    }

    #[test]
    fn mp4_check_wants_ftyp_first_and_a_moov() {
        let boxed = |kind: &[u8; 4], body: usize| {
            let mut out = u32::try_from(8 + body)
                .expect("small")
                .to_be_bytes()
                .to_vec();
            out.extend_from_slice(kind);
            out.extend(std::iter::repeat_n(0u8, body));
            out
        };
        let good = [boxed(b"ftyp", 8), boxed(b"moov", 4), boxed(b"mdat", 16)].concat();
        assert!(open_loop::is_mp4(&good));
        let no_moov = [boxed(b"ftyp", 8), boxed(b"mdat", 16)].concat();
        assert!(!open_loop::is_mp4(&no_moov));
        let not_first = [boxed(b"moov", 4), boxed(b"ftyp", 8)].concat();
        assert!(!open_loop::is_mp4(&not_first));
        assert!(!open_loop::is_mp4(&good[..good.len() - 3]), "truncated");
        assert!(!open_loop::is_mp4(b"{\"error\":{}}"));
    }
}
