//! Scores for ranking feasible nodes, each in -1..=1 and averaged (Nomad's
//! `ScoreNormalizationIterator`): resource fit, job anti-affinity, the reschedule penalty, node
//! affinity and allocation spread.

use flotilla_types::Node;

use crate::Algorithm;
use crate::fx::FxMap;

/// Nomad's `ScoreFitBinPack` / `ScoreFitSpread`, normalised to 0..=1 by the maximum fitness of
/// 18. Bin-packing scores a node that would be full at 1 and an empty one near 0; the spread
/// algorithm the other way round. `cpu` and `memory_mb` include the allocation being placed.
pub(crate) fn fit(node: &Node, cpu: u64, memory_mb: u64, algorithm: Algorithm) -> f64 {
    let res = &node.node_resources;
    let free = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            1.0 - (used as f64 / total as f64)
        }
    };
    let total = 10f64.powf(free(cpu, res.cpu.cpu_shares))
        + 10f64.powf(free(memory_mb, res.memory.memory_mb));
    let fitness = match algorithm {
        Algorithm::Binpack => 20.0 - total,
        Algorithm::Spread => total - 2.0,
    };
    (fitness / 18.0).clamp(0.0, 1.0)
}

/// Job anti-affinity: `-(collisions + 1) / count` when instances of the group already run on
/// the node (Nomad's `JobAntiAffinityIterator`), `None` otherwise.
pub(crate) fn anti_affinity(collisions: u32, count: u32) -> Option<f64> {
    (collisions > 0).then(|| -f64::from(collisions + 1) / f64::from(count.max(1)))
}

/// One `spread` block of a group, with its desired counts per attribute value.
#[derive(Debug, Clone)]
pub(crate) struct SpreadSpec {
    /// The property set counting the group's allocations by this attribute.
    pub prop: usize,
    /// Weight relative to the sum of the group's spread weights.
    pub weight: f64,
    /// Desired count per value; empty for an even spread.
    pub desired: Vec<(String, f64)>,
    /// Desired count for values not listed (`*`), when the targets leave some over.
    pub implicit: Option<f64>,
}

impl SpreadSpec {
    /// This block's contribution for a node whose attribute is `value`, with `counts` the
    /// group's current allocations per value (Nomad's `SpreadIterator`).
    pub(crate) fn boost(&self, value: Option<&str>, counts: &FxMap<String, u32>) -> f64 {
        let Some(value) = value else {
            // Maximum penalty when the node lacks the attribute.
            return -1.0;
        };
        if self.desired.is_empty() && self.implicit.is_none() {
            return even_spread_boost(value, counts);
        }
        let used = f64::from(counts.get(value).copied().unwrap_or(0) + 1);
        let desired = self
            .desired
            .iter()
            .find(|(v, _)| v == value)
            .map(|(_, d)| *d)
            .or(self.implicit);
        match desired {
            Some(d) if d > 0.0 => ((d - used) / d) * self.weight,
            _ => -1.0,
        }
    }
}

/// Nomad's `evenSpreadScoreBoost`: favour the values with the fewest allocations.
fn even_spread_boost(value: &str, counts: &FxMap<String, u32>) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    let current = counts.get(value).copied().unwrap_or(0);
    let mut min = 0u32;
    let mut max = 0u32;
    for &c in counts.values() {
        if min == 0 || c < min {
            min = c;
        }
        if max == 0 || c > max {
            max = c;
        }
    }
    if current != min {
        return if min == 0 {
            -1.0
        } else {
            (f64::from(min) - f64::from(current)) / f64::from(min)
        };
    }
    if min == max {
        -1.0
    } else if min == 0 {
        1.0
    } else {
        f64::from(max - min) / f64::from(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_spread_prefers_the_emptiest_value() {
        let counts: FxMap<String, u32> = [("dc1".to_string(), 3), ("dc2".to_string(), 1)]
            .into_iter()
            .collect();
        let spec = SpreadSpec {
            prop: 0,
            weight: 1.0,
            desired: vec![],
            implicit: None,
        };
        // The value with fewer allocations gets the boost.
        assert!(spec.boost(Some("dc2"), &counts) > spec.boost(Some("dc1"), &counts));
        assert_eq!(spec.boost(None, &counts), -1.0);
        assert_eq!(spec.boost(Some("dc1"), &FxMap::default()), 0.0);
    }

    #[test]
    fn targets_score_by_distance_to_desired() {
        let spec = SpreadSpec {
            prop: 0,
            weight: 1.0,
            desired: vec![("dc1".into(), 7.0), ("dc2".into(), 3.0)],
            implicit: None,
        };
        let counts = FxMap::default();
        assert!((spec.boost(Some("dc1"), &counts) - 6.0 / 7.0).abs() < 1e-9);
        assert_eq!(spec.boost(Some("dc9"), &counts), -1.0);
    }

    #[test]
    fn fit_prefers_fuller_nodes_when_binpacking() {
        let mut n = Node::default();
        n.node_resources.cpu.cpu_shares = 1000;
        n.node_resources.memory.memory_mb = 1000;
        let busy = fit(&n, 800, 800, Algorithm::Binpack);
        let idle = fit(&n, 100, 100, Algorithm::Binpack);
        assert!(busy > idle);
        assert!(fit(&n, 100, 100, Algorithm::Spread) > fit(&n, 800, 800, Algorithm::Spread));
    }
}
