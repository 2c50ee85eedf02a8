//! Open-loop load generation against the mochi-serve HTTP API, with a report.
//!
//! Arrivals follow a fixed rate regardless of how fast the service answers (open loop), so
//! queueing shows up as latency instead of being hidden by a slow client. Every run is
//! bounded in job count and wall time, and targets loopback addresses unless the caller
//! explicitly allows others. [`faults`] runs the stack as separate processes and injects
//! faults while jobs run.

pub mod faults;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use protocol::JobState;
use protocol::api::JobView;
use protocol::spec::JobSpec;
use serde::Serialize;

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
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Gateway URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Jobs submitted per second.
    pub rate_per_s: f64,
    /// Jobs to submit in all.
    pub jobs: u32,
    /// The job every arrival submits (the prompt gets the arrival's index appended).
    pub spec: JobSpec,
    /// Stop waiting for results after this long.
    pub max_duration: Duration,
    /// Allow targets that are not loopback addresses.
    pub allow_remote: bool,
    /// The API key sent as a bearer token (none: the gateway must run with auth off).
    pub api_key: Option<String>,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Jobs submitted.
    pub submitted: u32,
    /// Submissions answered 202.
    pub accepted: u32,
    /// Submissions refused (4xx/5xx) or lost (connection errors).
    pub refused: u32,
    /// Jobs that ended `succeeded`.
    pub succeeded: u32,
    /// Jobs that ended in another terminal state.
    pub failed: u32,
    /// Jobs not finished when the run stopped.
    pub unfinished: u32,
    /// Submit latency percentiles, ms (p50, p90, p99, max).
    pub submit_ms: Percentiles,
    /// Submit-to-terminal latency percentiles of succeeded jobs, ms.
    pub end_to_end_ms: Percentiles,
    /// Wall time of the run, s.
    pub wall_s: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (nearest rank).
    pub fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Self {
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
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

/// Runs the load: submits `jobs` at `rate_per_s`, then follows each job to its end.
pub async fn run(config: &LoadConfig) -> Result<Report, Error> {
    check_target(&config.base_url, config.allow_remote)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &config.api_key
        && let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
    {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .map_err(Error::Client)?;
    let base = config.base_url.trim_end_matches('/').to_owned();
    let started = Instant::now();
    let deadline = started + config.max_duration;
    let interval = Duration::from_secs_f64(1.0 / config.rate_per_s.max(0.001));
    let mut arrivals = tokio::task::JoinSet::new();
    for index in 0..config.jobs {
        let due = started + interval.mul_f64(f64::from(index));
        if due > deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let mut spec = config.spec.clone();
        spec.prompt = format!("{} #{index}", spec.prompt);
        let (http, base) = (http.clone(), base.clone());
        arrivals.spawn(async move { one_job(&http, &base, &spec, deadline).await });
    }
    let mut report = Report {
        submitted: u32::try_from(arrivals.len()).unwrap_or(u32::MAX),
        ..Report::default()
    };
    let (mut submit_ms, mut e2e_ms) = (Vec::new(), Vec::new());
    while let Some(joined) = arrivals.join_next().await {
        let Ok(outcome) = joined else {
            report.refused += 1;
            continue;
        };
        match outcome {
            Outcome::Refused => report.refused += 1,
            Outcome::Finished {
                submit,
                end_to_end,
                state,
            } => {
                report.accepted += 1;
                submit_ms.push(submit);
                match state {
                    Some(JobState::Succeeded) => {
                        report.succeeded += 1;
                        e2e_ms.push(end_to_end);
                    }
                    Some(_) => report.failed += 1,
                    None => report.unfinished += 1,
                }
            }
        }
    }
    report.submit_ms = Percentiles::of(submit_ms);
    report.end_to_end_ms = Percentiles::of(e2e_ms);
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

enum Outcome {
    Refused,
    Finished {
        submit: f64,
        end_to_end: f64,
        state: Option<JobState>,
    },
}

async fn one_job(http: &reqwest::Client, base: &str, spec: &JobSpec, deadline: Instant) -> Outcome {
    let start = Instant::now();
    let Ok(response) = http
        .post(format!("{base}/v1/videos"))
        .json(spec)
        .send()
        .await
    else {
        return Outcome::Refused;
    };
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return Outcome::Refused;
    }
    let submit = start.elapsed().as_secs_f64() * 1000.0;
    let Ok(view) = response.json::<JobView>().await else {
        return Outcome::Refused;
    };
    let url = format!("{base}/v1/videos/{}", view.id);
    while Instant::now() < deadline {
        if let Ok(response) = http.get(&url).send().await
            && let Ok(view) = response.json::<JobView>().await
            && view.state.is_terminal()
        {
            let end_to_end = start.elapsed().as_secs_f64() * 1000.0;
            return Outcome::Finished {
                submit,
                end_to_end,
                state: Some(view.state),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Outcome::Finished {
        submit,
        end_to_end: 0.0,
        state: None,
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
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()).max, 0.0);
    }
}
