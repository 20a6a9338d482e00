//! Node drains: finish them once nothing movable runs on the node any more.
//!
//! Starting a drain (the API) marks the node draining and ineligible and flags its allocations
//! for migration; the scheduler then stops each one and places a replacement elsewhere. This
//! loop notices when the node is empty (system jobs' allocations excepted when the drain says
//! so) and ends the drain; the node stays ineligible until an operator says otherwise, as in
//! Nomad. Past the drain's force deadline, allocations still there are stopped outright.

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{Op, Store};
use flotilla_types::*;
use tokio::sync::watch;
use tracing::{info, warn};

pub async fn run(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    let mut index_rx = store.subscribe();
    loop {
        if let Err(e) = step(&*store) {
            warn!(error = %e, "drain step failed");
        }
        tokio::select! {
            r = index_rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
            // Force deadlines pass without any write happening.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn is_system(a: &Allocation) -> bool {
    a.job
        .as_ref()
        .is_some_and(|j| j.job_type == JOB_TYPE_SYSTEM || j.job_type == JOB_TYPE_SYSBATCH)
}

fn step(store: &dyn Store) -> Result<(), flotilla_store::StoreError> {
    let state = store.snapshot();
    let now = crate::now_nanos();
    let mut ops = Vec::new();
    for node in state.nodes.values().filter(|n| n.drain) {
        let strategy = node.drain_strategy.clone().unwrap_or_default();
        let remaining: Vec<&Arc<Allocation>> = state
            .allocs_by_node(&node.id)
            .filter(|a| !a.terminal())
            .filter(|a| !(strategy.ignore_system_jobs && is_system(a)))
            .collect();
        if remaining.is_empty() {
            let mut n = (**node).clone();
            n.drain = false;
            n.drain_strategy = None;
            n.status_description = "node drain complete".to_string();
            info!(node = %n.name, "drain complete");
            ops.push(Op::PutNode(n));
            continue;
        }
        if strategy.force_deadline > 0 && now >= strategy.force_deadline {
            for a in remaining.iter().filter(|a| !a.desired_terminal()) {
                let mut a = (***a).clone();
                a.desired_status = ALLOC_DESIRED_STOP.to_string();
                a.desired_description = "alloc stopped: node drain deadline reached".to_string();
                a.modify_time = now;
                for svc in state.services_by_alloc(&a.id) {
                    ops.push(Op::DeleteService(svc.id.clone()));
                }
                ops.push(Op::PutAlloc(a));
            }
        }
    }
    if !ops.is_empty() {
        store.apply(ops)?;
    }
    Ok(())
}
