//! The keeper: a child actor of the scheduler that makes the writes the scheduler decides
//! on but must not wait for, each a compare-and-set on the job's record (or a publish) that
//! holds only while the record still shows what the decision was made on:
//!
//! - [`leases`]: a job whose node went quiet goes back to the queue with a backoff;
//! - [`deadlines`]: a job past its time-to-start is aborted, one past the longest run time
//!   fails;
//! - [`requeue`]: a paused (preempted) job goes back to the queue at its saved step;
//! - [`refusals`]: a job no known slot holds is refused with `job_too_large`;
//! - [`dead_letters`]: a dead job is copied to `MOCHI_DLQ`.
//!
//! The scheduler finds the work from its view (no second watch of `mochi_jobs`); the keeper
//! answers each expiry, deadline and refusal with [`SchedulerMsg::KeeperDone`], so the
//! scheduler asks about a job once at a time.

pub mod dead_letters;
pub mod deadlines;
pub mod leases;
pub mod refusals;
pub mod requeue;

use std::sync::Arc;

use protocol::jetstream::Resources;
use protocol::record::JobFailure;
use protocol::{JobEvent, JobId, JobRecord, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::Config;
use crate::scheduler::messages::SchedulerMsg;
use crate::scheduler::view::{OnNode, Timed};

/// The keeper actor (a child of the scheduler).
pub struct Keeper;

/// Messages of the keeper.
pub enum KeeperMsg {
    /// Expire these leases (each is checked again against the stored record).
    Expire(Vec<OnNode>),
    /// End these jobs for the deadline each missed (each only while unchanged).
    EndOverdue(Vec<(Timed, JobEvent)>),
    /// Copy a dead job's record to `MOCHI_DLQ` (deduplicated by job id and attempt).
    DeadLetter(Box<JobRecord>),
    /// Send a preempted job back to the queue (it resumes from its saved step).
    Requeue(JobId),
    /// Refuse a queued job no known slot holds.
    Refuse {
        /// The job.
        job_id: JobId,
        /// Why, and what would fit.
        failure: JobFailure,
    },
}

/// What the keeper needs.
pub struct KeeperArgs {
    /// The coordinator's configuration (backoff, lease length, deadlines).
    pub config: Arc<Config>,
    /// JetStream handles.
    pub resources: Resources,
    /// Told when each expiry, deadline and refusal is settled.
    pub scheduler: ActorRef<SchedulerMsg>,
    /// Failed record writes, which hold lease expiry off for a lease.
    pub store_failures: crate::store::StoreFailures,
}

/// The keeper's state.
pub struct KeeperState {
    args: KeeperArgs,
    grace: leases::Grace,
}

impl Actor for Keeper {
    type Msg = KeeperMsg;
    type State = KeeperState;
    type Arguments = KeeperArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: KeeperArgs,
    ) -> Result<KeeperState, ActorProcessingErr> {
        let grace = leases::Grace::new(now_ms(), args.config.lease_ms, args.store_failures.clone());
        Ok(KeeperState { args, grace })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: KeeperMsg,
        keeper: &mut KeeperState,
    ) -> Result<(), ActorProcessingErr> {
        let args = &keeper.args;
        let done = |job_id: JobId, written: bool| {
            // The scheduler may ask again at its next tick if the job still needs it.
            let _ = args
                .scheduler
                .cast(SchedulerMsg::KeeperDone { job_id, written });
        };
        match message {
            KeeperMsg::Expire(jobs) => {
                let client = args.resources.context.client();
                let in_grace = keeper.grace.active(&client, now_ms(), args.config.lease_ms);
                for job in jobs {
                    let written = !in_grace
                        && leases::expire(&args.resources.jobs, &args.config, &job, &keeper.grace)
                            .await;
                    if in_grace {
                        tracing::debug!(job_id = %job.job_id, "lease due during the expiry grace; not expired yet");
                    }
                    done(job.job_id, written);
                }
            }
            KeeperMsg::EndOverdue(jobs) => {
                for (job, event) in jobs {
                    done(
                        job.job_id,
                        deadlines::end(&args.resources.jobs, &job, &event).await,
                    );
                }
            }
            KeeperMsg::DeadLetter(record) => {
                dead_letters::copy(&args.resources.context, &record).await
            }
            KeeperMsg::Requeue(job_id) => requeue::requeue(&args.resources.jobs, job_id).await,
            KeeperMsg::Refuse { job_id, failure } => {
                done(
                    job_id,
                    refusals::refuse(&args.resources.jobs, job_id, failure).await,
                );
            }
        }
        Ok(())
    }
}
