//! The control plane's data model.
//!
//! Every type here serializes to the JSON shape Nomad's v1 HTTP API uses (PascalCase field
//! names, durations as integer nanoseconds), so existing Nomad clients and scripts can read and
//! write them. The main types are [`Job`] (what an operator submits), [`Allocation`] (one placed
//! instance of a task group on a node), [`Node`], [`Evaluation`] (a unit of scheduler work) and
//! [`ServiceRegistration`] (one instance of a service in the catalog). Consul's L7 config
//! entries ([`ConfigEntry`]) keep Consul's JSON shape instead, Go duration strings included.
//!
//! This crate sits at the bottom of the dependency graph: it holds data and small pure helpers
//! only, no I/O.

mod alloc;
mod config_entry;
mod deployment;
mod diff;
mod eval;
mod job;
mod mesh;
mod node;
mod policy;
mod service;

pub use alloc::*;
pub use config_entry::*;
pub use deployment::*;
pub use diff::*;
pub use eval::*;
pub use job::*;
pub use mesh::*;
pub use node::*;
pub use policy::*;
pub use service::*;

/// The namespace used when a job does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Nanoseconds in one second, for Nomad's integer-nanosecond durations.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Lower bound of the dynamic port range (Nomad's default `min_dynamic_port`).
pub const MIN_DYNAMIC_PORT: u16 = 20000;
/// Upper bound of the dynamic port range (Nomad's default `max_dynamic_port`).
pub const MAX_DYNAMIC_PORT: u16 = 32000;
