//! The outside programs the bench drives, installed with apt-get when missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::procs::which;

/// (program, Debian package).
const TOOLS: [(&str, &str); 4] = [
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
];

/// Where the programs are, and what was done to get them.
#[derive(Debug)]
pub struct Tools {
    pub haproxy: PathBuf,
    pub nginx: PathBuf,
    /// One line for the report.
    pub note: String,
}

/// Finds the programs; installs the missing ones with `apt-get install -y` unless `no_install`.
pub fn ensure(no_install: bool) -> anyhow::Result<Tools> {
    let missing: Vec<(&str, &str)> = TOOLS
        .iter()
        .copied()
        .filter(|(program, _)| which(program).is_none())
        .collect();
    let note = if missing.is_empty() {
        "wrk, h2load, haproxy and nginx already installed: no apt-get".to_string()
    } else {
        let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        if no_install {
            bail!(
                "missing {}; install them with `apt-get install -y {}` (or drop --no-install)",
                missing
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(", "),
                packages.join(" ")
            );
        }
        eprintln!(
            "installing {} with apt-get (missing: {})",
            packages.join(" "),
            missing
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(", ")
        );
        apt_get(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&packages);
        apt_get(&args)?;
        format!("installed with `apt-get install -y {}`", packages.join(" "))
    };
    let find = |program: &str| {
        which(program).with_context(|| format!("{program} still not found in PATH"))
    };
    for (program, _) in TOOLS {
        find(program)?;
    }
    Ok(Tools {
        haproxy: find("haproxy")?,
        nginx: find("nginx")?,
        note,
    })
}

fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Progress on stderr: stdout is the report.
        .stdout(std::io::stderr())
        .status()
        .context("running apt-get (the bench installs wrk, h2load, haproxy and nginx with it)")?;
    if !status.success() {
        bail!("apt-get {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Versions of the load generators, for the report.
pub fn client_versions() -> String {
    let first_line = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("?")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "?".into())
    };
    let wrk = first_line("wrk", "-v");
    // "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer"
    let wrk = wrk.split(" Copyright").next().unwrap_or(&wrk).to_owned();
    format!("{wrk}; {}", first_line("h2load", "--version"))
}
