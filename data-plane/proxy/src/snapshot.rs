//! The immutable config snapshot the data plane reads, and the [`ConfigHandle`] that swaps it.
//!
//! Readers call [`ConfigHandle::load`] (an `ArcSwap` load, no lock) and keep the `Arc` for the
//! whole request, so one request sees one consistent config. Writers (the discovery client, or a
//! test) build a new [`Snapshot`] and swap it in; requests in flight keep the old one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use flotilla_proto::discovery::v1::{CLUSTER_TYPE, DiscoveryResponse, ROUTE_TYPE};
use serde_json::{Value, json};

use crate::balance::RoundRobin;
use crate::config::{self, Cluster, ConfigError, Endpoint, Route};

/// A cluster as the request path uses it: its config, the healthy subset, a balancer.
#[derive(Debug)]
pub struct ClusterEntry {
    cluster: Cluster,
    healthy: Vec<Endpoint>,
    balancer: RoundRobin,
}

impl ClusterEntry {
    fn new(cluster: Cluster) -> Self {
        let healthy = cluster
            .endpoints
            .iter()
            .filter(|e| e.healthy)
            .cloned()
            .collect();
        ClusterEntry {
            cluster,
            healthy,
            balancer: RoundRobin::default(),
        }
    }

    /// The cluster as configured.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Healthy endpoints only, in configured order.
    pub fn healthy(&self) -> &[Endpoint] {
        &self.healthy
    }

    /// The round-robin balancer over [`Self::healthy`].
    pub fn balancer(&self) -> &RoundRobin {
        &self.balancer
    }
}

/// All clusters of one applied version, indexed for the request path.
#[derive(Debug, Default)]
struct ClusterSet {
    by_name: HashMap<String, Arc<ClusterEntry>>,
    /// Addresses of endpoints running on this node: the only targets the inbound listener
    /// accepts.
    local_endpoints: HashSet<SocketAddr>,
}

impl ClusterSet {
    fn new(clusters: Vec<Cluster>) -> Self {
        let local_endpoints = clusters
            .iter()
            .flat_map(|c| c.endpoints.iter())
            .filter(|e| e.local)
            .map(|e| e.address)
            .collect();
        let by_name = clusters
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(ClusterEntry::new(c))))
            .collect();
        ClusterSet {
            by_name,
            local_endpoints,
        }
    }
}

/// Versions applied per resource type; `None` until the first response of that type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// Version of the applied `Cluster` set.
    pub clusters: Option<String>,
    /// Version of the applied `Route` set.
    pub routes: Option<String>,
}

/// One immutable, consistent view of the proxy's config.
#[derive(Debug, Default)]
pub struct Snapshot {
    clusters: Arc<ClusterSet>,
    /// Sorted for matching: longest path prefix first; at equal length a route with a host
    /// before an any-host route; otherwise in the order the server sent them.
    routes: Arc<[Route]>,
    versions: Versions,
}

impl Snapshot {
    /// The cluster named `name`, if configured.
    pub fn cluster(&self, name: &str) -> Option<&ClusterEntry> {
        self.clusters.by_name.get(name).map(|c| &**c)
    }

    /// Routes in matching order (see the field docs).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether `addr` is an endpoint on this node (`local == true` in some cluster).
    pub fn is_local_endpoint(&self, addr: SocketAddr) -> bool {
        self.clusters.local_endpoints.contains(&addr)
    }

    /// The versions applied per type.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// True once both resource types have been applied at least once.
    pub fn is_ready(&self) -> bool {
        self.versions.clusters.is_some() && self.versions.routes.is_some()
    }

    /// The snapshot as JSON for `/config_dump` (clusters sorted by name).
    pub fn to_json(&self) -> Value {
        let mut names: Vec<&String> = self.clusters.by_name.keys().collect();
        names.sort();
        let clusters: Vec<Value> = names
            .into_iter()
            .filter_map(|n| self.clusters.by_name.get(n))
            .map(|c| c.cluster.to_json())
            .collect();
        json!({
            "versions": {
                "clusters": self.versions.clusters,
                "routes": self.versions.routes,
            },
            "clusters": clusters,
            "routes": self.routes.iter().map(Route::to_json).collect::<Vec<_>>(),
        })
    }
}

fn sort_routes(mut routes: Vec<Route>) -> Arc<[Route]> {
    // Stable: ties keep the server's order.
    routes.sort_by_key(|r| (std::cmp::Reverse(r.path_prefix.len()), r.host.is_empty()));
    routes.into()
}

/// Why a discovery response was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A resource is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The response's type URL is not one this proxy knows.
    #[error("unknown type_url {0:?} (expected {CLUSTER_TYPE:?} or {ROUTE_TYPE:?})")]
    UnknownType(String),
}

/// Shared handle to the current [`Snapshot`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ConfigHandle {
    current: Arc<ArcSwap<Snapshot>>,
}

impl ConfigHandle {
    /// A handle holding an empty, not-ready snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot. Lock-free; hold the `Arc` for the duration of one request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether both resource types have been applied.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_ready()
    }

    /// Replaces all clusters (state of the world) and records `version`.
    pub fn apply_clusters(&self, version: impl Into<String>, clusters: Vec<Cluster>) {
        let set = Arc::new(ClusterSet::new(clusters));
        let version = version.into();
        self.current.rcu(|old| Snapshot {
            clusters: set.clone(),
            routes: old.routes.clone(),
            versions: Versions {
                clusters: Some(version.clone()),
                routes: old.versions.routes.clone(),
            },
        });
    }

    /// Replaces all routes (state of the world) and records `version`.
    pub fn apply_routes(&self, version: impl Into<String>, routes: Vec<Route>) {
        let routes = sort_routes(routes);
        let version = version.into();
        self.current.rcu(|old| Snapshot {
            clusters: old.clusters.clone(),
            routes: routes.clone(),
            versions: Versions {
                clusters: old.versions.clusters.clone(),
                routes: Some(version.clone()),
            },
        });
    }

    /// Validates a whole discovery response and applies it, or leaves the snapshot untouched.
    pub fn apply_response(&self, response: &DiscoveryResponse) -> Result<(), ApplyError> {
        match response.type_url.as_str() {
            CLUSTER_TYPE => {
                let clusters = config::parse_clusters(&response.resources)?;
                self.apply_clusters(response.version_info.clone(), clusters);
            }
            ROUTE_TYPE => {
                let routes = config::parse_routes(&response.resources)?;
                self.apply_routes(response.version_info.clone(), routes);
            }
            other => return Err(ApplyError::UnknownType(other.to_owned())),
        }
        Ok(())
    }

    /// The last applied version of `type_url` (empty if none), as sent in ACKs and NACKs.
    pub fn version_of(&self, type_url: &str) -> String {
        let snapshot = self.current.load();
        let v = match type_url {
            CLUSTER_TYPE => &snapshot.versions.clusters,
            ROUTE_TYPE => &snapshot.versions.routes,
            _ => &None,
        };
        v.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, prefix: &str, cluster: &str) -> Route {
        Route {
            host: host.into(),
            path_prefix: prefix.into(),
            cluster: cluster.into(),
        }
    }

    fn ep(addr: &str, local: bool, healthy: bool) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            node_id: String::new(),
            local,
            proxy_addr: (!local).then(|| "10.9.9.9:15008".parse().unwrap()),
            healthy,
            alloc_id: String::new(),
        }
    }

    #[test]
    fn routes_sorted_longest_prefix_then_host() {
        let sorted = sort_routes(vec![
            route("", "/", "root"),
            route("", "/api", "any-api"),
            route("a.com", "/api", "a-api"),
            route("", "/api/v2", "v2"),
        ]);
        let order: Vec<&str> = sorted.iter().map(|r| r.cluster.as_str()).collect();
        assert_eq!(order, ["v2", "a-api", "any-api", "root"]);
    }

    #[test]
    fn apply_keeps_other_type_and_tracks_versions() {
        let h = ConfigHandle::new();
        assert!(!h.is_ready());
        h.apply_clusters(
            "c1",
            vec![Cluster {
                name: "s".into(),
                namespace: String::new(),
                endpoints: vec![
                    ep("127.0.0.1:1", true, true),
                    ep("10.0.0.1:1", false, false),
                ],
            }],
        );
        assert!(!h.is_ready());
        h.apply_routes("r1", vec![route("", "/", "s")]);
        let snap = h.load();
        assert!(snap.is_ready());
        assert_eq!(snap.versions().clusters.as_deref(), Some("c1"));
        assert_eq!(snap.cluster("s").map(|c| c.healthy().len()), Some(1));
        assert!(snap.is_local_endpoint("127.0.0.1:1".parse().unwrap()));
        assert!(!snap.is_local_endpoint("10.0.0.1:1".parse().unwrap()));
        assert_eq!(h.version_of(ROUTE_TYPE), "r1");
        let dump = snap.to_json();
        assert_eq!(dump["versions"]["clusters"], "c1");
        assert_eq!(dump["clusters"][0]["endpoints"][1]["local"], false);
    }

    #[test]
    fn unknown_type_rejected() {
        let h = ConfigHandle::new();
        let err = h
            .apply_response(&DiscoveryResponse {
                type_url: "type.example/Nope".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, ApplyError::UnknownType(_)));
    }
}
