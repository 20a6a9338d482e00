use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use flotilla_store::{JobKey, Op};
use flotilla_types::*;
use serde::Deserialize;

use crate::ApiState;
use crate::diff::job_diff;
use crate::error::{ApiError, decode};
use crate::reads::{BlockingQuery, block, with_index};
use flotilla_types::JobDiff;

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Compute writes from the latest state and apply them with no other write in between, so a
/// check and the write it guards see the same records (the server's deployment watcher and
/// scheduler write concurrently). `f`'s error is returned and nothing is written.
pub(crate) fn apply_checked<T>(
    api: &ApiState,
    mut f: impl FnMut(&flotilla_store::State) -> Result<(Vec<Op>, T), ApiError>,
) -> Result<(u64, T), ApiError> {
    let mut out = None;
    let index = api.store.apply_with(&mut |state| match f(state) {
        Ok((ops, t)) => {
            out = Some(Ok(t));
            ops
        }
        Err(e) => {
            out = Some(Err(e));
            Vec::new()
        }
    })?;
    let t = out.unwrap_or_else(|| Err(ApiError::internal("the store did not run the update")))?;
    Ok((index, t))
}

#[derive(Debug, Deserialize, Default)]
pub struct NamespaceQuery {
    pub namespace: Option<String>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub purge: Option<bool>,
}

pub(crate) fn ns(q: &NamespaceQuery) -> &str {
    q.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

/// A job as the API shows it: with its status computed from its allocations.
pub(crate) fn present(state: &flotilla_store::State, job: &Job) -> Job {
    let mut j = job.clone();
    j.status = state.job_status(job).to_string();
    j
}

pub async fn list(
    State(api): State<ApiState>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Response {
    let state = block(&api, &b).await;
    let prefix = q.prefix.clone().unwrap_or_default();
    let namespace = q.namespace.clone();
    let jobs: Vec<JobListStub> = state
        .jobs
        .values()
        .filter(|j| {
            namespace
                .as_deref()
                .is_none_or(|n| n == "*" || n == j.namespace)
        })
        .filter(|j| j.id.starts_with(&prefix))
        .map(|j| JobListStub::from(&present(&state, j)))
        .collect();
    with_index(state.index, Json(jobs))
}

pub async fn get(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let job = state
        .job(ns(&q), &id)
        .ok_or_else(|| ApiError::not_found(format!("job \"{id}\" not found")))?;
    Ok(with_index(state.index, Json(present(&state, job))))
}

pub async fn parse(body: Bytes) -> Result<Response, ApiError> {
    let req: JobsParseRequest = decode(&body)?;
    if req.job_hcl.trim().is_empty() {
        return Err(ApiError::bad_request(
            "JobHCL: is empty; expected the text of a jobspec",
        ));
    }
    let parsed = flotilla_jobspec::parse(&req.job_hcl, "JobHCL")
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut job = parsed.job;
    if req.canonicalize {
        job.canonicalize();
    }
    Ok(Json(job).into_response())
}

/// Nomad's `JobValidateResponse`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ValidateResponse {
    driver_config_validated: bool,
    validation_errors: Vec<String>,
    error: String,
    warnings: String,
}

pub async fn validate(body: Bytes) -> Result<Response, ApiError> {
    let req: JobRegisterRequest = decode(&body)?;
    let mut job = req.job;
    job.canonicalize();
    let diags = flotilla_jobspec::validate(&job);
    let (errors, warnings): (Vec<_>, Vec<_>) = diags
        .into_iter()
        .partition(|d| d.severity == flotilla_jobspec::Severity::Error);
    let errors: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
    Ok(Json(ValidateResponse {
        driver_config_validated: errors.is_empty(),
        error: errors.join("\n"),
        validation_errors: errors,
        warnings: warnings
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    })
    .into_response())
}

pub async fn register(State(api): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let req: JobRegisterRequest = decode(&body)?;
    register_job(&api, req.job, None)
}

pub async fn register_at(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: JobRegisterRequest = decode(&body)?;
    register_job(&api, req.job, Some(id))
}

/// The job's ID must match the one in the URL path.
pub(crate) fn check_path_id(job: &Job, path_id: &str) -> Result<(), ApiError> {
    if job.id != path_id {
        return Err(ApiError::bad_request(format!(
            "Job.ID: \"{}\" does not match the job ID in the path, \"{path_id}\"",
            job.id
        )));
    }
    Ok(())
}

/// Canonicalize a submitted job and reject it (400, every error listed) if it is invalid.
pub(crate) fn canonical_valid(job: &mut Job) -> Result<(), ApiError> {
    job.canonicalize();
    let errors: Vec<String> = flotilla_jobspec::validate(job)
        .into_iter()
        .filter(|d| d.severity == flotilla_jobspec::Severity::Error)
        .map(|d| d.to_string())
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "job validation failed:\n{}",
        errors.join("\n")
    )))
}

/// The parts of a job that make it a new version when they change.
fn spec_of(job: &Job) -> Job {
    Job {
        status: String::new(),
        version: 0,
        stable: false,
        submit_time: 0,
        create_index: 0,
        modify_index: 0,
        job_modify_index: 0,
        ..job.clone()
    }
}

fn register_job(
    api: &ApiState,
    mut job: Job,
    path_id: Option<String>,
) -> Result<Response, ApiError> {
    if job.id.is_empty() {
        return Err(ApiError::bad_request("Job.ID: missing job ID"));
    }
    if let Some(id) = path_id {
        check_path_id(&job, &id)?;
    }
    canonical_valid(&mut job)?;
    let state = api.store.snapshot();
    let existing = state.job(&job.namespace, &job.id);
    let now = now_nanos();
    job.stop = false;
    job.submit_time = now;
    let changed = existing.is_none_or(|old| spec_of(old) != spec_of(&job));
    match existing {
        Some(old) if !changed => {
            job.version = old.version;
            job.stable = old.stable;
            job.job_modify_index = old.job_modify_index;
        }
        Some(old) => {
            job.version = old.version + 1;
            job.stable = false;
            job.job_modify_index = 0; // stamped by the store
        }
        None => {
            job.version = 0;
            job.stable = false;
            job.job_modify_index = 0;
        }
    }
    let eval = Evaluation::for_job(&job, TRIGGER_JOB_REGISTER, new_id(), now);
    let eval_id = eval.id.clone();
    let old_modify = job.job_modify_index;
    let index = api.store.apply(vec![Op::PutJob(job), Op::PutEval(eval)])?;
    Ok(with_index(
        index,
        Json(JobRegisterResponse {
            eval_id,
            eval_create_index: index,
            job_modify_index: if changed { index } else { old_modify },
            warnings: String::new(),
            index,
        }),
    ))
}

pub async fn deregister(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let state = api.store.snapshot();
    let job = state
        .job(ns(&q), &id)
        .ok_or_else(|| ApiError::not_found(format!("job \"{id}\" not found")))?;
    let now = now_nanos();
    let eval = Evaluation::for_job(job, TRIGGER_JOB_DEREGISTER, new_id(), now);
    let eval_id = eval.id.clone();
    let ops = if q.purge.unwrap_or(false) {
        vec![Op::DeleteJob(JobKey::of(job)), Op::PutEval(eval)]
    } else {
        let mut stopped = (**job).clone();
        if !stopped.stop {
            stopped.stop = true;
            stopped.version += 1;
            stopped.stable = false;
            stopped.job_modify_index = 0;
        }
        vec![Op::PutJob(stopped), Op::PutEval(eval)]
    };
    let index = api.store.apply(ops)?;
    Ok(with_index(
        index,
        Json(JobRegisterResponse {
            eval_id,
            eval_create_index: index,
            job_modify_index: index,
            warnings: String::new(),
            index,
        }),
    ))
}

/// `?diffs=true` on `GET /v1/job/:id/versions`.
#[derive(Debug, Deserialize, Default)]
pub struct VersionsQuery {
    #[serde(default)]
    pub diffs: bool,
}

/// [`JobVersionsResponse`] with Nomad's `Diffs`: `Diffs[i]` is what version `Versions[i]`
/// changed from `Versions[i + 1]`, the one before it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct VersionsResponse {
    #[serde(flatten)]
    versions: JobVersionsResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    diffs: Option<Vec<JobDiff>>,
}

/// `GET /v1/job/:id/versions`: the kept versions of a job, newest first.
pub async fn versions(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    Query(v): Query<VersionsQuery>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    if state.job(ns(&q), &id).is_none() {
        return Err(ApiError::not_found(format!("job \"{id}\" not found")));
    }
    let versions: Vec<Job> = state
        .job_versions(ns(&q), &id)
        .map(|j| (**j).clone())
        .collect();
    let diffs = v.diffs.then(|| {
        versions
            .windows(2)
            .map(|w| job_diff(Some(&w[1]), &w[0]))
            .collect()
    });
    Ok(with_index(
        state.index,
        Json(VersionsResponse {
            versions: JobVersionsResponse {
                versions,
                index: state.index,
            },
            diffs,
        }),
    ))
}

/// `POST /v1/job/:id/revert`: register a kept version again, as the next version.
pub async fn revert(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: JobRevertRequest = decode(&body)?;
    if !req.job_id.is_empty() && req.job_id != id {
        return Err(ApiError::bad_request(format!(
            "JobID: \"{}\" does not match the job ID in the path, \"{id}\"",
            req.job_id
        )));
    }
    let namespace = ns(&q);
    let wanted = req.job_version;
    let (index, eval_id) = apply_checked(&api, |state| {
        let current = state
            .job(namespace, &id)
            .ok_or_else(|| ApiError::not_found(format!("job \"{id}\" not found")))?;
        if wanted == current.version {
            return Err(ApiError::bad_request(format!(
                "JobVersion: job \"{id}\" is already at version {wanted}; choose an earlier version"
            )));
        }
        if let Some(prior) = req.enforce_prior_version
            && prior != current.version
        {
            return Err(ApiError::bad_request(format!(
                "EnforcePriorVersion: job \"{id}\" is at version {}, not {prior}",
                current.version
            )));
        }
        let eval_id = new_id();
        let ops = state
            .revert_ops(
                namespace,
                &id,
                wanted,
                TRIGGER_JOB_REVERT,
                now_nanos(),
                eval_id.clone(),
            )
            .ok_or_else(|| {
                let kept: Vec<String> = state
                    .job_versions(namespace, &id)
                    .map(|j| j.version.to_string())
                    .collect();
                ApiError::bad_request(format!(
                    "JobVersion: job \"{id}\" has no version {wanted} (kept versions: {})",
                    kept.join(", ")
                ))
            })?;
        Ok((ops, eval_id))
    })?;
    Ok(with_index(
        index,
        Json(JobRegisterResponse {
            eval_id,
            eval_create_index: index,
            job_modify_index: index,
            warnings: String::new(),
            index,
        }),
    ))
}
