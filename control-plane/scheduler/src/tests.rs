use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::{MemStore, Op, State, Store};
use flotilla_types::*;

use crate::{Env, Plan, schedule};

fn node(id: &str) -> Node {
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

fn job(count: u32, driver: &str) -> Job {
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

fn eval(id: &str) -> Evaluation {
    Evaluation {
        id: id.into(),
        namespace: "default".into(),
        job_id: "hello".into(),
        status: EVAL_STATUS_PENDING.into(),
        ..Default::default()
    }
}

fn run(state: &State, e: &Evaluation) -> Plan {
    let mut n = 0;
    let mut new_id = || {
        n += 1;
        format!("alloc-{n:04}")
    };
    let mut env = Env {
        now: 1,
        new_id: &mut new_id,
        seed: 7,
    };
    schedule(state, e, &mut env)
}

fn apply(store: &MemStore, plan: &Plan) {
    let ops = plan
        .stop
        .iter()
        .chain(plan.place.iter())
        .cloned()
        .map(Op::PutAlloc)
        .collect();
    store.apply(ops).unwrap();
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
    let store = MemStore::new();
    store
        .apply(vec![
            Op::PutNode(node("a")),
            Op::PutNode(node("b")),
            Op::PutJob(job(5, "raw_exec")),
        ])
        .unwrap();
    let p1 = run(&store.snapshot(), &eval("e1"));
    let p2 = run(&store.snapshot(), &eval("e1"));
    assert_eq!(p1.place, p2.place);
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
fn new_version_replaces_and_scale_down_stops_extras() {
    let store = MemStore::new();
    store
        .apply(vec![Op::PutNode(node("a")), Op::PutJob(job(3, "raw_exec"))])
        .unwrap();
    apply(&store, &run(&store.snapshot(), &eval("e1")));

    let mut j = (**store.snapshot().job("default", "hello").unwrap()).clone();
    j.task_groups[0].count = 1;
    j.job_modify_index = 99;
    store.apply(vec![Op::PutJob(j)]).unwrap();
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 3, "{:?}", plan.stop);
    assert_eq!(plan.place.len(), 1);
    assert_eq!(plan.place[0].name, "hello.web[0]");
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
    let _ = Arc::new(());
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
