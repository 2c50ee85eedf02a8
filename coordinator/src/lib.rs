//! The coordinator of mochi-serve: takes jobs in from `MOCHI_SUBMIT` ([`intake`]), keeps the
//! queue and the live slots rebuilt from the `mochi_jobs` and `mochi_nodes` watches (so a
//! restarted coordinator loses nothing), places jobs on free slots with the configured
//! policy (`length-aware` by default: [`policy`], [`cost`], [`scheduler`]) through one proxy
//! actor per remote slot ([`slots`]), and has its keeper ([`keeper`]) send jobs whose node
//! went quiet back to the queue with a backoff, end jobs that missed a deadline, requeue
//! paused jobs and copy dead ones to the dead-letter stream.
//!
//! Durability lives in JetStream: every decision is a compare-and-set on the job's record,
//! so two coordinators (or a restarted one) never both win. Several replicas may run: one
//! leads by a lease in NATS KV ([`leader`]) and runs the actors; the others stand by and,
//! on taking over, rebuild their state from the watches and carry on ([`run_replica`]).

pub mod config;
pub mod cost;
pub mod error;
pub mod intake;
pub mod keeper;
pub mod metrics;
pub mod policy;
pub mod scheduler;
pub mod sim;
pub mod slots;
pub mod store;
pub mod submit_rpc;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Watch};
use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::lease::{Election, Role};
use protocol::messages::{NodeHeartbeat, RecordWriteReply};
use protocol::{JobId, JobRecord, NodeId, codec};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};
pub use scheduler::{SchedulerMsg, SchedulerStatus};

use crate::intake::{Intake, IntakeArgs, IntakeMsg};
use crate::scheduler::{Scheduler, SchedulerArgs};

/// How long shutdown waits for each actor to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a status request may take.
const STATUS_TIMEOUT_MS: u64 = 2_000;
/// Pause before a leader restarts its actors after they failed (e.g. NATS restarted).
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Runs one coordinator replica until `shutdown` is cancelled (see [`run_replica`]).
pub async fn run(
    config: Config,
    resources: Resources,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    let (role, _) = watch::channel(Role::Standby);
    Box::pin(run_replica(config, resources, client, role, shutdown)).await
}

/// Runs one coordinator replica: campaigns for the leader lease and, while it leads, runs the
/// coordinator (state rebuilt from `mochi_jobs` and `mochi_nodes` at every start). When the
/// lease is lost it stops scheduling at once and stands by again; when its actors fail
/// (NATS restarted under a watch) it rebuilds them. `role` publishes every change of role.
/// On `shutdown` it stops its actors and releases the lease so a standby takes over at once.
pub async fn run_replica(
    config: Config,
    resources: Resources,
    client: async_nats::Client,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let instance = config.resolved_instance_id();
    tracing::info!(%instance, lease_ms = config.leader_lease_ms, "coordinator replica standing for leader");
    let election = Election::new(
        resources.leader.clone(),
        protocol::names::KEY_LEADER,
        instance.clone(),
        config.leader_lease_ms,
    )
    .on_term(|_| ::metrics::counter!(metrics::LEADER_TERMS).increment(1));
    let election_stop = CancellationToken::new();
    let mut election_task =
        tokio::spawn(election.run(role.clone(), election_stop.clone().cancelled_owned()));
    let mut roles = role.subscribe();
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            _ = &mut election_task => break Err(Error::WatchEnded("the leader election")),
            led = roles.wait_for(|role| role.is_leader()) => {
                if led.is_err() {
                    break Err(Error::WatchEnded("the leader election"));
                }
            }
        }
        let term = *roles.borrow();
        tracing::info!(%instance, ?term, "leading: rebuilding state from mochi_jobs and mochi_nodes");
        let coordinator = match Box::pin(Coordinator::start(
            config.clone(),
            resources.clone(),
            client.clone(),
        ))
        .await
        {
            Ok(coordinator) => coordinator,
            Err(error) => {
                tracing::error!(%error, "cannot start the coordinator; retrying");
                tokio::time::sleep(RESTART_PAUSE).await;
                continue;
            }
        };
        // The term ends on shutdown or when the lease is lost, whichever comes first.
        let term_end = shutdown.child_token();
        let mut lost = role.subscribe();
        let watcher = tokio::spawn({
            let term_end = term_end.clone();
            async move {
                tokio::select! {
                    () = term_end.cancelled() => {}
                    _ = lost.wait_for(|role| !role.is_leader()) => term_end.cancel(),
                }
            }
        });
        let ended = coordinator.run_until(term_end.clone()).await;
        term_end.cancel();
        let _ = watcher.await;
        if shutdown.is_cancelled() {
            break ended;
        }
        match ended {
            Ok(()) => {
                tracing::warn!(%instance, "no longer leader: scheduling stopped, standing by")
            }
            Err(error) => {
                tracing::error!(%error, "coordinator stopped while leading; rebuilding");
                tokio::time::sleep(RESTART_PAUSE).await;
            }
        }
    };
    election_stop.cancel();
    if !election_task.is_finished() {
        let _ = election_task.await;
    }
    outcome
}

/// A running coordinator.
pub struct Coordinator {
    scheduler: ActorRef<SchedulerMsg>,
    scheduler_handle: JoinHandle<()>,
    intake: ActorRef<IntakeMsg>,
    intake_handle: JoinHandle<()>,
    /// The watch forwarders and the ticker; aborted by `stop`.
    tasks: JoinSet<&'static str>,
}

/// A handle to ask a running coordinator for its counts.
#[derive(Clone)]
pub struct StatusHandle(ActorRef<SchedulerMsg>);

impl StatusHandle {
    /// The scheduler's counts.
    pub async fn get(&self) -> Result<SchedulerStatus> {
        ractor::call_t!(self.0, SchedulerMsg::Status, STATUS_TIMEOUT_MS)
            .map_err(|e| Error::Status(e.to_string()))
    }
}

impl Coordinator {
    /// Validates `config`, opens the watches, and starts the actors.
    pub async fn start(
        config: Config,
        resources: Resources,
        client: async_nats::Client,
    ) -> Result<Self> {
        config.validate()?;
        metrics::describe();
        tracing::info!(config = ?config, "coordinator starting");
        let config = Arc::new(config);
        // Open the watches first so that nothing written from here on is missed.
        let job_watch = resources
            .jobs
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| Error::JetStream {
                what: "the mochi_jobs watch",
                source: Box::new(e),
            })?;
        let node_watch =
            resources
                .nodes
                .watch_with_history(">")
                .await
                .map_err(|e| Error::JetStream {
                    what: "the mochi_nodes watch",
                    source: Box::new(e),
                })?;
        let estimates = answer_requests(&client, protocol::names::SUBJECT_ESTIMATE).await?;
        let submissions = answer_requests(&client, protocol::names::SUBJECT_SUBMIT_RPC_ALL).await?;
        let record_writes =
            answer_requests(&client, protocol::names::SUBJECT_NODE_RECORD_ALL).await?;
        let responder = submit_rpc::Responder {
            client: client.clone(),
            context: resources.context.clone(),
            jobs: resources.jobs.clone(),
            limits: config.limits.clone(),
        };
        // Node writes the store did not take, and the keeper's own: lease expiry waits a
        // lease after the last one, so that renewals lost to the same outage can land.
        let store_failures = store::StoreFailures::default();
        let scheduler_args = SchedulerArgs {
            config: Arc::clone(&config),
            resources: resources.clone(),
            client: client.clone(),
            store_failures: store_failures.clone(),
        };
        let (scheduler, scheduler_handle) = Box::pin(Actor::spawn(None, Scheduler, scheduler_args))
            .await
            .map_err(|source| Error::Spawn {
                actor: "scheduler",
                source,
            })?;
        let mut tasks = JoinSet::new();
        tasks.spawn(forward_jobs(job_watch, scheduler.clone()));
        tasks.spawn(forward_nodes(node_watch, scheduler.clone()));
        tasks.spawn(tick(
            scheduler.clone(),
            Duration::from_millis(config.tick_ms),
        ));
        tasks.spawn(submit_rpc::respond(responder, submissions));
        tasks.spawn(protocol::record_writes::serve(
            client.clone(),
            resources.jobs.clone(),
            record_writes,
            move |reply| {
                metrics::record_write(protocol::record_writes::outcome(reply));
                if matches!(reply, RecordWriteReply::Failed { .. }) {
                    store_failures.note(protocol::now_ms());
                }
            },
        ));
        tasks.spawn(scheduler::estimate::respond(
            client,
            estimates,
            scheduler.clone(),
        ));
        let intake_args = IntakeArgs {
            config: Arc::clone(&config),
            resources,
        };
        let (intake, intake_handle) = match Box::pin(Actor::spawn(None, Intake, intake_args)).await
        {
            Ok(spawned) => spawned,
            Err(source) => {
                tasks.shutdown().await;
                let _ = scheduler.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                return Err(Error::Spawn {
                    actor: "intake",
                    source,
                });
            }
        };
        tracing::info!("coordinator up");
        Ok(Self {
            scheduler,
            scheduler_handle,
            intake,
            intake_handle,
            tasks,
        })
    }

    /// A handle for status requests.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.scheduler.clone())
    }

    /// Runs until `shutdown` is cancelled or a watch ends, then stops.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> Result<()> {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            ended = self.tasks.join_next() => {
                let what = match ended {
                    Some(Ok(what)) => what,
                    Some(Err(_)) | None => "a coordinator task",
                };
                tracing::error!(what, "coordinator task ended; stopping so that a restart rebuilds the state");
                Err(Error::WatchEnded(what))
            }
        };
        self.stop().await;
        outcome
    }

    /// Stops scheduling at once, stops taking submissions, lets each proxy finish its
    /// placement, and stops the actors.
    pub async fn stop(mut self) {
        // No new placements from here on (a stop signal overtakes queued messages).
        self.scheduler.stop(Some("shutdown".to_owned()));
        // The intake finishes the batch in hand (its records written, then purged).
        self.intake.stop(Some("shutdown".to_owned()));
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.intake_handle)
            .await
            .is_err()
        {
            tracing::warn!(
                "intake did not stop in time; the next leader reads its submissions again"
            );
            self.intake_handle.abort();
        }
        self.tasks.shutdown().await;
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.scheduler_handle)
            .await
            .is_err()
        {
            tracing::warn!("scheduler did not stop in time; leases bring its placements back");
            self.scheduler_handle.abort();
        }
        tracing::info!("coordinator stopped");
    }
}

/// Subscribes to the requests on `subject` in the coordinators' queue group (the leader alone
/// subscribes, so each request gets one answer).
async fn answer_requests(
    client: &async_nats::Client,
    subject: &'static str,
) -> Result<async_nats::Subscriber> {
    client
        .queue_subscribe(subject, protocol::names::QUEUE_COORDINATORS.to_owned())
        .await
        .map_err(|e| Error::JetStream {
            what: subject,
            source: Box::new(e),
        })
}

async fn tick(scheduler: ActorRef<SchedulerMsg>, period: Duration) -> &'static str {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if scheduler.cast(SchedulerMsg::Tick).is_err() {
            return "the ticker";
        }
    }
}

async fn forward_jobs(mut watch: Watch, scheduler: ActorRef<SchedulerMsg>) -> &'static str {
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "mochi_jobs watch error");
                continue;
            }
        };
        let message = match entry.operation {
            Operation::Put => match codec::decode::<JobRecord>(&entry.value) {
                Ok(record) => SchedulerMsg::JobChanged {
                    record: Box::new(record),
                    revision: entry.revision,
                },
                Err(error) => {
                    tracing::error!(key = %entry.key, %error, "unreadable job record; skipped");
                    continue;
                }
            },
            Operation::Delete | Operation::Purge => match entry.key.parse::<JobId>() {
                Ok(job_id) => SchedulerMsg::JobRemoved(job_id),
                Err(_) => continue,
            },
        };
        if scheduler.cast(message).is_err() {
            break;
        }
    }
    "the mochi_jobs watch"
}

async fn forward_nodes(mut watch: Watch, scheduler: ActorRef<SchedulerMsg>) -> &'static str {
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "mochi_nodes watch error");
                continue;
            }
        };
        let message = match entry.operation {
            Operation::Put => match codec::decode::<NodeHeartbeat>(&entry.value) {
                Ok(heartbeat) => SchedulerMsg::NodeSeen(Box::new(heartbeat)),
                Err(error) => {
                    tracing::warn!(key = %entry.key, %error, "unreadable heartbeat; skipped");
                    continue;
                }
            },
            Operation::Delete | Operation::Purge => match NodeId::new(entry.key.clone()) {
                Ok(node) => SchedulerMsg::NodeLeft(node),
                Err(_) => continue,
            },
        };
        if scheduler.cast(message).is_err() {
            break;
        }
    }
    "the mochi_nodes watch"
}
