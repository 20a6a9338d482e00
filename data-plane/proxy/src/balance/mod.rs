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
//!
//! [`RoundRobin`] is the older, unweighted balancer, kept until the request path moves to
//! [`Balancer`].

use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Round-robin position over a list of endpoints.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The order in which to try `len` endpoints for one request: the next round-robin index
    /// first, then the ones after it (wrapping), at most `max_attempts` in all.
    pub fn attempts(&self, len: usize, max_attempts: usize) -> impl Iterator<Item = usize> {
        let start = if len == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        };
        (0..len.min(max_attempts)).map(move |i| (start + i) % len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_all_endpoints() {
        let rr = RoundRobin::default();
        let firsts: Vec<usize> = (0..6).filter_map(|_| rr.attempts(3, 3).next()).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn attempts_wrap_and_are_capped() {
        let rr = RoundRobin::default();
        let _ = rr.attempts(4, 1).count();
        let _ = rr.attempts(4, 1).count();
        let order: Vec<usize> = rr.attempts(4, 3).collect();
        assert_eq!(order, [2, 3, 0]);
        assert_eq!(rr.attempts(0, 3).count(), 0);
        assert_eq!(rr.attempts(2, 5).count(), 2);
    }
}
