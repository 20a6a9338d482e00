//! Typed, validated configuration parsed from discovery resources.
//!
//! Everything the server pushes is checked here once, at the edge; the rest of the proxy only
//! sees these types. A [`ConfigError`] names the resource, the field, the value and what was
//! expected, and becomes the NACK message.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use flotilla_proto::discovery::v1 as pb;
use flotilla_proto::discovery::v1::resource::Kind;
use serde_json::{Value, json};

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
}

impl Endpoint {
    /// How to reach this endpoint: directly, or tunnelled through its node's proxy.
    pub fn target(&self) -> Target {
        Target {
            addr: self.address,
            via: if self.local { None } else { self.proxy_addr },
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
        })
    }
}

/// Where an upstream connection goes: `addr`, optionally through the proxy at `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The workload's address.
    pub addr: SocketAddr,
    /// The remote node's proxy inbound listener carrying the connection on to `addr`.
    pub via: Option<SocketAddr>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            None => write!(f, "{}", self.addr),
            Some(via) => write!(f, "{} via {}", self.addr, via),
        }
    }
}

/// A service and its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The service name.
    pub name: String,
    /// Its namespace (informational for now).
    pub namespace: String,
    /// All instances, healthy or not, in the order the server sent them.
    pub endpoints: Vec<Endpoint>,
}

impl Cluster {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "namespace": self.namespace,
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
            Some(Kind::Route(_)) => {
                return Err(err(
                    &resource.name,
                    "kind",
                    "a Route resource in a Cluster response".into(),
                ));
            }
            None => return Err(err(&resource.name, "kind", "missing".into())),
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
            endpoints.push(Endpoint {
                address,
                node_id: ep.node_id.clone(),
                local: ep.local,
                proxy_addr,
                healthy: ep.healthy,
                alloc_id: ep.alloc_id.clone(),
            });
        }
        clusters.push(Cluster {
            name,
            namespace: cluster.namespace.clone(),
            endpoints,
        });
    }
    Ok(clusters)
}

/// Parses and validates a full set of `Route` resources (state of the world).
pub fn parse_routes(resources: &[pb::Resource]) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::with_capacity(resources.len());
    for (index, resource) in resources.iter().enumerate() {
        let err = |field: &str, problem: String| ConfigError {
            resource: resource_label("route", index, &resource.name),
            field: field.to_owned(),
            problem,
        };
        let route = match &resource.kind {
            Some(Kind::Route(r)) => r,
            Some(Kind::Cluster(_)) => {
                return Err(err("kind", "a Cluster resource in a Route response".into()));
            }
            None => return Err(err("kind", "missing".into())),
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
            host: crate::router::normalize_host(&route.host),
            path_prefix: route.path_prefix.clone(),
            cluster: route.cluster.clone(),
        });
    }
    Ok(routes)
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
        assert_eq!(eps[1].target().via, Some("10.0.0.2:15008".parse().unwrap()));
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
        let routes = parse_routes(&[route_resource("API.Example.com:8080", "/v1", "api")]).unwrap();
        assert_eq!(routes[0].host, "api.example.com");
        let err = parse_routes(&[route_resource("", "v1", "api")]).unwrap_err();
        assert_eq!(err.field, "path_prefix");
        let err = parse_routes(&[route_resource("", "/", "")]).unwrap_err();
        assert_eq!(err.field, "cluster");
        let err = parse_routes(&[route_resource("a b", "/", "x")]).unwrap_err();
        assert_eq!(err.field, "host");
    }
}
