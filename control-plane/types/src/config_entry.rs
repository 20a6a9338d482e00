//! Consul's L7 config entries: `service-defaults`, `service-router`, `service-splitter` and
//! `service-resolver`, in Consul's JSON shape (PascalCase fields, `Kind` tag, durations as Go
//! duration strings such as `"15s"`), so `consul config write` files work unchanged.
//!
//! Also here, because the proxy side evaluates it against instances: the subset of Consul's
//! bexpr filter language service-resolver subsets use ([`SubsetFilter`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const KIND_SERVICE_DEFAULTS: &str = "service-defaults";
pub const KIND_SERVICE_ROUTER: &str = "service-router";
pub const KIND_SERVICE_SPLITTER: &str = "service-splitter";
pub const KIND_SERVICE_RESOLVER: &str = "service-resolver";
/// Every supported kind, in the order messages list them.
pub const CONFIG_ENTRY_KINDS: &[&str] = &[
    KIND_SERVICE_DEFAULTS,
    KIND_SERVICE_ROUTER,
    KIND_SERVICE_SPLITTER,
    KIND_SERVICE_RESOLVER,
];

/// Protocols a service-defaults entry may declare.
pub const PROTOCOLS: &[&str] = &["tcp", "http", "http2", "grpc"];
/// Protocols that allow L7 routing and splitting.
pub const L7_PROTOCOLS: &[&str] = &["http", "http2", "grpc"];
/// Load-balancer policies of a service-resolver (`""` means round_robin).
pub const LB_POLICIES: &[&str] = &[
    "round_robin",
    "least_request",
    "random",
    "ring_hash",
    "maglev",
];
/// Fields a hash policy may hash on.
pub const HASH_POLICY_FIELDS: &[&str] = &["header", "cookie", "query_parameter"];

fn default_namespace() -> String {
    crate::DEFAULT_NAMESPACE.to_string()
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// One config entry, tagged by its `Kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "Kind")]
pub enum ConfigEntry {
    #[serde(rename = "service-defaults")]
    ServiceDefaults(ServiceDefaults),
    #[serde(rename = "service-router")]
    ServiceRouter(ServiceRouter),
    #[serde(rename = "service-splitter")]
    ServiceSplitter(ServiceSplitter),
    #[serde(rename = "service-resolver")]
    ServiceResolver(ServiceResolver),
}

macro_rules! common {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            ConfigEntry::ServiceDefaults($e) => $body,
            ConfigEntry::ServiceRouter($e) => $body,
            ConfigEntry::ServiceSplitter($e) => $body,
            ConfigEntry::ServiceResolver($e) => $body,
        }
    };
}

impl ConfigEntry {
    /// `service-defaults`, `service-router`, …
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigEntry::ServiceDefaults(_) => KIND_SERVICE_DEFAULTS,
            ConfigEntry::ServiceRouter(_) => KIND_SERVICE_ROUTER,
            ConfigEntry::ServiceSplitter(_) => KIND_SERVICE_SPLITTER,
            ConfigEntry::ServiceResolver(_) => KIND_SERVICE_RESOLVER,
        }
    }

    /// The service the entry configures.
    pub fn name(&self) -> &str {
        common!(self, e => &e.name)
    }

    /// The entry's namespace (`default` when empty).
    pub fn namespace(&self) -> &str {
        let ns = common!(self, e => &e.namespace);
        if ns.is_empty() {
            crate::DEFAULT_NAMESPACE
        } else {
            ns
        }
    }

    pub fn meta(&self) -> &BTreeMap<String, String> {
        common!(self, e => &e.meta)
    }

    pub fn create_index(&self) -> u64 {
        common!(self, e => e.create_index)
    }

    pub fn modify_index(&self) -> u64 {
        common!(self, e => e.modify_index)
    }

    /// Set by the store on write.
    pub fn set_indexes(&mut self, create: u64, modify: u64) {
        common!(self, e => {
            e.create_index = create;
            e.modify_index = modify;
        })
    }

    /// The key entries are stored under: `kind/namespace/name`.
    pub fn key(&self) -> String {
        Self::key_of(self.kind(), self.namespace(), self.name())
    }

    /// [`ConfigEntry::key`] from its parts.
    pub fn key_of(kind: &str, namespace: &str, name: &str) -> String {
        let namespace = if namespace.is_empty() {
            crate::DEFAULT_NAMESPACE
        } else {
            namespace
        };
        format!("{kind}/{namespace}/{name}")
    }
}

/// `service-defaults`: the protocol and connection settings of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceDefaults {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `tcp`, `http`, `http2` or `grpc`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub local_connect_timeout_ms: u32,
    pub local_request_timeout_ms: u32,
    pub max_inbound_connections: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_config: Option<UpstreamConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for ServiceDefaults {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: default_namespace(),
            protocol: default_protocol(),
            local_connect_timeout_ms: 0,
            local_request_timeout_ms: 0,
            max_inbound_connections: 0,
            upstream_config: None,
            rate_limits: None,
            meta: BTreeMap::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpstreamConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defaults: Option<UpstreamConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<UpstreamLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive_health_check: Option<PassiveHealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpstreamLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_concurrent_requests: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct PassiveHealthCheck {
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    pub max_failures: u32,
    #[serde(rename = "EnforcingConsecutive5xx")]
    pub enforcing_consecutive_5xx: u32,
    pub max_ejection_percent: u32,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RateLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_level: Option<InstanceLevelRateLimits>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct InstanceLevelRateLimits {
    pub requests_per_second: u32,
    pub requests_max_burst: u32,
    pub routes: Vec<InstanceLevelRouteRateLimits>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct InstanceLevelRouteRateLimits {
    pub path_exact: String,
    pub path_prefix: String,
    pub path_regex: String,
    pub requests_per_second: u32,
    pub requests_max_burst: u32,
}

/// `service-router`: L7 routes of one service, first match wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouter {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub routes: Vec<ServiceRoute>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for ServiceRouter {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: default_namespace(),
            routes: Vec::new(),
            meta: BTreeMap::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#match: Option<ServiceRouteMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<ServiceRouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteMatch {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<ServiceRouteHttpMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteHttpMatch {
    pub path_exact: String,
    pub path_prefix: String,
    pub path_regex: String,
    pub methods: Vec<String>,
    pub header: Vec<ServiceRouteHttpMatchHeader>,
    pub query_param: Vec<ServiceRouteHttpMatchQueryParam>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteHttpMatchHeader {
    pub name: String,
    pub present: bool,
    pub exact: String,
    pub prefix: String,
    pub suffix: String,
    pub regex: String,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteHttpMatchQueryParam {
    pub name: String,
    pub present: bool,
    pub exact: String,
    pub regex: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRouteDestination {
    /// Defaults to the router's own service.
    pub service: String,
    pub service_subset: String,
    pub namespace: String,
    pub prefix_rewrite: String,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    pub num_retries: u32,
    pub retry_on_connect_failure: bool,
    pub retry_on_status_codes: Vec<u32>,
    pub retry_on: Vec<String>,
}

/// `service-splitter`: weighted traffic split of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSplitter {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub splits: Vec<ServiceSplit>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for ServiceSplitter {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: default_namespace(),
            splits: Vec::new(),
            meta: BTreeMap::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSplit {
    /// Percent of traffic, 0.01 precision.
    pub weight: f32,
    /// Defaults to the splitter's own service.
    pub service: String,
    pub service_subset: String,
    pub namespace: String,
}

/// `service-resolver`: subsets, redirects, failover and load balancing of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolver {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub default_subset: String,
    pub subsets: BTreeMap<String, ServiceResolverSubset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<ServiceResolverRedirect>,
    /// By subset name, or `*` for any.
    pub failover: BTreeMap<String, ServiceResolverFailover>,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(with = "go_duration_opt", skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for ServiceResolver {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: default_namespace(),
            default_subset: String::new(),
            subsets: BTreeMap::new(),
            redirect: None,
            failover: BTreeMap::new(),
            connect_timeout: None,
            request_timeout: None,
            load_balancer: None,
            meta: BTreeMap::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverSubset {
    /// A bexpr filter over the instance (see [`SubsetFilter`]).
    pub filter: String,
    pub only_passing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverRedirect {
    pub service: String,
    pub service_subset: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverFailover {
    pub service: String,
    pub service_subset: String,
    pub targets: Vec<ServiceResolverFailoverTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResolverFailoverTarget {
    pub service: String,
    pub service_subset: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct LoadBalancer {
    /// One of [`LB_POLICIES`]; `""` is round_robin.
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub least_request_config: Option<LeastRequestConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_hash_config: Option<RingHashConfig>,
    pub hash_policies: Vec<HashPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeastRequestConfig {
    pub choice_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RingHashConfig {
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HashPolicy {
    /// One of [`HASH_POLICY_FIELDS`], or `""` with `SourceIP`.
    pub field: String,
    pub field_value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
    #[serde(rename = "SourceIP")]
    pub source_ip: bool,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CookieConfig {
    pub session: bool,
    #[serde(
        rename = "TTL",
        with = "go_duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    pub path: String,
}

// ---------------------------------------------------------------------------------------------
// Go durations

/// Parses a Go duration string (`"15s"`, `"1m30s"`, `"500ms"`, `"1.5h"`, `"0"`). Negative
/// durations are refused: no config entry field takes one.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text.starts_with('-') {
        return Err(format!("negative duration {s:?}"));
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut rest = text;
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "invalid duration {s:?} (expected a Go duration such as \"15s\" or \"500ms\")"
            ));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid number in duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "missing unit in duration {s:?} (expected one of ns, us, ms, s, m, h)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {s:?} (expected one of ns, us, ms, s, m, h)"
                ));
            }
        };
        total += number * nanos_per;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("duration {s:?} is too large"));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Formats a duration the way Go's `time.Duration.String` does (`1m30s`, `500ms`, `0s`).
pub fn format_go_duration(d: Duration) -> String {
    format_go_nanos(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Formats nanoseconds the way Go prints a `time.Duration` (`1m30s`, `500ms`, `-2s`).
pub fn format_go_nanos(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}us", trim_fraction(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim_fraction(n, 1_000_000));
    }
    let secs = n / 1_000_000_000;
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = trim_fraction(n % 60_000_000_000, 1_000_000_000);
    let mut out = sign.to_string();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}s"));
    out
}

fn trim_fraction(n: u64, unit: u64) -> String {
    let whole = n / unit;
    let frac = n % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Serde for `Option<Duration>` as a Go duration string (also accepts integer nanoseconds).
pub mod go_duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_go_duration(*d)),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Nanos(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Nanos(n)) => Ok(Some(Duration::from_nanos(n))),
            Some(Raw::Text(t)) if t.is_empty() => Ok(None),
            Some(Raw::Text(t)) => super::parse_go_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subset filters

/// A parsed service-resolver subset filter: the part of Consul's bexpr language subsets use.
///
/// ```text
/// Service.Tags contains "v2"            "v2" in Service.Tags
/// Service.Meta.version == "2"           Service.Meta.version != "1"
/// … and …   … or …   not …   ( … )
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubsetFilter {
    TagContains(String),
    MetaEq(String, String),
    MetaNe(String, String),
    Not(Box<SubsetFilter>),
    And(Box<SubsetFilter>, Box<SubsetFilter>),
    Or(Box<SubsetFilter>, Box<SubsetFilter>),
}

impl SubsetFilter {
    /// Parses a filter; the error names the offending token and what was expected.
    pub fn parse(text: &str) -> Result<SubsetFilter, String> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err("empty filter".to_string());
        }
        let mut p = FilterParser { tokens, pos: 0 };
        let expr = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!(
                "unexpected {} after a complete expression",
                t.describe()
            ));
        }
        Ok(expr)
    }

    /// Whether an instance with these tags and meta is in the subset.
    pub fn matches(&self, tags: &[String], meta: &BTreeMap<String, String>) -> bool {
        match self {
            SubsetFilter::TagContains(t) => tags.iter().any(|x| x == t),
            SubsetFilter::MetaEq(k, v) => meta.get(k).is_some_and(|m| m == v),
            SubsetFilter::MetaNe(k, v) => meta.get(k).is_none_or(|m| m != v),
            SubsetFilter::Not(e) => !e.matches(tags, meta),
            SubsetFilter::And(a, b) => a.matches(tags, meta) && b.matches(tags, meta),
            SubsetFilter::Or(a, b) => a.matches(tags, meta) || b.matches(tags, meta),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Eq,
    Ne,
    LParen,
    RParen,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("{s:?}"),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(_, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::LParen);
            }
            ')' => {
                chars.next();
                out.push(Tok::RParen);
            }
            '=' | '!' => {
                chars.next();
                if chars.next_if(|&(_, n)| n == '=').is_none() {
                    return Err(format!("unexpected `{c}` (expected `==` or `!=`)"));
                }
                out.push(if c == '=' { Tok::Eq } else { Tok::Ne });
            }
            '"' | '`' => {
                let quote = c;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated string {quote}{s}")),
                        Some((_, ch)) if ch == quote => break,
                        Some((_, '\\')) if quote == '"' => match chars.next() {
                            Some((_, e)) => s.push(e),
                            None => return Err(format!("unterminated string \"{s}")),
                        },
                        Some((_, ch)) => s.push(ch),
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' => {
                let mut s = String::new();
                while let Some((_, ch)) =
                    chars.next_if(|&(_, n)| n.is_alphanumeric() || n == '_' || n == '.' || n == '-')
                {
                    s.push(ch);
                }
                out.push(Tok::Ident(s));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct FilterParser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl FilterParser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(word)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<SubsetFilter, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            let right = self.and()?;
            left = SubsetFilter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<SubsetFilter, String> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            let right = self.unary()?;
            left = SubsetFilter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<SubsetFilter, String> {
        if self.keyword("not") {
            return Ok(SubsetFilter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let inner = self.or()?;
            return match self.next() {
                Some(Tok::RParen) => Ok(inner),
                Some(t) => Err(format!("expected `)`, found {}", t.describe())),
                None => Err("missing `)` at the end".to_string()),
            };
        }
        self.atom()
    }

    fn string(&mut self, after: &str) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            Some(t) => Err(format!(
                "expected a quoted string after {after}, found {}",
                t.describe()
            )),
            None => Err(format!("expected a quoted string after {after}")),
        }
    }

    fn atom(&mut self) -> Result<SubsetFilter, String> {
        match self.next() {
            Some(Tok::Str(value)) => {
                if !self.keyword("in") {
                    return Err(format!("expected `in` after {value:?}"));
                }
                match self.next() {
                    Some(Tok::Ident(sel)) if is_tags(&sel) => Ok(SubsetFilter::TagContains(value)),
                    Some(t) => Err(format!(
                        "expected Service.Tags after `in`, found {}",
                        t.describe()
                    )),
                    None => Err("expected Service.Tags after `in`".to_string()),
                }
            }
            Some(Tok::Ident(sel)) if is_tags(&sel) => {
                if self.keyword("contains") {
                    Ok(SubsetFilter::TagContains(self.string("`contains`")?))
                } else {
                    Err(format!("expected `contains` after `{sel}`"))
                }
            }
            Some(Tok::Ident(sel)) => {
                let Some(key) = meta_key(&sel) else {
                    return Err(format!(
                        "unsupported selector `{sel}` (expected Service.Tags or Service.Meta.<key>)"
                    ));
                };
                match self.next() {
                    Some(Tok::Eq) => Ok(SubsetFilter::MetaEq(key, self.string("`==`")?)),
                    Some(Tok::Ne) => Ok(SubsetFilter::MetaNe(key, self.string("`!=`")?)),
                    Some(t) => Err(format!(
                        "expected `==` or `!=` after `{sel}`, found {}",
                        t.describe()
                    )),
                    None => Err(format!("expected `==` or `!=` after `{sel}`")),
                }
            }
            Some(t) => Err(format!(
                "expected a selector (Service.Tags, Service.Meta.<key>) or a string, found {}",
                t.describe()
            )),
            None => Err("unexpected end of filter".to_string()),
        }
    }
}

fn is_tags(sel: &str) -> bool {
    sel == "Service.Tags" || sel == "ServiceTags"
}

fn meta_key(sel: &str) -> Option<String> {
    sel.strip_prefix("Service.Meta.")
        .or_else(|| sel.strip_prefix("ServiceMeta."))
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_round_trip() {
        for (text, nanos) in [
            ("15s", 15_000_000_000u64),
            ("500ms", 500_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("0", 0),
            ("250us", 250_000),
        ] {
            assert_eq!(parse_go_duration(text).unwrap().as_nanos() as u64, nanos);
        }
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert!(parse_go_duration("5").unwrap_err().contains("missing unit"));
        assert!(
            parse_go_duration("5d")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_go_duration("-1s").is_err());
    }

    #[test]
    fn entries_use_consuls_json_shape() {
        let json = r#"{
            "Kind": "service-router", "Name": "web",
            "Routes": [{
                "Match": {"HTTP": {"PathPrefix": "/api", "Header": [{"Name": "x-canary", "Exact": "true"}]}},
                "Destination": {"Service": "api", "RequestTimeout": "15s", "RetryOnStatusCodes": [503]}
            }]
        }"#;
        let entry: ConfigEntry = serde_json::from_str(json).unwrap();
        assert_eq!(entry.kind(), KIND_SERVICE_ROUTER);
        assert_eq!(entry.key(), "service-router/default/web");
        let ConfigEntry::ServiceRouter(r) = &entry else {
            panic!("not a router")
        };
        let dest = r.routes[0].destination.as_ref().unwrap();
        assert_eq!(dest.request_timeout, Some(Duration::from_secs(15)));
        let back = serde_json::to_value(&entry).unwrap();
        assert_eq!(back["Kind"], "service-router");
        assert_eq!(back["Routes"][0]["Destination"]["RequestTimeout"], "15s");
        assert_eq!(back["Routes"][0]["Match"]["HTTP"]["PathPrefix"], "/api");
        assert_eq!(back["Namespace"], "default");

        let d: ConfigEntry =
            serde_json::from_str(r#"{"Kind":"service-defaults","Name":"web"}"#).unwrap();
        let ConfigEntry::ServiceDefaults(d) = d else {
            panic!("not defaults")
        };
        assert_eq!(d.protocol, "tcp");
        assert!(
            serde_json::from_str::<ConfigEntry>(
                r#"{"Kind":"service-resolver","Name":"w","ConnectTimeout":"5x"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn filters_parse_and_match() {
        let meta: BTreeMap<String, String> = [("version".to_string(), "2".to_string())].into();
        let tags = vec!["v2".to_string(), "canary".to_string()];
        for (text, expect) in [
            (r#"Service.Tags contains "v2""#, true),
            (r#""v1" in Service.Tags"#, false),
            (r#"Service.Meta.version == "2""#, true),
            (r#"Service.Meta.version != "2""#, false),
            (r#"Service.Meta.missing != "x""#, true),
            (
                r#"Service.Tags contains "v1" or Service.Meta.version == "2""#,
                true,
            ),
            (
                r#"Service.Tags contains "v2" and not "canary" in Service.Tags"#,
                false,
            ),
            (
                r#"not (Service.Tags contains "v1" or "x" in Service.Tags)"#,
                true,
            ),
        ] {
            let f = SubsetFilter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.matches(&tags, &meta), expect, "{text}");
        }
        assert_eq!(
            SubsetFilter::parse(r#"a and b or c"#).unwrap_err(),
            "unsupported selector `a` (expected Service.Tags or Service.Meta.<key>)"
        );
        for bad in [
            "",
            "Service.Tags",
            r#"Service.Tags contains v2"#,
            r#"Service.Meta.v = "1""#,
            r#"(Service.Tags contains "a""#,
            r#"Service.Tags contains "a" Service.Tags"#,
            r#""x" in Service.Meta"#,
        ] {
            assert!(SubsetFilter::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
