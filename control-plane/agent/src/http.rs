//! The agent's HTTP endpoint: task logs, which the server proxies for `alloc logs`.
//!
//! `GET /v1/client/fs/logs/{alloc_id}?task=T&type=stdout|stderr&follow=true|false&origin=start|end&offset=N&plain=true`
//! answers with the log bytes as plain text (`plain` is accepted for Nomad compatibility; the
//! answer is always plain). With `follow=true` appended bytes keep streaming until the client
//! disconnects, the allocation's tasks have all ended for good, or the agent shuts down.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::allocs::Registry;
use crate::env::{LogKind, alloc_root, log_path};

/// How often a followed log is polled for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes read per chunk.
const CHUNK: usize = 64 * 1024;

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

/// Where reading starts: `offset` bytes from the start, or back from the end.
pub fn start_position(len: u64, from_end: bool, offset: u64) -> u64 {
    if from_end {
        len.saturating_sub(offset)
    } else {
        offset.min(len)
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
    let path = log_path(&state.data_dir, &alloc_id, &task, kind);
    let task_known = match &live {
        Some(l) => l.tasks.iter().any(|t| t == &task),
        None => path.exists(),
    };
    if !task_known {
        return error(
            StatusCode::NOT_FOUND,
            format!("allocation {alloc_id:?} has no task {task:?}"),
        );
    }

    let len = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let reader = LogReader {
        path,
        file: None,
        pos: start_position(len, from_end, offset),
        follow,
        // A log of an allocation that no longer runs here is read to its end only.
        done: live.map(|l| l.done),
        shutdown: state.shutdown.clone(),
        draining: false,
        finished: false,
    };
    let stream = futures::stream::unfold(reader, |mut r| async move {
        r.next_chunk().await.map(|chunk| (chunk, r))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

struct LogReader {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    pos: u64,
    follow: bool,
    done: Option<watch::Receiver<bool>>,
    shutdown: watch::Receiver<bool>,
    /// Not following (any more): read to the end, then stop.
    draining: bool,
    finished: bool,
}

impl LogReader {
    fn live(&self) -> bool {
        self.follow && !*self.shutdown.borrow() && self.done.as_ref().is_some_and(|d| !*d.borrow())
    }

    /// Reads what is there now; `Ok(None)` at the current end.
    async fn read_some(&mut self) -> std::io::Result<Option<Bytes>> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut f) => {
                    f.seek(SeekFrom::Start(self.pos)).await?;
                    self.file = Some(f);
                }
                // Not written yet (the task has not started): nothing to read for now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        self.pos += n as u64;
        Ok(Some(Bytes::from(buf)))
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.finished {
            return None;
        }
        loop {
            match self.read_some().await {
                Ok(Some(bytes)) => return Some(Ok(bytes)),
                Ok(None) => {}
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
            if self.draining {
                self.finished = true;
                return None;
            }
            if !self.live() {
                // Read on to the end once more: bytes written just before the task ended.
                self.draining = true;
                continue;
            }
            let mut shutdown = self.shutdown.clone();
            let mut done = self.done.clone();
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = shutdown.wait_for(|s| *s) => {}
                _ = async {
                    match done.as_mut() {
                        Some(d) => { let _ = d.wait_for(|d| *d).await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(start_position(100, false, 0), 0);
        assert_eq!(start_position(100, false, 30), 30);
        assert_eq!(start_position(100, false, 300), 100);
        assert_eq!(start_position(100, true, 30), 70);
        assert_eq!(start_position(100, true, 300), 0);
    }

    #[test]
    fn path_components() {
        assert!(safe_component("abc-123"));
        assert!(!safe_component(".."));
        assert!(!safe_component("a/b"));
        assert!(!safe_component(""));
    }
}
