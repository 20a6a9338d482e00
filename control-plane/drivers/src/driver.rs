//! The driver trait, the task handle trait, and the types they exchange.

use std::collections::BTreeMap;
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
}

impl DriverError {
    /// Whether trying again could help. A wrong config or an unusable driver never fixes
    /// itself; a missing command might appear (an artifact being fetched), a spawn failure
    /// might be transient.
    pub fn is_recoverable(&self) -> bool {
        !matches!(
            self,
            DriverError::InvalidConfig { .. }
                | DriverError::UnknownSignal(_)
                | DriverError::Unavailable { .. }
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
    /// The drivers built into Flotilla: `raw_exec` and `exec`.
    pub fn builtin() -> Self {
        let mut by_name: BTreeMap<&'static str, Arc<dyn Driver>> = BTreeMap::new();
        for d in [
            Arc::new(crate::raw_exec::RawExec) as Arc<dyn Driver>,
            Arc::new(crate::exec::Exec),
        ] {
            by_name.insert(d.name(), d);
        }
        Self { by_name }
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
    fn builtin_has_both_drivers() {
        let d = Drivers::builtin();
        assert!(d.get("raw_exec").is_some());
        assert!(d.get("exec").is_some());
        assert!(d.get("docker").is_none());
    }
}
