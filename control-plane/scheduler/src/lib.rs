//! The scheduler: pure placement logic in Nomad's model.
//!
//! [`schedule`] reads a [`State`] snapshot and one [`Evaluation`] and returns a [`Plan`]: the
//! allocations to create, the ones to stop, the ones to update in place, the failed ones to
//! replace later (follow-ups), plus, for task groups that could not be placed, an
//! [`AllocMetric`] saying why. It performs no I/O; the current time, new ids, the random seed and
//! the scoring algorithm come in through [`Env`], so the same inputs always give the same plan.
//!
//! Job types follow Nomad: `service` and `batch` jobs go through the generic scheduler
//! ([`reconcile`] then placement), `system` and `sysbatch` jobs get one allocation per group on
//! every eligible, feasible node.
//!
//! The pieces:
//! - [`reconcile`] compares what a service or batch job wants with what exists: missing
//!   instances, surplus ones, outdated versions (destructive or in place), instances on lost
//!   nodes or marked for migration, and failed ones under the group's reschedule policy.
//! - feasibility filters nodes: status, datacenter, constraints (job, group, task; all of
//!   Nomad's operators with `${attr.*}`, `${meta.*}`, `${node.*}` interpolation), drivers,
//!   host volumes, `distinct_hosts`, `distinct_property`, CPU, memory, ports, and Connect
//!   upstream listeners (the node proxy opens them on the node, so two allocations binding the
//!   same address and port cannot share one; looked at only for groups with upstreams). Results
//!   that depend only on a node's computed class are cached per class and group.
//! - ranking scores feasible nodes and averages the scores (Nomad's normalisation): bin-packing
//!   or spread fit ([`Algorithm`]), anti-affinity between instances of a group, a penalty for
//!   nodes a rescheduled allocation failed on, node affinities and `spread` blocks. As in
//!   Nomad's limit iterator, only a bounded number of feasible nodes (`log2` of the cluster
//!   size for services) are scored per placement, drawn from a shuffled order that continues
//!   across placements.
//! - [`UsageIndex`] keeps per-node usage in step with the store so a placement never rescans a
//!   node's allocations; without one, usage is computed for the nodes an evaluation touches.
//!
//! The server's plan applier re-checks the plan against the latest state before committing it
//! (optimistic concurrency): [`Plan::conflicts`] says whether it still holds, and
//! [`Plan::retain_valid`] keeps the part that does (Nomad commits plans partially, node by node).

mod constraint;
mod context;
mod fx;
mod generic;
mod plan;
mod rank;
mod reconcile;
mod rollout;
mod system;
mod usage;
mod version;

use std::collections::BTreeMap;

use flotilla_store::State;
use flotilla_types::*;

pub use plan::Plan;
pub use reconcile::{Placement, Reconciled, reconcile};
pub use usage::{NodeUsage, UsageIndex};

/// How feasible nodes are scored for fit (Nomad's scheduler configuration `scheduler_algorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Fill busy nodes first, leaving whole nodes free for big allocations.
    #[default]
    Binpack,
    /// Prefer the least-used node, spreading load.
    Spread,
}

/// What the scheduler needs from the outside world, passed in so it stays deterministic.
pub struct Env<'a> {
    /// Now, in nanoseconds since the Unix epoch.
    pub now: i64,
    /// Produces a fresh unique id (allocation ids).
    pub new_id: &'a mut dyn FnMut() -> String,
    /// Seed for the order in which nodes are tried.
    pub seed: u64,
    /// Bin-packing (default) or spread scoring.
    pub algorithm: Algorithm,
    /// Node usage kept in step with the store, used when it [matches](UsageIndex::matches) the
    /// state given to [`schedule`]; otherwise usage is computed from the state. Either way the
    /// plan is the same; the index only makes it cheaper.
    pub usage: Option<&'a UsageIndex>,
}

impl<'a> Env<'a> {
    /// An environment with the default algorithm and no usage index.
    pub fn new(now: i64, new_id: &'a mut dyn FnMut() -> String, seed: u64) -> Self {
        Self {
            now,
            new_id,
            seed,
            algorithm: Algorithm::default(),
            usage: None,
        }
    }
}

/// Plan the work of `eval` against `state`.
pub fn schedule(state: &State, eval: &Evaluation, env: &mut Env<'_>) -> Plan {
    let job = state.job(&eval.namespace, &eval.job_id).cloned();
    // Periodic and parameterized jobs are templates: their children run, they never do. Treat
    // them as stopped, so any allocation they somehow have is stopped too.
    let job = job.map(|j| {
        if j.is_periodic() || j.is_parameterized() {
            let mut t = (*j).clone();
            t.stop = true;
            std::sync::Arc::new(t)
        } else {
            j
        }
    });
    match job {
        Some(job)
            if !job.stop
                && (job.job_type == JOB_TYPE_SYSTEM || job.job_type == JOB_TYPE_SYSBATCH) =>
        {
            system::schedule(state, job, eval, env)
        }
        job => generic::schedule(state, job, eval, env),
    }
}

/// A copy of `a` with a new desired status.
pub(crate) fn stopped(a: &Allocation, status: &str, why: String, now: i64) -> Allocation {
    let mut s = a.clone();
    s.desired_status = status.to_string();
    s.desired_description = why;
    s.modify_time = now;
    s
}

/// Note one instance of `group` that could not be placed: the first failure's metric is kept and
/// later ones are counted in `coalesced_failures`, as Nomad does.
pub(crate) fn record_failure(plan: &mut Plan, group: &str, metric: AllocMetric) {
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

#[cfg(test)]
mod tests;
