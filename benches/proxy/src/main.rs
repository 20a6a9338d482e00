//! `flotilla-bench-proxy`: the node proxy against HAProxy and nginx, in one run.
//!
//! ```sh
//! cargo build --release -p flotilla -p flotilla-bench-proxy
//! ./target/release/flotilla-bench-proxy                 # 25 rounds of 2 s cells, every section
//! ./target/release/flotilla-bench-proxy --quick         # 7 rounds of 1 s cells
//! ./target/release/flotilla-bench-proxy --section idle  # idle RSS with 1,000 services only
//! ./target/release/flotilla-bench-proxy --section load --shapes http1   # the judged shape only
//! ```
//!
//! Sections:
//! * `load`: direct, `flotilla proxy --bootstrap`, HAProxy and nginx in front of one upstream
//!   (this binary's hidden `upstream` subcommand), at two shapes: HTTP/1.1 keep-alive with 64
//!   connections (`wrk`) and h2c with 4 connections × 100 streams (`h2load`). Per cell:
//!   req/s, p50, p99, errors, the proxy's CPU seconds (its whole process tree) and peak RSS.
//!   Then Flotilla ÷ HAProxy, with PASS/FAIL against the targets at HTTP/1.1, judged on the
//!   median of the per-round ratios (each round runs every path back to back).
//! * `idle`: `flotilla proxy`'s RSS, ready and idle, with a 1,000-service bootstrap.
//!
//! wrk, h2load, haproxy and nginx are installed with apt-get when missing.

mod contenders;
mod idle;
mod load;
mod procs;
mod tools;
mod upstream;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::contenders::{Contender, Kind};
use crate::load::{LoadResult, Shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Load,
    Idle,
    All,
}

/// Which load shapes the load section runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shapes {
    /// HTTP/1.1 keep-alive (`wrk`), the shape the targets are judged on.
    Http1,
    /// h2c (`h2load`).
    H2c,
    /// Both.
    All,
}

impl Shapes {
    fn list(self) -> Vec<Shape> {
        match self {
            Shapes::Http1 => vec![Shape::Http1],
            Shapes::H2c => vec![Shape::H2],
            Shapes::All => Shape::ALL.to_vec(),
        }
    }
}

/// Node proxy benchmark: prints markdown figures and checks them against the targets.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Which section to run.
    #[arg(long, value_enum, default_value_t = Section::All)]
    section: Section,
    /// Measured time per cell (one path at one shape). Short cells keep each round's runs
    /// close together in time, so a drift in the machine's speed hits them alike.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    duration: Duration,
    /// Unmeasured load before each measured run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// 1 s per cell, a 1 s warm-up and 7 rounds (overrides --duration and --warmup, and the
    /// default of --repeats).
    #[arg(long)]
    quick: bool,
    /// Which load shapes to run (e.g. `http1` alone, for more rounds of the judged shape in
    /// the same time).
    #[arg(long, value_enum, default_value_t = Shapes::All)]
    shapes: Shapes,
    /// Rounds: measured runs per cell (every path once per round); medians are reported.
    /// Default 25 (7 with --quick): enough for a 95 % interval of the median ratio that is
    /// the 8th round ratio from each end.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: Option<u32>,
    /// The release `flotilla` binary (default: <workspace>/target/release/flotilla, built
    /// with `cargo build --release --bin flotilla` if missing).
    #[arg(long = "flotilla-bin", env = "FLOTILLA_BIN")]
    flotilla_bin: Option<PathBuf>,
    /// Fail instead of running apt-get when a tool is missing.
    #[arg(long)]
    no_install: bool,
    /// Pin HAProxy's and nginx's threads one per CPU too (`cpu-map`, `worker_cpu_affinity
    /// auto`), as Flotilla pins its workers by default; without it they run their defaults.
    #[arg(long)]
    pin_peers: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: the upstream every path ends at.
    #[command(hide = true)]
    Upstream(upstream::UpstreamArgs),
}

/// One measured run of one cell.
#[derive(Debug, Clone, Copy)]
struct Run {
    load: LoadResult,
    /// Proxy CPU seconds (utime + stime of its process tree) over the run.
    cpu: Option<f64>,
    /// Peak RSS of the proxy's process tree during the run (or since start), bytes.
    peak_rss: Option<u64>,
    /// The upstream's CPU seconds over the run.
    upstream_cpu: f64,
    /// New connections the upstream accepted during the run.
    upstream_conns: u64,
    /// The share of the machine's CPU time the hypervisor gave to other guests during the run.
    steal: Option<f64>,
}

/// The medians of one cell's runs.
#[derive(Debug, Clone)]
struct Cell {
    kind: Kind,
    shape: Shape,
    req_per_sec: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    cpu: Option<f64>,
    /// Proxy CPU microseconds per request.
    cpu_per_req: Option<f64>,
    peak_rss: Option<u64>,
    upstream_cpu: f64,
    upstream_conns: f64,
    /// The median VM steal share of the runs that have one.
    steal: Option<f64>,
    /// Each run, in round order, for ratios of runs made back to back.
    rounds: Vec<Round>,
}

/// What one round's run of a cell is compared on, and the steal it ran under.
#[derive(Debug, Clone, Copy)]
struct Round {
    req_per_sec: f64,
    p99: f64,
    steal: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Cell {
    fn from_runs(kind: Kind, shape: Shape, runs: &[Run]) -> Cell {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let opt = |f: &dyn Fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        Cell {
            kind,
            shape,
            req_per_sec: m(&|r| r.load.req_per_sec),
            p50: m(&|r| r.load.p50),
            p99: m(&|r| r.load.p99),
            errors: runs.iter().map(|r| r.load.errors).sum(),
            cpu: opt(&|r| r.cpu),
            cpu_per_req: opt(&|r| r.cpu.map(|c| c * 1e6 / r.load.requests.max(1) as f64)),
            peak_rss: opt(&|r| r.peak_rss.map(|b| b as f64)).map(|b| b as u64),
            upstream_cpu: m(&|r| r.upstream_cpu),
            upstream_conns: m(&|r| r.upstream_conns as f64),
            steal: opt(&|r| r.steal),
            rounds: runs
                .iter()
                .map(|r| Round {
                    req_per_sec: r.load.req_per_sec,
                    p99: r.load.p99,
                    steal: r.steal,
                })
                .collect(),
        }
    }
}

/// Settings of the load section, for the report.
#[derive(Debug)]
struct LoadSettings {
    duration: Duration,
    warmup: Duration,
    repeats: u32,
    shapes: Vec<Shape>,
    peak_rss_per_run: bool,
}

/// Rounds by default, and with `--quick`.
const DEFAULT_REPEATS: u32 = 25;
const QUICK_REPEATS: u32 = 7;

fn main() -> anyhow::Result<()> {
    let result = run();
    if result.is_err() {
        // A signal stopped the children under the run's feet: the watcher reports that and
        // exits; the error it caused here is not news.
        procs::wait_if_stopping();
    }
    result
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Upstream(u)) = &args.command {
        return upstream::serve(u);
    }
    let (duration, warmup, repeats) = if args.quick {
        let second = Duration::from_secs(1);
        (second, second, args.repeats.unwrap_or(QUICK_REPEATS))
    } else {
        (
            args.duration,
            args.warmup,
            args.repeats.unwrap_or(DEFAULT_REPEATS),
        )
    };
    anyhow::ensure!(
        duration >= Duration::from_secs(1),
        "--duration must be at least 1s (the load generators count whole seconds)"
    );

    let tools = tools::ensure(args.no_install)?;
    let (bin, built) = flotilla_test_support::release_flotilla(args.flotilla_bin.as_deref())
        .map_err(anyhow::Error::msg)?;
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-proxy-")
        .tempdir()
        .context("creating a temporary directory")?;
    procs::stop_children_on_signal(dir.path())?;
    let (mut upstream_proc, upstream_addr) = upstream::start(dir.path())?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = procs::loadavg();

    println!("# flotilla-bench-proxy");
    println!();
    println!(
        "- machine: {cpus} CPUs, load average {load_before} at start; everything (client, \
         proxy, upstream) shares these CPUs; {}",
        if args.pin_peers {
            "every proxy pins its threads one per CPU (Flotilla by default, HAProxy with \
             `cpu-map`, nginx with `worker_cpu_affinity auto`: `--pin-peers`)"
        } else {
            "Flotilla runs its default `--worker-affinity auto` (on 2 CPUs: its two workers \
             pinned one per CPU), HAProxy and nginx run their defaults, unpinned \
             (`--pin-peers` pins them too)"
        }
    );
    println!("- tools: {}; {}", tools.note, tools::client_versions());
    println!(
        "- flotilla: `{}`{}",
        bin.display(),
        if built {
            " (built by this run: `cargo build --release --bin flotilla`)"
        } else {
            ""
        }
    );
    println!(
        "- upstream: this binary's `upstream` subcommand on {upstream_addr}: hyper, \
         multi-threaded tokio, HTTP/1.1 + h2c, `GET /` → 200 with a {}-byte body",
        upstream::BODY.len()
    );
    println!();

    if matches!(args.section, Section::Load | Section::All) {
        let settings = LoadSettings {
            duration,
            warmup,
            repeats,
            shapes: args.shapes.list(),
            peak_rss_per_run: true,
        };
        let mut paths = vec![contenders::direct(upstream_addr)];
        paths.push(contenders::flotilla(&bin, upstream_addr, dir.path())?);
        let pin = args.pin_peers;
        paths.push(contenders::haproxy(
            &tools.haproxy,
            upstream_addr,
            dir.path(),
            pin,
        )?);
        paths.push(contenders::nginx(
            &tools.nginx,
            upstream_addr,
            dir.path(),
            pin,
        )?);
        for c in &paths {
            if c.kind != contenders::Kind::Direct {
                upstream::check_forwarded_headers(c.kind.name(), c.h1)?;
            }
            for &shape in &settings.shapes {
                load::probe(shape, &c.url(shape))
                    .with_context(|| format!("{} does not answer", c.kind.name()))?;
            }
        }
        println!(
            "Every proxy forwards a request that has only `Host` (and `Connection: close`) with \
             exactly these headers (checked through each): `{}`.",
            upstream::FORWARDED_HEADERS
        );
        println!();
        let (cells, settings) = run_load(
            &mut paths,
            (upstream_proc.pid(), upstream_addr),
            dir.path(),
            settings,
        )?;
        upstream_proc.check_running()?;
        print_load(&paths, &cells, &settings);
    }
    if matches!(args.section, Section::Idle | Section::All) {
        let report = idle::run(&bin, upstream_addr, dir.path())?;
        idle::print(&report);
    }
    println!("Load average at the end: {}.", procs::loadavg());
    Ok(())
}

/// Every cell, `repeats` times: for each repeat, each shape, each path (interleaved, so a
/// background load hits all paths alike), a warm-up then a measured run. Odd rounds take the
/// paths in reverse order, so no path always runs right after the same one (Flotilla and
/// HAProxy stay neighbours, each going first in every other round).
fn run_load(
    paths: &mut [Contender],
    (upstream_pid, upstream_addr): (u32, std::net::SocketAddr),
    dir: &std::path::Path,
    mut settings: LoadSettings,
) -> anyhow::Result<(Vec<Cell>, LoadSettings)> {
    let h2log = dir.join("h2load.log");
    let n = paths.len();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); n * settings.shapes.len()];
    for repeat in 0..settings.repeats {
        for (s, &shape) in settings.shapes.iter().enumerate() {
            for p in round_order(n, repeat) {
                let path = &mut paths[p];
                let url = path.url(shape);
                let warm = load::run(shape, &url, settings.warmup, &h2log)
                    .with_context(|| format!("warm-up of {} ({})", path.kind.name(), url))?;
                let pid = path.pid();
                if let Some(pid) = pid {
                    settings.peak_rss_per_run &= procs::reset_peak_rss(pid);
                }
                let conns0 = upstream::accepted(upstream_addr)?;
                let cpu0 = pid.map(procs::tree_cpu_secs);
                let up0 = procs::tree_cpu_secs(upstream_pid);
                let ticks0 = procs::cpu_ticks();
                let result = load::run(shape, &url, settings.duration, &h2log)
                    .with_context(|| format!("{} ({})", path.kind.name(), url))?;
                let steal = procs::steal_share(ticks0, procs::cpu_ticks());
                let up1 = procs::tree_cpu_secs(upstream_pid);
                let cpu = pid.map(procs::tree_cpu_secs).zip(cpu0).map(|(b, a)| b - a);
                let peak_rss = pid.map(procs::tree_peak_rss);
                // Minus the connection of the first reading.
                let upstream_conns = upstream::accepted(upstream_addr)?.saturating_sub(conns0 + 1);
                if let Some(proc) = path.proc.as_mut() {
                    proc.check_running()?;
                }
                eprintln!(
                    "run {}/{} {:8} {:8}: {:>9.0} req/s, p50 {}, p99 {}, errors {}, proxy CPU {}, \
                     upstream CPU {:.2} s, {upstream_conns} new upstream connections, VM steal {} \
                     (warm-up {:.0} req/s)",
                    repeat + 1,
                    settings.repeats,
                    shape.short(),
                    path.kind.name(),
                    result.req_per_sec,
                    ms(result.p50),
                    ms(result.p99),
                    result.errors,
                    cpu.map_or("-".into(), |c| format!("{c:.2} s")),
                    up1 - up0,
                    percent(steal),
                    warm.req_per_sec,
                );
                runs[s * n + p].push(Run {
                    load: result,
                    cpu,
                    peak_rss,
                    upstream_cpu: up1 - up0,
                    upstream_conns,
                    steal,
                });
            }
        }
    }
    let mut cells = Vec::new();
    for (s, &shape) in settings.shapes.iter().enumerate() {
        for (p, path) in paths.iter().enumerate() {
            cells.push(Cell::from_runs(path.kind, shape, &runs[s * n + p]));
        }
    }
    Ok((cells, settings))
}

/// The order of the paths in round `repeat`: as listed in even rounds, reversed in odd ones.
fn round_order(n: usize, repeat: u32) -> Vec<usize> {
    if repeat.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// A share as a percentage, `-` when unknown.
fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.1} %", s * 100.0))
}

fn ms(secs: f64) -> String {
    if secs.is_nan() {
        "-".into()
    } else {
        format!("{:.2} ms", secs * 1e3)
    }
}

fn cell(cells: &[Cell], kind: Kind, shape: Shape) -> Option<&Cell> {
    cells.iter().find(|c| c.kind == kind && c.shape == shape)
}

/// Flotilla's figure ÷ HAProxy's (`pick` of a round) in each round, and the
/// median of those ratios, with the ratios listed. Each round runs the two back to back, so a
/// slow spell of the machine (another VM's load: these runs share 2 CPUs) hits both alike; the
/// median of the ratios cancels it, where the ratio of the medians would not (the same with one
/// round).
fn per_round(f: &Cell, h: &Cell, pick: fn(&Round) -> f64) -> PerRound {
    let ratios: Vec<f64> = f
        .rounds
        .iter()
        .zip(&h.rounds)
        .map(|(a, b)| pick(a) / pick(b))
        .collect();
    let list = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    PerRound {
        below: ratios.iter().filter(|r| **r < 1.0).count(),
        above: ratios.iter().filter(|r| **r > 1.0).count(),
        rounds: ratios.len(),
        interval: median_interval(ratios.clone()),
        median: median(ratios),
        list,
    }
}

/// A 95 % confidence interval for the median of `values`, distribution-free: the `k`-th
/// smallest and the `k`-th largest value, with `k` the largest for which the median falls
/// outside them with probability at most 5 % (each value lies below the true median with
/// probability ½, so the count below is Binomial(n, ½)). `None` with fewer than 6 values, where
/// even the smallest and largest leave more than 5 %.
fn median_interval(mut values: Vec<f64>) -> Option<(f64, f64)> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    // P(Binomial(n, ½) ≤ j), accumulated in exact integers: n is a few dozen rounds at most.
    let mut choose = 1u128; // C(n, j)
    let mut below = 0u128; // Σ C(n, i), i ≤ j
    let total = 1u128.checked_shl(u32::try_from(n).ok()?)?;
    let mut k = 0;
    for j in 0..n {
        below += choose;
        // The interval [x(j+1), x(n-j)] misses the median with probability 2·P(B ≤ j).
        if 2 * below * 20 > total {
            break;
        }
        k = j + 1;
        choose = choose * (n - j) as u128 / (j + 1) as u128;
    }
    (k > 0).then(|| (values[k - 1], values[n - k]))
}

/// Flotilla ÷ HAProxy, round by round.
#[derive(Debug)]
struct PerRound {
    /// The median of the rounds' ratios.
    median: f64,
    /// A 95 % confidence interval for that median ([`median_interval`]); `None` with too few
    /// rounds.
    interval: Option<(f64, f64)>,
    /// The ratios, formatted, in round order.
    list: String,
    /// Rounds whose ratio is below 1 (Flotilla's figure the smaller), and above 1.
    below: usize,
    above: usize,
    rounds: usize,
}

/// Which side of 1 a ratio's target is on.
#[derive(Debug, Clone, Copy)]
enum Target {
    AtLeastOne,
    AtMostOne,
}

impl Target {
    /// Whether a ratio of `ratio` meets this target.
    fn met_by(self, ratio: f64) -> bool {
        match self {
            Target::AtLeastOne => ratio >= 1.0,
            Target::AtMostOne => ratio <= 1.0,
        }
    }
}

impl PerRound {
    /// Whether the rounds settle the verdict: the 95 % interval of the median lies wholly on
    /// one side of 1, or spans it (the difference is within the noise of these rounds).
    fn settled(&self, target: Target) -> String {
        let Some((lo, hi)) = self.interval else {
            return format!(
                "{} rounds are too few for a 95 % interval of the median (6 at least)",
                self.rounds
            );
        };
        let reading = if target.met_by(lo) && target.met_by(hi) {
            "all of it meets the target: these rounds settle it"
        } else if !target.met_by(lo) && !target.met_by(hi) {
            "none of it meets the target: these rounds settle it"
        } else {
            "it spans 1: the difference is within the noise of these rounds"
        };
        format!("95 % interval of the median {lo:.2}–{hi:.2}: {reading}")
    }
}

fn print_load(paths: &[Contender], cells: &[Cell], settings: &LoadSettings) {
    println!("## Reverse proxies in front of one upstream");
    println!();
    println!(
        "Each cell: {:.0} s warm-up, then {:.0} s measured; {} measured run(s) per cell{}. \
         Proxy CPU = utime + stime of the proxy's process tree (nginx master + workers) from \
         `/proc/<pid>/stat`, before and after the measured run; CPU/req = that over the requests \
         served. Peak RSS = VmHWM summed over the tree, {}. MB = 10^6 bytes.",
        settings.warmup.as_secs_f64(),
        settings.duration.as_secs_f64(),
        settings.repeats,
        if settings.repeats > 1 {
            " (medians)"
        } else {
            ""
        },
        if settings.peak_rss_per_run {
            "reset before each measured run (`clear_refs` 5), so the peak of that run"
        } else {
            "peak since the process started (resetting it was not allowed)"
        },
    );
    println!();
    for c in paths {
        println!("- {}: {}", c.kind.name(), c.about);
    }
    println!();
    for &shape in &settings.shapes {
        println!("### {}", shape.title());
        println!();
        println!(
            "| path | req/s | p50 | p99 | errors | proxy CPU | CPU/req | peak RSS | upstream CPU | upstream conns | VM steal |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for c in cells.iter().filter(|c| c.shape == shape) {
            println!(
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2} s | {:.0} | {} |",
                c.kind.name(),
                c.req_per_sec,
                ms(c.p50),
                ms(c.p99),
                c.errors,
                c.cpu.map_or("-".into(), |v| format!("{v:.2} s")),
                c.cpu_per_req.map_or("-".into(), |v| format!("{v:.1} µs")),
                c.peak_rss
                    .map_or("-".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
                c.upstream_cpu,
                c.upstream_conns,
                percent(c.steal),
            );
        }
        println!();
    }

    println!("### Flotilla ÷ HAProxy");
    println!();
    println!("| shape | req/s | p99 | CPU/req | peak RSS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    };
    let fmt = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}×"));
    for &shape in &settings.shapes {
        let (f, h) = (
            cell(cells, Kind::Flotilla, shape),
            cell(cells, Kind::HAProxy, shape),
        );
        println!(
            "| {} | {} | {} | {} | {} |",
            shape.short(),
            fmt(ratio(f.map(|c| c.req_per_sec), h.map(|c| c.req_per_sec))),
            fmt(ratio(f.map(|c| c.p99), h.map(|c| c.p99))),
            fmt(ratio(
                f.and_then(|c| c.cpu_per_req),
                h.and_then(|c| c.cpu_per_req)
            )),
            fmt(ratio(
                f.and_then(|c| c.peak_rss.map(|b| b as f64)),
                h.and_then(|c| c.peak_rss.map(|b| b as f64))
            )),
        );
    }
    println!();
    let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
    if let (Some(f), Some(h)) = (
        cell(cells, Kind::Flotilla, Shape::Http1),
        cell(cells, Kind::HAProxy, Shape::Http1),
    ) {
        let rps = per_round(f, h, |round| round.req_per_sec);
        let p99 = per_round(f, h, |round| round.p99);
        println!(
            "- {}: HTTP/1.1 req/s: Flotilla ÷ HAProxy = {:.2} × (median of the rounds: {}; \
             Flotilla ahead in {} of {} rounds; medians {:.0} and {:.0} req/s) (target ≥ 1.00 ×); {}",
            verdict(Target::AtLeastOne.met_by(rps.median)),
            rps.median,
            rps.list,
            rps.above,
            rps.rounds,
            f.req_per_sec,
            h.req_per_sec,
            rps.settled(Target::AtLeastOne),
        );
        println!(
            "- {}: HTTP/1.1 p99: Flotilla ÷ HAProxy = {:.2} × (median of the rounds: {}; \
             Flotilla lower in {} of {} rounds; medians {} and {}) (target ≤ 1.00 ×); {}",
            verdict(Target::AtMostOne.met_by(p99.median)),
            p99.median,
            p99.list,
            p99.below,
            p99.rounds,
            ms(f.p99),
            ms(h.p99),
            p99.settled(Target::AtMostOne),
        );
        let by_round = |c: &Cell| {
            c.rounds
                .iter()
                .map(|r| percent(r.steal))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "- VM steal during those HTTP/1.1 runs, by round (CPU time the hypervisor gave to \
             other guests; a round where it is high, or differs between the two, is a noisy one): \
             Flotilla {}; HAProxy {}",
            by_round(f),
            by_round(h)
        );
    }
    let with_errors: Vec<String> = cells
        .iter()
        .filter(|c| c.errors > 0)
        .map(|c| format!("{} {} ({})", c.kind.name(), c.shape.short(), c.errors))
        .collect();
    if with_errors.is_empty() {
        println!("- every request of every cell got a 2xx");
    } else {
        println!(
            "- requests without a 2xx (counted in req/s above, so read those cells with care): {}",
            with_errors.join(", ")
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_100_bytes() {
        assert_eq!(upstream::BODY.len(), 100);
    }

    #[test]
    fn per_round_ratios_pair_the_runs_of_a_round() {
        let cell = |rounds: Vec<(f64, f64)>| Cell {
            kind: Kind::Flotilla,
            shape: Shape::Http1,
            req_per_sec: 0.0,
            p50: 0.0,
            p99: 0.0,
            errors: 0,
            cpu: None,
            cpu_per_req: None,
            peak_rss: None,
            upstream_cpu: 0.0,
            upstream_conns: 0.0,
            steal: None,
            rounds: rounds
                .into_iter()
                .map(|(req_per_sec, p99)| Round {
                    req_per_sec,
                    p99,
                    steal: None,
                })
                .collect(),
        };
        // One round out of line (0.75) sets the ratio of the medians (30 ÷ 40 = 0.75), not the
        // median of the rounds' ratios.
        let f = cell(vec![(11.0, 1.0), (30.0, 3.0), (44.0, 2.0)]);
        let h = cell(vec![(10.0, 2.0), (40.0, 2.0), (40.0, 4.0)]);
        let r = per_round(&f, &h, |round| round.req_per_sec);
        assert!((r.median - 1.1).abs() < 1e-9, "{r:?}");
        assert_eq!(r.list, "1.10, 0.75, 1.10");
        assert_eq!((r.above, r.below, r.rounds), (2, 1, 3));
        let q = per_round(&f, &h, |round| round.p99);
        assert!((q.median - 0.5).abs() < 1e-9, "{q:?}");
        // 0.5, 1.5, 0.5: lower in two rounds, higher in one.
        assert_eq!((q.below, q.above), (2, 1));
    }

    #[test]
    fn odd_rounds_reverse_the_order_of_the_paths() {
        assert_eq!(round_order(4, 0), [0, 1, 2, 3]);
        assert_eq!(round_order(4, 1), [3, 2, 1, 0]);
        assert_eq!(round_order(4, 2), [0, 1, 2, 3]);
    }

    #[test]
    fn shapes_pick_the_load_shapes() {
        assert_eq!(Shapes::Http1.list(), [Shape::Http1]);
        assert_eq!(Shapes::H2c.list(), [Shape::H2]);
        assert_eq!(Shapes::All.list(), Shape::ALL);
    }

    #[test]
    fn median_intervals_are_order_statistics_of_the_binomial() {
        // n = 15: P(B ≤ 3) = 576/32768, twice that 3.5 % ≤ 5 %; P(B ≤ 4) twice is 11.8 %. So
        // the 4th smallest and the 4th largest.
        let values: Vec<f64> = (1..=15).rev().map(f64::from).collect();
        assert_eq!(median_interval(values), Some((4.0, 12.0)));
        // n = 6: the extremes leave 2/64 = 3.1 %.
        let six: Vec<f64> = (1..=6).map(f64::from).collect();
        assert_eq!(median_interval(six), Some((1.0, 6.0)));
        // n = 5: even the extremes leave 2/32 = 6.25 %.
        assert_eq!(median_interval(vec![1.0, 2.0, 3.0, 4.0, 5.0]), None);
        assert_eq!(median_interval(Vec::new()), None);
        // n = 25: P(B ≤ 7) = 21.6 ‰, P(B ≤ 8) = 53.9 ‰: the 8th and the 18th.
        let many: Vec<f64> = (1..=25).map(f64::from).collect();
        assert_eq!(median_interval(many), Some((8.0, 18.0)));
    }

    #[test]
    fn settled_reads_the_interval_against_the_target() {
        let with = |interval| PerRound {
            median: 1.0,
            interval,
            list: String::new(),
            below: 0,
            above: 0,
            rounds: 15,
        };
        let cases = [
            (Some((1.01, 1.1)), Target::AtLeastOne, "all of it meets"),
            (Some((0.9, 0.99)), Target::AtLeastOne, "none of it"),
            (Some((0.9, 1.05)), Target::AtLeastOne, "within the noise"),
            (Some((0.9, 0.99)), Target::AtMostOne, "all of it meets"),
            (Some((1.01, 1.1)), Target::AtMostOne, "none of it"),
            (Some((0.9, 1.05)), Target::AtMostOne, "within the noise"),
            (None, Target::AtMostOne, "too few"),
        ];
        for (interval, target, reading) in cases {
            let text = with(interval).settled(target);
            assert!(text.contains(reading), "{interval:?} {target:?}: {text}");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
