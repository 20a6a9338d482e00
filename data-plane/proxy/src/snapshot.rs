//! The immutable config snapshot the data plane reads, and the [`ConfigHandle`] that swaps it.
//!
//! Readers call [`ConfigHandle::load`] (an `ArcSwap` load, no lock) and keep the `Arc` for the
//! whole request, so one request sees one consistent config. Writers (the discovery client, or a
//! test) build a new [`Snapshot`] and swap it in; requests in flight keep the old one.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use flotilla_proto::discovery::v1::{
    ALL_TYPES, AUTHORIZATION_TYPE, CLUSTER_TYPE, DiscoveryResponse, LISTENER_TYPE, ROUTE_TYPE,
    TRUST_BUNDLE_TYPE,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::balance::RoundRobin;
use crate::config::{
    self, Authorization, Cluster, ConfigError, Decision, Endpoint, Route, UpstreamListener,
};
use crate::tls::Trust;

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
    /// (service, address) of endpoints running on this node: the only targets the inbound
    /// listener accepts, and only for the service the caller asked for.
    local_endpoints: HashSet<(String, SocketAddr)>,
}

impl ClusterSet {
    fn new(clusters: Vec<Cluster>) -> Self {
        let local_endpoints = clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(move |e| (c, e)))
            .filter(|(_, e)| e.local)
            .map(|(c, e)| (c.name.clone(), e.address))
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
    /// Version of the applied `Listener` set.
    pub listeners: Option<String>,
    /// Version of the applied trust bundle.
    pub trust: Option<String>,
    /// Version of the applied intentions.
    pub authorization: Option<String>,
}

impl Versions {
    fn slot(&mut self, type_url: &str) -> Option<&mut Option<String>> {
        Some(match type_url {
            CLUSTER_TYPE => &mut self.clusters,
            ROUTE_TYPE => &mut self.routes,
            LISTENER_TYPE => &mut self.listeners,
            TRUST_BUNDLE_TYPE => &mut self.trust,
            AUTHORIZATION_TYPE => &mut self.authorization,
            _ => return None,
        })
    }

    /// The version applied for `type_url`.
    pub fn of(&self, type_url: &str) -> Option<&str> {
        match type_url {
            CLUSTER_TYPE => self.clusters.as_deref(),
            ROUTE_TYPE => self.routes.as_deref(),
            LISTENER_TYPE => self.listeners.as_deref(),
            TRUST_BUNDLE_TYPE => self.trust.as_deref(),
            AUTHORIZATION_TYPE => self.authorization.as_deref(),
            _ => None,
        }
    }
}

/// One immutable, consistent view of the proxy's config.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    clusters: Arc<ClusterSet>,
    /// Sorted for matching: longest path prefix first; at equal length a route with a host
    /// before an any-host route; otherwise in the order the server sent them.
    routes: Arc<[Route]>,
    listeners: Arc<[UpstreamListener]>,
    trust: Option<Arc<Trust>>,
    authorization: Arc<Authorization>,
    versions: Versions,
}

impl Snapshot {
    /// The cluster named `name`, if configured.
    pub fn cluster(&self, name: &str) -> Option<&ClusterEntry> {
        self.clusters.by_name.get(name).map(|c| &**c)
    }

    /// All clusters, in no particular order.
    pub fn clusters(&self) -> impl Iterator<Item = &ClusterEntry> {
        self.clusters.by_name.values().map(|c| &**c)
    }

    /// Routes in matching order (see the field docs).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Upstream listeners this node must open.
    pub fn listeners(&self) -> &[UpstreamListener] {
        &self.listeners
    }

    /// The CA roots peers are verified against, once received.
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_deref()
    }

    /// Whether a connection from `source` to `destination` (service names) is allowed.
    pub fn authorize(&self, source: &str, destination: &str) -> Decision<'_> {
        self.authorization.decide(source, destination)
    }

    /// Whether `addr` is an instance of `service` on this node.
    pub fn is_local_endpoint_of(&self, service: &str, addr: SocketAddr) -> bool {
        self.clusters
            .local_endpoints
            .contains(&(service.to_string(), addr))
    }

    /// The versions applied per type.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// True once every resource type has been applied at least once.
    pub fn is_ready(&self) -> bool {
        ALL_TYPES.iter().all(|t| self.versions.of(t).is_some())
    }

    /// The snapshot as JSON for `/config_dump` (clusters sorted by name; no key material).
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
                "listeners": self.versions.listeners,
                "trust": self.versions.trust,
                "authorization": self.versions.authorization,
            },
            "clusters": clusters,
            "routes": self.routes.iter().map(Route::to_json).collect::<Vec<_>>(),
            "listeners": self.listeners.iter().map(UpstreamListener::to_json).collect::<Vec<_>>(),
            "trust": self.trust.as_ref().map(|t| json!({
                "trust_domain": t.trust_domain,
                "roots": t.roots,
                "active_root_id": t.active_root_id,
            })),
            "authorization": self.authorization.to_json(),
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
    #[error("unknown type_url {0:?} (expected one of {ALL_TYPES:?})")]
    UnknownType(String),
}

/// Shared handle to the current [`Snapshot`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigHandle {
    current: Arc<ArcSwap<Snapshot>>,
    /// Bumped on every change, for background tasks that follow the config (listeners,
    /// certificates). The request path never waits on it.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for ConfigHandle {
    fn default() -> Self {
        ConfigHandle {
            current: Arc::default(),
            generation: Arc::new(watch::channel(0).0),
        }
    }
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

    /// Whether every resource type has been applied.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_ready()
    }

    /// Resolves each time the config changes (see [`watch::Receiver::changed`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn update(&self, type_url: &str, version: String, change: impl Fn(&mut Snapshot)) {
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            change(&mut next);
            if let Some(slot) = next.versions.slot(type_url) {
                *slot = Some(version.clone());
            }
            next
        });
        self.generation.send_modify(|g| *g += 1);
    }

    /// Replaces all clusters (state of the world) and records `version`.
    pub fn apply_clusters(&self, version: impl Into<String>, clusters: Vec<Cluster>) {
        let set = Arc::new(ClusterSet::new(clusters));
        self.update(CLUSTER_TYPE, version.into(), |s| s.clusters = set.clone());
    }

    /// Replaces all routes (state of the world) and records `version`.
    pub fn apply_routes(&self, version: impl Into<String>, routes: Vec<Route>) {
        let routes = sort_routes(routes);
        self.update(ROUTE_TYPE, version.into(), |s| s.routes = routes.clone());
    }

    /// Replaces the upstream listeners and records `version`.
    pub fn apply_listeners(&self, version: impl Into<String>, listeners: Vec<UpstreamListener>) {
        let listeners: Arc<[UpstreamListener]> = listeners.into();
        self.update(LISTENER_TYPE, version.into(), |s| {
            s.listeners = listeners.clone()
        });
    }

    /// Replaces the trust bundle and records `version`.
    pub fn apply_trust(&self, version: impl Into<String>, trust: Option<Trust>) {
        let trust = trust.map(Arc::new);
        self.update(TRUST_BUNDLE_TYPE, version.into(), |s| {
            s.trust = trust.clone()
        });
    }

    /// Replaces the intentions and records `version`.
    pub fn apply_authorization(&self, version: impl Into<String>, authz: Authorization) {
        let authz = Arc::new(authz);
        self.update(AUTHORIZATION_TYPE, version.into(), |s| {
            s.authorization = authz.clone()
        });
    }

    /// Validates a whole discovery response and applies it, or leaves the snapshot untouched.
    pub fn apply_response(&self, response: &DiscoveryResponse) -> Result<(), ApplyError> {
        let version = response.version_info.clone();
        let resources = &response.resources;
        match response.type_url.as_str() {
            CLUSTER_TYPE => self.apply_clusters(version, config::parse_clusters(resources)?),
            ROUTE_TYPE => self.apply_routes(version, config::parse_routes(resources)?),
            LISTENER_TYPE => self.apply_listeners(version, config::parse_listeners(resources)?),
            TRUST_BUNDLE_TYPE => self.apply_trust(version, config::parse_trust(resources)?),
            AUTHORIZATION_TYPE => {
                self.apply_authorization(version, config::parse_authorization(resources)?)
            }
            other => return Err(ApplyError::UnknownType(other.to_owned())),
        }
        Ok(())
    }

    /// The last applied version of `type_url` (empty if none), as sent in ACKs and NACKs.
    pub fn version_of(&self, type_url: &str) -> String {
        self.current
            .load()
            .versions
            .of(type_url)
            .unwrap_or_default()
            .to_string()
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
            identity: None,
            weight: 1,
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
            vec![Cluster::new(
                "s",
                vec![
                    ep("127.0.0.1:1", true, true),
                    ep("10.0.0.1:1", false, false),
                ],
            )],
        );
        assert!(!h.is_ready());
        h.apply_routes("r1", vec![route("", "/", "s")]);
        assert!(!h.is_ready());
        h.apply_listeners("l1", Vec::new());
        h.apply_trust("t1", None);
        h.apply_authorization("a1", Authorization::default());
        let snap = h.load();
        assert!(snap.is_ready());
        assert_eq!(snap.versions().clusters.as_deref(), Some("c1"));
        assert_eq!(snap.cluster("s").map(|c| c.healthy().len()), Some(1));
        assert!(snap.is_local_endpoint_of("s", "127.0.0.1:1".parse().unwrap()));
        assert!(!snap.is_local_endpoint_of("other", "127.0.0.1:1".parse().unwrap()));
        assert!(!snap.is_local_endpoint_of("s", "10.0.0.1:1".parse().unwrap()));
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
