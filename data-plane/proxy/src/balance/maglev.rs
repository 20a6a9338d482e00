//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size filled
//! by each endpoint's permutation of the slots, weighted as Envoy does. No maintained crate fits
//! (the `maglev` crate is unweighted and pulls a build-time doc tester), so it is written here.
//!
//! Unlike Envoy, whose table always has 65537 slots (128 KiB here), the size grows with the
//! cluster in a few coarse steps (2 KiB for up to 10 endpoints), so a proxy with many small
//! Maglev clusters stays small.

use std::net::SocketAddr;

use super::hash::hash_addr;

/// Table sizes: primes just above 1024 × 4^k, up to Envoy's default 65537. The size must not
/// follow every change of the endpoint count — a different size reshuffles the whole table — so
/// it moves in few, coarse steps.
const TABLE_SIZES: [usize; 4] = [1031, 4099, 16411, 65537];

/// Slots per endpoint aimed at (the paper's `M ≥ 100 N`). Endpoints of equal weight get table
/// shares that differ by at most one slot, so the imbalance stays within 1 %; and the more slots
/// per endpoint, the fewer keys of the other endpoints move when one goes (measured with 10
/// endpoints: 3 % at 100 slots each, 0.3 % at 6500).
const SLOTS_PER_ENDPOINT: usize = 100;

/// Slots per endpoint below which clusters larger than 6553 endpoints get a table above 65537.
const MIN_SLOTS_PER_ENDPOINT: usize = 10;

/// How far a walk looks for the next distinct usable endpoint before the caller falls back to
/// endpoint order.
const WALK_LIMIT: usize = 512;

/// A Maglev lookup table: slot → endpoint index.
pub(super) enum Maglev {
    Small(Box<[u16]>),
    Large(Box<[u32]>),
}

/// The table size for `n` endpoints: the first of [`TABLE_SIZES`] with 100 slots per endpoint,
/// else 65537 while that leaves 10 per endpoint, else the prime above the power of two that
/// does. Only crossing 10, 40, 164 and 6553 endpoints changes the size (and moves most keys).
pub(super) fn table_size(n: usize) -> usize {
    if let Some(&size) = TABLE_SIZES
        .iter()
        .find(|&&size| size >= n.saturating_mul(SLOTS_PER_ENDPOINT))
    {
        return size;
    }
    let largest = TABLE_SIZES[TABLE_SIZES.len() - 1];
    if largest >= n.saturating_mul(MIN_SLOTS_PER_ENDPOINT) {
        return largest;
    }
    let want = n.saturating_mul(MIN_SLOTS_PER_ENDPOINT).next_power_of_two();
    (want..).find(|&m| is_prime(m)).unwrap_or(want + 1)
}

fn is_prime(m: usize) -> bool {
    m >= 2
        && (2..)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d))
}

impl Maglev {
    /// Builds the table over `endpoints` (address, weight ≥ 1). The table depends on the set of
    /// endpoints, not their order. Endpoints sharing an address share a permutation.
    pub(super) fn new(endpoints: &[(SocketAddr, u32)]) -> Maglev {
        const EMPTY: u32 = u32::MAX;
        let size = table_size(endpoints.len());
        let m = size as u64;

        struct Entry {
            index: u32,
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let mut entries: Vec<Entry> = endpoints
            .iter()
            .enumerate()
            .map(|(i, &(addr, weight))| Entry {
                index: i as u32,
                offset: hash_addr(addr, 0) % m,
                skip: hash_addr(addr, 1) % (m - 1) + 1,
                next: 0,
                weight: u64::from(weight.max(1)),
                target: 0,
            })
            .collect();
        entries.sort_by_key(|e| (endpoints[e.index as usize].0, e.index));
        let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);

        if entries.is_empty() {
            return Maglev::Small(Box::new([]));
        }
        let mut table = vec![EMPTY; size];
        let mut filled = 0;
        'fill: for iteration in 1u64.. {
            for e in &mut entries {
                // An endpoint of the largest weight takes a slot every iteration, one of a third
                // of that weight every third iteration.
                if iteration * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                loop {
                    let slot = ((e.offset + e.skip * e.next) % m) as usize;
                    e.next += 1;
                    if table[slot] == EMPTY {
                        table[slot] = e.index;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        if endpoints.len() <= usize::from(u16::MAX) + 1 {
            Maglev::Small(table.into_iter().map(|i| i as u16).collect())
        } else {
            Maglev::Large(table.into_boxed_slice())
        }
    }

    /// Slots in the table.
    pub(super) fn len(&self) -> usize {
        match self {
            Maglev::Small(t) => t.len(),
            Maglev::Large(t) => t.len(),
        }
    }

    fn get(&self, slot: usize) -> usize {
        match self {
            Maglev::Small(t) => usize::from(t[slot]),
            Maglev::Large(t) => t[slot] as usize,
        }
    }

    /// Endpoint indexes in table order from `hash`'s slot (repeats included), at most a bounded
    /// number.
    pub(super) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let len = self.len();
        let start = if len == 0 {
            0
        } else {
            (hash % len as u64) as usize
        };
        (0..len.min(WALK_LIMIT)).map(move |i| self.get((start + i) % len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_prime_and_coarse() {
        assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)));
        assert_eq!(table_size(2), 1031);
        assert_eq!(table_size(10), 1031);
        assert_eq!(table_size(11), 4099);
        assert_eq!(table_size(164), 16411);
        assert_eq!(table_size(165), 65537);
        assert_eq!(table_size(1000), 65537);
        assert_eq!(table_size(6553), 65537);
        let huge = table_size(10_000);
        assert!(is_prime(huge) && huge >= 100_000, "{huge}");
    }

    #[test]
    fn equal_weights_get_shares_within_one_slot() {
        let eps: Vec<(SocketAddr, u32)> = (0..7u16)
            .map(|i| (SocketAddr::from(([10, 0, 0, 1], 8000 + i)), 1))
            .collect();
        let Maglev::Small(table) = Maglev::new(&eps) else {
            panic!("small table")
        };
        let mut counts = [0usize; 7];
        table.iter().for_each(|&i| counts[usize::from(i)] += 1);
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{counts:?}");
    }
}
