//! Cost learning: the cost model the scheduler prices jobs with, its learned corrections
//! loaded from the `mochi_cost` bucket at start, taught from every job that succeeded in one
//! piece, and saved back in the background when they changed.

use std::time::Duration;

use async_nats::jetstream::kv;
use protocol::jetstream::Resources;
use protocol::{JobRecord, JobState};
use tokio::task::JoinHandle;

use super::clock::ModelClock;
use super::view::Finished;
use crate::cost::{self, CostModel};
use crate::metrics;

/// How long stopping waits for a save under way.
const SAVE_WAIT: Duration = Duration::from_secs(10);

/// The cost model and its persistence.
pub(super) struct Learning {
    /// The model jobs are priced with.
    pub(super) model: CostModel,
    /// The `mochi_cost` bucket, when it could be opened.
    store: Option<kv::Store>,
    /// Corrections changed since they were last saved.
    dirty: bool,
    save: Option<JoinHandle<()>>,
}

impl Learning {
    /// Opens the `mochi_cost` bucket (replicated like `mochi_jobs`) and loads the
    /// corrections; without it the model runs on its priors and learns in memory only.
    pub(super) async fn open(resources: &Resources) -> Self {
        let replicas = match resources.jobs.kv.status().await {
            Ok(status) => status.info.config.num_replicas,
            Err(_) => 1,
        };
        let (store, model) = match cost::store::open(&resources.context, replicas).await {
            Err(error) => {
                tracing::warn!(%error, "cost corrections will not be persisted");
                (None, CostModel::default())
            }
            Ok(store) => match cost::store::load(&store).await {
                Ok(corrections) => (Some(store), CostModel::new(corrections)),
                Err(error) => {
                    tracing::warn!(%error, "cost corrections not loaded; starting from the priors");
                    (Some(store), CostModel::default())
                }
            },
        };
        Self {
            model,
            store,
            dirty: false,
            save: None,
        }
    }

    /// Teaches the model a succeeded job's run time (start of its attempt to success), when
    /// it ran in one piece.
    pub(super) fn learn(&mut self, record: &JobRecord, finished: Finished, clock: &ModelClock) {
        let (Some(started), Some(ended)) = (record.started_at_ms, record.finished_at_ms) else {
            return;
        };
        if record.state != JobState::Succeeded || !finished.whole || ended <= started {
            return;
        }
        let observed_s = clock.seconds((ended - started) as f64 / 1_000.0);
        let error = self
            .model
            .observe(&finished.shape, finished.class, observed_s);
        ::metrics::histogram!(metrics::COST_ERROR, "class" => finished.class.name()).record(error);
        self.dirty = true;
    }

    /// Saves the corrections in the background when they changed and no save is under way.
    pub(super) fn save(&mut self) {
        if !self.dirty || self.save.as_ref().is_some_and(|save| !save.is_finished()) {
            return;
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        let corrections = self.model.corrections.clone();
        self.dirty = false;
        self.save = Some(tokio::spawn(async move {
            if let Err(error) = cost::store::save(&store, &corrections).await {
                tracing::warn!(%error, "cost corrections not saved; retried with the next change");
            }
        }));
    }

    /// Waits for a save under way and saves what changed since.
    pub(super) async fn shutdown(&mut self) {
        if let Some(save) = self.save.take() {
            let _ = tokio::time::timeout(SAVE_WAIT, save).await;
        }
        if self.dirty
            && let Some(store) = &self.store
            && let Err(error) = cost::store::save(store, &self.model.corrections).await
        {
            tracing::warn!(%error, "cost corrections not saved at shutdown");
        }
    }
}
