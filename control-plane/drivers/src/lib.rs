//! Task drivers: how the node agent turns a task into running work.
//!
//! Every driver implements [`Driver`] (`fingerprint` to say whether it can run on this node,
//! `start` to launch a task from a [`TaskSpec`]) and hands back a [`TaskHandle`] to wait on,
//! signal, stop or kill what it started. [`Drivers::builtin`] is the set the agent offers.
//!
//! Two drivers exist today, both built on the same child-process mechanism ([`process`]):
//!
//! - [`raw_exec`](raw_exec::RawExec): runs `config.command` with `config.args` as the agent's
//!   user, in the task directory, with only the environment the agent gives it (plus `PATH`,
//!   `HOME` and `LANG` from the agent's own environment).
//! - [`exec`](exec::Exec): the same mechanism, offered on Linux only. It has **no filesystem
//!   or resource isolation yet** (no chroot, no cgroups, no namespaces): treat it as `raw_exec`.
//!
//! Each task runs in its own process group. Stopping a task signals the whole group with its
//! `kill_signal`, waits up to `kill_timeout`, then sends `SIGKILL` to the group; when the main
//! process exits on its own, whatever it left in its group is killed too. Processes that leave
//! the group on purpose (`setsid`, double-forking daemons) escape this: only cgroups would catch
//! them.
//!
//! Command resolution: a command containing a slash is a path (relative ones are relative to the
//! task directory). A bare name is searched in the directory of the agent's own executable first
//! (so `command = "flotilla"` finds the binary running the agent, which is how the bundled
//! `flotilla demo-app` workload starts), then in the task's `PATH` (or the agent's `PATH` when the
//! task sets none).

#![forbid(unsafe_code)]

pub mod config;
mod driver;
pub mod exec;
pub mod process;
pub mod raw_exec;

pub use driver::{
    Driver, DriverError, DriverFingerprint, Drivers, ExitResult, TaskHandle, TaskSpec, parse_signal,
};
/// Signals as the drivers take them (re-exported so callers need no `nix` dependency).
pub use nix::sys::signal::Signal;
