//! The balancer of one cluster in one snapshot: the order in which to try its endpoints.

use std::cmp::Reverse;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use rand::Rng;

use super::endpoint::{EndpointState, nanos};
use super::maglev::Maglev;
use super::ring::{MAX_RING_ENDPOINTS, Ring};
use crate::config::LbPolicy;

/// The most endpoints one [`Balancer::pick`] returns (first try and fallbacks).
pub const MAX_PICKS: usize = 8;

/// The most endpoints least request compares per pick, whatever `choice_count` says.
const MAX_CHOICES: usize = 8;

/// Distinct endpoint indexes in the order to try them; array-backed, no allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Picks {
    indexes: [usize; MAX_PICKS],
    len: usize,
}

impl Picks {
    /// Appends `i` unless it is already there or the picks are full.
    fn push(&mut self, i: usize) {
        if self.len < MAX_PICKS && !self.as_slice().contains(&i) {
            self.indexes[self.len] = i;
            self.len += 1;
        }
    }

    /// The indexes, first choice first.
    pub fn as_slice(&self) -> &[usize] {
        &self.indexes[..self.len]
    }
}

impl Deref for Picks {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        self.as_slice()
    }
}

impl fmt::Debug for Picks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl IntoIterator for Picks {
    type Item = usize;
    type IntoIter = std::iter::Take<std::array::IntoIter<usize, MAX_PICKS>>;

    fn into_iter(self) -> Self::IntoIter {
        self.indexes.into_iter().take(self.len)
    }
}

impl<'a> IntoIterator for &'a Picks {
    type Item = &'a usize;
    type IntoIter = std::slice::Iter<'a, usize>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// Picks endpoints of one cluster under its [`LbPolicy`]. Built once per snapshot over the
/// cluster's healthy endpoints; the long-lived per-endpoint state (load, ejection) is passed to
/// each [`Self::pick`].
///
/// Size: a few words for a cluster of one endpoint or for round robin, random and least request
/// with equal weights; 8 bytes per endpoint with unequal weights; ring hash about
/// `max(minimum_ring_size, 160 × endpoints)` points of 8 bytes; Maglev a table of 2-byte slots:
/// 1031 up to 10 endpoints, 4099 up to 40, 16411 up to 164, then 65537.
pub struct Balancer {
    len: usize,
    kind: Kind,
}

enum Kind {
    /// No choice to make: no endpoint or one.
    Single,
    RoundRobin(WeightedRoundRobin),
    Random(Weights),
    LeastRequest {
        choices: usize,
        weights: Weights,
    },
    RingHash(Ring),
    Maglev(Maglev),
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match &self.kind {
            Kind::Single => "single",
            Kind::RoundRobin(_) => "round_robin",
            Kind::Random(_) => "random",
            Kind::LeastRequest { .. } => "least_request",
            Kind::RingHash(_) => "ring_hash",
            Kind::Maglev(_) => "maglev",
        };
        f.debug_struct("Balancer")
            .field("endpoints", &self.len)
            .field("policy", &policy)
            .finish()
    }
}

impl Balancer {
    /// A balancer over `endpoints` (address, weight; a weight of 0 counts as 1) under `policy`.
    /// Least request compares at most 8 choices whatever `choice_count` says. Ring hash over
    /// more than 65536 endpoints (ketama's limit) uses a Maglev table instead.
    pub fn new(endpoints: &[(SocketAddr, u32)], policy: &LbPolicy) -> Balancer {
        Self::new_with(endpoints, policy, &mut rand::rng())
    }

    fn new_with(endpoints: &[(SocketAddr, u32)], policy: &LbPolicy, rng: &mut impl Rng) -> Self {
        let kind = if endpoints.len() <= 1 {
            Kind::Single
        } else {
            match policy {
                LbPolicy::RoundRobin => Kind::RoundRobin(WeightedRoundRobin::new(endpoints, rng)),
                LbPolicy::Random => Kind::Random(Weights::new(endpoints)),
                LbPolicy::LeastRequest { choice_count } => Kind::LeastRequest {
                    choices: (*choice_count as usize).clamp(1, MAX_CHOICES),
                    weights: Weights::new(endpoints),
                },
                LbPolicy::RingHash {
                    minimum_ring_size,
                    maximum_ring_size,
                } if endpoints.len() <= MAX_RING_ENDPOINTS => {
                    Kind::RingHash(Ring::new(endpoints, *minimum_ring_size, *maximum_ring_size))
                }
                LbPolicy::RingHash { .. } | LbPolicy::Maglev => {
                    Kind::Maglev(Maglev::new(endpoints))
                }
            }
        };
        Balancer {
            len: endpoints.len(),
            kind,
        }
    }

    /// Endpoints balanced over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no endpoint to pick.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `max` (at most [`MAX_PICKS`]) distinct endpoint indexes, in the order to try them:
    /// the policy's pick first, then fallbacks for connect failures and retries — the next
    /// distinct endpoints on the ring or table for hashing policies, the next in the round-robin
    /// order for round robin, the next in endpoint order otherwise.
    ///
    /// `hash` is the request's [`request_hash`](super::request_hash); ring hash and Maglev pick
    /// at random without one. `states[i]` is the state of endpoint `i` (a missing state counts as
    /// idle and healthy). Endpoints ejected at `now` are skipped, unless all of them are (panic
    /// mode: ejection is ignored).
    pub fn pick(
        &self,
        hash: Option<u64>,
        states: &[Arc<EndpointState>],
        max: usize,
        now: Instant,
    ) -> Picks {
        self.pick_with(hash, states, max, now, &mut rand::rng())
    }

    fn pick_with(
        &self,
        hash: Option<u64>,
        states: &[Arc<EndpointState>],
        max: usize,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Picks {
        let max = max.min(MAX_PICKS).min(self.len);
        let mut picks = Picks::default();
        if max == 0 {
            return picks;
        }
        let now = nanos(now);
        let ejected = |i: usize| states.get(i).is_some_and(|s| s.ejected_at(now));
        self.pick_into(&mut picks, hash, states, max, &ejected, rng);
        if picks.is_empty() {
            // Panic mode: every endpoint is ejected.
            self.pick_into(&mut picks, hash, states, max, &|_| false, rng);
        }
        picks
    }

    fn pick_into(
        &self,
        picks: &mut Picks,
        hash: Option<u64>,
        states: &[Arc<EndpointState>],
        max: usize,
        ejected: &dyn Fn(usize) -> bool,
        rng: &mut impl Rng,
    ) {
        let n = self.len;
        // Takes `i` if usable; true once `max` are taken.
        let offer = |picks: &mut Picks, i: usize| {
            if picks.len() < max && !ejected(i) {
                picks.push(i);
            }
            picks.len() >= max
        };
        match &self.kind {
            Kind::Single => {}
            Kind::RoundRobin(rr) => {
                let start = rr.next_position();
                for k in 0..n {
                    if offer(picks, rr.index((start + k) % n)) {
                        return;
                    }
                }
            }
            Kind::Random(weights) => {
                for _ in 0..3 {
                    offer(picks, weights.draw(n, rng));
                    if !picks.is_empty() {
                        break;
                    }
                }
            }
            Kind::LeastRequest { choices, weights } => {
                if let Some(best) = least_loaded(n, *choices, weights, states, ejected, rng) {
                    picks.push(best);
                }
            }
            Kind::RingHash(ring) => {
                let hash = hash.unwrap_or_else(|| rng.random());
                for i in ring.walk(hash) {
                    if offer(picks, i) {
                        return;
                    }
                }
            }
            Kind::Maglev(table) => {
                let hash = hash.unwrap_or_else(|| rng.random());
                for i in table.walk(hash) {
                    if offer(picks, i) {
                        return;
                    }
                }
            }
        }
        if picks.len() >= max {
            return;
        }
        // Fallbacks (and the pick itself if the policy found no usable endpoint): endpoint order
        // after the first pick.
        let start = match picks.first() {
            Some(&first) => first + 1,
            None => rng.random_range(0..n),
        };
        for k in 0..n {
            if offer(picks, (start + k) % n) {
                return;
            }
        }
    }
}

/// The least loaded (in flight / weight) of up to `choices` distinct random usable endpoints
/// (all of them when there are no more than `choices`); ties are broken at random.
fn least_loaded(
    n: usize,
    choices: usize,
    weights: &Weights,
    states: &[Arc<EndpointState>],
    ejected: &dyn Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    let mut candidates = [0usize; MAX_CHOICES];
    let count = if n <= choices {
        (0..n).for_each(|i| candidates[i] = i);
        n
    } else {
        // Floyd's sampling of `choices` distinct indexes.
        for (k, j) in (n - choices..n).enumerate() {
            let t = rng.random_range(0..=j);
            candidates[k] = if candidates[..k].contains(&t) { j } else { t };
        }
        choices
    };
    let mut best: Option<(usize, u64, u64)> = None;
    // Candidates tied with the best so far; each of them ends up the pick with equal chance.
    let mut ties = 0u32;
    for &i in &candidates[..count] {
        if ejected(i) {
            continue;
        }
        let load = states.get(i).map_or(0, |s| u64::from(s.in_flight()));
        let weight = weights.weight(i);
        // Compares load / weight without dividing.
        let (this, that) = best.map_or((0, 1), |(_, l, w)| (load * w, l * weight));
        if best.is_none() || this < that {
            best = Some((i, load, weight));
            ties = 1;
        } else if this == that {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = Some((i, load, weight));
            }
        }
    }
    best.map(|(i, _, _)| i)
}

/// Endpoint weights, kept only when they differ.
enum Weights {
    Equal,
    Unequal {
        weights: Box<[u32]>,
        /// Running sums of the weights, for weighted draws.
        cumulative: Box<[u64]>,
    },
}

impl Weights {
    fn new(endpoints: &[(SocketAddr, u32)]) -> Weights {
        let first = endpoints.first().map_or(1, |e| e.1.max(1));
        if endpoints.iter().all(|e| e.1.max(1) == first) {
            return Weights::Equal;
        }
        let weights: Box<[u32]> = endpoints.iter().map(|e| e.1.max(1)).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        Weights::Unequal {
            weights,
            cumulative,
        }
    }

    fn weight(&self, i: usize) -> u64 {
        match self {
            Weights::Equal => 1,
            Weights::Unequal { weights, .. } => u64::from(weights[i]),
        }
    }

    /// A random index of `n`, weighted.
    fn draw(&self, n: usize, rng: &mut impl Rng) -> usize {
        match self {
            Weights::Equal => rng.random_range(0..n),
            Weights::Unequal { cumulative, .. } => {
                let total = cumulative.last().copied().unwrap_or(1);
                let r = rng.random_range(0..total);
                cumulative.partition_point(|&c| c <= r)
            }
        }
    }
}

/// Interleaved weighted round robin with one atomic counter: round `r` visits, in descending
/// weight order, every endpoint whose weight exceeds `r`; a period of `Σ weights` positions
/// gives each endpoint exactly its weight. The counter starts at a random position, so frequent
/// snapshot rebuilds do not send every cluster's first requests to the same endpoint.
struct WeightedRoundRobin {
    next: AtomicU64,
    period: u64,
    /// Endpoint indexes by descending weight; `None`: all weights equal (endpoint order).
    order: Option<Box<[u32]>>,
    /// Per weight level, ascending: (its first position in the period, endpoints per round).
    /// Positions of a level cycle through the first `count` entries of `order`.
    levels: Box<[(u64, u32)]>,
}

impl WeightedRoundRobin {
    fn new(endpoints: &[(SocketAddr, u32)], rng: &mut impl Rng) -> Self {
        let n = endpoints.len();
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.1.max(1))).collect();
        let (period, order, levels) = if weights.iter().all(|&w| w == weights[0]) {
            (n as u64, None, Box::from([(0, n as u32)]))
        } else {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by_key(|&i| Reverse(weights[i as usize]));
            let mut ascending = weights.clone();
            ascending.sort_unstable();
            let mut levels = Vec::new();
            let (mut position, mut previous) = (0u64, 0u64);
            for (at, &w) in ascending.iter().enumerate() {
                if w == previous {
                    continue;
                }
                // Rounds previous..w visit every endpoint of weight ≥ w.
                let count = (n - at) as u64;
                levels.push((position, count as u32));
                position += (w - previous) * count;
                previous = w;
            }
            (
                position,
                Some(order.into_boxed_slice()),
                levels.into_boxed_slice(),
            )
        };
        WeightedRoundRobin {
            next: AtomicU64::new(rng.random_range(0..period)),
            period,
            order,
            levels,
        }
    }

    /// The next position in `order`.
    fn next_position(&self) -> usize {
        let p = self.next.fetch_add(1, Relaxed) % self.period;
        let level = self.levels.partition_point(|&(start, _)| start <= p) - 1;
        let (start, count) = self.levels[level];
        ((p - start) % u64::from(count)) as usize
    }

    fn index(&self, position: usize) -> usize {
        match &self.order {
            None => position,
            Some(order) => order[position] as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::balance::Outcome;
    use crate::config::OutlierDetection;

    const RING: LbPolicy = LbPolicy::RingHash {
        minimum_ring_size: 1024,
        maximum_ring_size: 8 * 1024 * 1024,
    };
    const P2C: LbPolicy = LbPolicy::LeastRequest { choice_count: 2 };

    fn all_policies() -> [LbPolicy; 5] {
        [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            P2C,
            RING,
            LbPolicy::Maglev,
        ]
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
    }

    fn endpoints(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (addr(i), w))
            .collect()
    }

    fn equal(n: usize) -> Vec<(SocketAddr, u32)> {
        endpoints(&vec![1; n])
    }

    fn states(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n).map(|_| Arc::new(EndpointState::new())).collect()
    }

    fn eject(states: &[Arc<EndpointState>], which: &[usize], now: Instant) {
        let d = OutlierDetection {
            consecutive_5xx: 1,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        for &i in which {
            assert!(states[i].record(Outcome::Failure, &d, states, now));
        }
    }

    /// How often each endpoint comes first over `picks` picks with random hashes.
    fn first_counts(
        b: &Balancer,
        st: &[Arc<EndpointState>],
        picks: usize,
        rng: &mut StdRng,
    ) -> Vec<usize> {
        let now = Instant::now();
        let mut counts = vec![0; b.len()];
        for _ in 0..picks {
            let hash = Some(rng.random());
            counts[b.pick_with(hash, st, 1, now, rng)[0]] += 1;
        }
        counts
    }

    #[test]
    fn weighted_round_robin_gives_each_its_weight_interleaved() {
        let mut rng = StdRng::seed_from_u64(1);
        let b = Balancer::new_with(&endpoints(&[1, 2, 3]), &LbPolicy::RoundRobin, &mut rng);
        let st = states(3);
        let now = Instant::now();
        let seq: Vec<usize> = (0..600)
            .map(|_| b.pick_with(None, &st, 1, now, &mut rng)[0])
            .collect();
        for window in seq.chunks(6) {
            let mut counts = [0; 3];
            window.iter().for_each(|&i| counts[i] += 1);
            // Whatever the starting position, every period holds each weight exactly.
            assert_eq!(counts, [1, 2, 3], "{window:?}");
        }
        // Interleaved, not in blocks: the heaviest never comes three times in a row.
        assert!(seq.windows(3).all(|w| w != [2, 2, 2]), "{:?}", &seq[..12]);
    }

    #[test]
    fn equal_round_robin_cycles_and_falls_back_in_order() {
        let mut rng = StdRng::seed_from_u64(2);
        let b = Balancer::new_with(&equal(4), &LbPolicy::RoundRobin, &mut rng);
        let st = states(4);
        let now = Instant::now();
        let first = b.pick_with(None, &st, 3, now, &mut rng);
        assert_eq!(first.len(), 3);
        let f = first[0];
        assert_eq!(first.as_slice(), [f, (f + 1) % 4, (f + 2) % 4]);
        let next: Vec<usize> = (0..4)
            .map(|_| b.pick_with(None, &st, 1, now, &mut rng)[0])
            .collect();
        assert_eq!(next, [1, 2, 3, 4].map(|k| (f + k) % 4));
    }

    #[test]
    fn random_follows_weights() {
        let mut rng = StdRng::seed_from_u64(3);
        let b = Balancer::new_with(&endpoints(&[1, 3]), &LbPolicy::Random, &mut rng);
        let counts = first_counts(&b, &states(2), 40_000, &mut rng);
        let share = counts[1] as f64 / 40_000.0;
        assert!((0.73..0.77).contains(&share), "weight 3 of 4 got {share}");
        let b = Balancer::new_with(&equal(4), &LbPolicy::Random, &mut rng);
        let counts = first_counts(&b, &states(4), 40_000, &mut rng);
        assert!(
            counts.iter().all(|&c| (9_400..10_600).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let mut rng = StdRng::seed_from_u64(4);
        let b = Balancer::new_with(&equal(4), &P2C, &mut rng);
        let st = states(4);
        let _busy: Vec<InFlightGuards> = (0..10).map(|_| st[0].start()).collect();
        let counts = first_counts(&b, &st, 4000, &mut rng);
        assert_eq!(
            counts[0], 0,
            "two distinct choices never both land on the busy one"
        );
        assert!(counts[1..].iter().all(|&c| c > 1100), "{counts:?}");

        // Loads are divided by weights: 3 in flight on weight 4 beats 1 on weight 1.
        let b = Balancer::new_with(&endpoints(&[1, 4]), &P2C, &mut rng);
        let st = states(2);
        let _one = st[0].start();
        let _three: Vec<InFlightGuards> = (0..3).map(|_| st[1].start()).collect();
        assert_eq!(first_counts(&b, &st, 100, &mut rng), [0, 100]);
    }

    type InFlightGuards = crate::balance::InFlight;

    #[test]
    fn least_request_spreads_when_idle() {
        let mut rng = StdRng::seed_from_u64(5);
        let b = Balancer::new_with(
            &equal(5),
            &LbPolicy::LeastRequest { choice_count: 3 },
            &mut rng,
        );
        let counts = first_counts(&b, &states(5), 10_000, &mut rng);
        assert!(counts.iter().all(|&c| c > 1500), "{counts:?}");
    }

    /// Fraction of `keys` whose first pick is the same endpoint (by address) with `a` and `b`;
    /// and among keys that were not on `removed`.
    fn kept(
        a: &Balancer,
        a_eps: &[(SocketAddr, u32)],
        b: &Balancer,
        b_eps: &[(SocketAddr, u32)],
        removed: SocketAddr,
        keys: &[u64],
    ) -> (f64, f64) {
        let now = Instant::now();
        let (sa, sb) = (states(a.len()), states(b.len()));
        let (mut same, mut others, mut others_same) = (0, 0, 0);
        for &k in keys {
            let before = a_eps[a.pick(Some(k), &sa, 1, now)[0]].0;
            let after = b_eps[b.pick(Some(k), &sb, 1, now)[0]].0;
            same += usize::from(before == after);
            if before != removed {
                others += 1;
                others_same += usize::from(before == after);
            }
        }
        (
            same as f64 / keys.len() as f64,
            others_same as f64 / others as f64,
        )
    }

    fn churn(policy: &LbPolicy) -> Vec<(f64, f64)> {
        let mut rng = StdRng::seed_from_u64(6);
        let keys: Vec<u64> = (0..10_000).map(|_| rng.random()).collect();
        let full = equal(10);
        let a = Balancer::new(&full, policy);
        (0..10)
            .map(|removed| {
                let mut less = full.clone();
                less.remove(removed);
                let b = Balancer::new(&less, policy);
                kept(&a, &full, &b, &less, full[removed].0, &keys)
            })
            .collect()
    }

    fn report(name: &str, figures: &[(f64, f64)]) -> (f64, f64, f64) {
        let all: Vec<f64> = figures.iter().map(|f| f.0).collect();
        let min = all.iter().copied().fold(1.0, f64::min);
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let others = figures.iter().map(|f| f.1).fold(1.0, f64::min);
        println!(
            "{name}: removing 1 of 10 keeps {:.2} % of keys on average (worst removal {:.2} %); \
             keys not on the removed endpoint kept: at worst {:.2} %",
            mean * 100.0,
            min * 100.0,
            others * 100.0
        );
        (mean, min, others)
    }

    #[test]
    fn ring_hash_is_consistent_through_churn() {
        let (mean, min, others) = report("ring hash", &churn(&RING));
        // Only the removed endpoint's keys move: the optimum, 90 % on average.
        assert_eq!(others, 1.0);
        assert!(mean >= 0.8999, "{mean}");
        assert!(min >= 0.85, "{min}");
    }

    #[test]
    fn maglev_is_consistent_through_churn() {
        let (mean, min, others) = report("maglev", &churn(&LbPolicy::Maglev));
        assert!(mean >= 0.87, "{mean}");
        assert!(min >= 0.85, "{min}");
        assert!(others >= 0.95, "{others}");
    }

    fn spread(policy: &LbPolicy, low: f64, high: f64) {
        let mut rng = StdRng::seed_from_u64(7);
        let b = Balancer::new_with(&equal(10), policy, &mut rng);
        let counts = first_counts(&b, &states(10), 10_000, &mut rng);
        let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / 10_000.0).collect();
        println!("{policy:?} shares over 10 endpoints: {shares:.3?}");
        assert!(shares.iter().all(|s| (low..high).contains(s)), "{shares:?}");
    }

    #[test]
    fn ring_hash_spreads_evenly() {
        spread(&RING, 0.07, 0.13);
    }

    #[test]
    fn maglev_spreads_evenly() {
        spread(&LbPolicy::Maglev, 0.085, 0.115);
    }

    #[test]
    fn hashing_policies_follow_weights() {
        for policy in [RING, LbPolicy::Maglev] {
            let mut rng = StdRng::seed_from_u64(8);
            let b = Balancer::new_with(&endpoints(&[1, 3]), &policy, &mut rng);
            let counts = first_counts(&b, &states(2), 20_000, &mut rng);
            let share = counts[1] as f64 / 20_000.0;
            assert!(
                (0.70..0.80).contains(&share),
                "{policy:?}: weight 3 of 4 got {share}"
            );
        }
    }

    #[test]
    fn hashing_is_stable_and_independent_of_endpoint_order() {
        let eps = equal(20);
        let mut reversed = eps.clone();
        reversed.reverse();
        let st = states(20);
        let now = Instant::now();
        for policy in [RING, LbPolicy::Maglev] {
            let a = Balancer::new(&eps, &policy);
            let b = Balancer::new(&reversed, &policy);
            for key in 0..1000u64 {
                let hash = Some(key.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let pa = a.pick(hash, &st, 3, now);
                let pb = b.pick(hash, &st, 3, now);
                assert_eq!(
                    pa,
                    a.pick(hash, &st, 3, now),
                    "{policy:?}: same hash, same picks"
                );
                let addrs_a: Vec<SocketAddr> = pa.iter().map(|&i| eps[i].0).collect();
                let addrs_b: Vec<SocketAddr> = pb.iter().map(|&i| reversed[i].0).collect();
                assert_eq!(addrs_a, addrs_b, "{policy:?}");
            }
        }
    }

    #[test]
    fn no_hash_picks_at_random() {
        for policy in [RING, LbPolicy::Maglev] {
            let mut rng = StdRng::seed_from_u64(9);
            let b = Balancer::new_with(&equal(4), &policy, &mut rng);
            let st = states(4);
            let now = Instant::now();
            let mut counts = [0; 4];
            for _ in 0..4000 {
                counts[b.pick_with(None, &st, 1, now, &mut rng)[0]] += 1;
            }
            assert!(counts.iter().all(|&c| c > 600), "{policy:?}: {counts:?}");
        }
    }

    #[test]
    fn picks_are_distinct_and_bounded() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(10);
        for policy in all_policies() {
            for n in [0, 1, 2, 5, 20] {
                let b = Balancer::new_with(&equal(n), &policy, &mut rng);
                let st = states(n);
                for max in [0, 1, 3, 8, 100] {
                    for _ in 0..50 {
                        let p = b.pick_with(Some(rng.random()), &st, max, now, &mut rng);
                        assert_eq!(
                            p.len(),
                            max.min(n).min(MAX_PICKS),
                            "{policy:?} n={n} max={max}"
                        );
                        let mut sorted = p.to_vec();
                        sorted.sort_unstable();
                        sorted.dedup();
                        assert_eq!(sorted.len(), p.len(), "{policy:?}: {p:?}");
                        assert!(p.iter().all(|&i| i < n));
                    }
                }
            }
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped() {
        let mut rng = StdRng::seed_from_u64(11);
        let now = Instant::now();
        for policy in all_policies() {
            let b = Balancer::new_with(&equal(5), &policy, &mut rng);
            let st = states(5);
            eject(&st, &[1, 3], now);
            for _ in 0..500 {
                let p = b.pick_with(Some(rng.random()), &st, 5, now, &mut rng);
                assert_eq!(p.len(), 3, "{policy:?}: only usable ones, {p:?}");
                assert!(!p.contains(&1) && !p.contains(&3), "{policy:?}: {p:?}");
            }
            // Once the ejection is over they are back.
            let later = now + Duration::from_secs(31);
            assert_eq!(b.pick_with(None, &st, 5, later, &mut rng).len(), 5);
        }
    }

    #[test]
    fn all_ejected_is_panic_mode() {
        let mut rng = StdRng::seed_from_u64(12);
        let now = Instant::now();
        for policy in all_policies() {
            for n in [1, 4] {
                let b = Balancer::new_with(&equal(n), &policy, &mut rng);
                let st = states(n);
                eject(&st, &(0..n).collect::<Vec<_>>(), now);
                let p = b.pick_with(Some(rng.random()), &st, 3, now, &mut rng);
                assert_eq!(
                    p.len(),
                    n.min(3),
                    "{policy:?}: ejection ignored when all are out"
                );
            }
        }
    }

    #[test]
    fn hashing_skips_an_ejected_endpoint_consistently() {
        let now = Instant::now();
        for policy in [RING, LbPolicy::Maglev] {
            let b = Balancer::new(&equal(10), &policy);
            let st = states(10);
            let keys: Vec<u64> = (0..2000u64)
                .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let before: Vec<Picks> = keys.iter().map(|&k| b.pick(Some(k), &st, 2, now)).collect();
            eject(&st, &[4], now);
            for (k, was) in keys.iter().zip(&before) {
                let is = b.pick(Some(*k), &st, 1, now);
                if was[0] == 4 {
                    assert_eq!(is[0], was[1], "{policy:?}: the next on the ring takes over");
                } else {
                    assert_eq!(is[0], was[0], "{policy:?}: others do not move");
                }
            }
        }
    }

    #[test]
    fn sizes_stay_proportional() {
        let single = Balancer::new(&equal(1), &LbPolicy::Maglev);
        assert!(matches!(single.kind, Kind::Single));
        let Kind::Maglev(small) = Balancer::new(&equal(10), &LbPolicy::Maglev).kind else {
            panic!("maglev");
        };
        assert_eq!(small.len(), 1031);
        let Kind::RingHash(small) = Balancer::new(&equal(10), &RING).kind else {
            panic!("ring");
        };
        assert_eq!(small.points(), 1600);
        // Big weights do not blow the ring up: only their ratio counts.
        let Kind::RingHash(heavy) = Balancer::new(&endpoints(&[1000; 10]), &RING).kind else {
            panic!("ring");
        };
        assert_eq!(heavy.points(), 1600);

        let started = Instant::now();
        let big = equal(1000);
        let Kind::Maglev(table) = Balancer::new(&big, &LbPolicy::Maglev).kind else {
            panic!("maglev");
        };
        assert_eq!(table.len(), 65537);
        let Kind::RingHash(ring) = Balancer::new(&big, &RING).kind else {
            panic!("ring");
        };
        assert_eq!(ring.points(), 160_000);
        let rr = Balancer::new(&big, &LbPolicy::RoundRobin);
        let st = states(1000);
        assert_eq!(rr.pick(None, &st, 3, Instant::now()).len(), 3);
        println!(
            "1000-endpoint maglev + ring + round robin built in {:?} (debug)",
            started.elapsed()
        );
    }

    #[test]
    fn round_robin_skips_ejected_in_weighted_order() {
        let mut rng = StdRng::seed_from_u64(13);
        let b = Balancer::new_with(&endpoints(&[1, 2, 3]), &LbPolicy::RoundRobin, &mut rng);
        let st = states(3);
        let now = Instant::now();
        eject(&st, &[2], now);
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for _ in 0..600 {
            *counts
                .entry(b.pick_with(None, &st, 1, now, &mut rng)[0])
                .or_default() += 1;
        }
        assert_eq!(counts.get(&2), None);
        assert_eq!(counts.values().sum::<usize>(), 600);
    }
}
