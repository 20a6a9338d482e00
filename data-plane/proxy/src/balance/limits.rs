//! Long-lived per-cluster limits: circuit breakers, the retry budget, the local rate limit, and
//! the retry back-off. Atomics only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rand::Rng;

use super::endpoint::{duration_nanos, epoch, nanos};
use crate::config::{CircuitBreakers, RateLimit};

/// Retries always allowed at once by the retry budget, whatever the load (Envoy's
/// `min_retry_concurrency`).
pub const MIN_RETRY_CONCURRENCY: u32 = 3;

/// Retries allowed at once by the retry budget, as a percentage of the cluster's active and
/// pending requests (Envoy's `budget_percent`).
pub const RETRY_BUDGET_PERCENT: u32 = 20;

/// Envoy's default base interval of the retry back-off.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(25);

/// Envoy's default cap of the retry back-off: ten times the base.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_millis(250);

/// Runtime state of one cluster on this proxy, kept by the [`Registry`](super::Registry) across
/// config snapshots: what is open or in flight now, and how often a limit said no.
#[derive(Debug)]
pub struct ClusterState {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    overflow_connections: AtomicU64,
    overflow_pending: AtomicU64,
    overflow_requests: AtomicU64,
    overflow_retries: AtomicU64,
    rate_limited: AtomicU64,
    /// The rate limit's theoretical arrival time (GCRA), nanos since the epoch.
    rate_tat: AtomicU64,
}

/// What a cluster has open or in flight now (for gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Active {
    pub connections: u32,
    pub pending: u32,
    pub requests: u32,
    pub retries: u32,
}

/// How many times each limit refused, since the cluster state was created (for counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overflows {
    /// `max_connections` reached.
    pub connections: u64,
    /// `max_pending_requests` reached.
    pub pending: u64,
    /// `max_concurrent_requests` reached.
    pub requests: u64,
    /// `max_retries` or the retry budget reached.
    pub retries: u64,
    /// The local rate limit refused.
    pub rate_limited: u64,
}

/// Takes one slot of `counter` if it is below `limit`.
fn acquire(counter: &AtomicU32, limit: u32, overflows: &AtomicU64) -> bool {
    let ok = counter
        .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
        .is_ok();
    if !ok {
        overflows.fetch_add(1, Relaxed);
    }
    ok
}

macro_rules! guard {
    ($(#[$doc:meta])* $name:ident, $field:ident) => {
        $(#[$doc])*
        #[must_use = "the slot is held only while the guard lives"]
        #[derive(Debug)]
        pub struct $name(Arc<ClusterState>);

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.$field.fetch_sub(1, Relaxed);
            }
        }
    };
}

guard!(
    /// An upstream connection counted against `max_connections`; dropping it releases the slot.
    ConnectionGuard,
    connections
);
guard!(
    /// A request waiting for a connection, counted against `max_pending_requests`.
    PendingGuard,
    pending
);
guard!(
    /// A request in flight, counted against `max_concurrent_requests` (and the retry budget's
    /// base).
    RequestGuard,
    requests
);
guard!(
    /// A retry in flight, counted against `max_retries` and the retry budget.
    RetryGuard,
    retries
);

impl Default for ClusterState {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterState {
    /// Nothing open, nothing refused yet.
    pub fn new() -> Self {
        epoch(); // fixes the time origin before any `now` a caller passes
        ClusterState {
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            overflow_connections: AtomicU64::new(0),
            overflow_pending: AtomicU64::new(0),
            overflow_requests: AtomicU64::new(0),
            overflow_retries: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rate_tat: AtomicU64::new(0),
        }
    }

    /// A slot for one more request in flight, or `None` at `max_concurrent_requests`.
    pub fn try_request(self: &Arc<Self>, limits: &CircuitBreakers) -> Option<RequestGuard> {
        acquire(
            &self.requests,
            limits.max_concurrent_requests,
            &self.overflow_requests,
        )
        .then(|| RequestGuard(Arc::clone(self)))
    }

    /// A slot for one more request waiting for a connection, or `None` at
    /// `max_pending_requests`.
    pub fn try_pending(self: &Arc<Self>, limits: &CircuitBreakers) -> Option<PendingGuard> {
        acquire(
            &self.pending,
            limits.max_pending_requests,
            &self.overflow_pending,
        )
        .then(|| PendingGuard(Arc::clone(self)))
    }

    /// A slot for one more upstream connection, or `None` at `max_connections`.
    pub fn try_connection(self: &Arc<Self>, limits: &CircuitBreakers) -> Option<ConnectionGuard> {
        acquire(
            &self.connections,
            limits.max_connections,
            &self.overflow_connections,
        )
        .then(|| ConnectionGuard(Arc::clone(self)))
    }

    /// A slot for one more retry, or `None` when `max_retries` retries are in flight or the retry
    /// budget is spent: retries in flight may not exceed the larger of
    /// [`MIN_RETRY_CONCURRENCY`] and [`RETRY_BUDGET_PERCENT`] of the requests active or pending
    /// (held [`RequestGuard`]s and [`PendingGuard`]s).
    pub fn try_retry(self: &Arc<Self>, limits: &CircuitBreakers) -> Option<RetryGuard> {
        let base = u64::from(self.requests.load(Relaxed)) + u64::from(self.pending.load(Relaxed));
        let budget = u32::try_from(base * u64::from(RETRY_BUDGET_PERCENT) / 100)
            .unwrap_or(u32::MAX)
            .max(MIN_RETRY_CONCURRENCY);
        acquire(
            &self.retries,
            budget.min(limits.max_retries),
            &self.overflow_retries,
        )
        .then(|| RetryGuard(Arc::clone(self)))
    }

    /// Whether one more request is within the local rate `limit` at `now` (GCRA, see
    /// [`RateLimiter`]). The state lives here, so it survives config swaps, and a changed limit
    /// applies from the next call.
    pub fn try_rate_limit(&self, limit: &RateLimit, now: Instant) -> bool {
        let ok = gcra(&self.rate_tat, limit, now);
        if !ok {
            self.rate_limited.fetch_add(1, Relaxed);
        }
        ok
    }

    /// What is open or in flight now.
    pub fn active(&self) -> Active {
        Active {
            connections: self.connections.load(Relaxed),
            pending: self.pending.load(Relaxed),
            requests: self.requests.load(Relaxed),
            retries: self.retries.load(Relaxed),
        }
    }

    /// How often each limit refused so far.
    pub fn overflows(&self) -> Overflows {
        Overflows {
            connections: self.overflow_connections.load(Relaxed),
            pending: self.overflow_pending.load(Relaxed),
            requests: self.overflow_requests.load(Relaxed),
            retries: self.overflow_retries.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
        }
    }
}

/// A lock-free local rate limiter: the generic cell rate algorithm (GCRA), equivalent to a token
/// bucket of `burst` tokens refilled at `requests_per_second`, held in one atomic.
///
/// The proxy's per-cluster limit is [`ClusterState::try_rate_limit`] (same algorithm, state that
/// survives config swaps); this type is for limits with a fixed config.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Theoretical arrival time of the next request, nanos since the epoch.
    tat: AtomicU64,
}

impl RateLimiter {
    /// A limiter with a full bucket. A rate or burst of 0 counts as 1.
    pub fn new(limit: RateLimit) -> Self {
        epoch();
        RateLimiter {
            limit,
            tat: AtomicU64::new(0),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token now if there is one.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    /// Takes a token at `now` if there is one.
    pub fn try_acquire_at(&self, now: Instant) -> bool {
        gcra(&self.tat, &self.limit, now)
    }
}

/// GCRA: each request moves the theoretical arrival time `tat` one emission interval
/// (1 s / rate) past `max(tat, now)`; it conforms while `tat` stays within `burst` intervals of
/// `now`.
fn gcra(tat: &AtomicU64, limit: &RateLimit, now: Instant) -> bool {
    let now = nanos(now);
    let interval = (1_000_000_000 / u64::from(limit.requests_per_second.max(1))).max(1);
    let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1)));
    tat.fetch_update(Relaxed, Relaxed, |t| {
        let next = t.max(now).saturating_add(interval);
        (next - now <= tolerance).then_some(next)
    })
    .is_ok()
}

/// The pause before retry number `attempt` (1 for the first retry): exponential back-off with
/// full jitter, uniform in `[0, min(max, base × 2^(attempt-1))]` (Envoy: base
/// [`DEFAULT_RETRY_BASE`], max [`DEFAULT_RETRY_MAX`]).
pub fn retry_backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    retry_backoff_with(attempt, base, max, &mut rand::rng())
}

fn retry_backoff_with(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(max);
    Duration::from_nanos(rng.random_range(0..=duration_nanos(ceiling)))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn limits(n: u32) -> CircuitBreakers {
        CircuitBreakers {
            max_connections: n,
            max_pending_requests: n,
            max_concurrent_requests: n,
            max_retries: n,
        }
    }

    #[test]
    fn circuit_breakers_cap_and_release() {
        let c = Arc::new(ClusterState::new());
        let l = limits(2);
        let r1 = c.try_request(&l).expect("first request");
        let _r2 = c.try_request(&l).expect("second request");
        assert!(c.try_request(&l).is_none());
        let p: Vec<_> = (0..3).filter_map(|_| c.try_pending(&l)).collect();
        assert_eq!(p.len(), 2);
        let k: Vec<_> = (0..5).filter_map(|_| c.try_connection(&l)).collect();
        assert_eq!(k.len(), 2);
        assert_eq!(
            c.active(),
            Active {
                connections: 2,
                pending: 2,
                requests: 2,
                retries: 0
            }
        );
        assert_eq!(
            c.overflows(),
            Overflows {
                connections: 3,
                pending: 1,
                requests: 1,
                ..Overflows::default()
            }
        );
        drop(r1);
        assert!(c.try_request(&l).is_some());
        drop((p, k));
        assert_eq!(c.active().pending, 0);
        assert_eq!(c.active().connections, 0);
    }

    #[test]
    fn retries_are_capped_by_max_retries() {
        let c = Arc::new(ClusterState::new());
        let l = CircuitBreakers {
            max_retries: 2,
            ..CircuitBreakers::default()
        };
        let _reqs: Vec<_> = (0..100).filter_map(|_| c.try_request(&l)).collect();
        let retries: Vec<_> = (0..5).filter_map(|_| c.try_retry(&l)).collect();
        assert_eq!(retries.len(), 2);
        assert_eq!(c.overflows().retries, 3);
        drop(retries);
        assert_eq!(c.active().retries, 0);
        assert!(c.try_retry(&l).is_some());
    }

    #[test]
    fn retry_budget_is_twenty_percent_with_a_floor_of_three() {
        let c = Arc::new(ClusterState::new());
        let l = CircuitBreakers {
            max_retries: 1000,
            ..CircuitBreakers::default()
        };
        // Idle cluster: the floor of three.
        let retries: Vec<_> = (0..10).filter_map(|_| c.try_retry(&l)).collect();
        assert_eq!(retries.len(), 3);
        drop(retries);
        // 40 active + 10 pending requests: 20 % of 50 = 10.
        let _reqs: Vec<_> = (0..40).filter_map(|_| c.try_request(&l)).collect();
        let _pending: Vec<_> = (0..10).filter_map(|_| c.try_pending(&l)).collect();
        let retries: Vec<_> = (0..20).filter_map(|_| c.try_retry(&l)).collect();
        assert_eq!(retries.len(), 10);
    }

    #[test]
    fn rate_limiter_allows_burst_then_rate() {
        let limit = RateLimit {
            requests_per_second: 100,
            burst: 10,
        };
        let r = RateLimiter::new(limit);
        let t0 = Instant::now();
        let burst = (0..50).filter(|_| r.try_acquire_at(t0)).count();
        assert_eq!(burst, 10);
        // One attempt per millisecond for a second: about the rate.
        let steady = (1..=1000)
            .filter(|ms| r.try_acquire_at(t0 + Duration::from_millis(*ms)))
            .count();
        assert!((99..=101).contains(&steady), "{steady} in 1 s at 100/s");
        // After a long pause the bucket holds `burst`, not more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| r.try_acquire_at(later)).count(), 10);
        assert_eq!(r.limit(), limit);
    }

    #[test]
    fn cluster_rate_limit_counts_refusals_and_follows_config() {
        let c = ClusterState::new();
        let t0 = Instant::now();
        let slow = RateLimit {
            requests_per_second: 1,
            burst: 2,
        };
        assert_eq!((0..5).filter(|_| c.try_rate_limit(&slow, t0)).count(), 2);
        assert_eq!(c.overflows().rate_limited, 3);
        // A new config applies at once, on the same state.
        let fast = RateLimit {
            requests_per_second: 1000,
            burst: 5,
        };
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!((0..10).filter(|_| c.try_rate_limit(&fast, t1)).count(), 5);
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let mut rng = StdRng::seed_from_u64(1);
        let base = DEFAULT_RETRY_BASE;
        let max = DEFAULT_RETRY_MAX;
        for (attempt, ceiling) in [
            (0, 25),
            (1, 25),
            (2, 50),
            (3, 100),
            (4, 200),
            (5, 250),
            (99, 250),
        ] {
            let samples: Vec<Duration> = (0..2000)
                .map(|_| retry_backoff_with(attempt, base, max, &mut rng))
                .collect();
            let top = samples.iter().max().copied().unwrap_or_default();
            let low = samples.iter().min().copied().unwrap_or_default();
            assert!(
                top <= Duration::from_millis(ceiling),
                "attempt {attempt}: {top:?}"
            );
            assert!(
                top > Duration::from_millis(ceiling) * 9 / 10,
                "attempt {attempt}: {top:?}"
            );
            assert!(
                low < Duration::from_millis(ceiling) / 10,
                "full jitter reaches near 0"
            );
        }
        assert!(retry_backoff(u32::MAX, base, max) <= max);
    }
}
