//! Writing the node's heartbeat to `mochi_nodes` off the node actor: the actor hands over
//! each heartbeat it builds and goes on; a writer task puts the latest one (a newer heartbeat
//! replaces one not yet written, so a slow NATS never builds a backlog).

use std::time::Duration;

use async_nats::jetstream::kv;
use protocol::codec;
use protocol::messages::NodeHeartbeat;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics;

/// How long stopping waits for the heartbeat being written.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The writer task and the channel that feeds it.
pub struct HeartbeatWriter {
    latest: watch::Sender<Option<NodeHeartbeat>>,
    task: JoinHandle<()>,
}

impl HeartbeatWriter {
    /// Starts writing the heartbeats handed to [`HeartbeatWriter::send`] under the node's key.
    pub fn start(store: kv::Store) -> Self {
        let (latest, mut heartbeats) = watch::channel(None::<NodeHeartbeat>);
        let task = tokio::spawn(async move {
            // Ends once the sender is gone and the last heartbeat was written.
            while heartbeats.changed().await.is_ok() {
                let heartbeat = heartbeats.borrow_and_update().clone();
                if let Some(heartbeat) = heartbeat {
                    write(&store, &heartbeat).await;
                }
            }
        });
        Self { latest, task }
    }

    /// Hands over a heartbeat to write (replacing one not yet written).
    pub fn send(&self, heartbeat: NodeHeartbeat) {
        self.latest.send_replace(Some(heartbeat));
    }

    /// Writes what was handed over last, then stops (so that nothing is written after the
    /// node removes its heartbeat).
    pub async fn stop(self) {
        let Self { latest, mut task } = self;
        drop(latest);
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Puts one heartbeat (counted and logged when it fails: the next one tries again).
pub async fn write(store: &kv::Store, heartbeat: &NodeHeartbeat) {
    let written = match codec::encode(heartbeat) {
        Ok(bytes) => store
            .put(heartbeat.node_id.as_str(), bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = written {
        ::metrics::counter!(metrics::HEARTBEAT_FAILURES).increment(1);
        tracing::warn!(%error, "heartbeat not written");
    }
}
