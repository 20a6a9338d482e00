//! Compiles a service's config entries into what the proxy needs (Consul's "discovery chain"):
//! the cluster policy (service-defaults + service-resolver), the resolver's subsets as their
//! own clusters, and for HTTP services the route table (service-router → service-splitter →
//! service-resolver, flattened to weighted clusters).
//!
//! Flotilla's node proxy is shared by every service on a node, so a service's
//! `UpstreamConfig.Defaults` (limits, passive health checks, connect timeout) and
//! `RateLimits.InstanceLevel` describe how every proxy calls that service.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::discovery::v1 as pb;
use flotilla_store::State;
use flotilla_types::{
    ConfigEntry, KIND_SERVICE_DEFAULTS, KIND_SERVICE_RESOLVER, KIND_SERVICE_ROUTER,
    KIND_SERVICE_SPLITTER, ServiceDefaults, ServiceResolver, ServiceRouteDestination,
    ServiceRouter, ServiceSplitter, SubsetFilter,
};

/// Splitters and redirects may point at each other; deeper chains are cut here.
const MAX_DEPTH: usize = 8;

/// The weights of a route's clusters add up to this.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// The name of the cluster for `subset` of `service` (Consul's `<subset>.<service>`).
pub fn cluster_name(service: &str, subset: &str) -> String {
    if subset.is_empty() {
        service.to_string()
    } else {
        format!("{subset}.{service}")
    }
}

/// A (service, subset) some route or failover targets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub service: String,
    pub subset: String,
}

impl Target {
    pub fn cluster(&self) -> String {
        cluster_name(&self.service, &self.subset)
    }
}

/// Reads one namespace's config entries.
pub struct Entries<'a> {
    state: &'a State,
    namespace: &'a str,
}

impl<'a> Entries<'a> {
    pub fn new(state: &'a State, namespace: &'a str) -> Self {
        Entries { state, namespace }
    }

    fn get(&self, kind: &str, name: &str) -> Option<&'a ConfigEntry> {
        self.state
            .config_entry(kind, self.namespace, name)
            .map(|e| &**e)
    }

    pub fn defaults(&self, service: &str) -> Option<&'a ServiceDefaults> {
        match self.get(KIND_SERVICE_DEFAULTS, service) {
            Some(ConfigEntry::ServiceDefaults(d)) => Some(d),
            _ => None,
        }
    }

    pub fn resolver(&self, service: &str) -> Option<&'a ServiceResolver> {
        match self.get(KIND_SERVICE_RESOLVER, service) {
            Some(ConfigEntry::ServiceResolver(r)) => Some(r),
            _ => None,
        }
    }

    fn router(&self, service: &str) -> Option<&'a ServiceRouter> {
        match self.get(KIND_SERVICE_ROUTER, service) {
            Some(ConfigEntry::ServiceRouter(r)) => Some(r),
            _ => None,
        }
    }

    fn splitter(&self, service: &str) -> Option<&'a ServiceSplitter> {
        match self.get(KIND_SERVICE_SPLITTER, service) {
            Some(ConfigEntry::ServiceSplitter(s)) => Some(s),
            _ => None,
        }
    }

    /// The service's protocol (`tcp` without service-defaults).
    pub fn protocol(&self, service: &str) -> &'a str {
        self.defaults(service)
            .map(|d| d.protocol.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("tcp")
    }

    /// Follows resolver redirects and applies the default subset.
    pub fn resolve(&self, service: &str, subset: &str) -> Target {
        let mut target = Target {
            service: service.to_string(),
            subset: subset.to_string(),
        };
        for _ in 0..MAX_DEPTH {
            let Some(resolver) = self.resolver(&target.service) else {
                break;
            };
            if let Some(redirect) = &resolver.redirect
                && !redirect.service.is_empty()
                && redirect.service != target.service
            {
                target = Target {
                    service: redirect.service.clone(),
                    subset: redirect.service_subset.clone(),
                };
                continue;
            }
            if target.subset.is_empty() {
                target.subset = resolver.default_subset.clone();
            }
            break;
        }
        target
    }

    /// Weighted targets (weights sum to [`TOTAL_WEIGHT`]) for traffic to `service` (and
    /// `subset`, which bypasses the splitter).
    fn split(&self, service: &str, subset: &str, depth: usize) -> Vec<(Target, f64)> {
        if !subset.is_empty() || depth >= MAX_DEPTH {
            return vec![(self.resolve(service, subset), 1.0)];
        }
        let Some(splitter) = self.splitter(service) else {
            return vec![(self.resolve(service, ""), 1.0)];
        };
        let mut out = Vec::new();
        for split in &splitter.splits {
            if split.weight <= 0.0 {
                continue;
            }
            let share = f64::from(split.weight) / 100.0;
            let next = if split.service.is_empty() {
                service
            } else {
                split.service.as_str()
            };
            let parts = if next == service {
                vec![(self.resolve(next, &split.service_subset), 1.0)]
            } else {
                self.split(next, &split.service_subset, depth + 1)
            };
            out.extend(parts.into_iter().map(|(t, w)| (t, w * share)));
        }
        if out.is_empty() {
            return vec![(self.resolve(service, ""), 1.0)];
        }
        out
    }

    /// The route table for `service`, or `None` when it speaks TCP (routing is L4).
    /// `targets` collects every (service, subset) the routes reach.
    pub fn routes(
        &self,
        service: &str,
        targets: &mut BTreeSet<Target>,
    ) -> Option<pb::ServiceRoutes> {
        if self.protocol(service) == "tcp" {
            return None;
        }
        let mut routes = Vec::new();
        let mut catch_all = false;
        if let Some(router) = self.router(service) {
            for r in &router.routes {
                let destination = r.destination.clone().unwrap_or_default();
                let matcher = r.r#match.as_ref().and_then(|m| m.http.as_ref());
                let m = matcher.map(|h| pb::HttpMatch {
                    path_exact: h.path_exact.clone(),
                    path_prefix: h.path_prefix.clone(),
                    path_regex: h.path_regex.clone(),
                    headers: h
                        .header
                        .iter()
                        .map(|x| pb::HeaderMatch {
                            name: x.name.clone(),
                            present: x.present,
                            exact: x.exact.clone(),
                            prefix: x.prefix.clone(),
                            suffix: x.suffix.clone(),
                            regex: x.regex.clone(),
                            invert: x.invert,
                        })
                        .collect(),
                    query: h
                        .query_param
                        .iter()
                        .map(|q| pb::QueryMatch {
                            name: q.name.clone(),
                            present: q.present,
                            exact: q.exact.clone(),
                            regex: q.regex.clone(),
                        })
                        .collect(),
                    methods: h.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                });
                let is_catch_all = m.as_ref().is_none_or(|m| {
                    m.path_exact.is_empty()
                        && m.path_regex.is_empty()
                        && (m.path_prefix.is_empty() || m.path_prefix == "/")
                        && m.headers.is_empty()
                        && m.query.is_empty()
                        && m.methods.is_empty()
                });
                routes.push(self.route(service, m, &destination, targets));
                if is_catch_all {
                    catch_all = true;
                    break;
                }
            }
        }
        if !catch_all {
            routes.push(self.route(service, None, &ServiceRouteDestination::default(), targets));
        }
        Some(pb::ServiceRoutes {
            service: service.to_string(),
            namespace: self.namespace.to_string(),
            routes,
        })
    }

    fn route(
        &self,
        service: &str,
        matcher: Option<pb::HttpMatch>,
        d: &ServiceRouteDestination,
        targets: &mut BTreeSet<Target>,
    ) -> pb::HttpRoute {
        let destination = if d.service.is_empty() {
            service
        } else {
            d.service.as_str()
        };
        let split = self.split(destination, &d.service_subset, 0);
        // Merge equal targets, then scale to TOTAL_WEIGHT with the remainder on the largest.
        let mut merged: BTreeMap<Target, f64> = BTreeMap::new();
        for (t, w) in split {
            *merged.entry(t).or_default() += w;
        }
        let sum: f64 = merged.values().sum();
        let mut clusters: Vec<pb::WeightedCluster> = merged
            .iter()
            .map(|(t, w)| pb::WeightedCluster {
                cluster: t.cluster(),
                weight: (w / sum * f64::from(TOTAL_WEIGHT)).round() as u32,
            })
            .collect();
        let total: u32 = clusters.iter().map(|c| c.weight).sum();
        if let Some(max) = clusters.iter_mut().max_by_key(|c| c.weight) {
            max.weight = (max.weight + TOTAL_WEIGHT).saturating_sub(total);
        }
        clusters.retain(|c| c.weight > 0);
        targets.extend(merged.into_keys());
        let retry = (d.num_retries > 0
            || d.retry_on_connect_failure
            || !d.retry_on_status_codes.is_empty()
            || !d.retry_on.is_empty())
        .then(|| pb::RetryPolicy {
            num_retries: d.num_retries,
            on_connect_failure: d.retry_on_connect_failure,
            on_status_codes: d.retry_on_status_codes.clone(),
            on: d.retry_on.clone(),
        });
        pb::HttpRoute {
            r#match: matcher,
            clusters,
            prefix_rewrite: d.prefix_rewrite.clone(),
            request_timeout_ms: millis(d.request_timeout),
            idle_timeout_ms: millis(d.idle_timeout),
            retry,
            ..Default::default()
        }
    }

    /// The policy fields of `service`'s clusters.
    pub fn policy(&self, service: &str, subset: &str, cluster: &mut pb::Cluster) {
        cluster.service = service.to_string();
        cluster.subset = subset.to_string();
        cluster.protocol = self.protocol(service).to_string();
        if let Some(d) = self.defaults(service) {
            let up = d.upstream_config.as_ref().and_then(|u| u.defaults.as_ref());
            if let Some(up) = up {
                cluster.connect_timeout_ms = up.connect_timeout_ms;
                cluster.circuit_breakers = up.limits.as_ref().map(|l| pb::CircuitBreakers {
                    max_connections: l.max_connections,
                    max_pending_requests: l.max_pending_requests,
                    max_concurrent_requests: l.max_concurrent_requests,
                    max_retries: 0,
                });
                cluster.outlier_detection =
                    up.passive_health_check
                        .as_ref()
                        .map(|p| pb::OutlierDetection {
                            consecutive_5xx: p.max_failures,
                            interval_ms: millis(p.interval),
                            base_ejection_time_ms: millis(p.base_ejection_time),
                            max_ejection_percent: p.max_ejection_percent,
                            enforcing_consecutive_5xx: p.enforcing_consecutive_5xx,
                        });
            }
            if let Some(rl) = d
                .rate_limits
                .as_ref()
                .and_then(|r| r.instance_level.as_ref())
                && rl.requests_per_second > 0
            {
                cluster.rate_limit = Some(pb::RateLimit {
                    requests_per_second: rl.requests_per_second,
                    requests_max_burst: rl.requests_max_burst,
                });
            }
        }
        if let Some(r) = self.resolver(service) {
            if let Some(t) = r.connect_timeout {
                cluster.connect_timeout_ms = millis(Some(t));
            }
            cluster.request_timeout_ms = millis(r.request_timeout);
            if let Some(lb) = &r.load_balancer {
                cluster.load_balancer = Some(pb::LoadBalancer {
                    policy: lb.policy.clone(),
                    choice_count: lb
                        .least_request_config
                        .as_ref()
                        .map_or(0, |c| c.choice_count),
                    minimum_ring_size: lb
                        .ring_hash_config
                        .as_ref()
                        .map_or(0, |c| c.minimum_ring_size),
                    maximum_ring_size: lb
                        .ring_hash_config
                        .as_ref()
                        .map_or(0, |c| c.maximum_ring_size),
                    hash_policies: lb
                        .hash_policies
                        .iter()
                        .map(|h| pb::HashPolicy {
                            field: h.field.clone(),
                            field_value: h.field_value.clone(),
                            source_ip: h.source_ip,
                            terminal: h.terminal,
                        })
                        .collect(),
                });
            }
            cluster.failover = self
                .failover_targets(service, subset)
                .iter()
                .map(Target::cluster)
                .filter(|c| *c != cluster.name)
                .collect();
        }
    }

    /// The failover targets of `service`/`subset` (the resolver's `Failover` entry for the
    /// subset, or for `*`): tried in order when the cluster has no usable endpoint.
    pub fn failover_targets(&self, service: &str, subset: &str) -> Vec<Target> {
        let Some(r) = self.resolver(service) else {
            return Vec::new();
        };
        let Some(f) = r.failover.get(subset).or_else(|| r.failover.get("*")) else {
            return Vec::new();
        };
        let or_self = |s: &str| {
            if s.is_empty() {
                service.to_string()
            } else {
                s.to_string()
            }
        };
        let mut targets: Vec<Target> = f
            .targets
            .iter()
            .map(|t| Target {
                service: or_self(&t.service),
                subset: t.service_subset.clone(),
            })
            .collect();
        if targets.is_empty() && (!f.service.is_empty() || !f.service_subset.is_empty()) {
            targets.push(Target {
                service: or_self(&f.service),
                subset: f.service_subset.clone(),
            });
        }
        targets
    }

    /// The subset's filter, `None` when the resolver does not define it. `only_passing` is
    /// the second value.
    pub fn subset_filter(
        &self,
        service: &str,
        subset: &str,
    ) -> Option<(Option<SubsetFilter>, bool)> {
        let s = self.resolver(service)?.subsets.get(subset)?;
        let filter = if s.filter.trim().is_empty() {
            None
        } else {
            // Validated on write; an unparsable filter matches nothing.
            Some(
                SubsetFilter::parse(&s.filter)
                    .unwrap_or(SubsetFilter::TagContains("\u{0}never".into())),
            )
        };
        Some((filter, s.only_passing))
    }
}

fn millis(d: Option<std::time::Duration>) -> u32 {
    d.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
}
