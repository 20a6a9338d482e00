//! The agent's HTTP endpoint (Nomad's client API paths; the server proxies them).
//!
//! - `GET /v1/client/fs/logs/{alloc_id}?task=T&type=stdout|stderr&follow=true|false&origin=start|end&offset=N&plain=true`
//!   answers with the log bytes as plain text, read across the task's rotated files in order
//!   ([`crate::logs`]; `plain` is accepted for Nomad compatibility; the answer is always plain).
//!   With `follow=true` appended bytes keep streaming until the client disconnects, the
//!   allocation's tasks have all ended for good, or the agent shuts down.
//! - `POST|PUT /v1/client/allocation/{alloc_id}/restart` with an optional body
//!   `{"TaskName": "web"}` restarts that task (or every running task) in place: it is stopped
//!   with its kill signal and started again at once, without counting against its restart
//!   policy (task event `Restart Signaled`).
//! - `POST|PUT /v1/client/allocation/{alloc_id}/signal` with `{"Task": "web", "Signal": "SIGHUP"}`
//!   sends a signal to that task (or to every running task).
//!
//! Unknown allocations and tasks answer 404 naming them; a task that is not running, 409.

use std::path::PathBuf;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::watch;

use crate::allocs::Registry;
use crate::env::{LogKind, alloc_root};
use crate::logs::{LogFiles, LogReader, logs_dir};
use crate::task::{RestartReason, TaskControl};

#[derive(Clone)]
struct AppState {
    data_dir: PathBuf,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
}

/// The agent's HTTP routes.
pub fn router(data_dir: PathBuf, registry: Registry, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/v1/client/fs/logs/{alloc_id}", get(logs))
        .route(
            "/v1/client/allocation/{alloc_id}/restart",
            post(restart).put(restart),
        )
        .route(
            "/v1/client/allocation/{alloc_id}/signal",
            post(signal).put(signal),
        )
        .with_state(AppState {
            data_dir,
            registry,
            shutdown,
        })
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct LogsQuery {
    task: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    follow: Option<String>,
    origin: Option<String>,
    offset: Option<String>,
    #[allow(dead_code)] // accepted for Nomad compatibility; answers are always plain
    plain: Option<String>,
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// A path component that cannot walk out of its directory.
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

fn parse_bool(field: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("") => Ok(false),
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| format!("{field}: expected true or false, got {v:?}")),
    }
}

async fn logs(
    State(state): State<AppState>,
    Path(alloc_id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    if !safe_component(&alloc_id) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid allocation id {alloc_id:?}"),
        );
    }
    let live = state.registry.get(&alloc_id);
    let on_disk = alloc_root(&state.data_dir, &alloc_id).is_dir();
    if live.is_none() && !on_disk {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown allocation {alloc_id:?} on this node"),
        );
    }
    let task = match (&q.task, &live) {
        (Some(t), _) if !t.is_empty() => t.clone(),
        (_, Some(l)) if l.tasks.len() == 1 => l.tasks[0].clone(),
        (_, Some(l)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "task: required, allocation {alloc_id:?} has tasks {}",
                    l.tasks.join(", ")
                ),
            );
        }
        (_, None) => {
            return error(StatusCode::BAD_REQUEST, "task: required".into());
        }
    };
    if !safe_component(&task) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid task name {task:?}"),
        );
    }
    let kind = match q.kind.as_deref() {
        None | Some("") | Some("stdout") => LogKind::Stdout,
        Some("stderr") => LogKind::Stderr,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("type: expected stdout or stderr, got {other:?}"),
            );
        }
    };
    let follow = match parse_bool("follow", q.follow.as_deref()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let from_end = match q.origin.as_deref() {
        None | Some("") | Some("start") => false,
        Some("end") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("origin: expected start or end, got {other:?}"),
            );
        }
    };
    let offset = match q.offset.as_deref() {
        None | Some("") => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("offset: expected a number of bytes, got {v:?}"),
                );
            }
        },
    };
    let files = LogFiles::new(logs_dir(&state.data_dir, &alloc_id), &task, kind);
    let task_known = match &live {
        Some(l) => l.tasks.iter().any(|t| t == &task),
        None => files.exists().await,
    };
    if !task_known {
        return error(
            StatusCode::NOT_FOUND,
            format!("allocation {alloc_id:?} has no task {task:?}"),
        );
    }

    // A log of an allocation that no longer runs here is read to its end only.
    let reader = LogReader::open(
        files,
        from_end,
        offset,
        follow,
        live.map(|l| l.done),
        state.shutdown.clone(),
    )
    .await;
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(reader.into_stream()))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Body of a restart request (Nomad's `AllocRestartRequest`).
#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RestartBody {
    task_name: String,
    #[allow(dead_code)] // accepted for Nomad compatibility: every running task is restarted
    all_tasks: bool,
}

/// Body of a signal request (Nomad's `AllocSignalRequest`).
#[derive(Debug, Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct SignalBody {
    task: String,
    signal: String,
}

/// A request that cannot be served: its status and the message for people.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// An optional JSON body: empty means the defaults.
fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// The controls of the tasks a request names (all when `task` is empty).
fn targets(
    registry: &Registry,
    alloc_id: &str,
    task: &str,
) -> Result<Vec<(String, TaskControl)>, Refusal> {
    let Some(live) = registry.get(alloc_id) else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("unknown allocation {alloc_id:?} on this node"),
        ));
    };
    let chosen: Vec<(String, TaskControl)> = if task.is_empty() {
        live.controls
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    } else {
        match live.controls.get(task) {
            Some(c) => vec![(task.to_string(), c.clone())],
            None => {
                return Err(Refusal(
                    StatusCode::NOT_FOUND,
                    format!(
                        "allocation {alloc_id:?} has no task {task:?} (it has {})",
                        live.tasks.join(", ")
                    ),
                ));
            }
        }
    };
    Ok(chosen)
}

/// Answers a command sent to `results`: 200 when any task took it, else 409 with the reasons.
fn command_answer(
    alloc_id: &str,
    what: &str,
    results: Vec<(String, Result<(), String>)>,
) -> Response {
    if results.iter().any(|(_, r)| r.is_ok()) {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response();
    }
    let reasons: Vec<String> = results
        .into_iter()
        .map(|(task, r)| format!("{task}: {}", r.err().unwrap_or_default()))
        .collect();
    error(
        StatusCode::CONFLICT,
        format!(
            "cannot {what} allocation {alloc_id:?}: {}",
            if reasons.is_empty() {
                "it has no tasks".to_string()
            } else {
                reasons.join("; ")
            }
        ),
    )
}

async fn restart(
    State(state): State<AppState>,
    Path(alloc_id): Path<String>,
    body: Bytes,
) -> Response {
    let req: RestartBody = match parse_body(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let chosen = match targets(&state.registry, &alloc_id, &req.task_name) {
        Ok(t) => t,
        Err(refusal) => return refusal.into_response(),
    };
    let mut results = Vec::new();
    for (name, control) in chosen {
        let r = control.restart(RestartReason::User).await;
        tracing::info!(alloc_id = %alloc_id, task = %name, ok = r.is_ok(), "restart requested");
        results.push((name, r));
    }
    command_answer(&alloc_id, "restart", results)
}

async fn signal(
    State(state): State<AppState>,
    Path(alloc_id): Path<String>,
    body: Bytes,
) -> Response {
    let req: SignalBody = match parse_body(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let sig = match flotilla_drivers::parse_signal(&req.signal) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("Signal: {e}")),
    };
    let chosen = match targets(&state.registry, &alloc_id, &req.task) {
        Ok(t) => t,
        Err(refusal) => return refusal.into_response(),
    };
    let mut results = Vec::new();
    for (name, control) in chosen {
        results.push((name, control.signal(sig).await));
    }
    command_answer(&alloc_id, "signal", results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components() {
        assert!(safe_component("abc-123"));
        assert!(!safe_component(".."));
        assert!(!safe_component("a/b"));
        assert!(!safe_component(""));
    }
}
