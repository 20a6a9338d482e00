//! The driver trait, the task handle trait, and the types they exchange.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;

/// What a driver says about itself on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriverFingerprint {
    /// The driver can run here at all.
    pub detected: bool,
    /// It can run tasks right now.
    pub healthy: bool,
    /// A sentence for operators (`Healthy`, or why not).
    pub description: String,
}

/// Everything a driver needs to start one task. The agent has already interpolated `config`
/// and `env`, and created the directories and log files' parent directory.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// A name for logs and errors, such as `<alloc id>/<task>`.
    pub name: String,
    /// The task's `config { … }` block as JSON (an object).
    pub config: serde_json::Value,
    /// The complete task environment.
    pub env: BTreeMap<String, String>,
    /// The task's working directory.
    pub task_dir: PathBuf,
    /// stdout is appended here.
    pub stdout_path: PathBuf,
    /// stderr is appended here.
    pub stderr_path: PathBuf,
    /// The allocation the task belongs to (containers are named and labelled with it).
    pub alloc_id: String,
    /// The task's name within its group.
    pub task_name: String,
    /// The allocation's network ports, which `config.ports` of the docker driver refers to by
    /// label.
    pub ports: Vec<PortMapping>,
    /// Host paths to make visible to the task (host volumes, the allocation directory). The
    /// docker driver bind-mounts them; the process drivers see the host filesystem anyway.
    pub mounts: Vec<MountSpec>,
    /// The user to run the task as. Process drivers switch to it only when the agent runs as
    /// root; the docker driver passes it to the container.
    pub user: Option<String>,
    /// Log rotation: keep this many files per stream (0 = no rotation, one growing file).
    pub log_max_files: u32,
    /// Log rotation: start a new file once the current one would exceed this many MiB.
    pub log_max_file_size_mb: u64,
}

/// One port of the allocation: `host_ip:host_port` on the node, `to` inside the task (0 means
/// the same number as `host_port`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// The label the job gave the port (`port "http" { … }`).
    pub label: String,
    /// The node address it is reserved on.
    pub host_ip: String,
    /// The node port.
    pub host_port: u16,
    /// The port inside the task, 0 for "same as `host_port`".
    pub to: u16,
}

/// A host path mounted into a task.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    /// The path on the node.
    pub source: PathBuf,
    /// Where the task sees it.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What the agent persists to find a running task again after its own restart.
///
/// `extra` holds driver-specific identity checks (for the process drivers: the boot id and the
/// process start time in clock ticks; for docker: the container name). Persist the whole value
/// as [`TaskHandle::recover_state`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoverState {
    /// The driver that started the task.
    pub driver: String,
    /// [`TaskHandle::id`].
    pub id: String,
    /// The main process id, for process drivers.
    pub pid: Option<u32>,
    /// When the task started, in nanoseconds since the Unix epoch.
    pub started_at_unix_nanos: i64,
    /// Driver-specific details.
    pub extra: BTreeMap<String, String>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitResult {
    /// The exit code, 0 when it was killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, 0 when it exited.
    pub signal: i32,
    /// Set when the driver lost track of the task (waiting on it failed).
    pub error: Option<String>,
}

impl ExitResult {
    /// Wait until a handle's waiter publishes the exit on `exit`. If the waiter vanished (the
    /// runtime is shutting down), report that `what` was lost track of.
    pub async fn wait_on(
        exit: &tokio::sync::watch::Receiver<Option<ExitResult>>,
        what: &str,
    ) -> ExitResult {
        let mut rx = exit.clone();
        let waited = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|d| d.clone());
        waited.unwrap_or(ExitResult {
            exit_code: -1,
            signal: 0,
            error: Some(format!("lost track of the {what}")),
        })
    }

    /// Exited with code 0, not killed, no driver error.
    pub fn successful(&self) -> bool {
        self.exit_code == 0 && self.signal == 0 && self.error.is_none()
    }
}

impl std::fmt::Display for ExitResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(err) = &self.error {
            write!(f, "error: {err}")
        } else if self.signal != 0 {
            let name = Signal::try_from(self.signal)
                .map(|s| s.as_str())
                .unwrap_or("unknown signal");
            write!(f, "killed by signal {} ({name})", self.signal)
        } else {
            write!(f, "exit code {}", self.exit_code)
        }
    }
}

/// Why a driver could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The task's `config` block is wrong; `field` is its path, e.g. `config.args`.
    #[error("{field}: {message}")]
    InvalidConfig { field: String, message: String },
    /// The command was not found where it was looked for.
    #[error("command {command:?} not found (searched {searched})")]
    CommandNotFound { command: String, searched: String },
    /// The command exists but is not an executable file.
    #[error("command {command:?} at {path} is not an executable file")]
    NotExecutable { command: String, path: PathBuf },
    /// A file the driver needs could not be opened.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The operating system refused to start the process.
    #[error("starting {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Signalling the task failed.
    #[error("sending {signal} to process group {pgid}: {source}")]
    Signal {
        signal: Signal,
        pgid: i32,
        #[source]
        source: nix::Error,
    },
    /// A `kill_signal` that names no signal.
    #[error("unknown signal {0:?} (expected a name such as SIGTERM or INT, or a number)")]
    UnknownSignal(String),
    /// The job asked for a driver this node does not have or that is not usable.
    #[error("driver {name:?} is not available on this node: {reason}")]
    Unavailable { name: String, reason: String },
    /// The task to recover is no longer running (it exited, or its pid or container now
    /// belongs to something else).
    #[error("task {id} is no longer running")]
    Gone { id: String },
    /// A [`RecoverState`] this driver cannot use (another driver's, or missing fields).
    #[error("cannot recover task {id}: {message}")]
    InvalidRecoverState { id: String, message: String },
    /// The task's `user` is unknown or cannot be switched to.
    #[error("user {user:?}: {message}")]
    User { user: String, message: String },
    /// A docker image that is not on the node, and no pull was asked for.
    #[error(
        "image {image:?} is not present on this node and cannot be pulled (no registry reachable): build or load it first"
    )]
    ImageMissing { image: String },
    /// Pulling a docker image failed or took too long.
    #[error("pulling image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// The Docker daemon refused or failed a request; `action` says which.
    #[error("docker: {action}: {message}")]
    Docker { action: String, message: String },
}

impl DriverError {
    /// Whether trying again could help. A wrong config, an unknown user or an unusable driver
    /// never fixes itself; a missing command might appear (an artifact being fetched), a
    /// missing image might be loaded by an operator, a spawn or daemon failure might be
    /// transient.
    pub fn is_recoverable(&self) -> bool {
        !matches!(
            self,
            DriverError::InvalidConfig { .. }
                | DriverError::UnknownSignal(_)
                | DriverError::Unavailable { .. }
                | DriverError::Gone { .. }
                | DriverError::InvalidRecoverState { .. }
                | DriverError::User { .. }
        )
    }
}

/// A task a driver started.
#[async_trait]
pub trait TaskHandle: Send + Sync {
    /// The driver's id for the task (`pid:<n>` for process drivers).
    fn id(&self) -> &str;

    /// The main process id, when the task is a process.
    fn pid(&self) -> Option<u32>;

    /// What to persist so that [`Driver::recover`] finds this task again after the agent
    /// restarts.
    fn recover_state(&self) -> RecoverState;

    /// Waits until the task has ended. May be called any number of times, concurrently.
    async fn wait(&self) -> ExitResult;

    /// The exit result if the task has already ended.
    fn try_exit(&self) -> Option<ExitResult>;

    /// Sends `signal` to the task (to its whole process group for process drivers). Signalling a
    /// task that has already ended does nothing.
    fn signal(&self, signal: Signal) -> Result<(), DriverError>;

    /// Kills the task at once (SIGKILL to the process group) and waits for it to end.
    async fn kill(&self) -> ExitResult;

    /// Graceful stop: `signal`, wait up to `timeout`, then [`kill`](Self::kill).
    async fn stop(&self, signal: Signal, timeout: Duration) -> ExitResult {
        if let Some(done) = self.try_exit() {
            return done;
        }
        if let Err(err) = self.signal(signal) {
            tracing::warn!(task = self.id(), error = %err, "stop signal failed, killing");
            return self.kill().await;
        }
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(done) => done,
            Err(_) => {
                tracing::info!(
                    task = self.id(),
                    timeout = ?timeout,
                    "task did not stop in time, sending SIGKILL"
                );
                self.kill().await
            }
        }
    }
}

/// A way of running tasks.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The name jobs use in `driver = "…"`.
    fn name(&self) -> &'static str;

    /// Whether the driver can run tasks on this node.
    async fn fingerprint(&self) -> DriverFingerprint;

    /// Starts a task. Returns once the task is running (or failed to start).
    async fn start(&self, spec: TaskSpec) -> Result<Box<dyn TaskHandle>, DriverError>;

    /// Finds a task a previous agent started, from what it persisted, and returns a handle to
    /// it. [`DriverError::Gone`] when the task is no longer running.
    async fn recover(
        &self,
        state: &RecoverState,
        spec: &TaskSpec,
    ) -> Result<Box<dyn TaskHandle>, DriverError>;

    /// Stops and removes tasks this driver runs on the node that none of `owned_alloc_ids`
    /// owns. Returns what it removed (names for people).
    async fn reap_unowned(
        &self,
        owned_alloc_ids: &BTreeSet<String>,
    ) -> Result<Vec<String>, DriverError>;
}

/// The drivers an agent offers, by name.
#[derive(Clone)]
pub struct Drivers {
    by_name: BTreeMap<&'static str, Arc<dyn Driver>>,
}

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Drivers {
    /// The drivers built into Flotilla: `raw_exec`, `exec` and `docker` (talking to the
    /// daemon at `DOCKER_HOST` when that is a `unix://` address, else
    /// `/var/run/docker.sock`; see [`DockerDriver::from_env`](crate::docker::DockerDriver::from_env)).
    pub fn builtin() -> Self {
        Self {
            by_name: BTreeMap::new(),
        }
        .with(Arc::new(crate::raw_exec::RawExec))
        .with(Arc::new(crate::exec::Exec))
        .with(Arc::new(crate::docker::DockerDriver::from_env()))
    }

    /// Adds `driver`, replacing one of the same name (for example a
    /// [`DockerDriver`](crate::docker::DockerDriver) scoped to this node).
    pub fn with(mut self, driver: Arc<dyn Driver>) -> Self {
        self.by_name.insert(driver.name(), driver);
        self
    }

    /// A driver by the name a job uses.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Driver>> {
        self.by_name.get(name).cloned()
    }

    /// All drivers, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.by_name.values()
    }
}

/// Parses a `kill_signal`: `SIGTERM`, `TERM`, `sigterm` or `15`. Empty means SIGTERM.
pub fn parse_signal(name: &str) -> Result<Signal, DriverError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Ok(Signal::SIGTERM);
    }
    if let Ok(n) = trimmed.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| DriverError::UnknownSignal(name.to_string()));
    }
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| DriverError::UnknownSignal(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("int").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        let err = parse_signal("SIGNOPE").unwrap_err().to_string();
        assert!(err.contains("SIGNOPE"), "{err}");
    }

    #[test]
    fn exit_results_describe_themselves() {
        let ok = ExitResult::default();
        assert!(ok.successful());
        assert_eq!(ok.to_string(), "exit code 0");
        let killed = ExitResult {
            signal: 9,
            ..Default::default()
        };
        assert!(!killed.successful());
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn builtin_has_all_drivers() {
        let d = Drivers::builtin();
        assert!(d.get("raw_exec").is_some());
        assert!(d.get("exec").is_some());
        assert!(d.get("docker").is_some());
        assert!(d.get("podman").is_none());
    }

    #[test]
    fn image_missing_names_the_image() {
        let e = DriverError::ImageMissing {
            image: "x:y".into(),
        };
        assert_eq!(
            e.to_string(),
            "image \"x:y\" is not present on this node and cannot be pulled (no registry reachable): build or load it first"
        );
        assert!(e.is_recoverable());
        assert!(!DriverError::Gone { id: "a".into() }.is_recoverable());
    }

    #[test]
    fn recover_state_round_trips_through_json() {
        let s = RecoverState {
            driver: "docker".into(),
            id: "abc".into(),
            pid: None,
            started_at_unix_nanos: 1_700_000_000_000_000_000,
            extra: BTreeMap::from([("container_name".into(), "web-1".into())]),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RecoverState>(&json).unwrap(), s);
    }
}
