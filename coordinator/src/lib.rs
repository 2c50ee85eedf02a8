//! The coordinator of mochi-serve: takes jobs in from `MOCHI_SUBMIT` ([`intake`]), keeps the
//! queue and the live slots rebuilt from the `mochi_jobs` and `mochi_nodes` watches (so a
//! restarted coordinator loses nothing), places jobs FIFO on free slots ([`scheduler`])
//! through one proxy actor per remote slot ([`slots`]), and sends jobs whose node went
//! quiet back to the queue with a backoff ([`leases`]).
//!
//! Durability lives in JetStream: every decision is a compare-and-set on the job's record,
//! so two coordinators (or a restarted one) never both win.

pub mod config;
pub mod cost;
pub mod error;
pub mod intake;
pub mod leases;
pub mod metrics;
pub mod policy;
pub mod scheduler;
pub mod slots;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Watch};
use futures::StreamExt;
use protocol::jetstream::Resources;
use protocol::messages::NodeHeartbeat;
use protocol::{JobId, JobRecord, NodeId, codec};
use ractor::{Actor, ActorRef};
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

/// Runs the coordinator until `shutdown` is cancelled (then stops taking submissions, lets
/// placements in flight finish, and stops its actors) or a watch fails.
pub async fn run(
    config: Config,
    resources: Resources,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    Box::pin(Coordinator::start(config, resources, client))
        .await?
        .run_until(shutdown)
        .await
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
    /// Validates `config`, opens the watches and the intake consumer, and starts the actors.
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
        let scheduler_args = SchedulerArgs {
            config: Arc::clone(&config),
            resources: resources.clone(),
            client,
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

    /// Stops taking submissions, lets each proxy finish its placement, and stops the actors.
    pub async fn stop(mut self) {
        // The intake finishes the batch in hand (each message is acked after its record).
        self.intake.stop(Some("shutdown".to_owned()));
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.intake_handle)
            .await
            .is_err()
        {
            tracing::warn!("intake did not stop in time; unacked submissions are redelivered");
            self.intake_handle.abort();
        }
        self.tasks.shutdown().await;
        self.scheduler.stop(Some("shutdown".to_owned()));
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
