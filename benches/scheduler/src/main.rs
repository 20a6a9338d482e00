//! `flotilla-bench-scheduler`: scheduler throughput at scale.
//!
//! ```sh
//! cargo run --release -p flotilla-bench-scheduler                      # 5k/100k, then 10k/1M
//! cargo run --release -p flotilla-bench-scheduler -- --quick           # 1k/20k smoke run
//! cargo run --release -p flotilla-bench-scheduler -- --nodes 10000 --allocs 1000000
//! ```

use std::process::Command;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use flotilla_bench_scheduler::{Config, run};
use flotilla_scheduler::Algorithm;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Algo {
    Binpack,
    Spread,
}

/// Place allocations with the real scheduler, plan checks and store writes, and report
/// throughput, latency and memory against Nomad's and Kubernetes' published figures.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Simulated nodes (with --allocs: one run of this size).
    #[arg(long)]
    nodes: Option<usize>,
    /// Allocations to place (with --nodes).
    #[arg(long)]
    allocs: Option<usize>,
    /// A small run for CI: 1,000 nodes, 20,000 allocations.
    #[arg(long, conflicts_with_all = ["nodes", "allocs"])]
    quick: bool,
    /// Scheduler worker threads planning in parallel.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seed for the simulated cluster and jobs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scoring algorithm.
    #[arg(long, value_enum, default_value_t = Algo::Binpack)]
    algorithm: Algo,
    /// Do not give the scheduler a usage index (usage is read from each touched node's
    /// allocations instead): shows what the index saves.
    #[arg(long)]
    no_index: bool,
    /// Advance the usage index by diffing states (as a server with other writers must) rather
    /// than from the applier's own writes.
    #[arg(long)]
    diff_index: bool,
}

/// The default sizes, each run in its own process so peak RSS is per size.
const DEFAULT_SIZES: [(usize, usize); 2] = [(5_000, 100_000), (10_000, 1_000_000)];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes: Vec<(usize, usize)> = match (args.quick, args.nodes, args.allocs) {
        (true, _, _) => vec![(1_000, 20_000)],
        (false, Some(n), Some(m)) => vec![(n, m)],
        (false, None, None) => {
            let exe = std::env::current_exe().context("locating this benchmark's binary")?;
            for (n, m) in DEFAULT_SIZES {
                let mut cmd = Command::new(&exe);
                cmd.args(["--nodes", &n.to_string(), "--allocs", &m.to_string()])
                    .args(["--workers", &args.workers.to_string()])
                    .args(["--seed", &args.seed.to_string()]);
                if matches!(args.algorithm, Algo::Spread) {
                    cmd.args(["--algorithm", "spread"]);
                }
                if args.no_index {
                    cmd.arg("--no-index");
                }
                if args.diff_index {
                    cmd.arg("--diff-index");
                }
                let status = cmd
                    .status()
                    .with_context(|| format!("running {} for {n} nodes", exe.display()))?;
                anyhow::ensure!(status.success(), "the run with {n} nodes failed: {status}");
            }
            return Ok(());
        }
        _ => anyhow::bail!("--nodes and --allocs go together"),
    };
    for (nodes, allocs) in sizes {
        let report = run(&Config {
            nodes,
            allocs,
            workers: args.workers,
            seed: args.seed,
            algorithm: match args.algorithm {
                Algo::Binpack => Algorithm::Binpack,
                Algo::Spread => Algorithm::Spread,
            },
            usage_index: !args.no_index,
            diff_index: args.diff_index,
        })?;
        print!("{}", report.render());
    }
    Ok(())
}
