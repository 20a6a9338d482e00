//! `flotilla-bench-mesh`: figures for the mesh data plane.
//!
//! ```sh
//! cargo run --release -p flotilla-bench-mesh                       # every section
//! cargo run --release -p flotilla-bench-mesh -- --section l4       # L4 forwarding only
//! cargo run --release -p flotilla-bench-mesh -- --section l4 --l4-bytes 512MiB --l4-repeats 5
//! cargo run --release -p flotilla-bench-mesh -- --section latency --latency-seconds 30
//! ```
//!
//! Sections:
//! * `l4`: single-stream throughput and CPU seconds per GB of the L4 forwarder
//!   (`flotilla_forward::forward_tcp`, splice) against `tokio::io::copy_bidirectional`, the
//!   forwarder running in a child process so that its CPU time is its own.
//! * `latency`: what two proxy hops with mTLS add to 1 KiB HTTP requests at 1,000 req/s, on a
//!   real cluster (a server and two agents of the release `flotilla` binary, as child
//!   processes): open-loop load straight to the echo workload and through the client's Connect
//!   upstream, p50/p90/p99 of both and the difference.

mod l4;
mod latency;

use clap::{Parser, Subcommand, ValueEnum};
use flotilla_forward::{Ktls, detect_ktls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    L4,
    Latency,
    All,
}

/// Mesh data-plane benchmark: prints figures, checks them against the targets.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Which section to run.
    #[arg(long, value_enum, default_value_t = Section::All)]
    section: Section,
    #[command(flatten)]
    l4: l4::L4Args,
    #[command(flatten)]
    latency: latency::LatencyArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: the forwarder child process of the l4 section.
    #[command(hide = true)]
    Forwarder(l4::ForwarderArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Forwarder(forwarder)) = args.command {
        return l4::serve_forwarder(&forwarder);
    }

    match detect_ktls() {
        Ktls::Available => println!("kTLS: available (tls ULP listed)"),
        Ktls::Unavailable(reason) => println!("kTLS: unavailable: {reason}; userspace TLS"),
    }
    println!();

    if matches!(args.section, Section::L4 | Section::All) {
        let report = l4::run(&args.l4)?;
        l4::print(&report);
    }
    if matches!(args.section, Section::Latency | Section::All) {
        let report = latency::run(&args.latency)?;
        latency::print(&report);
    }
    Ok(())
}
