//! The operator CLI: `job`, `deployment`, `alloc`, `node`, `service`, `intention` and `ca`
//! commands, talking to a server's HTTP API (`--address`, or `FLOTILLA_ADDR` / `NOMAD_ADDR`,
//! default `http://127.0.0.1:4646`).
//!
//! Output is a human table by default and JSON with `-json`. Nomad's single-dash long flags
//! (`-json`, `-detach`) are accepted; see [`normalize_args`]. Each command returns the process
//! exit code: 0 success, 1 error, 2 for placement failures (as Nomad's `job run`). `job run`,
//! `job revert` and `deployment status -monitor` follow a job's deployment live (see
//! `monitor`): 0 when it succeeds or waits for a manual promotion, 1 when it fails.

mod client;
mod commands;
mod config;
mod deployment;
mod diff;
#[cfg(test)]
mod fake_api;
mod mesh;
mod monitor;
mod table;

pub use client::Client;
pub use commands::{
    AllocCmd, EvalCmd, JobCmd, NodeCmd, PeriodicCmd, ServiceCmd, VarArgs, run_alloc, run_eval,
    run_job, run_node, run_service,
};
pub use config::{ConfigCmd, run_config};
pub use deployment::{DeploymentCmd, run_deployment};
pub use mesh::{CaCmd, IntentionCmd, run_ca, run_intention};

/// Connection flags shared by every command that talks to a server.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Address of the Flotilla (or Nomad-compatible) HTTP API.
    #[arg(
        long = "address",
        env = "FLOTILLA_ADDR",
        default_value = "http://127.0.0.1:4646",
        global = true
    )]
    pub address: String,
}

/// Accept Nomad's single-dash long flags: `-json` → `--json`, `-address=x` → `--address=x`.
/// Short flags (`-f`) and values are left alone; everything after `--` too.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for a in args {
        if passthrough || a == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        let is_single_dash_long = a.starts_with('-')
            && !a.starts_with("--")
            && a.len() > 2
            && a[1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && a[1..].split('=').next().is_some_and(|name| {
                name.len() > 1
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if is_single_dash_long {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_flags() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_args(v(&[
                "flotilla",
                "job",
                "status",
                "-json",
                "-address=http://x",
                "-f",
                "hello"
            ])),
            v(&[
                "flotilla",
                "job",
                "status",
                "--json",
                "--address=http://x",
                "-f",
                "hello"
            ])
        );
        assert_eq!(
            normalize_args(v(&["a", "--", "-json"])),
            v(&["a", "--", "-json"])
        );
    }
}
