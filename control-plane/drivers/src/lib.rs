//! Task drivers: how the node agent turns a task into running work.
//!
//! Every driver implements [`Driver`] (`fingerprint` to say whether it can run on this node,
//! `start` to launch a task from a [`TaskSpec`], `recover` to find a task again after the agent
//! restarted, `reap_unowned` to clean up what no allocation owns) and hands back a
//! [`TaskHandle`] to wait on, signal, stop or kill what it started. [`Drivers::builtin`] is the
//! set the agent offers.
//!
//! Three drivers exist today:
//!
//! - [`raw_exec`](raw_exec::RawExec): runs `config.command` with `config.args` in the task
//!   directory, with only the environment the agent gives it (plus `PATH`, `HOME` and `LANG`
//!   from the agent's own environment), as the task's `user` when the agent runs as root (else
//!   as the agent's user). Built on the child-process mechanism in [`process`].
//! - [`exec`](exec::Exec): the same mechanism, offered on Linux only. It has **no filesystem
//!   or resource isolation yet** (no chroot, no cgroups, no namespaces): treat it as `raw_exec`.
//! - [`docker`](docker::DockerDriver): runs the task as a container through the Docker Engine
//!   API, with Nomad's `config` names (`image`, `command`, `args`, `ports`, `volumes`, `mount`,
//!   …). Images must already be on the node unless `force_pull` is set. Output is copied into
//!   the task's log files with Nomad-style rotation ([`logs`]).
//!
//! Process tasks: each runs in its own process group. Stopping a task signals the whole group
//! with its `kill_signal`, waits up to `kill_timeout`, then sends `SIGKILL` to the group; when
//! the main process exits on its own, whatever it left in its group is killed too. Processes
//! that leave the group on purpose (`setsid`, double-forking daemons) escape this: only cgroups
//! would catch them. Their output goes straight to the log files (no rotation), so a task keeps
//! logging while the agent is away.
//!
//! Recovery: tasks outlive the agent. Dropping a handle does not stop its task; the agent
//! persists [`TaskHandle::recover_state`] and, after restarting, calls [`Driver::recover`],
//! which answers [`DriverError::Gone`] for a task that is no longer running. A recovered
//! process is matched by pid *and* start time (a reused pid is never adopted); its exit status
//! cannot be known (it is not the new agent's child), so its [`ExitResult`] says so. A
//! recovered container is found by id or name and reports its real exit code.
//!
//! Command resolution: a command containing a slash is a path (relative ones are relative to the
//! task directory). A bare name is searched in the directory of the agent's own executable first
//! (so `command = "flotilla"` finds the binary running the agent, which is how the bundled
//! `flotilla demo-app` workload starts), then in the task's `PATH` (or the agent's `PATH` when the
//! task sets none).

#![forbid(unsafe_code)]

pub mod config;
pub mod docker;
mod driver;
pub mod exec;
pub mod logs;
pub mod process;
pub mod raw_exec;

pub use driver::{
    Driver, DriverError, DriverFingerprint, Drivers, ExitResult, MountSpec, PortMapping,
    RecoverState, TaskHandle, TaskSpec, parse_signal,
};
/// Signals as the drivers take them (re-exported so callers need no `nix` dependency).
pub use nix::sys::signal::Signal;
