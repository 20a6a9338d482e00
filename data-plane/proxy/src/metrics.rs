//! Prometheus metrics of the node proxy, served on the admin port's `/metrics`.
//!
//! One [`Metrics`] per proxy (several proxies can share a process, as in the tests). Handles
//! are made when config snapshots are built — one [`ClusterMetrics`] per cluster, one
//! [`RouteMetrics`] per route, the same series for the same name across snapshots — and cached
//! by their owner, so the request path only adds to relaxed atomics (a latency sample is two
//! adds: its bucket and the sum); it never looks a metric up by name and never allocates.
//! `/metrics` renders the text exposition format from those atomics on demand. A cluster's
//! series cost about 300 bytes, a route's about 200, so 1,000 services of config stay small.
//!
//! Label values are bounded: cluster, service and route names come from config, statuses are
//! collapsed into classes (`1xx`…`5xx`), circuit-breaker limits and config types are fixed sets.
//! No paths, addresses or versions become label values.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `flotilla_proxy_requests_total` | counter | service, route, status_class |
//! | `flotilla_proxy_request_duration_seconds` | histogram | service, route |
//! | `flotilla_proxy_upstream_requests_total` | counter | cluster, status_class |
//! | `flotilla_proxy_upstream_request_duration_seconds` | histogram | cluster |
//! | `flotilla_proxy_upstream_connections_total` | counter | cluster |
//! | `flotilla_proxy_upstream_connections_active` | gauge | cluster |
//! | `flotilla_proxy_upstream_connect_failures_total` | counter | cluster |
//! | `flotilla_proxy_retries_total` | counter | cluster |
//! | `flotilla_proxy_ejections_total` | counter | cluster |
//! | `flotilla_proxy_ejected_endpoints` | gauge | cluster |
//! | `flotilla_proxy_rate_limited_total` | counter | cluster |
//! | `flotilla_proxy_overflow_total` | counter | cluster, limit |
//! | `flotilla_proxy_timeouts_total` | counter | cluster |
//! | `flotilla_proxy_config_updates_total` | counter | type |
//! | `flotilla_proxy_config_version` | gauge | type |
//! | `flotilla_proxy_config_last_update_timestamp_seconds` | gauge | type |
//! | `flotilla_proxy_access_log_dropped_total` | counter | |
//!
//! plus the [`Stats`] counters (TLS handshakes, tunnels, L4 connections, forwarded legs), read
//! when `/metrics` is rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_proto::discovery::v1::{
    AUTHORIZATION_TYPE, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, TRUST_BUNDLE_TYPE,
};
use http::StatusCode;

use crate::access_log::AccessLog;
use crate::stats::Stats;

/// Upper bounds (seconds) of the latency histograms' buckets: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of [`LATENCY_BUCKETS`] in nanoseconds: a sample is bucketed by integer
/// comparisons.
const BOUNDS_NANOS: [u64; BUCKETS] = {
    let mut out = [0; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        out[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};
const BUCKETS: usize = LATENCY_BUCKETS.len();

/// The content type of the text exposition format served on `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const REQUESTS: &str = "flotilla_proxy_requests_total";
const REQUEST_DURATION: &str = "flotilla_proxy_request_duration_seconds";
const UPSTREAM_REQUESTS: &str = "flotilla_proxy_upstream_requests_total";
const UPSTREAM_DURATION: &str = "flotilla_proxy_upstream_request_duration_seconds";
const CONNECTIONS: &str = "flotilla_proxy_upstream_connections_total";
const CONNECTIONS_ACTIVE: &str = "flotilla_proxy_upstream_connections_active";
const CONNECT_FAILURES: &str = "flotilla_proxy_upstream_connect_failures_total";
const RETRIES: &str = "flotilla_proxy_retries_total";
const EJECTIONS: &str = "flotilla_proxy_ejections_total";
const EJECTED: &str = "flotilla_proxy_ejected_endpoints";
const RATE_LIMITED: &str = "flotilla_proxy_rate_limited_total";
const OVERFLOW: &str = "flotilla_proxy_overflow_total";
const TIMEOUTS: &str = "flotilla_proxy_timeouts_total";
const CONFIG_UPDATES: &str = "flotilla_proxy_config_updates_total";
const CONFIG_VERSION: &str = "flotilla_proxy_config_version";
const CONFIG_TIMESTAMP: &str = "flotilla_proxy_config_last_update_timestamp_seconds";
const ACCESS_LOG_DROPPED: &str = "flotilla_proxy_access_log_dropped_total";
const TLS_HANDSHAKES: &str = "flotilla_proxy_mesh_tls_handshakes_total";
const INBOUND_HANDSHAKE_FAILURES: &str = "flotilla_proxy_inbound_handshake_failures_total";
const INBOUND_DENIED: &str = "flotilla_proxy_inbound_denied_total";
const INBOUND_TUNNELS: &str = "flotilla_proxy_inbound_tunnels_total";
const OUTBOUND_CONNECTIONS: &str = "flotilla_proxy_outbound_connections_total";
const OUTBOUND_DENIED: &str = "flotilla_proxy_outbound_denied_total";
const OUTBOUND_FAILURES: &str = "flotilla_proxy_outbound_failures_total";
const FORWARDED_LEGS: &str = "flotilla_proxy_forwarded_legs_total";

/// A metric family's type, as the `# TYPE` line names it.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
struct Family {
    kind: Kind,
    name: &'static str,
    help: &'static str,
    source: Source,
}

/// Where a family's series come from.
#[derive(Clone, Copy)]
enum Source {
    /// Per route, one series per status class.
    RouteRequests,
    RouteDuration,
    /// Per cluster, one series per status class.
    ClusterRequests,
    ClusterDuration,
    /// Per cluster, one series per circuit-breaker limit.
    ClusterOverflow,
    ClusterActive,
    /// One series per cluster from this counter or gauge.
    Cluster(fn(&ClusterInner) -> &AtomicU64),
    /// One series per config type.
    Config(fn(&ConfigSeries) -> f64),
    AccessLogDropped,
    /// The [`STATS`] counters of this family.
    Stats,
}

/// Every metric family: its type, HELP text and where its series come from, in render order.
const FAMILIES: &[Family] = &[
    Family {
        kind: Kind::Counter,
        name: REQUESTS,
        help: "Requests answered on the ingress, by service, route and status class.",
        source: Source::RouteRequests,
    },
    Family {
        kind: Kind::Histogram,
        name: REQUEST_DURATION,
        help: "Time from receiving a request on the ingress to its response head, by service and route.",
        source: Source::RouteDuration,
    },
    Family {
        kind: Kind::Counter,
        name: UPSTREAM_REQUESTS,
        help: "Requests sent to a cluster's endpoints (each attempt), by status class.",
        source: Source::ClusterRequests,
    },
    Family {
        kind: Kind::Histogram,
        name: UPSTREAM_DURATION,
        help: "Time an upstream attempt took until its response head, by cluster.",
        source: Source::ClusterDuration,
    },
    Family {
        kind: Kind::Counter,
        name: CONNECTIONS,
        help: "Connections opened to a cluster's endpoints.",
        source: Source::Cluster(|c| &c.connections),
    },
    Family {
        kind: Kind::Gauge,
        name: CONNECTIONS_ACTIVE,
        help: "Connections to a cluster's endpoints open now.",
        source: Source::ClusterActive,
    },
    Family {
        kind: Kind::Counter,
        name: CONNECT_FAILURES,
        help: "Connection attempts to a cluster's endpoints that failed.",
        source: Source::Cluster(|c| &c.connect_failures),
    },
    Family {
        kind: Kind::Counter,
        name: RETRIES,
        help: "Requests retried against a cluster.",
        source: Source::Cluster(|c| &c.retries),
    },
    Family {
        kind: Kind::Counter,
        name: EJECTIONS,
        help: "Endpoints ejected from a cluster by outlier detection.",
        source: Source::Cluster(|c| &c.ejections),
    },
    Family {
        kind: Kind::Gauge,
        name: EJECTED,
        help: "Endpoints of a cluster ejected by outlier detection now.",
        source: Source::Cluster(|c| &c.ejected),
    },
    Family {
        kind: Kind::Counter,
        name: RATE_LIMITED,
        help: "Requests to a cluster refused by its rate limit.",
        source: Source::Cluster(|c| &c.rate_limited),
    },
    Family {
        kind: Kind::Counter,
        name: OVERFLOW,
        help: "Requests or connections refused by a cluster's circuit breaker, by the limit reached.",
        source: Source::ClusterOverflow,
    },
    Family {
        kind: Kind::Counter,
        name: TIMEOUTS,
        help: "Requests to a cluster that timed out.",
        source: Source::Cluster(|c| &c.timeouts),
    },
    Family {
        kind: Kind::Counter,
        name: CONFIG_UPDATES,
        help: "Discovery responses applied, by resource type.",
        source: Source::Config(|s| s.updates as f64),
    },
    Family {
        kind: Kind::Gauge,
        name: CONFIG_VERSION,
        help: "Version of the applied config of each type (a 32-bit hash when not a number).",
        source: Source::Config(|s| s.version),
    },
    Family {
        kind: Kind::Gauge,
        name: CONFIG_TIMESTAMP,
        help: "Unix time the config of each type was last applied.",
        source: Source::Config(|s| s.timestamp),
    },
    Family {
        kind: Kind::Counter,
        name: ACCESS_LOG_DROPPED,
        help: "Access log lines dropped because the writer fell behind or failed.",
        source: Source::AccessLogDropped,
    },
    Family {
        kind: Kind::Counter,
        name: TLS_HANDSHAKES,
        help: "Outbound mesh TLS handshakes, by result (full, resumed, failed).",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: INBOUND_HANDSHAKE_FAILURES,
        help: "Inbound mTLS handshakes that failed.",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: INBOUND_DENIED,
        help: "Inbound tunnels refused by an intention.",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: INBOUND_TUNNELS,
        help: "Inbound tunnels opened to a local workload.",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: OUTBOUND_CONNECTIONS,
        help: "Connections accepted on upstream listeners.",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: OUTBOUND_DENIED,
        help: "Upstream listener connections refused by an intention.",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: OUTBOUND_FAILURES,
        help: "Upstream listener connections that found no reachable healthy instance.",
        source: Source::Stats,
    },
    Family {
        kind: Kind::Counter,
        name: FORWARDED_LEGS,
        help: "L4 legs forwarded, by mode (splice, copy).",
        source: Source::Stats,
    },
];

/// The status classes, indexed by [`class_index`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `1xx` → 0 … `5xx` → 4; codes of 600 and above count as `5xx`.
fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Reads one [`Stats`] counter.
type StatsField = fn(&Stats) -> &AtomicU64;

/// A label: name and value.
type LabelPair = (&'static str, &'static str);

/// The [`Stats`] counters, each with its family and label.
const STATS: &[(StatsField, &str, Option<LabelPair>)] = &[
    (|s| &s.tls_full, TLS_HANDSHAKES, Some(("result", "full"))),
    (
        |s| &s.tls_resumed,
        TLS_HANDSHAKES,
        Some(("result", "resumed")),
    ),
    (
        |s| &s.tls_failed,
        TLS_HANDSHAKES,
        Some(("result", "failed")),
    ),
    (
        |s| &s.inbound_handshake_failed,
        INBOUND_HANDSHAKE_FAILURES,
        None,
    ),
    (|s| &s.inbound_denied, INBOUND_DENIED, None),
    (|s| &s.inbound_tunnels, INBOUND_TUNNELS, None),
    (|s| &s.outbound_connections, OUTBOUND_CONNECTIONS, None),
    (|s| &s.outbound_denied, OUTBOUND_DENIED, None),
    (|s| &s.outbound_failed, OUTBOUND_FAILURES, None),
    (
        |s| &s.forwarded_splice,
        FORWARDED_LEGS,
        Some(("mode", "splice")),
    ),
    (
        |s| &s.forwarded_copy,
        FORWARDED_LEGS,
        Some(("mode", "copy")),
    ),
];

/// A route's series are keyed by (service, route).
type RouteKey = (Box<str>, Box<str>);

/// The series of one config type.
#[derive(Debug, Default, Clone, Copy)]
struct ConfigSeries {
    updates: u64,
    version: f64,
    timestamp: f64,
}

/// The proxy's metrics: plain atomics per cluster and per route, and the proxy-wide series,
/// rendered as Prometheus text on demand. Shared as `Arc<Metrics>`, one per proxy.
///
/// The maps are locked only when a snapshot is built (to hand out handles) and on render; the
/// request path holds its handles and only adds to atomics.
#[derive(Default)]
pub struct Metrics {
    clusters: Mutex<BTreeMap<Box<str>, Arc<ClusterInner>>>,
    /// By (service, route).
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteInner>>>,
    config: Mutex<BTreeMap<&'static str, ConfigSeries>>,
    /// Drop counters of the access logs attached with [`Metrics::watch_access_log`].
    access_logs: Mutex<Vec<Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metrics {
    /// Empty metrics; the proxy-wide series render as 0 from the start.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The handles of cluster `cluster` (label `cluster`). Registers them on first use; later
    /// calls (from later snapshots) return handles to the same series. Not for the request
    /// path: build once per snapshot and keep the result.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let mut clusters = locked(&self.clusters);
        if let Some(inner) = clusters.get(cluster) {
            return ClusterMetrics(inner.clone());
        }
        let inner = Arc::new(ClusterInner::default());
        clusters.insert(cluster.into(), inner.clone());
        ClusterMetrics(inner)
    }

    /// The handles of route `route` of service `service` (labels `service`, `route`). Like
    /// [`Metrics::cluster`], build once per snapshot and keep the result.
    pub fn route(&self, service: &str, route: &str) -> RouteMetrics {
        let mut routes = locked(&self.routes);
        let key: RouteKey = (service.into(), route.into());
        let inner = routes.entry(key).or_default();
        RouteMetrics(inner.clone())
    }

    /// Records that config of `type_name` was applied at `version`: counts the update, sets the
    /// version gauge (the version itself when it is a decimal number, as the server's are, else
    /// a stable 32-bit hash of it) and the time of the update.
    ///
    /// `type_name` is a short name (`clusters`, `routes`, `listeners`, `trust`,
    /// `authorization`) or a discovery type URL; anything else is counted as `other`.
    pub fn config_applied(&self, type_name: &str, version: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut config = locked(&self.config);
        let series = config.entry(config_type(type_name)).or_default();
        series.updates += 1;
        series.version = version_value(version);
        series.timestamp = now;
    }

    /// Counts `log`'s dropped lines in `flotilla_proxy_access_log_dropped_total`.
    pub fn watch_access_log(&self, log: &AccessLog) {
        locked(&self.access_logs).push(log.dropped_counter());
    }

    /// Every metric, with `stats`' counters, in the Prometheus text exposition format
    /// ([`CONTENT_TYPE`]). Families are in a fixed order, series sorted by label values.
    pub fn render(&self, stats: &Stats) -> String {
        let clusters: Vec<(Box<str>, Arc<ClusterInner>)> = locked(&self.clusters)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let routes: Vec<(RouteKey, Arc<RouteInner>)> = locked(&self.routes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let config = locked(&self.config).clone();
        let dropped: u64 = locked(&self.access_logs)
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let les: Vec<String> = LATENCY_BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()])
            .collect();
        let mut out = Text::default();
        for family in FAMILIES {
            let name = family.name;
            out.family(family.kind, name, family.help);
            match family.source {
                Source::RouteRequests => {
                    for ((service, route), r) in &routes {
                        for (class, n) in STATUS_CLASSES.iter().zip(&r.requests) {
                            let labels = [
                                ("service", &**service),
                                ("route", &**route),
                                ("status_class", class),
                            ];
                            out.sample(name, "", &labels, load(n));
                        }
                    }
                }
                Source::RouteDuration => {
                    for ((service, route), r) in &routes {
                        let labels = [("service", &**service), ("route", &**route)];
                        out.histogram(name, &labels, &les, &r.duration);
                    }
                }
                Source::ClusterRequests => {
                    for (cluster, c) in &clusters {
                        for (class, n) in STATUS_CLASSES.iter().zip(&c.requests) {
                            let labels = [("cluster", &**cluster), ("status_class", class)];
                            out.sample(name, "", &labels, load(n));
                        }
                    }
                }
                Source::ClusterDuration => {
                    for (cluster, c) in &clusters {
                        out.histogram(name, &[("cluster", cluster)], &les, &c.duration);
                    }
                }
                Source::ClusterOverflow => {
                    for (cluster, c) in &clusters {
                        for (limit, n) in Limit::ALL.iter().zip(&c.overflow) {
                            let labels = [("cluster", &**cluster), ("limit", limit.as_str())];
                            out.sample(name, "", &labels, load(n));
                        }
                    }
                }
                Source::ClusterActive => {
                    for (cluster, c) in &clusters {
                        let active = c.active.load(Ordering::Relaxed).max(0);
                        out.sample(name, "", &[("cluster", cluster)], active);
                    }
                }
                Source::Cluster(field) => {
                    for (cluster, c) in &clusters {
                        out.sample(name, "", &[("cluster", cluster)], load(field(c)));
                    }
                }
                Source::Config(field) => {
                    for (type_name, series) in &config {
                        out.sample(name, "", &[("type", *type_name)], field(series));
                    }
                }
                Source::AccessLogDropped => out.sample(name, "", &[], dropped),
                Source::Stats => {
                    for &(field, _, label) in STATS.iter().filter(|&&(_, f, _)| f == name) {
                        let labels: &[(&str, &str)] = match &label {
                            Some(l) => std::slice::from_ref(l),
                            None => &[],
                        };
                        out.sample(name, "", labels, load(field(stats)));
                    }
                }
            }
        }
        out.0
    }
}

/// The exposition text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, kind: Kind, name: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {}", kind.as_str());
    }

    /// `name+suffix{labels} value`.
    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.0.push_str(name);
        self.0.push_str(suffix);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_label(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// `_bucket` (cumulative, `le` last; `les` are the bounds as label values, `+Inf` last),
    /// `_sum` and `_count` series of `h`.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        les: &[String],
        h: &LatencyHistogram,
    ) {
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let last = with_le.len() - 1;
        let mut cumulative = 0;
        for (bucket, le) in h.buckets.iter().zip(les) {
            cumulative += bucket.load(Ordering::Relaxed);
            with_le[last].1 = le;
            self.sample(name, "_bucket", &with_le, cumulative);
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(name, "_sum", labels, sum);
        self.sample(name, "_count", labels, cumulative);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A latency histogram with the [`LATENCY_BUCKETS`] bounds: one counter per bucket (the last
/// for samples above every bound) and the sum in nanoseconds. Recording is two relaxed atomic
/// adds; the count is the buckets' total, so `+Inf` and `_count` always agree.
#[derive(Debug, Default)]
struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let index = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The label value for a config type (short name or type URL); a fixed set.
fn config_type(type_name: &str) -> &'static str {
    match type_name {
        "clusters" | CLUSTER_TYPE => "clusters",
        "routes" | ROUTE_TYPE => "routes",
        "listeners" | LISTENER_TYPE => "listeners",
        "trust" | TRUST_BUNDLE_TYPE => "trust",
        "authorization" | AUTHORIZATION_TYPE => "authorization",
        _ => "other",
    }
}

/// A config version as a gauge value: the number for decimal versions, else FNV-1a (32 bits).
fn version_value(version: &str) -> f64 {
    if let Ok(n) = version.parse::<u64>() {
        return n as f64;
    }
    let hash = version.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    f64::from(hash)
}

/// A circuit-breaker limit that refused a request or connection (label `limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections`
    MaxConnections,
    /// `max_pending_requests`
    MaxPendingRequests,
    /// `max_concurrent_requests`
    MaxConcurrentRequests,
    /// `max_retries`
    MaxRetries,
}

impl Limit {
    /// Every limit, in label order.
    pub const ALL: [Limit; 4] = [
        Limit::MaxConnections,
        Limit::MaxPendingRequests,
        Limit::MaxConcurrentRequests,
        Limit::MaxRetries,
    ];

    /// The label value, as the cluster policy names the limit.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxPendingRequests => "max_pending_requests",
            Limit::MaxConcurrentRequests => "max_concurrent_requests",
            Limit::MaxRetries => "max_retries",
        }
    }
}

/// The handles of one route; cloning is one reference count.
#[derive(Debug, Clone)]
pub struct RouteMetrics(Arc<RouteInner>);

#[derive(Debug, Default)]
struct RouteInner {
    requests: [AtomicU64; 5],
    duration: LatencyHistogram,
}

impl RouteMetrics {
    /// One request answered with `status` after `elapsed`.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.0.requests[class_index(status)].fetch_add(1, Ordering::Relaxed);
        self.0.duration.record(elapsed);
    }
}

/// The handles of one cluster; cloning is one reference count.
#[derive(Debug, Clone)]
pub struct ClusterMetrics(Arc<ClusterInner>);

#[derive(Debug, Default)]
struct ClusterInner {
    requests: [AtomicU64; 5],
    duration: LatencyHistogram,
    connections: AtomicU64,
    active: AtomicI64,
    connect_failures: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    ejected: AtomicU64,
    rate_limited: AtomicU64,
    overflow: [AtomicU64; 4],
    timeouts: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ClusterMetrics {
    /// One upstream attempt answered with `status` after `elapsed`.
    pub fn upstream_request(&self, status: StatusCode, elapsed: Duration) {
        inc(&self.0.requests[class_index(status)]);
        self.0.duration.record(elapsed);
    }

    /// A connection to an endpoint opened: counts it, and counts it active until the returned
    /// guard is dropped (keep the guard with the connection).
    pub fn connect(&self) -> ConnectionGauge {
        inc(&self.0.connections);
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ConnectionGauge(self.0.clone())
    }

    /// A connection attempt to an endpoint failed.
    pub fn connect_failure(&self) {
        inc(&self.0.connect_failures);
    }

    /// A request is being retried.
    pub fn retry(&self) {
        inc(&self.0.retries);
    }

    /// Outlier detection ejected an endpoint.
    pub fn ejection(&self) {
        inc(&self.0.ejections);
    }

    /// `n` endpoints are ejected now.
    pub fn set_ejected(&self, n: usize) {
        self.0.ejected.store(n as u64, Ordering::Relaxed);
    }

    /// The rate limit refused a request.
    pub fn rate_limited(&self) {
        inc(&self.0.rate_limited);
    }

    /// The circuit breaker's `limit` refused a request or connection.
    pub fn overflow(&self, limit: Limit) {
        inc(&self.0.overflow[limit as usize]);
    }

    /// A request timed out.
    pub fn timeout(&self) {
        inc(&self.0.timeouts);
    }
}

/// Counts one connection as active until dropped (see [`ClusterMetrics::connect`]).
#[derive(Debug)]
#[must_use = "the connection counts as active only while the guard lives"]
pub struct ConnectionGauge(Arc<ClusterInner>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn every_stats_counter_has_its_family() {
        for &(_, family, _) in STATS {
            assert!(
                FAMILIES
                    .iter()
                    .any(|f| f.name == family && matches!(f.source, Source::Stats)),
                "{family}"
            );
        }
        for f in FAMILIES
            .iter()
            .filter(|f| matches!(f.source, Source::Stats))
        {
            assert!(STATS.iter().any(|s| s.1 == f.name), "{}", f.name);
        }
    }

    #[test]
    fn status_classes() {
        let c = |n| STATUS_CLASSES[class_index(StatusCode::from_u16(n).unwrap())];
        assert_eq!(c(100), "1xx");
        assert_eq!(c(204), "2xx");
        assert_eq!(c(308), "3xx");
        assert_eq!(c(429), "4xx");
        assert_eq!(c(503), "5xx");
        assert_eq!(c(599), "5xx");
        assert_eq!(c(999), "5xx");
    }

    #[test]
    fn versions_are_numbers_or_stable_hashes() {
        assert_eq!(version_value("42"), 42.0);
        assert_eq!(version_value("0"), 0.0);
        // FNV-1a of "a".
        assert_eq!(version_value("a"), f64::from(0xe40c_292c_u32));
        assert_eq!(version_value("v1-abc"), version_value("v1-abc"));
        assert_ne!(version_value("v1-abc"), version_value("v1-abd"));
        assert!(version_value("-1") <= f64::from(u32::MAX));
    }

    #[test]
    fn config_types_are_a_fixed_set() {
        assert_eq!(config_type(CLUSTER_TYPE), "clusters");
        assert_eq!(config_type("trust"), "trust");
        assert_eq!(config_type(TRUST_BUNDLE_TYPE), "trust");
        assert_eq!(config_type("/some/path"), "other");
    }

    #[test]
    fn route_and_cluster_series_render() {
        let m = Metrics::new();
        let route = m.route("hello", "default");
        route.record(StatusCode::OK, Duration::from_millis(3));
        route.record(StatusCode::BAD_GATEWAY, Duration::from_millis(20));
        // A second handle (from a later snapshot) shares the series.
        m.route("hello", "default")
            .record(StatusCode::OK, Duration::from_micros(200));
        let cluster = m.cluster("hello");
        let guard = cluster.connect();
        let _second = cluster.connect();
        drop(guard);
        cluster.overflow(Limit::MaxPendingRequests);
        cluster.set_ejected(2);
        let text = m.render(&Stats::default());
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(
                r#"flotilla_proxy_requests_total{service="hello",route="default",status_class="2xx"} 2"#
            ),
            "{text}"
        );
        assert!(has(
            r#"flotilla_proxy_requests_total{service="hello",route="default",status_class="5xx"} 1"#
        ));
        assert!(has(
            r#"flotilla_proxy_request_duration_seconds_bucket{service="hello",route="default",le="0.0005"} 1"#
        ));
        assert!(has(
            r#"flotilla_proxy_request_duration_seconds_bucket{service="hello",route="default",le="0.005"} 2"#
        ));
        assert!(has(
            r#"flotilla_proxy_request_duration_seconds_bucket{service="hello",route="default",le="+Inf"} 3"#
        ));
        assert!(has(
            r#"flotilla_proxy_request_duration_seconds_count{service="hello",route="default"} 3"#
        ));
        assert!(has(
            r#"flotilla_proxy_upstream_connections_total{cluster="hello"} 2"#
        ));
        assert!(has(
            r#"flotilla_proxy_upstream_connections_active{cluster="hello"} 1"#
        ));
        assert!(has(
            r#"flotilla_proxy_overflow_total{cluster="hello",limit="max_pending_requests"} 1"#
        ));
        assert!(has(
            r#"flotilla_proxy_overflow_total{cluster="hello",limit="max_retries"} 0"#
        ));
        assert!(has(
            r#"flotilla_proxy_ejected_endpoints{cluster="hello"} 2"#
        ));
        assert_eq!(
            lines_of(&text, "# TYPE flotilla_proxy_request_duration_seconds ").len(),
            1
        );
        assert_eq!(
            lines_of(
                &text,
                "# TYPE flotilla_proxy_request_duration_seconds histogram"
            )
            .len(),
            1
        );
    }

    #[test]
    fn stats_config_and_drops_render() {
        let m = Metrics::new();
        let stats = Stats::default();
        crate::stats::inc(&stats.inbound_tunnels);
        crate::stats::inc(&stats.tls_resumed);
        m.config_applied(CLUSTER_TYPE, "7");
        m.config_applied("clusters", "8");
        m.config_applied("routes", "not-a-number");
        let text = m.render(&stats);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("flotilla_proxy_inbound_tunnels_total 1"), "{text}");
        assert!(has(
            r#"flotilla_proxy_mesh_tls_handshakes_total{result="resumed"} 1"#
        ));
        assert!(has(
            r#"flotilla_proxy_mesh_tls_handshakes_total{result="full"} 0"#
        ));
        assert!(has("flotilla_proxy_access_log_dropped_total 0"));
        assert!(has(
            r#"flotilla_proxy_config_updates_total{type="clusters"} 2"#
        ));
        assert!(has(r#"flotilla_proxy_config_version{type="clusters"} 8"#));
        let routes_version = format!(
            r#"flotilla_proxy_config_version{{type="routes"}} {}"#,
            version_value("not-a-number")
        );
        assert!(has(&routes_version), "{text}");
        assert_eq!(
            lines_of(&text, "# HELP flotilla_proxy_config_updates_total ").len(),
            1
        );
    }
}
