//! Node operator verbs: drain and scheduling eligibility.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use flotilla_store::Op;
use flotilla_types::*;
use serde::{Deserialize, Serialize};

use crate::ApiState;
use crate::error::{ApiError, decode};
use crate::jobs::{new_id, now_nanos};
use crate::reads::{by_id_or_prefix, with_index};

/// Body of `POST /v1/node/:id/drain` (Nomad's `NodeUpdateDrainRequest`).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DrainRequest {
    /// `null` ends a drain.
    pub drain_spec: Option<DrainSpec>,
    /// With a `null` spec: make the node eligible again.
    pub mark_eligible: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DrainSpec {
    /// Nanoseconds; 0 = no deadline, negative = force now.
    pub deadline: i64,
    pub ignore_system_jobs: bool,
}

/// Answer of drain and eligibility updates (Nomad's `NodeDrainUpdateResponse`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeUpdateResponse {
    pub node_modify_index: u64,
    #[serde(rename = "EvalIDs")]
    pub eval_ids: Vec<String>,
    pub eval_create_index: u64,
    pub index: u64,
}

/// Evaluations for every job touched by a change of `node` (its own jobs, system jobs).
fn node_evals(
    state: &flotilla_store::State,
    node_id: &str,
    trigger: &str,
    now: i64,
) -> Vec<Evaluation> {
    state.node_change_evals(node_id, trigger, now, new_id)
}

fn respond(index: u64, evals: &[Evaluation]) -> Response {
    with_index(
        index,
        Json(NodeUpdateResponse {
            node_modify_index: index,
            eval_ids: evals.iter().map(|e| e.id.clone()).collect(),
            eval_create_index: index,
            index,
        }),
    )
}

pub async fn drain(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DrainRequest = decode(&body)?;
    let state = api.store.snapshot();
    let node = by_id_or_prefix(&state.nodes, &id, "node")?;
    let now = now_nanos();
    let mut n = (**node).clone();
    let mut ops = Vec::new();
    match req.drain_spec {
        Some(spec) => {
            n.drain = true;
            n.scheduling_eligibility = NODE_INELIGIBLE.to_string();
            n.drain_strategy = Some(DrainStrategy {
                deadline: spec.deadline,
                ignore_system_jobs: spec.ignore_system_jobs,
                force_deadline: match spec.deadline {
                    d if d < 0 => now,
                    0 => 0,
                    d => now.saturating_add(d),
                },
                started_at: now,
            });
            n.status_description = "node draining".to_string();
            // Flag everything movable for migration; the scheduler replaces it elsewhere.
            for a in state.allocs_by_node(&node.id).filter(|a| !a.terminal()) {
                let system = a.job.as_ref().is_some_and(|j| {
                    j.job_type == JOB_TYPE_SYSTEM || j.job_type == JOB_TYPE_SYSBATCH
                });
                if system && spec.ignore_system_jobs {
                    continue;
                }
                let mut a = (**a).clone();
                a.desired_transition.migrate = true;
                a.modify_time = now;
                ops.push(Op::PutAlloc(a));
            }
        }
        None => {
            n.drain = false;
            n.drain_strategy = None;
            if req.mark_eligible {
                n.scheduling_eligibility = NODE_ELIGIBLE.to_string();
            }
        }
    }
    let evals = node_evals(&state, &node.id, TRIGGER_NODE_DRAIN, now);
    ops.insert(0, Op::PutNode(n));
    ops.extend(evals.iter().cloned().map(Op::PutEval));
    let index = api.store.apply(ops)?;
    Ok(respond(index, &evals))
}

/// Body of `POST /v1/node/:id/eligibility`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct EligibilityRequest {
    pub eligibility: String,
}

pub async fn eligibility(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: EligibilityRequest = decode(&body)?;
    if req.eligibility != NODE_ELIGIBLE && req.eligibility != NODE_INELIGIBLE {
        return Err(ApiError::bad_request(format!(
            "Eligibility: {:?} is not valid (expected \"eligible\" or \"ineligible\")",
            req.eligibility
        )));
    }
    let state = api.store.snapshot();
    let node = by_id_or_prefix(&state.nodes, &id, "node")?;
    if node.drain && req.eligibility == NODE_ELIGIBLE {
        return Err(ApiError::bad_request(format!(
            "node {} is draining; end the drain before marking it eligible",
            node.name
        )));
    }
    let now = now_nanos();
    let mut n = (**node).clone();
    n.scheduling_eligibility = req.eligibility.clone();
    // Becoming eligible is new capacity: system jobs and blocked evaluations get a look.
    let evals = if req.eligibility == NODE_ELIGIBLE {
        node_evals(&state, &node.id, TRIGGER_NODE_UPDATE, now)
    } else {
        Vec::new()
    };
    let mut ops = vec![Op::PutNode(n)];
    ops.extend(evals.iter().cloned().map(Op::PutEval));
    if req.eligibility == NODE_ELIGIBLE {
        ops.extend(state.unblock_ops(now));
    }
    let index = api.store.apply(ops)?;
    Ok(respond(index, &evals))
}
