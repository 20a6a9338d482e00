use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::Plan;

/// What is already used on a node: by live allocations, minus those the plan stops, plus those it
/// places.
#[derive(Debug, Clone, Default)]
pub struct NodeUsage {
    pub cpu: u64,
    pub memory_mb: u64,
    pub ports: BTreeSet<u16>,
    /// Live instances per (job, group) key: `<namespace>/<job>/<group>`.
    pub instances: HashMap<String, u32>,
}

fn group_key(namespace: &str, job: &str, group: &str) -> String {
    format!("{namespace}/{job}/{group}")
}

impl NodeUsage {
    pub(crate) fn add(&mut self, a: &Allocation) {
        let r = a.comparable_resources();
        self.cpu += r.cpu;
        self.memory_mb += r.memory_mb;
        self.ports
            .extend(a.allocated_resources.shared.ports.iter().map(|p| p.value));
        *self
            .instances
            .entry(group_key(&a.namespace, &a.job_id, &a.task_group))
            .or_default() += 1;
    }

    pub(crate) fn remove(&mut self, a: &Allocation) {
        let r = a.comparable_resources();
        self.cpu = self.cpu.saturating_sub(r.cpu);
        self.memory_mb = self.memory_mb.saturating_sub(r.memory_mb);
        for p in &a.allocated_resources.shared.ports {
            self.ports.remove(&p.value);
        }
        if let Some(n) = self
            .instances
            .get_mut(&group_key(&a.namespace, &a.job_id, &a.task_group))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Instances of this job's group already on the node.
    pub fn collisions(&self, job: &Job, group: &TaskGroup) -> u32 {
        self.instances
            .get(&group_key(&job.namespace, &job.id, &group.name))
            .copied()
            .unwrap_or(0)
    }

    /// Pick host ports for the group's network: static ones as asked, dynamic ones from the
    /// node's range starting at a point derived from `seed` (so consecutive instances do not
    /// fight over one freshly released port). `None` when the range is full.
    pub fn assign_ports(
        &mut self,
        group: &TaskGroup,
        node: &Node,
        seed: u64,
    ) -> Option<Vec<AllocatedPort>> {
        let (lo, hi) = port_range(node);
        let span = u64::from(hi - lo) + 1;
        let mut taken = self.ports.clone();
        let mut out = Vec::new();
        let mut cursor = seed % span;
        for (port, is_static) in group.ports() {
            let value = if is_static {
                port.value
            } else {
                let mut found = None;
                for _ in 0..span {
                    let candidate = lo + (cursor % span) as u16;
                    cursor += 1;
                    if !taken.contains(&candidate) {
                        found = Some(candidate);
                        break;
                    }
                }
                found?
            };
            taken.insert(value);
            out.push(AllocatedPort {
                label: port.label.clone(),
                value,
                to: if port.to == 0 { value } else { port.to },
                host_ip: node.address.clone(),
            });
        }
        Some(out)
    }
}

fn port_range(node: &Node) -> (u16, u16) {
    let r = &node.node_resources;
    if r.min_dynamic_port > 0 && r.max_dynamic_port >= r.min_dynamic_port {
        (r.min_dynamic_port, r.max_dynamic_port)
    } else {
        (MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT)
    }
}

/// Usage of every node that has live allocations, with the plan's stops already released.
pub fn node_usage(state: &State, plan: &Plan) -> HashMap<String, NodeUsage> {
    let mut usage: HashMap<String, NodeUsage> = HashMap::new();
    for node_id in state.nodes.keys() {
        let u = usage.entry(node_id.clone()).or_default();
        for a in state.allocs_by_node(node_id) {
            if !a.terminal() {
                u.add(a);
            }
        }
    }
    for a in &plan.stop {
        if let Some(u) = usage.get_mut(&a.node_id) {
            u.remove(a);
        }
    }
    usage
}

/// The nodes `group` can be placed on, recording in `metric` why others cannot.
pub fn feasible<'a>(
    job: &Job,
    group: &TaskGroup,
    nodes: &[&'a Arc<Node>],
    usage: &HashMap<String, NodeUsage>,
    metric: &mut AllocMetric,
) -> Vec<&'a Arc<Node>> {
    let want = group.total_resources();
    let static_ports: Vec<u16> = group
        .ports()
        .filter(|(_, s)| *s)
        .map(|(p, _)| p.value)
        .collect();
    let mut out = Vec::new();
    for node in nodes {
        if !node.schedulable() {
            continue;
        }
        metric.nodes_evaluated += 1;
        *metric
            .nodes_available
            .entry(node.datacenter.clone())
            .or_default() += 1;
        if !job.allows_datacenter(&node.datacenter) {
            filter(
                metric,
                format!(
                    "datacenter \"{}\" not in the job's datacenters",
                    node.datacenter
                ),
            );
            continue;
        }
        if let Some(t) = group.tasks.iter().find(|t| !node.has_driver(&t.driver)) {
            filter(metric, format!("missing driver \"{}\"", t.driver));
            continue;
        }
        let empty = NodeUsage::default();
        let used = usage.get(&node.id).unwrap_or(&empty);
        let res = &node.node_resources;
        if used.cpu + want.cpu > res.cpu.cpu_shares {
            exhaust(metric, "cpu".to_string());
            continue;
        }
        if used.memory_mb + want.memory_mb > res.memory.memory_mb {
            exhaust(metric, "memory".to_string());
            continue;
        }
        if let Some(p) = static_ports.iter().find(|p| used.ports.contains(p)) {
            exhaust(metric, format!("network: reserved port {p} in use"));
            continue;
        }
        out.push(*node);
    }
    out
}

fn filter(metric: &mut AllocMetric, why: String) {
    metric.nodes_filtered += 1;
    *metric.constraint_filtered.entry(why).or_default() += 1;
}

fn exhaust(metric: &mut AllocMetric, dim: String) {
    metric.nodes_exhausted += 1;
    *metric.dimension_exhausted.entry(dim).or_default() += 1;
}
