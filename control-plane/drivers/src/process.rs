//! The child-process mechanism under `raw_exec` and `exec`: command resolution, spawning into a
//! fresh process group with the task's environment, user and log files, a [`ProcessHandle`]
//! that signals the whole group, and recovery of a task a previous agent started.
//!
//! A recovered process is not the agent's child, so nothing can wait for it: its handle polls
//! `/proc/<pid>` and reports an unknown exit status once it is gone. A pid is adopted only if
//! it is still the process that was started: same boot (`/proc/sys/kernel/random/boot_id`),
//! same start time (`/proc/<pid>/stat` field 22, in clock ticks since boot, immune to clock
//! steps; the wall-clock `started_at` is compared, to the second, when no tick count was
//! recorded), and still leading its own process group.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, Uid, User};
use tokio::sync::watch;

use crate::config::CommandConfig;
use crate::{DriverError, ExitResult, RecoverState, TaskHandle, TaskSpec};

/// Variables taken from the agent's own environment when the task does not set them.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How long to wait for a task to go away after SIGKILL before giving up on it.
const AFTER_KILL_WAIT: Duration = Duration::from_secs(30);

/// How often a recovered task's `/proc` entry is checked.
const RECOVERED_POLL: Duration = Duration::from_millis(200);

/// What a recovered task's exit reports: it was not our child, so its status is lost.
pub const RECOVERED_EXIT_UNKNOWN: &str =
    "exit status unknown: task was recovered after an agent restart";

/// `RecoverState::extra` keys.
const EXTRA_BOOT_ID: &str = "boot_id";
const EXTRA_START_TICKS: &str = "start_ticks";
const EXTRA_PGID: &str = "pgid";

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

/// Looks up the account `user` names (a user name, or a numeric uid as a fallback).
pub fn lookup_user(user: &str) -> Result<User, DriverError> {
    let err = |message: String| DriverError::User {
        user: user.to_string(),
        message,
    };
    match User::from_name(user) {
        Ok(Some(u)) => return Ok(u),
        Ok(None) => {}
        Err(e) => return Err(err(format!("looking it up failed: {e}"))),
    }
    if let Ok(uid) = user.parse::<u32>()
        && let Ok(Some(u)) = User::from_uid(Uid::from_raw(uid))
    {
        return Ok(u);
    }
    Err(err("no such user on this node".into()))
}

/// Starts `spec` as a child process in its own process group; `driver` is the name recorded in
/// its [`RecoverState`].
pub async fn spawn(driver: &'static str, spec: &TaskSpec) -> Result<ProcessHandle, DriverError> {
    let cfg = CommandConfig::parse(&spec.config)?;
    let path_var = spec
        .env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let program = resolve_command(&cfg.command, &spec.task_dir, path_var)?;
    let run_as = match spec.user.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(name) => {
            let user = lookup_user(name)?;
            let me = Uid::effective();
            if me.is_root() {
                Some(user)
            } else if user.uid == me {
                None
            } else {
                return Err(DriverError::User {
                    user: name.to_string(),
                    message: format!(
                        "the agent runs as uid {me}, not root, so it cannot start tasks as another user"
                    ),
                });
            }
        }
    };

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
    if let Some(user) = &run_as {
        // The standard library also clears the supplementary groups when a root parent sets
        // a uid, so the task keeps none of the agent's.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
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
    // Read before anything can reap the child, so the pid is certainly still ours.
    let identity = Identity::of_live(pid);
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
        driver,
        pid,
        pgid,
        identity,
        recovered: false,
        exit: rx,
    })
}

/// Finds the process a previous agent started from its [`RecoverState`].
///
/// [`DriverError::Gone`] when the pid no longer exists, is a zombie, or now belongs to another
/// process (different boot, start time or process group).
pub fn recover(driver: &'static str, state: &RecoverState) -> Result<ProcessHandle, DriverError> {
    let bad = |message: String| DriverError::InvalidRecoverState {
        id: state.id.clone(),
        message,
    };
    if state.driver != driver {
        return Err(bad(format!(
            "it was started by driver {:?}, not {driver:?}",
            state.driver
        )));
    }
    let pid = match state.pid {
        Some(pid) => pid,
        None => state
            .id
            .strip_prefix("pid:")
            .and_then(|p| p.parse::<u32>().ok())
            .ok_or_else(|| bad("no pid recorded".into()))?,
    };
    let pgid = match state.extra.get(EXTRA_PGID) {
        Some(p) => p
            .parse::<i32>()
            .map_err(|_| bad(format!("{EXTRA_PGID} {p:?} is not a number")))?,
        None => i32::try_from(pid).map_err(|_| bad(format!("pid {pid} is out of range")))?,
    };
    let start_ticks = match state.extra.get(EXTRA_START_TICKS) {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| bad(format!("{EXTRA_START_TICKS} {t:?} is not a number")))?,
        ),
        None => None,
    };
    let identity = Identity {
        start_ticks,
        boot_id: state.extra.get(EXTRA_BOOT_ID).cloned(),
        started_at_unix_nanos: state.started_at_unix_nanos,
    };
    let gone = || DriverError::Gone {
        id: state.id.clone(),
    };
    if let (Some(recorded), Some(now)) = (&identity.boot_id, boot_id())
        && *recorded != now
    {
        tracing::debug!(task = %state.id, "the node rebooted since the task started");
        return Err(gone());
    }
    match read_stat(pid) {
        Some(stat) if stat.pgrp == pgid && identity.matches(&stat) => {}
        Some(stat) => {
            tracing::debug!(task = %state.id, ?stat, "the pid now belongs to another process");
            return Err(gone());
        }
        None => return Err(gone()),
    }

    let pgid = Pid::from_raw(pgid);
    let (tx, rx) = watch::channel(None);
    let id = state.id.clone();
    let watched = identity.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Every handle is gone: nobody is waiting, stop polling (the task runs on).
                _ = tx.closed() => return,
                _ = tokio::time::sleep(RECOVERED_POLL) => {}
            }
            if !watched.is_alive(pid, pgid.as_raw()) {
                break;
            }
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        tracing::debug!(task = %id, pid, "recovered task process exited");
        let _ = tx.send(Some(ExitResult {
            exit_code: -1,
            signal: 0,
            error: Some(RECOVERED_EXIT_UNKNOWN.into()),
        }));
    });
    tracing::info!(task = %state.id, pid, "recovered task process");
    Ok(ProcessHandle {
        id: state.id.clone(),
        driver,
        pid,
        pgid,
        identity,
        recovered: true,
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

/// The fields of `/proc/<pid>/stat` that identify a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z`, …
    pub state: char,
    /// The process group.
    pub pgrp: i32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and parentheses, so fields are
/// counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ppid, pgrp (5), …, starttime (22).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Wall-clock time of a start time in ticks since boot.
fn ticks_to_unix_nanos(ticks: u64) -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let hz = i64::from(u16::try_from(hz).ok()?.max(1));
    let ticks = i64::try_from(ticks).ok()?;
    btime
        .checked_mul(1_000_000_000)?
        .checked_add((ticks / hz).checked_mul(1_000_000_000)?)?
        .checked_add((ticks % hz) * 1_000_000_000 / hz)
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How a task's main process is told apart from a later process that reuses its pid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    start_ticks: Option<u64>,
    boot_id: Option<String>,
    started_at_unix_nanos: i64,
}

impl Identity {
    fn of_live(pid: u32) -> Self {
        let start_ticks = read_stat(pid).map(|s| s.start_ticks);
        let started_at_unix_nanos = start_ticks
            .and_then(ticks_to_unix_nanos)
            .unwrap_or_else(now_unix_nanos);
        Self {
            start_ticks,
            boot_id: boot_id(),
            started_at_unix_nanos,
        }
    }

    /// Whether `stat` is the process this identity was taken from. With a recorded tick count,
    /// the ticks must be equal (exact, and immune to clock steps) and `started_at` must agree
    /// to within a plausible clock step, so a state recorded for another process is refused;
    /// without one, the wall-clock start must agree to within a second.
    fn matches(&self, stat: &ProcStat) -> bool {
        let wall = ticks_to_unix_nanos(stat.start_ticks);
        let within =
            |limit: i64| wall.is_some_and(|w| (w - self.started_at_unix_nanos).abs() < limit);
        match self.start_ticks {
            Some(ticks) => {
                ticks == stat.start_ticks && (wall.is_none() || within(MAX_CLOCK_STEP_NANOS))
            }
            None => within(1_000_000_000),
        }
    }

    fn is_alive(&self, pid: u32, pgid: i32) -> bool {
        matches!(read_stat(pid), Some(s) if s.pgrp == pgid && !matches!(s.state, 'Z' | 'X') && self.matches(&s))
    }
}

/// How far the wall clock may have been stepped between a task's start and its recovery
/// before a recorded `started_at` no longer vouches for the process.
const MAX_CLOCK_STEP_NANOS: i64 = 600 * 1_000_000_000;

/// A running (or finished) child process and its process group, or a process a previous agent
/// started (see [`recover`]).
pub struct ProcessHandle {
    id: String,
    driver: &'static str,
    pid: u32,
    pgid: Pid,
    identity: Identity,
    recovered: bool,
    exit: watch::Receiver<Option<ExitResult>>,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid)
            .field("recovered", &self.recovered)
            .field("exit", &*self.exit.borrow())
            .finish()
    }
}

impl ProcessHandle {
    /// The process group id (equal to the main process id).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Whether this handle adopted a process a previous agent started.
    pub fn is_recovered(&self) -> bool {
        self.recovered
    }

    fn send_group(&self, signal: Signal) -> Result<(), DriverError> {
        // Once the exit is known the group has been cleaned up; never signal a group id that
        // may have been reused since. A recovered process is checked again, as its exit is
        // only noticed by polling.
        if self.exit.borrow().is_some()
            || (self.recovered && !self.identity.is_alive(self.pid, self.pgid.as_raw()))
        {
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

    fn recover_state(&self) -> RecoverState {
        let mut extra = BTreeMap::from([(EXTRA_PGID.to_string(), self.pgid.to_string())]);
        if let Some(ticks) = self.identity.start_ticks {
            extra.insert(EXTRA_START_TICKS.into(), ticks.to_string());
        }
        if let Some(boot) = &self.identity.boot_id {
            extra.insert(EXTRA_BOOT_ID.into(), boot.clone());
        }
        RecoverState {
            driver: self.driver.to_string(),
            id: self.id.clone(),
            pid: Some(self.pid),
            started_at_unix_nanos: self.identity.started_at_unix_nanos,
            extra,
        }
    }

    async fn wait(&self) -> ExitResult {
        ExitResult::wait_on(&self.exit, "process").await
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

// Dropping a handle does not stop the task: a task outlives the agent that started it (the
// next agent recovers it from its `RecoverState`), so stopping is always explicit.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                pgrp: 4242,
                start_ticks: 987654
            }
        );
        assert!(parse_stat("12 (x) S 1").is_none());
    }

    #[test]
    fn our_own_identity_matches_itself() {
        let me = std::process::id();
        let id = Identity::of_live(me);
        let stat = read_stat(me).unwrap();
        assert!(id.matches(&stat));
        let other = Identity {
            start_ticks: Some(stat.start_ticks + 1),
            ..id.clone()
        };
        assert!(!other.matches(&stat));
        let no_ticks_but_late = Identity {
            start_ticks: None,
            started_at_unix_nanos: id.started_at_unix_nanos + 5_000_000_000,
            ..id.clone()
        };
        assert!(!no_ticks_but_late.matches(&stat));
        let no_ticks = Identity {
            start_ticks: None,
            ..id
        };
        assert!(no_ticks.matches(&stat));
    }
}
