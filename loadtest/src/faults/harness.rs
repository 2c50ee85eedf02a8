//! The fault run itself: brings the cluster up, submits jobs round by round while injecting
//! one fault per round and cancelling at random moments, then waits for every accepted job
//! and judges each ([`super::check`]).
//!
//! One file, past 500 lines: one run's rounds, faults and end checks in the order they
//! happen; the cluster, the judgements, the settings and the report are apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mochi_rng::SplitMix64;
use nix::sys::signal::Signal;
use protocol::api::JobView;
use protocol::jetstream::Resources;
use protocol::messages::NodeHeartbeat;
use protocol::spec::JobSpec;
use protocol::{JobId, JobRecord, JobState, codec, names};

use crate::report::Quantiles;

use super::check;
use super::config::FaultConfig;
use super::error::FaultError;
use super::report::FaultReport;
use crate::cluster::{Cluster, ClusterSettings, Proc};

/// The kinds of fault, injected in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillNode,
    KillLeader,
    KillNats,
    StopNode,
}

impl Fault {
    const ALL: [Self; 4] = [
        Self::KillNode,
        Self::KillLeader,
        Self::KillNats,
        Self::StopNode,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::KillNode => "kill_9_gpu_node",
            Self::KillLeader => "kill_9_leader_coordinator",
            Self::KillNats => "kill_9_nats_server",
            Self::StopNode => "sigstop_gpu_node_past_lease",
        }
    }
}

/// Choosing victims and moments, reproducible by seed.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.0.next_u64() % n }
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Cancelled {
    job_id: JobId,
    sent_at: Instant,
}

/// When a fault was injected: from its start to the victim's restart (wall clock, ms).
struct Injected {
    fault: Fault,
    from_ms: u64,
    to_ms: u64,
}

/// Slots seen freed: when each job's slot last stopped showing it, from the heartbeats.
type Freed = Arc<Mutex<HashMap<JobId, Instant>>>;

struct Harness {
    config: FaultConfig,
    cluster: Cluster,
    http: reqwest::Client,
    base: String,
    resources: Resources,
    rng: Rng,
    accepted: Vec<JobId>,
    cancels: Vec<Cancelled>,
    injected: Vec<Injected>,
    report: FaultReport,
}

/// Runs the whole fault scenario and checks every accepted job.
pub async fn run(config: &FaultConfig) -> Result<FaultReport, FaultError> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("mochi-faults-")
        .tempdir()
        .map_err(FaultError::Io)?;
    let cluster = Cluster::start(ClusterSettings {
        lease_ms: config.lease_ms,
        leader_lease_ms: config.leader_lease_ms,
        time_scale: config.time_scale,
        nats_servers: config.nats_servers,
        ..ClusterSettings::new(
            config.mochi.clone(),
            config.nats_server.clone(),
            dir.path().to_owned(),
        )
    })?;
    let resources = cluster
        .jetstream("mochi-faults")
        .await
        .map_err(FaultError::Nats)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(FaultError::Client)?;
    let freed: Freed = Arc::default();
    let watcher = tokio::spawn(watch_slots(resources.clone(), Arc::clone(&freed)));
    let mut harness = Harness {
        base: cluster.gateway_url(),
        config: config.clone(),
        cluster,
        http,
        resources,
        rng: Rng(SplitMix64::new(config.seed)),
        accepted: Vec::new(),
        cancels: Vec::new(),
        injected: Vec::new(),
        report: FaultReport::default(),
    };
    harness.wait_until_ready().await?;
    for round in 0..config.rounds {
        if started.elapsed() > config.max_duration {
            eprintln!("faults: time is up after {round} rounds");
            break;
        }
        let fault = Fault::ALL[round as usize % Fault::ALL.len()];
        harness.round(round, fault).await?;
    }
    harness.finish().await?;
    watcher.abort();
    harness.check(&freed).await;
    let mut report = harness.report;
    report.wall_s = started.elapsed().as_secs_f64();
    drop(harness.cluster);
    if !report.passed() || config.keep_dir {
        report.kept_dir = Some(dir.keep().display().to_string());
    }
    Ok(report)
}

impl Harness {
    async fn wait_until_ready(&self) -> Result<(), FaultError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let gateway = self
                .http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let leader = self.leader().await.is_some();
            let mut nodes = 0;
            let expected = self.cluster.settings().nodes;
            for i in 0..expected {
                if let Ok(Some(_)) = self.resources.nodes.entry(Proc::Node(i).name()).await {
                    nodes += 1;
                }
            }
            if gateway && leader && nodes == expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(FaultError::Startup(format!(
                    "stack not ready after 60 s (gateway {gateway}, leader {leader}, nodes {nodes}); logs in {}",
                    self.cluster.dir().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leading coordinator, from the lease in `mochi_leader`.
    async fn leader(&self) -> Option<Proc> {
        let entry = self
            .resources
            .leader
            .entry(names::KEY_LEADER)
            .await
            .ok()??;
        let value: serde_json::Value = serde_json::from_slice(&entry.value).ok()?;
        let holder = value.get("holder")?.as_str()?;
        (0..self.cluster.settings().coordinators)
            .map(Proc::Coordinator)
            .find(|proc| proc.name() == holder)
    }

    async fn round(&mut self, round: u32, fault: Fault) -> Result<(), FaultError> {
        let mut mine = Vec::new();
        for index in 0..self.config.jobs_per_round {
            let key = format!("faults-{}-{round}-{index}", self.config.seed);
            if let Some(job_id) = self.submit(&key, round, index).await {
                self.report.accepted += 1;
                self.accepted.push(job_id);
                mine.push((key, index, job_id));
            }
        }
        // A client retrying with the same key must get the same job back.
        if !mine.is_empty() {
            let pick = self.rng.below(mine.len() as u64) as usize;
            let (key, index, job_id) = mine[pick].clone();
            if let Some(again) = self.submit(&key, round, index).await {
                self.report.duplicate_submissions += 1;
                if again != job_id {
                    self.report.duplicated_results += 1;
                    self.violation(format!("key {key} gave job {job_id} and then job {again}"));
                }
            }
        }
        let pause = self.rng.millis(300, 1_200);
        tokio::time::sleep(pause).await;
        if self.rng.chance(60) {
            self.cancel_one().await;
        }
        // Let that cancel settle before the fault, so some cancels meet no fault at all.
        tokio::time::sleep(Duration::from_millis(600)).await;
        self.inject(fault).await?;
        if self.rng.chance(60) {
            self.cancel_one().await;
        }
        *self
            .report
            .faults
            .entry(fault.name().to_owned())
            .or_default() += 1;
        self.restart_exited()
    }

    fn restart_exited(&mut self) -> Result<(), FaultError> {
        for proc in self.cluster.restart_exited()? {
            *self.report.unexpected_exits.entry(proc.name()).or_default() += 1;
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault) -> Result<(), FaultError> {
        let from_ms = protocol::now_ms();
        self.injected.push(Injected {
            fault,
            from_ms,
            to_ms: u64::MAX,
        });
        self.inject_fault(fault).await?;
        if let Some(last) = self.injected.last_mut() {
            last.to_ms = protocol::now_ms();
        }
        Ok(())
    }

    /// Whether a fault was being injected at some time within `[from_ms, to_ms]`, of a
    /// kind `matching`; `slack_ms` extends each fault's window (a lease runs out after it).
    fn fault_during(
        &self,
        from_ms: u64,
        to_ms: u64,
        slack_ms: u64,
        matching: impl Fn(Fault) -> bool,
    ) -> bool {
        self.injected.iter().any(|f| {
            matching(f.fault) && f.from_ms <= to_ms && f.to_ms.saturating_add(slack_ms) >= from_ms
        })
    }

    async fn inject_fault(&mut self, fault: Fault) -> Result<(), FaultError> {
        match fault {
            Fault::KillNode => {
                let victim =
                    Proc::Node(self.rng.below(self.cluster.settings().nodes as u64) as usize);
                self.cluster.kill9(victim);
                tokio::time::sleep(self.rng.millis(500, 1_500)).await;
                self.cluster.spawn(victim)?;
            }
            Fault::KillLeader => {
                let victim = self.leader().await.unwrap_or(Proc::Coordinator(0));
                self.cluster.kill9(victim);
                tokio::time::sleep(self.rng.millis(500, 1_500)).await;
                self.cluster.spawn(victim)?;
            }
            Fault::KillNats => {
                // One server: no draw, so that a seed replays the same run as before.
                let victim = match self.config.nats_servers {
                    0 | 1 => Proc::Nats(0),
                    n => Proc::Nats(self.rng.below(n as u64) as usize),
                };
                self.cluster.kill9(victim);
                tokio::time::sleep(self.rng.millis(500, 1_500)).await;
                self.cluster.spawn(victim)?;
                self.cluster.wait_for_nats(Duration::from_secs(20))?;
            }
            Fault::StopNode => {
                let victim =
                    Proc::Node(self.rng.below(self.cluster.settings().nodes as u64) as usize);
                self.cluster.signal(victim, Signal::SIGSTOP);
                let past_lease = Duration::from_millis(self.config.lease_ms + 1_000);
                tokio::time::sleep(past_lease + self.rng.millis(0, 1_000)).await;
                self.cluster.signal(victim, Signal::SIGCONT);
            }
        }
        Ok(())
    }

    /// Submits one job, retrying with the same idempotency key while the stack is disturbed.
    async fn submit(&self, key: &str, round: u32, index: u32) -> Option<JobId> {
        let mut spec = JobSpec::new(format!("faults round {round} job {index}"));
        spec.num_frames = Some(7);
        spec.width = Some(64);
        spec.height = Some(64);
        spec.steps = Some(self.config.steps);
        for _ in 0..10 {
            let response = self
                .http
                .post(format!("{}/v1/videos", self.base))
                .header("Idempotency-Key", key)
                .json(&spec)
                .send()
                .await;
            if let Ok(response) = response
                && response.status() == reqwest::StatusCode::ACCEPTED
                && let Ok(view) = response.json::<JobView>().await
            {
                return Some(view.id);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    /// Cancels a random accepted job (it may be queued, running or finished already).
    async fn cancel_one(&mut self) {
        if self.accepted.is_empty() {
            return;
        }
        // Prefer recent jobs: they are the ones likely to be queued or running.
        let recent = self.accepted.len().min(12);
        let pick = self.accepted.len() - 1 - self.rng.below(recent as u64) as usize;
        let job_id = self.accepted[pick];
        if self.cancels.iter().any(|c| c.job_id == job_id) {
            return;
        }
        let sent_at = Instant::now();
        self.report.cancels_sent += 1;
        let response = self
            .http
            .post(format!("{}/v1/videos/{job_id}/cancel", self.base))
            .send()
            .await;
        match response.map(|r| r.status()) {
            Ok(reqwest::StatusCode::OK) => {
                self.report.cancels += 1;
                self.cancels.push(Cancelled { job_id, sent_at });
            }
            Ok(reqwest::StatusCode::CONFLICT) => self.report.cancels_of_finished_jobs += 1,
            Ok(status) => eprintln!("faults: cancel of {job_id} answered {status}"),
            Err(error) => eprintln!("faults: cancel of {job_id} failed: {error}"),
        }
    }

    /// Restarts whatever died on its own and waits for every accepted job to finish.
    async fn finish(&mut self) -> Result<(), FaultError> {
        self.restart_exited()?;
        let deadline = Instant::now() + self.config.drain_timeout;
        loop {
            let mut open = 0;
            for job_id in &self.accepted {
                match self.record(*job_id).await {
                    Some(record) if record.state.is_terminal() => {}
                    _ => open += 1,
                }
            }
            if open == 0 || Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.restart_exited()?;
        }
    }

    async fn record(&self, job_id: JobId) -> Option<JobRecord> {
        match self.resources.jobs.get(job_id).await {
            Ok(found) => found.map(|(record, _)| record),
            Err(_) => None,
        }
    }

    fn violation(&mut self, line: String) {
        eprintln!("faults: VIOLATION {line}");
        if self.report.violations.len() < 50 {
            self.report.violations.push(line);
        }
    }

    /// Checks every accepted job's record and video and every honoured cancel
    /// ([`check`]), counting into the report.
    async fn check(&mut self, freed: &Freed) {
        let accepted = self.accepted.clone();
        for job_id in &accepted {
            let Some(record) = self.record(*job_id).await else {
                self.report.lost += 1;
                self.violation(format!("job {job_id} accepted but has no record"));
                continue;
            };
            let verdict = check::record_verdict(&record);
            *self
                .report
                .final_states
                .entry(verdict.state.to_string())
                .or_default() += 1;
            for violation in verdict.violations() {
                match violation {
                    check::Violation::NeverFinished(_) => self.report.lost += 1,
                    check::Violation::EndedTimes(_) => self.report.multiple_terminal += 1,
                    check::Violation::SucceededTimes(_) => self.report.duplicated_results += 1,
                }
                self.violation(format!("job {job_id} {violation}"));
            }
            if !verdict.state.is_terminal() {
                continue;
            }
            if verdict.runs > 1 {
                self.count_rerun(*job_id, &verdict);
            }
            if record.state == JobState::Succeeded {
                let problem = match self.download(*job_id).await {
                    Ok(bytes) => check::video_problem(&record, &bytes),
                    Err(error) => Some(error),
                };
                if let Some(problem) = problem {
                    self.report.invalid_videos += 1;
                    self.violation(format!("job {job_id}: video {problem}"));
                }
            }
        }
        self.check_cancels(freed).await;
        if self.report.accepted > 0 {
            self.report.ran_twice_pct =
                f64::from(self.report.ran_twice) * 100.0 / f64::from(self.report.accepted);
        }
    }

    /// A job that ran more than once: explained by a worker fault during an attempt that
    /// failed or whose lease expired (from its placement to its end, which a NATS fault
    /// right after the worker fault may delay by seconds), or not.
    fn count_rerun(&mut self, job_id: JobId, verdict: &check::RecordVerdict) {
        self.report.ran_twice += 1;
        let worker = |fault| matches!(fault, Fault::KillNode | Fault::StopNode);
        let slack = self.config.lease_ms + 3_000;
        let explained = verdict
            .retried_ms
            .iter()
            .any(|&(placed, ended)| self.fault_during(placed, ended, slack, worker));
        if explained {
            self.report.ran_twice_after_worker_fault += 1;
        } else {
            self.report.ran_twice_unexplained += 1;
            self.report.notes.push(format!(
                "job {job_id} ran {} times with no worker fault to explain it",
                verdict.runs
            ));
        }
    }

    /// Every cancel answered 200 ended its job `cancelled`; for running jobs, the time until
    /// the slot was seen free (overall, and with no fault in between).
    async fn check_cancels(&mut self, freed: &Freed) {
        let cancels = std::mem::take(&mut self.cancels);
        let (mut to_free, mut undisturbed) = (Vec::new(), Vec::new());
        for cancel in &cancels {
            let Some(record) = self.record(cancel.job_id).await else {
                continue;
            };
            let was_running = match check::cancel_verdict(&record) {
                Ok(was_running) => was_running,
                Err(problem) => {
                    self.report.cancels_not_honoured += 1;
                    self.violation(format!("job {} {problem}", cancel.job_id));
                    continue;
                }
            };
            let freed_at = freed
                .lock()
                .ok()
                .and_then(|f| f.get(&cancel.job_id).copied());
            if was_running
                && let Some(freed_at) = freed_at
                && freed_at > cancel.sent_at
            {
                let took = freed_at - cancel.sent_at;
                let ms = took.as_secs_f64() * 1_000.0;
                to_free.push(ms);
                let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                let sent_ms = protocol::now_ms().saturating_sub(
                    u64::try_from(cancel.sent_at.elapsed().as_millis()).unwrap_or(0),
                );
                if !self.fault_during(sent_ms, sent_ms + took_ms, 0, |_| true) {
                    undisturbed.push(ms);
                }
            }
        }
        self.report.cancel_to_free_samples = u32::try_from(to_free.len()).unwrap_or(u32::MAX);
        self.report.cancel_to_free_ms = Quantiles::of(&to_free);
        self.report.cancel_to_free_undisturbed_ms = Quantiles::of(&undisturbed);
    }

    async fn download(&self, job_id: JobId) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(format!("{}/v1/videos/{job_id}/content", self.base))
            .send()
            .await
            .map_err(|e| format!("download failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("download answered {}", response.status()));
        }
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("download failed: {e}"))
    }
}

/// Follows the node heartbeats and notes when each job's slot stops showing it (re-opening
/// the watch after a NATS restart).
async fn watch_slots(resources: Resources, freed: Freed) {
    let mut busy: HashMap<(String, u32), JobId> = HashMap::new();
    loop {
        let Ok(mut watch) = resources.nodes.watch(">").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { break };
            let Ok(beat) = codec::decode::<NodeHeartbeat>(&entry.value) else {
                continue;
            };
            for slot in &beat.slots {
                let key = (beat.node_id.as_str().to_owned(), slot.slot);
                let now_running = slot.job.map(|job| job.job_id);
                if let Some(previous) = busy.get(&key).copied()
                    && now_running != Some(previous)
                    && let Ok(mut freed) = freed.lock()
                {
                    freed.insert(previous, Instant::now());
                }
                match now_running {
                    Some(job_id) => busy.insert(key, job_id),
                    None => busy.remove(&key),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Finds `nats-server`: `MOCHI_NATS_SERVER`, then `.venv/bin/nats-server`, then `PATH`.
pub fn find_nats_server() -> Option<PathBuf> {
    nats_process::find_binary(None, &[Path::new(".")])
}
