//! A service's compiled L7 route table (service-router → splitter → resolver), parsed once from
//! the `ServiceRoutes` resource: matchers are typed and regexes compiled here, never per request.

use std::time::Duration;

use flotilla_proto::discovery::v1 as pb;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use regex::Regex;

use super::policy::millis;

/// The route table of one service: the first route whose match holds decides.
#[derive(Debug, Clone)]
pub struct ServiceRoutes {
    pub service: String,
    pub namespace: String,
    pub routes: Vec<HttpRoute>,
}

impl ServiceRoutes {
    /// The table as JSON for `/config_dump`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "service": self.service,
            "namespace": self.namespace,
            "routes": self.routes.iter().map(|r| serde_json::json!({
                "name": r.name,
                "match": r.matcher.as_ref().map(|m| format!("{m:?}")),
                "clusters": r.clusters.iter().map(|c| serde_json::json!({
                    "cluster": c.cluster,
                    "weight": c.weight,
                })).collect::<Vec<_>>(),
                "prefix_rewrite": r.prefix_rewrite,
                "request_timeout_ms": r.request_timeout.map(|d| d.as_millis() as u64),
                "retry": {
                    "num_retries": r.retry.num_retries,
                    "connect_attempts": r.retry.connect_attempts,
                    "on_5xx": r.retry.on_5xx,
                    "on_gateway_error": r.retry.on_gateway_error,
                    "on_reset": r.retry.on_reset,
                    "on_status_codes": r.retry.on_status_codes,
                },
            })).collect::<Vec<_>>(),
        })
    }

    /// The first route matching the request, with its index.
    pub fn find(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<(usize, &HttpRoute)> {
        self.routes.iter().enumerate().find(|(_, r)| {
            r.matcher
                .as_ref()
                .is_none_or(|m| m.matches(method, uri, headers))
        })
    }
}

/// One route: a match and where matching requests go.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Bounded label for metrics and logs: the route's index in the table, or `default` for the
    /// catch-all a table without one gets.
    pub name: String,
    /// `None` matches every request.
    pub matcher: Option<HttpMatch>,
    /// At least one; weights are positive.
    pub clusters: Vec<WeightedCluster>,
    /// Sum of the weights.
    pub total_weight: u32,
    pub prefix_rewrite: Option<String>,
    pub request_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub headers_set: Vec<(HeaderName, HeaderValue)>,
    pub headers_remove: Vec<HeaderName>,
}

impl HttpRoute {
    /// The cluster for a request, given a uniform random number in `0..total_weight`.
    pub fn cluster_for(&self, roll: u32) -> &str {
        let mut acc = 0;
        for c in &self.clusters {
            acc += c.weight;
            if roll < acc {
                return &c.cluster;
            }
        }
        &self.clusters[self.clusters.len() - 1].cluster
    }

    /// The path after the prefix rewrite (`None`: unchanged).
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let rewrite = self.prefix_rewrite.as_ref()?;
        let matched = match self.matcher.as_ref().and_then(|m| m.path.as_ref()) {
            Some(PathMatch::Prefix(p)) => p.as_str(),
            Some(PathMatch::Exact(p)) => p.as_str(),
            _ => "/",
        };
        let rest = path.strip_prefix(matched).unwrap_or(path);
        let mut out = rewrite.clone();
        if out.ends_with('/') && rest.starts_with('/') {
            out.pop();
        }
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        Some(out)
    }
}

/// A weighted destination of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

/// When a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt, for the conditions below except connect failures.
    pub num_retries: u32,
    /// Connect failures (nothing was sent) are always safe to retry on another endpoint; they
    /// are retried up to `connect_attempts` attempts in all.
    pub connect_attempts: u32,
    /// Any 5xx response.
    pub on_5xx: bool,
    /// 502, 503 and 504 responses.
    pub on_gateway_error: bool,
    /// The upstream reset or closed the connection before a response.
    pub on_reset: bool,
    /// 409 responses.
    pub on_retriable_4xx: bool,
    /// These statuses.
    pub on_status_codes: Vec<u16>,
}

impl Default for RetryPolicy {
    /// No retries of sent requests; connect failures tried on up to 3 endpoints.
    fn default() -> Self {
        RetryPolicy {
            num_retries: 0,
            connect_attempts: 3,
            on_5xx: false,
            on_gateway_error: false,
            on_reset: false,
            on_retriable_4xx: false,
            on_status_codes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether a response with `status` may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.num_retries > 0
            && ((self.on_5xx && status >= 500)
                || (self.on_gateway_error && matches!(status, 502..=504))
                || (self.on_retriable_4xx && status == 409)
                || self.on_status_codes.contains(&status))
    }

    /// Whether a reset (request sent, no response) may be retried.
    pub fn retries_reset(&self) -> bool {
        self.num_retries > 0 && (self.on_reset || self.on_5xx || self.on_gateway_error)
    }
}

/// A route's match: every present part must hold.
#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    /// Empty matches any method.
    pub methods: Vec<Method>,
}

impl HttpMatch {
    /// Whether the request matches.
    pub fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if let Some(p) = &self.path
            && !p.matches(uri.path())
        {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(headers)) {
            return false;
        }
        self.query.is_empty() || {
            let query = uri.query().unwrap_or("");
            self.query.iter().all(|q| q.matches(query))
        }
    }
}

/// How the path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole path must match.
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    pub kind: ValueMatch,
    pub invert: bool,
}

impl HeaderMatcher {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        let hit = match &self.kind {
            ValueMatch::Present => values.peek().is_some(),
            kind => values.any(|v| v.to_str().is_ok_and(|v| kind.matches(v))),
        };
        hit != self.invert
    }
}

/// A query parameter condition.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: String,
    pub kind: ValueMatch,
}

impl QueryMatcher {
    fn matches(&self, query: &str) -> bool {
        let mut values = query.split('&').filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == self.name).then_some(v)
        });
        match &self.kind {
            ValueMatch::Present => values.next().is_some(),
            kind => values.any(|v| kind.matches(v)),
        }
    }
}

/// How a header or query value is compared.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Anchored.
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(e) => value == e,
            ValueMatch::Prefix(p) => value.starts_with(p.as_str()),
            ValueMatch::Suffix(s) => value.ends_with(s.as_str()),
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

/// Parses one `ServiceRoutes` resource. `Err((field, problem))`.
pub(super) fn parse_service_routes(
    t: &pb::ServiceRoutes,
) -> Result<ServiceRoutes, (String, String)> {
    if t.service.is_empty() {
        return Err((
            "service".into(),
            "empty: a route table needs its service".into(),
        ));
    }
    let mut routes = Vec::with_capacity(t.routes.len());
    for (i, r) in t.routes.iter().enumerate() {
        let field = |f: &str| format!("routes[{i}].{f}");
        let matcher = match &r.r#match {
            None => None,
            Some(m) => Some(parse_match(m).map_err(|(f, p)| (field(&format!("match.{f}")), p))?),
        };
        if r.clusters.is_empty() {
            return Err((
                field("clusters"),
                "empty: a route needs at least one cluster".into(),
            ));
        }
        let mut clusters = Vec::with_capacity(r.clusters.len());
        for (j, c) in r.clusters.iter().enumerate() {
            if c.cluster.is_empty() {
                return Err((field(&format!("clusters[{j}].cluster")), "empty".into()));
            }
            if c.weight > 0 {
                clusters.push(WeightedCluster {
                    cluster: c.cluster.clone(),
                    weight: c.weight,
                });
            }
        }
        if clusters.is_empty() {
            return Err((field("clusters"), "every weight is 0".into()));
        }
        let total_weight = clusters.iter().map(|c| c.weight).sum();
        let mut retry = RetryPolicy::default();
        if let Some(p) = &r.retry {
            retry.num_retries = p.num_retries;
            if p.on_connect_failure {
                retry.connect_attempts = retry.connect_attempts.max(p.num_retries + 1);
            }
            retry.on_status_codes = Vec::with_capacity(p.on_status_codes.len());
            for (j, code) in p.on_status_codes.iter().enumerate() {
                match u16::try_from(*code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                {
                    Some(c) => retry.on_status_codes.push(c),
                    None => {
                        return Err((
                            field(&format!("retry.on_status_codes[{j}]")),
                            format!("{code} is not an HTTP status (100-599)"),
                        ));
                    }
                }
            }
            for (j, on) in p.on.iter().enumerate() {
                match on.as_str() {
                    "5xx" => retry.on_5xx = true,
                    "gateway-error" => retry.on_gateway_error = true,
                    "reset" | "refused-stream" => retry.on_reset = true,
                    "connect-failure" => {
                        retry.connect_attempts = retry.connect_attempts.max(p.num_retries + 1)
                    }
                    "retriable-4xx" => retry.on_retriable_4xx = true,
                    // gRPC statuses map onto HTTP ones through the upstream's response.
                    "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
                    | "unavailable" => retry.on_gateway_error = true,
                    other => {
                        return Err((
                            field(&format!("retry.on[{j}]")),
                            format!(
                                "{other:?} is not one of \"5xx\", \"gateway-error\", \"reset\", \"connect-failure\", \"retriable-4xx\", \"refused-stream\""
                            ),
                        ));
                    }
                }
            }
        }
        let any_condition = retry.on_5xx
            || retry.on_gateway_error
            || retry.on_reset
            || retry.on_retriable_4xx
            || !retry.on_status_codes.is_empty();
        if retry.num_retries == 0 && any_condition {
            // As Consul: conditions without NumRetries get Envoy's default of one retry.
            retry.num_retries = 1;
        }
        let mut headers_set = Vec::with_capacity(r.request_headers_set.len());
        for (name, value) in &r.request_headers_set {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    field("request_headers_set"),
                    format!("{name:?} is not a header name"),
                )
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                (
                    field("request_headers_set"),
                    format!("{value:?} is not a valid value for {name}"),
                )
            })?;
            headers_set.push((n, v));
        }
        let mut headers_remove = Vec::with_capacity(r.request_headers_remove.len());
        for name in &r.request_headers_remove {
            headers_remove.push(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    field("request_headers_remove"),
                    format!("{name:?} is not a header name"),
                )
            })?);
        }
        let is_last_catch_all = i + 1 == t.routes.len() && matcher.is_none();
        routes.push(HttpRoute {
            name: if is_last_catch_all {
                "default".to_string()
            } else {
                i.to_string()
            },
            matcher,
            clusters,
            total_weight,
            prefix_rewrite: (!r.prefix_rewrite.is_empty()).then(|| r.prefix_rewrite.clone()),
            request_timeout: millis(r.request_timeout_ms),
            idle_timeout: millis(r.idle_timeout_ms),
            retry,
            headers_set,
            headers_remove,
        });
    }
    Ok(ServiceRoutes {
        service: t.service.clone(),
        namespace: t.namespace.clone(),
        routes,
    })
}

fn parse_match(m: &pb::HttpMatch) -> Result<HttpMatch, (String, String)> {
    let paths = [
        !m.path_exact.is_empty(),
        !m.path_prefix.is_empty(),
        !m.path_regex.is_empty(),
    ];
    if paths.iter().filter(|p| **p).count() > 1 {
        return Err((
            "path_exact".into(),
            "at most one of path_exact, path_prefix and path_regex may be set".into(),
        ));
    }
    let path = if !m.path_exact.is_empty() {
        if !m.path_exact.starts_with('/') {
            return Err((
                "path_exact".into(),
                format!("{:?} must start with \"/\"", m.path_exact),
            ));
        }
        Some(PathMatch::Exact(m.path_exact.clone()))
    } else if !m.path_prefix.is_empty() {
        if !m.path_prefix.starts_with('/') {
            return Err((
                "path_prefix".into(),
                format!("{:?} must start with \"/\"", m.path_prefix),
            ));
        }
        Some(PathMatch::Prefix(m.path_prefix.clone()))
    } else if !m.path_regex.is_empty() {
        Some(PathMatch::Regex(
            anchored(&m.path_regex).map_err(|p| ("path_regex".to_string(), p))?,
        ))
    } else {
        None
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        let field = |f: &str| format!("headers[{i}].{f}");
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| (field("name"), format!("{:?} is not a header name", h.name)))?;
        let kind = value_match(h.present, &h.exact, &h.prefix, &h.suffix, &h.regex)
            .map_err(|(f, p)| (field(&f), p))?;
        headers.push(HeaderMatcher {
            name,
            kind,
            invert: h.invert,
        });
    }
    let mut query = Vec::with_capacity(m.query.len());
    for (i, q) in m.query.iter().enumerate() {
        let field = |f: &str| format!("query[{i}].{f}");
        if q.name.is_empty() {
            return Err((field("name"), "empty".into()));
        }
        let kind =
            value_match(q.present, &q.exact, "", "", &q.regex).map_err(|(f, p)| (field(&f), p))?;
        query.push(QueryMatcher {
            name: q.name.clone(),
            kind,
        });
    }
    let mut methods = Vec::with_capacity(m.methods.len());
    for (i, name) in m.methods.iter().enumerate() {
        methods.push(Method::from_bytes(name.as_bytes()).map_err(|_| {
            (
                format!("methods[{i}]"),
                format!("{name:?} is not an HTTP method"),
            )
        })?);
    }
    Ok(HttpMatch {
        path,
        headers,
        query,
        methods,
    })
}

fn value_match(
    present: bool,
    exact: &str,
    prefix: &str,
    suffix: &str,
    regex: &str,
) -> Result<ValueMatch, (String, String)> {
    let set = [
        present,
        !exact.is_empty(),
        !prefix.is_empty(),
        !suffix.is_empty(),
        !regex.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err((
            "exact".into(),
            "at most one of present, exact, prefix, suffix and regex may be set".into(),
        ));
    }
    Ok(if !exact.is_empty() {
        ValueMatch::Exact(exact.to_string())
    } else if !prefix.is_empty() {
        ValueMatch::Prefix(prefix.to_string())
    } else if !suffix.is_empty() {
        ValueMatch::Suffix(suffix.to_string())
    } else if !regex.is_empty() {
        ValueMatch::Regex(anchored(regex).map_err(|p| ("regex".to_string(), p))?)
    } else {
        // Present, or nothing set: Consul treats an empty condition as "present".
        ValueMatch::Present
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: Vec<pb::HttpRoute>) -> ServiceRoutes {
        parse_service_routes(&pb::ServiceRoutes {
            service: "web".into(),
            namespace: "default".into(),
            routes,
        })
        .unwrap()
    }

    fn to(cluster: &str) -> Vec<pb::WeightedCluster> {
        vec![pb::WeightedCluster {
            cluster: cluster.into(),
            weight: 10_000,
        }]
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), h)
    }

    #[test]
    fn first_matching_route_wins() {
        let t = table(vec![
            pb::HttpRoute {
                r#match: Some(pb::HttpMatch {
                    headers: vec![pb::HeaderMatch {
                        name: "x-canary".into(),
                        exact: "true".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                clusters: to("canary"),
                ..Default::default()
            },
            pb::HttpRoute {
                r#match: Some(pb::HttpMatch {
                    path_prefix: "/api".into(),
                    methods: vec!["GET".into()],
                    ..Default::default()
                }),
                clusters: to("api"),
                prefix_rewrite: "/".into(),
                ..Default::default()
            },
            pb::HttpRoute {
                r#match: Some(pb::HttpMatch {
                    path_regex: "/v[0-9]+/.*".into(),
                    query: vec![pb::QueryMatch {
                        name: "debug".into(),
                        present: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                clusters: to("debug"),
                ..Default::default()
            },
            pb::HttpRoute {
                clusters: to("web"),
                ..Default::default()
            },
        ]);
        let pick = |m: &str, u: &str, h: &[(&str, &str)]| {
            let (m, u, h) = req(m, u, h);
            t.find(&m, &u, &h)
                .map(|(_, r)| r.clusters[0].cluster.clone())
        };
        assert_eq!(
            pick("GET", "/api/x", &[("x-canary", "true")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            pick("GET", "/api/x", &[("x-canary", "false")]).as_deref(),
            Some("api")
        );
        assert_eq!(pick("POST", "/api/x", &[]).as_deref(), Some("web"));
        assert_eq!(
            pick("GET", "/v2/users?debug", &[]).as_deref(),
            Some("debug")
        );
        assert_eq!(
            pick("GET", "/v2/users?x=1&debug=1", &[]).as_deref(),
            Some("debug")
        );
        assert_eq!(pick("GET", "/xv2/users?debug", &[]).as_deref(), Some("web"));
        assert_eq!(
            t.routes[1].rewrite_path("/api/users").as_deref(),
            Some("/users")
        );
        assert_eq!(t.routes[1].rewrite_path("/api").as_deref(), Some("/"));
        assert_eq!(t.routes[3].name, "default");
        assert_eq!(t.routes[0].name, "0");
    }

    #[test]
    fn weighted_clusters_cover_the_range() {
        let t = table(vec![pb::HttpRoute {
            clusters: vec![
                pb::WeightedCluster {
                    cluster: "v1.web".into(),
                    weight: 9_000,
                },
                pb::WeightedCluster {
                    cluster: "v2.web".into(),
                    weight: 1_000,
                },
            ],
            ..Default::default()
        }]);
        let r = &t.routes[0];
        assert_eq!(r.total_weight, 10_000);
        assert_eq!(r.cluster_for(0), "v1.web");
        assert_eq!(r.cluster_for(8_999), "v1.web");
        assert_eq!(r.cluster_for(9_000), "v2.web");
        assert_eq!(r.cluster_for(9_999), "v2.web");
    }

    #[test]
    fn invalid_parts_are_named() {
        let bad = |r: pb::HttpRoute| {
            parse_service_routes(&pb::ServiceRoutes {
                service: "web".into(),
                routes: vec![r],
                ..Default::default()
            })
            .unwrap_err()
        };
        let (f, p) = bad(pb::HttpRoute {
            r#match: Some(pb::HttpMatch {
                path_regex: "(".into(),
                ..Default::default()
            }),
            clusters: to("x"),
            ..Default::default()
        });
        assert_eq!(f, "routes[0].match.path_regex");
        assert!(p.contains("invalid regex"), "{p}");
        let (f, _) = bad(pb::HttpRoute::default());
        assert_eq!(f, "routes[0].clusters");
        let (f, _) = bad(pb::HttpRoute {
            clusters: to("x"),
            retry: Some(pb::RetryPolicy {
                num_retries: 1,
                on: vec!["sometimes".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(f, "routes[0].retry.on[0]");
    }

    #[test]
    fn retry_conditions() {
        let p = RetryPolicy {
            num_retries: 1,
            on_status_codes: vec![503],
            ..Default::default()
        };
        assert!(p.retries_status(503));
        assert!(!p.retries_status(500));
        assert!(!p.retries_reset());
        let none = RetryPolicy {
            on_status_codes: vec![503],
            ..Default::default()
        };
        assert!(!none.retries_status(503), "no retries without num_retries");
    }
}
