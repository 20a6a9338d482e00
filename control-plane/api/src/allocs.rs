//! Allocation operator verbs: stop (and reschedule), and forwarding restarts to the node.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use flotilla_store::Op;
use flotilla_types::*;
use serde::Serialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::jobs::{new_id, now_nanos};
use crate::reads::{by_id_or_prefix, forward_to_node, with_index};

/// Answer of `POST /v1/allocation/:id/stop` (Nomad's `AllocStopResponse`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StopResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub index: u64,
}

/// Stop an allocation; as in Nomad it is replaced (the scheduler migrates it).
pub async fn stop(
    State(api): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let state = api.store.snapshot();
    let alloc = by_id_or_prefix(&state.allocs, &id, "allocation")?;
    if alloc.terminal() {
        return Err(ApiError::bad_request(format!(
            "allocation {} is already {} (desired {})",
            alloc.short_id(),
            alloc.client_status,
            alloc.desired_status
        )));
    }
    let job = state.job(&alloc.namespace, &alloc.job_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "job \"{}\" of allocation {} not found",
            alloc.job_id,
            alloc.short_id()
        ))
    })?;
    let now = now_nanos();
    let mut a = (**alloc).clone();
    a.desired_transition.migrate = true;
    a.modify_time = now;
    let eval = Evaluation::for_job(job, TRIGGER_ALLOC_FAILURE, new_id(), now);
    let eval_id = eval.id.clone();
    let index = api.store.apply(vec![Op::PutAlloc(a), Op::PutEval(eval)])?;
    Ok(with_index(index, Json(StopResponse { eval_id, index })))
}

/// Forward `POST /v1/client/allocation/:id/restart` to the agent running the allocation.
pub async fn restart(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    forward_to_node(&api, &id, "allocation", "/restart", None, Some(body)).await
}
