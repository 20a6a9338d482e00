//! Load balancing and resilience primitives: which endpoint a request goes to, and when it may
//! not go anywhere. Pure code, no I/O; time and (in tests) randomness are passed in.
//!
//! Two lifetimes meet here:
//!
//! - **Long-lived state**, kept by the [`Registry`] across config snapshots: per endpoint an
//!   [`EndpointState`] (requests in flight, passive health: outlier ejection), per cluster a
//!   [`ClusterState`] (circuit-breaker counters, retry budget, rate-limit state, overflow
//!   counters). Atomics only; the request path never takes a lock.
//! - **Per-snapshot structures**, rebuilt whenever a snapshot is: a [`Balancer`] per cluster over
//!   its healthy endpoints and [`LbPolicy`](crate::config::LbPolicy) (weighted round robin,
//!   weighted random, least request by power of choices, ketama ring hash, Maglev).
//!
//! Per request: [`request_hash`] (hashing policies only), [`Balancer::pick`] for the endpoints to
//! try in order, [`ClusterState::try_request`] and friends for the limits,
//! [`EndpointState::start`] while the request is in flight, [`EndpointState::record`] with the
//! outcome, and [`retry_backoff`] between attempts.

mod balancer;
mod endpoint;
mod hash;
mod limits;
mod maglev;
mod registry;
mod ring;

pub use balancer::{Balancer, MAX_PICKS, Picks};
pub use endpoint::{EndpointState, InFlight, MAX_EJECTION_MULTIPLIER, Outcome};
pub use hash::request_hash;
pub use limits::{
    Active, ClusterState, ConnectionGuard, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX,
    MIN_RETRY_CONCURRENCY, Overflows, PendingGuard, RETRY_BUDGET_PERCENT, RateLimiter,
    RequestGuard, RetryGuard, retry_backoff,
};
pub use registry::Registry;
