//! Idle memory: `flotilla proxy` with 1,000 services in its bootstrap (1,000 clusters, 1,000
//! host routes), ready and idle, against the same proxy with one service.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::ensure;

use crate::contenders::{bootstrap_json, http_get, start_flotilla};
use crate::procs;
use crate::upstream::BODY;

/// The target: idle RSS with 1,000 services, in bytes (15 MB, decimal).
pub const TARGET_RSS: u64 = 15_000_000;
/// Services in the large bootstrap.
pub const SERVICES: usize = 1_000;
/// How long the proxy idles after `/ready` before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

/// RSS of one idle proxy.
#[derive(Debug, Clone)]
pub struct IdleRow {
    pub label: String,
    pub services: usize,
    pub bootstrap_bytes: usize,
    /// VmRSS after settling, bytes.
    pub rss: u64,
    /// Of which RssAnon (heap, stacks) and RssFile (the mapped binary and libraries), bytes.
    pub anon: u64,
    pub file: u64,
    /// VmHWM (peak since start, including loading the bootstrap), bytes.
    pub peak: u64,
}

/// What the idle section measured.
#[derive(Debug, Clone)]
pub struct IdleReport {
    pub rows: Vec<IdleRow>,
}

impl IdleReport {
    /// The row with [`SERVICES`] services.
    pub fn large(&self) -> Option<&IdleRow> {
        self.rows.iter().find(|r| r.services == SERVICES)
    }
}

fn services(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("svc-{i:04}"), format!("svc-{i:04}.bench.internal")))
        .collect()
}

fn measure(
    bin: &Path,
    upstream: SocketAddr,
    n: usize,
    label: &str,
    dir: &Path,
) -> anyhow::Result<IdleRow> {
    let bootstrap = bootstrap_json(upstream, &services(n));
    let bootstrap_bytes = serde_json::to_vec(&bootstrap)?.len();
    let name = format!("idle-{n}");
    let mut started = start_flotilla(bin, &bootstrap, &name, None, dir, Duration::from_secs(60))?;
    std::thread::sleep(SETTLE);
    started.proc.check_running()?;
    let pid = started.proc.pid();
    let rss = procs::rss(pid).unwrap_or(0);
    let (anon, file) = procs::rss_split(pid).unwrap_or((0, 0));
    let peak = procs::peak_rss(pid).unwrap_or(0);
    // Only now a request (it grows the pools): the last service routes to the upstream.
    let (host_name, host) = services(n).pop().unwrap_or_default();
    let (status, body) = http_get(started.ingress, "/", &host)?;
    ensure!(
        status == 200 && body == BODY,
        "{label}: a request for {host} ({host_name}) through the ingress got {status}: {body:?}"
    );
    eprintln!(
        "idle {label}: VmRSS {:.1} MB, VmHWM {:.1} MB (admin {})",
        rss as f64 / 1e6,
        peak as f64 / 1e6,
        started.admin
    );
    Ok(IdleRow {
        label: label.to_owned(),
        services: n,
        bootstrap_bytes,
        rss,
        anon,
        file,
        peak,
    })
}

pub fn run(bin: &Path, upstream: SocketAddr, dir: &Path) -> anyhow::Result<IdleReport> {
    Ok(IdleReport {
        rows: vec![
            measure(bin, upstream, 1, "1 service", dir)?,
            measure(
                bin,
                upstream,
                SERVICES,
                "1,000 services (1,000 clusters of 1–2 endpoints, 1,000 host routes)",
                dir,
            )?,
        ],
    })
}

pub fn print(report: &IdleReport) {
    println!("## Idle RSS of `flotilla proxy`");
    println!();
    println!(
        "Started with the bootstrap, `/ready`, then {} s idle; default worker threads (one per \
         CPU). VmRSS and VmHWM from `/proc/<pid>/status`; MB = 10^6 bytes.",
        SETTLE.as_secs()
    );
    println!();
    println!(
        "| bootstrap | file | VmRSS | of which RssAnon (heap, stacks) | of which RssFile (mapped binary, libraries) | VmHWM (peak since start) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &report.rows {
        println!(
            "| {} | {:.1} KB | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MB |",
            r.label,
            r.bootstrap_bytes as f64 / 1e3,
            r.rss as f64 / 1e6,
            r.anon as f64 / 1e6,
            r.file as f64 / 1e6,
            r.peak as f64 / 1e6
        );
    }
    println!();
    if let Some(large) = report.large() {
        let pass = large.rss <= TARGET_RSS;
        println!(
            "- {}: idle RSS with 1,000 services {:.1} MB (target ≤ {:.0} MB)",
            if pass { "PASS" } else { "FAIL" },
            large.rss as f64 / 1e6,
            TARGET_RSS as f64 / 1e6
        );
        println!();
    }
}
