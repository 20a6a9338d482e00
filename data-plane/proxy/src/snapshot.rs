//! The immutable config snapshot the data plane reads, and the [`ConfigHandle`] that swaps it.
//!
//! Readers call [`ConfigHandle::load`] (an `ArcSwap` load, no lock) and keep the `Arc` for the
//! whole request, so one request sees one consistent config. Writers (the discovery client, or a
//! test) build a new [`Snapshot`] and swap it in; requests in flight keep the old one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use flotilla_proto::discovery::v1::{
    ALL_TYPES, AUTHORIZATION_TYPE, CLUSTER_TYPE, DiscoveryResponse, LISTENER_TYPE, ROUTE_TYPE,
    TRUST_BUNDLE_TYPE,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::FastMap;
use crate::balance::{Balancer, ClusterState, EndpointState, Registry};
use crate::config::{
    self, Authorization, Cluster, ConfigError, Decision, Endpoint, Route, ServiceRoutes,
    UpstreamListener,
};
use crate::metrics::{ClusterMetrics, Metrics, RouteMetrics};
use crate::tls::Trust;

/// A cluster as the request path uses it: its config, the healthy endpoints with their
/// long-lived state, a balancer over them, and the cluster's long-lived state (limits).
#[derive(Debug)]
pub struct ClusterEntry {
    /// Its endpoints are reordered: the healthy ones first (see [`Self::healthy`]).
    cluster: Cluster,
    /// How many of `cluster.endpoints` (at the front) are healthy.
    healthy: usize,
    /// Parallel to the healthy endpoints.
    states: Vec<Arc<EndpointState>>,
    balancer: Balancer,
    state: Arc<ClusterState>,
    metrics: Arc<Metrics>,
    /// Made on first use: an idle proxy with many services registers no series for them.
    cluster_metrics: OnceLock<ClusterMetrics>,
    /// The requests to the service of a cluster without a route table count under route
    /// `default`.
    route_metrics: OnceLock<RouteMetrics>,
}

impl ClusterEntry {
    fn new(mut cluster: Cluster, registry: &Registry, metrics: &Arc<Metrics>) -> Self {
        // Healthy endpoints first, each group in the server's order: the request path then
        // borrows a slice instead of a copy per snapshot.
        cluster.endpoints.sort_by_key(|e| !e.healthy);
        let healthy = cluster.endpoints.iter().take_while(|e| e.healthy).count();
        let healthy_endpoints = &cluster.endpoints[..healthy];
        let states = healthy_endpoints
            .iter()
            .map(|e| registry.endpoint(&cluster.name, e.address))
            .collect();
        let weighted: Vec<(SocketAddr, u32)> = healthy_endpoints
            .iter()
            .map(|e| (e.address, e.weight))
            .collect();
        let balancer = Balancer::new(&weighted, &cluster.policy.lb_policy);
        ClusterEntry {
            state: registry.cluster(&cluster.name),
            cluster,
            healthy,
            states,
            balancer,
            metrics: metrics.clone(),
            cluster_metrics: OnceLock::new(),
            route_metrics: OnceLock::new(),
        }
    }

    /// The cluster's metric handles.
    pub fn metrics(&self) -> &ClusterMetrics {
        self.cluster_metrics
            .get_or_init(|| self.metrics.cluster(&self.cluster.name))
    }

    /// The metric handles of route `default` of the cluster's service.
    pub fn default_route_metrics(&self) -> &RouteMetrics {
        self.route_metrics
            .get_or_init(|| self.metrics.route(&self.cluster.service, "default"))
    }

    /// The cluster as configured.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Healthy endpoints only, in configured order.
    pub fn healthy(&self) -> &[Endpoint] {
        &self.cluster.endpoints[..self.healthy]
    }

    /// The long-lived state of each healthy endpoint (parallel to [`Self::healthy`]).
    pub fn states(&self) -> &[Arc<EndpointState>] {
        &self.states
    }

    /// The policy's balancer over [`Self::healthy`].
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The cluster's long-lived state: limits, retry budget, rate limit.
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }

    /// Whether some healthy endpoint is not ejected at `now`.
    pub fn has_usable(&self, now: std::time::Instant) -> bool {
        self.states.iter().any(|s| !s.is_ejected(now))
    }
}

/// A service's route table with each route's metric handles (made on first use).
#[derive(Debug)]
pub struct RouteTable {
    pub routes: ServiceRoutes,
    metrics: Vec<OnceLock<RouteMetrics>>,
    registry: Arc<Metrics>,
}

impl RouteTable {
    /// The first route matching the request, with its index.
    pub fn find(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Option<(usize, &crate::config::HttpRoute)> {
        self.routes.find(method, uri, headers)
    }

    /// The metric handles of route `index`.
    pub fn route_metrics(&self, index: usize) -> &RouteMetrics {
        self.metrics[index].get_or_init(|| {
            self.registry
                .route(&self.routes.service, &self.routes.routes[index].name)
        })
    }
}

/// All clusters of one applied version, indexed for the request path.
#[derive(Debug, Default)]
struct ClusterSet {
    by_name: FastMap<String, Arc<ClusterEntry>>,
    /// (service, address) of endpoints running on this node: the only targets the inbound
    /// listener accepts, and only for the service the caller asked for.
    local_endpoints: HashSet<(String, SocketAddr)>,
}

impl ClusterSet {
    fn new(clusters: Vec<Cluster>, registry: &Registry, metrics: &Arc<Metrics>) -> Self {
        let local_endpoints = clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(move |e| (c, e)))
            .filter(|(_, e)| e.local)
            .map(|(c, e)| (c.service.clone(), e.address))
            .collect();
        let by_name: FastMap<String, Arc<ClusterEntry>> = clusters
            .into_iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(ClusterEntry::new(c, registry, metrics)),
                )
            })
            .collect();
        registry.retain(
            by_name
                .iter()
                .map(|(name, c)| (name.as_str(), c.cluster.endpoints.iter().map(|e| e.address))),
        );
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
    /// Route tables of HTTP services, by service name.
    service_routes: Arc<FastMap<String, Arc<RouteTable>>>,
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

    /// The route table of `service`, when it speaks HTTP and the server sent one.
    pub fn service_routes(&self, service: &str) -> Option<&RouteTable> {
        self.service_routes.get(service).map(|t| &**t)
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
        let mut tables: Vec<&Arc<RouteTable>> = self.service_routes.values().collect();
        tables.sort_by(|a, b| a.routes.service.cmp(&b.routes.service));
        let service_routes: Vec<Value> = tables.into_iter().map(|t| t.routes.to_json()).collect();
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
            "service_routes": service_routes,
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
    /// Endpoint and cluster state that outlives snapshots (outlier ejections, limits).
    registry: Arc<Registry>,
    /// Where per-cluster and per-route metric handles come from.
    metrics: Arc<Metrics>,
    /// Bumped on every change, for background tasks that follow the config (listeners,
    /// certificates). The request path never waits on it.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for ConfigHandle {
    fn default() -> Self {
        ConfigHandle {
            current: Arc::default(),
            registry: Arc::new(Registry::new()),
            metrics: Metrics::new(),
            generation: Arc::new(watch::channel(0).0),
        }
    }
}

impl ConfigHandle {
    /// A handle holding an empty, not-ready snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle whose snapshots take their metric handles from `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        ConfigHandle {
            metrics,
            ..Self::default()
        }
    }

    /// The metrics the snapshots' handles come from.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        self.metrics.config_applied(type_url, &version);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Replaces all clusters (state of the world) and records `version`.
    pub fn apply_clusters(&self, version: impl Into<String>, clusters: Vec<Cluster>) {
        let set = Arc::new(ClusterSet::new(clusters, &self.registry, &self.metrics));
        self.update(CLUSTER_TYPE, version.into(), |s| s.clusters = set.clone());
    }

    /// Replaces all ingress routes (state of the world), keeps the route tables, and records
    /// `version`.
    pub fn apply_routes(&self, version: impl Into<String>, routes: Vec<Route>) {
        let routes = sort_routes(routes);
        self.update(ROUTE_TYPE, version.into(), |s| s.routes = routes.clone());
    }

    /// Replaces the ingress routes and the services' route tables and records `version`.
    pub fn apply_route_config(
        &self,
        version: impl Into<String>,
        routes: Vec<Route>,
        tables: Vec<ServiceRoutes>,
    ) {
        let routes = sort_routes(routes);
        let tables: Arc<FastMap<String, Arc<RouteTable>>> = Arc::new(
            tables
                .into_iter()
                .map(|t| {
                    let metrics = t.routes.iter().map(|_| OnceLock::new()).collect();
                    (
                        t.service.clone(),
                        Arc::new(RouteTable {
                            routes: t,
                            metrics,
                            registry: self.metrics.clone(),
                        }),
                    )
                })
                .collect(),
        );
        self.update(ROUTE_TYPE, version.into(), |s| {
            s.routes = routes.clone();
            s.service_routes = tables.clone();
        });
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
            ROUTE_TYPE => {
                let (routes, tables) = config::parse_routes(resources)?;
                self.apply_route_config(version, routes, tables)
            }
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
