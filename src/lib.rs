//! The `flotilla` application: wires the crates into the processes the binary runs.
//!
//! - [`server`]: the control plane (state store, scheduler loops, agent gRPC, discovery gRPC,
//!   HTTP API).
//! - [`agent`]: a node (the node agent plus the node proxy it hosts).
//! - [`proxy`]: the node proxy alone, with static config from a bootstrap file.
//! - [`dev`]: both in one process, talking over their real protocols on loopback, with jobs
//!   submitted at start.
//!
//! Dependencies point one way: this crate depends on every component; no component depends on
//! it, and components do not depend on their siblings.

pub mod agent;
pub mod dev;
pub mod proxy;
pub mod server;
pub mod signals;

/// Set up logging to stderr; `RUST_LOG` overrides `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
