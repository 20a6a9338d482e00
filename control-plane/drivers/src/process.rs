//! The child-process mechanism under `raw_exec` and `exec`: command resolution, spawning into a
//! fresh process group with the task's environment and log files, and a [`ProcessHandle`] that
//! signals the whole group.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::config::CommandConfig;
use crate::{DriverError, ExitResult, TaskHandle, TaskSpec};

/// Variables taken from the agent's own environment when the task does not set them.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How long to wait for a task to go away after SIGKILL before giving up on it.
const AFTER_KILL_WAIT: Duration = Duration::from_secs(30);

/// Finds the program for `command`.
///
/// - With a slash: a path; a relative one is relative to `task_dir`.
/// - Without: the directory holding the agent's own executable ([`std::env::current_exe`]) is
///   searched first, then each directory of `path_var` (the task's `PATH`, else the agent's).
pub fn resolve_command(
    command: &str,
    task_dir: &Path,
    path_var: Option<OsString>,
) -> Result<PathBuf, DriverError> {
    if command.trim().is_empty() {
        return Err(DriverError::InvalidConfig {
            field: "config.command".into(),
            message: "must not be empty".into(),
        });
    }
    if command.contains('/') {
        let path = Path::new(command);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            task_dir.join(path)
        };
        return match std::fs::metadata(&path) {
            Ok(meta) if is_executable(&meta) => Ok(path),
            Ok(_) => Err(DriverError::NotExecutable {
                command: command.to_string(),
                path,
            }),
            Err(_) => Err(DriverError::CommandNotFound {
                command: command.to_string(),
                searched: path.display().to_string(),
            }),
        };
    }
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let path_var = path_var.unwrap_or_default();
    let dirs = own_dir
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path_var));
    for dir in dirs {
        let candidate = dir.join(command);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && is_executable(&meta)
        {
            return Ok(candidate);
        }
    }
    let own = own_dir
        .map(|d| format!("the agent's directory {} and ", d.display()))
        .unwrap_or_default();
    Err(DriverError::CommandNotFound {
        command: command.to_string(),
        searched: format!("{own}PATH={}", path_var.to_string_lossy()),
    })
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// Starts `spec` as a child process in its own process group.
pub async fn spawn(spec: &TaskSpec) -> Result<ProcessHandle, DriverError> {
    let cfg = CommandConfig::parse(&spec.config)?;
    let path_var = spec
        .env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let program = resolve_command(&cfg.command, &spec.task_dir, path_var)?;

    let stdout = open_log(&spec.stdout_path, "opening stdout log")?;
    let stderr = open_log(&spec.stderr_path, "opening stderr log")?;

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&cfg.args)
        .current_dir(&spec.task_dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    for key in INHERITED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(&spec.env);

    let mut child = cmd.spawn().map_err(|source| DriverError::Spawn {
        path: program.clone(),
        source,
    })?;
    let Some(pid) = child.id() else {
        // Only possible if the child was already reaped, which nothing here does.
        return Err(DriverError::Spawn {
            path: program,
            source: std::io::Error::other("the process has no pid right after start"),
        });
    };
    let pgid = Pid::from_raw(pid as i32);
    let (tx, rx) = watch::channel(None);
    let name = spec.name.clone();
    tokio::spawn(async move {
        let result = match child.wait().await {
            Ok(status) => ExitResult {
                exit_code: status.code().unwrap_or(0),
                signal: status.signal().unwrap_or(0),
                error: None,
            },
            Err(err) => ExitResult {
                exit_code: -1,
                signal: 0,
                error: Some(format!("waiting on process {pid}: {err}")),
            },
        };
        // The main process is gone: take down whatever it left running in its group, so a
        // task never leaves processes behind. ESRCH (nothing left) is the usual answer.
        let _ = killpg(pgid, Signal::SIGKILL);
        tracing::debug!(task = %name, pid, result = %result, "task process exited");
        let _ = tx.send(Some(result));
    });
    tracing::debug!(task = %spec.name, pid, program = %program.display(), "task process started");
    Ok(ProcessHandle {
        id: format!("pid:{pid}"),
        pid,
        pgid,
        exit: rx,
    })
}

fn open_log(path: &Path, what: &'static str) -> Result<std::fs::File, DriverError> {
    let io = |source| DriverError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)
}

/// A running (or finished) child process and its process group.
pub struct ProcessHandle {
    id: String,
    pid: u32,
    pgid: Pid,
    exit: watch::Receiver<Option<ExitResult>>,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid)
            .field("exit", &*self.exit.borrow())
            .finish()
    }
}

impl ProcessHandle {
    /// The process group id (equal to the main process id).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    fn send_group(&self, signal: Signal) -> Result<(), DriverError> {
        // Once the exit is known the group has been cleaned up; never signal a group id that
        // may have been reused since.
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        match killpg(self.pgid, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(DriverError::Signal {
                signal,
                pgid: self.pgid.as_raw(),
                source,
            }),
        }
    }
}

#[async_trait]
impl TaskHandle for ProcessHandle {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    async fn wait(&self) -> ExitResult {
        let mut rx = self.exit.clone();
        let waited = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|d| d.clone());
        // None: the waiter task vanished (runtime shutting down).
        waited.unwrap_or(ExitResult {
            exit_code: -1,
            signal: 0,
            error: Some("lost track of the process".into()),
        })
    }

    fn try_exit(&self) -> Option<ExitResult> {
        self.exit.borrow().clone()
    }

    fn signal(&self, signal: Signal) -> Result<(), DriverError> {
        self.send_group(signal)
    }

    async fn kill(&self) -> ExitResult {
        if let Err(err) = self.send_group(Signal::SIGKILL) {
            tracing::warn!(task = %self.id, error = %err, "SIGKILL failed");
        }
        match tokio::time::timeout(AFTER_KILL_WAIT, self.wait()).await {
            Ok(done) => done,
            Err(_) => ExitResult {
                exit_code: -1,
                signal: 0,
                error: Some(format!(
                    "process {} did not exit within {AFTER_KILL_WAIT:?} of SIGKILL",
                    self.pid
                )),
            },
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        // A handle dropped while its task still runs (a panicking caller, a cancelled
        // runner) must not orphan the task.
        if self.exit.borrow().is_none() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}
