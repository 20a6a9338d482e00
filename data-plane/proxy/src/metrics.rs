//! Prometheus metrics of the node proxy, served on the admin port's `/metrics`.
//!
//! One [`Metrics`] per proxy owns a Prometheus recorder that is never installed as the global
//! `metrics` recorder (several proxies can share a process, as in the tests). Handles are
//! registered through the [`Recorder`] trait when config snapshots are built — one
//! [`ClusterMetrics`] per cluster, one [`RouteMetrics`] per route — and cached by their owner, so
//! the request path only increments atomics and pushes histogram samples; it never looks a
//! metric up by name.
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
//! plus the [`Stats`] counters (TLS handshakes, tunnels, L4 connections, forwarded legs), copied
//! into the recorder when `/metrics` is rendered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use flotilla_proto::discovery::v1::{
    AUTHORIZATION_TYPE, CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, TRUST_BUNDLE_TYPE,
};
use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::access_log::AccessLog;
use crate::stats::Stats;

/// Upper bounds (seconds) of the latency histograms' buckets: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its HELP text, described once when the recorder is built.
const DESCRIPTIONS: &[(Kind, &str, Option<Unit>, &str)] = &[
    (
        Kind::Counter,
        REQUESTS,
        None,
        "Requests answered on the ingress, by service, route and status class.",
    ),
    (
        Kind::Histogram,
        REQUEST_DURATION,
        Some(Unit::Seconds),
        "Time from receiving a request on the ingress to its response head, by service and route.",
    ),
    (
        Kind::Counter,
        UPSTREAM_REQUESTS,
        None,
        "Requests sent to a cluster's endpoints (each attempt), by status class.",
    ),
    (
        Kind::Histogram,
        UPSTREAM_DURATION,
        Some(Unit::Seconds),
        "Time an upstream attempt took until its response head, by cluster.",
    ),
    (
        Kind::Counter,
        CONNECTIONS,
        None,
        "Connections opened to a cluster's endpoints.",
    ),
    (
        Kind::Gauge,
        CONNECTIONS_ACTIVE,
        None,
        "Connections to a cluster's endpoints open now.",
    ),
    (
        Kind::Counter,
        CONNECT_FAILURES,
        None,
        "Connection attempts to a cluster's endpoints that failed.",
    ),
    (
        Kind::Counter,
        RETRIES,
        None,
        "Requests retried against a cluster.",
    ),
    (
        Kind::Counter,
        EJECTIONS,
        None,
        "Endpoints ejected from a cluster by outlier detection.",
    ),
    (
        Kind::Gauge,
        EJECTED,
        None,
        "Endpoints of a cluster ejected by outlier detection now.",
    ),
    (
        Kind::Counter,
        RATE_LIMITED,
        None,
        "Requests to a cluster refused by its rate limit.",
    ),
    (
        Kind::Counter,
        OVERFLOW,
        None,
        "Requests or connections refused by a cluster's circuit breaker, by the limit reached.",
    ),
    (
        Kind::Counter,
        TIMEOUTS,
        None,
        "Requests to a cluster that timed out.",
    ),
    (
        Kind::Counter,
        CONFIG_UPDATES,
        None,
        "Discovery responses applied, by resource type.",
    ),
    (
        Kind::Gauge,
        CONFIG_VERSION,
        None,
        "Version of the applied config of each type (a 32-bit hash when not a number).",
    ),
    (
        Kind::Gauge,
        CONFIG_TIMESTAMP,
        Some(Unit::Seconds),
        "Unix time the config of each type was last applied.",
    ),
    (
        Kind::Counter,
        ACCESS_LOG_DROPPED,
        None,
        "Access log lines dropped because the writer fell behind or failed.",
    ),
    (
        Kind::Counter,
        TLS_HANDSHAKES,
        None,
        "Outbound mesh TLS handshakes, by result (full, resumed, failed).",
    ),
    (
        Kind::Counter,
        INBOUND_HANDSHAKE_FAILURES,
        None,
        "Inbound mTLS handshakes that failed.",
    ),
    (
        Kind::Counter,
        INBOUND_DENIED,
        None,
        "Inbound tunnels refused by an intention.",
    ),
    (
        Kind::Counter,
        INBOUND_TUNNELS,
        None,
        "Inbound tunnels opened to a local workload.",
    ),
    (
        Kind::Counter,
        OUTBOUND_CONNECTIONS,
        None,
        "Connections accepted on upstream listeners.",
    ),
    (
        Kind::Counter,
        OUTBOUND_DENIED,
        None,
        "Upstream listener connections refused by an intention.",
    ),
    (
        Kind::Counter,
        OUTBOUND_FAILURES,
        None,
        "Upstream listener connections that found no reachable healthy instance.",
    ),
    (
        Kind::Counter,
        FORWARDED_LEGS,
        None,
        "L4 legs forwarded, by mode (splice, copy).",
    ),
];

/// Metadata passed to the recorder; the Prometheus recorder ignores it.
const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The status classes, indexed by [`class_index`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `1xx` → 0 … `5xx` → 4; codes of 600 and above count as `5xx`.
fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Reads one [`Stats`] counter.
type StatsField = fn(&Stats) -> &AtomicU64;

/// The proxy's metrics: a Prometheus recorder of its own, and the handles that are not per
/// cluster or route. Shared as `Arc<Metrics>`, one per proxy.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// [`Stats`] counters and their mirrors in the recorder, copied on render.
    stats: Vec<(StatsField, Counter)>,
    access_log_dropped: Counter,
    /// Drop counters of the access logs attached with [`Metrics::watch_access_log`].
    access_logs: Mutex<Vec<Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A recorder with latency histograms bucketed by [`LATENCY_BUCKETS`], every metric
    /// described, and the proxy-wide series registered (so they render as 0 from the start).
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            // Only fails for an empty list.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        for &(kind, name, unit, help) in DESCRIPTIONS {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, unit, help),
                Kind::Gauge => recorder.describe_gauge(name, unit, help),
                Kind::Histogram => recorder.describe_histogram(name, unit, help),
            }
        }
        let handle = recorder.handle();
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            let labels: Vec<Label> = labels
                .iter()
                .map(|&(k, v)| Label::from_static_parts(k, v))
                .collect();
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let stats: Vec<(StatsField, Counter)> = vec![
            (
                |s| &s.tls_full,
                counter(TLS_HANDSHAKES, &[("result", "full")]),
            ),
            (
                |s| &s.tls_resumed,
                counter(TLS_HANDSHAKES, &[("result", "resumed")]),
            ),
            (
                |s| &s.tls_failed,
                counter(TLS_HANDSHAKES, &[("result", "failed")]),
            ),
            (
                |s| &s.inbound_handshake_failed,
                counter(INBOUND_HANDSHAKE_FAILURES, &[]),
            ),
            (|s| &s.inbound_denied, counter(INBOUND_DENIED, &[])),
            (|s| &s.inbound_tunnels, counter(INBOUND_TUNNELS, &[])),
            (
                |s| &s.outbound_connections,
                counter(OUTBOUND_CONNECTIONS, &[]),
            ),
            (|s| &s.outbound_denied, counter(OUTBOUND_DENIED, &[])),
            (|s| &s.outbound_failed, counter(OUTBOUND_FAILURES, &[])),
            (
                |s| &s.forwarded_splice,
                counter(FORWARDED_LEGS, &[("mode", "splice")]),
            ),
            (
                |s| &s.forwarded_copy,
                counter(FORWARDED_LEGS, &[("mode", "copy")]),
            ),
        ];
        let access_log_dropped = counter(ACCESS_LOG_DROPPED, &[]);
        Arc::new(Metrics {
            recorder,
            handle,
            stats,
            access_log_dropped,
            access_logs: Mutex::new(Vec::new()),
        })
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// The handles of cluster `cluster` (label `cluster`). Registers them on first use; later
    /// calls (from later snapshots) return handles to the same series. Not for the request
    /// path: build once per snapshot and keep the result.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let label = || vec![Label::new("cluster", cluster.to_owned())];
        let with = |k: &'static str, v: &'static str| {
            vec![
                Label::new("cluster", cluster.to_owned()),
                Label::from_static_parts(k, v),
            ]
        };
        ClusterMetrics(Arc::new(ClusterInner {
            requests: STATUS_CLASSES
                .map(|class| self.counter(UPSTREAM_REQUESTS, with("status_class", class))),
            duration: self.histogram(UPSTREAM_DURATION, label()),
            connections: self.counter(CONNECTIONS, label()),
            active: self.gauge(CONNECTIONS_ACTIVE, label()),
            connect_failures: self.counter(CONNECT_FAILURES, label()),
            retries: self.counter(RETRIES, label()),
            ejections: self.counter(EJECTIONS, label()),
            ejected: self.gauge(EJECTED, label()),
            rate_limited: self.counter(RATE_LIMITED, label()),
            overflow: Limit::ALL.map(|limit| self.counter(OVERFLOW, with("limit", limit.as_str()))),
            timeouts: self.counter(TIMEOUTS, label()),
        }))
    }

    /// The handles of route `route` of service `service` (labels `service`, `route`). Like
    /// [`Metrics::cluster`], build once per snapshot and keep the result.
    pub fn route(&self, service: &str, route: &str) -> RouteMetrics {
        let labels = || {
            vec![
                Label::new("service", service.to_owned()),
                Label::new("route", route.to_owned()),
            ]
        };
        RouteMetrics(Arc::new(RouteInner {
            requests: STATUS_CLASSES.map(|class| {
                let mut l = labels();
                l.push(Label::from_static_parts("status_class", class));
                self.counter(REQUESTS, l)
            }),
            duration: self.histogram(REQUEST_DURATION, labels()),
        }))
    }

    /// Records that config of `type_name` was applied at `version`: counts the update, sets the
    /// version gauge (the version itself when it is a decimal number, as the server's are, else
    /// a stable 32-bit hash of it) and the time of the update.
    ///
    /// `type_name` is a short name (`clusters`, `routes`, `listeners`, `trust`,
    /// `authorization`) or a discovery type URL; anything else is counted as `other`.
    pub fn config_applied(&self, type_name: &str, version: &str) {
        let labels = || vec![Label::from_static_parts("type", config_type(type_name))];
        self.counter(CONFIG_UPDATES, labels()).increment(1);
        self.gauge(CONFIG_VERSION, labels())
            .set(version_value(version));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.gauge(CONFIG_TIMESTAMP, labels()).set(now);
    }

    /// Counts `log`'s dropped lines in `flotilla_proxy_access_log_dropped_total`.
    pub fn watch_access_log(&self, log: &AccessLog) {
        self.access_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(log.dropped_counter());
    }

    /// Moves histogram samples recorded since the last call into their buckets. Call it every
    /// few seconds (the admin thread does) so unscraped samples do not pile up in memory;
    /// [`Metrics::render`] does it too.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Every metric, with `stats`' counters, in the Prometheus text exposition format
    /// ([`CONTENT_TYPE`]).
    pub fn render(&self, stats: &Stats) -> String {
        for (field, counter) in &self.stats {
            counter.absolute(field(stats).load(Ordering::Relaxed));
        }
        let dropped: u64 = self
            .access_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum();
        self.access_log_dropped.absolute(dropped);
        self.handle.render()
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

#[derive(Debug)]
struct RouteInner {
    requests: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// One request answered with `status` after `elapsed`.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.0.requests[class_index(status)].increment(1);
        self.0.duration.record(elapsed.as_secs_f64());
    }
}

/// The handles of one cluster; cloning is one reference count.
#[derive(Debug, Clone)]
pub struct ClusterMetrics(Arc<ClusterInner>);

#[derive(Debug)]
struct ClusterInner {
    requests: [Counter; 5],
    duration: Histogram,
    connections: Counter,
    active: Gauge,
    connect_failures: Counter,
    retries: Counter,
    ejections: Counter,
    ejected: Gauge,
    rate_limited: Counter,
    overflow: [Counter; 4],
    timeouts: Counter,
}

impl ClusterMetrics {
    /// One upstream attempt answered with `status` after `elapsed`.
    pub fn upstream_request(&self, status: StatusCode, elapsed: Duration) {
        self.0.requests[class_index(status)].increment(1);
        self.0.duration.record(elapsed.as_secs_f64());
    }

    /// A connection to an endpoint opened: counts it, and counts it active until the returned
    /// guard is dropped (keep the guard with the connection).
    pub fn connect(&self) -> ConnectionGauge {
        self.0.connections.increment(1);
        self.0.active.increment(1.0);
        ConnectionGauge(self.0.clone())
    }

    /// A connection attempt to an endpoint failed.
    pub fn connect_failure(&self) {
        self.0.connect_failures.increment(1);
    }

    /// A request is being retried.
    pub fn retry(&self) {
        self.0.retries.increment(1);
    }

    /// Outlier detection ejected an endpoint.
    pub fn ejection(&self) {
        self.0.ejections.increment(1);
    }

    /// `n` endpoints are ejected now.
    pub fn set_ejected(&self, n: usize) {
        self.0.ejected.set(n as f64);
    }

    /// The rate limit refused a request.
    pub fn rate_limited(&self) {
        self.0.rate_limited.increment(1);
    }

    /// The circuit breaker's `limit` refused a request or connection.
    pub fn overflow(&self, limit: Limit) {
        self.0.overflow[limit as usize].increment(1);
    }

    /// A request timed out.
    pub fn timeout(&self) {
        self.0.timeouts.increment(1);
    }
}

/// Counts one connection as active until dropped (see [`ClusterMetrics::connect`]).
#[derive(Debug)]
#[must_use = "the connection counts as active only while the guard lives"]
pub struct ConnectionGauge(Arc<ClusterInner>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.active.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
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
