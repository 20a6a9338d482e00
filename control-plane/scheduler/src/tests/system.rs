//! System and sysbatch jobs.

use flotilla_types::*;

use super::*;

fn system_job(kind: &str) -> Job {
    let mut j = job(1, "raw_exec");
    j.job_type = kind.into();
    j.task_groups[0].reschedule_policy = None;
    j.task_groups[0].restart_policy = None;
    j.canonicalize();
    j
}

#[test]
fn system_job_runs_on_every_eligible_node() {
    let mut ineligible = node("c");
    ineligible.scheduling_eligibility = NODE_INELIGIBLE.into();
    let mut draining = node("d");
    draining.drain = true;
    let mut down = node("e");
    down.status = NODE_STATUS_DOWN.into();
    let mut other_dc = node("f");
    other_dc.datacenter = "dc2".into();
    let mut j = system_job(JOB_TYPE_SYSTEM);
    j.datacenters = vec!["dc1".into()];
    let store = store_with(
        vec![node("a"), node("b"), ineligible, draining, down, other_dc],
        j,
    );
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(placed_on(&plan), ["a", "b"]);
    assert!(plan.place.iter().all(|a| a.name == "hello.web[0]"));
    assert!(plan.failed_tg_allocs.is_empty());
    apply(&store, &plan);
    assert!(run(&store.snapshot(), &eval("e2")).is_noop());
}

#[test]
fn a_later_evaluation_places_only_on_the_new_node() {
    let store = store_with(vec![node("a"), node("b")], system_job(JOB_TYPE_SYSTEM));
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    store.apply(vec![Op::PutNode(node("c"))]).unwrap();
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(placed_on(&plan), ["c"]);
    assert!(plan.stop.is_empty());
}

#[test]
fn nodes_that_change_keep_or_lose_their_allocations() {
    let store = store_with(
        vec![node("a"), node("b"), node("c"), node("d")],
        system_job(JOB_TYPE_SYSTEM),
    );
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    let snap = store.snapshot();
    let alloc_on = |n: &str| snap.allocs_by_node(n).next().map(|a| a.id.clone()).unwrap();
    let (on_b, on_c) = (alloc_on("b"), alloc_on("c"));
    let mut a = node("a");
    a.scheduling_eligibility = NODE_INELIGIBLE.into();
    let mut b = node("b");
    b.status = NODE_STATUS_DOWN.into();
    let mut c = node("c");
    c.drain = true;
    c.scheduling_eligibility = NODE_INELIGIBLE.into();
    store
        .apply(vec![Op::PutNode(a), Op::PutNode(b), Op::PutNode(c)])
        .unwrap();
    // Ineligible keeps, down loses (no replacement on a down node), draining keeps until the
    // drainer marks the allocation for migration.
    let plan = run(&store.snapshot(), &eval("e2"));
    assert!(plan.place.is_empty());
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.stop[0].id, on_b);
    assert_eq!(plan.stop[0].client_status, ALLOC_CLIENT_LOST);
    apply(&store, &plan);
    update_alloc(&store, &on_c, |a| a.desired_transition.migrate = true);
    let plan = run(&store.snapshot(), &eval("e3"));
    assert!(plan.place.is_empty());
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.stop[0].id, on_c);
    assert_eq!(plan.stop[0].desired_description, "alloc is being migrated");
}

#[test]
fn constraints_limit_system_jobs_without_counting_as_failures() {
    let mut big = node("big");
    big.node_class = "large".into();
    let mut full = node("full");
    full.node_class = "large".into();
    full.node_resources.memory.memory_mb = 10;
    let mut j = system_job(JOB_TYPE_SYSTEM);
    j.constraints.push(Constraint {
        l_target: "${node.class}".into(),
        r_target: "large".into(),
        operand: "=".into(),
    });
    let store = store_with(vec![node("small"), big, full], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(placed_on(&plan), ["big"]);
    // The full node is a failure (exhausted), the small one is simply not targeted.
    let m = &plan.failed_tg_allocs["web"];
    assert_eq!(m.dimension_exhausted["memory"], 1);
    assert!(m.constraint_filtered.is_empty());
    assert_eq!(plan.queued["web"], 1);
}

#[test]
fn system_job_updates_replace_on_the_same_node() {
    let store = store_with(vec![node("a"), node("b")], system_job(JOB_TYPE_SYSTEM));
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    update_job(&store, |j| {
        j.task_groups[0].tasks[0].env.insert("V".into(), "2".into());
    });
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 2);
    assert_eq!(placed_on(&plan), ["a", "b"]);
    for p in &plan.place {
        let prev = plan
            .stop
            .iter()
            .find(|s| s.id == p.previous_allocation)
            .unwrap();
        assert_eq!(prev.node_id, p.node_id);
    }
}

#[test]
fn failed_system_allocations_are_replaced_in_place() {
    let store = store_with(vec![node("a")], system_job(JOB_TYPE_SYSTEM));
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    let id = plan.place[0].id.clone();
    update_alloc(&store, &id, |a| {
        a.client_status = ALLOC_CLIENT_FAILED.into()
    });
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(placed_on(&plan), ["a"]);
    assert_eq!(plan.place[0].previous_allocation, id);
}

#[test]
fn sysbatch_runs_once_per_node() {
    let store = store_with(vec![node("a"), node("b")], system_job(JOB_TYPE_SYSBATCH));
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(placed_on(&plan), ["a", "b"]);
    apply(&store, &plan);
    update_alloc(&store, &plan.place[0].id, |a| {
        a.client_status = ALLOC_CLIENT_COMPLETE.into()
    });
    update_alloc(&store, &plan.place[1].id, |a| {
        a.client_status = ALLOC_CLIENT_FAILED.into()
    });
    // Finished (or failed) work is not run again…
    assert!(run(&store.snapshot(), &eval("e2")).place.is_empty());
    // …but a new node gets it…
    store.apply(vec![Op::PutNode(node("c"))]).unwrap();
    let plan = run(&store.snapshot(), &eval("e3"));
    assert_eq!(placed_on(&plan), ["c"]);
    apply(&store, &plan);
    // …and so does every node when the job changes destructively.
    update_job(&store, |j| {
        j.task_groups[0].tasks[0].env.insert("V".into(), "2".into());
    });
    let plan = run(&store.snapshot(), &eval("e4"));
    let mut on = placed_on(&plan);
    on.sort();
    assert_eq!(on, ["a", "b", "c"]);
}

#[test]
fn nodes_outside_the_datacenters_lose_it_and_unready_ones_keep_it() {
    let mut dc2 = node("b");
    dc2.datacenter = "dc2".into();
    let store = store_with(vec![node("a"), dc2, node("c")], system_job(JOB_TYPE_SYSTEM));
    apply(&store, &run(&store.snapshot(), &eval("e1")));
    let mut c = node("c");
    c.status = NODE_STATUS_INIT.into();
    store.apply(vec![Op::PutNode(c)]).unwrap();
    update_job(&store, |j| j.datacenters = vec!["dc1".into()]);
    let plan = run(&store.snapshot(), &eval("e2"));
    // The datacenter list is not destructive: "a" is updated in place, "b" (dc2) stops, the
    // initializing "c" keeps its allocation.
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.stop[0].node_id, "b");
    assert_eq!(
        plan.stop[0].desired_description,
        "alloc not needed due to job update"
    );
    assert_eq!(plan.updates.len(), 1);
    assert_eq!(plan.updates[0].node_id, "a");
    assert!(plan.place.is_empty());
}
