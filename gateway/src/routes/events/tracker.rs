//! Which events a job's record, queue entry and node events make, and their ids: the pure
//! part of the event stream.

use std::fmt;
use std::str::FromStr;

use axum::response::sse::Event;
use protocol::api::{JobView, percent_of};
use protocol::messages::ProgressEvent;
use protocol::queue::QueueInfo;
use protocol::record::Progress;
use protocol::{JobRecord, JobState};
use serde::Serialize;

/// The phases of an attempt, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// `started` or `resumed`.
    Started = 1,
    /// `progress`, one per denoising step.
    Progress = 2,
    /// `decoding`.
    Decoding = 3,
    /// `preempted`.
    Preempted = 4,
    /// `queued`: waiting for the attempt after this one (attempt 0: for the first).
    Queued = 5,
    /// `completed`, `failed` or `cancelled`.
    Ended = 9,
}

impl Phase {
    fn from_code(code: u8) -> Option<Self> {
        [
            Self::Started,
            Self::Progress,
            Self::Decoding,
            Self::Preempted,
            Self::Queued,
            Self::Ended,
        ]
        .into_iter()
        .find(|phase| *phase as u8 == code)
    }
}

/// Where an event falls in a job's life, written `attempt.phase.number` (`1.2.17`: step 17
/// of attempt 1); ids compare by attempt, then phase, then number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The job's attempt (0 before its first placement).
    pub attempt: u32,
    /// What happened.
    pub phase: Phase,
    /// The step of a `progress` event, the queue entry's revision of a `queued` one, else 0.
    pub number: u64,
}

impl EventId {
    /// The id of `phase` in `attempt`.
    pub fn new(attempt: u32, phase: Phase, number: u64) -> Self {
        Self {
            attempt,
            phase,
            number,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.attempt, self.phase as u8, self.number)
    }
}

/// Text that is not an [`EventId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an event id: expected attempt.phase.number")]
pub struct NotAnEventId;

impl FromStr for EventId {
    type Err = NotAnEventId;

    fn from_str(text: &str) -> Result<Self, NotAnEventId> {
        let mut parts = text.split('.');
        let (Some(attempt), Some(phase), Some(number), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(NotAnEventId);
        };
        Ok(Self {
            attempt: attempt.parse().map_err(|_| NotAnEventId)?,
            phase: phase
                .parse()
                .ok()
                .and_then(Phase::from_code)
                .ok_or(NotAnEventId)?,
            number: number.parse().map_err(|_| NotAnEventId)?,
        })
    }
}

/// `queued`: the job's place in the queue; every field null until the scheduler's first
/// estimate.
#[derive(Debug, Default, Serialize)]
struct QueuedData {
    position: Option<u32>,
    queued: Option<u32>,
    lane: Option<String>,
    eta_start_ms: Option<u64>,
    eta_finish_ms: Option<u64>,
}

impl From<&QueueInfo> for QueuedData {
    fn from(info: &QueueInfo) -> Self {
        Self {
            position: Some(info.position),
            queued: Some(info.queued),
            lane: Some(info.lane.clone()),
            eta_start_ms: info.eta_start_ms,
            eta_finish_ms: info.eta_finish_ms,
        }
    }
}

/// `started`, `decoding`: the attempt.
#[derive(Debug, Serialize)]
struct AttemptData {
    attempt: u32,
}

/// `resumed`, `preempted`: the attempt and the steps done (null if unknown).
#[derive(Debug, Serialize)]
struct PauseData {
    attempt: u32,
    step: Option<u32>,
}

/// `progress`: one denoising step.
#[derive(Debug, Serialize)]
struct StepData {
    step: u32,
    total_steps: u32,
    percent: u32,
    /// Seconds since the previous step of the same attempt; null when that one's time is
    /// unknown (the first step seen, or steps replayed from the record).
    step_seconds: Option<f64>,
}

/// What an event says.
#[derive(Debug)]
enum Kind {
    Queued(QueuedData),
    Started(AttemptData),
    Resumed(PauseData),
    Progress(StepData),
    Decoding(AttemptData),
    Preempted(PauseData),
    /// The event's name and the job as it ended.
    Ended(&'static str, Box<JobView>),
}

/// An event to send.
#[derive(Debug)]
pub(super) struct Emitted {
    id: EventId,
    kind: Kind,
}

impl Emitted {
    fn name(&self) -> &'static str {
        match &self.kind {
            Kind::Queued(_) => "queued",
            Kind::Started(_) => "started",
            Kind::Resumed(_) => "resumed",
            Kind::Progress(_) => "progress",
            Kind::Decoding(_) => "decoding",
            Kind::Preempted(_) => "preempted",
            Kind::Ended(name, _) => name,
        }
    }

    /// The event as sent.
    pub(super) fn into_sse(self) -> Event {
        let event = Event::default().event(self.name()).id(self.id.to_string());
        let encoded = match self.kind {
            Kind::Queued(data) => event.json_data(data),
            Kind::Started(data) | Kind::Decoding(data) => event.json_data(data),
            Kind::Resumed(data) | Kind::Preempted(data) => event.json_data(data),
            Kind::Progress(data) => event.json_data(data),
            Kind::Ended(_, view) => event.json_data(view),
        };
        encoded.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot encode a progress event");
            Event::default().comment("an event could not be encoded")
        })
    }
}

/// How the current attempt began.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    /// From step 1.
    Fresh,
    /// From a paused attempt's latent, after this many steps (unknown once it paused again).
    Resumed(Option<u32>),
}

impl Start {
    fn of(record: &JobRecord) -> Self {
        if record.state == JobState::Preempted {
            // `resume` is now this attempt's own pause point.
            let paused_before = record
                .history
                .iter()
                .any(|entry| entry.to == JobState::Preempted && entry.attempt < record.attempt);
            return if paused_before {
                Self::Resumed(None)
            } else {
                Self::Fresh
            };
        }
        record
            .resume
            .as_ref()
            .map_or(Self::Fresh, |resume| Self::Resumed(Some(resume.step)))
    }

    fn first_step(self) -> Option<u32> {
        match self {
            Self::Fresh => Some(1),
            Self::Resumed(done) => done.map(|done| done.saturating_add(1)),
        }
    }
}

/// Turns what is known of a job into the events its client has not seen, in id order: an
/// id at or below the last one sent is never sent.
#[derive(Debug)]
pub(super) struct Tracker {
    /// The last id sent, or the client's `Last-Event-ID`.
    last: Option<EventId>,
    /// The job's state as last read (`queued` for a submission not taken in yet).
    state: JobState,
    /// The job's attempt as last read.
    attempt: u32,
    /// The job's denoising steps.
    total_steps: u32,
    /// The first step the current attempt runs, when known.
    first_step: Option<u32>,
    /// The job's queue entry and its revision.
    queue: Option<(QueueInfo, u64)>,
    /// Attempt, step and time (ms) of the last step sent, when its time is known.
    last_step_at: Option<(u32, u32, u64)>,
    /// The job ended: nothing follows.
    ended: bool,
}

impl Tracker {
    /// A stream after `last` (none: from the start), with the job's queue entry as read.
    pub(super) fn new(last: Option<EventId>, queue: Option<(QueueInfo, u64)>) -> Self {
        Self {
            last,
            state: JobState::Queued,
            attempt: 0,
            total_steps: 0,
            first_step: None,
            queue,
            last_step_at: None,
            ended: false,
        }
    }

    /// The job's attempt as last read (0 before its first placement).
    pub(super) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the job ended (nothing follows).
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    /// Forgets a `Last-Event-ID` from an attempt the job has not reached (not one of ours).
    pub(super) fn forget_future(&mut self, attempt: u32) {
        self.last = self.last.filter(|last| last.attempt <= attempt);
    }

    fn push(&mut self, out: &mut Vec<Emitted>, id: EventId, kind: impl FnOnce() -> Kind) {
        if self.last.is_some_and(|last| id <= last) {
            return;
        }
        self.last = Some(id);
        out.push(Emitted { id, kind: kind() });
    }

    /// A submission accepted but not taken in yet: a queued job at attempt 0.
    pub(super) fn on_pending(&mut self) -> Vec<Emitted> {
        let mut out = Vec::new();
        self.queued(&mut out);
        out
    }

    /// The events the record implies; `live` when it came from the watch (its time is then
    /// that of its last step).
    pub(super) fn on_record(
        &mut self,
        record: &JobRecord,
        live: bool,
        view: impl FnOnce() -> JobView,
    ) -> Vec<Emitted> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let attempt = record.attempt;
        self.state = record.state;
        self.attempt = attempt;
        self.total_steps = record.shape.steps;
        if record.state.is_terminal() {
            self.ended = true;
            let name = match record.state {
                JobState::Succeeded => "completed",
                JobState::Cancelled => "cancelled",
                _ => "failed",
            };
            let id = EventId::new(attempt, Phase::Ended, 0);
            self.push(&mut out, id, || Kind::Ended(name, Box::new(view())));
            return out;
        }
        match record.state {
            JobState::Queued => self.queued(&mut out),
            JobState::Running | JobState::Encoding | JobState::Preempted => {
                let start = Start::of(record);
                self.first_step = start.first_step();
                let id = EventId::new(attempt, Phase::Started, 0);
                self.push(&mut out, id, || match start {
                    Start::Fresh => Kind::Started(AttemptData { attempt }),
                    Start::Resumed(step) => Kind::Resumed(PauseData { attempt, step }),
                });
                if let Some(progress) = record.progress {
                    let at_ms =
                        (live && record.state == JobState::Running).then_some(record.updated_at_ms);
                    self.steps_to(&mut out, attempt, progress.step, at_ms);
                }
                let attempt_data = AttemptData { attempt };
                match record.state {
                    JobState::Encoding => {
                        let id = EventId::new(attempt, Phase::Decoding, 0);
                        self.push(&mut out, id, || Kind::Decoding(attempt_data));
                    }
                    JobState::Preempted => {
                        let step = record
                            .resume
                            .as_ref()
                            .map(|resume| resume.step)
                            .or(record.progress.map(|progress| progress.step));
                        let id = EventId::new(attempt, Phase::Preempted, 0);
                        self.push(&mut out, id, || {
                            Kind::Preempted(PauseData { attempt, step })
                        });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        out
    }

    /// A node's per-step event: counted only for the attempt the record says is running.
    pub(super) fn on_progress(&mut self, event: &ProgressEvent) -> Vec<Emitted> {
        let mut out = Vec::new();
        let current = !self.ended
            && self.state == JobState::Running
            && event.state == JobState::Running
            && event.attempt == self.attempt
            && (1..=self.total_steps).contains(&event.step);
        if current {
            self.steps_to(&mut out, event.attempt, event.step, Some(event.at_ms));
        }
        out
    }

    /// Takes in where the job stands in the queue without sending anything (a record that
    /// follows sends it, if the job is queued).
    pub(super) fn set_queue(&mut self, entry: Option<(QueueInfo, u64)>) {
        self.queue = entry;
    }

    /// The queue entry changed (`None`: removed).
    pub(super) fn on_queue(&mut self, entry: Option<(QueueInfo, u64)>) -> Vec<Emitted> {
        let mut out = Vec::new();
        let present = entry.is_some();
        self.queue = entry;
        if present && !self.ended && self.state == JobState::Queued {
            self.queued(&mut out);
        }
        out
    }

    fn queued(&mut self, out: &mut Vec<Emitted>) {
        let (number, data) = self
            .queue
            .as_ref()
            .map_or((0, QueuedData::default()), |(info, revision)| {
                (*revision, QueuedData::from(info))
            });
        let id = EventId::new(self.attempt, Phase::Queued, number);
        self.push(out, id, || Kind::Queued(data));
    }

    /// The steps of `attempt` not sent yet, up to `step`; only `step`'s time may be known.
    fn steps_to(&mut self, out: &mut Vec<Emitted>, attempt: u32, step: u32, at_ms: Option<u64>) {
        let upto = step.min(self.total_steps);
        if upto == 0 {
            return;
        }
        let after_last = self
            .last
            .filter(|last| last.attempt == attempt && last.phase == Phase::Progress)
            .and_then(|last| u32::try_from(last.number).ok())
            .map(|seen| seen.saturating_add(1));
        // Where the attempt began is unknown: only the step at hand can be told.
        let from = after_last.or(self.first_step).unwrap_or(upto);
        for earlier in from..upto {
            self.step(out, attempt, earlier, None);
        }
        self.step(out, attempt, upto, at_ms);
    }

    fn step(&mut self, out: &mut Vec<Emitted>, attempt: u32, step: u32, at_ms: Option<u64>) {
        let id = EventId::new(attempt, Phase::Progress, u64::from(step));
        if self.last.is_some_and(|last| id <= last) {
            return;
        }
        let step_seconds = match (self.last_step_at, at_ms) {
            (Some((seen_attempt, seen_step, before)), Some(now))
                if seen_attempt == attempt && seen_step.saturating_add(1) == step =>
            {
                Some(now.saturating_sub(before) as f64 / 1000.0)
            }
            _ => None,
        };
        self.last_step_at = at_ms.map(|at| (attempt, step, at));
        let total_steps = self.total_steps;
        self.push(out, id, || {
            Kind::Progress(StepData {
                step,
                total_steps,
                percent: percent_of(JobState::Running, Some(Progress { step, total_steps })),
                step_seconds,
            })
        });
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use protocol::record::{JobEvent, Lease, ResumePoint};
    use protocol::{JobId, JobSpec, Limits, NodeId, TenantId};

    fn queued(steps: u32) -> JobRecord {
        let mut spec = JobSpec::new("a fox");
        spec.steps = Some(steps);
        let shape = spec.validate(&Limits::default()).unwrap();
        JobRecord::queued(
            JobId::new(),
            TenantId::default_tenant(),
            spec,
            shape,
            1,
            3,
            1_000,
        )
    }

    fn apply(record: &JobRecord, event: JobEvent) -> JobRecord {
        record.apply(&event, 2_000).unwrap()
    }

    fn assign(record: &JobRecord) -> JobRecord {
        let lease = Lease {
            node: NodeId::new("n1").unwrap(),
            slot: 0,
            deadline_ms: 9_000,
        };
        apply(record, JobEvent::Assigned { lease })
    }

    fn start(record: &JobRecord) -> JobRecord {
        let attempt = record.attempt;
        apply(
            record,
            JobEvent::Started {
                attempt,
                lease_deadline_ms: 9_000,
            },
        )
    }

    fn at_step(record: &JobRecord, step: u32) -> JobRecord {
        let progress = Progress {
            step,
            total_steps: record.shape.steps,
        };
        let attempt = record.attempt;
        apply(
            record,
            JobEvent::Progressed {
                attempt,
                progress,
                lease_deadline_ms: 9_000,
            },
        )
    }

    /// A job of `steps` steps running its first attempt, `step` steps done.
    fn running(steps: u32, step: u32) -> JobRecord {
        at_step(&start(&assign(&queued(steps))), step)
    }

    fn node_event(record: &JobRecord, attempt: u32, step: u32, at_ms: u64) -> ProgressEvent {
        ProgressEvent {
            job_id: record.id,
            attempt,
            state: JobState::Running,
            step,
            total_steps: record.shape.steps,
            at_ms,
        }
    }

    fn read(tracker: &mut Tracker, record: &JobRecord, live: bool) -> Vec<Emitted> {
        tracker.on_record(record, live, || JobView::from_record(record))
    }

    /// `name` or `progress:step`, one per event.
    fn names(events: &[Emitted]) -> Vec<String> {
        events
            .iter()
            .map(|event| match &event.kind {
                Kind::Progress(data) => format!("progress:{}", data.step),
                _ => event.name().to_owned(),
            })
            .collect()
    }

    fn step_seconds(events: &[Emitted]) -> Vec<Option<f64>> {
        events
            .iter()
            .filter_map(|event| match &event.kind {
                Kind::Progress(data) => Some(data.step_seconds),
                _ => None,
            })
            .collect()
    }

    fn id(text: &str) -> EventId {
        text.parse().unwrap()
    }

    #[test]
    fn event_ids_round_trip_and_follow_the_job_life() {
        assert_eq!(id("1.2.17"), EventId::new(1, Phase::Progress, 17));
        assert_eq!(id("1.2.17").to_string(), "1.2.17");
        let life = [
            "0.5.0", "0.5.42", "1.1.0", "1.2.1", "1.2.2", "1.2.10", "1.4.0", "1.5.7", "2.1.0",
            "2.2.11", "2.3.0", "2.9.0",
        ];
        for pair in life.windows(2) {
            assert!(id(pair[0]) < id(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        for bad in [
            "", "1.2", "1.2.3.4", "1.7.0", "a.1.1", "-1.2.3", "1.2.x", "1..2", " 1.2.3",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_new_client_gets_the_attempt_so_far() {
        let mut tracker = Tracker::new(None, None);
        let events = read(&mut tracker, &running(8, 3), false);
        assert_eq!(
            names(&events),
            ["started", "progress:1", "progress:2", "progress:3"]
        );
        assert_eq!(step_seconds(&events), [None, None, None]);
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["1.1.0", "1.2.1", "1.2.2", "1.2.3"]);
    }

    #[test]
    fn a_reconnect_gets_only_what_follows_its_last_id() {
        let record = running(16, 9);
        let mut tracker = Tracker::new(Some(id("1.2.5")), None);
        let events = read(&mut tracker, &record, false);
        assert_eq!(
            names(&events),
            ["progress:6", "progress:7", "progress:8", "progress:9"]
        );
        let mut tracker = Tracker::new(Some(id("1.1.0")), None);
        assert_eq!(read(&mut tracker, &record, false).len(), 9);
        let mut tracker = Tracker::new(Some(id("1.2.9")), None);
        assert!(read(&mut tracker, &record, false).is_empty());
    }

    #[test]
    fn a_last_id_from_an_attempt_not_reached_is_forgotten() {
        let mut tracker = Tracker::new(Some(id("7.2.3")), None);
        tracker.forget_future(1);
        assert_eq!(read(&mut tracker, &running(8, 2), false).len(), 3);
    }

    #[test]
    fn node_events_count_each_step_once_in_order() {
        let record = running(8, 2);
        let mut tracker = Tracker::new(None, None);
        read(&mut tracker, &record, false);
        let events = tracker.on_progress(&node_event(&record, 1, 3, 10_000));
        assert_eq!(names(&events), ["progress:3"]);
        assert_eq!(step_seconds(&events), [None], "step 2's time is unknown");
        assert!(
            tracker
                .on_progress(&node_event(&record, 1, 3, 10_100))
                .is_empty()
        );
        assert!(
            tracker
                .on_progress(&node_event(&record, 1, 2, 10_200))
                .is_empty()
        );
        let events = tracker.on_progress(&node_event(&record, 1, 4, 12_500));
        assert_eq!(step_seconds(&events), [Some(2.5)]);
        // A lost event: the gap is filled, without times.
        let events = tracker.on_progress(&node_event(&record, 1, 6, 15_000));
        assert_eq!(names(&events), ["progress:5", "progress:6"]);
        assert_eq!(step_seconds(&events), [None, None]);
        // Stale attempts, other states and steps past the end are not progress.
        assert!(
            tracker
                .on_progress(&node_event(&record, 0, 7, 16_000))
                .is_empty()
        );
        assert!(
            tracker
                .on_progress(&node_event(&record, 2, 7, 16_000))
                .is_empty()
        );
        assert!(
            tracker
                .on_progress(&node_event(&record, 1, 9, 16_000))
                .is_empty()
        );
        let mut encoding = node_event(&record, 1, 7, 16_000);
        encoding.state = JobState::Encoding;
        assert!(tracker.on_progress(&encoding).is_empty());
        // The record's own step, live, carries its time.
        let later = at_step(&at_step(&record, 6), 7);
        let events = read(&mut tracker, &later, true);
        assert_eq!(names(&events), ["progress:7"]);
        let percents: Vec<u32> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::Progress(data) => Some(data.percent),
                _ => None,
            })
            .collect();
        assert_eq!(percents, [percent_of(JobState::Running, later.progress)]);
    }

    #[test]
    fn an_ended_job_sends_its_end_and_nothing_after() {
        let record = running(8, 8);
        let encoding = apply(
            &record,
            JobEvent::EncodingStarted {
                attempt: 1,
                lease_deadline_ms: 9_000,
            },
        );
        let mut tracker = Tracker::new(Some(id("1.2.3")), None);
        assert_eq!(
            names(&read(&mut tracker, &encoding, false)),
            [
                "progress:4",
                "progress:5",
                "progress:6",
                "progress:7",
                "progress:8",
                "decoding"
            ]
        );
        let cancelled = apply(&encoding, JobEvent::CancelRequested);
        let events = read(&mut tracker, &cancelled, true);
        assert_eq!(names(&events), ["cancelled"]);
        assert_eq!(events[0].id, id("1.9.0"));
        assert!(tracker.ended);
        assert!(read(&mut tracker, &cancelled, true).is_empty());
        assert!(
            tracker
                .on_progress(&node_event(&record, 1, 8, 1))
                .is_empty()
        );

        let mut tracker = Tracker::new(Some(id("1.2.3")), None);
        assert_eq!(names(&read(&mut tracker, &cancelled, false)), ["cancelled"]);
        let mut tracker = Tracker::new(Some(id("1.9.0")), None);
        assert!(read(&mut tracker, &cancelled, false).is_empty());
        assert!(tracker.ended, "seen already: the handler answers 204");

        let aborted = apply(&queued(8), JobEvent::StartDeadlineMissed);
        let mut tracker = Tracker::new(None, None);
        assert_eq!(names(&read(&mut tracker, &aborted, false)), ["failed"]);
    }

    #[test]
    fn a_resumed_attempt_counts_from_its_pause() {
        let record = running(8, 3);
        let paused = apply(
            &record,
            JobEvent::Preempted {
                attempt: 1,
                resume: ResumePoint {
                    step: 3,
                    latent_object: "x".to_owned(),
                },
            },
        );
        let mut tracker = Tracker::new(None, None);
        assert_eq!(
            names(&read(&mut tracker, &paused, false)),
            [
                "started",
                "progress:1",
                "progress:2",
                "progress:3",
                "preempted"
            ]
        );
        let requeued = apply(&paused, JobEvent::Requeued);
        let events = read(&mut tracker, &requeued, true);
        assert_eq!(names(&events), ["queued"]);
        assert_eq!(events[0].id, id("1.5.0"));
        let resumed = start(&assign(&requeued));
        let events = read(&mut tracker, &resumed, true);
        assert_eq!(names(&events), ["resumed"]);
        assert!(matches!(
            &events[0].kind,
            Kind::Resumed(PauseData {
                attempt: 2,
                step: Some(3)
            })
        ));
        assert_eq!(
            names(&read(&mut tracker, &at_step(&resumed, 5), true)),
            ["progress:4", "progress:5"]
        );
        // Paused again: a new client cannot know where attempt 2 began, and sends no guess.
        let paused_again = apply(
            &at_step(&resumed, 5),
            JobEvent::Preempted {
                attempt: 2,
                resume: ResumePoint {
                    step: 5,
                    latent_object: "y".to_owned(),
                },
            },
        );
        let mut tracker = Tracker::new(None, None);
        let events = read(&mut tracker, &paused_again, false);
        assert_eq!(names(&events), ["resumed", "progress:5", "preempted"]);
    }

    #[test]
    fn queue_changes_are_sent_while_queued() {
        let info = |position| QueueInfo {
            position,
            queued: 4,
            lane: "short".to_owned(),
            eta_start_ms: Some(5_000),
            eta_finish_ms: None,
            updated_at_ms: 1_000,
        };
        let mut tracker = Tracker::new(None, None);
        let events = tracker.on_pending();
        assert_eq!(events[0].id, id("0.5.0"));
        assert!(matches!(&events[0].kind, Kind::Queued(data) if data.position.is_none()));
        let events = tracker.on_queue(Some((info(3), 7)));
        assert_eq!(events[0].id, id("0.5.7"));
        assert!(matches!(&events[0].kind, Kind::Queued(data) if data.position == Some(3)));
        assert!(tracker.on_queue(Some((info(3), 7))).is_empty());
        let record = queued(8);
        assert!(
            read(&mut tracker, &record, true).is_empty(),
            "the same entry"
        );
        assert_eq!(tracker.on_queue(Some((info(2), 9))).len(), 1);
        assert!(tracker.on_queue(None).is_empty());
        read(&mut tracker, &assign(&record), true);
        assert!(tracker.on_queue(Some((info(1), 11))).is_empty(), "placed");
    }
}
