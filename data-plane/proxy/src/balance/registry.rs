//! The keeper of long-lived runtime state: one [`ClusterState`] per cluster name and one
//! [`EndpointState`] per (cluster, address), handed to each new snapshot so that in-flight
//! counts, ejections and limits survive config swaps.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::endpoint::EndpointState;
use super::limits::ClusterState;

/// Long-lived state by cluster and endpoint. Locked only while a snapshot is built, never per
/// request: snapshots hold the `Arc`s.
#[derive(Debug, Default)]
pub struct Registry {
    clusters: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    state: Arc<ClusterState>,
    endpoints: HashMap<SocketAddr, Arc<EndpointState>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent whatever panicked while holding the lock.
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry<'a>(map: &'a mut HashMap<String, Entry>, cluster: &str) -> &'a mut Entry {
        if !map.contains_key(cluster) {
            map.insert(cluster.to_owned(), Entry::default());
        }
        map.get_mut(cluster).expect("inserted above")
    }

    /// The state of endpoint `addr` of `cluster`, created on first use.
    pub fn endpoint(&self, cluster: &str, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.lock();
        let entry = Self::entry(&mut map, cluster);
        Arc::clone(entry.endpoints.entry(addr).or_default())
    }

    /// The state of `cluster`, created on first use.
    pub fn cluster(&self, cluster: &str) -> Arc<ClusterState> {
        let mut map = self.lock();
        Arc::clone(&Self::entry(&mut map, cluster).state)
    }

    /// Forgets every cluster and endpoint not in `configured` (cluster name, its endpoints'
    /// addresses); call it after each snapshot build with everything the config still names.
    /// Snapshots and guards still holding a forgotten state keep it alive; a cluster or endpoint
    /// configured again later starts afresh.
    pub fn retain<'a, E>(&self, configured: impl IntoIterator<Item = (&'a str, E)>)
    where
        E: IntoIterator<Item = SocketAddr>,
    {
        let keep: HashMap<&str, HashSet<SocketAddr>> = configured
            .into_iter()
            .map(|(name, addrs)| (name, addrs.into_iter().collect()))
            .collect();
        self.lock()
            .retain(|name, entry| match keep.get(name.as_str()) {
                None => false,
                Some(addrs) => {
                    entry.endpoints.retain(|addr, _| addrs.contains(addr));
                    true
                }
            });
    }

    /// How many clusters and endpoints are kept.
    pub fn len(&self) -> (usize, usize) {
        let map = self.lock();
        let endpoints = map.values().map(|e| e.endpoints.len()).sum();
        (map.len(), endpoints)
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakers;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn hands_out_the_same_state_until_forgotten() {
        let r = Registry::new();
        assert!(r.is_empty());
        let a = r.endpoint("web", addr(1));
        assert!(Arc::ptr_eq(&a, &r.endpoint("web", addr(1))));
        assert!(!Arc::ptr_eq(&a, &r.endpoint("web", addr(2))));
        assert!(!Arc::ptr_eq(&a, &r.endpoint("api", addr(1))));
        let web = r.cluster("web");
        assert!(Arc::ptr_eq(&web, &r.cluster("web")));
        assert_eq!(r.len(), (2, 3));

        // State carries over: a request in flight is seen through the new handle.
        let _guard = web.try_request(&CircuitBreakers::default());
        assert_eq!(r.cluster("web").active().requests, 1);

        r.retain([("web", vec![addr(2)])]);
        assert_eq!(r.len(), (1, 1));
        assert!(
            !Arc::ptr_eq(&a, &r.endpoint("web", addr(1))),
            "forgotten, then new"
        );
        assert!(Arc::ptr_eq(&web, &r.cluster("web")), "cluster kept");
        r.retain(std::iter::empty::<(&str, Vec<SocketAddr>)>());
        assert!(r.is_empty());
    }
}
