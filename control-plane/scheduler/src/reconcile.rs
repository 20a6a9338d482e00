use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_store::State;
use flotilla_types::*;

/// What must change for a job to match its specification.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Allocations to stop: the allocation, the desired status to give it, and why.
    pub stop: Vec<(Arc<Allocation>, &'static str, String)>,
    /// Allocations on nodes that are down or gone: marked lost (and stopped).
    pub lost: Vec<Arc<Allocation>>,
    /// Instances to place.
    pub place: Vec<Placement>,
}

/// One instance to place: its group and index (`web[2]`), and the allocation it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub group: String,
    pub index: u32,
    pub previous: Option<String>,
}

/// Compare the job's groups with the allocations that exist for it.
///
/// - A stopped or deleted job: every live allocation is stopped.
/// - An allocation whose node is down or unknown is lost and replaced.
/// - An allocation of an older job version is stopped and replaced (destructive update; rolling
///   deployments come with the `update` block).
/// - Indexes `0..count` are kept filled; allocations at an index ≥ count, or duplicates, stop.
/// - For service jobs, an allocation that completed is replaced; failed ones are left for the
///   reschedule policy (not replaced yet); batch allocations that completed are done.
pub fn reconcile(state: &State, job: Option<&Job>, namespace: &str, job_id: &str) -> Reconciled {
    let mut out = Reconciled::default();
    let live: Vec<&Arc<Allocation>> = state
        .allocs_by_job(namespace, job_id)
        .filter(|a| !a.desired_terminal())
        .collect();

    let Some(job) = job.filter(|j| !j.stop) else {
        for a in live {
            if !a.client_terminal() {
                out.stop.push((
                    (*a).clone(),
                    ALLOC_DESIRED_STOP,
                    "alloc not needed since job was stopped".into(),
                ));
            }
        }
        return out;
    };

    // Group the live allocations by task group and index.
    let mut by_group: BTreeMap<&str, BTreeMap<u32, Vec<&Arc<Allocation>>>> = BTreeMap::new();
    for a in &live {
        let index = a.index().unwrap_or(u32::MAX);
        by_group
            .entry(a.task_group.as_str())
            .or_default()
            .entry(index)
            .or_default()
            .push(a);
    }

    for (group_name, indexes) in &by_group {
        if job.group(group_name).is_none() {
            for a in indexes.values().flatten() {
                if !a.client_terminal() {
                    out.stop.push((
                        (*a).clone(),
                        ALLOC_DESIRED_STOP,
                        "alloc not needed since its group was removed from the job".into(),
                    ));
                }
            }
        }
    }

    for group in &job.task_groups {
        let indexes = by_group.get(group.name.as_str());
        for index in 0..group.count {
            let allocs = indexes.and_then(|m| m.get(&index));
            let mut filled = false;
            let mut previous = None;
            for a in allocs.into_iter().flatten() {
                let node_ok = state
                    .node(&a.node_id)
                    .is_some_and(|n| n.status != NODE_STATUS_DOWN);
                if !node_ok && !a.client_terminal() {
                    out.lost.push((*a).clone());
                    previous = Some(a.id.clone());
                    continue;
                }
                if a.client_status == ALLOC_CLIENT_FAILED {
                    // Left in place until the reschedule policy exists: counts as filled.
                    filled = true;
                    continue;
                }
                if a.client_status == ALLOC_CLIENT_COMPLETE || a.client_status == ALLOC_CLIENT_LOST
                {
                    if job.job_type == JOB_TYPE_BATCH || job.job_type == JOB_TYPE_SYSBATCH {
                        filled = true;
                    } else {
                        previous = Some(a.id.clone());
                    }
                    continue;
                }
                let outdated = a
                    .job
                    .as_ref()
                    .is_none_or(|j| j.job_modify_index != job.job_modify_index);
                if outdated {
                    out.stop.push((
                        (*a).clone(),
                        ALLOC_DESIRED_STOP,
                        "alloc is being updated due to job update".into(),
                    ));
                    previous = Some(a.id.clone());
                    continue;
                }
                if filled {
                    out.stop.push((
                        (*a).clone(),
                        ALLOC_DESIRED_STOP,
                        "alloc not needed: duplicate instance".into(),
                    ));
                    continue;
                }
                filled = true;
            }
            if !filled {
                out.place.push(Placement {
                    group: group.name.clone(),
                    index,
                    previous,
                });
            }
        }
        // Scale down: anything at an index beyond the count.
        if let Some(indexes) = indexes {
            for (_, allocs) in indexes.range(group.count..) {
                for a in allocs {
                    if !a.client_terminal() {
                        out.stop.push((
                            (*a).clone(),
                            ALLOC_DESIRED_STOP,
                            "alloc not needed due to job update".into(),
                        ));
                    }
                }
            }
        }
    }
    out
}
