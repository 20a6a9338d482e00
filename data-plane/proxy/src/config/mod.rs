//! Typed, validated configuration parsed from discovery resources.
//!
//! Everything the server pushes is checked here once, at the edge; the rest of the proxy only
//! sees these types. A [`ConfigError`] names the resource, the field, the value and what was
//! expected, and becomes the NACK message.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use flotilla_proto::discovery::v1 as pb;
use flotilla_proto::discovery::v1::resource::Kind;
use serde_json::{Value, json};

use crate::tls::{SpiffeId, Trust};

mod http_route;
mod policy;

pub use http_route::{
    HeaderMatcher, HttpMatch, HttpRoute, PathMatch, QueryMatcher, RetryPolicy, ServiceRoutes,
    ValueMatch, WeightedCluster,
};

pub use policy::{
    CircuitBreakers, ClusterPolicy, HashPolicy, HashSource, LbPolicy, OutlierDetection, Protocol,
    RateLimit,
};

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The workload's own address.
    pub address: SocketAddr,
    /// The node it runs on.
    pub node_id: String,
    /// True when the workload runs on this node: connect directly.
    pub local: bool,
    /// For remote endpoints: the other node's proxy inbound listener. Always `Some` when
    /// `local` is false (checked at parse time).
    pub proxy_addr: Option<SocketAddr>,
    /// Whether traffic may go to it.
    pub healthy: bool,
    /// The allocation it belongs to (informational).
    pub alloc_id: String,
    /// The identity its node's proxy presents for it (checked on every mesh connection).
    pub identity: Option<SpiffeId>,
    /// Relative load-balancing weight, at least 1.
    pub weight: u32,
}

impl Endpoint {
    /// How to reach this endpoint: directly, or tunnelled through its node's proxy.
    pub fn target(&self) -> Target {
        Target {
            addr: self.address,
            via: if self.local {
                None
            } else {
                self.proxy_addr.map(|proxy| Via {
                    proxy,
                    identity: self.identity.clone().map(Arc::new),
                })
            },
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "address": self.address.to_string(),
            "node_id": self.node_id,
            "local": self.local,
            "proxy_addr": self.proxy_addr.map(|a| a.to_string()),
            "healthy": self.healthy,
            "alloc_id": self.alloc_id,
            "identity": self.identity.as_ref().map(ToString::to_string),
            "weight": self.weight,
        })
    }
}

/// Where an upstream connection goes: `addr`, optionally through another node's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The workload's address.
    pub addr: SocketAddr,
    /// The remote node's proxy carrying the connection on to `addr`.
    pub via: Option<Via>,
}

/// A remote node's proxy inbound listener and the identity it must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Via {
    pub proxy: SocketAddr,
    /// `None` when the server sent no identity (no CA yet): such endpoints cannot be reached.
    pub identity: Option<Arc<SpiffeId>>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.via {
            None => write!(f, "{}", self.addr),
            Some(via) => write!(f, "{} via {}", self.addr, via.proxy),
        }
    }
}

/// A service (or one resolver subset of it) and its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The service name, or `<subset>.<service>`.
    pub name: String,
    /// Its namespace (informational for now).
    pub namespace: String,
    /// The service the endpoints belong to.
    pub service: String,
    /// The resolver subset; empty for the whole service.
    pub subset: String,
    /// All instances, healthy or not, in the order the server sent them (a snapshot's
    /// [`crate::snapshot::ClusterEntry`] moves the healthy ones to the front).
    pub endpoints: Vec<Endpoint>,
    /// How endpoints are picked and protected.
    pub policy: ClusterPolicy,
}

impl Cluster {
    /// A plain TCP cluster of `name` with default policy.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        let name = name.into();
        Cluster {
            service: name.clone(),
            name,
            namespace: String::new(),
            subset: String::new(),
            endpoints,
            policy: ClusterPolicy::default(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let p = &self.policy;
        json!({
            "name": self.name,
            "namespace": self.namespace,
            "service": self.service,
            "subset": self.subset,
            "protocol": p.protocol.as_str(),
            "load_balancer": p.lb_policy.as_str(),
            "hash_policies": p.hash_policies.len(),
            "connect_timeout_ms": p.connect_timeout.map(|d| d.as_millis() as u64),
            "request_timeout_ms": p.request_timeout.map(|d| d.as_millis() as u64),
            "circuit_breakers": {
                "max_connections": p.circuit_breakers.max_connections,
                "max_pending_requests": p.circuit_breakers.max_pending_requests,
                "max_concurrent_requests": p.circuit_breakers.max_concurrent_requests,
                "max_retries": p.circuit_breakers.max_retries,
            },
            "outlier_detection": p.outlier_detection.map(|o| json!({
                "consecutive_5xx": o.consecutive_5xx,
                "interval_ms": o.interval.as_millis() as u64,
                "base_ejection_time_ms": o.base_ejection_time.as_millis() as u64,
                "max_ejection_percent": o.max_ejection_percent,
                "enforcing_consecutive_5xx": o.enforcing_consecutive_5xx,
            })),
            "rate_limit": p.rate_limit.map(|r| json!({
                "requests_per_second": r.requests_per_second,
                "burst": r.burst,
            })),
            "failover": p.failover,
            "endpoints": self.endpoints.iter().map(Endpoint::to_json).collect::<Vec<_>>(),
        })
    }
}

/// An ingress route: requests whose host and path match go to `cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lower-case host without port; empty matches any host.
    pub host: String,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Target cluster name. It may be unknown: such requests get 503.
    pub cluster: String,
}

impl Route {
    pub(crate) fn to_json(&self) -> Value {
        json!({ "host": self.host, "path_prefix": self.path_prefix, "cluster": self.cluster })
    }
}

/// A pushed resource failed validation. The message names resource, field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {problem}")]
pub struct ConfigError {
    /// Which resource, e.g. `cluster "hello" (resources[0])`.
    pub resource: String,
    /// Which field, e.g. `endpoints[1].address`.
    pub field: String,
    /// What is wrong, with the value given and what was expected.
    pub problem: String,
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Cluster(_) => "Cluster",
        Kind::Route(_) => "Route",
        Kind::Listener(_) => "Listener",
        Kind::TrustBundle(_) => "TrustBundle",
        Kind::Authorization(_) => "Authorization",
        Kind::ServiceRoutes(_) => "ServiceRoutes",
    }
}

fn wrong_kind(kind: &Option<Kind>, expected: &str) -> String {
    match kind {
        Some(k) => format!("a {} resource in a {expected} response", kind_name(k)),
        None => "missing".to_string(),
    }
}

fn resource_label(kind: &str, index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{kind} resources[{index}]")
    } else {
        format!("{kind} {name:?} (resources[{index}])")
    }
}

fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("invalid socket address {value:?}: expected ip:port, e.g. \"10.0.0.7:8080\"")
    })
}

/// Parses and validates a full set of `Cluster` resources (state of the world).
pub fn parse_clusters(resources: &[pb::Resource]) -> Result<Vec<Cluster>, ConfigError> {
    let mut seen = HashSet::new();
    let mut clusters = Vec::with_capacity(resources.len());
    for (index, resource) in resources.iter().enumerate() {
        let label = |name: &str| resource_label("cluster", index, name);
        let err = |name: &str, field: &str, problem: String| ConfigError {
            resource: label(name),
            field: field.to_owned(),
            problem,
        };
        let cluster = match &resource.kind {
            Some(Kind::Cluster(c)) => c,
            other => return Err(err(&resource.name, "kind", wrong_kind(other, "Cluster"))),
        };
        let name = if cluster.name.is_empty() {
            resource.name.clone()
        } else {
            cluster.name.clone()
        };
        if name.is_empty() {
            return Err(err(
                &name,
                "name",
                "empty: a cluster needs a service name".into(),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(err(&name, "name", "duplicate cluster name".into()));
        }
        let mut endpoints = Vec::with_capacity(cluster.endpoints.len());
        for (i, ep) in cluster.endpoints.iter().enumerate() {
            let address = parse_socket_addr(&ep.address)
                .map_err(|p| err(&name, &format!("endpoints[{i}].address"), p))?;
            let proxy_addr = if ep.proxy_addr.is_empty() {
                None
            } else {
                Some(
                    parse_socket_addr(&ep.proxy_addr)
                        .map_err(|p| err(&name, &format!("endpoints[{i}].proxy_addr"), p))?,
                )
            };
            if !ep.local && proxy_addr.is_none() {
                return Err(err(
                    &name,
                    &format!("endpoints[{i}].proxy_addr"),
                    "empty: required for a remote endpoint (local = false)".into(),
                ));
            }
            let identity =
                if ep.identity.is_empty() {
                    None
                } else {
                    Some(SpiffeId::parse(&ep.identity).map_err(|e| {
                        err(&name, &format!("endpoints[{i}].identity"), e.to_string())
                    })?)
                };
            endpoints.push(Endpoint {
                address,
                node_id: ep.node_id.clone(),
                local: ep.local,
                proxy_addr,
                healthy: ep.healthy,
                alloc_id: ep.alloc_id.clone(),
                identity,
                weight: ep.weight.max(1),
            });
        }
        let policy = policy::parse_policy(cluster)
            .map_err(|(field, problem)| err(&name, &field, problem))?;
        clusters.push(Cluster {
            service: if cluster.service.is_empty() {
                name.clone()
            } else {
                cluster.service.clone()
            },
            subset: cluster.subset.clone(),
            name,
            namespace: cluster.namespace.clone(),
            endpoints,
            policy,
        });
    }
    Ok(clusters)
}

/// Parses and validates a full set of `Route` resources (state of the world).
/// Route responses carry the ingress [`Route`]s and the services' [`ServiceRoutes`] tables.
pub fn parse_routes(
    resources: &[pb::Resource],
) -> Result<(Vec<Route>, Vec<ServiceRoutes>), ConfigError> {
    let mut routes = Vec::with_capacity(resources.len());
    let mut tables: Vec<ServiceRoutes> = Vec::new();
    let mut services = HashSet::new();
    for (index, resource) in resources.iter().enumerate() {
        let err = |field: &str, problem: String| ConfigError {
            resource: resource_label("route", index, &resource.name),
            field: field.to_owned(),
            problem,
        };
        let route = match &resource.kind {
            Some(Kind::Route(r)) => r,
            Some(Kind::ServiceRoutes(t)) => {
                let table = http_route::parse_service_routes(t).map_err(|(field, problem)| {
                    ConfigError {
                        resource: resource_label("service routes", index, &resource.name),
                        field,
                        problem,
                    }
                })?;
                if !services.insert(table.service.clone()) {
                    return Err(err(
                        "service",
                        format!("a second route table for service {:?}", table.service),
                    ));
                }
                tables.push(table);
                continue;
            }
            other => return Err(err("kind", wrong_kind(other, "Route"))),
        };
        if !route.path_prefix.starts_with('/') {
            return Err(err(
                "path_prefix",
                format!("{:?} must start with \"/\"", route.path_prefix),
            ));
        }
        if route.cluster.is_empty() {
            return Err(err(
                "cluster",
                "empty: a route needs a target cluster".into(),
            ));
        }
        if route
            .host
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(err(
                "host",
                format!(
                    "{:?} is not a host name (no '/', spaces or control characters)",
                    route.host
                ),
            ));
        }
        routes.push(Route {
            host: crate::router::normalize_host(&route.host).into_owned(),
            path_prefix: route.path_prefix.clone(),
            cluster: route.cluster.clone(),
        });
    }
    Ok((routes, tables))
}

/// An upstream listener: the app of `alloc_id` connects to `bind`, and the connection is
/// carried as `source_service` to a healthy instance of `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamListener {
    /// `<alloc_id>/<destination>`, unique per node.
    pub name: String,
    pub alloc_id: String,
    pub source_service: String,
    pub namespace: String,
    pub destination: String,
    pub destination_namespace: String,
    pub bind: SocketAddr,
}

impl UpstreamListener {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "alloc_id": self.alloc_id,
            "source_service": self.source_service,
            "namespace": self.namespace,
            "destination": self.destination,
            "destination_namespace": self.destination_namespace,
            "bind": self.bind.to_string(),
        })
    }
}

/// Parses and validates a full set of `Listener` resources.
pub fn parse_listeners(resources: &[pb::Resource]) -> Result<Vec<UpstreamListener>, ConfigError> {
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    let mut out = Vec::with_capacity(resources.len());
    for (index, resource) in resources.iter().enumerate() {
        let err = |field: &str, problem: String| ConfigError {
            resource: resource_label("listener", index, &resource.name),
            field: field.to_owned(),
            problem,
        };
        let l = match &resource.kind {
            Some(Kind::Listener(l)) => l,
            other => return Err(err("kind", wrong_kind(other, "Listener"))),
        };
        for (field, value) in [
            ("name", &l.name),
            ("source_service", &l.source_service),
            ("destination", &l.destination),
        ] {
            if value.is_empty() {
                return Err(err(field, "empty".into()));
            }
        }
        let ip: IpAddr = l.bind_address.parse().map_err(|_| {
            err(
                "bind_address",
                format!("{:?} is not an IP address", l.bind_address),
            )
        })?;
        let port = u16::try_from(l.bind_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                err(
                    "bind_port",
                    format!("{} is not a port (1-65535)", l.bind_port),
                )
            })?;
        let bind = SocketAddr::new(ip, port);
        if !names.insert(l.name.clone()) {
            return Err(err("name", format!("duplicate listener name {:?}", l.name)));
        }
        if !binds.insert(bind) {
            return Err(err(
                "bind_port",
                format!("{bind} is used by two listeners on this node"),
            ));
        }
        out.push(UpstreamListener {
            name: l.name.clone(),
            alloc_id: l.alloc_id.clone(),
            source_service: l.source_service.clone(),
            namespace: if l.namespace.is_empty() {
                "default".into()
            } else {
                l.namespace.clone()
            },
            destination: l.destination.clone(),
            destination_namespace: l.destination_namespace.clone(),
            bind,
        });
    }
    Ok(out)
}

/// Parses the trust bundle (zero or one resource).
pub fn parse_trust(resources: &[pb::Resource]) -> Result<Option<Trust>, ConfigError> {
    let mut trust = None;
    for (index, resource) in resources.iter().enumerate() {
        let err = |field: &str, problem: String| ConfigError {
            resource: resource_label("trust bundle", index, &resource.name),
            field: field.to_owned(),
            problem,
        };
        let tb = match &resource.kind {
            Some(Kind::TrustBundle(tb)) => tb,
            other => return Err(err("kind", wrong_kind(other, "TrustBundle"))),
        };
        if trust.is_some() {
            return Err(err("name", "more than one trust bundle".into()));
        }
        if tb.trust_domain.is_empty() {
            return Err(err("trust_domain", "empty".into()));
        }
        if tb.roots_pem.is_empty() {
            return Err(err(
                "roots_pem",
                "empty: at least one root is needed".into(),
            ));
        }
        trust = Some(
            Trust::from_pem(&tb.trust_domain, &tb.roots_pem, &tb.active_root_id)
                .map_err(|p| err("roots_pem", p))?,
        );
    }
    Ok(trust)
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    fn parse(value: &str) -> Option<Action> {
        match value {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }

    /// `"allow"` or `"deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// One intention as the proxy evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentionRule {
    pub source: String,
    pub destination: String,
    pub action: Action,
    pub precedence: u32,
}

/// Who may connect to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub default_action: Action,
    /// Highest precedence first.
    rules: Vec<IntentionRule>,
    /// Indexes into `rules` (so in precedence order) of the rules naming each destination, and
    /// of those with destination `*`: a decision looks at two short lists, not every rule.
    by_destination: HashMap<String, Vec<usize>>,
    any_destination: Vec<usize>,
}

impl Default for Authorization {
    /// Nothing received yet: deny (fail closed).
    fn default() -> Self {
        Authorization::new(Action::Deny, Vec::new())
    }
}

/// The decision for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub action: Action,
    /// The intention that decided, or `None` when the default applied.
    pub matched: Option<&'a IntentionRule>,
}

impl Decision<'_> {
    /// Whether the connection must be refused.
    pub fn denied(&self) -> bool {
        self.action == Action::Deny
    }

    /// Why a denied connection was refused: the intention, or the default policy.
    pub fn reason(&self) -> String {
        match self.matched {
            Some(r) => format!("intention {} => {} denies it", r.source, r.destination),
            None => "no intention allows it and the default policy is deny".to_string(),
        }
    }
}

impl Authorization {
    /// Rules in any order; they are sorted by precedence (ties keep their order).
    pub fn new(default_action: Action, mut rules: Vec<IntentionRule>) -> Self {
        rules.sort_by_key(|r| std::cmp::Reverse(r.precedence));
        let mut by_destination: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_destination = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if r.destination == "*" {
                any_destination.push(i);
            } else {
                by_destination
                    .entry(r.destination.clone())
                    .or_default()
                    .push(i);
            }
        }
        Authorization {
            default_action,
            rules,
            by_destination,
            any_destination,
        }
    }

    /// The highest-precedence intention matching `source` → `destination`, else the default.
    pub fn decide(&self, source: &str, destination: &str) -> Decision<'_> {
        let first = |indexes: &[usize]| {
            indexes
                .iter()
                .copied()
                .find(|&i| self.rules[i].source == "*" || self.rules[i].source == source)
        };
        let exact = self.by_destination.get(destination).and_then(|v| first(v));
        let any = first(&self.any_destination);
        // Lower index = higher precedence (or earlier among equals).
        let hit = match (exact, any) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match hit.map(|i| &self.rules[i]) {
            Some(r) => Decision {
                action: r.action,
                matched: Some(r),
            },
            None => Decision {
                action: self.default_action,
                matched: None,
            },
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "default_action": self.default_action.as_str(),
            "intentions": self.rules.iter().map(|r| json!({
                "source": r.source,
                "destination": r.destination,
                "action": r.action.as_str(),
                "precedence": r.precedence,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Parses the authorization resource (exactly one when present).
pub fn parse_authorization(resources: &[pb::Resource]) -> Result<Authorization, ConfigError> {
    let mut out: Option<Authorization> = None;
    for (index, resource) in resources.iter().enumerate() {
        let err = |field: &str, problem: String| ConfigError {
            resource: resource_label("authorization", index, &resource.name),
            field: field.to_owned(),
            problem,
        };
        let a = match &resource.kind {
            Some(Kind::Authorization(a)) => a,
            other => return Err(err("kind", wrong_kind(other, "Authorization"))),
        };
        if out.is_some() {
            return Err(err("name", "more than one authorization resource".into()));
        }
        let default_action = Action::parse(&a.default_action).ok_or_else(|| {
            err(
                "default_action",
                format!("{:?} is not \"allow\" or \"deny\"", a.default_action),
            )
        })?;
        let mut rules = Vec::with_capacity(a.intentions.len());
        for (i, r) in a.intentions.iter().enumerate() {
            let action = Action::parse(&r.action).ok_or_else(|| {
                err(
                    &format!("intentions[{i}].action"),
                    format!("{:?} is not \"allow\" or \"deny\"", r.action),
                )
            })?;
            if r.source.is_empty() || r.destination.is_empty() {
                return Err(err(
                    &format!("intentions[{i}]"),
                    "source and destination are required".into(),
                ));
            }
            rules.push(IntentionRule {
                source: r.source.clone(),
                destination: r.destination.clone(),
                action,
                precedence: r.precedence,
            });
        }
        out = Some(Authorization::new(default_action, rules));
    }
    Ok(out.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_resource(name: &str, endpoints: Vec<pb::Endpoint>) -> pb::Resource {
        pb::Resource {
            name: name.into(),
            kind: Some(Kind::Cluster(pb::Cluster {
                name: name.into(),
                namespace: "default".into(),
                endpoints,
                ..Default::default()
            })),
        }
    }

    fn endpoint(address: &str, local: bool, proxy_addr: &str) -> pb::Endpoint {
        pb::Endpoint {
            address: address.into(),
            node_id: "n1".into(),
            local,
            proxy_addr: proxy_addr.into(),
            healthy: true,
            alloc_id: "a1".into(),
            identity: String::new(),
            weight: 0,
        }
    }

    fn route_resource(host: &str, prefix: &str, cluster: &str) -> pb::Resource {
        pb::Resource {
            name: format!("{host}{prefix}"),
            kind: Some(Kind::Route(pb::Route {
                host: host.into(),
                path_prefix: prefix.into(),
                cluster: cluster.into(),
            })),
        }
    }

    #[test]
    fn parses_local_and_remote_endpoints() {
        let clusters = parse_clusters(&[cluster_resource(
            "hello",
            vec![
                endpoint("127.0.0.1:9000", true, ""),
                endpoint("10.0.0.2:9000", false, "10.0.0.2:15008"),
            ],
        )])
        .unwrap();
        assert_eq!(clusters.len(), 1);
        let eps = &clusters[0].endpoints;
        assert_eq!(eps[0].target().via, None);
        assert_eq!(
            eps[1].target().via.map(|v| v.proxy),
            Some("10.0.0.2:15008".parse().unwrap())
        );
    }

    #[test]
    fn bad_address_names_resource_and_field() {
        let err = parse_clusters(&[cluster_resource(
            "hello",
            vec![
                endpoint("127.0.0.1:9000", true, ""),
                endpoint("nope", true, ""),
            ],
        )])
        .unwrap_err();
        assert_eq!(err.resource, "cluster \"hello\" (resources[0])");
        assert_eq!(err.field, "endpoints[1].address");
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }

    #[test]
    fn remote_endpoint_needs_proxy_addr() {
        let err = parse_clusters(&[cluster_resource(
            "x",
            vec![endpoint("10.0.0.1:1", false, "")],
        )])
        .unwrap_err();
        assert_eq!(err.field, "endpoints[0].proxy_addr");
    }

    #[test]
    fn duplicate_and_wrong_kind_rejected() {
        let dup = parse_clusters(&[cluster_resource("a", vec![]), cluster_resource("a", vec![])])
            .unwrap_err();
        assert!(dup.problem.contains("duplicate"));
        let wrong = parse_clusters(&[route_resource("", "/", "a")]).unwrap_err();
        assert_eq!(wrong.field, "kind");
    }

    #[test]
    fn route_validation() {
        let (routes, _) =
            parse_routes(&[route_resource("API.Example.com:8080", "/v1", "api")]).unwrap();
        assert_eq!(routes[0].host, "api.example.com");
        let err = parse_routes(&[route_resource("", "v1", "api")]).unwrap_err();
        assert_eq!(err.field, "path_prefix");
        let err = parse_routes(&[route_resource("", "/", "")]).unwrap_err();
        assert_eq!(err.field, "cluster");
        let err = parse_routes(&[route_resource("a b", "/", "x")]).unwrap_err();
        assert_eq!(err.field, "host");
    }

    #[test]
    fn decisions_follow_precedence_across_exact_and_wildcard_destinations() {
        let rule = |src: &str, dst: &str, action, precedence| IntentionRule {
            source: src.into(),
            destination: dst.into(),
            action,
            precedence,
        };
        let authz = Authorization::new(
            Action::Deny,
            vec![
                rule("*", "*", Action::Allow, 5),
                rule("web", "*", Action::Deny, 6),
                rule("*", "db", Action::Allow, 8),
                rule("api", "db", Action::Deny, 9),
            ],
        );
        assert!(authz.decide("api", "db").denied());
        assert!(!authz.decide("web", "db").denied(), "*→db beats web→*");
        assert!(authz.decide("web", "cache").denied(), "web→* beats *→*");
        assert!(!authz.decide("other", "cache").denied());
        let none = Authorization::new(Action::Deny, Vec::new());
        let d = none.decide("a", "b");
        assert!(d.denied() && d.matched.is_none());
        assert_eq!(
            d.reason(),
            "no intention allows it and the default policy is deny"
        );
        assert_eq!(
            authz.decide("api", "db").reason(),
            "intention api => db denies it"
        );
    }
}
