//! Consul's config-entry API (`/v1/config…`): service-defaults, service-router,
//! service-splitter and service-resolver entries, validated on write (the entry itself by
//! `flotilla_jobspec::validate_config_entry`, its relations to the other entries by
//! `flotilla_store::config_entry_write_conflicts`), with Consul's `?cas=` compare-and-set.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use flotilla_store::{Op, config_entry_delete_conflicts, config_entry_write_conflicts};
use flotilla_types::{CONFIG_ENTRY_KINDS, ConfigEntry, DEFAULT_NAMESPACE};
use serde::Deserialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::reads::{BlockingQuery, block, with_index};

/// `?cas=<index>&ns=<namespace>`
#[derive(Debug, Deserialize, Default)]
pub struct WriteQuery {
    pub cas: Option<u64>,
    pub ns: Option<String>,
}

/// `?ns=` plus the blocking-query parameters.
#[derive(Debug, Deserialize, Default)]
pub struct ReadQuery {
    pub ns: Option<String>,
    pub index: Option<u64>,
    pub wait: Option<String>,
}

impl ReadQuery {
    fn blocking(&self) -> BlockingQuery {
        BlockingQuery {
            index: self.index,
            wait: self.wait.clone(),
        }
    }
}

fn namespace(ns: &Option<String>) -> &str {
    ns.as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    if CONFIG_ENTRY_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "unknown config entry kind {kind:?} (expected one of: {})",
            CONFIG_ENTRY_KINDS.join(", ")
        )))
    }
}

/// `PUT /v1/config`: create or replace an entry. Answers `true`, or `false` when `?cas=` did
/// not match the entry's ModifyIndex (`0`: the entry must not exist yet).
pub async fn put(
    State(api): State<ApiState>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad_request(
            "request body must be a config entry as a JSON object",
        ));
    }
    let mut entry = flotilla_jobspec::parse_config_entry(text, "")
        .map_err(|e| ApiError::bad_request(format!("invalid config entry:\n{e}")))?;
    if let Some(ns) = q.ns.as_deref().filter(|n| !n.is_empty()) {
        set_namespace(&mut entry, ns);
    }
    let key = entry.key();
    let op = Op::PutConfigEntry(entry.clone());
    let (written, index) = check_and_set(
        &api,
        &key,
        q.cas,
        |state| config_entry_write_conflicts(state, &entry),
        |_| vec![op.clone()],
    )?;
    if written {
        tracing::info!(key = %key, index, "config entry written");
    }
    Ok(with_index(index, Json(written)))
}

/// Consul's check-and-set around one write, read and written atomically: `Ok((false, _))` when
/// `cas` is given and is not the entry's ModifyIndex (0: the entry must not exist), a 400
/// listing the `conflicts` when there are any, else the `ops` (given whether the entry exists)
/// are applied and `Ok((true, index))` returned.
fn check_and_set(
    api: &ApiState,
    key: &str,
    cas: Option<u64>,
    conflicts: impl Fn(&flotilla_store::State) -> Vec<String>,
    ops: impl Fn(bool) -> Vec<Op>,
) -> Result<(bool, u64), ApiError> {
    let mut outcome: Result<bool, Vec<String>> = Ok(false);
    let index = api.store.apply_with(&mut |state| {
        let current = state.config_entries.get(key).map(|e| e.modify_index());
        if let Some(cas) = cas
            && current.unwrap_or(0) != cas
        {
            outcome = Ok(false);
            return Vec::new();
        }
        let problems = conflicts(state);
        if !problems.is_empty() {
            outcome = Err(problems);
            return Vec::new();
        }
        outcome = Ok(true);
        ops(current.is_some())
    })?;
    match outcome {
        Ok(done) => Ok((done, index)),
        Err(problems) => Err(ApiError::bad_request(problems.join("\n"))),
    }
}

fn set_namespace(entry: &mut ConfigEntry, ns: &str) {
    let ns = ns.to_string();
    match entry {
        ConfigEntry::ServiceDefaults(e) => e.namespace = ns,
        ConfigEntry::ServiceRouter(e) => e.namespace = ns,
        ConfigEntry::ServiceSplitter(e) => e.namespace = ns,
        ConfigEntry::ServiceResolver(e) => e.namespace = ns,
    }
}

/// `GET /v1/config/:kind`: every entry of a kind in the namespace (blocking).
pub async fn list(
    State(api): State<ApiState>,
    Path(kind): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    check_kind(&kind)?;
    let state = block(&api, &q.blocking()).await;
    let ns = namespace(&q.ns);
    let entries: Vec<&ConfigEntry> = state
        .config_entries_of_kind(&kind)
        .filter(|e| e.namespace() == ns)
        .map(|e| &**e)
        .collect();
    Ok(with_index(state.index, Json(entries)))
}

/// `GET /v1/config/:kind/:name` (blocking).
pub async fn get(
    State(api): State<ApiState>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    check_kind(&kind)?;
    let state = block(&api, &q.blocking()).await;
    let ns = namespace(&q.ns);
    let entry = state.config_entry(&kind, ns, &name).ok_or_else(|| {
        ApiError::not_found(format!(
            "config entry not found for kind {kind:?}, name {name:?} in namespace {ns:?}"
        ))
    })?;
    Ok(with_index(state.index, Json(&**entry)))
}

/// `DELETE /v1/config/:kind/:name`: answers `true`, or `false` when `?cas=` did not match.
/// Deleting an entry that does not exist succeeds, as in Consul.
pub async fn delete(
    State(api): State<ApiState>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
) -> Result<Response, ApiError> {
    check_kind(&kind)?;
    let key = ConfigEntry::key_of(&kind, namespace(&q.ns), &name);
    let (done, index) = check_and_set(
        &api,
        &key,
        q.cas,
        |state| config_entry_delete_conflicts(state, &key),
        |exists| {
            if exists {
                vec![Op::DeleteConfigEntry(key.clone())]
            } else {
                Vec::new()
            }
        },
    )?;
    Ok(with_index(index, Json(done)))
}
