use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::discovery::v1::{
    Authorization, Cluster, Endpoint, IntentionRule, Listener, Resource, Route, TrustBundle,
    resource::Kind,
};
use flotilla_store::State;
use flotilla_types::{NODE_STATUS_READY, spiffe_id};

/// The resources of each type for one node, in a stable order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    pub clusters: Vec<Resource>,
    pub routes: Vec<Resource>,
    pub listeners: Vec<Resource>,
    /// One `TrustBundle` resource once the CA exists.
    pub trust_bundle: Vec<Resource>,
    /// Exactly one `Authorization` resource.
    pub authorization: Vec<Resource>,
}

/// Parse Fabio-style `urlprefix-[host]/path [options]` tags into (host, path prefix) pairs.
pub fn routes_from_tags(tags: &[String]) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|t| t.strip_prefix("urlprefix-"))
        .filter_map(|rest| {
            let spec = rest.split_whitespace().next()?;
            let slash = spec.find('/')?;
            let (host, path) = spec.split_at(slash);
            Some((host.to_ascii_lowercase(), path.to_string()))
        })
        .collect()
}

/// Everything node `node_id`'s proxy needs, from `state`.
///
/// Clusters exist for every service some job declares (stopped jobs included, so their routes
/// answer 503 rather than 404); endpoints come from the catalog, healthy only when their checks
/// pass and their node is ready.
pub fn resources_for_node(state: &State, node_id: &str) -> Resources {
    let mut clusters: BTreeMap<(String, String), Vec<Endpoint>> = BTreeMap::new();
    let mut routes: BTreeSet<(String, String, String)> = BTreeSet::new();
    for job in state.jobs.values() {
        for group in &job.task_groups {
            for svc in group.all_services() {
                clusters
                    .entry((svc.name.clone(), job.namespace.clone()))
                    .or_default();
                for (host, path) in routes_from_tags(&svc.tags) {
                    routes.insert((host, path, svc.name.clone()));
                }
            }
        }
    }
    let trust_domain = state.ca.as_ref().map(|ca| ca.trust_domain.as_str());
    for reg in state.services.values() {
        let Some(endpoints) = clusters.get_mut(&(reg.service_name.clone(), reg.namespace.clone()))
        else {
            continue;
        };
        let node = state.node(&reg.node_id);
        let node_ready = node.is_some_and(|n| n.status == NODE_STATUS_READY);
        let identity = match (trust_domain, node) {
            (Some(td), Some(n)) => spiffe_id(td, &reg.namespace, &n.datacenter, &reg.service_name),
            _ => String::new(),
        };
        endpoints.push(Endpoint {
            identity,
            address: format!("{}:{}", reg.address, reg.port),
            node_id: reg.node_id.clone(),
            local: reg.node_id == node_id,
            proxy_addr: node.map(|n| n.proxy_addr.clone()).unwrap_or_default(),
            healthy: reg.healthy() && node_ready,
            alloc_id: reg.alloc_id.clone(),
            ..Default::default()
        });
    }
    let clusters = clusters
        .into_iter()
        .map(|((name, namespace), mut endpoints)| {
            endpoints.sort_by(|a, b| a.address.cmp(&b.address));
            Resource {
                name: name.clone(),
                kind: Some(Kind::Cluster(Cluster {
                    name,
                    namespace,
                    endpoints,
                    ..Default::default()
                })),
            }
        })
        .collect();
    let routes = routes
        .into_iter()
        .map(|(host, path_prefix, cluster)| Resource {
            name: format!("{host}{path_prefix}"),
            kind: Some(Kind::Route(Route {
                host,
                path_prefix,
                cluster,
            })),
        })
        .collect();
    Resources {
        clusters,
        routes,
        listeners: listeners_for_node(state, node_id),
        trust_bundle: trust_bundle(state),
        authorization: vec![authorization(state)],
    }
}

/// Upstream listeners of the node's live allocations (Connect `upstreams` blocks).
fn listeners_for_node(state: &State, node_id: &str) -> Vec<Resource> {
    let mut out = Vec::new();
    for alloc in state.allocs_by_node(node_id).filter(|a| !a.terminal()) {
        let Some(job) = &alloc.job else { continue };
        let Some(group) = job.task_groups.iter().find(|g| g.name == alloc.task_group) else {
            continue;
        };
        for svc in group.all_services() {
            for up in svc.upstreams() {
                let name = format!("{}/{}", alloc.id, up.destination_name);
                let destination_namespace = if up.destination_namespace.is_empty() {
                    job.namespace.clone()
                } else {
                    up.destination_namespace.clone()
                };
                out.push(Resource {
                    name: name.clone(),
                    kind: Some(Kind::Listener(Listener {
                        name,
                        alloc_id: alloc.id.clone(),
                        source_service: svc.name.clone(),
                        namespace: job.namespace.clone(),
                        destination: up.destination_name.clone(),
                        destination_namespace,
                        bind_address: up.bind_address().to_string(),
                        bind_port: u32::from(up.local_bind_port),
                    })),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The CA roots every proxy must trust (empty before the CA exists).
fn trust_bundle(state: &State) -> Vec<Resource> {
    let Some(ca) = &state.ca else {
        return Vec::new();
    };
    vec![Resource {
        name: "roots".to_string(),
        kind: Some(Kind::TrustBundle(TrustBundle {
            trust_domain: ca.trust_domain.clone(),
            roots_pem: ca.roots.iter().map(|r| r.root_cert.clone()).collect(),
            active_root_id: ca.active_root().map(|r| r.id.clone()).unwrap_or_default(),
        })),
    }]
}

/// All intentions and the default action, as one resource.
fn authorization(state: &State) -> Resource {
    Resource {
        name: "intentions".to_string(),
        kind: Some(Kind::Authorization(Authorization {
            default_action: state.mesh.default_intention.as_str().to_string(),
            intentions: state
                .intentions
                .values()
                .map(|i| IntentionRule {
                    source: i.source_name.clone(),
                    destination: i.destination_name.clone(),
                    action: i.action.as_str().to_string(),
                    precedence: i.precedence,
                })
                .collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlprefix_tags() {
        let tags = vec![
            "urlprefix-/".to_string(),
            "urlprefix-Example.com/api strip=/api".to_string(),
            "other".to_string(),
            "urlprefix-nohostnopath".to_string(),
        ];
        assert_eq!(
            routes_from_tags(&tags),
            vec![
                (String::new(), "/".to_string()),
                ("example.com".to_string(), "/api".to_string())
            ]
        );
    }
}
