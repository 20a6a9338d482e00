//! Node liveness: TTLs, and marking nodes down when they lapse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_store::{Op, Store};
use flotilla_types::*;
use tokio::sync::watch;
use tracing::{info, warn};

/// Deadlines by node id. Kept in memory: after a server restart every known node gets the TTL
/// plus the failover grace before it can be marked down.
pub struct Heartbeats {
    store: Arc<dyn Store>,
    ttl: Duration,
    deadlines: Mutex<HashMap<String, Instant>>,
}

impl Heartbeats {
    pub fn new(store: Arc<dyn Store>, ttl: Duration, grace: Duration) -> Self {
        let start = Instant::now() + ttl + grace;
        let deadlines = store
            .snapshot()
            .nodes
            .values()
            .filter(|n| n.status != NODE_STATUS_DOWN)
            .map(|n| (n.id.clone(), start))
            .collect();
        Self {
            store,
            ttl,
            deadlines: Mutex::new(deadlines),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Record a heartbeat (or a registration) from `node_id`.
    pub fn reset(&self, node_id: &str) {
        self.deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), Instant::now() + self.ttl);
    }

    /// Mark nodes whose deadline passed as down, until `shutdown`.
    pub async fn monitor(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let expired: Vec<String> = {
                let mut d = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
                let gone: Vec<String> = d
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &gone {
                    d.remove(id);
                }
                gone
            };
            for id in expired {
                if let Err(e) = mark_down(&*self.store, &id, "node heartbeat missed") {
                    warn!(node = %id, error = %e, "could not mark node down");
                }
            }
        }
    }
}

/// Mark a node down and create an evaluation for every job with live allocations on it.
pub fn mark_down(
    store: &dyn Store,
    node_id: &str,
    why: &str,
) -> Result<(), flotilla_store::StoreError> {
    let state = store.snapshot();
    let Some(node) = state.node(node_id) else {
        return Ok(());
    };
    if node.status == NODE_STATUS_DOWN {
        return Ok(());
    }
    let now = crate::now_nanos();
    let mut n = (**node).clone();
    n.status = NODE_STATUS_DOWN.to_string();
    n.status_description = why.to_string();
    n.status_updated_at = now;
    let mut ops = vec![Op::PutNode(n)];
    for a in state.allocs_by_node(node_id).filter(|a| !a.terminal()) {
        // Its instances no longer receive traffic.
        for svc in state.services_by_alloc(&a.id) {
            ops.push(Op::DeleteService(svc.id.clone()));
        }
    }
    ops.extend(
        state
            .node_change_evals(node_id, TRIGGER_NODE_UPDATE, now, crate::new_id)
            .into_iter()
            .map(Op::PutEval),
    );
    info!(node = %node.name, id = %node_id, reason = why, "node down");
    store.apply(ops).map(|_| ())
}
