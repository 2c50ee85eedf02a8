//! The slot proxies: one child actor per slot of a live node, started when a heartbeat first
//! reports the slot and stopped when the slot or its node goes. Every placement and pause
//! request to a node goes through its slot's proxy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::NodeId;
use protocol::messages::NodeHeartbeat;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::admission::Admission;
use super::messages::{SchedulerArgs, SchedulerMsg, SlotKey};
use super::view::View;
use crate::slots::{SlotProxy, SlotProxyArgs, SlotProxyMsg};

/// How long stopping waits for each proxy (it finishes the placement it is in).
const PROXY_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxies of the live slots.
#[derive(Default)]
pub(super) struct Proxies {
    by_slot: HashMap<SlotKey, ActorRef<SlotProxyMsg>>,
}

impl Proxies {
    /// Whether a slot has a proxy (only such slots get placements).
    pub(super) fn has(&self, key: &SlotKey) -> bool {
        self.by_slot.contains_key(key)
    }

    /// Asks a slot's proxy to do something; returns whether the proxy took the message.
    pub(super) fn send(&self, key: &SlotKey, message: SlotProxyMsg) -> bool {
        self.by_slot
            .get(key)
            .is_some_and(|proxy| proxy.cast(message).is_ok())
    }

    /// Stops every proxy, each after the placement it is in (or its hand-back).
    pub(super) async fn stop_all(&mut self) {
        for proxy in self.by_slot.values() {
            let _ = proxy
                .stop_and_wait(Some("shutdown".to_owned()), Some(PROXY_STOP_TIMEOUT))
                .await;
        }
        self.by_slot.clear();
    }

    /// Forgets the proxy whose actor failed; returns its slot.
    pub(super) fn failed(&mut self, cell: ractor::ActorId) -> Vec<SlotKey> {
        let failed: Vec<SlotKey> = self
            .by_slot
            .iter()
            .filter(|(_, proxy)| proxy.get_id() == cell)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &failed {
            self.by_slot.remove(key);
        }
        failed
    }

    /// Stops the proxies of a node's slots that `keep` rejects.
    fn stop_where(&mut self, node: &NodeId, why: &str, keep: impl Fn(u32) -> bool) {
        self.by_slot.retain(|(proxy_node, index), proxy| {
            let kept = proxy_node != node || keep(*index);
            if !kept {
                proxy.stop(Some(why.to_owned()));
            }
            kept
        });
    }
}

/// Takes in a heartbeat: the view and admission learn the node's slots, and each slot it
/// reports gets a proxy (those it no longer reports lose theirs). A stale heartbeat (from
/// the watch's history at start-up) means the node is gone.
pub(super) async fn node_seen(
    myself: &ActorRef<SchedulerMsg>,
    args: &SchedulerArgs,
    view: &mut View,
    admission: &mut Admission,
    proxies: &mut Proxies,
    heartbeat: NodeHeartbeat,
) -> Result<(), ActorProcessingErr> {
    let node = heartbeat.node_id.clone();
    if !view.node_seen(heartbeat, protocol::now_ms()) {
        forget_node(view, proxies, &node, "node heartbeat expired");
        return Ok(());
    }
    for (index, class, memory) in view.slot_sizes(&node) {
        admission.slot_seen((node.clone(), index), class, memory);
    }
    let reported = view.slots_of(&node);
    proxies.stop_where(&node, "slot no longer reported", |index| {
        reported.contains(&index)
    });
    for slot in reported {
        let key = (node.clone(), slot);
        if proxies.has(&key) {
            continue;
        }
        let proxy_args = SlotProxyArgs {
            node: node.clone(),
            slot,
            config: Arc::clone(&args.config),
            resources: args.resources.clone(),
            client: args.client.clone(),
            scheduler: myself.clone(),
        };
        let (proxy, _) = Box::pin(Actor::spawn_linked(
            None,
            SlotProxy,
            proxy_args,
            myself.get_cell(),
        ))
        .await?;
        tracing::info!(node = %node, slot, "slot joined");
        proxies.by_slot.insert(key, proxy);
    }
    Ok(())
}

/// Forgets a node and stops its proxies.
pub(super) fn forget_node(view: &mut View, proxies: &mut Proxies, node: &NodeId, why: &str) {
    if view.forget_node(node) {
        tracing::warn!(node = %node, reason = why, "node gone");
    }
    proxies.stop_where(node, why, |_| false);
}
