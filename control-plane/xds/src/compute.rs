use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::discovery::v1::{Cluster, Endpoint, Resource, Route, resource::Kind};
use flotilla_store::State;
use flotilla_types::NODE_STATUS_READY;

/// The resources of each type for one node, in a stable order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    pub clusters: Vec<Resource>,
    pub routes: Vec<Resource>,
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
    for reg in state.services.values() {
        let Some(endpoints) = clusters.get_mut(&(reg.service_name.clone(), reg.namespace.clone()))
        else {
            continue;
        };
        let node = state.node(&reg.node_id);
        let node_ready = node.is_some_and(|n| n.status == NODE_STATUS_READY);
        endpoints.push(Endpoint {
            address: format!("{}:{}", reg.address, reg.port),
            node_id: reg.node_id.clone(),
            local: reg.node_id == node_id,
            proxy_addr: node.map(|n| n.proxy_addr.clone()).unwrap_or_default(),
            healthy: reg.healthy() && node_ready,
            alloc_id: reg.alloc_id.clone(),
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
    Resources { clusters, routes }
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
