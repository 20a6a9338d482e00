use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use flotilla_store::State as Snapshot;
use flotilla_types::*;
use serde::Deserialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::jobs::{NamespaceQuery, ns};

/// Nomad's blocking-query parameters.
#[derive(Debug, Deserialize, Default)]
pub struct BlockingQuery {
    pub index: Option<u64>,
    pub wait: Option<String>,
}

/// Nomad's default and maximum wait for blocking queries.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A snapshot, after waiting for the index to pass `?index=` when one is given.
pub async fn block(api: &ApiState, q: &BlockingQuery) -> Arc<Snapshot> {
    if let Some(after) = q.index.filter(|i| *i > 0) {
        let wait = q
            .wait
            .as_deref()
            .and_then(|w| humantime::parse_duration(w).ok())
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        flotilla_store::wait_for_index(&*api.store, after, wait).await;
    }
    api.store.snapshot()
}

/// A JSON answer with Nomad's index headers.
pub fn with_index(index: u64, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert("x-nomad-index", HeaderValue::from(index));
    h.insert("x-nomad-knownleader", HeaderValue::from_static("true"));
    h.insert("x-nomad-lastcontact", HeaderValue::from_static("0"));
    r
}

pub(crate) fn alloc_stubs<'a>(
    allocs: impl Iterator<Item = &'a Arc<Allocation>>,
) -> Vec<AllocListStub> {
    let mut out: Vec<AllocListStub> = allocs.map(|a| AllocListStub::from(&**a)).collect();
    out.sort_by(|a, b| {
        b.create_index
            .cmp(&a.create_index)
            .then(a.name.cmp(&b.name))
    });
    out
}

/// Find one record by exact id, or by a unique prefix as Nomad's CLI allows.
pub(crate) fn by_id_or_prefix<'a, T>(
    map: &'a imbl::OrdMap<String, Arc<T>>,
    id: &str,
    what: &str,
) -> Result<&'a Arc<T>, ApiError> {
    if let Some(v) = map.get(id) {
        return Ok(v);
    }
    let mut matches = map
        .range(id.to_string()..)
        .take_while(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, v)), None) if !id.is_empty() => Ok(v),
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "{what} id prefix \"{id}\" matches more than one {what}"
        ))),
        _ => Err(ApiError::not_found(format!("{what} \"{id}\" not found"))),
    }
}

pub async fn job_allocations(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    if state.job(ns(&q), &id).is_none() {
        return Err(ApiError::not_found(format!("job \"{id}\" not found")));
    }
    Ok(with_index(
        state.index,
        Json(alloc_stubs(state.allocs_by_job(ns(&q), &id))),
    ))
}

pub async fn job_evaluations(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let namespace = ns(&q);
    let mut evals: Vec<Evaluation> = state
        .evals
        .values()
        .filter(|e| e.job_id == id && e.namespace == namespace)
        .map(|e| (**e).clone())
        .collect();
    evals.sort_by_key(|e| std::cmp::Reverse(e.create_index));
    Ok(with_index(state.index, Json(evals)))
}

pub async fn allocations(
    State(api): State<ApiState>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Response {
    let state = block(&api, &b).await;
    let prefix = q.prefix.clone().unwrap_or_default();
    with_index(
        state.index,
        Json(alloc_stubs(
            state.allocs.values().filter(|a| a.id.starts_with(&prefix)),
        )),
    )
}

pub async fn allocation(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let a = by_id_or_prefix(&state.allocs, &id, "allocation")?;
    Ok(with_index(state.index, Json(&**a)))
}

pub async fn nodes(State(api): State<ApiState>, Query(b): Query<BlockingQuery>) -> Response {
    let state = block(&api, &b).await;
    let nodes: Vec<NodeListStub> = state
        .nodes
        .values()
        .map(|n| NodeListStub::from(&**n))
        .collect();
    with_index(state.index, Json(nodes))
}

pub async fn node(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let n = by_id_or_prefix(&state.nodes, &id, "node")?;
    Ok(with_index(state.index, Json(n.redacted())))
}

pub async fn node_allocations(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let n = by_id_or_prefix(&state.nodes, &id, "node")?;
    let allocs: Vec<Allocation> = state.allocs_by_node(&n.id).map(|a| (**a).clone()).collect();
    Ok(with_index(state.index, Json(allocs)))
}

pub async fn evaluations(
    State(api): State<ApiState>,
    Query(q): Query<NamespaceQuery>,
    Query(b): Query<BlockingQuery>,
) -> Response {
    let state = block(&api, &b).await;
    let prefix = q.prefix.clone().unwrap_or_default();
    let mut evals: Vec<Evaluation> = state
        .evals
        .values()
        .filter(|e| e.id.starts_with(&prefix))
        .map(|e| (**e).clone())
        .collect();
    evals.sort_by_key(|e| std::cmp::Reverse(e.create_index));
    with_index(state.index, Json(evals))
}

pub async fn evaluation(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let e = by_id_or_prefix(&state.evals, &id, "evaluation")?;
    Ok(with_index(state.index, Json(&**e)))
}

pub async fn evaluation_allocations(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let state = block(&api, &b).await;
    let e = by_id_or_prefix(&state.evals, &id, "evaluation")?;
    let allocs = alloc_stubs(state.allocs.values().filter(|a| a.eval_id == e.id));
    Ok(with_index(state.index, Json(allocs)))
}

pub async fn services(State(api): State<ApiState>, Query(b): Query<BlockingQuery>) -> Response {
    let state = block(&api, &b).await;
    let mut by_ns: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, Vec<String>>,
    > = Default::default();
    for s in state.services.values() {
        let tags = by_ns
            .entry(s.namespace.clone())
            .or_default()
            .entry(s.service_name.clone())
            .or_default();
        for t in &s.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
    }
    let out: Vec<ServiceListStub> = by_ns
        .into_iter()
        .map(|(namespace, services)| ServiceListStub {
            namespace,
            services: services
                .into_iter()
                .map(|(service_name, tags)| ServiceNameStub { service_name, tags })
                .collect(),
        })
        .collect();
    with_index(state.index, Json(out))
}

pub async fn service(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    Query(b): Query<BlockingQuery>,
) -> Response {
    let state = block(&api, &b).await;
    let regs: Vec<ServiceRegistration> =
        state.services_named(&name).map(|s| (**s).clone()).collect();
    with_index(state.index, Json(regs))
}

pub async fn leader(State(api): State<ApiState>) -> Response {
    Json(api.rpc_addr.to_string()).into_response()
}

/// Forward a node-local call (logs, restarts) to the agent running allocation `alloc_id`:
/// `path_after_alloc` follows `/v1/client/<kind>/<alloc id>`; the agent's answer (status and
/// streamed body) is passed through.
pub(crate) async fn forward_to_node(
    api: &ApiState,
    alloc_id: &str,
    kind: &str,
    suffix: &str,
    query: Option<String>,
    body: Option<bytes::Bytes>,
) -> Result<Response, ApiError> {
    let state = api.store.snapshot();
    let alloc = by_id_or_prefix(&state.allocs, alloc_id, "allocation")?;
    let node = state.node(&alloc.node_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} of allocation {} is unknown",
            alloc.node_id, alloc.id
        ))
    })?;
    if node.http_addr.is_empty() {
        return Err(ApiError::not_found(format!(
            "node {} has no HTTP address",
            node.name
        )));
    }
    let mut url = format!(
        "http://{}/v1/client/{kind}/{}{suffix}",
        node.http_addr, alloc.id
    );
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    let request = match body {
        Some(b) => api
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(b),
        None => api.http.get(&url),
    };
    let upstream = request.send().await.map_err(|e| ApiError {
        status: axum::http::StatusCode::BAD_GATEWAY,
        message: format!(
            "node {} ({}) did not answer: {e}",
            node.name, node.http_addr
        ),
    })?;
    let status = axum::http::StatusCode::from_u16(upstream.status().as_u16())
        .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain; charset=utf-8")
        .to_string();
    let body = Body::from_stream(upstream.bytes_stream());
    Ok((status, [("content-type", content_type)], body).into_response())
}

/// Forward a log read to the agent on the allocation's node.
pub async fn logs(
    State(api): State<ApiState>,
    Path(alloc_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    forward_to_node(&api, &alloc_id, "fs/logs", "", query, None).await
}
