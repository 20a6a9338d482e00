//! `job plan`, `job dispatch` and `job periodic force`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine as _;
use flotilla_store::{JobKey, Op};
use flotilla_types::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ApiState;
use crate::error::{ApiError, decode};
use crate::jobs::{canonical_valid, check_path_id, new_id, now_nanos};
use crate::reads::with_index;

/// One changed field (Nomad's `FieldDiff`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct FieldDiff {
    /// `Added`, `Deleted` or `Edited`.
    #[serde(rename = "Type")]
    pub diff_type: String,
    pub name: String,
    pub old: String,
    pub new: String,
}

/// Differences of one task group (Nomad's `TaskGroupDiff`, with fields flattened).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupDiff {
    #[serde(rename = "Type")]
    pub diff_type: String,
    pub name: String,
    pub fields: Vec<FieldDiff>,
    /// What the scheduler would do: `place`, `stop`, `destructive-update`, `ignore` → count.
    pub updates: BTreeMap<String, u64>,
}

/// The job diff (Nomad's `JobDiff`, with fields flattened to dotted paths).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobDiff {
    #[serde(rename = "Type")]
    pub diff_type: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub fields: Vec<FieldDiff>,
    pub task_groups: Vec<GroupDiff>,
}

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
    pub warnings: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlanRequest {
    pub job: Job,
    #[serde(default)]
    pub diff: bool,
}

/// Flatten a JSON value into `path → scalar` pairs. Lists of named objects are keyed by name
/// (`Tasks[server]`) so reordering is not a change.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = item
                    .get("Name")
                    .or_else(|| item.get("Label"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string());
                flatten(&format!("{prefix}[{key}]"), item, out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Fields that are bookkeeping, not specification.
const IGNORED: &[&str] = &[
    "Status",
    "Version",
    "SubmitTime",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Stop",
];

fn spec_fields(job: Option<&Job>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(job) = job {
        let mut v = serde_json::to_value(job).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            for k in IGNORED {
                m.remove(*k);
            }
        }
        flatten("", &v, &mut out);
    }
    out
}

fn diff_maps(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    for (k, o) in old {
        match new.get(k) {
            None => out.push(FieldDiff {
                diff_type: "Deleted".into(),
                name: k.clone(),
                old: o.clone(),
                new: String::new(),
            }),
            Some(n) if n != o => out.push(FieldDiff {
                diff_type: "Edited".into(),
                name: k.clone(),
                old: o.clone(),
                new: n.clone(),
            }),
            _ => {}
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) {
            out.push(FieldDiff {
                diff_type: "Added".into(),
                name: k.clone(),
                old: String::new(),
                new: n.clone(),
            });
        }
    }
    out
}

fn kind(fields: &[FieldDiff], old_exists: bool, new_exists: bool) -> String {
    match (old_exists, new_exists) {
        (false, true) => "Added",
        (true, false) => "Deleted",
        _ if fields.is_empty() => "None",
        _ => "Edited",
    }
    .to_string()
}

/// Diff of two versions of a job, split into job-level fields and per-group fields.
pub fn job_diff(old: Option<&Job>, new: &Job) -> JobDiff {
    let all = diff_maps(&spec_fields(old), &spec_fields(Some(new)));
    let mut groups: BTreeMap<String, Vec<FieldDiff>> = BTreeMap::new();
    let mut fields = Vec::new();
    for f in all {
        match f
            .name
            .strip_prefix("TaskGroups[")
            .and_then(|r| r.split_once(']'))
        {
            Some((g, rest)) => groups.entry(g.to_string()).or_default().push(FieldDiff {
                name: rest.trim_start_matches('.').to_string(),
                ..f
            }),
            None => fields.push(f),
        }
    }
    let names: std::collections::BTreeSet<String> = old
        .into_iter()
        .flat_map(|j| j.task_groups.iter().map(|g| g.name.clone()))
        .chain(new.task_groups.iter().map(|g| g.name.clone()))
        .collect();
    let task_groups: Vec<GroupDiff> = names
        .into_iter()
        .map(|name| {
            let f = groups.remove(&name).unwrap_or_default();
            let old_exists = old.is_some_and(|j| j.group(&name).is_some());
            let new_exists = new.group(&name).is_some();
            GroupDiff {
                diff_type: kind(&f, old_exists, new_exists),
                name,
                fields: f,
                updates: BTreeMap::new(),
            }
        })
        .collect();
    let changed = !fields.is_empty() || task_groups.iter().any(|g| g.diff_type != "None");
    JobDiff {
        diff_type: if old.is_none() {
            "Added".into()
        } else if changed {
            "Edited".into()
        } else {
            "None".into()
        },
        id: new.id.clone(),
        fields,
        task_groups,
    }
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

    // Dry run: the real scheduler against a copy of the state holding the new version.
    let mut state = (*snapshot).clone();
    job.version = existing.as_ref().map_or(0, |j| j.version + 1);
    job.job_modify_index = if diff.diff_type == "None" {
        existing.as_ref().map_or(u64::MAX, |j| j.job_modify_index)
    } else {
        u64::MAX
    };
    state.jobs.insert(JobKey::of(&job), Arc::new(job.clone()));
    let now = now_nanos();
    let eval = Evaluation::for_job(&job, TRIGGER_JOB_REGISTER, new_id(), now);
    let mut ids = new_id;
    let mut env = flotilla_scheduler::Env::new(now, &mut ids, 1);
    let plan = flotilla_scheduler::schedule(&state, &eval, &mut env);

    let mut desired: BTreeMap<String, DesiredUpdates> = BTreeMap::new();
    for g in &job.task_groups {
        desired.entry(g.name.clone()).or_default();
    }
    for a in &plan.place {
        let d = desired.entry(a.task_group.clone()).or_default();
        if a.previous_allocation.is_empty() {
            d.place += 1
        } else {
            d.destructive_update += 1
        }
    }
    let replaced: std::collections::BTreeSet<&str> = plan
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
        d.ignore = live.saturating_sub(d.destructive_update + d.stop);
    }
    for gd in &mut diff.task_groups {
        if let Some(d) = desired.get(&gd.name) {
            for (k, v) in [
                ("place", d.place),
                ("stop", d.stop),
                ("destructive-update", d.destructive_update),
                ("ignore", d.ignore),
            ] {
                if v > 0 {
                    gd.updates.insert(k.to_string(), v);
                }
            }
        }
    }
    Ok(with_index(
        snapshot.index,
        Json(PlanResponse {
            annotations: PlanAnnotations {
                desired_tg_updates: desired,
            },
            failed_tg_allocs: plan.failed_tg_allocs,
            job_modify_index: existing.map_or(0, |j| j.job_modify_index),
            diff: req_diff.then_some(diff),
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

    #[test]
    fn diff_names_changed_fields_per_group() {
        let mut old = Job {
            id: "j".into(),
            ..Default::default()
        };
        old.task_groups.push(TaskGroup {
            name: "web".into(),
            count: 1,
            ..Default::default()
        });
        old.canonicalize();
        let mut new = old.clone();
        new.task_groups[0].count = 3;
        new.priority = 70;
        let d = job_diff(Some(&old), &new);
        assert_eq!(d.diff_type, "Edited");
        assert!(
            d.fields
                .iter()
                .any(|f| f.name == "Priority" && f.old == "50" && f.new == "70")
        );
        let g = &d.task_groups[0];
        assert_eq!(g.diff_type, "Edited");
        assert!(
            g.fields.iter().any(|f| f.name == "Count" && f.new == "3"),
            "{:?}",
            g.fields
        );
        assert_eq!(job_diff(Some(&old), &old).diff_type, "None");
        assert_eq!(job_diff(None, &old).diff_type, "Added");
    }
}
