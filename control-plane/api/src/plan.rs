//! `job plan`, `job dispatch` and `job periodic force`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine as _;
use flotilla_store::{JobKey, Op};
use flotilla_types::*;
use serde::{Deserialize, Serialize};

use crate::ApiState;
use crate::diff::job_diff;
use crate::error::{ApiError, decode};
use crate::jobs::{canonical_valid, check_path_id, new_id, now_nanos};
use crate::reads::with_index;
use flotilla_types::{DIFF_NONE, JobDiff};

/// Nomad's `DesiredUpdates`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub migrate: u64,
    pub stop: u64,
    pub in_place_update: u64,
    pub destructive_update: u64,
    pub canary: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlanAnnotations {
    #[serde(rename = "DesiredTGUpdates")]
    pub desired_tg_updates: BTreeMap<String, DesiredUpdates>,
}

/// How one group's new version would roll out, from its `update` block.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PlannedRollout {
    /// `initial` (first placement: all at once, health tracked), `rolling`, `canary` or
    /// `blue-green` (as many canaries as the count).
    pub strategy: String,
    pub max_parallel: u32,
    pub canaries: u32,
    pub auto_promote: bool,
    pub auto_revert: bool,
    /// For people, e.g. `rolling update, 2 at a time, auto-revert on failure`.
    pub description: String,
}

pub const ROLLOUT_INITIAL: &str = "initial";
pub const ROLLOUT_ROLLING: &str = "rolling";
pub const ROLLOUT_CANARY: &str = "canary";
pub const ROLLOUT_BLUE_GREEN: &str = "blue-green";

/// What a deployment of `new` would do, given the group's registered version `old` (`None`
/// when the group is new). `None` when the group does not roll out through deployments.
pub fn planned_rollout(old: Option<&TaskGroup>, new: &TaskGroup) -> Option<PlannedRollout> {
    let u = new.rolling_update()?;
    let promotion = if u.auto_promote {
        "promoted automatically once healthy"
    } else {
        "then `flotilla deployment promote`"
    };
    let (strategy, mut description) = match old {
        // Nomad places a new group at once; canaries only guard updates.
        None => (
            ROLLOUT_INITIAL,
            format!("all {} placed at once, health tracked", new.count),
        ),
        Some(_) if u.canary == 0 => (
            ROLLOUT_ROLLING,
            format!("rolling update, {} at a time", u.max_parallel),
        ),
        Some(_) if u.canary >= new.count => (
            ROLLOUT_BLUE_GREEN,
            format!(
                "blue/green: {} canaries beside the old version, {promotion}",
                u.canary
            ),
        ),
        Some(_) => (
            ROLLOUT_CANARY,
            format!(
                "{} canar{} first, {promotion}; then rolling update, {} at a time",
                u.canary,
                if u.canary == 1 { "y" } else { "ies" },
                u.max_parallel
            ),
        ),
    };
    if u.auto_revert {
        description.push_str(", auto-revert on failure");
    }
    Some(PlannedRollout {
        strategy: strategy.to_string(),
        max_parallel: u.max_parallel,
        canaries: u.canary,
        auto_promote: u.auto_promote,
        auto_revert: u.auto_revert,
        description,
    })
}

/// Answer of `POST /v1/job/:id/plan` (Nomad's `JobPlanResponse`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlanResponse {
    pub annotations: PlanAnnotations,
    #[serde(rename = "FailedTGAllocs")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    pub job_modify_index: u64,
    /// Present when the request asked for it (`"Diff": true`).
    pub diff: Option<JobDiff>,
    /// Per group, how the deployment this registration starts would roll out (empty when
    /// nothing changes or no group has an `update` block).
    pub deployment: BTreeMap<String, PlannedRollout>,
    pub warnings: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlanRequest {
    pub job: Job,
    #[serde(default)]
    pub diff: bool,
}

/// Count what the dry-run `plan` does to each group of `job`.
fn desired_updates(
    state: &flotilla_store::State,
    job: &Job,
    plan: &flotilla_scheduler::Plan,
) -> BTreeMap<String, DesiredUpdates> {
    let mut desired: BTreeMap<String, DesiredUpdates> = BTreeMap::new();
    for g in &job.task_groups {
        desired.entry(g.name.clone()).or_default();
    }
    for a in &plan.place {
        let d = desired.entry(a.task_group.clone()).or_default();
        if a.is_canary() {
            d.canary += 1
        } else if a.previous_allocation.is_empty() {
            d.place += 1
        } else {
            d.destructive_update += 1
        }
    }
    for a in &plan.updates {
        desired
            .entry(a.task_group.clone())
            .or_default()
            .in_place_update += 1;
    }
    let replaced: BTreeSet<&str> = plan
        .place
        .iter()
        .map(|a| a.previous_allocation.as_str())
        .collect();
    for a in &plan.stop {
        if !replaced.contains(a.id.as_str()) {
            desired.entry(a.task_group.clone()).or_default().stop += 1;
        }
    }
    for g in &job.task_groups {
        let live = state
            .allocs_by_job(&job.namespace, &job.id)
            .filter(|a| a.task_group == g.name && !a.terminal())
            .count() as u64;
        let d = desired.entry(g.name.clone()).or_default();
        d.ignore = live.saturating_sub(d.destructive_update + d.stop + d.in_place_update);
    }
    desired
}

/// `POST /v1/job/:id/plan`: what registering this job would change, without changing anything.
pub async fn plan(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PlanRequest = decode(&body)?;
    let req_diff = req.diff;
    let mut job = req.job;
    check_path_id(&job, &id)?;
    canonical_valid(&mut job)?;
    let snapshot = api.store.snapshot();
    let existing = snapshot.job(&job.namespace, &job.id).cloned();
    let mut diff = job_diff(existing.as_deref(), &job);
    let changed = diff.diff_type != DIFF_NONE || existing.as_ref().is_some_and(|j| j.stop);

    // Dry run: the real scheduler against a copy of the state holding the new version.
    let mut state = (*snapshot).clone();
    job.version = existing.as_ref().map_or(0, |j| j.version + 1);
    job.job_modify_index = if changed {
        u64::MAX
    } else {
        existing.as_ref().map_or(u64::MAX, |j| j.job_modify_index)
    };
    state.jobs.insert(JobKey::of(&job), Arc::new(job.clone()));
    let now = now_nanos();
    let eval = Evaluation::for_job(&job, TRIGGER_JOB_REGISTER, new_id(), now);
    let mut ids = new_id;
    let mut env = flotilla_scheduler::Env::new(now, &mut ids, 1);
    let plan = flotilla_scheduler::schedule(&state, &eval, &mut env);

    let desired = desired_updates(&state, &job, &plan);
    for gd in &mut diff.task_groups {
        if let Some(d) = desired.get(&gd.name) {
            // Nomad's words for each kind of update.
            for (k, v) in [
                ("create", d.place),
                ("destroy", d.stop),
                ("create/destroy update", d.destructive_update),
                ("in-place update", d.in_place_update),
                ("canary", d.canary),
                ("ignore", d.ignore),
            ] {
                if v > 0 {
                    gd.updates.insert(k.to_string(), v);
                }
            }
        }
    }
    let deployment = if changed && job.job_type == JOB_TYPE_SERVICE {
        job.task_groups
            .iter()
            .filter_map(|g| {
                let old = existing.as_ref().and_then(|j| j.group(&g.name));
                Some((g.name.clone(), planned_rollout(old, g)?))
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok(with_index(
        snapshot.index,
        Json(PlanResponse {
            annotations: PlanAnnotations {
                desired_tg_updates: desired,
            },
            failed_tg_allocs: plan.failed_tg_allocs,
            job_modify_index: existing.map_or(0, |j| j.job_modify_index),
            diff: req_diff.then_some(diff),
            deployment,
            warnings: String::new(),
        }),
    ))
}

/// Body of `POST /v1/job/:id/dispatch`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DispatchRequest {
    /// Base64, as Nomad.
    pub payload: String,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DispatchResponse {
    #[serde(rename = "DispatchedJobID")]
    pub dispatched_job_id: String,
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_create_index: u64,
    pub index: u64,
}

/// Largest payload accepted, like Nomad's 16 KiB limit.
const MAX_PAYLOAD: usize = 16 * 1024;

pub async fn dispatch(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DispatchRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DispatchRequest::default()
    } else {
        decode(&body)?
    };
    let payload = base64::engine::general_purpose::STANDARD
        .decode(req.payload.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("Payload: not valid base64: {e}")))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(ApiError::bad_request(format!(
            "Payload: {} bytes is over the {MAX_PAYLOAD}-byte limit",
            payload.len()
        )));
    }
    let state = api.store.snapshot();
    let parent = state
        .job(DEFAULT_NAMESPACE, &id)
        .ok_or_else(|| ApiError::not_found(format!("job \"{id}\" not found")))?;
    if parent.stop {
        return Err(ApiError::bad_request(format!(
            "job \"{id}\" is stopped; run it again before dispatching"
        )));
    }
    parent
        .check_dispatch(&req.meta, !payload.is_empty())
        .map_err(ApiError::bad_request)?;
    let now = now_nanos();
    let suffix: String = new_id()
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    let mut child =
        parent.dispatch_child(now / NANOS_PER_SEC, &suffix, &req.meta, req.payload.clone());
    child.submit_time = now;
    let eval = Evaluation::for_job(&child, TRIGGER_JOB_DISPATCH, new_id(), now);
    let (child_id, eval_id) = (child.id.clone(), eval.id.clone());
    let index = api
        .store
        .apply(vec![Op::PutJob(child), Op::PutEval(eval)])?;
    Ok(with_index(
        index,
        Json(DispatchResponse {
            dispatched_job_id: child_id,
            eval_id,
            eval_create_index: index,
            job_create_index: index,
            index,
        }),
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeriodicForceResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub index: u64,
}

/// `POST /v1/job/:id/periodic/force`: launch a periodic job's child now.
pub async fn periodic_force(
    State(api): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let state = api.store.snapshot();
    let parent = state
        .job(DEFAULT_NAMESPACE, &id)
        .ok_or_else(|| ApiError::not_found(format!("job \"{id}\" not found")))?;
    if !parent.is_periodic() {
        return Err(ApiError::bad_request(format!(
            "job \"{id}\" is not periodic"
        )));
    }
    let now = now_nanos();
    let mut child = parent.periodic_child(now / NANOS_PER_SEC);
    if state.job(&child.namespace, &child.id).is_some() {
        return Err(ApiError::bad_request(format!(
            "job \"{}\" was already launched this second",
            child.id
        )));
    }
    child.submit_time = now;
    let eval = Evaluation::for_job(&child, TRIGGER_PERIODIC_JOB, new_id(), now);
    let eval_id = eval.id.clone();
    let index = api
        .store
        .apply(vec![Op::PutJob(child), Op::PutEval(eval)])?;
    Ok(with_index(
        index,
        Json(PeriodicForceResponse {
            eval_id,
            eval_create_index: index,
            index,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(count: u32, update: Option<UpdateStrategy>) -> TaskGroup {
        TaskGroup {
            name: "web".into(),
            count,
            update,
            ..Default::default()
        }
    }

    fn update(max_parallel: u32, canary: u32, auto_promote: bool) -> Option<UpdateStrategy> {
        Some(UpdateStrategy {
            max_parallel,
            canary,
            auto_promote,
            ..Default::default()
        })
    }

    #[test]
    fn rollout_per_update_block() {
        let old = group(3, None);
        let strategy = |new: &TaskGroup, old: Option<&TaskGroup>| {
            planned_rollout(old, new).map(|r| (r.strategy, r.description))
        };
        assert_eq!(strategy(&group(3, None), Some(&old)), None);
        // max_parallel = 0 is no rolling update (Nomad).
        assert_eq!(strategy(&group(3, update(0, 1, false)), Some(&old)), None);
        assert_eq!(
            strategy(&group(3, update(2, 0, false)), Some(&old)),
            Some((
                ROLLOUT_ROLLING.to_string(),
                "rolling update, 2 at a time".to_string()
            ))
        );
        assert_eq!(
            strategy(&group(3, update(1, 1, false)), Some(&old)),
            Some((
                ROLLOUT_CANARY.to_string(),
                "1 canary first, then `flotilla deployment promote`; then rolling update, 1 at a time"
                    .to_string()
            ))
        );
        assert_eq!(
            strategy(&group(3, update(3, 3, true)), Some(&old)),
            Some((
                ROLLOUT_BLUE_GREEN.to_string(),
                "blue/green: 3 canaries beside the old version, promoted automatically once healthy"
                    .to_string()
            ))
        );
        assert_eq!(
            strategy(&group(3, update(1, 1, false)), None).map(|s| s.0),
            Some(ROLLOUT_INITIAL.to_string())
        );
        let mut reverting = update(1, 0, false);
        if let Some(u) = reverting.as_mut() {
            u.auto_revert = true;
        }
        assert!(
            planned_rollout(Some(&old), &group(3, reverting))
                .is_some_and(|r| r.auto_revert && r.description.ends_with("auto-revert on failure"))
        );
    }
}
