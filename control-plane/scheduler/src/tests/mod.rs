//! Scheduler tests. Every plan made through [`run_at`] is made twice, with and without a
//! [`UsageIndex`], and the two must agree.

mod constraints;
mod deployments;
mod lifecycle;
mod ranking;
mod system;
mod upstreams;

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::{MemStore, Op, State, Store};
use flotilla_types::*;

use crate::{Algorithm, Env, Plan, UsageIndex, schedule};

pub(crate) const SEC: i64 = NANOS_PER_SEC;

pub(crate) fn node(id: &str) -> Node {
    let mut drivers = BTreeMap::new();
    drivers.insert(
        "raw_exec".to_string(),
        DriverInfo {
            detected: true,
            healthy: true,
            ..Default::default()
        },
    );
    Node {
        id: id.into(),
        name: format!("node-{id}"),
        datacenter: "dc1".into(),
        status: NODE_STATUS_READY.into(),
        scheduling_eligibility: NODE_ELIGIBLE.into(),
        address: "127.0.0.1".into(),
        node_resources: NodeResources {
            cpu: NodeCpu {
                cpu_shares: 4000,
                total_core_count: 4,
            },
            memory: NodeMemory { memory_mb: 8192 },
            ..Default::default()
        },
        drivers,
        ..Default::default()
    }
}

pub(crate) fn job(count: u32, driver: &str) -> Job {
    let mut j = Job {
        id: "hello".into(),
        task_groups: vec![TaskGroup {
            name: "web".into(),
            count,
            networks: vec![NetworkResource {
                dynamic_ports: vec![Port {
                    label: "http".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            tasks: vec![Task {
                name: "server".into(),
                driver: driver.into(),
                resources: Resources {
                    cpu: 100,
                    memory_mb: 64,
                },
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    j.canonicalize();
    j
}

pub(crate) fn eval(id: &str) -> Evaluation {
    Evaluation {
        id: id.into(),
        namespace: "default".into(),
        job_id: "hello".into(),
        status: EVAL_STATUS_PENDING.into(),
        ..Default::default()
    }
}

pub(crate) fn run(state: &State, e: &Evaluation) -> Plan {
    run_at(state, e, 1, Algorithm::Binpack)
}

/// Schedule at `now` with fresh ids (`alloc-<run>-<n>`), once reading usage from the state and
/// once from a [`UsageIndex`]; the plans must be identical.
pub(crate) fn run_at(state: &State, e: &Evaluation, now: i64, algorithm: Algorithm) -> Plan {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let plan = |index: Option<&UsageIndex>| {
        let mut n = 0;
        let mut new_id = || {
            n += 1;
            format!("alloc-{run:04}-{n:04}")
        };
        let mut env = Env::new(now, &mut new_id, 7);
        env.algorithm = algorithm;
        env.usage = index;
        schedule(state, e, &mut env)
    };
    let lazy = plan(None);
    let index = UsageIndex::new(state);
    let indexed = plan(Some(&index));
    assert_eq!(lazy.place, indexed.place, "placements differ with an index");
    assert_eq!(lazy.stop, indexed.stop);
    assert_eq!(lazy.updates, indexed.updates);
    assert_eq!(lazy.followups, indexed.followups);
    assert_eq!(lazy.failed_tg_allocs, indexed.failed_tg_allocs);
    lazy
}

/// Commit a plan as the server does: stops, updates and placements as allocation writes.
pub(crate) fn apply(store: &MemStore, plan: &Plan) {
    let ops = plan
        .stop
        .iter()
        .chain(plan.updates.iter())
        .chain(plan.place.iter())
        .cloned()
        .map(Op::PutAlloc)
        .collect();
    store.apply(ops).unwrap();
}

/// A store holding `nodes` and `job`.
pub(crate) fn store_with(nodes: Vec<Node>, job: Job) -> MemStore {
    let store = MemStore::new();
    let mut ops: Vec<Op> = nodes.into_iter().map(Op::PutNode).collect();
    ops.push(Op::PutJob(job));
    store.apply(ops).unwrap();
    store
}

/// Node ids of the plan's placements, in order.
pub(crate) fn placed_on(plan: &Plan) -> Vec<&str> {
    plan.place.iter().map(|a| a.node_id.as_str()).collect()
}

/// Rewrite an allocation in the store.
pub(crate) fn update_alloc(store: &MemStore, id: &str, f: impl FnOnce(&mut Allocation)) {
    let mut a = (**store.snapshot().alloc(id).unwrap()).clone();
    f(&mut a);
    store.apply(vec![Op::PutAlloc(a)]).unwrap();
}

/// The stored job, changed by `f` (as a new version).
pub(crate) fn update_job(store: &MemStore, f: impl FnOnce(&mut Job)) {
    let mut j = (**store.snapshot().job("default", "hello").unwrap()).clone();
    f(&mut j);
    j.job_modify_index = 0;
    store.apply(vec![Op::PutJob(j)]).unwrap();
}

#[test]
fn spreads_a_group_over_equal_nodes() {
    let store = MemStore::new();
    store
        .apply(vec![
            Op::PutNode(node("a")),
            Op::PutNode(node("b")),
            Op::PutJob(job(3, "raw_exec")),
        ])
        .unwrap();
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 3);
    let nodes: std::collections::BTreeSet<_> =
        plan.place.iter().map(|a| a.node_id.clone()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "instances should use both nodes: {:?}",
        plan.place
    );
    let names: Vec<_> = plan.place.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names, ["hello.web[0]", "hello.web[1]", "hello.web[2]"]);
    // Distinct dynamic ports per node.
    for a in &plan.place {
        let p = a.port("http").unwrap();
        assert!((MIN_DYNAMIC_PORT..=MAX_DYNAMIC_PORT).contains(&p.value));
    }
}

#[test]
fn is_deterministic() {
    let mut j = job(40, "raw_exec");
    j.task_groups[0].spreads.push(Spread {
        attribute: "${node.datacenter}".into(),
        weight: 50,
        spread_target: vec![],
    });
    let nodes: Vec<Node> = (0..30)
        .map(|i| {
            let mut n = node(&format!("n{i:02}"));
            n.datacenter = format!("dc{}", i % 3);
            n
        })
        .collect();
    let store = store_with(nodes, j);
    let snap = store.snapshot();
    let plan = |seed: u64| {
        let mut n = 0;
        let mut new_id = || {
            n += 1;
            format!("id-{n}")
        };
        let mut env = Env::new(5, &mut new_id, seed);
        schedule(&snap, &eval("e1"), &mut env)
    };
    let (p1, p2) = (plan(7), plan(7));
    assert_eq!(p1.place, p2.place);
    assert_eq!(p1.place.len(), 40);
    // Another seed tries nodes in another order.
    assert_ne!(placed_on(&p1), placed_on(&plan(8)));
}

#[test]
fn second_run_is_a_noop() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(2, "raw_exec"))])
        .unwrap();
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    assert!(run(&store.snapshot(), &eval("e2")).is_noop());
}

#[test]
fn missing_driver_is_reported() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(2, "docker"))])
        .unwrap();
    let plan = run(&store.snapshot(), &eval("e1"));
    assert!(plan.place.is_empty());
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.constraint_filtered["missing driver \"docker\""], 1);
    assert_eq!(m.coalesced_failures, 1);
    assert_eq!(plan.queued["web"], 2);
    assert!(m.describe().contains("missing driver"), "{}", m.describe());
}

#[test]
fn memory_is_accounted() {
    let store = MemStore::new();
    let mut j = job(3, "raw_exec");
    j.task_groups[0].tasks[0].resources.memory_mb = 3000;
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(j)])
        .unwrap();
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 2);
    assert_eq!(
        plan.failed_tg_allocs["web"].dimension_exhausted["memory"],
        1
    );
}

#[test]
fn stopping_the_job_stops_everything() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(2, "raw_exec"))])
        .unwrap();
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    let mut j = (**store.snapshot().job("default", "hello").unwrap()).clone();
    j.stop = true;
    store.apply(vec![Op::PutJob(j)]).unwrap();
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 2);
    assert!(
        plan.stop
            .iter()
            .all(|a| a.desired_status == ALLOC_DESIRED_STOP)
    );
    assert!(plan.place.is_empty());
}

#[test]
fn lost_node_allocations_are_replaced_elsewhere() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(2, "raw_exec"))])
        .unwrap();
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    let mut a = node("a");
    a.status = NODE_STATUS_DOWN.into();
    store
        .apply(vec![Op::PutNode(a), Op::PutNode(node("b"))])
        .unwrap();
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 2);
    assert!(
        plan.stop
            .iter()
            .all(|a| a.client_status == ALLOC_CLIENT_LOST)
    );
    assert_eq!(plan.place.len(), 2);
    assert!(plan.place.iter().all(|a| a.node_id == "b"));
    assert!(plan.place.iter().all(|a| !a.previous_allocation.is_empty()));
}

#[test]
fn scale_down_stops_extras_and_updates_the_rest_in_place() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(3, "raw_exec"))])
        .unwrap();
    apply(&store, &run(&store.snapshot(), &eval("e1")));

    // Only the count changes: Nomad keeps index 0 running and moves it to the new version.
    update_job(&store, |j| j.task_groups[0].count = 1);
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 2, "{:?}", plan.stop);
    assert!(plan.place.is_empty());
    assert_eq!(plan.updates.len(), 1);
    assert_eq!(plan.updates[0].name, "hello.web[0]");
    let new_version = store
        .snapshot()
        .job("default", "hello")
        .unwrap()
        .job_modify_index;
    assert_eq!(
        plan.updates[0].job.as_ref().unwrap().job_modify_index,
        new_version
    );
    apply(&store, &plan);
    assert!(run(&store.snapshot(), &eval("e3")).is_noop());
}

#[test]
fn destructive_change_replaces() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(3, "raw_exec"))])
        .unwrap();
    apply(&store, &run(&store.snapshot(), &eval("e1")));

    update_job(&store, |j| {
        j.task_groups[0].count = 1;
        j.task_groups[0].tasks[0]
            .env
            .insert("VERSION".into(), "2".into());
    });
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 3, "{:?}", plan.stop);
    assert_eq!(plan.place.len(), 1);
    assert_eq!(plan.place[0].name, "hello.web[0]");
    assert!(plan.updates.is_empty());
    let updating = plan
        .stop
        .iter()
        .filter(|a| a.desired_description == "alloc is being updated due to job update")
        .count();
    assert_eq!(updating, 1);
}

#[test]
fn conflicts_catch_a_stale_plan() {
    let store = MemStore::new();
    let mut j = job(1, "raw_exec");
    j.task_groups[0].networks[0].reserved_ports = vec![Port {
        label: "admin".into(),
        value: 8081,
        ..Default::default()
    }];
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(j.clone())])
        .unwrap();
    let snap = store.snapshot();
    let plan1 = run(&snap, &eval("e1"));
    let mut plan2 = run(&snap, &eval("e2"));
    assert!(plan1.conflicts(&store.snapshot()).is_empty());
    apply(&store, &plan1);
    // Made from the same old snapshot: its static port is now taken.
    for a in &mut plan2.place {
        a.id = format!("{}-other", a.id);
    }
    let problems = plan2.conflicts(&store.snapshot());
    assert!(
        problems.iter().any(|p| p.contains("port 8081")),
        "{problems:?}"
    );
}

#[test]
fn ineligible_and_other_dc_nodes_are_skipped() {
    let store = MemStore::new();
    let mut a = node("a");
    a.scheduling_eligibility = NODE_INELIGIBLE.into();
    let mut b = node("b");
    b.datacenter = "dc2".into();
    let mut j = job(1, "raw_exec");
    j.datacenters = vec!["dc1".into()];
    store
        .apply(vec![Op::PutNode(a), Op::PutNode(b), Op::PutJob(j)])
        .unwrap();
    let plan = run(&store.snapshot(), &eval("e1"));
    assert!(plan.place.is_empty());
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.nodes_evaluated, 1);
    assert!(m.describe().contains("dc2"), "{}", m.describe());
}

#[test]
fn periodic_and_parameterized_parents_never_run() {
    for template in ["periodic", "parameterized"] {
        let mut j = job(2, "raw_exec");
        if template == "periodic" {
            j.periodic = Some(PeriodicConfig {
                enabled: true,
                spec: "0 3 * * *".into(),
                ..Default::default()
            });
        } else {
            j.parameterized_job = Some(ParameterizedJobConfig::default());
        }
        let store = store_with(vec![node("a")], j);
        let plan = run(&store.snapshot(), &eval("e1"));
        assert!(
            plan.place.is_empty(),
            "{template} parent placed: {:?}",
            plan.place
        );
    }
}
