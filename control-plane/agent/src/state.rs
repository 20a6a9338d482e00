//! Persisted allocation state: what a restarted agent needs to find its tasks again.
//!
//! Each allocation has `<data_dir>/allocs/<id>/state.json`, rewritten atomically (temporary file,
//! then rename) whenever one of its tasks changes: the allocation as last received (protobuf,
//! base64), and per task its state (restarts, events, …) and the driver's
//! [`RecoverState`] while it runs. A new agent loads these files at start and re-attaches to the
//! tasks instead of starting them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use flotilla_drivers::RecoverState;
use flotilla_proto::agent::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

/// The format version written; files of other versions are ignored.
const VERSION: u32 = 1;

/// One allocation as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedAlloc {
    pub alloc: pb::Allocation,
    pub tasks: BTreeMap<String, SavedTask>,
}

/// One task as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedTask {
    pub state: pb::TaskState,
    /// Set while the task runs: how to find it again.
    pub handle: Option<RecoverState>,
}

impl SavedAlloc {
    /// Whether every task has ended for good (nothing to re-attach to).
    pub fn finished(&self) -> bool {
        self.alloc.tasks.iter().all(|t| {
            self.tasks
                .get(&t.name)
                .is_some_and(|s| s.handle.is_none() && s.state.state == crate::runner::TASK_DEAD)
        })
    }
}

#[derive(Serialize, Deserialize)]
struct FileRepr {
    version: u32,
    alloc_id: String,
    /// `pb::Allocation`, protobuf-encoded, standard base64.
    alloc: String,
    tasks: BTreeMap<String, TaskRepr>,
}

#[derive(Serialize, Deserialize)]
struct TaskRepr {
    state: String,
    failed: bool,
    restarts: u64,
    started_at: String,
    finished_at: String,
    events: Vec<EventRepr>,
    handle: Option<RecoverState>,
}

#[derive(Serialize, Deserialize)]
struct EventRepr {
    #[serde(rename = "type")]
    kind: String,
    time_unix_nanos: i64,
    message: String,
    exit_code: i32,
    signal: i32,
}

/// `<data_dir>/allocs/<alloc_id>/state.json`.
pub fn state_path(data_dir: &Path, alloc_id: &str) -> PathBuf {
    crate::env::alloc_root(data_dir, alloc_id).join("state.json")
}

fn encode(saved: &SavedAlloc) -> Result<Vec<u8>, serde_json::Error> {
    let repr = FileRepr {
        version: VERSION,
        alloc_id: saved.alloc.id.clone(),
        alloc: base64::engine::general_purpose::STANDARD.encode(saved.alloc.encode_to_vec()),
        tasks: saved
            .tasks
            .iter()
            .map(|(name, t)| {
                let s = &t.state;
                let repr = TaskRepr {
                    state: s.state.clone(),
                    failed: s.failed,
                    restarts: s.restarts,
                    started_at: s.started_at.clone(),
                    finished_at: s.finished_at.clone(),
                    events: s
                        .events
                        .iter()
                        .map(|e| EventRepr {
                            kind: e.r#type.clone(),
                            time_unix_nanos: e.time_unix_nanos,
                            message: e.message.clone(),
                            exit_code: e.exit_code,
                            signal: e.signal,
                        })
                        .collect(),
                    handle: t.handle.clone(),
                };
                (name.clone(), repr)
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&repr)
}

/// Parses a state file's text; the error says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<SavedAlloc, String> {
    let repr: FileRepr = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    if repr.version != VERSION {
        return Err(format!(
            "version {} (this agent reads version {VERSION})",
            repr.version
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(repr.alloc.as_bytes())
        .map_err(|e| format!("alloc: invalid base64: {e}"))?;
    let alloc = pb::Allocation::decode(raw.as_slice())
        .map_err(|e| format!("alloc: invalid protobuf: {e}"))?;
    if alloc.id != repr.alloc_id {
        return Err(format!(
            "alloc_id {:?} does not match the allocation's id {:?}",
            repr.alloc_id, alloc.id
        ));
    }
    let tasks = repr
        .tasks
        .into_iter()
        .map(|(name, t)| {
            let state = pb::TaskState {
                state: t.state,
                failed: t.failed,
                restarts: t.restarts,
                started_at: t.started_at,
                finished_at: t.finished_at,
                events: t
                    .events
                    .into_iter()
                    .map(|e| pb::TaskEvent {
                        r#type: e.kind,
                        time_unix_nanos: e.time_unix_nanos,
                        message: e.message,
                        exit_code: e.exit_code,
                        signal: e.signal,
                    })
                    .collect(),
            };
            (
                name,
                SavedTask {
                    state,
                    handle: t.handle,
                },
            )
        })
        .collect();
    Ok(SavedAlloc { alloc, tasks })
}

/// Writes `saved` atomically (temporary file in the same directory, then rename).
pub async fn save(data_dir: &Path, saved: &SavedAlloc) -> std::io::Result<()> {
    let path = state_path(data_dir, &saved.alloc.id);
    let bytes = encode(saved).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, &path).await
}

/// Every readable state file under `<data_dir>/allocs`. Unreadable ones are logged and
/// skipped (the allocation then looks unknown to this agent).
pub fn load_all(data_dir: &Path) -> Vec<SavedAlloc> {
    let root = data_dir.join("allocs");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %root.display(), error = %e, "cannot list saved allocations");
            }
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read saved allocation state");
                continue;
            }
        };
        match decode(&bytes) {
            Ok(saved) if entry.file_name().to_str() == Some(saved.alloc.id.as_str()) => {
                found.push(saved);
            }
            Ok(saved) => {
                tracing::warn!(path = %path.display(), alloc_id = %saved.alloc.id, "saved allocation state is in another allocation's directory, ignoring");
            }
            Err(message) => {
                tracing::warn!(path = %path.display(), error = %message, "ignoring unreadable saved allocation state");
            }
        }
    }
    found.sort_by(|a, b| a.alloc.id.cmp(&b.alloc.id));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedAlloc {
        SavedAlloc {
            alloc: pb::Allocation {
                id: "a1".into(),
                name: "j.g[0]".into(),
                payload: b"\x00\xffbytes".to_vec(),
                tasks: vec![pb::Task {
                    name: "web".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            tasks: BTreeMap::from([(
                "web".to_string(),
                SavedTask {
                    state: pb::TaskState {
                        state: "running".into(),
                        restarts: 2,
                        started_at: "2024-01-01T00:00:00Z".into(),
                        events: vec![pb::TaskEvent {
                            r#type: "Started".into(),
                            time_unix_nanos: 5,
                            message: "Task started by client".into(),
                            exit_code: 0,
                            signal: 0,
                        }],
                        ..Default::default()
                    },
                    handle: Some(RecoverState {
                        driver: "raw_exec".into(),
                        id: "pid:42".into(),
                        pid: Some(42),
                        started_at_unix_nanos: 7,
                        extra: BTreeMap::from([("k".to_string(), "v".to_string())]),
                    }),
                },
            )]),
        }
    }

    #[tokio::test]
    async fn round_trips_through_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let saved = sample();
        save(dir.path(), &saved).await.unwrap();
        assert!(!finished_after_reload(dir.path()));
        let loaded = load_all(dir.path());
        assert_eq!(loaded, vec![saved.clone()]);

        // Unreadable files are skipped, not fatal.
        std::fs::create_dir_all(dir.path().join("allocs/bad")).unwrap();
        std::fs::write(dir.path().join("allocs/bad/state.json"), "{").unwrap();
        std::fs::create_dir_all(dir.path().join("allocs/empty")).unwrap();
        assert_eq!(load_all(dir.path()).len(), 1);
        assert!(load_all(&dir.path().join("nothing-here")).is_empty());
    }

    fn finished_after_reload(dir: &Path) -> bool {
        load_all(dir).iter().all(SavedAlloc::finished)
    }

    #[test]
    fn decoding_errors_say_what_is_wrong() {
        assert!(decode(b"[]").unwrap_err().contains("invalid JSON"));
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&sample()).unwrap()).unwrap();
        v["version"] = 9.into();
        let err = decode(v.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("version 9"), "{err}");
        v["version"] = 1.into();
        v["alloc"] = "!!".into();
        assert!(
            decode(v.to_string().as_bytes())
                .unwrap_err()
                .contains("base64")
        );
    }

    #[test]
    fn finished_means_every_task_dead_and_detached() {
        let mut s = sample();
        assert!(!s.finished());
        s.tasks.get_mut("web").unwrap().state.state = "dead".into();
        assert!(!s.finished(), "a handle is still recorded");
        s.tasks.get_mut("web").unwrap().handle = None;
        assert!(s.finished());
        s.tasks.clear();
        assert!(!s.finished(), "a task with no saved state has not run");
    }
}
