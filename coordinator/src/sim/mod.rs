//! A deterministic discrete-event simulator that drives the same [`Policy`] code as the live
//! scheduler with a trace of arrivals and a set of slots.
//!
//! Each job's true GPU time on a class is the cost model's prior times a per-job log-normal
//! factor (the model's error); memory is the prior's peak. A job placed on a slot that
//! cannot hold it fails with out-of-memory where [`cost::failure_seconds`] says and is
//! retried once (`max_attempts`). A paused job stops at its next step boundary, saves its
//! state (`pause_save_s`), and resumes later from that step, paying `resume_s`.
//!
//! One file, past 500 lines: the event loop and its event handlers share the simulation's
//! state and read as one loop; traces, reports and the generator are apart.

pub mod report;
pub mod rng;
pub mod trace;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use protocol::JobId;

use crate::cost::{self, CostModel, GpuClass, JobCost};
use crate::policy::eta::{ARRIVAL_WINDOW_MS, Arrivals};
use crate::policy::{self, Lane, Policy, Running, Slot, View, Waiting};
use rng::Rng;
use trace::TraceJob;

/// The simulated cluster and its physics.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// One entry per slot.
    pub slots: Vec<GpuClass>,
    /// Spread of true GPU time around the prediction (σ of its logarithm).
    pub noise_sigma: f64,
    /// Seconds to save a paused job's state.
    pub pause_save_s: f64,
    /// Seconds to resume a paused job (load the latent, recompute the text embedding).
    pub resume_s: f64,
    /// Attempts before a failing job is lost (2: retried once).
    pub max_attempts: u32,
    /// Delay before a failed job may run again, s.
    pub retry_backoff_s: f64,
    /// The scheduler's tick while jobs wait, s.
    pub tick_s: f64,
    /// Seed of the per-job noise.
    pub seed: u64,
}

impl SimConfig {
    /// `slots` with the standard physics.
    pub fn new(slots: Vec<GpuClass>) -> Self {
        Self {
            slots,
            noise_sigma: 0.15,
            pause_save_s: 1.5,
            resume_s: 3.0,
            max_attempts: 2,
            retry_backoff_s: 10.0,
            tick_s: 5.0,
            seed: 7,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its video was made.
    Succeeded,
    /// Refused at submit (no slot can hold it).
    Rejected,
    /// Failed on every attempt (out of memory).
    Lost,
    /// Still queued or running when the trace ended.
    Unfinished,
}

/// One job's story.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobOutcome {
    /// Its lane.
    pub lane: Lane,
    /// Arrival, s.
    pub arrival_s: f64,
    /// Predicted GPU seconds on the class it ran (or the reference class).
    pub own_s: f64,
    /// First start, s.
    pub first_start_s: Option<f64>,
    /// Predicted start at submission, s.
    pub predicted_start_s: Option<f64>,
    /// Finish, s.
    pub finish_s: Option<f64>,
    /// Time spent queued in all (also after pauses and failures), s.
    pub queued_s: f64,
    /// Times paused.
    pub pauses: u32,
    /// Whether it asked for low (batch) priority.
    pub low_priority: bool,
    /// How it ended.
    pub fate: Fate,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    /// The policy's name.
    pub policy: String,
    /// Every job, in trace order.
    pub jobs: Vec<JobOutcome>,
    /// GPU seconds on work that was kept.
    pub useful_gpu_s: f64,
    /// GPU seconds on attempts that failed with out-of-memory.
    pub wasted_gpu_s: f64,
    /// GPU seconds saving and resuming paused jobs.
    pub pause_overhead_s: f64,
    /// Policy decisions taken.
    pub decisions: u64,
    /// Wall time spent in the policy, s.
    pub decision_wall_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival(usize),
    RunEnd { slot: usize, epoch: u64 },
    PauseEnd { slot: usize, epoch: u64 },
    Wake,
}

struct Job {
    trace: TraceJob,
    id: JobId,
    cost: JobCost,
    noise: f64,
    lane: Lane,
    done_steps: u32,
    failures: u32,
    not_before_s: f64,
    queued_since: f64,
    outcome: JobOutcome,
}

struct Run {
    job: usize,
    started: f64,
    /// Seconds before the first step of this run (resume).
    lead_s: f64,
    /// True seconds per step on this slot.
    step_s: f64,
    start_steps: u32,
    oom: bool,
    pausing_for: Option<JobId>,
}

struct SlotState {
    class: GpuClass,
    memory: u64,
    run: Option<Run>,
    epoch: u64,
}

struct Sim<'a> {
    policy: &'a dyn Policy,
    config: &'a SimConfig,
    now: f64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    jobs: Vec<Job>,
    slots: Vec<SlotState>,
    queue: Vec<usize>,
    result: SimResult,
    wake_at: Option<u64>,
    arrivals: Arrivals,
    /// Σ relative speed of the slots (in reference slots).
    capacity: f64,
}

fn micros(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1e6).round() as u64
}

fn job_id(index: usize) -> JobId {
    JobId(uuid::Uuid::from_u128(index as u128 + 1))
}

/// Runs `trace` through `policy` on the configured slots.
pub fn run(policy: &dyn Policy, trace: &[TraceJob], config: &SimConfig) -> SimResult {
    let model = CostModel::default();
    let mut rng = Rng::new(config.seed);
    let lanes = policy.lanes();
    let jobs = trace
        .iter()
        .enumerate()
        .map(|(index, job)| {
            let cost = model.cost(&job.shape);
            let lane = lanes.lane(cost.reference_seconds());
            Job {
                trace: *job,
                id: job_id(index),
                cost,
                noise: rng.lognormal(config.noise_sigma),
                lane,
                done_steps: 0,
                failures: 0,
                not_before_s: 0.0,
                queued_since: job.arrival_s,
                outcome: JobOutcome {
                    lane,
                    arrival_s: job.arrival_s,
                    own_s: cost.reference_seconds(),
                    first_start_s: None,
                    predicted_start_s: None,
                    finish_s: None,
                    queued_s: 0.0,
                    pauses: 0,
                    low_priority: job.priority == protocol::spec::Priority::Low,
                    fate: Fate::Unfinished,
                },
            }
        })
        .collect();
    let mut sim = Sim {
        policy,
        config,
        now: 0.0,
        seq: 0,
        events: BinaryHeap::new(),
        jobs,
        slots: config
            .slots
            .iter()
            .map(|&class| SlotState {
                class,
                memory: class.spec().memory_bytes,
                run: None,
                epoch: 0,
            })
            .collect(),
        queue: Vec::new(),
        result: SimResult {
            policy: policy.name().to_owned(),
            jobs: Vec::new(),
            useful_gpu_s: 0.0,
            wasted_gpu_s: 0.0,
            pause_overhead_s: 0.0,
            decisions: 0,
            decision_wall_s: 0.0,
        },
        wake_at: None,
        arrivals: Arrivals::new(ARRIVAL_WINDOW_MS, 0),
        capacity: config
            .slots
            .iter()
            .map(|class| class.spec().relative_speed)
            .sum(),
    };
    for (index, job) in trace.iter().enumerate() {
        sim.push(job.arrival_s, Event::Arrival(index));
    }
    while let Some(Reverse((at, _, event))) = sim.events.pop() {
        sim.now = at as f64 / 1e6;
        sim.handle(event);
        while let Some(Reverse((next, _, _))) = sim.events.peek() {
            if *next != at {
                break;
            }
            if let Some(Reverse((_, _, event))) = sim.events.pop() {
                sim.handle(event);
            }
        }
        sim.decide();
    }
    sim.result.jobs = sim.jobs.iter().map(|job| job.outcome).collect();
    sim.result
}

impl Sim<'_> {
    fn push(&mut self, at_s: f64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((micros(at_s), self.seq, event)));
    }

    fn fleet(&self) -> impl Iterator<Item = (GpuClass, u64)> + '_ {
        self.slots.iter().map(|slot| (slot.class, slot.memory))
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrival(index) => self.arrive(index),
            Event::RunEnd { slot, epoch } if self.slots[slot].epoch == epoch => self.run_end(slot),
            Event::PauseEnd { slot, epoch } if self.slots[slot].epoch == epoch => {
                self.pause_end(slot);
            }
            Event::Wake => {
                self.wake_at = None;
            }
            Event::RunEnd { .. } | Event::PauseEnd { .. } => {}
        }
    }

    fn arrive(&mut self, index: usize) {
        let shape = self.jobs[index].trace.shape;
        if self.policy.traits().admission && cost::admit(&shape, self.fleet()).is_err() {
            self.jobs[index].outcome.fate = Fate::Rejected;
            return;
        }
        self.queue.push(index);
        // The ETA the client is told at submission.
        let (slots, waiting) = self.views();
        let now_ms = micros(self.now) / 1_000;
        let view = View {
            now_ms,
            slots: &slots,
        };
        let id = self.jobs[index].id;
        let job = &self.jobs[index];
        self.arrivals
            .observe(id, now_ms, job.lane, job.cost.reference_seconds());
        let overtaking = self.arrivals.overtaking(now_ms, self.capacity);
        let estimate = policy::eta::estimate_with(self.policy, &view, &waiting, overtaking)
            .into_iter()
            .find(|estimate| estimate.job_id == id);
        self.jobs[index].outcome.predicted_start_s = estimate
            .and_then(|estimate| estimate.eta_start_ms)
            .map(|ms| ms as f64 / 1_000.0);
    }

    /// The policy's view: every slot and every queued job.
    fn views(&self) -> (Vec<Slot>, Vec<Waiting>) {
        let slots = self
            .slots
            .iter()
            .map(|slot| Slot {
                class: slot.class,
                memory_bytes: slot.memory,
                running: slot.run.as_ref().map(|run| {
                    let job = &self.jobs[run.job];
                    let steps = job.trace.shape.steps.max(1);
                    let done = self.steps_done(run).min(steps);
                    let predicted = job.cost.seconds[slot.class.index()];
                    let into = self.now - run.started - run.lead_s;
                    let next_boundary_s = if into < 0.0 {
                        -into + run.step_s
                    } else {
                        run.step_s - (into % run.step_s.max(1e-9))
                    };
                    Running {
                        job_id: job.id,
                        lane: job.lane,
                        tenant: u64::from(job.trace.tenant),
                        remaining_s: predicted * f64::from(steps - done) / f64::from(steps),
                        next_boundary_s,
                        pauses: job.outcome.pauses,
                        unpausable: run.oom || done + 1 >= steps,
                        pausing_for: run.pausing_for,
                    }
                }),
            })
            .collect();
        let waiting = self
            .queue
            .iter()
            .map(|&index| {
                let job = &self.jobs[index];
                let steps = job.trace.shape.steps.max(1);
                let left = f64::from(steps - job.done_steps.min(steps)) / f64::from(steps);
                let mut cost = job.cost;
                for seconds in &mut cost.seconds {
                    *seconds *= left;
                }
                Waiting {
                    job_id: job.id,
                    tenant: u64::from(job.trace.tenant),
                    priority: job.trace.priority,
                    created_at_ms: micros(job.trace.arrival_s) / 1_000,
                    not_before_ms: micros(job.not_before_s).div_ceil(1_000),
                    cost,
                    pauses: job.outcome.pauses,
                }
            })
            .collect();
        (slots, waiting)
    }

    fn steps_done(&self, run: &Run) -> u32 {
        let into = self.now - run.started - run.lead_s;
        let steps = if into <= 0.0 {
            0
        } else {
            (into / run.step_s.max(1e-9) + 1e-9).floor() as u32
        };
        run.start_steps + steps
    }

    fn decide(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let (slots, waiting) = self.views();
        let view = View {
            now_ms: micros(self.now) / 1_000,
            slots: &slots,
        };
        let started = Instant::now();
        let decision = self.policy.decide(&view, &waiting);
        self.result.decision_wall_s += started.elapsed().as_secs_f64();
        self.result.decisions += 1;
        for placement in decision.placements {
            if let Some(position) = self
                .queue
                .iter()
                .position(|&index| self.jobs[index].id == placement.job_id)
            {
                let index = self.queue.swap_remove(position);
                self.start(placement.slot, index);
            }
        }
        for preemption in decision.preemptions {
            self.pause(preemption.slot, preemption.for_job);
        }
        if !self.queue.is_empty() {
            let wake = micros(self.now + self.config.tick_s);
            if self.wake_at.is_none_or(|at| at > wake) {
                self.wake_at = Some(wake);
                self.push(self.now + self.config.tick_s, Event::Wake);
            }
        }
    }

    fn start(&mut self, slot: usize, index: usize) {
        let class = self.slots[slot].class;
        let memory = self.slots[slot].memory;
        let fail_fast = self.policy.traits().fail_fast;
        let job = &mut self.jobs[index];
        job.outcome.queued_s += self.now - job.queued_since;
        if job.outcome.first_start_s.is_none() {
            job.outcome.first_start_s = Some(self.now);
        }
        let steps = job.trace.shape.steps.max(1);
        let true_s = job.cost.seconds[class.index()] * job.noise;
        let step_s = true_s / f64::from(steps);
        let lead_s = if job.done_steps > 0 {
            self.config.resume_s
        } else {
            0.0
        };
        let failure = cost::failure_seconds(&job.trace.shape, class, memory, fail_fast);
        let duration = match failure {
            Some(seconds) => seconds * job.noise,
            None => lead_s + step_s * f64::from(steps - job.done_steps.min(steps)),
        };
        job.outcome.own_s = job.cost.seconds[class.index()];
        let slot_state = &mut self.slots[slot];
        slot_state.epoch += 1;
        slot_state.run = Some(Run {
            job: index,
            started: self.now,
            lead_s,
            step_s,
            start_steps: job.done_steps,
            oom: failure.is_some(),
            pausing_for: None,
        });
        let epoch = slot_state.epoch;
        self.push(self.now + duration, Event::RunEnd { slot, epoch });
    }

    fn run_end(&mut self, slot: usize) {
        let Some(run) = self.slots[slot].run.take() else {
            return;
        };
        let ran = self.now - run.started;
        let job = &mut self.jobs[run.job];
        if run.oom {
            self.result.wasted_gpu_s += ran;
            job.failures += 1;
            job.done_steps = 0;
            if job.failures >= self.config.max_attempts {
                job.outcome.fate = Fate::Lost;
                job.outcome.finish_s = Some(self.now);
            } else {
                job.not_before_s = self.now + self.config.retry_backoff_s;
                job.queued_since = self.now;
                self.queue.push(run.job);
                let at = self.now + self.config.retry_backoff_s;
                self.push(at, Event::Wake);
            }
        } else {
            self.result.useful_gpu_s += ran - run.lead_s;
            self.result.pause_overhead_s += run.lead_s;
            job.done_steps = job.trace.shape.steps;
            job.outcome.fate = Fate::Succeeded;
            job.outcome.finish_s = Some(self.now);
        }
    }

    fn pause(&mut self, slot: usize, for_job: JobId) {
        let now = self.now;
        let Some(run) = self.slots[slot].run.as_ref() else {
            return;
        };
        if run.oom || run.pausing_for.is_some() {
            return;
        }
        let into = (now - run.started - run.lead_s).max(0.0);
        let boundary =
            run.started + run.lead_s + ((into / run.step_s.max(1e-9)).floor() + 1.0) * run.step_s;
        let slot_state = &mut self.slots[slot];
        slot_state.epoch += 1;
        if let Some(run) = slot_state.run.as_mut() {
            run.pausing_for = Some(for_job);
        }
        let epoch = slot_state.epoch;
        self.push(
            boundary + self.config.pause_save_s,
            Event::PauseEnd { slot, epoch },
        );
    }

    fn pause_end(&mut self, slot: usize) {
        let Some(run) = self.slots[slot].run.take() else {
            return;
        };
        let save = self.config.pause_save_s;
        let done = {
            self.now -= save;
            let done = self.steps_done(&run);
            self.now += save;
            done
        };
        let job = &mut self.jobs[run.job];
        let steps = job.trace.shape.steps.max(1);
        job.done_steps = done.min(steps - 1);
        job.outcome.pauses += 1;
        job.queued_since = self.now;
        self.result.useful_gpu_s += self.now - save - run.started - run.lead_s;
        self.result.pause_overhead_s += save + run.lead_s;
        self.queue.push(run.job);
        // The slot goes to the job it was freed for, if that job still waits.
        if let Some(target) = run.pausing_for
            && let Some(position) = self
                .queue
                .iter()
                .position(|&index| self.jobs[index].id == target)
        {
            let index = self.queue.swap_remove(position);
            self.start(slot, index);
        }
    }
}

#[cfg(test)]
mod tests;
