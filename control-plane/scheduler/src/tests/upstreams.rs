//! Connect upstreams: the node proxy opens each upstream's listener on the node itself, so two
//! allocations whose groups bind the same address and port cannot share a node.

use flotilla_types::*;

use super::*;

const TAKEN: &str = "upstream 127.0.0.1:5432 already bound on node";

/// `j` with a group service `web` whose sidecar has an upstream to `destination` on
/// `address:port` (`address` empty: the loopback default).
fn with_upstream(mut j: Job, destination: &str, address: &str, port: u16) -> Job {
    j.task_groups[0].services.push(Service {
        name: "web".into(),
        port_label: "http".into(),
        connect: Some(ConsulConnect {
            native: false,
            sidecar_service: Some(ConsulSidecarService {
                proxy: Some(ConsulProxy {
                    upstreams: vec![ConsulUpstream {
                        destination_name: destination.into(),
                        local_bind_port: port,
                        local_bind_address: address.into(),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    });
    j.canonicalize();
    j
}

/// `hello`'s group with an upstream to `db` on 127.0.0.1:5432.
fn db_job(count: u32) -> Job {
    with_upstream(job(count, "raw_exec"), "db", "", 5432)
}

/// Another job, `other`, with one instance of a group with an upstream on `address:port`.
fn other_job(address: &str, port: u16) -> Job {
    let mut j = with_upstream(job(1, "raw_exec"), "db", address, port);
    j.id = "other".into();
    j.name = "other".into();
    j
}

fn other_eval(id: &str) -> Evaluation {
    Evaluation {
        job_id: "other".into(),
        ..eval(id)
    }
}

#[test]
fn one_node_holds_an_upstream_port_once() {
    let store = store_with(vec![node("a")], db_job(2));
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(placed_on(&plan), ["a"]);
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.dimension_exhausted[TAKEN], 1, "{m:?}");
    assert_eq!(m.nodes_exhausted, 1);
    assert_eq!(plan.queued["web"], 1);
    assert_eq!(
        m.describe(),
        format!("1 node(s) exhausted on {TAKEN}"),
        "what `job run` and `job plan` print"
    );
}

#[test]
fn instances_with_the_same_upstream_use_different_nodes() {
    let store = store_with(vec![node("a"), node("b")], db_job(2));
    let plan = run(&store.snapshot(), &eval("e1"));
    let mut nodes = placed_on(&plan);
    nodes.sort_unstable();
    assert_eq!(nodes, ["a", "b"]);
    assert!(plan.failed_tg_allocs.is_empty());
    apply(&store, &plan);
    assert!(run(&store.snapshot(), &eval("e2")).is_noop());
}

#[test]
fn another_job_with_the_same_upstream_lands_elsewhere() {
    let store = store_with(vec![node("a"), node("b")], db_job(1));
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    let first = plan.place[0].node_id.clone();

    store.apply(vec![Op::PutJob(other_job("", 5432))]).unwrap();
    let plan = run(&store.snapshot(), &other_eval("e2"));
    assert_eq!(plan.place.len(), 1);
    assert_ne!(plan.place[0].node_id, first);
}

#[test]
fn another_job_on_a_full_node_fails_and_says_why() {
    let store = store_with(vec![node("a")], db_job(1));
    apply(&store, &run(&store.snapshot(), &eval("e1")));

    store.apply(vec![Op::PutJob(other_job("", 5432))]).unwrap();
    let plan = run(&store.snapshot(), &other_eval("e2"));
    assert!(plan.place.is_empty());
    assert_eq!(plan.failed_tg_allocs["web"].dimension_exhausted[TAKEN], 1);

    // A wildcard address takes the port on every address.
    store
        .apply(vec![Op::PutJob(other_job("0.0.0.0", 5432))])
        .unwrap();
    let plan = run(&store.snapshot(), &other_eval("e3"));
    assert!(plan.place.is_empty());
    assert_eq!(
        plan.failed_tg_allocs["web"].dimension_exhausted["upstream 0.0.0.0:5432 already bound on node"],
        1
    );

    // Another port, or the same port on another address, is free.
    for (address, port) in [("", 5433), ("127.0.0.2", 5432)] {
        store
            .apply(vec![Op::PutJob(other_job(address, port))])
            .unwrap();
        let plan = run(&store.snapshot(), &other_eval("e4"));
        assert_eq!(placed_on(&plan), ["a"], "{address}:{port}");
    }
}

#[test]
fn a_stopped_allocation_frees_its_upstream() {
    let store = store_with(vec![node("a")], db_job(1));
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    // Once the first job's allocation is stopped, the other job fits.
    let id = store.snapshot().allocs.keys().next().unwrap().clone();
    update_alloc(&store, &id, |a| {
        a.desired_status = ALLOC_DESIRED_STOP.into();
    });
    store.apply(vec![Op::PutJob(other_job("", 5432))]).unwrap();
    let plan = run(&store.snapshot(), &other_eval("e2"));
    assert_eq!(placed_on(&plan), ["a"]);
}

#[test]
fn a_destructive_update_replaces_on_the_same_node() {
    let store = store_with(vec![node("a")], db_job(1));
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    update_job(&store, |j| {
        j.task_groups[0].tasks[0]
            .env
            .insert("VERSION".into(), "2".into());
    });
    // The old allocation is stopped in the same plan: its listener is free for the new one.
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(placed_on(&plan), ["a"]);
    assert!(plan.failed_tg_allocs.is_empty());
    assert!(plan.conflicts(&store.snapshot()).is_empty());
    apply(&store, &plan);
    assert!(run(&store.snapshot(), &eval("e3")).is_noop());
}

#[test]
fn changing_upstreams_is_destructive() {
    let store = store_with(vec![node("a")], db_job(1));
    apply(&store, &run(&store.snapshot(), &eval("e1")));

    // Tags are updated in place…
    update_job(&store, |j| {
        j.task_groups[0].services[0].tags = vec!["v2".into()]
    });
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!((plan.updates.len(), plan.place.len()), (1, 0));
    apply(&store, &plan);

    // …a new upstream port restarts the tasks (their environment names it) on a new allocation.
    update_job(&store, |j| {
        let connect = j.task_groups[0].services[0].connect.as_mut().unwrap();
        let sidecar = connect.sidecar_service.as_mut().unwrap();
        sidecar.proxy.as_mut().unwrap().upstreams[0].local_bind_port = 6000;
    });
    let plan = run(&store.snapshot(), &eval("e3"));
    assert!(plan.updates.is_empty());
    assert_eq!((plan.stop.len(), plan.place.len()), (1, 1));
}

#[test]
fn scaling_up_keeps_the_running_instance_in_mind() {
    let store = store_with(vec![node("a"), node("b")], db_job(1));
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    update_job(&store, |j| j.task_groups[0].count = 2);
    let plan = run(&store.snapshot(), &eval("e2"));
    let running = store
        .snapshot()
        .allocs
        .values()
        .next()
        .unwrap()
        .node_id
        .clone();
    assert_eq!(plan.place.len(), 1);
    assert_ne!(plan.place[0].node_id, running);
}

#[test]
fn system_jobs_report_the_clash_on_each_node() {
    let mut first = db_job(1);
    first.job_type = JOB_TYPE_SYSTEM.into();
    let store = store_with(vec![node("a"), node("b")], first);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.place.len(), 2);
    apply(&store, &plan);

    let mut second = other_job("", 5432);
    second.job_type = JOB_TYPE_SYSTEM.into();
    store.apply(vec![Op::PutJob(second)]).unwrap();
    let plan = run(&store.snapshot(), &other_eval("e2"));
    assert!(plan.place.is_empty());
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.dimension_exhausted[TAKEN], 1);
    assert_eq!(plan.queued["web"], 2, "one failure per node");
}

#[test]
fn conflicts_catch_a_plan_made_before_another_took_the_upstream() {
    let store = store_with(vec![node("a")], db_job(1));
    store.apply(vec![Op::PutJob(other_job("", 5432))]).unwrap();
    let snap = store.snapshot();
    let plan1 = run(&snap, &eval("e1"));
    let mut plan2 = run(&snap, &other_eval("e2"));
    assert_eq!((plan1.place.len(), plan2.place.len()), (1, 1));
    apply(&store, &plan1);
    let problems = plan2.conflicts(&store.snapshot());
    assert_eq!(
        problems,
        ["upstream 127.0.0.1:5432 on node node-a is taken"],
        "{problems:?}"
    );
    let problems = plan2.retain_valid(&store.snapshot(), None);
    assert_eq!(problems.len(), 1);
    assert!(plan2.place.is_empty());
}
