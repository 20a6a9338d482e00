//! Long-lived runtime state of one endpoint: requests in flight and passive health (outlier
//! detection). Survives config swaps; atomics only.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::OutlierDetection;

/// The longest ejection, in multiples of `base_ejection_time` (Envoy: 300 s max ejection time
/// over the 30 s default base).
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// The process-wide time origin: times are stored as nanoseconds since it in atomics.
pub(super) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `now` as nanoseconds since [`epoch`] (0 for instants before it). The state constructors touch
/// the epoch, so instants taken after a state was created are never clamped.
pub(super) fn nanos(now: Instant) -> u64 {
    duration_nanos(now.saturating_duration_since(epoch()))
}

pub(super) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How one request to an endpoint ended, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any response but a 5xx.
    Success,
    /// A 5xx response or a gateway failure: connect failure, reset, timeout.
    Failure,
}

impl Outcome {
    /// The outcome of a response with `status`: 5xx is a failure.
    pub fn from_status(status: http::StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// Runtime state of one endpoint of one cluster, kept by the
/// [`Registry`](super::Registry) across config snapshots.
#[derive(Debug)]
pub struct EndpointState {
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// The multiplier of the last ejection (decays while the endpoint stays healthy).
    ejections: AtomicU32,
    /// End of the last ejection, nanos since the epoch; 0: never ejected.
    ejected_until: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointState {
    /// A healthy endpoint with nothing in flight.
    pub fn new() -> Self {
        epoch();
        EndpointState {
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Requests in flight to this endpoint (through this proxy).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Whether the endpoint is ejected at `now`. Ejection ends by time alone.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_at(nanos(now))
    }

    pub(super) fn ejected_at(&self, now_nanos: u64) -> bool {
        self.ejected_until.load(Relaxed) > now_nanos
    }

    /// Failures in a row since the last success or ejection.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// The multiplier of the latest ejection: the n-th ejection in a row lasts n times
    /// `base_ejection_time` (at most [`MAX_EJECTION_MULTIPLIER`]); 0 if never ejected.
    pub fn ejection_multiplier(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// Records how a request ended. A success resets the failure count. A failure that makes
    /// `consecutive_5xx` in a row ejects the endpoint for `base_ejection_time × n`, where n grows
    /// by one per ejection (at most [`MAX_EJECTION_MULTIPLIER`]) and drops by one per `interval`
    /// the endpoint stayed in service; unless the `enforcing_consecutive_5xx` percentage draw
    /// says no (the count restarts), or `max_ejection_percent` of `siblings` (the cluster's
    /// endpoints, this one included) would be exceeded — one endpoint may always be ejected
    /// (Envoy's rule) — in which case the next failure tries again. Returns whether this call
    /// ejected the endpoint.
    ///
    /// Concurrent ejections of different endpoints may both pass the percentage check; the limit
    /// is best effort by at most the number of racing calls.
    pub fn record(
        &self,
        outcome: Outcome,
        detection: &OutlierDetection,
        siblings: &[Arc<EndpointState>],
        now: Instant,
    ) -> bool {
        self.record_with(outcome, detection, siblings, now, &mut rand::rng())
    }

    /// [`Self::record`] with the randomness passed in.
    pub(super) fn record_with(
        &self,
        outcome: Outcome,
        detection: &OutlierDetection,
        siblings: &[Arc<EndpointState>],
        now: Instant,
        rng: &mut impl Rng,
    ) -> bool {
        if outcome == Outcome::Success {
            // Load first: most requests succeed, and a store would bounce the cache line.
            if self.consecutive_failures.load(Relaxed) != 0 {
                self.consecutive_failures.store(0, Relaxed);
            }
            return false;
        }
        let now = nanos(now);
        let until = self.ejected_until.load(Relaxed);
        if until > now {
            // Already ejected: late answers to requests sent before do not count towards the
            // next ejection.
            return false;
        }
        let failures = self
            .consecutive_failures
            .fetch_add(1, Relaxed)
            .saturating_add(1);
        if failures < detection.consecutive_5xx.max(1) {
            return false;
        }
        if detection.enforcing_consecutive_5xx < 100
            && rng.random_range(0..100) >= detection.enforcing_consecutive_5xx
        {
            self.consecutive_failures.store(0, Relaxed);
            return false;
        }
        if !ejection_allowed(detection.max_ejection_percent, siblings, now) {
            return false;
        }
        let multiplier = if until == 0 {
            1
        } else {
            let healthy_intervals = (now - until) / duration_nanos(detection.interval).max(1);
            let decayed = u64::from(self.ejections.load(Relaxed)).saturating_sub(healthy_intervals);
            u32::try_from(decayed)
                .unwrap_or(MAX_EJECTION_MULTIPLIER)
                .saturating_add(1)
                .min(MAX_EJECTION_MULTIPLIER)
        };
        let duration =
            duration_nanos(detection.base_ejection_time).saturating_mul(u64::from(multiplier));
        let new_until = now.saturating_add(duration).max(1);
        if self
            .ejected_until
            .compare_exchange(until, new_until, Relaxed, Relaxed)
            .is_err()
        {
            return false; // another request ejected it first
        }
        self.ejections.store(multiplier, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        true
    }
}

/// Whether one more of `siblings` may be ejected at `now`: always when none is; otherwise while
/// the ejected share, counting the new one, stays within `max_percent`.
fn ejection_allowed(max_percent: u32, siblings: &[Arc<EndpointState>], now: u64) -> bool {
    let ejected = siblings.iter().filter(|s| s.ejected_at(now)).count() as u64;
    ejected == 0 || (ejected + 1) * 100 <= u64::from(max_percent) * siblings.len() as u64
}

/// A request in flight to an endpoint; dropping it ends the request.
#[must_use = "the request counts as in flight only while the guard lives"]
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// Envoy's defaults: 5 failures, 10 s interval, 30 s base ejection, 10 %.
    fn detection() -> OutlierDetection {
        OutlierDetection::default()
    }

    fn cluster(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n).map(|_| Arc::new(EndpointState::new())).collect()
    }

    /// Records `n` failures; returns whether the last one ejected.
    fn fail(
        e: &EndpointState,
        n: u32,
        d: &OutlierDetection,
        all: &[Arc<EndpointState>],
        now: Instant,
    ) -> bool {
        let mut ejected = false;
        for _ in 0..n {
            ejected = e.record(Outcome::Failure, d, all, now);
        }
        ejected
    }

    #[test]
    fn in_flight_guard_counts() {
        let e = Arc::new(EndpointState::new());
        let a = e.start();
        let b = e.start();
        assert_eq!(e.in_flight(), 2);
        drop(a);
        assert_eq!(e.in_flight(), 1);
        assert!(Arc::ptr_eq(b.endpoint(), &e));
        drop(b);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn ejects_after_consecutive_failures_for_base_time() {
        let all = cluster(3);
        let d = detection();
        let t0 = Instant::now();
        assert!(!fail(&all[0], 4, &d, &all, t0));
        assert!(!all[0].is_ejected(t0));
        assert!(all[0].record(Outcome::Failure, &d, &all, t0));
        assert!(all[0].is_ejected(t0));
        assert!(all[0].is_ejected(t0 + Duration::from_secs(29)));
        assert!(!all[0].is_ejected(t0 + Duration::from_secs(30)));
        assert_eq!(all[0].ejection_multiplier(), 1);
        assert_eq!(all[0].consecutive_failures(), 0);
        // Failures while ejected neither eject again nor count afterwards.
        assert!(!fail(&all[0], 10, &d, &all, t0 + Duration::from_secs(1)));
        assert_eq!(all[0].consecutive_failures(), 0);
        let back = t0 + Duration::from_secs(30);
        assert!(!all[0].record(Outcome::Failure, &d, &all, back));
    }

    #[test]
    fn success_resets_the_count() {
        let all = cluster(3);
        let d = detection();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(!fail(&all[0], 4, &d, &all, t0));
            assert!(!all[0].record(Outcome::Success, &d, &all, t0));
        }
        assert!(!all[0].is_ejected(t0));
        assert!(fail(&all[0], 5, &d, &all, t0));
    }

    #[test]
    fn one_of_three_may_be_ejected_at_ten_percent() {
        let all = cluster(3);
        let d = detection();
        let t0 = Instant::now();
        assert!(fail(&all[0], 5, &d, &all, t0));
        assert!(!fail(&all[1], 5, &d, &all, t0));
        // Denied by the percentage: the next failure tries again, and succeeds once the first
        // endpoint is back.
        assert!(!all[1].record(Outcome::Failure, &d, &all, t0));
        assert!(all[1].record(Outcome::Failure, &d, &all, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        let all = cluster(20);
        let d = detection();
        let t0 = Instant::now();
        let ejected = all.iter().filter(|e| fail(e, 5, &d, &all, t0)).count();
        assert_eq!(ejected, 2, "10 % of 20");
        let d50 = OutlierDetection {
            max_ejection_percent: 50,
            ..d
        };
        let all = cluster(20);
        let ejected = all.iter().filter(|e| fail(e, 5, &d50, &all, t0)).count();
        assert_eq!(ejected, 10, "50 % of 20");
    }

    #[test]
    fn ejection_time_grows_and_decays() {
        let all = cluster(1);
        let e = &all[0];
        let d = detection();
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        assert!(fail(e, 5, &d, &all, t0));
        assert!(!e.is_ejected(secs(30)));
        // Back at 30 s, failing again at 31 s: the second ejection lasts twice as long.
        assert!(fail(e, 5, &d, &all, secs(31)));
        assert_eq!(e.ejection_multiplier(), 2);
        assert!(e.is_ejected(secs(31 + 59)));
        assert!(!e.is_ejected(secs(31 + 60)));
        // Third: three times.
        assert!(fail(e, 5, &d, &all, secs(91)));
        assert_eq!(e.ejection_multiplier(), 3);
        assert!(e.is_ejected(secs(91 + 89)));
        assert!(!e.is_ejected(secs(91 + 90)));
        // Healthy for 20 s (two intervals) after that: 3 - 2 + 1 = 2.
        assert!(fail(e, 5, &d, &all, secs(181 + 20)));
        assert_eq!(e.ejection_multiplier(), 2);
        // Healthy for a long time: back to the base time.
        assert!(fail(e, 5, &d, &all, secs(10_000)));
        assert_eq!(e.ejection_multiplier(), 1);
        assert!(!e.is_ejected(secs(10_030)));
    }

    #[test]
    fn ejection_multiplier_is_capped() {
        let all = cluster(1);
        let e = &all[0];
        let d = detection();
        let mut t = Instant::now();
        for _ in 0..15 {
            assert!(fail(e, 5, &d, &all, t));
            t += d.base_ejection_time * e.ejection_multiplier();
        }
        assert_eq!(e.ejection_multiplier(), MAX_EJECTION_MULTIPLIER);
    }

    #[test]
    fn enforcing_percentage_is_drawn() {
        let all = cluster(1);
        let t0 = Instant::now();
        let never = OutlierDetection {
            enforcing_consecutive_5xx: 0,
            ..detection()
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            assert!(!all[0].record_with(Outcome::Failure, &never, &all, t0, &mut rng));
        }
        let half = OutlierDetection {
            enforcing_consecutive_5xx: 50,
            consecutive_5xx: 1,
            ..detection()
        };
        let mut ejected = 0;
        for i in 0..1000 {
            let e = EndpointState::new();
            let now = t0 + Duration::from_secs(i);
            ejected += usize::from(e.record_with(Outcome::Failure, &half, &[], now, &mut rng));
        }
        assert!((400..600).contains(&ejected), "{ejected} of 1000 at 50 %");
    }

    #[test]
    fn outcome_from_status() {
        assert_eq!(Outcome::from_status(http::StatusCode::OK), Outcome::Success);
        assert_eq!(
            Outcome::from_status(http::StatusCode::NOT_FOUND),
            Outcome::Success
        );
        assert_eq!(
            Outcome::from_status(http::StatusCode::BAD_GATEWAY),
            Outcome::Failure
        );
    }
}
