//! `/metrics` and `/config_dump` on the admin port, and the access log option, over real
//! sockets: a proxy started on port 0 with a fake control plane, requests through the ingress
//! to an echo backend, and the exposition read back through the admin HTTP endpoint and checked
//! line by line.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_proto::discovery::v1::ALL_TYPES;
use flotilla_proxy::access_log::{AccessEntry, AccessLog, AccessLogTarget, ResponseFlags};
use flotilla_proxy::metrics::{LATENCY_BUCKETS, Limit, Metrics};
use flotilla_proxy::upstream::UpstreamConfig;
use flotilla_proxy::{BoundProxy, NodeIdentity, ProxyConfig, ProxyError};
use http::StatusCode;
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A proxy started like [`TestProxy`], keeping its metrics and access log handles.
struct Proxy {
    ingress: SocketAddr,
    admin: SocketAddr,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    _shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ProxyError>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a proxy against `fake` and consumes its initial discovery requests.
async fn start(fake: &FakeDiscovery, access_log: Option<AccessLog>) -> Proxy {
    start_with(fake, access_log, UpstreamConfig::default()).await
}

/// [`start`] with the upstream pool's timeouts and limits.
async fn start_with(
    fake: &FakeDiscovery,
    access_log: Option<AccessLog>,
    upstream: UpstreamConfig,
) -> Proxy {
    let lo = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut bound = BoundProxy::bind(ProxyConfig {
        ingress_addr: lo(0),
        inbound_addr: lo(0),
        admin_addr: Some(lo(0)),
    })
    .await
    .unwrap()
    .with_upstream_config(upstream);
    if let Some(log) = access_log {
        bound = bound.with_access_log(log);
    }
    let (ingress, admin) = (bound.ingress_addr(), bound.admin_addr().unwrap());
    let (metrics, access_log) = (bound.metrics(), bound.access_log());
    let (tx, rx) = oneshot::channel::<()>();
    let node = NodeIdentity {
        node_id: "n1".into(),
        node_secret: node_secret("n1"),
        datacenter: DC.into(),
    };
    let task = tokio::spawn(bound.run(node, Some(fake.url()), async {
        let _ = rx.await;
    }));
    for _ in ALL_TYPES {
        fake.next_request().await;
    }
    Proxy {
        ingress,
        admin,
        metrics,
        access_log,
        _shutdown: tx,
        task,
    }
}

// ---------------------------------------------------------------- exposition checker

/// A parsed, checked text exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type.
    types: BTreeMap<String, String>,
    /// Family name → HELP text.
    help: BTreeMap<String, String>,
    /// `name{k="v",…}` (labels sorted) → value.
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}; have {:#?}", self.samples.keys()))
    }

    /// `get`, or 0 when the series does not exist yet.
    fn get_or_zero(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// Every series of family `name` (including `_bucket`/`_sum`/`_count` of a histogram)
    /// whose labels include all of `labels`.
    fn series_of(&self, name: &str, labels: &[(&str, &str)]) -> BTreeSet<String> {
        self.samples
            .keys()
            .filter(|s| {
                let metric = s.split('{').next().unwrap_or_default();
                family_of(metric, &self.types) == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.contains(&format!("{k}=\"{v}\"")))
            })
            .cloned()
            .collect()
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// The family a sample belongs to: histogram samples drop their suffix.
fn family_of<'a>(metric: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = metric.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    metric
}

/// Label names and (unescaped) values, in the order given.
type Labels = Vec<(String, String)>;

/// Parses `{k="v",…}`; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = &rest[..eq];
        if !is_name(key) || key.starts_with("__") {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key} value not quoted"));
        }
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break eq + 1 + i + 1,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("duplicate label {key}"));
        }
        labels.push((key.to_string(), value));
        rest = &rest[end..];
        if !rest.starts_with(',') && !rest.starts_with('}') {
            return Err(format!("expected , or }} after label {key}"));
        }
    }
}

/// Checks `text` against the text exposition format (0.0.4): HELP and TYPE at most once per
/// family and TYPE before its samples, each family's samples together, no duplicate series,
/// histograms with cumulative buckets ending in `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut switch_to = |family: &str, current: &mut Option<String>| -> Result<(), String> {
        if current.as_deref() == Some(family) {
            return Ok(());
        }
        if finished.contains(family) {
            return Err(format!("family {family} is not contiguous"));
        }
        if let Some(prev) = current.take() {
            finished.insert(prev);
        }
        *current = Some(family.to_string());
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), help) => {
                    switch_to(name, &mut current).map_err(at)?;
                    if exp
                        .help
                        .insert(name.into(), help.unwrap_or_default().into())
                        .is_some()
                    {
                        return Err(at("second HELP".into()));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    switch_to(name, &mut current).map_err(at)?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if exp.samples.keys().any(|s| {
                        let m = s.split('{').next().unwrap_or_default();
                        m == name || m.strip_prefix(name).is_some_and(|r| r.starts_with('_'))
                    }) {
                        return Err(at("TYPE after samples".into()));
                    }
                    if exp.types.insert(name.into(), kind.into()).is_some() {
                        return Err(at("second TYPE".into()));
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (mut labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &exp.types).to_string();
        switch_to(&family, &mut current).map_err(at)?;
        if !exp.types.contains_key(&family) {
            return Err(at(format!("sample of {family} without a TYPE line")));
        }
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let series = format!("{name}{{{}}}", labels.join(","));
        if exp.samples.insert(series, value).is_some() {
            return Err(at("duplicate series".into()));
        }
    }
    check_histograms(&exp)?;
    Ok(exp)
}

fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        // Label set without `le` → (le, count) in order of le.
        let mut by_labels: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let prefix = format!("{family}_bucket{{");
        for (series, value) in &exp.samples {
            let Some(labels) = series.strip_prefix(&prefix) else {
                continue;
            };
            let labels = labels.trim_end_matches('}');
            let mut le = None;
            let rest: Vec<&str> = labels
                .split(',')
                .filter(|l| match l.strip_prefix("le=") {
                    Some(v) => {
                        le = Some(v.trim_matches('"').to_string());
                        false
                    }
                    None => true,
                })
                .collect();
            let le = le.ok_or_else(|| format!("{series}: bucket without le"))?;
            by_labels
                .entry(rest.join(","))
                .or_default()
                .push((parse_value(&le)?, *value));
        }
        for (labels, mut buckets) in by_labels {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{{{labels}}}: buckets not cumulative"));
            }
            let inf = buckets.last().filter(|b| b.0 == f64::INFINITY);
            let count = exp.samples.get(&format!("{family}_count{{{labels}}}"));
            let sum = exp.samples.get(&format!("{family}_sum{{{labels}}}"));
            match (inf, count, sum) {
                (Some(inf), Some(count), Some(_)) if inf.1 == *count => {}
                _ => {
                    return Err(format!(
                        "{family}{{{labels}}}: no +Inf = _count, or no _sum"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_checker_refuses_invalid_expositions() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\n";
    assert!(parse_exposition(ok).is_ok());
    for bad in [
        "a_total 1\n",                                                // no TYPE
        "# TYPE a counter\n# TYPE a counter\na 1\n",                  // second TYPE
        "# HELP a x\n# HELP a y\n# TYPE a counter\na 1\n",            // second HELP
        "# TYPE a counter\na 1\na 2\n",                               // duplicate series
        "# TYPE a counter\n# TYPE b counter\na 1\n",                  // a interrupted by b
        "# TYPE a counter\na{x=\"1} 1\n",                             // unterminated
        "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n", // not contiguous
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------- tests

async fn scrape(admin: SocketAddr) -> Exposition {
    let r = get(admin, "localhost", "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "content-type {:?}",
        r.header("content-type")
    );
    parse_exposition(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
}

#[tokio::test]
async fn metrics_endpoint_serves_one_valid_exposition() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let proxy = start(&fake, None).await;
    let hello = echo_backend("hello").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(hello.addr, true)])],
        vec![],
    )
    .await;
    for _ in 0..3 {
        let r = get(proxy.ingress, "hello.service.flotilla", "/x?q=1").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    // The proxy-wide series exist from the start.
    let before = scrape(proxy.admin).await;
    assert_eq!(before.get("flotilla_proxy_access_log_dropped_total{}"), 0.0);
    assert_eq!(
        before.get(r#"flotilla_proxy_mesh_tls_handshakes_total{result="failed"}"#),
        0.0
    );
    assert_eq!(
        before.types["flotilla_proxy_inbound_tunnels_total"],
        "counter"
    );

    // Handles as the request path will hold them (it may already have recorded some: compare
    // against the scrape above).
    let m = &proxy.metrics;
    let route = m.route("hello", "default");
    route.record(StatusCode::OK, Duration::from_millis(2));
    route.record(StatusCode::OK, Duration::from_millis(40));
    route.record(StatusCode::NOT_FOUND, Duration::from_micros(300));
    let cluster = m.cluster("hello");
    cluster.upstream_request(StatusCode::OK, Duration::from_millis(2));
    cluster.upstream_request(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(20));
    let conn = cluster.connect();
    let _held = cluster.connect();
    drop(conn);
    cluster.connect_failure();
    cluster.retry();
    cluster.ejection();
    cluster.set_ejected(1);
    cluster.rate_limited();
    cluster.overflow(Limit::MaxConcurrentRequests);
    cluster.timeout();
    m.config_applied("clusters", "41");
    m.config_applied("routes", "v7-abc");

    let after = scrape(proxy.admin).await;
    let delta = |s: &str| after.get(s) - before.get_or_zero(s);

    // Route series: exactly five status classes and one histogram.
    let rl = r#"route="default",service="hello""#;
    let want: BTreeSet<String> = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| format!(r#"flotilla_proxy_requests_total{{{rl},status_class="{c}"}}"#))
        .collect();
    assert_eq!(
        after.series_of(
            "flotilla_proxy_requests_total",
            &[("service", "hello"), ("route", "default")]
        ),
        want
    );
    assert_eq!(
        delta(&format!(
            r#"flotilla_proxy_requests_total{{{rl},status_class="2xx"}}"#
        )),
        2.0
    );
    assert_eq!(
        delta(&format!(
            r#"flotilla_proxy_requests_total{{{rl},status_class="4xx"}}"#
        )),
        1.0
    );
    assert_eq!(
        delta(&format!(
            r#"flotilla_proxy_requests_total{{{rl},status_class="5xx"}}"#
        )),
        0.0
    );
    let hist = after.series_of(
        "flotilla_proxy_request_duration_seconds",
        &[("service", "hello"), ("route", "default")],
    );
    // One bucket per bound, +Inf, _sum and _count.
    assert_eq!(hist.len(), LATENCY_BUCKETS.len() + 3, "{hist:#?}");
    let bucket =
        |le: &str| format!(r#"flotilla_proxy_request_duration_seconds_bucket{{le="{le}",{rl}}}"#);
    assert_eq!(delta(&bucket("0.0005")), 1.0);
    assert_eq!(delta(&bucket("0.0025")), 2.0);
    assert_eq!(delta(&bucket("0.05")), 3.0);
    assert_eq!(delta(&bucket("+Inf")), 3.0);
    assert_eq!(
        delta(&format!(
            r#"flotilla_proxy_request_duration_seconds_count{{{rl}}}"#
        )),
        3.0
    );
    assert_eq!(
        after.types["flotilla_proxy_request_duration_seconds"],
        "histogram"
    );

    // Cluster series.
    let c = r#"cluster="hello""#;
    assert_eq!(
        delta(&format!(
            r#"flotilla_proxy_upstream_requests_total{{{c},status_class="5xx"}}"#
        )),
        1.0
    );
    let slow = format!(r#"flotilla_proxy_upstream_request_duration_seconds_bucket{{{c},le="10"}}"#);
    let inf =
        format!(r#"flotilla_proxy_upstream_request_duration_seconds_bucket{{{c},le="+Inf"}}"#);
    assert_eq!(
        delta(&inf) - delta(&slow),
        1.0,
        "the 20 s attempt is above 10 s"
    );
    for (name, want) in [
        ("flotilla_proxy_upstream_connections_total", 2.0),
        ("flotilla_proxy_upstream_connect_failures_total", 1.0),
        ("flotilla_proxy_retries_total", 1.0),
        ("flotilla_proxy_ejections_total", 1.0),
        ("flotilla_proxy_rate_limited_total", 1.0),
        ("flotilla_proxy_timeouts_total", 1.0),
    ] {
        assert_eq!(delta(&format!("{name}{{{c}}}")), want, "{name}");
        assert_eq!(after.types[name], "counter", "{name}");
    }
    assert_eq!(
        after.get(&format!(
            "flotilla_proxy_upstream_connections_active{{{c}}}"
        )) - before.get_or_zero(&format!(
            "flotilla_proxy_upstream_connections_active{{{c}}}"
        )),
        1.0
    );
    assert_eq!(
        after.get(&format!("flotilla_proxy_ejected_endpoints{{{c}}}")),
        1.0
    );
    assert_eq!(after.types["flotilla_proxy_ejected_endpoints"], "gauge");
    let overflow = after.series_of("flotilla_proxy_overflow_total", &[("cluster", "hello")]);
    assert_eq!(overflow.len(), 4, "{overflow:#?}");
    assert_eq!(
        delta(&format!(
            r#"flotilla_proxy_overflow_total{{{c},limit="max_concurrent_requests"}}"#
        )),
        1.0
    );

    // Config updates.
    assert_eq!(
        delta(r#"flotilla_proxy_config_updates_total{type="clusters"}"#),
        1.0
    );
    assert_eq!(
        after.get(r#"flotilla_proxy_config_version{type="clusters"}"#),
        41.0
    );
    let hashed = after.get(r#"flotilla_proxy_config_version{type="routes"}"#);
    assert!(
        hashed.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&hashed),
        "{hashed}"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = after.get(r#"flotilla_proxy_config_last_update_timestamp_seconds{type="routes"}"#);
    assert!((now - 60.0..=now + 1.0).contains(&at), "{at} vs {now}");

    // Every family is described, and no label carries a path, an address or a version.
    for family in after.types.keys() {
        assert!(after.help.contains_key(family), "no HELP for {family}");
        assert!(family.starts_with("flotilla_proxy_"), "{family}");
    }
    for series in after.samples.keys() {
        assert!(
            !series.contains("/x") && !series.contains("127.0.0.1") && !series.contains("v7-abc"),
            "unbounded label value in {series}"
        );
    }
}

/// A burst opens one upstream connection per concurrent request; once the burst is over, the
/// idle surplus is closed period by period (long before the idle timeout), and the next
/// request connects again.
#[tokio::test]
async fn idle_upstream_connections_left_by_a_burst_are_purged() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let upstream = UpstreamConfig {
        idle_purge_period: Duration::from_millis(500),
        ..UpstreamConfig::default()
    };
    assert!(upstream.idle_timeout >= Duration::from_secs(60));
    let proxy = start_with(&fake, None, upstream).await;
    let mut slow = slow_cluster(&fake).await;
    let active = r#"flotilla_proxy_upstream_connections_active{cluster="slow"}"#;
    let total = r#"flotilla_proxy_upstream_connections_total{cluster="slow"}"#;

    // Eight requests held at the backend at once: eight upstream connections.
    const BURST: usize = 8;
    let ingress = proxy.ingress;
    let burst: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(async move { get(ingress, "slow.service.flotilla", "/").await }))
        .collect();
    within("the burst to reach the backend", async {
        for _ in 0..BURST {
            slow.started.recv().await.unwrap();
        }
    })
    .await;
    slow.release.send(true).unwrap();
    for r in burst {
        let r = r.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow-done"));
    }
    let after_burst = scrape(proxy.admin).await;
    assert_eq!(after_burst.get(total), BURST as f64);
    assert_eq!(
        after_burst.get(active),
        BURST as f64,
        "all pooled, none closed yet"
    );

    // Idle since, they go within a few purge periods; the idle timeout is 90 s away.
    eventually("the idle surplus to be closed", || async {
        let now = scrape(proxy.admin).await;
        (now.get(active) == 0.0).then_some(())
    })
    .await;

    // The pool is empty, not broken: the next request connects anew.
    let r = get(proxy.ingress, "slow.service.flotilla", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow-done"));
    assert_eq!(scrape(proxy.admin).await.get(total), BURST as f64 + 1.0);
}

#[tokio::test]
async fn each_proxy_has_its_own_metrics() {
    init_tracing();
    let (fake_a, fake_b) = (FakeDiscovery::start().await, FakeDiscovery::start().await);
    let a = start(&fake_a, None).await;
    let b = start(&fake_b, None).await;
    a.metrics.cluster("only-a").retry();
    let series = r#"flotilla_proxy_retries_total{cluster="only-a"}"#;
    assert_eq!(scrape(a.admin).await.get(series), 1.0);
    assert!(!scrape(b.admin).await.samples.contains_key(series));
}

#[tokio::test]
async fn config_dump_never_contains_private_keys() {
    init_tracing();
    let fake = FakeDiscovery::start().await;
    let proxy = start(&fake, None).await;
    let hello = echo_backend("hello").await;
    fake.configure(
        "1",
        vec![cluster("hello", vec![local(hello.addr, true)])],
        vec![route("", "/", "hello")],
    )
    .await;
    // Wait for the issued certificates (for `hello` and the ingress identity): their keys are
    // in memory now.
    let body = eventually("certificates in /config_dump", || async {
        let r = get(proxy.admin, "localhost", "/config_dump").await;
        assert_eq!(r.status, StatusCode::OK);
        let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        (dump["certificates"].as_array().map_or(0, Vec::len) >= 2).then_some(r.body)
    })
    .await;
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    assert!(body.contains("[redacted]"), "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["trust"]["trust_domain"], TRUST_DOMAIN);
}

#[tokio::test]
async fn access_log_option_writes_json_lines() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log = AccessLog::open(AccessLogTarget::File(path.clone())).unwrap();
    let fake = FakeDiscovery::start().await;
    let proxy = start(&fake, Some(log)).await;
    let log = proxy.access_log.clone().expect("the access log is set");
    let get_method = http::Method::GET;
    for status in [StatusCode::OK, StatusCode::NOT_FOUND] {
        log.log(AccessEntry {
            start_time: SystemTime::now(),
            method: &get_method,
            path: "/a?b=c",
            protocol: http::Version::HTTP_11,
            status,
            response_flags: if status == StatusCode::NOT_FOUND {
                ResponseFlags::NO_ROUTE_FOUND
            } else {
                ResponseFlags::NONE
            },
            bytes_received: 0,
            bytes_sent: 2,
            duration: Duration::from_millis(1),
            upstream_cluster: None,
            upstream_host: None,
            route: None,
            attempts: 0,
            downstream_remote_address: Some(proxy.ingress),
            user_agent: None,
            request_id: Some("r1"),
        });
    }
    tokio::task::spawn_blocking(move || log.flush())
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["path"], "/a");
    assert_eq!(lines[0]["response_flags"], "");
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["response_flags"], "NR");
    assert_eq!(lines[1]["request_id"], "r1");
    let exp = scrape(proxy.admin).await;
    assert_eq!(exp.get("flotilla_proxy_access_log_dropped_total{}"), 0.0);
}
