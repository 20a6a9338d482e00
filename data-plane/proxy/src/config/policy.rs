//! Cluster policy: how a cluster's endpoints are picked and protected (from the service's
//! service-defaults and service-resolver), parsed once from the `Cluster` resource.

use std::time::Duration;

use flotilla_proto::discovery::v1 as pb;
use http::HeaderName;

/// How one endpoint is picked among a cluster's usable endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LbPolicy {
    /// Each endpoint in turn (weighted by endpoint weight).
    #[default]
    RoundRobin,
    /// The less loaded of `choice_count` random endpoints (power of two choices).
    LeastRequest { choice_count: u32 },
    /// A uniformly random endpoint (weighted).
    Random,
    /// Consistent hashing on a ring (ketama) keyed by the request hash.
    RingHash {
        minimum_ring_size: u64,
        maximum_ring_size: u64,
    },
    /// Consistent hashing with a Maglev lookup table keyed by the request hash.
    Maglev,
}

impl LbPolicy {
    /// The policy's config name (`"round_robin"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::LeastRequest { .. } => "least_request",
            LbPolicy::Random => "random",
            LbPolicy::RingHash { .. } => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }

    /// Whether the policy uses the request hash.
    pub fn is_hashing(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev)
    }
}

/// What part of a request feeds the hash of ring hash and Maglev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// The value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The value of a query parameter.
    QueryParameter(String),
    /// The client's IP address.
    SourceIp,
}

/// One hash policy; policies are evaluated in order and their values combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub source: HashSource,
    /// Stop after this policy if it produced a value.
    pub terminal: bool,
}

/// Per-cluster limits on this proxy (Envoy's circuit breakers). A request over a limit fails
/// fast with 503 instead of queueing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Upstream connections open at once.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_concurrent_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    /// Envoy's defaults: 1024 connections, pending and concurrent requests; 3 retries.
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_concurrent_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Passive health checking: endpoints that fail repeatedly are ejected for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or gateway failures (connect failure, reset, timeout) that
    /// eject an endpoint.
    pub consecutive_5xx: u32,
    /// How often ejected endpoints are reviewed for return.
    pub interval: Duration,
    /// Ejection time; the n-th ejection of an endpoint lasts n times this.
    pub base_ejection_time: Duration,
    /// At most this percentage of a cluster's endpoints is ejected at once (at least one
    /// endpoint may always be ejected).
    pub max_ejection_percent: u32,
    /// Percentage of detections that really eject (100: all).
    pub enforcing_consecutive_5xx: u32,
}

impl Default for OutlierDetection {
    /// Envoy's defaults: 5 consecutive failures, 10 s interval, 30 s base ejection, 10 %.
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
        }
    }
}

/// A local token-bucket rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// The application protocol a cluster speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }

    /// Whether upstream connections speak HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// Everything about reaching a cluster's endpoints besides the endpoints themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterPolicy {
    pub protocol: Protocol,
    pub lb_policy: LbPolicy,
    /// Empty: requests to hashing policies get a random pick.
    pub hash_policies: Vec<HashPolicy>,
    /// `None`: the proxy's default connect timeout.
    pub connect_timeout: Option<Duration>,
    /// `None`: no timeout for the whole request unless its route sets one.
    pub request_timeout: Option<Duration>,
    pub circuit_breakers: CircuitBreakers,
    /// `None`: no passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// `None`: no local rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Clusters tried in order when this one has no usable endpoint.
    pub failover: Vec<String>,
}

/// A millisecond field where 0 means unset.
pub(super) fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

/// Parses the policy fields of a `Cluster` resource. `Err((field, problem))`.
pub(super) fn parse_policy(c: &pb::Cluster) -> Result<ClusterPolicy, (String, String)> {
    let protocol = match c.protocol.as_str() {
        "" | "tcp" => Protocol::Tcp,
        "http" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        other => {
            return Err((
                "protocol".into(),
                format!("{other:?} is not one of \"tcp\", \"http\", \"http2\", \"grpc\""),
            ));
        }
    };
    let lb = c.load_balancer.clone().unwrap_or_default();
    let lb_policy = match lb.policy.as_str() {
        "" | "round_robin" => LbPolicy::RoundRobin,
        "least_request" => LbPolicy::LeastRequest {
            choice_count: or_default(lb.choice_count, 2).max(2),
        },
        "random" => LbPolicy::Random,
        "ring_hash" => {
            let minimum_ring_size = if lb.minimum_ring_size == 0 {
                1024
            } else {
                lb.minimum_ring_size
            };
            let maximum_ring_size = if lb.maximum_ring_size == 0 {
                8 * 1024 * 1024
            } else {
                lb.maximum_ring_size
            };
            if minimum_ring_size > maximum_ring_size {
                return Err((
                    "load_balancer.minimum_ring_size".into(),
                    format!(
                        "{minimum_ring_size} is larger than maximum_ring_size {maximum_ring_size}"
                    ),
                ));
            }
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            }
        }
        "maglev" => LbPolicy::Maglev,
        other => {
            return Err((
                "load_balancer.policy".into(),
                format!(
                    "{other:?} is not one of \"round_robin\", \"least_request\", \"random\", \"ring_hash\", \"maglev\""
                ),
            ));
        }
    };
    let mut hash_policies = Vec::with_capacity(lb.hash_policies.len());
    for (i, h) in lb.hash_policies.iter().enumerate() {
        let field = |f: &str| format!("load_balancer.hash_policies[{i}].{f}");
        let source = if h.source_ip {
            if !h.field.is_empty() {
                return Err((
                    field("field"),
                    format!("{:?} given with source_ip: use one or the other", h.field),
                ));
            }
            HashSource::SourceIp
        } else {
            if h.field_value.is_empty() {
                return Err((
                    field("field_value"),
                    "empty: name the header, cookie or query parameter".into(),
                ));
            }
            match h.field.as_str() {
                "header" => HashSource::Header(
                    HeaderName::from_bytes(h.field_value.as_bytes()).map_err(|_| {
                        (
                            field("field_value"),
                            format!("{:?} is not a valid header name", h.field_value),
                        )
                    })?,
                ),
                "cookie" => HashSource::Cookie(h.field_value.clone()),
                "query_parameter" => HashSource::QueryParameter(h.field_value.clone()),
                other => {
                    return Err((
                        field("field"),
                        format!(
                            "{other:?} is not one of \"header\", \"cookie\", \"query_parameter\""
                        ),
                    ));
                }
            }
        };
        hash_policies.push(HashPolicy {
            source,
            terminal: h.terminal,
        });
    }
    let defaults = CircuitBreakers::default();
    let circuit_breakers = match &c.circuit_breakers {
        None => defaults,
        Some(cb) => CircuitBreakers {
            max_connections: or_default(cb.max_connections, defaults.max_connections),
            max_pending_requests: or_default(
                cb.max_pending_requests,
                defaults.max_pending_requests,
            ),
            max_concurrent_requests: or_default(
                cb.max_concurrent_requests,
                defaults.max_concurrent_requests,
            ),
            max_retries: or_default(cb.max_retries, defaults.max_retries),
        },
    };
    let outlier_detection = match &c.outlier_detection {
        None => None,
        Some(o) => {
            let d = OutlierDetection::default();
            let max_ejection_percent = or_default(o.max_ejection_percent, d.max_ejection_percent);
            let enforcing = or_default(o.enforcing_consecutive_5xx, d.enforcing_consecutive_5xx);
            for (name, value) in [
                ("max_ejection_percent", max_ejection_percent),
                ("enforcing_consecutive_5xx", enforcing),
            ] {
                if value > 100 {
                    return Err((
                        format!("outlier_detection.{name}"),
                        format!("{value} is not a percentage (0-100)"),
                    ));
                }
            }
            Some(OutlierDetection {
                consecutive_5xx: or_default(o.consecutive_5xx, d.consecutive_5xx),
                interval: millis(o.interval_ms).unwrap_or(d.interval),
                base_ejection_time: millis(o.base_ejection_time_ms).unwrap_or(d.base_ejection_time),
                max_ejection_percent,
                enforcing_consecutive_5xx: enforcing,
            })
        }
    };
    let rate_limit = match &c.rate_limit {
        None => None,
        Some(r) if r.requests_per_second == 0 => {
            return Err((
                "rate_limit.requests_per_second".into(),
                "0: a rate limit needs a positive rate (omit rate_limit for none)".into(),
            ));
        }
        Some(r) => Some(RateLimit {
            requests_per_second: r.requests_per_second,
            burst: or_default(r.requests_max_burst, r.requests_per_second),
        }),
    };
    Ok(ClusterPolicy {
        protocol,
        lb_policy,
        hash_policies,
        connect_timeout: millis(c.connect_timeout_ms),
        request_timeout: millis(c.request_timeout_ms),
        circuit_breakers,
        outlier_detection,
        rate_limit,
        failover: c.failover.clone(),
    })
}
