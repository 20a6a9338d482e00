//! Transitions of the whole [`CaState`]: first start, rotation, pruning of retired roots.
//!
//! Pure functions over the record the server stores; the server decides when to call them and
//! writes the result through the store, so every server and every proxy sees the same roots.

use std::time::Duration;

use flotilla_types::{CaRoot, CaState, NANOS_PER_SEC};

use crate::{CaError, cross_sign};

/// How long Flotilla-made roots are valid.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The default leaf lifetime (Consul's default is 72 h too).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);

/// A retired root stays trusted this long after its last leaf can have expired, to absorb
/// clock skew and a slow proxy.
pub const PRUNE_GRACE: Duration = Duration::from_secs(60);

/// The leaf lifetime of `state`.
pub fn leaf_ttl(state: &CaState) -> Duration {
    Duration::from_nanos(u64::try_from(state.leaf_cert_ttl).unwrap_or(0))
}

/// A fresh CA state around `root` (made active).
pub fn bootstrap(trust_domain: &str, leaf_ttl: Duration, mut root: CaRoot) -> CaState {
    root.active = true;
    root.rotated_out_at = 0;
    CaState {
        trust_domain: trust_domain.to_string(),
        leaf_cert_ttl: nanos(leaf_ttl),
        roots: vec![root],
    }
}

/// `state` with leaves lasting `ttl` from now on.
pub fn with_leaf_ttl(state: &CaState, ttl: Duration) -> CaState {
    CaState {
        leaf_cert_ttl: nanos(ttl),
        ..state.clone()
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Rotates to `new_root`: it is cross-signed by the current active root and becomes active;
/// the old root stays in the trust bundle (inactive) until [`prune`] drops it. Leaves signed by
/// the new root carry the cross-signed certificate, so peers that only trust the old root
/// accept them during the overlap.
pub fn rotate(state: &CaState, mut new_root: CaRoot, now: i64) -> Result<CaState, CaError> {
    let mut next = state.clone();
    if next.roots.iter().any(|r| r.id == new_root.id) {
        return Err(CaError::Unsuitable {
            what: "new root".to_string(),
            reason: format!("root {} is already in the trust bundle", new_root.id),
        });
    }
    if let Some(old) = next.roots.iter_mut().find(|r| r.active) {
        new_root.cross_signed_cert = cross_sign(&new_root, old, now)?;
        old.active = false;
        old.rotated_out_at = now;
    }
    new_root.active = true;
    new_root.rotated_out_at = 0;
    next.roots.insert(0, new_root);
    Ok(next)
}

/// Drops retired roots whose every leaf has expired (`rotated_out_at + leaf TTL + grace`
/// passed) and roots past their own expiry. `None` when nothing changes.
pub fn prune(state: &CaState, now: i64) -> Option<CaState> {
    let ttl_secs = state.leaf_cert_ttl / NANOS_PER_SEC;
    let grace = PRUNE_GRACE.as_secs() as i64;
    let keep =
        |r: &CaRoot| r.active || (r.rotated_out_at + ttl_secs + grace > now && r.not_after > now);
    if state.roots.iter().all(keep) {
        return None;
    }
    let mut next = state.clone();
    next.roots.retain(keep);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate_root;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn rotate_cross_signs_and_keeps_old_until_pruned() {
        let r1 = generate_root("td.flotilla", NOW, ROOT_VALIDITY).unwrap();
        let state = bootstrap("td.flotilla", Duration::from_secs(60), r1.clone());
        assert_eq!(state.active_root().map(|r| &r.id), Some(&r1.id));

        let r2 = generate_root("td.flotilla", NOW, ROOT_VALIDITY).unwrap();
        let rotated = rotate(&state, r2.clone(), NOW + 10).unwrap();
        assert_eq!(rotated.roots.len(), 2);
        let active = rotated.active_root().unwrap();
        assert_eq!(active.id, r2.id);
        assert!(!active.cross_signed_cert.is_empty());
        let old = rotated.roots.iter().find(|r| r.id == r1.id).unwrap();
        assert!(!old.active);
        assert_eq!(old.rotated_out_at, NOW + 10);

        // Still within TTL + grace: nothing to prune.
        assert!(prune(&rotated, NOW + 10 + 60 + 59).is_none());
        let pruned = prune(&rotated, NOW + 10 + 60 + 61).unwrap();
        assert_eq!(pruned.roots.len(), 1);
        assert_eq!(pruned.roots[0].id, r2.id);

        let again = rotate(&rotated, r2, NOW + 20).unwrap_err();
        assert!(again.to_string().contains("already"), "{again}");
    }
}
