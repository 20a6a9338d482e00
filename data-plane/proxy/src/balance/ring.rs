//! Ring hash: a ketama continuum (Cloudflare's `pingora-ketama`, nginx-compatible) over the
//! endpoints' addresses, sized like Envoy's ring.

use std::net::SocketAddr;

use pingora_ketama::{Bucket, Continuum, DEFAULT_POINT_MULTIPLE};

/// The most points a ring gets whatever the config says (Envoy's default maximum ring size).
pub(super) const MAX_RING_POINTS: u64 = 8 * 1024 * 1024;

/// The most endpoints a ring can tell apart: ketama stores node numbers as 16 bits.
pub(super) const MAX_RING_ENDPOINTS: usize = u16::MAX as usize + 1;

/// How far a walk looks for the next distinct usable endpoint before the caller falls back to
/// endpoint order.
const WALK_LIMIT: usize = 512;

/// A consistent-hash ring over a cluster's endpoints.
pub(super) struct Ring {
    continuum: Continuum,
    /// (address, index of its first endpoint), sorted by address: ketama answers addresses.
    addrs: Box<[(SocketAddr, u32)]>,
    points: usize,
}

impl Ring {
    /// Builds the ring. Every distinct address gets 160 points per weight unit (ketama); weights
    /// are rescaled so the ring has about `max(minimum_ring_size, 160 × total/lightest)` points,
    /// at most `maximum_ring_size` (and [`MAX_RING_POINTS`]) but never under 160 per address.
    /// Endpoints sharing an address share its points (with their weights added). At most
    /// [`MAX_RING_ENDPOINTS`] addresses.
    pub(super) fn new(endpoints: &[(SocketAddr, u32)], minimum: u64, maximum: u64) -> Ring {
        let mut merged: Vec<(SocketAddr, u32, u64)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, (addr, w))| (*addr, i as u32, u64::from((*w).max(1))))
            .collect();
        merged.sort_unstable_by_key(|(addr, i, _)| (*addr, *i));
        merged.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.2 += later.2;
            }
            same
        });
        let total: u64 = merged.iter().map(|m| m.2).sum();
        let lightest = merged.iter().map(|m| m.2).min().unwrap_or(1);
        let per_unit = u64::from(DEFAULT_POINT_MULTIPLE);
        let ceiling = maximum.clamp(1, MAX_RING_POINTS);
        let target = (per_unit.saturating_mul(total) / lightest)
            .max(minimum)
            .min(ceiling);
        // Points wanted per weight unit, over ketama's 160.
        let scale = target as f64 / (per_unit as f64 * total as f64);
        let units: Vec<u32> = merged
            .iter()
            .map(|&(_, _, w)| (w as f64 * scale).round().clamp(1.0, f64::from(u32::MAX)) as u32)
            .collect();
        let buckets: Vec<Bucket> = merged
            .iter()
            .zip(&units)
            .map(|(&(addr, _, _), &units)| Bucket::new(addr, units))
            .collect();
        let points = units.iter().map(|&u| u as usize).sum::<usize>() * per_unit as usize;
        Ring {
            continuum: Continuum::new(&buckets),
            addrs: merged.into_iter().map(|(a, i, _)| (a, i)).collect(),
            points,
        }
    }

    /// Points on the ring.
    #[cfg(test)]
    pub(super) fn points(&self) -> usize {
        self.points
    }

    /// Endpoint indexes in ring order from `hash` (repeats included), at most a bounded number.
    pub(super) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let mut at = self.continuum.node_idx(&hash.to_le_bytes());
        (0..self.points.min(WALK_LIMIT))
            .map_while(move |_| self.continuum.get_addr(&mut at).copied())
            .filter_map(|addr| {
                let found = self.addrs.binary_search_by_key(&addr, |(a, _)| *a).ok()?;
                Some(self.addrs[found].1 as usize)
            })
    }
}
