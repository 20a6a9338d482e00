use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::{NodeUsage, Queued, node_usage};

/// The result of scheduling one evaluation.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub eval_id: String,
    /// The job as the scheduler saw it (`None` if it was deleted).
    pub job: Option<Arc<Job>>,
    /// New allocations.
    pub place: Vec<Allocation>,
    /// Existing allocations with a new desired status (stop, or lost).
    pub stop: Vec<Allocation>,
    /// Groups with instances that could not be placed, and why.
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    /// Number of instances per group left unplaced.
    pub queued: Queued,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.place.is_empty() && self.stop.is_empty()
    }

    /// Check the plan against `state` (possibly newer than the snapshot it was made from):
    /// every node it places on must still be schedulable with room for everything placed there,
    /// and every allocation it stops must still exist. Returns the reasons it no longer holds.
    pub fn conflicts(&self, state: &State) -> Vec<String> {
        let mut problems = Vec::new();
        for a in &self.stop {
            if state.alloc(&a.id).is_none() {
                problems.push(format!("allocation {} no longer exists", a.id));
            }
        }
        // Usage from the current state with this plan's stops released, then add placements.
        let base = Plan {
            stop: self.stop.clone(),
            ..Default::default()
        };
        let mut usage: HashMap<String, NodeUsage> = node_usage(state, &base);
        for a in &self.place {
            let Some(node) = state.node(&a.node_id) else {
                problems.push(format!("node {} no longer exists", a.node_id));
                continue;
            };
            if !node.schedulable() {
                problems.push(format!(
                    "node {} is no longer schedulable ({})",
                    node.name, node.status
                ));
                continue;
            }
            let u = usage.entry(node.id.clone()).or_default();
            for p in &a.allocated_resources.shared.ports {
                if u.ports.contains(&p.value) {
                    problems.push(format!("port {} on node {} is taken", p.value, node.name));
                }
            }
            u.add(a);
            let res = &node.node_resources;
            if u.cpu > res.cpu.cpu_shares || u.memory_mb > res.memory.memory_mb {
                problems.push(format!("node {} no longer has room", node.name));
            }
        }
        problems
    }
}
