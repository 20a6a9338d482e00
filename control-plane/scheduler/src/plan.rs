use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::context::alloc_binds;
use crate::fx::FxMap;
use crate::{NodeUsage, Queued, UsageIndex};

/// The result of scheduling one evaluation.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub eval_id: String,
    /// The job as the scheduler saw it (`None` if it was deleted).
    pub job: Option<Arc<Job>>,
    /// New allocations.
    pub place: Vec<Allocation>,
    /// Existing allocations with a new desired status (stop, or lost). A failed allocation
    /// that is replaced now is stopped here with its `next_allocation` set.
    pub stop: Vec<Allocation>,
    /// Groups with instances that could not be placed, and why.
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    /// Number of instances per group left unplaced.
    pub queued: Queued,
    /// Failed allocations to replace later: (alloc id, unix-nanos when the replacement may
    /// run). The server creates one delayed evaluation per distinct time and records its id on
    /// the allocations (`followup_eval_id`).
    pub followups: Vec<(String, i64)>,
    /// Existing allocations updated in place without stopping (moved to a new job version whose
    /// change needs no restart) — written as-is.
    pub updates: Vec<Allocation>,
    /// A deployment this plan starts (the job's new version rolls out under it).
    pub deployment: Option<Deployment>,
    /// Existing deployments with a new status (cancelled by a newer version or a stopped job).
    pub deployment_updates: Vec<Deployment>,
}

impl Plan {
    /// Whether committing the plan would change nothing.
    pub fn is_noop(&self) -> bool {
        self.place.is_empty()
            && self.stop.is_empty()
            && self.updates.is_empty()
            && self.followups.is_empty()
            && self.deployment.is_none()
            && self.deployment_updates.is_empty()
    }

    /// Check the plan against `state` (possibly newer than the snapshot it was made from):
    /// every node it places on must still be schedulable with room (CPU, memory, ports, upstream
    /// listeners) for everything placed there, and every allocation it stops or updates must
    /// still exist. Returns the reasons it no longer holds. Only the nodes the plan places on are
    /// examined.
    pub fn conflicts(&self, state: &State) -> Vec<String> {
        self.conflicts_with(state, None)
    }

    /// [`Plan::conflicts`], reading node usage from `index` when it matches `state` (the plan
    /// applier keeps one in step with the store) instead of from the nodes' allocations.
    pub fn conflicts_with(&self, state: &State, index: Option<&UsageIndex>) -> Vec<String> {
        let check = self.check(state, index);
        check
            .missing
            .into_iter()
            .map(|id| format!("allocation {id} no longer exists"))
            .chain(check.nodes.into_iter().flat_map(|(_, p)| p))
            .collect()
    }

    /// Keep the part of the plan that still holds against `state`, as Nomad's plan applier
    /// commits a plan partially: placements on a node that no longer has room (or is gone, or
    /// unschedulable) are dropped — all of that node's, as a unit — with the stop of any failed
    /// allocation they were replacing, and stops and updates of allocations that no longer
    /// exist are dropped. Returns what was wrong (empty if the whole plan holds); the
    /// evaluation should be planned again for what was dropped.
    pub fn retain_valid(&mut self, state: &State, index: Option<&UsageIndex>) -> Vec<String> {
        let check = self.check(state, index);
        if check.missing.is_empty() && check.nodes.is_empty() {
            return Vec::new();
        }
        let bad_nodes: HashSet<String> = check.nodes.iter().map(|(n, _)| n.to_string()).collect();
        let missing: HashSet<String> = check.missing.iter().map(|s| s.to_string()).collect();
        let problems: Vec<String> = check
            .missing
            .into_iter()
            .map(|id| format!("allocation {id} no longer exists"))
            .chain(check.nodes.into_iter().flat_map(|(_, p)| p))
            .collect();
        let mut dropped: HashSet<String> = HashSet::new();
        self.place.retain(|a| {
            let keep = !bad_nodes.contains(&a.node_id);
            if !keep {
                dropped.insert(a.id.clone());
            }
            keep
        });
        self.stop
            .retain(|a| !missing.contains(&a.id) && !dropped.contains(&a.next_allocation));
        self.updates.retain(|a| !missing.contains(&a.id));
        problems
    }

    fn check<'p>(&'p self, state: &State, index: Option<&UsageIndex>) -> Check<'p> {
        let index = index.filter(|ix| ix.matches(state));
        let mut out = Check::default();
        for a in self.stop.iter().chain(&self.updates) {
            if state.alloc(&a.id).is_none() {
                out.missing.push(&a.id);
            }
        }
        // Upstream listeners are only looked at when the job asks for some.
        let upstreams = self
            .job
            .as_ref()
            .is_some_and(|j| j.task_groups.iter().any(|g| g.upstreams().next().is_some()));
        // Each node placed on, in the order of first placement: its usage in `state` with this
        // plan's stops released, then the placements added one by one.
        let mut order: Vec<&str> = Vec::new();
        let mut by_node: FxMap<&str, Vec<&Allocation>> = FxMap::default();
        let mut stops_by_node: FxMap<&str, Vec<&Allocation>> = FxMap::default();
        for a in &self.stop {
            stops_by_node.entry(a.node_id.as_str()).or_default().push(a);
        }
        for a in &self.place {
            by_node
                .entry(a.node_id.as_str())
                .or_insert_with(|| {
                    order.push(&a.node_id);
                    Vec::new()
                })
                .push(a);
        }
        for node_id in order {
            let mut problems = Vec::new();
            let node = match index {
                Some(ix) => ix.node(node_id),
                None => state.node(node_id),
            };
            let Some(node) = node else {
                out.nodes
                    .push((node_id, vec![format!("node {node_id} no longer exists")]));
                continue;
            };
            if !node.schedulable() {
                problems.push(format!(
                    "node {} is no longer schedulable ({})",
                    node.name, node.status
                ));
                out.nodes.push((node_id, problems));
                continue;
            }
            let lazy;
            let base = match index.and_then(|ix| ix.usage(node_id)) {
                Some(u) => u,
                None => {
                    lazy = NodeUsage::of_node(state, node_id);
                    &lazy
                }
            };
            let mut cpu = base.cpu as i64;
            let mut memory = base.memory_mb as i64;
            let stops = stops_by_node.get(node_id).map_or(&[][..], Vec::as_slice);
            let placed = by_node.get(node_id).map_or(&[][..], Vec::as_slice);
            let mut released: Vec<u16> = Vec::new();
            for a in stops {
                // Release what the allocation holds now, if it still holds anything.
                if let Some(current) = state.alloc(&a.id)
                    && !current.terminal()
                {
                    let r = current.comparable_resources();
                    cpu -= r.cpu as i64;
                    memory -= r.memory_mb as i64;
                    released.extend(
                        current
                            .allocated_resources
                            .shared
                            .ports
                            .iter()
                            .map(|p| p.value),
                    );
                }
            }
            let mut added: Vec<u16> = Vec::new();
            let mut full = false;
            for a in placed {
                for p in &a.allocated_resources.shared.ports {
                    let held = added.contains(&p.value)
                        || (base.port_in_use(p.value) && !released.contains(&p.value));
                    if held {
                        problems.push(format!("port {} on node {} is taken", p.value, node.name));
                    }
                    added.push(p.value);
                }
                let r = a.comparable_resources();
                cpu += r.cpu as i64;
                memory += r.memory_mb as i64;
                let res = &node.node_resources;
                if !full
                    && (cpu > res.cpu.cpu_shares as i64 || memory > res.memory.memory_mb as i64)
                {
                    full = true;
                    problems.push(format!("node {} no longer has room", node.name));
                }
            }
            if upstreams {
                upstream_conflicts(state, node, placed, stops, &mut problems);
            }
            if !problems.is_empty() {
                out.nodes.push((node_id, problems));
            }
        }
        out
    }
}

/// Upstream listeners the plan's placements on `node` need that live allocations in `state`
/// (less the ones the plan stops) or earlier placements already hold.
fn upstream_conflicts(
    state: &State,
    node: &Node,
    placed: &[&Allocation],
    stops: &[&Allocation],
    problems: &mut Vec<String>,
) {
    let wanted: Vec<Vec<UpstreamBind>> = placed.iter().map(|a| alloc_binds(state, a)).collect();
    if wanted.iter().all(Vec::is_empty) {
        return;
    }
    let mut held: Vec<UpstreamBind> = state
        .allocs_by_node(&node.id)
        .filter(|a| !a.terminal() && !stops.iter().any(|s| s.id == a.id))
        .flat_map(|a| alloc_binds(state, a))
        .collect();
    for binds in wanted {
        for b in &binds {
            if held.iter().any(|h| h.clashes(b)) {
                problems.push(format!("upstream {b} on node {} is taken", node.name));
            }
        }
        held.extend(binds);
    }
}

/// What [`Plan::check`] found: allocations that are gone, and nodes with problems.
#[derive(Default)]
struct Check<'p> {
    missing: Vec<&'p str>,
    nodes: Vec<(&'p str, Vec<String>)>,
}
