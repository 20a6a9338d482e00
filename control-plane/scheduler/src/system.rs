//! The system and sysbatch scheduler (Nomad's `SystemScheduler`): one allocation of each group
//! on every eligible node that satisfies the job's constraints.
//!
//! Per node: a down (or unknown) node's allocations are lost; a draining node keeps its
//! allocations until they are marked for migration, then they stop; an ineligible (or not yet
//! ready) node keeps what it has and gets nothing new; allocations on nodes outside the job's
//! datacenters stop. Nodes
//! without the group's allocation get one, so a node that joins later gets its own in the next
//! evaluation and nodes that already have one are left alone. Sysbatch work that finished (or
//! failed) is not run again unless the job changes destructively.

use crate::fx::FxMap;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

use crate::context::Ctx;
use crate::reconcile::{
    DESC_DUPLICATE, DESC_GROUP_REMOVED, DESC_LOST, DESC_MIGRATING, DESC_NOT_NEEDED, DESC_UPDATING,
    destructive,
};
use crate::{Env, Plan, hash_str, record_failure, stopped};

/// What to do on one node for one group.
struct Want<'s> {
    node_id: &'s str,
    group: usize,
    previous: Option<Arc<Allocation>>,
}

fn outdated(a: &Allocation, job: &Job, group: &TaskGroup) -> Option<bool> {
    let Some(old_job) = a.job.as_deref() else {
        return Some(true);
    };
    if old_job.job_modify_index == job.job_modify_index {
        return None;
    }
    Some(
        old_job
            .group(&a.task_group)
            .is_none_or(|old| destructive(old_job, old, job, group)),
    )
}

pub(crate) fn schedule(state: &State, job: Arc<Job>, eval: &Evaluation, env: &mut Env<'_>) -> Plan {
    let mut plan = Plan {
        eval_id: eval.id.clone(),
        job: Some(job.clone()),
        ..Default::default()
    };
    let sysbatch = job.job_type == JOB_TYPE_SYSBATCH;
    let mut by_node: FxMap<&str, Vec<&Arc<Allocation>>> = FxMap::default();
    let mut live: Vec<Arc<Allocation>> = Vec::new();
    for a in state.allocs_by_job(&job.namespace, &job.id) {
        if !a.terminal() {
            live.push(a.clone());
        }
        by_node.entry(a.node_id.as_str()).or_default().push(a);
    }
    for allocs in by_node.values_mut() {
        allocs.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
    }

    let mut released: Vec<Arc<Allocation>> = Vec::new();
    let mut inplace: Vec<(Arc<Allocation>, usize)> = Vec::new();
    let mut wants: Vec<Want<'_>> = Vec::new();
    let mut stop = |plan: &mut Plan, a: &Arc<Allocation>, why: &str, lost: bool| {
        let mut s = stopped(a, ALLOC_DESIRED_STOP, why.to_string(), env.now);
        if lost {
            s.client_status = ALLOC_CLIENT_LOST.to_string();
        }
        plan.stop.push(s);
        released.push(a.clone());
    };

    // Every known node, then node ids that only allocations remember.
    let unknown: Vec<&str> = {
        let mut v: Vec<&str> = by_node
            .keys()
            .copied()
            .filter(|id| state.node(id).is_none())
            .collect();
        v.sort_unstable();
        v
    };
    let visits = state
        .nodes
        .iter()
        .map(|(id, n)| (id.as_str(), Some(&**n)))
        .chain(unknown.into_iter().map(|id| (id, None)));
    for (node_id, node) in visits {
        let allocs = by_node.get(node_id).map(Vec::as_slice).unwrap_or(&[]);
        let down = node.is_none_or(|n| n.status == NODE_STATUS_DOWN);
        // Ready, eligible and not draining; anything else that is not down keeps what it has
        // and gets nothing new (Nomad's "not ready" and draining nodes).
        let takes_work = node.is_some_and(|n| n.schedulable());
        let eligible = takes_work && node.is_some_and(|n| job.allows_datacenter(&n.datacenter));

        for a in allocs {
            if !a.terminal() && job.group(&a.task_group).is_none() {
                stop(&mut plan, a, DESC_GROUP_REMOVED, false);
            }
        }
        for (g, group) in job.task_groups.iter().enumerate() {
            let mut have = false;
            let mut previous: Option<&Arc<Allocation>> = None;
            for a in allocs.iter().filter(|a| a.task_group == group.name) {
                if a.terminal() {
                    previous = Some(a);
                    continue;
                }
                if have {
                    stop(&mut plan, a, DESC_DUPLICATE, false);
                    continue;
                }
                if a.desired_transition.migrate {
                    stop(&mut plan, a, DESC_MIGRATING, false);
                    continue;
                }
                if down {
                    stop(&mut plan, a, DESC_LOST, true);
                    continue;
                }
                if !takes_work {
                    have = true;
                    continue;
                }
                if !eligible {
                    stop(&mut plan, a, DESC_NOT_NEEDED, false);
                    continue;
                }
                match outdated(a, &job, group) {
                    Some(true) => {
                        stop(&mut plan, a, DESC_UPDATING, false);
                        previous = Some(a);
                        continue;
                    }
                    Some(false) => inplace.push(((*a).clone(), g)),
                    None => {}
                }
                have = true;
            }
            if have || !eligible {
                continue;
            }
            if sysbatch
                && let Some(done) = previous.filter(|p| p.client_terminal())
                && outdated(done, &job, group) != Some(true)
            {
                // Finished (or failed) and the job has not changed: done on this node.
                continue;
            }
            wants.push(Want {
                node_id,
                group: g,
                previous: previous.cloned(),
            });
        }
    }

    if wants.is_empty() && inplace.is_empty() {
        return plan;
    }
    let seed = env.seed ^ hash_str(&eval.id);
    let mut ctx = Ctx::new(state, &job, env.usage, env.algorithm, seed, &live);
    for a in &released {
        ctx.release(a);
    }
    for (a, g) in inplace {
        ctx.update_in_place(a, g, DESC_NOT_NEEDED, env.now, &mut plan);
    }
    for w in wants {
        let Some(i) = ctx.find(w.node_id) else {
            continue;
        };
        let group = &job.task_groups[w.group];
        let mut metric = AllocMetric {
            nodes_evaluated: 1,
            ..Default::default()
        };
        if !ctx.feasible(i, w.group, &mut metric) {
            if metric.nodes_filtered > 0 {
                // The node does not satisfy the job's constraints: not meant to run here.
                continue;
            }
            metric.nodes_available = ctx.nodes_available();
            record_failure(&mut plan, &group.name, metric);
            continue;
        }
        let id = (env.new_id)();
        let name = format!("{}.{}[0]", job.id, group.name);
        let Some(mut alloc) = ctx.new_alloc(i, w.group, id, &eval.id, name, env.now) else {
            continue;
        };
        if let Some(prev) = &w.previous {
            alloc.previous_allocation = prev.id.clone();
        }
        ctx.commit(i, &alloc);
        plan.place.push(alloc);
    }
    plan
}
