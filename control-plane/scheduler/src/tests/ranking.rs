//! Ranking: affinities, spread (targets and even), the spread algorithm, and the limit on nodes
//! scored per placement.

use std::collections::BTreeMap;

use flotilla_types::*;

use super::*;
use crate::context::Ctx;

fn in_dc(id: &str, dc: &str) -> Node {
    let mut n = node(id);
    n.datacenter = dc.into();
    n
}

fn per_dc(state: &State, plan: &Plan) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in &plan.place {
        let dc = state.node(&a.node_id).unwrap().datacenter.clone();
        *out.entry(dc).or_default() += 1;
    }
    out
}

#[test]
fn affinity_pulls_placements_toward_matching_nodes() {
    let mut nodes: Vec<Node> = (0..10).map(|i| node(&format!("n{i}"))).collect();
    nodes[3].node_class = "gpu".into();
    nodes[7].node_class = "gpu".into();
    let mut j = job(2, "raw_exec");
    j.task_groups[0].affinities.push(Affinity {
        l_target: "${node.class}".into(),
        r_target: "gpu".into(),
        operand: "=".into(),
        weight: 100,
    });
    let store = store_with(nodes, j);
    let plan = run(&store.snapshot(), &eval("e1"));
    let mut on = placed_on(&plan);
    on.sort();
    assert_eq!(on, ["n3", "n7"]);
}

#[test]
fn negative_affinity_pushes_placements_away() {
    let mut nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"))).collect();
    for n in &mut nodes[..3] {
        n.meta.insert("spot".into(), "true".into());
    }
    let mut j = job(1, "raw_exec");
    j.affinities.push(Affinity {
        l_target: "${meta.spot}".into(),
        r_target: "true".into(),
        operand: "=".into(),
        weight: -50,
    });
    let store = store_with(nodes, j);
    for e in ["e1", "e2", "e3"] {
        assert_eq!(placed_on(&run(&store.snapshot(), &eval(e))), ["n3"]);
    }
}

#[test]
fn spread_with_targets_follows_the_percentages() {
    let nodes: Vec<Node> = (0..6)
        .map(|i| in_dc(&format!("a{i}"), "dc1"))
        .chain((0..6).map(|i| in_dc(&format!("b{i}"), "dc2")))
        .collect();
    let mut j = job(10, "raw_exec");
    j.task_groups[0].spreads.push(Spread {
        attribute: "${node.datacenter}".into(),
        weight: 100,
        spread_target: vec![
            SpreadTarget {
                value: "dc1".into(),
                percent: 70,
            },
            SpreadTarget {
                value: "dc2".into(),
                percent: 30,
            },
        ],
    });
    let store = store_with(nodes, j);
    let snap = store.snapshot();
    let plan = run(&snap, &eval("e1"));
    assert_eq!(plan.place.len(), 10);
    let counts = per_dc(&snap, &plan);
    let dc1 = counts.get("dc1").copied().unwrap_or(0) as i64;
    let dc2 = counts.get("dc2").copied().unwrap_or(0) as i64;
    assert!((dc1 - 7).abs() <= 1 && (dc2 - 3).abs() <= 1, "{counts:?}");
}

#[test]
fn job_level_spread_without_targets_is_even() {
    let nodes: Vec<Node> = ["dc1", "dc2", "dc3"]
        .iter()
        .flat_map(|dc| (0..4).map(move |i| in_dc(&format!("{dc}-{i}"), dc)))
        .collect();
    let mut j = job(9, "raw_exec");
    j.spreads.push(Spread {
        attribute: "${node.datacenter}".into(),
        weight: 50,
        spread_target: vec![],
    });
    let store = store_with(nodes, j);
    let snap = store.snapshot();
    let plan = run(&snap, &eval("e1"));
    let counts = per_dc(&snap, &plan);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|c| (2..=4).contains(c)), "{counts:?}");
}

#[test]
fn spread_algorithm_prefers_the_least_used_node() {
    let mut small = node("small");
    small.node_resources.cpu.cpu_shares = 1000;
    small.node_resources.memory.memory_mb = 1024;
    let mut big = node("big");
    big.node_resources.cpu.cpu_shares = 16000;
    big.node_resources.memory.memory_mb = 65536;
    let store = store_with(vec![small, big], job(1, "raw_exec"));
    let snap = store.snapshot();
    let binpack = run_at(&snap, &eval("e1"), 1, Algorithm::Binpack);
    let spread = run_at(&snap, &eval("e1"), 1, Algorithm::Spread);
    assert_eq!(placed_on(&binpack), ["small"]);
    assert_eq!(placed_on(&spread), ["big"]);
}

#[test]
fn binpacking_fills_busy_nodes_and_anti_affinity_spreads_a_group() {
    // Two equal nodes: a group's instances go to both rather than stacking on one.
    let store = store_with(vec![node("a"), node("b")], job(4, "raw_exec"));
    let plan = run(&store.snapshot(), &eval("e1"));
    let on = placed_on(&plan);
    assert_eq!(on.iter().filter(|n| **n == "a").count(), 2, "{on:?}");
}

#[test]
fn only_a_bounded_number_of_nodes_is_scored_per_placement() {
    let nodes: Vec<Node> = (0..1000).map(|i| node(&format!("n{i:04}"))).collect();
    let store = store_with(nodes, job(3, "raw_exec"));
    let snap = store.snapshot();
    let job = snap.job("default", "hello").unwrap().clone();
    let mut ctx = Ctx::new(&snap, &job, None, Algorithm::Binpack, 7, &[]);
    // ceil(log2(1000)) = 10 for a service.
    assert_eq!(ctx.limit(0), 10);
    let mut metric = AllocMetric::default();
    assert!(ctx.select(0, &[], &mut metric).is_some());
    assert_eq!(metric.nodes_evaluated, 10);
    // The next placement continues in the shuffled order: different nodes.
    let mut second = AllocMetric::default();
    ctx.select(0, &[], &mut second);
    assert_eq!(second.nodes_evaluated, 10);

    // Batch jobs score 2, groups with a spread (or affinity) 64.
    let mut batch = (*job).clone();
    batch.job_type = JOB_TYPE_BATCH.into();
    let batch = Arc::new(batch);
    assert_eq!(
        Ctx::new(&snap, &batch, None, Algorithm::Binpack, 7, &[]).limit(0),
        2
    );
    let mut spread = (*job).clone();
    spread.spreads.push(Spread {
        attribute: "${node.datacenter}".into(),
        weight: 50,
        spread_target: vec![],
    });
    let spread = Arc::new(spread);
    assert_eq!(
        Ctx::new(&snap, &spread, None, Algorithm::Binpack, 7, &[]).limit(0),
        64
    );
}
