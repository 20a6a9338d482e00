//! Load balancing over a cluster's healthy endpoints.
//!
//! Round robin with one atomic counter per cluster entry. The counter lives in the snapshot, so
//! it restarts when the cluster set changes — harmless for round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

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
