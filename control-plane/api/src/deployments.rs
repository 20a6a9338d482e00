//! Deployments (Nomad's `/v1/deployment…` and `/v1/job/:id/deployment(s)`): reads, and the
//! operator's verbs on a rollout — promote its canaries, pause or resume it, fail it (which
//! reverts the job when its groups ask for `auto_revert`).
//!
//! Each verb is one store transaction: the updated deployment together with the evaluation
//! that lets the scheduler act on it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use flotilla_store::{Op, State as Snapshot};
use flotilla_types::*;

use crate::ApiState;
use crate::error::{ApiError, decode};
use crate::jobs::{NamespaceQuery, apply_checked, new_id, now_nanos, ns};
use crate::reads::{BlockingQuery, alloc_stubs, block, by_id_or_prefix, with_index};

/// `GET /v1/deployments?prefix=&namespace=`: newest first. Without `namespace`, or with `*`,
/// every namespace.
pub async fn list(
    State(api): State<ApiState>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Response {
    let state = block(&api, &b).await;
    let prefix = q.prefix.as_deref().unwrap_or_default();
    let namespace = q.namespace.as_deref().filter(|n| *n != "*");
    let mut out: Vec<&Arc<Deployment>> = state
        .deployments
        .values()
        .filter(|d| namespace.is_none_or(|n| n == d.namespace))
        .filter(|d| d.id.starts_with(prefix))
        .collect();
    out.sort_by(|a, b| (b.create_index, &b.id).cmp(&(a.create_index, &a.id)));
    with_index(state.index, Json(out))
}

/// `GET /v1/deployment/:id` (id or unique prefix).
pub async fn get(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let d = by_id_or_prefix(&state.deployments, &id, "deployment")?;
    Ok(with_index(state.index, Json(&**d)))
}

/// `GET /v1/deployment/allocations/:id`: the allocations the deployment placed.
pub async fn allocations(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let d = by_id_or_prefix(&state.deployments, &id, "deployment")?;
    let allocs = alloc_stubs(
        state
            .allocs_by_job(&d.namespace, &d.job_id)
            .filter(|a| a.deployment_id == d.id),
    );
    Ok(with_index(state.index, Json(allocs)))
}

/// `GET /v1/job/:id/deployments`: newest first.
pub async fn by_job(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    job_exists(&state, ns(&q), &id)?;
    let out = state.deployments_by_job(ns(&q), &id);
    Ok(with_index(state.index, Json(out)))
}

/// `GET /v1/job/:id/deployment`: the newest deployment, or `null`.
pub async fn latest(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    job_exists(&state, ns(&q), &id)?;
    let out = state.latest_deployment(ns(&q), &id);
    Ok(with_index(state.index, Json(out)))
}

fn job_exists(state: &Snapshot, namespace: &str, id: &str) -> Result<(), ApiError> {
    match state.job(namespace, id) {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("job \"{id}\" not found"))),
    }
}

/// The body's `DeploymentID`, when given, must be the one in the path.
fn check_body_id(body_id: &str, d: &Deployment) -> Result<(), ApiError> {
    if body_id.is_empty() || body_id == d.id {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "DeploymentID: \"{body_id}\" does not match the deployment in the path, \"{}\"",
        d.id
    )))
}

/// Only a running or paused deployment can change.
fn check_active(d: &Deployment, verb: &str) -> Result<(), ApiError> {
    if d.active() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "deployment \"{}\" is {}; only a running or paused deployment can be {verb}",
        d.id, d.status
    )))
}

/// An evaluation of the deployment's job, so the scheduler acts on the change.
fn watcher_eval(state: &Snapshot, d: &Deployment, now: i64) -> Result<Evaluation, ApiError> {
    let job = state.job(&d.namespace, &d.job_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "job \"{}\" of deployment \"{}\" not found",
            d.job_id, d.id
        ))
    })?;
    Ok(Evaluation::for_job(
        job,
        TRIGGER_DEPLOYMENT_WATCHER,
        new_id(),
        now,
    ))
}

/// The answer to a verb: `eval_id` is empty when it wrote no evaluation.
fn respond(index: u64, eval_id: String, reverted_job_version: Option<u64>) -> Response {
    with_index(
        index,
        Json(DeploymentUpdateResponse {
            eval_create_index: if eval_id.is_empty() { 0 } else { index },
            eval_id,
            deployment_modify_index: index,
            reverted_job_version,
            index,
        }),
    )
}

/// The groups a promotion covers (`All`: those whose canaries await promotion), or why it is
/// refused: the deployment must be running, every named group must be in it and have
/// canaries, and every covered group must have as many healthy canaries as it wants.
pub(crate) fn promotable_groups(
    state: &Snapshot,
    d: &Deployment,
    req: &DeploymentPromoteRequest,
) -> Result<Vec<String>, String> {
    if d.status != DEPLOYMENT_STATUS_RUNNING {
        return Err(format!(
            "deployment \"{}\" is {}; only a running deployment can be promoted",
            d.id, d.status
        ));
    }
    let groups: Vec<String> = if req.all {
        // Groups promoted already are left alone.
        d.task_groups
            .keys()
            .filter(|g| d.awaiting_promotion(g))
            .cloned()
            .collect()
    } else {
        for g in &req.groups {
            match d.task_groups.get(g) {
                None => {
                    return Err(format!(
                        "deployment \"{}\" has no task group \"{g}\" (groups: {})",
                        d.id,
                        d.task_groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                Some(s) if s.desired_canaries == 0 => {
                    return Err(format!(
                        "deployment \"{}\": task group \"{g}\" has no canaries to promote",
                        d.id
                    ));
                }
                Some(_) => {}
            }
        }
        req.groups.clone()
    };
    if groups.is_empty() {
        return Err(format!(
            "deployment \"{}\" has no canaries awaiting promotion",
            d.id
        ));
    }
    let unhealthy: Vec<String> = groups
        .iter()
        .filter_map(|g| {
            let s = d.task_groups.get(g)?;
            let healthy = state.healthy_canaries(s);
            (healthy < s.desired_canaries as usize).then(|| {
                format!(
                    "task group \"{g}\" has {healthy}/{} healthy canaries",
                    s.desired_canaries
                )
            })
        })
        .collect();
    if !unhealthy.is_empty() {
        return Err(format!(
            "deployment \"{}\" cannot be promoted: {}",
            d.id,
            unhealthy.join("; ")
        ));
    }
    Ok(groups)
}

/// `POST /v1/deployment/promote/:id` with `{"All": true}` or `{"Groups": [...]}`.
pub async fn promote(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DeploymentPromoteRequest = decode(&body)?;
    if !req.all && req.groups.is_empty() {
        return Err(ApiError::bad_request(
            "All or Groups: give \"All\": true or the task groups to promote",
        ));
    }
    let now = now_nanos();
    let (index, (eval_id, groups)) = apply_checked(&api, |state| {
        let d = by_id_or_prefix(&state.deployments, &id, "deployment")?;
        check_body_id(&req.deployment_id, d)?;
        let groups = promotable_groups(state, d, &req).map_err(ApiError::bad_request)?;
        let mut next = (**d).clone();
        for g in &groups {
            if let Some(s) = next.task_groups.get_mut(g) {
                s.promoted = true;
            }
        }
        next.status_description = DEPLOYMENT_DESC_RUNNING.to_string();
        next.modify_time = now;
        let eval = watcher_eval(state, d, now)?;
        let eval_id = eval.id.clone();
        Ok((
            vec![Op::PutDeployment(next), Op::PutEval(eval)],
            (eval_id, groups),
        ))
    })?;
    tracing::info!(deployment = %id, groups = ?groups, "deployment promoted");
    Ok(respond(index, eval_id, None))
}

/// `POST /v1/deployment/pause/:id` with `{"Pause": true|false}`.
pub async fn pause(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DeploymentPauseRequest = decode(&body)?;
    let now = now_nanos();
    let (index, eval_id) = apply_checked(&api, |state| {
        let d = by_id_or_prefix(&state.deployments, &id, "deployment")?;
        check_body_id(&req.deployment_id, d)?;
        check_active(d, if req.pause { "paused" } else { "resumed" })?;
        let mut next = (**d).clone();
        next.modify_time = now;
        if req.pause {
            next.status = DEPLOYMENT_STATUS_PAUSED.to_string();
            next.status_description = DEPLOYMENT_DESC_PAUSED.to_string();
            return Ok((vec![Op::PutDeployment(next)], String::new()));
        }
        next.status = DEPLOYMENT_STATUS_RUNNING.to_string();
        next.status_description = DEPLOYMENT_DESC_RUNNING.to_string();
        let eval = watcher_eval(state, d, now)?;
        let eval_id = eval.id.clone();
        Ok((vec![Op::PutDeployment(next), Op::PutEval(eval)], eval_id))
    })?;
    tracing::info!(deployment = %id, pause = req.pause, "deployment paused or resumed");
    Ok(respond(index, eval_id, None))
}

/// `POST /v1/deployment/fail/:id`: mark the rollout failed; groups with `auto_revert` take
/// the job back to its latest stable version.
pub async fn fail(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DeploymentFailRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeploymentFailRequest::default()
    } else {
        decode(&body)?
    };
    let now = now_nanos();
    let (index, (eval_id, reverted_to)) = apply_checked(&api, |state| {
        let d = by_id_or_prefix(&state.deployments, &id, "deployment")?;
        check_body_id(&req.deployment_id, d)?;
        check_active(d, "failed")?;
        let failed = state.fail_deployment_ops(d, DEPLOYMENT_DESC_FAILED_BY_USER, now, new_id());
        // No evaluation when the job is gone.
        let has_eval = failed.ops.iter().any(|op| matches!(op, Op::PutEval(_)));
        let eval_id = if has_eval {
            failed.eval_id
        } else {
            String::new()
        };
        Ok((failed.ops, (eval_id, failed.reverted_to)))
    })?;
    tracing::info!(deployment = %id, reverted_to = ?reverted_to, "deployment failed by operator");
    Ok(respond(index, eval_id, reverted_to))
}
