//! Allocation life cycles: batch completion, the reschedule policy, drain migration, and the
//! usage index staying in step with the store.

use flotilla_types::*;

use super::*;
use crate::UsageIndex;

/// One service (or batch) allocation placed on node `a` at time 1, then failed at `failed_at`.
fn failed_alloc(kind: &str, nodes: Vec<Node>, failed_at: i64) -> (MemStore, String) {
    let mut j = job(1, "raw_exec");
    j.job_type = kind.into();
    j.task_groups[0].reschedule_policy = None;
    j.canonicalize();
    let store = store_with(nodes, j);
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    let id = plan.place[0].id.clone();
    update_alloc(&store, &id, |a| {
        a.client_status = ALLOC_CLIENT_FAILED.into();
        a.modify_time = failed_at;
    });
    (store, id)
}

#[test]
fn batch_allocations_that_completed_are_not_replaced() {
    let mut j = job(2, "raw_exec");
    j.job_type = JOB_TYPE_BATCH.into();
    let store = store_with(vec![node("a")], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    for a in &plan.place {
        update_alloc(&store, &a.id, |a| {
            a.client_status = ALLOC_CLIENT_COMPLETE.into()
        });
    }
    assert!(run(&store.snapshot(), &eval("e2")).is_noop());
    // Even once the server has marked them stopped.
    for a in &plan.place {
        update_alloc(&store, &a.id, |a| {
            a.desired_status = ALLOC_DESIRED_STOP.into()
        });
    }
    assert!(run(&store.snapshot(), &eval("e3")).is_noop());
    // A finished service allocation, by contrast, is replaced.
    let store = store_with(vec![node("a")], job(1, "raw_exec"));
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    update_alloc(&store, &plan.place[0].id, |a| {
        a.client_status = ALLOC_CLIENT_COMPLETE.into()
    });
    assert_eq!(run(&store.snapshot(), &eval("e2")).place.len(), 1);
}

#[test]
fn reschedule_now_when_the_delay_has_passed() {
    let t = 1_000 * SEC;
    let (store, id) = failed_alloc(JOB_TYPE_SERVICE, vec![node("a"), node("b")], t);
    let failed_on = store.snapshot().alloc(&id).unwrap().node_id.clone();
    // Services: exponential from 30 s.
    let plan = run_at(
        &store.snapshot(),
        &eval("e2"),
        t + 31 * SEC,
        Algorithm::Binpack,
    );
    assert_eq!(plan.place.len(), 1);
    let new = &plan.place[0];
    assert_eq!(new.previous_allocation, id);
    assert_eq!(new.name, "hello.web[0]");
    let events = &new.reschedule_tracker.as_ref().unwrap().events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].prev_alloc_id, id);
    assert_eq!(events[0].prev_node_id, failed_on);
    assert_ne!(new.node_id, failed_on, "the node it failed on is penalised");
    assert_eq!(events[0].delay, 30 * SEC);
    assert_eq!(events[0].reschedule_time, t + 31 * SEC);
    // The failed one is stopped and points at its replacement.
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.stop[0].id, id);
    assert_eq!(plan.stop[0].next_allocation, new.id);
    assert_eq!(
        plan.stop[0].desired_description,
        "alloc was rescheduled because it failed"
    );
    assert!(plan.followups.is_empty());

    // The replacement fails too: the tracker grows and the delay doubles.
    apply(&store, &plan);
    let second = new.id.clone();
    let t2 = t + 100 * SEC;
    update_alloc(&store, &second, |a| {
        a.client_status = ALLOC_CLIENT_FAILED.into();
        a.modify_time = t2;
    });
    let early = run_at(
        &store.snapshot(),
        &eval("e3"),
        t2 + 31 * SEC,
        Algorithm::Binpack,
    );
    assert!(early.place.is_empty());
    assert_eq!(early.followups, [(second.clone(), t2 + 60 * SEC)]);
    let plan = run_at(
        &store.snapshot(),
        &eval("e4"),
        t2 + 61 * SEC,
        Algorithm::Binpack,
    );
    let events = &plan.place[0].reschedule_tracker.as_ref().unwrap().events;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].delay, 60 * SEC);
}

#[test]
fn followup_when_the_delay_has_not_passed() {
    let t = 1_000 * SEC;
    let (store, id) = failed_alloc(JOB_TYPE_SERVICE, vec![node("a")], t);
    let plan = run_at(
        &store.snapshot(),
        &eval("e2"),
        t + 10 * SEC,
        Algorithm::Binpack,
    );
    assert!(plan.place.is_empty());
    assert!(plan.stop.is_empty());
    assert_eq!(plan.followups, [(id.clone(), t + 30 * SEC)]);
    assert!(!plan.is_noop());

    // Once the server has recorded the follow-up evaluation, other evaluations leave it be…
    update_alloc(&store, &id, |a| a.followup_eval_id = "follow".into());
    let plan = run_at(
        &store.snapshot(),
        &eval("e3"),
        t + 11 * SEC,
        Algorithm::Binpack,
    );
    assert!(plan.is_noop());
    // …and the follow-up itself replaces it, even slightly early.
    let plan = run_at(
        &store.snapshot(),
        &eval("follow"),
        t + 29 * SEC,
        Algorithm::Binpack,
    );
    assert_eq!(plan.place.len(), 1);
    assert_eq!(plan.place[0].previous_allocation, id);
}

#[test]
fn no_replacement_once_attempts_are_used_up() {
    let t = 1_000 * SEC;
    // Batch default: one attempt per 24 h, 5 s delay.
    let (store, id) = failed_alloc(JOB_TYPE_BATCH, vec![node("a"), node("b")], t);
    let plan = run_at(
        &store.snapshot(),
        &eval("e2"),
        t + 6 * SEC,
        Algorithm::Binpack,
    );
    assert_eq!(plan.place.len(), 1, "first attempt");
    apply(&store, &plan);
    let second = plan.place[0].id.clone();
    update_alloc(&store, &second, |a| {
        a.client_status = ALLOC_CLIENT_FAILED.into();
        a.modify_time = t + 60 * SEC;
    });
    let plan = run_at(
        &store.snapshot(),
        &eval("e3"),
        t + 3600 * SEC,
        Algorithm::Binpack,
    );
    assert!(plan.is_noop(), "attempts exhausted: {plan:?}");
    // The original stays stopped, the second stays failed.
    let snap = store.snapshot();
    assert_eq!(snap.alloc(&id).unwrap().desired_status, ALLOC_DESIRED_STOP);
    assert_eq!(
        snap.alloc(&second).unwrap().client_status,
        ALLOC_CLIENT_FAILED
    );
}

#[test]
fn a_policy_without_attempts_never_reschedules() {
    let t = 1_000 * SEC;
    let (store, id) = failed_alloc(JOB_TYPE_SERVICE, vec![node("a")], t);
    update_job(&store, |j| {
        j.task_groups[0].reschedule_policy = Some(ReschedulePolicy {
            attempts: 0,
            unlimited: false,
            ..Default::default()
        });
    });
    update_alloc(&store, &id, |a| {
        a.job = store.snapshot().job("default", "hello").cloned();
    });
    assert!(
        run_at(
            &store.snapshot(),
            &eval("e2"),
            t + 3600 * SEC,
            Algorithm::Binpack
        )
        .is_noop()
    );
}

#[test]
fn rescheduling_avoids_the_node_it_failed_on() {
    // Node "a" is busier, so bin-packing alone would pick it; the penalty sends the
    // replacement to "b".
    let t = 1_000 * SEC;
    let mut a = node("a");
    a.node_resources.cpu.cpu_shares = 500;
    a.node_resources.memory.memory_mb = 256;
    let (store, _) = failed_alloc(JOB_TYPE_SERVICE, vec![a, node("b")], t);
    let snap = store.snapshot();
    assert_eq!(snap.allocs.values().next().unwrap().node_id, "a");
    let plan = run_at(&snap, &eval("e2"), t + 31 * SEC, Algorithm::Binpack);
    assert_eq!(placed_on(&plan), ["b"]);
    // Without the failure history the same placement goes to "a".
    let fresh = store_with(
        vec![
            {
                let mut a = node("a");
                a.node_resources.cpu.cpu_shares = 500;
                a.node_resources.memory.memory_mb = 256;
                a
            },
            node("b"),
        ],
        job(1, "raw_exec"),
    );
    assert_eq!(placed_on(&run(&fresh.snapshot(), &eval("e1"))), ["a"]);
}

#[test]
fn draining_migrates_allocations_to_other_nodes() {
    let store = store_with(vec![node("a")], job(2, "raw_exec"));
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    let mut a = node("a");
    a.drain = true;
    a.scheduling_eligibility = NODE_INELIGIBLE.into();
    store
        .apply(vec![Op::PutNode(a), Op::PutNode(node("b"))])
        .unwrap();
    // Nothing moves until the drainer marks allocations…
    assert!(run(&store.snapshot(), &eval("e2")).is_noop());
    update_alloc(&store, &plan.place[0].id, |a| {
        a.desired_transition.migrate = true
    });
    // …then the marked one is stopped and replaced elsewhere.
    let plan2 = run(&store.snapshot(), &eval("e3"));
    assert_eq!(plan2.stop.len(), 1);
    assert_eq!(plan2.stop[0].id, plan.place[0].id);
    assert_eq!(plan2.stop[0].desired_description, "alloc is being migrated");
    assert_eq!(placed_on(&plan2), ["b"]);
    assert_eq!(plan2.place[0].previous_allocation, plan.place[0].id);
    assert_eq!(plan2.place[0].name, plan.place[0].name);
}

#[test]
fn usage_index_follows_the_store() {
    let store = store_with(vec![node("a"), node("b"), node("c")], job(6, "raw_exec"));
    let mut index = UsageIndex::new(&store.snapshot());
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    index.advance(&store.snapshot());
    assert!(index.matches(&store.snapshot()));
    let check = |index: &UsageIndex| {
        let snap = store.snapshot();
        let fresh = UsageIndex::new(&snap);
        for id in ["a", "b", "c", "d"] {
            assert_eq!(index.usage(id), fresh.usage(id), "node {id}");
            if let Some(u) = index.usage(id) {
                assert_eq!(*u, crate::NodeUsage::of_node(&snap, id));
            }
        }
    };
    check(&index);
    // Stops release, node changes and joins are picked up.
    update_alloc(&store, &plan.place[0].id, |a| {
        a.client_status = ALLOC_CLIENT_FAILED.into()
    });
    let mut b = node("b");
    b.drain = true;
    store
        .apply(vec![Op::PutNode(b), Op::PutNode(node("d"))])
        .unwrap();
    index.advance(&store.snapshot());
    check(&index);
    let e = eval("e2");
    let mut n = 0;
    let mut ids = || {
        n += 1;
        format!("x-{n}")
    };
    let mut env = Env::new(2, &mut ids, 7);
    env.usage = Some(&index);
    let plan = schedule(&store.snapshot(), &e, &mut env);
    assert!(plan.place.iter().all(|a| a.node_id != "b"));
    assert!(
        plan.conflicts_with(&store.snapshot(), Some(&index))
            .is_empty()
    );
    apply(&store, &plan);
    index.advance(&store.snapshot());
    check(&index);
}

#[test]
fn followups_due_close_together_share_a_time() {
    let t = 1_000 * SEC;
    let mut j = job(3, "raw_exec");
    j.task_groups[0].reschedule_policy = Some(ReschedulePolicy {
        delay: 60 * SEC,
        delay_function: "constant".into(),
        unlimited: true,
        ..Default::default()
    });
    let store = store_with(vec![node("a")], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    apply(&store, &plan);
    let fail = |i: usize, at: i64| {
        update_alloc(&store, &plan.place[i].id, |a| {
            a.client_status = ALLOC_CLIENT_FAILED.into();
            a.modify_time = at;
        })
    };
    fail(0, t);
    fail(1, t + 3 * SEC);
    fail(2, t + 20 * SEC);
    let plan2 = run_at(&store.snapshot(), &eval("e2"), t + SEC, Algorithm::Binpack);
    let times: Vec<i64> = plan2.followups.iter().map(|(_, at)| *at).collect();
    assert_eq!(times, [t + 60 * SEC, t + 60 * SEC, t + 80 * SEC]);
}

#[test]
fn a_plan_is_committed_in_part_when_some_nodes_filled_up() {
    let mut small = node("small");
    small.node_resources.memory.memory_mb = 100;
    let store = store_with(vec![small, node("big")], job(2, "raw_exec"));
    let snap = store.snapshot();
    let mut plan = run(&snap, &eval("e1"));
    assert_eq!(plan.place.len(), 2);
    // Meanwhile another job took the small node's memory.
    let mut other = plan.place[0].clone();
    other.id = "other".into();
    other.job_id = "other".into();
    other.node_id = "small".into();
    other
        .allocated_resources
        .tasks
        .values_mut()
        .for_each(|t| t.memory.memory_mb = 90);
    other.allocated_resources.shared.ports.clear();
    store.apply(vec![Op::PutAlloc(other)]).unwrap();
    let now = store.snapshot();
    // Bin-packing put one instance on the small node.
    let on_small = plan.place.iter().filter(|a| a.node_id == "small").count();
    assert_eq!(on_small, 1);
    let problems = plan.retain_valid(&now, None);
    assert!(
        problems.iter().any(|p| p.contains("no longer has room")),
        "{problems:?}"
    );
    assert!(plan.place.iter().all(|a| a.node_id == "big"));
    assert_eq!(plan.place.len(), 2 - on_small);
    // What is left holds, with or without an index.
    assert!(plan.conflicts(&now).is_empty());
    assert!(
        plan.conflicts_with(&now, Some(&UsageIndex::new(&now)))
            .is_empty()
    );
}

#[test]
fn an_update_that_no_longer_fits_its_node_is_destructive() {
    let mut a = node("a");
    a.node_class = "old".into();
    let mut b = node("b");
    b.node_class = "new".into();
    let mut j = job(1, "raw_exec");
    j.task_groups[0].constraints.push(Constraint {
        l_target: "${node.class}".into(),
        r_target: "old".into(),
        operand: "=".into(),
    });
    let store = store_with(vec![a, b], j);
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(placed_on(&plan), ["a"]);
    apply(&store, &plan);
    // Only the constraint changes (not destructive by itself), but node "a" no longer fits.
    update_job(&store, |j| {
        j.task_groups[0].constraints[0].r_target = "new".into()
    });
    let plan = run(&store.snapshot(), &eval("e2"));
    assert!(plan.updates.is_empty());
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(placed_on(&plan), ["b"]);
}
