//! The scheduler: pure placement logic in Nomad's model.
//!
//! [`schedule`] reads a [`State`] snapshot and one [`Evaluation`] and returns a [`Plan`]: the
//! allocations to create and the ones to stop, plus, for task groups that could not be placed,
//! an [`AllocMetric`] saying why. It performs no I/O; the current time, new ids and the random
//! seed come in through [`Env`], so the same inputs always give the same plan.
//!
//! The pieces: [`reconcile`] compares what the job wants with what exists (missing instances,
//! surplus ones, outdated versions, instances on lost nodes); [`feasible`] filters nodes (status,
//! datacenter, drivers, resources, ports); [`rank`] scores the feasible ones (bin-packing plus
//! anti-affinity between instances of a group). The server's plan applier re-checks the plan
//! against the latest state before committing it (optimistic concurrency), see
//! [`Plan::conflicts`].

mod feasible;
mod plan;
mod rank;
mod reconcile;

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

pub use feasible::{NodeUsage, feasible, node_usage};
pub use plan::Plan;
pub use rank::rank;
pub use reconcile::{Reconciled, reconcile};

/// What the scheduler needs from the outside world, passed in so it stays deterministic.
pub struct Env<'a> {
    /// Now, in nanoseconds since the Unix epoch.
    pub now: i64,
    /// Produces a fresh unique id (allocation ids).
    pub new_id: &'a mut dyn FnMut() -> String,
    /// Seed for the order in which nodes are tried.
    pub seed: u64,
}

/// Plan the work of `eval` against `state`.
pub fn schedule(state: &State, eval: &Evaluation, env: &mut Env<'_>) -> Plan {
    let job = state.job(&eval.namespace, &eval.job_id).cloned();
    let mut plan = Plan {
        eval_id: eval.id.clone(),
        job: job.clone(),
        ..Default::default()
    };
    let rec = reconcile(state, job.as_deref(), &eval.namespace, &eval.job_id);
    for (alloc, status, why) in rec.stop {
        let mut a = (*alloc).clone();
        a.desired_status = status.to_string();
        a.desired_description = why;
        a.modify_time = env.now;
        plan.stop.push(a);
    }
    for alloc in rec.lost {
        let mut a = (*alloc).clone();
        a.desired_status = ALLOC_DESIRED_STOP.to_string();
        a.desired_description = "alloc is lost since its node is down".to_string();
        a.client_status = ALLOC_CLIENT_LOST.to_string();
        a.modify_time = env.now;
        plan.stop.push(a);
    }
    let Some(job) = job else {
        return plan;
    };
    if rec.place.is_empty() {
        return plan;
    }

    let mut usage = node_usage(state, &plan);
    let mut nodes: Vec<&Arc<Node>> = state.nodes.values().collect();
    shuffle(&mut nodes, env.seed ^ hash_str(&eval.id));

    for want in rec.place {
        let Some(group) = job.group(&want.group) else {
            continue;
        };
        let mut metric = AllocMetric::default();
        let candidates = feasible(&job, group, &nodes, &usage, &mut metric);
        let Some(node) = rank(&job, group, &candidates, &usage) else {
            record_failure(&mut plan, &group.name, metric);
            continue;
        };
        let id = (env.new_id)();
        let node_use = usage.entry(node.id.clone()).or_default();
        let Some(ports) = node_use.assign_ports(group, node, hash_str(&id)) else {
            let metric = AllocMetric {
                nodes_evaluated: 1,
                nodes_exhausted: 1,
                dimension_exhausted: [("network: no free dynamic ports".to_string(), 1)].into(),
                ..Default::default()
            };
            record_failure(&mut plan, &group.name, metric);
            continue;
        };
        let alloc = Allocation {
            id,
            eval_id: eval.id.clone(),
            name: format!("{}.{}[{}]", job.id, group.name, want.index),
            namespace: job.namespace.clone(),
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            job_id: job.id.clone(),
            job: Some(job.clone()),
            task_group: group.name.clone(),
            allocated_resources: AllocatedResources {
                tasks: group
                    .tasks
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            AllocatedTaskResources {
                                cpu: AllocatedCpu {
                                    cpu_shares: t.resources.cpu,
                                },
                                memory: AllocatedMemory {
                                    memory_mb: t.resources.memory_mb,
                                },
                            },
                        )
                    })
                    .collect(),
                shared: AllocatedSharedResources { ports },
            },
            desired_status: ALLOC_DESIRED_RUN.to_string(),
            client_status: ALLOC_CLIENT_PENDING.to_string(),
            previous_allocation: want.previous.unwrap_or_default(),
            create_time: env.now,
            modify_time: env.now,
            ..Default::default()
        };
        node_use.add(&alloc);
        plan.place.push(alloc);
    }
    plan
}

/// Note one instance of `group` that could not be placed: the first failure's metric is kept and
/// later ones are counted in `coalesced_failures`, as Nomad does.
fn record_failure(plan: &mut Plan, group: &str, metric: AllocMetric) {
    *plan.queued.entry(group.to_string()).or_default() += 1;
    plan.failed_tg_allocs
        .entry(group.to_string())
        .and_modify(|m| m.coalesced_failures += 1)
        .or_insert(metric);
}

/// Per-group count of instances the plan could not place.
pub type Queued = BTreeMap<String, u32>;

/// FNV-1a, for deterministic seeds from ids.
pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Deterministic Fisher–Yates shuffle (xorshift64*), so ties between equal nodes do not always go
/// to the same node.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545F4914F6CDD1D);
        let j = (r % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests;
