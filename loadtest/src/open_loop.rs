//! Open-loop load from a trace: every request of the trace is submitted at its own arrival
//! time (scaled), whatever the service answers, so queueing shows up as waiting instead of
//! being hidden by a slow client. Each job is then followed through the HTTP API until it
//! ends, and its timeline is recorded from the service's own timestamps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coordinator::sim::trace::TraceJob;
use futures::StreamExt;
use protocol::api::JobView;
use protocol::spec::{JobSpec, Priority};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One open-loop run against a gateway.
#[derive(Debug, Clone)]
pub struct OpenLoopConfig {
    /// Gateway URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// API keys by tenant: the trace's tenant `i` submits with `api_keys[i % len]`; empty
    /// sends none (a gateway with auth off).
    pub api_keys: Vec<String>,
    /// Wall seconds per trace second (0.01: an hour of trace in 36 s).
    pub time_scale: f64,
    /// Stop submitting and following jobs after this long.
    pub max_duration: Duration,
    /// Allow targets that are not loopback addresses.
    pub allow_remote: bool,
    /// How often unfinished jobs are read.
    pub poll_interval: Duration,
    /// Download every succeeded job's MP4 and check that it is one.
    pub check_artifacts: bool,
    /// Print a progress line to standard error every second.
    pub progress: bool,
}

/// What happened to one request of the trace. Times are ms since the Unix epoch on the
/// client's clock (`submitted_ms`, `answered_ms`) or the service's (`created_ms` and later):
/// one clock when both run on one machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTimeline {
    /// The request's id in the trace.
    pub trace_id: u64,
    /// Arrival in the trace, trace seconds.
    pub arrival_s: f64,
    /// Tenant index in the trace.
    pub tenant: u32,
    /// `high`, `normal` or `low`.
    pub priority: String,
    /// Frames, fps, width, height, steps and CFG asked for.
    pub shape: [u32; 6],
    /// When the submission was sent.
    pub submitted_ms: u64,
    /// When the answer came (absent: no answer).
    pub answered_ms: Option<u64>,
    /// The HTTP status (absent: the connection failed).
    pub http_status: Option<u16>,
    /// The error code of a refusal, or `connection` when none came.
    pub error_code: Option<String>,
    /// The refusal's sentence.
    pub error_message: Option<String>,
    /// The job's id once accepted.
    pub job_id: Option<String>,
    /// When the service created the job.
    pub created_ms: Option<u64>,
    /// The earliest start of an attempt seen.
    pub first_start_ms: Option<u64>,
    /// Each run on a slot seen: its start and, once it paused or the job ended, its end.
    pub runs: Vec<(u64, Option<u64>)>,
    /// When the job ended.
    pub ended_ms: Option<u64>,
    /// Its last state seen.
    pub state: Option<String>,
    /// Placements on a slot.
    pub attempts: u32,
    /// Attempts that ended in a retryable failure.
    pub failed_attempts: u32,
    /// Whether its MP4 downloaded and read as an MP4 (absent: not checked).
    pub artifact_ok: Option<bool>,
}

impl JobTimeline {
    /// Whether the service accepted the submission (`202`, or `200` for a repeated key).
    pub fn accepted(&self) -> bool {
        self.job_id.is_some()
    }

    /// Whether the job reached a terminal state.
    pub fn ended(&self) -> bool {
        self.ended_ms.is_some()
    }
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The request a trace job becomes.
pub fn spec_of(job: &TraceJob) -> JobSpec {
    let shape = &job.shape;
    JobSpec {
        num_frames: Some(shape.num_frames),
        fps: Some(shape.fps),
        width: Some(shape.width),
        height: Some(shape.height),
        steps: Some(shape.steps),
        // Guidance 1.0 turns classifier-free guidance off (one branch).
        guidance_scale: (!shape.cfg).then_some(1.0),
        priority: job.priority,
        ..JobSpec::new(format!("loadtest request {}", job.id))
    }
}

fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

type Timelines = Arc<Mutex<Vec<JobTimeline>>>;

fn lock(timelines: &Timelines) -> std::sync::MutexGuard<'_, Vec<JobTimeline>> {
    timelines.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Submits every job of `trace` at its arrival time and follows each to its end (or until
/// `max_duration`); returns one timeline per submitted job, in trace order.
pub async fn run(config: &OpenLoopConfig, trace: &[TraceJob]) -> Result<Vec<JobTimeline>, Error> {
    crate::check_target(&config.base_url, config.allow_remote)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(Error::Client)?;
    let base = config.base_url.trim_end_matches('/').to_owned();
    preflight(&http, &base, &config.api_keys).await?;
    let started = Instant::now();
    let deadline = started + config.max_duration;
    let timelines: Timelines = Arc::new(Mutex::new(Vec::with_capacity(trace.len())));
    let submitted = Arc::new(AtomicBool::new(false));
    let follower = {
        let (http, base, timelines, config, submitted) = (
            http.clone(),
            base.clone(),
            Arc::clone(&timelines),
            config.clone(),
            Arc::clone(&submitted),
        );
        tokio::spawn(async move {
            follow(&http, &base, &timelines, &config, deadline, &submitted).await;
        })
    };
    let progress = config.progress.then(|| {
        let timelines = Arc::clone(&timelines);
        let total = trace.len();
        tokio::spawn(async move { show_progress(&timelines, total, started).await })
    });
    let mut submissions = tokio::task::JoinSet::new();
    for job in trace {
        let due = started + Duration::from_secs_f64((job.arrival_s * config.time_scale).max(0.0));
        if due > deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let index = {
            let mut all = lock(&timelines);
            all.push(JobTimeline {
                trace_id: job.id,
                arrival_s: job.arrival_s,
                tenant: job.tenant,
                priority: priority_name(job.priority).to_owned(),
                shape: [
                    job.shape.num_frames,
                    job.shape.fps,
                    job.shape.width,
                    job.shape.height,
                    job.shape.steps,
                    u32::from(job.shape.cfg),
                ],
                submitted_ms: epoch_ms(),
                ..JobTimeline::default()
            });
            all.len() - 1
        };
        let key = (!config.api_keys.is_empty())
            .then(|| config.api_keys[job.tenant as usize % config.api_keys.len()].clone());
        let (http, base, timelines, spec) = (
            http.clone(),
            base.clone(),
            Arc::clone(&timelines),
            spec_of(job),
        );
        submissions.spawn(async move {
            let answer = submit(&http, &base, key.as_deref(), &spec).await;
            let mut all = lock(&timelines);
            let timeline = &mut all[index];
            timeline.answered_ms = Some(epoch_ms());
            match answer {
                Ok((status, Ok(view))) => {
                    timeline.http_status = Some(status);
                    timeline.job_id = Some(view.id.to_string());
                    timeline.created_ms = Some(view.created_at_ms);
                    timeline.state = Some(view.state.as_str().to_owned());
                }
                Ok((status, Err((code, message)))) => {
                    timeline.http_status = Some(status);
                    timeline.error_code = Some(code);
                    timeline.error_message = message;
                }
                Err(()) => {
                    timeline.answered_ms = None;
                    timeline.error_code = Some("connection".to_owned());
                }
            }
        });
    }
    while submissions.join_next().await.is_some() {}
    submitted.store(true, Ordering::Release);
    // The follower ends when every accepted job has ended, or at the deadline.
    let _ = follower.await;
    if let Some(progress) = progress {
        progress.abort();
        if config.progress {
            eprintln!();
        }
    }
    let all = lock(&timelines).clone();
    Ok(all)
}

/// A refusal's code and sentence.
type Refusal = (String, Option<String>);

/// Characters of an API key named in an error (the prefix and four of its own).
const SHOWN_KEY_CHARS: usize = 12;

/// Before any submission: the gateway answers, and takes every key (`GET /v1/models`, which
/// any role may read), so that a wrong address or key is one clear error rather than a
/// report of refusals.
async fn preflight(http: &reqwest::Client, base: &str, keys: &[String]) -> Result<(), Error> {
    let url = format!("{base}/v1/models");
    let mut keys: Vec<Option<&str>> = keys.iter().map(|key| Some(key.as_str())).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        keys.push(None);
    }
    for key in keys {
        let mut request = http.get(&url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|error| Error::Unreachable {
            url: url.clone(),
            reason: root_cause(&error),
        })?;
        let status = response.status();
        if status.is_success() {
            continue;
        }
        let body = response.bytes().await.unwrap_or_default();
        let said = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| {
                value
                    .pointer("/error/message")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("GET {url} answered {status}"));
        let credential = match key {
            Some(key) => format!(
                "the API key {}…",
                key.chars().take(SHOWN_KEY_CHARS).collect::<String>()
            ),
            None => "a request without a key".to_owned(),
        };
        let advice = match (status.as_u16(), key) {
            (401, None) => "; pass a key with --api-key (or MOCHI_API_KEY)",
            (401, Some(_)) => "; pass a valid key with --api-key (or MOCHI_API_KEY)",
            (404, _) => "; is --url the gateway's address (without a path)?",
            (500.., _) => "; wait until its /readyz answers 200 and run again",
            _ => "",
        };
        return Err(Error::Refused {
            credential,
            status: status.as_u16(),
            message: format!("{said}{advice}"),
        });
    }
    Ok(())
}

/// The innermost cause of `error` (reqwest's own message names only the URL; the cause
/// says what happened: "Connection refused", a timeout, a name not resolved).
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Why the requests of `jobs` were refused, most common first: "3 × unauthorized (sentence)".
pub fn refusals(jobs: &[JobTimeline]) -> String {
    let mut counts: Vec<((String, String), usize)> = Vec::new();
    for job in jobs.iter().filter(|job| !job.accepted()) {
        let code = job.error_code.clone().unwrap_or_else(|| "none".to_owned());
        let message = job.error_message.clone().unwrap_or_default();
        match counts
            .iter_mut()
            .find(|(seen, _)| *seen == (code.clone(), message.clone()))
        {
            Some((_, count)) => *count += 1,
            None => counts.push(((code, message), 1)),
        }
    }
    counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    counts
        .iter()
        .take(3)
        .map(|((code, message), count)| {
            if message.is_empty() {
                format!("{count} × {code}")
            } else {
                format!("{count} × {code} ({message})")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// POSTs one job: the status and the job, or the status and the error's code and sentence.
async fn submit(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    spec: &JobSpec,
) -> Result<(u16, Result<JobView, Refusal>), ()> {
    let mut request = http.post(format!("{base}/v1/videos")).json(spec);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|_| ())?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|_| ())?;
    if status == 200 || status == 202 {
        return Ok((
            status,
            serde_json::from_slice::<JobView>(&body)
                .map_err(|_| ("unreadable_answer".to_owned(), None)),
        ));
    }
    let error = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|value| value.pointer(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let code = field("/error/code").unwrap_or_else(|| format!("http_{status}"));
    Ok((status, Err((code, field("/error/message")))))
}

/// Reads every accepted, unfinished job every `poll_interval` until all have ended.
async fn follow(
    http: &reqwest::Client,
    base: &str,
    timelines: &Timelines,
    config: &OpenLoopConfig,
    deadline: Instant,
    submitted: &AtomicBool,
) {
    let key_of = |tenant: u32| {
        (!config.api_keys.is_empty())
            .then(|| config.api_keys[tenant as usize % config.api_keys.len()].clone())
    };
    loop {
        let open: Vec<(usize, String, Option<String>)> = lock(timelines)
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.ended())
            .filter_map(|(i, t)| t.job_id.clone().map(|id| (i, id, key_of(t.tenant))))
            .collect();
        if Instant::now() > deadline {
            return;
        }
        let views: Vec<(usize, Option<String>, JobView)> = futures::stream::iter(open)
            .map(|(index, id, key)| async move {
                let mut request = http.get(format!("{base}/v1/videos/{id}"));
                if let Some(key) = &key {
                    request = request.bearer_auth(key);
                }
                let view = request.send().await.ok()?.json::<JobView>().await.ok()?;
                Some((index, key, view))
            })
            .buffer_unordered(16)
            .filter_map(|found| async move { found })
            .collect()
            .await;
        let mut to_check = Vec::new();
        {
            let mut all = lock(timelines);
            for (index, key, view) in views {
                let timeline = &mut all[index];
                timeline.state = Some(view.state.as_str().to_owned());
                timeline.attempts = view.attempt;
                timeline.failed_attempts = view.failed_attempts;
                if let Some(start) = view.started_at_ms {
                    timeline.first_start_ms = Some(
                        timeline
                            .first_start_ms
                            .map_or(start, |seen| seen.min(start)),
                    );
                    if timeline.runs.iter().all(|(seen, _)| *seen != start) {
                        // A pause the polls missed ended the last run by this start at most.
                        if let Some((_, end @ None)) = timeline.runs.last_mut() {
                            *end = Some(start);
                        }
                        timeline.runs.push((start, None));
                    }
                }
                let off_slot = matches!(
                    view.state,
                    protocol::JobState::Preempted | protocol::JobState::Queued
                ) || view.state.is_terminal();
                if off_slot && let Some((start, end @ None)) = timeline.runs.last_mut() {
                    *end = Some(view.updated_at_ms.max(*start));
                }
                if view.state.is_terminal() {
                    timeline.ended_ms = Some(view.updated_at_ms);
                    if config.check_artifacts && view.state == protocol::JobState::Succeeded {
                        to_check.push((index, key, view.id.to_string()));
                    }
                }
            }
        }
        for (index, key, id) in to_check {
            let ok = artifact_is_mp4(http, base, key.as_deref(), &id).await;
            lock(timelines)[index].artifact_ok = Some(ok);
        }
        let unfinished = lock(timelines).iter().any(|t| t.accepted() && !t.ended());
        if submitted.load(Ordering::Acquire) && !unfinished {
            return;
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

/// Downloads a job's video and checks that it is an MP4: an `ftyp` box first and a `moov`
/// box somewhere.
async fn artifact_is_mp4(http: &reqwest::Client, base: &str, key: Option<&str>, id: &str) -> bool {
    let mut request = http.get(format!("{base}/v1/videos/{id}/content"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let Ok(response) = request.send().await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    let Ok(body) = response.bytes().await else {
        return false;
    };
    is_mp4(&body)
}

/// Whether `bytes` start with an `ftyp` box and hold a `moov` box at the top level.
pub fn is_mp4(bytes: &[u8]) -> bool {
    let mut offset = 0usize;
    let (mut first, mut moov) = (true, false);
    while offset + 8 <= bytes.len() {
        let size = u32::from_be_bytes([
            bytes[offset],
            bytes[offset + 1],
            bytes[offset + 2],
            bytes[offset + 3],
        ]) as usize;
        let kind = &bytes[offset + 4..offset + 8];
        if first && kind != b"ftyp" {
            return false;
        }
        first = false;
        moov |= kind == b"moov";
        if size < 8 {
            return false;
        }
        offset = offset.saturating_add(size);
    }
    !first && moov && offset == bytes.len()
}

async fn show_progress(timelines: &Timelines, total: usize, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (submitted, accepted, running, ended) = {
            let all = lock(timelines);
            (
                all.len(),
                all.iter().filter(|t| t.accepted()).count(),
                all.iter()
                    .filter(|t| t.first_start_ms.is_some() && !t.ended())
                    .count(),
                all.iter().filter(|t| t.ended()).count(),
            )
        };
        let width = 30;
        let filled = (ended * width).checked_div(total).unwrap_or(0).min(width);
        eprint!(
            "\r[{}{}] submitted {submitted}/{total}, accepted {accepted}, started {running}, ended {ended} · {:.0} s ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers every request with `status` and `body`; its URL.
    async fn answering(status: &'static str, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0_u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{address}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn a_wrong_address_or_key_is_one_clear_error_before_the_run() {
        // Nothing listens on a port just freed.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}", listener.local_addr().expect("address"))
        };
        let error = preflight(&client(), &closed, &[])
            .await
            .expect_err("closed");
        assert!(matches!(error, Error::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains("--url"), "{error}");

        let refusing = answering(
            "401 Unauthorized",
            r#"{"error":{"code":"unauthorized","message":"this API key is not valid"}}"#,
        )
        .await;
        let key = format!("mk_live_{}", "Z".repeat(43));
        let error = preflight(&client(), &refusing, std::slice::from_ref(&key))
            .await
            .expect_err("refused");
        let text = error.to_string();
        assert!(
            matches!(error, Error::Refused { status: 401, .. }),
            "{text}"
        );
        assert!(text.contains("this API key is not valid"), "{text}");
        assert!(text.contains("mk_live_ZZZZ…"), "{text}");
        assert!(
            !text.contains(&key),
            "the whole key is never printed: {text}"
        );
        assert!(text.contains("--api-key"), "{text}");

        let fine = answering("200 OK", r#"{"object":"list","data":[]}"#).await;
        preflight(&client(), &fine, &[key.clone(), key])
            .await
            .expect("a gateway that answers 200 passes");
    }

    #[test]
    fn refusals_are_counted_most_common_first() {
        let refused = |code: &str, message: Option<&str>| JobTimeline {
            error_code: Some(code.to_owned()),
            error_message: message.map(str::to_owned),
            ..JobTimeline::default()
        };
        let jobs = [
            refused("connection", None),
            refused("forbidden", Some("this key may not create jobs")),
            refused("forbidden", Some("this key may not create jobs")),
            JobTimeline {
                job_id: Some("vid_x".to_owned()),
                ..JobTimeline::default()
            },
        ];
        assert_eq!(
            refusals(&jobs),
            "2 × forbidden (this key may not create jobs); 1 × connection"
        );
    }
}
