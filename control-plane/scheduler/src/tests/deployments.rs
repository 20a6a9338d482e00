//! Rollouts under deployments: `max_parallel`, canaries, promotion, blue/green, failure and
//! cancellation.

use flotilla_store::{MemStore, Op, Store};
use flotilla_types::*;

use super::{eval, job, node, run, store_with, update_alloc};
use crate::Plan;

fn rolling(count: u32, canary: u32) -> Job {
    let mut j = job(count, "raw_exec");
    j.task_groups[0].update = Some(UpdateStrategy {
        max_parallel: 1,
        health_check: "checks".into(),
        canary,
        ..Default::default()
    });
    j
}

/// Commit a plan with its deployment writes, as the server's applier does.
fn commit(store: &MemStore, plan: &Plan) {
    let mut ops: Vec<Op> = plan
        .stop
        .iter()
        .chain(plan.updates.iter())
        .chain(plan.place.iter())
        .cloned()
        .map(Op::PutAlloc)
        .collect();
    ops.extend(plan.deployment.iter().cloned().map(Op::PutDeployment));
    ops.extend(
        plan.deployment_updates
            .iter()
            .cloned()
            .map(Op::PutDeployment),
    );
    store.apply(ops).unwrap();
}

/// A new version of the job: the task's environment changes (a destructive update).
fn new_version(store: &MemStore, v: &str) {
    let mut j = (**store.snapshot().job("default", "hello").unwrap()).clone();
    j.task_groups[0].tasks[0].env.insert("V".into(), v.into());
    j.version += 1;
    j.job_modify_index = 0;
    store.apply(vec![Op::PutJob(j)]).unwrap();
}

fn set_healthy(store: &MemStore, ids: &[String]) {
    for id in ids {
        update_alloc(store, id, |a| {
            a.client_status = ALLOC_CLIENT_RUNNING.into();
            let s = a.deployment_status.get_or_insert_with(Default::default);
            s.healthy = Some(true);
        });
    }
}

fn update_deployment(store: &MemStore, id: &str, f: impl FnOnce(&mut Deployment)) {
    let mut d = (**store.snapshot().deployment(id).unwrap()).clone();
    f(&mut d);
    store.apply(vec![Op::PutDeployment(d)]).unwrap();
}

fn ids(allocs: &[Allocation]) -> Vec<String> {
    allocs.iter().map(|a| a.id.clone()).collect()
}

/// Register, place, and finish the first deployment: `count` healthy instances of version 0.
fn running(store: &MemStore) -> Deployment {
    let plan = run(&store.snapshot(), &eval("e0"));
    let d = plan
        .deployment
        .clone()
        .expect("first version rolls out under a deployment");
    assert_eq!(
        d.task_groups["web"].desired_canaries, 0,
        "no canaries without an old version"
    );
    commit(store, &plan);
    set_healthy(store, &ids(&plan.place));
    update_deployment(store, &d.id, |d| {
        d.status = DEPLOYMENT_STATUS_SUCCESSFUL.into()
    });
    d
}

#[test]
fn rolling_update_replaces_max_parallel_at_a_time() {
    let store = store_with(vec![node("a")], rolling(4, 0));
    let first = running(&store);
    assert!(first.task_groups["web"].desired_total == 4);
    new_version(&store, "2");

    let plan = run(&store.snapshot(), &eval("e1"));
    let d = plan
        .deployment
        .clone()
        .expect("a new version gets a deployment");
    assert_eq!(d.job_version, 1);
    assert_eq!(plan.stop.len(), 1, "max_parallel = 1: {:?}", plan.stop);
    assert_eq!(plan.place.len(), 1);
    assert_eq!(plan.place[0].deployment_id, d.id);
    assert!(!plan.place[0].is_canary());
    commit(&store, &plan);

    // Nothing more until the new instance is healthy.
    let plan = run(&store.snapshot(), &eval("e2"));
    assert!(plan.place.is_empty() && plan.stop.is_empty(), "{plan:?}");
    assert!(plan.deployment.is_none(), "the deployment is reused");

    let mut replaced = 1;
    let mut newest = store
        .snapshot()
        .allocs
        .values()
        .filter(|a| a.deployment_id == d.id)
        .map(|a| a.id.clone())
        .collect::<Vec<_>>();
    while replaced < 4 {
        set_healthy(&store, &newest);
        let plan = run(&store.snapshot(), &eval(&format!("e-{replaced}")));
        assert_eq!(plan.stop.len(), 1);
        assert_eq!(plan.place.len(), 1);
        commit(&store, &plan);
        newest = ids(&plan.place);
        replaced += 1;
    }
    set_healthy(&store, &newest);
    assert!(run(&store.snapshot(), &eval("done")).is_noop());
}

#[test]
fn canary_waits_for_promotion_then_takes_over_its_index() {
    let store = store_with(vec![node("a")], rolling(3, 1));
    running(&store);
    new_version(&store, "2");

    let plan = run(&store.snapshot(), &eval("e1"));
    let d = plan.deployment.clone().unwrap();
    assert_eq!(d.task_groups["web"].desired_canaries, 1);
    assert!(plan.stop.is_empty(), "canaries run beside the old version");
    assert_eq!(plan.place.len(), 1);
    let canary = plan.place[0].clone();
    assert!(canary.is_canary());
    assert_eq!(canary.name, "hello.web[0]");
    commit(&store, &plan);

    // Healthy but not promoted: nothing moves.
    set_healthy(&store, std::slice::from_ref(&canary.id));
    let plan = run(&store.snapshot(), &eval("e2"));
    assert!(plan.place.is_empty() && plan.stop.is_empty(), "{plan:?}");

    update_deployment(&store, &d.id, |d| {
        d.task_groups.get_mut("web").unwrap().promoted = true
    });
    let plan = run(&store.snapshot(), &eval("e3"));
    let replaced: Vec<&Allocation> = plan
        .stop
        .iter()
        .filter(|a| a.desired_description == crate::reconcile::DESC_REPLACED_BY_CANARY)
        .collect();
    assert_eq!(replaced.len(), 1, "{:?}", plan.stop);
    assert_eq!(replaced[0].name, "hello.web[0]");
    // The promoted canary is healthy, so one more old instance is replaced right away.
    assert_eq!(plan.place.len(), 1);
    assert_ne!(plan.place[0].name, "hello.web[0]");
    assert!(!plan.place[0].is_canary());
}

#[test]
fn blue_green_places_a_full_set_then_stops_the_old_one_at_promotion() {
    let store = store_with(vec![node("a")], rolling(2, 2));
    running(&store);
    new_version(&store, "green");
    let plan = run(&store.snapshot(), &eval("e1"));
    let d = plan.deployment.clone().unwrap();
    assert_eq!(plan.place.len(), 2);
    assert!(plan.place.iter().all(Allocation::is_canary));
    assert!(plan.stop.is_empty());
    commit(&store, &plan);
    set_healthy(&store, &ids(&plan.place));

    update_deployment(&store, &d.id, |d| {
        d.task_groups.get_mut("web").unwrap().promoted = true
    });
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.stop.len(), 2, "every blue instance stops at once");
    assert!(plan.place.is_empty());
}

#[test]
fn a_failed_deployment_stops_rolling_and_its_canaries() {
    let store = store_with(vec![node("a")], rolling(3, 1));
    running(&store);
    new_version(&store, "bad");
    let plan = run(&store.snapshot(), &eval("e1"));
    let d = plan.deployment.clone().unwrap();
    commit(&store, &plan);
    update_deployment(&store, &d.id, |d| {
        d.status = DEPLOYMENT_STATUS_FAILED.into()
    });

    let plan = run(&store.snapshot(), &eval("e2"));
    assert!(plan.place.is_empty(), "{:?}", plan.place);
    assert_eq!(plan.stop.len(), 1);
    assert!(plan.stop[0].is_canary());
    assert_eq!(
        plan.stop[0].desired_description,
        crate::reconcile::DESC_CANARY_ENDED
    );
}

#[test]
fn a_newer_version_or_a_stop_cancels_the_running_deployment() {
    let store = store_with(vec![node("a")], rolling(2, 0));
    running(&store);
    new_version(&store, "2");
    let plan = run(&store.snapshot(), &eval("e1"));
    let d2 = plan.deployment.clone().unwrap();
    commit(&store, &plan);

    new_version(&store, "3");
    let plan = run(&store.snapshot(), &eval("e2"));
    assert_eq!(plan.deployment_updates.len(), 1);
    assert_eq!(plan.deployment_updates[0].id, d2.id);
    assert_eq!(
        plan.deployment_updates[0].status,
        DEPLOYMENT_STATUS_CANCELLED
    );
    assert_eq!(
        plan.deployment_updates[0].status_description,
        DEPLOYMENT_DESC_NEWER_JOB
    );
    let d3 = plan.deployment.clone().unwrap();
    assert_eq!(d3.job_version, 2);
    commit(&store, &plan);

    let mut j = (**store.snapshot().job("default", "hello").unwrap()).clone();
    j.stop = true;
    j.version += 1;
    store.apply(vec![Op::PutJob(j)]).unwrap();
    let plan = run(&store.snapshot(), &eval("e3"));
    assert_eq!(plan.deployment_updates.len(), 1);
    assert_eq!(plan.deployment_updates[0].id, d3.id);
    assert_eq!(
        plan.deployment_updates[0].status_description,
        DEPLOYMENT_DESC_STOPPED_JOB
    );
}

#[test]
fn without_max_parallel_every_instance_is_replaced_at_once() {
    let mut j = rolling(3, 0);
    j.task_groups[0].update.as_mut().unwrap().max_parallel = 0;
    let store = store_with(vec![node("a")], j);
    let plan = run(&store.snapshot(), &eval("e0"));
    assert!(plan.deployment.is_none());
    commit(&store, &plan);
    new_version(&store, "2");
    let plan = run(&store.snapshot(), &eval("e1"));
    assert_eq!(plan.stop.len(), 3);
    assert_eq!(plan.place.len(), 3);
    assert!(plan.place.iter().all(|a| a.deployment_id.is_empty()));
}
