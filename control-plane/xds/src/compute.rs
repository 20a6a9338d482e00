use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::discovery::v1::{
    Authorization, Cluster, Endpoint, IntentionRule, Listener, Resource, Route, TrustBundle,
    resource::Kind,
};
use flotilla_store::State;

use crate::chain::{Entries, Target};
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

/// An endpoint and its catalog tags (for resolver subset filters).
type Instance<'a> = (Endpoint, &'a [String]);

/// Everything node `node_id`'s proxy needs, from `state`.
///
/// Clusters exist for every service some job declares (stopped jobs included, so their routes
/// answer 503 rather than 404) and for every resolver subset or failover target some route
/// reaches; endpoints come from the catalog, healthy only when their checks pass and their node
/// is ready. Services with an HTTP protocol also get their compiled route table
/// ([`chain::Entries::routes`]) in the Route response.
pub fn resources_for_node(state: &State, node_id: &str) -> Resources {
    let mut services: BTreeMap<(String, String), Vec<Instance<'_>>> = BTreeMap::new();
    let mut routes: BTreeSet<(String, String, String)> = BTreeSet::new();
    for job in state.jobs.values() {
        for group in &job.task_groups {
            for svc in group.all_services() {
                services
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
        let Some(endpoints) = services.get_mut(&(reg.service_name.clone(), reg.namespace.clone()))
        else {
            continue;
        };
        let node = state.node(&reg.node_id);
        let node_ready = node.is_some_and(|n| n.status == NODE_STATUS_READY);
        let identity = match (trust_domain, node) {
            (Some(td), Some(n)) => spiffe_id(td, &reg.namespace, &n.datacenter, &reg.service_name),
            _ => String::new(),
        };
        endpoints.push((
            Endpoint {
                identity,
                address: format!("{}:{}", reg.address, reg.port),
                node_id: reg.node_id.clone(),
                local: reg.node_id == node_id,
                proxy_addr: node.map(|n| n.proxy_addr.clone()).unwrap_or_default(),
                healthy: reg.healthy() && node_ready,
                alloc_id: reg.alloc_id.clone(),
                weight: 1,
            },
            &reg.tags,
        ));
    }
    for endpoints in services.values_mut() {
        endpoints.sort_by(|a, b| a.0.address.cmp(&b.0.address));
    }

    // Route tables, and every (service, subset) a route or a failover reaches.
    let mut targets: BTreeSet<(String, Target)> = BTreeSet::new();
    let mut tables = Vec::new();
    for (name, namespace) in services.keys() {
        let entries = Entries::new(state, namespace);
        let mut reached = BTreeSet::new();
        reached.insert(Target {
            service: name.clone(),
            subset: String::new(),
        });
        if let Some(table) = entries.routes(name, &mut reached) {
            tables.push(table);
        }
        targets.extend(reached.into_iter().map(|t| (namespace.clone(), t)));
    }
    let mut pending: Vec<(String, Target)> = targets.iter().cloned().collect();
    while let Some((namespace, t)) = pending.pop() {
        for f in Entries::new(state, &namespace).failover_targets(&t.service, &t.subset) {
            if targets.insert((namespace.clone(), f.clone())) {
                pending.push((namespace.clone(), f));
            }
        }
    }

    let no_endpoints = Vec::new();
    let clusters = targets
        .into_iter()
        .map(|(namespace, target)| {
            let entries = Entries::new(state, &namespace);
            let all = services
                .get(&(target.service.clone(), namespace.clone()))
                .unwrap_or(&no_endpoints);
            let endpoints = match entries.subset_filter(&target.service, &target.subset) {
                // An unknown subset, or none: every instance.
                None => all.iter().map(|(e, _)| e.clone()).collect(),
                Some((filter, _only_passing)) => all
                    .iter()
                    .filter(|(_, tags)| {
                        filter
                            .as_ref()
                            .is_none_or(|f| f.matches(tags, &BTreeMap::new()))
                    })
                    .map(|(e, _)| e.clone())
                    .collect(),
            };
            let name = target.cluster();
            let mut cluster = Cluster {
                name: name.clone(),
                namespace: namespace.clone(),
                endpoints,
                ..Default::default()
            };
            entries.policy(&target.service, &target.subset, &mut cluster);
            Resource {
                name,
                kind: Some(Kind::Cluster(cluster)),
            }
        })
        .collect();
    let mut routes: Vec<Resource> = routes
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
    routes.extend(tables.into_iter().map(|t| Resource {
        name: format!("service:{}", t.service),
        kind: Some(Kind::ServiceRoutes(t)),
    }));
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

    mod chains {
        use std::sync::Arc;

        use flotilla_proto::discovery::v1::{Cluster, Resource, ServiceRoutes, resource::Kind};
        use flotilla_store::{JobKey, State};
        use flotilla_types::{ConfigEntry, Job, Service, ServiceRegistration, TaskGroup};

        use super::super::resources_for_node;

        fn state(services: &[(&str, &[&str])], entries: &[serde_json::Value]) -> State {
            let mut s = State::default();
            let mut names: Vec<&str> = services.iter().map(|(n, _)| *n).collect();
            names.dedup();
            let job = Job {
                id: "j".into(),
                name: "j".into(),
                namespace: "default".into(),
                task_groups: vec![TaskGroup {
                    name: "g".into(),
                    services: names
                        .iter()
                        .map(|n| Service {
                            name: n.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            s.jobs.insert(JobKey::new("default", "j"), Arc::new(job));
            for (i, (name, tags)) in services.iter().enumerate() {
                s.services.insert(
                    format!("r{i}"),
                    Arc::new(ServiceRegistration {
                        id: format!("r{i}"),
                        service_name: name.to_string(),
                        namespace: "default".into(),
                        node_id: "n1".into(),
                        datacenter: "dc1".into(),
                        job_id: "j".into(),
                        alloc_id: format!("a{i}"),
                        tags: tags.iter().map(|t| t.to_string()).collect(),
                        address: "127.0.0.1".into(),
                        port: 9000 + i as u16,
                        status: "passing".into(),
                        create_index: 1,
                        modify_index: 1,
                    }),
                );
            }
            for e in entries {
                let entry: ConfigEntry = serde_json::from_value(e.clone()).unwrap();
                s.config_entries.insert(entry.key(), Arc::new(entry));
            }
            s
        }

        fn clusters(r: &[Resource]) -> Vec<&Cluster> {
            r.iter()
                .filter_map(|r| match &r.kind {
                    Some(Kind::Cluster(c)) => Some(c),
                    _ => None,
                })
                .collect()
        }

        fn tables(r: &[Resource]) -> Vec<&ServiceRoutes> {
            r.iter()
                .filter_map(|r| match &r.kind {
                    Some(Kind::ServiceRoutes(t)) => Some(t),
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn splitter_over_resolver_subsets_becomes_weighted_subset_clusters() {
            let s = state(
                &[("web", &["v1"]), ("web", &["v2"]), ("web", &["v2"])],
                &[
                    serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
                    serde_json::json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
                        "Subsets": {"v1": {"Filter": "Service.Tags contains \"v1\""},
                                    "v2": {"Filter": "Service.Tags contains \"v2\""}},
                        "LoadBalancer": {"Policy": "least_request"}}),
                    serde_json::json!({"Kind": "service-splitter", "Name": "web",
                        "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}),
                ],
            );
            let r = resources_for_node(&s, "n1");
            let cs = clusters(&r.clusters);
            let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["web", "v1.web", "v2.web"]);
            assert_eq!(cs[0].endpoints.len(), 3);
            assert_eq!(cs[1].endpoints.len(), 1);
            assert_eq!(cs[2].endpoints.len(), 2);
            assert!(
                cs.iter()
                    .all(|c| c.protocol == "http" && c.service == "web")
            );
            assert_eq!(
                cs[2].load_balancer.as_ref().unwrap().policy,
                "least_request"
            );
            let t = tables(&r.routes);
            assert_eq!(t.len(), 1);
            let weights: Vec<(&str, u32)> = t[0].routes[0]
                .clusters
                .iter()
                .map(|c| (c.cluster.as_str(), c.weight))
                .collect();
            assert_eq!(weights, [("v1.web", 9000), ("v2.web", 1000)]);
        }

        #[test]
        fn router_routes_then_the_default_and_tcp_services_get_no_table() {
            let s = state(
                &[("web", &[]), ("api", &[]), ("db", &[])],
                &[
                    serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
                    serde_json::json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
                    serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
                        {"Match": {"HTTP": {"PathPrefix": "/api"}},
                         "Destination": {"Service": "api", "NumRetries": 2, "RetryOnStatusCodes": [503],
                                         "RequestTimeout": "15s", "PrefixRewrite": "/"}}]}),
                    serde_json::json!({"Kind": "service-resolver", "Name": "api",
                        "Failover": {"*": {"Targets": [{"Service": "web"}]}}}),
                ],
            );
            let r = resources_for_node(&s, "n1");
            let t = tables(&r.routes);
            let web = t.iter().find(|t| t.service == "web").unwrap();
            assert_eq!(web.routes.len(), 2);
            let api = &web.routes[0];
            assert_eq!(api.r#match.as_ref().unwrap().path_prefix, "/api");
            assert_eq!(api.clusters[0].cluster, "api");
            assert_eq!(api.request_timeout_ms, 15_000);
            assert_eq!(api.prefix_rewrite, "/");
            let retry = api.retry.as_ref().unwrap();
            assert_eq!(
                (retry.num_retries, retry.on_status_codes.clone()),
                (2, vec![503])
            );
            assert!(web.routes[1].r#match.is_none());
            assert_eq!(web.routes[1].clusters[0].cluster, "web");
            assert!(
                t.iter().all(|t| t.service != "db"),
                "tcp services are routed at L4"
            );
            let api_cluster = clusters(&r.clusters)
                .into_iter()
                .find(|c| c.name == "api")
                .unwrap();
            assert_eq!(api_cluster.failover, ["web"]);
        }
    }
}
