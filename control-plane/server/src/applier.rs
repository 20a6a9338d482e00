//! Commits plans that still hold against the latest state.

use std::sync::Mutex;

use flotilla_scheduler::Plan;
use flotilla_store::{Op, Store, StoreError};
use flotilla_types::*;

/// Serialises commits: validation and write happen as one step.
static APPLY: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("plan is stale: {0:?}")]
    Stale(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Commit `plan` for `eval` in one transaction if it still holds: the new and stopped
/// allocations, the deployment it starts or cancels, the catalog entries of stopped ones removed (so traffic leaves them before they
/// stop), the evaluation completed, and, if anything could not be placed, a blocked evaluation
/// that waits for capacity.
pub fn commit(store: &dyn Store, eval: &Evaluation, plan: &Plan) -> Result<(), CommitError> {
    let _guard = APPLY.lock().unwrap_or_else(|e| e.into_inner());
    let state = store.snapshot();
    let problems = plan.conflicts(&state);
    if !problems.is_empty() {
        return Err(CommitError::Stale(problems));
    }
    let now = crate::now_nanos();
    let mut ops = Vec::new();
    for a in &plan.stop {
        for svc in state.services_by_alloc(&a.id) {
            ops.push(Op::DeleteService(svc.id.clone()));
        }
        ops.push(Op::PutAlloc(a.clone()));
    }
    ops.extend(plan.place.iter().cloned().map(Op::PutAlloc));
    if let Some(d) = &plan.deployment {
        ops.push(Op::PutDeployment(d.clone()));
    }
    // Cancellations: the status change only, on the deployment as it is now.
    for d in &plan.deployment_updates {
        if let Some(current) = state.deployment(&d.id).filter(|c| c.active()) {
            let mut c = (**current).clone();
            c.status = d.status.clone();
            c.status_description = d.status_description.clone();
            c.modify_time = now;
            ops.push(Op::PutDeployment(c));
        }
    }

    // Failed allocations to replace later: one delayed evaluation per distinct time, recorded
    // on the allocations so the next plan does not schedule another.
    let mut updates: std::collections::BTreeMap<String, Allocation> = plan
        .updates
        .iter()
        .map(|a| (a.id.clone(), a.clone()))
        .collect();
    if let Some(job) = &plan.job {
        let mut by_time: std::collections::BTreeMap<i64, Vec<&String>> = Default::default();
        for (alloc_id, at) in &plan.followups {
            by_time.entry(*at).or_default().push(alloc_id);
        }
        for (at, alloc_ids) in by_time {
            let mut follow = crate::new_eval(job, TRIGGER_RETRY_FAILED_ALLOC, now);
            follow.wait_until = at;
            follow.previous_eval = eval.id.clone();
            for id in alloc_ids {
                let base = updates
                    .get(id)
                    .cloned()
                    .or_else(|| state.alloc(id).map(|a| (**a).clone()));
                if let Some(mut a) = base {
                    a.followup_eval_id = follow.id.clone();
                    a.modify_time = now;
                    updates.insert(a.id.clone(), a);
                }
            }
            ops.push(Op::PutEval(follow));
        }
    }
    ops.extend(updates.into_values().map(Op::PutAlloc));

    let mut done = eval.clone();
    done.status = EVAL_STATUS_COMPLETE.to_string();
    done.modify_time = now;
    done.failed_tg_allocs = plan.failed_tg_allocs.clone();
    if !plan.queued.is_empty()
        && let Some(job) = &plan.job
    {
        // Only one blocked evaluation per job.
        let existing = state.evals.values().any(|e| {
            e.job_id == job.id && e.namespace == job.namespace && e.status == EVAL_STATUS_BLOCKED
        });
        if !existing {
            let mut blocked = crate::new_eval(job, TRIGGER_QUEUED_ALLOCS, now);
            blocked.status = EVAL_STATUS_BLOCKED.to_string();
            blocked.previous_eval = eval.id.clone();
            blocked.failed_tg_allocs = plan.failed_tg_allocs.clone();
            done.blocked_eval = blocked.id.clone();
            ops.push(Op::PutEval(blocked));
        }
        let total: u32 = plan.queued.values().sum();
        done.status_description = format!("{total} allocation(s) could not be placed");
    }
    ops.push(Op::PutEval(done));
    store.apply(ops)?;
    Ok(())
}

/// Mark an evaluation failed with a reason.
pub fn fail(store: &dyn Store, eval: &Evaluation, why: &str) -> Result<(), StoreError> {
    let mut e = eval.clone();
    e.status = EVAL_STATUS_FAILED.to_string();
    e.status_description = why.to_string();
    e.modify_time = crate::now_nanos();
    store.apply(vec![Op::PutEval(e)]).map(|_| ())
}
