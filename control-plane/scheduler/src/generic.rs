//! The service and batch scheduler (Nomad's `GenericScheduler`): reconcile, then place each
//! missing instance on the best of a bounded number of feasible nodes.

use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::context::Ctx;
use crate::reconcile::{DESC_LOST, DESC_RESCHEDULED, DESC_UPDATING, Placement, reconcile};
use crate::{Env, Plan, hash_str, record_failure, stopped};

pub(crate) fn schedule(
    state: &State,
    job: Option<Arc<Job>>,
    eval: &Evaluation,
    env: &mut Env<'_>,
) -> Plan {
    let mut plan = Plan {
        eval_id: eval.id.clone(),
        job: job.clone(),
        ..Default::default()
    };
    let rec = reconcile(state, job.as_deref(), eval, env.now);
    let mut released: Vec<Arc<Allocation>> = Vec::new();
    for (alloc, status, why) in rec.stop {
        plan.stop.push(stopped(&alloc, status, why, env.now));
        released.push(alloc);
    }
    for alloc in rec.lost {
        let mut a = stopped(&alloc, ALLOC_DESIRED_STOP, DESC_LOST.to_string(), env.now);
        a.client_status = ALLOC_CLIENT_LOST.to_string();
        plan.stop.push(a);
        released.push(alloc);
    }
    plan.followups = rec.followups;
    plan.deployment_updates = rec.cancel;
    let mut rollout = rec.rollout;
    if rollout.created
        && let Some(d) = rollout.deployment.as_mut()
    {
        d.id = (env.new_id)();
        plan.deployment = Some(d.clone());
    }
    // New and updated instances of a group join the deployment that is rolling out.
    let joins = |group: &str| {
        rollout
            .deployment
            .as_ref()
            .filter(|d| d.active() && d.task_groups.contains_key(group))
            .map(|d| d.id.clone())
    };
    let Some(job) = job.as_ref().filter(|j| !j.stop) else {
        return plan;
    };
    if rec.place.is_empty() && rec.inplace.is_empty() {
        return plan;
    }

    let seed = env.seed ^ hash_str(&eval.id);
    let mut ctx = Ctx::new(state, job, env.usage, env.algorithm, seed, &rec.live);
    for a in &released {
        ctx.release(a);
    }

    let mut place = rec.place;
    for a in rec.inplace {
        let Some(g) = job.task_groups.iter().position(|t| t.name == a.task_group) else {
            continue;
        };
        if let Some(a) = ctx.update_in_place(a, g, DESC_UPDATING, env.now, &mut plan) {
            place.push(Placement {
                group: a.task_group.clone(),
                index: a.index().unwrap_or(0),
                previous: Some(a),
                reschedule: None,
                canary: false,
            });
        }
    }

    let mut failed = vec![false; job.task_groups.len()];
    for p in place {
        let Some(g) = job.task_groups.iter().position(|t| t.name == p.group) else {
            continue;
        };
        if failed[g] {
            // Nomad stops trying a group once one of its instances found no node.
            record_failure(&mut plan, &p.group, AllocMetric::default());
            continue;
        }
        let penalty: Vec<String> = p
            .reschedule
            .as_ref()
            .map(|t| t.events.iter().map(|e| e.prev_node_id.clone()).collect())
            .unwrap_or_default();
        let mut metric = AllocMetric::default();
        let Some(i) = ctx.select(g, &penalty, &mut metric) else {
            metric.nodes_available = ctx.nodes_available();
            record_failure(&mut plan, &p.group, metric);
            failed[g] = true;
            continue;
        };
        let id = (env.new_id)();
        let name = format!("{}.{}[{}]", job.id, p.group, p.index);
        let Some(mut alloc) = ctx.new_alloc(i, g, id, &eval.id, name, env.now) else {
            let metric = AllocMetric {
                nodes_evaluated: 1,
                nodes_exhausted: 1,
                dimension_exhausted: [("network: no free dynamic ports".to_string(), 1)].into(),
                ..Default::default()
            };
            record_failure(&mut plan, &p.group, metric);
            continue;
        };
        if let Some(prev) = &p.previous {
            alloc.previous_allocation = prev.id.clone();
        }
        if let Some(id) = joins(&p.group) {
            alloc.deployment_id = id;
            alloc.deployment_status = Some(joined(env.now, p.canary));
        }
        if let Some(tracker) = p.reschedule {
            alloc.reschedule_tracker = Some(tracker);
            if let Some(prev) = &p.previous {
                let mut old = stopped(
                    prev,
                    ALLOC_DESIRED_STOP,
                    DESC_RESCHEDULED.to_string(),
                    env.now,
                );
                old.next_allocation = alloc.id.clone();
                plan.stop.push(old);
            }
        }
        ctx.commit(i, &alloc);
        plan.place.push(alloc);
    }
    // Updated in place to the new version: healthy again only once the watcher says so.
    for a in &mut plan.updates {
        if let Some(id) = joins(&a.task_group) {
            a.deployment_id = id;
            a.deployment_status = Some(joined(env.now, false));
        }
    }
    plan
}

/// The deployment status of an allocation joining a deployment at `now`: not yet judged, its
/// `healthy_deadline` counted from now.
fn joined(now: i64, canary: bool) -> AllocDeploymentStatus {
    AllocDeploymentStatus {
        healthy: None,
        timestamp: now,
        canary,
        modify_index: 0,
    }
}
