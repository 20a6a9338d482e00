use std::collections::HashMap;
use std::sync::Arc;

use flotilla_types::*;

use crate::NodeUsage;

/// Pick the best node among feasible ones: Nomad's bin-packing fit score, averaged with a penalty
/// for each instance of the same group already on the node (job anti-affinity), so a group
/// spreads across equal nodes while filling busy nodes first otherwise.
pub fn rank<'a>(
    job: &Job,
    group: &TaskGroup,
    candidates: &[&'a Arc<Node>],
    usage: &HashMap<String, NodeUsage>,
) -> Option<&'a Arc<Node>> {
    let want = group.total_resources();
    let empty = NodeUsage::default();
    let mut best: Option<(&Arc<Node>, f64)> = None;
    for node in candidates {
        let used = usage.get(&node.id).unwrap_or(&empty);
        let fit = binpack_score(node, used, want);
        let collisions = used.collisions(job, group);
        let score = if collisions > 0 {
            let penalty = -f64::from(collisions + 1) / f64::from(group.count.max(1));
            (fit + penalty) / 2.0
        } else {
            fit
        };
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((node, score));
        }
    }
    best.map(|(n, _)| n)
}

/// Nomad's `ScoreFitBinPack`, normalised to 0..=1: 1 when the node would be full, 0 when empty.
fn binpack_score(node: &Node, used: &NodeUsage, want: Resources) -> f64 {
    let res = &node.node_resources;
    let free = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - (used as f64 / total as f64)
        }
    };
    let free_cpu = free(used.cpu + want.cpu, res.cpu.cpu_shares);
    let free_mem = free(used.memory_mb + want.memory_mb, res.memory.memory_mb);
    let total = 10f64.powf(free_cpu) + 10f64.powf(free_mem);
    ((20.0 - total) / 18.0).clamp(0.0, 1.0)
}
