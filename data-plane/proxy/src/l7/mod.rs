//! The L7 request path: from a request for a service to a response from one of its endpoints.
//!
//! Per request, on one config snapshot:
//! 1. the service's route table ([`crate::config::ServiceRoutes`], from its service-router, -splitter and
//!    -resolver) picks a route, and the route's weights a cluster; a cluster without a usable
//!    endpoint hands over to its failover clusters;
//! 2. the intention from the caller to the cluster's service, the cluster's local rate limit and
//!    its circuit breakers may refuse the request before anything is sent;
//! 3. the cluster's balancer orders the endpoints to try (ejected ones skipped);
//! 4. attempts: a connect failure (nothing sent) moves to the next endpoint; a response or reset
//!    the route's retry policy names is retried — within the retry budget, after a jittered
//!    backoff — when the request body could be kept (empty, or at most
//!    [`RETRY_BUFFER_LIMIT`] bytes with a known length); every outcome feeds outlier detection.
//!
//! A request body with a known length of at most [`RETRY_BUFFER_LIMIT`] bytes is kept (read
//! whole): it goes out with the head on the inline HTTP/1.1 client ([`crate::h1::client`]) and
//! can be retried. Larger or unknown-length bodies stream both ways on hyper. HTTP/2 and gRPC
//! clusters get one multiplexed h2 connection per endpoint (trailers pass through);
//! `Upgrade` requests (WebSocket) get a connection of their own that becomes a byte tunnel.

mod body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Either;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use rand::Rng;
use tracing::{debug, warn};

use crate::balance::{
    DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX, Outcome, RetryGuard, request_hash, retry_backoff,
};
use crate::config::{HttpRoute, RetryPolicy};
use crate::error::RequestError;
use crate::headers;
use crate::metrics::{Limit, RouteMetrics};
use crate::snapshot::{ClusterEntry, Snapshot};
use crate::upstream::{SendError, Upstream, UpstreamBody, UpstreamError, UpstreamResponseBody};

pub use body::Guarded;

/// Body type of responses to downstream clients.
pub type ResponseBody = BoxBody<Bytes, UpstreamError>;

/// Request bodies up to this size (with a known length) are kept so the request can be retried.
pub const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// What one proxied request did, for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Where the request's outcome is counted (`None` before a route or service was known).
    pub route_metrics: Option<RouteMetrics>,
    /// Retries were wanted but the budget, the retry limit or the attempts ran out (`URX`).
    pub retries_exhausted: bool,
    /// The route's bounded name (`None` when the service has no route table).
    pub route: Option<String>,
    /// The cluster the request went to.
    pub cluster: Option<String>,
    /// The endpoint that answered (or failed last).
    pub endpoint: Option<SocketAddr>,
    /// Attempts made (0 when refused before sending).
    pub attempts: u32,
    /// Retries of sent requests (connect failures not counted).
    pub retries: u32,
}

/// A request about to be forwarded, and who sends it.
pub struct Forward<'a> {
    /// The service the request is for (from the ingress route or the upstream listener).
    pub service: &'a str,
    /// The caller's service, for intentions.
    pub source: &'a str,
    /// The downstream client's address.
    pub peer: SocketAddr,
    /// The Host the client asked for, for `x-forwarded-host`.
    pub raw_host: Option<&'a str>,
    /// `http` or `https`: how the client reached this proxy.
    pub scheme: &'static str,
    /// Fill in the report's names (route, cluster) for the access log.
    pub detailed: bool,
}

/// A request body from a downstream client: hyper's, or read whole by the inline HTTP/1.1
/// server ([`crate::h1::server`]).
#[derive(Debug)]
pub enum DownstreamBody {
    Hyper(Incoming),
    Kept(Bytes),
}

/// The request body as the attempts use it.
enum RequestBody {
    /// Sent once (handed back after a connect failure); no retry of a sent request.
    Stream(Option<UpstreamBody>),
    /// Kept; every attempt gets a copy.
    Kept(Bytes),
}

/// Forwards `req` to `f.service` through `upstream`, on `snapshot`.
pub async fn forward(
    snapshot: &Arc<Snapshot>,
    upstream: &Arc<Upstream>,
    f: Forward<'_>,
    mut req: Request<DownstreamBody>,
    report: &mut Report,
) -> Result<Response<ResponseBody>, RequestError> {
    let now = Instant::now();
    let route = match snapshot.service_routes(f.service) {
        None => None,
        Some(table) => match table.find(req.method(), req.uri(), req.headers()) {
            Some((index, r)) => {
                report.route_metrics = Some(table.route_metrics(index).clone());
                Some(r)
            }
            None => {
                return Err(RequestError::NoRoute {
                    host: f.raw_host.unwrap_or_default().to_owned(),
                    path: req.uri().path().to_owned(),
                });
            }
        },
    };
    if f.detailed {
        report.route = route.map(|r| r.name.clone());
    }
    let cluster_name = match route {
        Some(r) if r.clusters.len() > 1 => {
            r.cluster_for(rand::rng().random_range(0..r.total_weight))
        }
        Some(r) => r.clusters[0].cluster.as_str(),
        None => f.service,
    };
    let cluster = pick_cluster(snapshot, cluster_name, now).ok_or_else(|| {
        RequestError::NoHealthyInstance {
            service: cluster_name.to_owned(),
        }
    })?;
    let c = cluster.cluster();
    if f.detailed {
        report.cluster = Some(c.name.clone());
    }
    if report.route_metrics.is_none() {
        // Without a route table the cluster is the service's own, unless it failed over.
        let service = if c.name == f.service {
            Some(cluster)
        } else {
            snapshot.cluster(f.service)
        };
        report.route_metrics = service.map(|s| s.default_route_metrics().clone());
    }
    let cm = cluster.metrics();
    let decision = snapshot.authorize(f.source, &c.service);
    if decision.denied() {
        return Err(RequestError::Denied {
            caller: f.source.to_owned(),
            destination: c.service.clone(),
            reason: decision.reason(),
        });
    }
    let policy = &c.policy;
    if let Some(limit) = &policy.rate_limit
        && !cluster.state().try_rate_limit(limit, now)
    {
        cm.rate_limited();
        return Err(RequestError::RateLimited {
            service: c.service.clone(),
            requests_per_second: limit.requests_per_second,
        });
    }
    let limits = &policy.circuit_breakers;
    let Some(request_guard) = cluster.state().try_request(limits) else {
        cm.overflow(Limit::MaxConcurrentRequests);
        return Err(RequestError::Overflow {
            cluster: c.name.clone(),
            limit: "max_concurrent_requests",
            max: limits.max_concurrent_requests,
        });
    };
    let default_retry = RetryPolicy::default();
    let retry = route.map_or(&default_retry, |r| &r.retry);
    let timeout = route
        .and_then(|r| r.request_timeout)
        .or(policy.request_timeout);
    let h2 = policy.protocol.is_h2();
    let hash = if policy.lb_policy.is_hashing() && !policy.hash_policies.is_empty() {
        request_hash(&policy.hash_policies, req.headers(), req.uri(), f.peer.ip())
    } else {
        None
    };
    let upgrade = is_upgrade(&req);
    let mut downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = prepare(req, &f, route, upgrade);
    parts.extensions = http::Extensions::new();
    if h2 && !upgrade {
        parts.version = Version::HTTP_2;
        parts.uri = absolute(&parts.uri, &parts.headers);
    }
    // Small bodies with a known length are kept: they go out with the head on the inline
    // HTTP/1.1 client, and can be retried.
    let mut body = match incoming {
        DownstreamBody::Kept(bytes) => RequestBody::Kept(bytes),
        DownstreamBody::Hyper(incoming) if upgrade => RequestBody::Stream(Some(incoming.boxed())),
        DownstreamBody::Hyper(incoming) => keep_body(incoming).await?,
    };
    // Kept HTTP/1.1 requests lend head and body to every attempt; the others are rebuilt.
    let lend = matches!(body, RequestBody::Kept(_)) && !h2 && !upgrade;
    let template = (matches!(body, RequestBody::Kept(_)) && !lend).then(|| parts.clone());
    let mut head = Some(parts);
    let mut handed_back: Option<Request<UpstreamBody>> = None;
    let max_attempts = retry.connect_attempts.max(retry.num_retries + 1) as usize;
    let picks = cluster
        .balancer()
        .pick(hash, cluster.states(), max_attempts, now);
    let healthy = cluster.healthy();
    let states = cluster.states();
    let mut retry_guards: Vec<RetryGuard> = Vec::new();
    let mut last_error = None;
    let mut held_back: Option<(Response<UpstreamResponseBody>, crate::balance::InFlight)> = None;
    // Retries go to the next distinct endpoint, cycling when there are fewer endpoints than
    // attempts (a single instance is retried on itself).
    let attempts = if picks.is_empty() { 0 } else { max_attempts };
    for n in 0..attempts {
        let index = picks[n % picks.len()];
        let endpoint = &healthy[index];
        let state = &states[index];
        // The first attempt takes the head; a connect failure hands the request back whole;
        // a retry of a sent request needs a kept body and a copy of the head.
        let attempt = if lend {
            None
        } else if let Some(r) = handed_back.take() {
            Some(r)
        } else if let Some(p) = head.take() {
            let first = match &mut body {
                RequestBody::Kept(bytes) => kept(bytes),
                RequestBody::Stream(stream) => match stream.take() {
                    Some(s) => s,
                    None => break,
                },
            };
            Some(Request::from_parts(p, first))
        } else if let (Some(t), RequestBody::Kept(bytes)) = (&template, &body) {
            Some(Request::from_parts(t.clone(), kept(bytes)))
        } else {
            break;
        };
        report.attempts += 1;
        report.endpoint = Some(endpoint.address);
        let in_flight = state.start();
        let target = endpoint.target();
        let attempt_started = if n == 0 { now } else { Instant::now() };
        // The attempt's future lives only inside this block, so the generator does not keep
        // a moved-from copy of it next to the one being awaited.
        let result = {
            let sent = async {
                match (attempt, &head, &body) {
                    (None, Some(p), RequestBody::Kept(bytes)) => {
                        upstream.send_kept(&target, p, bytes, cm).await
                    }
                    (Some(attempt), _, _) if upgrade => upstream
                        .send_upgrade(target.clone(), attempt, cm)
                        .await
                        .map(from_hyper),
                    (Some(attempt), _, _) if h2 => upstream
                        .send_h2(target.clone(), attempt, cm)
                        .await
                        .map(from_hyper),
                    (Some(attempt), _, _) => upstream
                        .send(target.clone(), attempt, cm)
                        .await
                        .map(from_hyper),
                    (None, _, _) => unreachable!("only kept requests are lent"),
                }
            };
            match timeout {
                None => Either::Left(sent.map(Ok)),
                Some(t) => {
                    Either::Right(tokio::time::timeout(t, sent).map(move |r| r.map_err(|_| t)))
                }
            }
        }
        .await;
        let more = n + 1 < attempts;
        match result {
            Ok(Ok(resp)) => {
                let status = resp.status();
                cm.upstream_request(status, attempt_started.elapsed());
                record(cluster, index, Outcome::from_status(status));
                let wanted = retry.retries_status(status.as_u16());
                let retryable = wanted
                    && matches!(body, RequestBody::Kept(_))
                    && report.retries < retry.num_retries
                    && more;
                let budget = if retryable {
                    let g = cluster.state().try_retry(limits);
                    if g.is_none() {
                        cm.overflow(Limit::MaxRetries);
                    }
                    g
                } else {
                    None
                };
                report.retries_exhausted = wanted && budget.is_none();
                if let Some(g) = budget {
                    debug!(cluster = %c.name, endpoint = %endpoint.address, status = status.as_u16(), "retrying");
                    cm.retry();
                    retry_guards.push(g);
                    report.retries += 1;
                    held_back = Some((resp, in_flight));
                    tokio::time::sleep(retry_backoff(
                        report.retries,
                        DEFAULT_RETRY_BASE,
                        DEFAULT_RETRY_MAX,
                    ))
                    .await;
                    continue;
                }
                if let Some(downstream) = downstream_upgrade.take() {
                    return Ok(switch_protocols(
                        resp,
                        downstream,
                        (in_flight, request_guard),
                    ));
                }
                return Ok(finish(resp, (in_flight, request_guard)));
            }
            Ok(Err(SendError::Connect { error, request })) => {
                cm.connect_failure();
                record(cluster, index, Outcome::Failure);
                if let Some(why) = error.denial() {
                    return Err(RequestError::Denied {
                        caller: f.source.to_owned(),
                        destination: c.service.clone(),
                        reason: why.to_owned(),
                    });
                }
                warn!(cluster = %c.name, %target, %error, "upstream connect failed (nothing sent; safe to retry)");
                // Nothing was sent: the request goes whole to the next endpoint.
                handed_back = request.map(|r| *r);
                // Connect failures move on to other endpoints only, never back to this one.
                if n + 1 >= (retry.connect_attempts as usize).min(picks.len()) {
                    return Err(RequestError::Connect {
                        service: c.service.clone(),
                        endpoint: endpoint.address,
                        error,
                    });
                }
                last_error = Some(RequestError::Connect {
                    service: c.service.clone(),
                    endpoint: endpoint.address,
                    error,
                });
            }
            Ok(Err(SendError::Request(error))) => {
                record(cluster, index, Outcome::Failure);
                let err = RequestError::Upstream {
                    service: c.service.clone(),
                    endpoint: endpoint.address,
                    error,
                };
                let retryable = retry.retries_reset()
                    && matches!(body, RequestBody::Kept(_))
                    && report.retries < retry.num_retries
                    && more;
                match retryable
                    .then(|| cluster.state().try_retry(limits))
                    .flatten()
                {
                    Some(g) => {
                        cm.retry();
                        retry_guards.push(g);
                        report.retries += 1;
                        last_error = Some(err);
                        tokio::time::sleep(retry_backoff(
                            report.retries,
                            DEFAULT_RETRY_BASE,
                            DEFAULT_RETRY_MAX,
                        ))
                        .await;
                    }
                    None => return Err(err),
                }
            }
            Err(after) => {
                cm.timeout();
                record(cluster, index, Outcome::Failure);
                return Err(RequestError::Timeout {
                    service: c.service.clone(),
                    endpoint: endpoint.address,
                    after,
                });
            }
        }
    }
    // Out of endpoints: the last response held back for a retry is better than an error.
    if let Some((resp, in_flight)) = held_back {
        return Ok(finish(resp, (in_flight, request_guard)));
    }
    Err(
        last_error.unwrap_or_else(|| RequestError::NoHealthyInstance {
            service: c.service.clone(),
        }),
    )
}

/// `name`, or the first of its failover clusters with a usable endpoint.
fn pick_cluster<'s>(snapshot: &'s Snapshot, name: &str, now: Instant) -> Option<&'s ClusterEntry> {
    let first = snapshot.cluster(name)?;
    if first.has_usable(now) || first.cluster().policy.failover.is_empty() {
        return (!first.healthy().is_empty()).then_some(first);
    }
    first
        .cluster()
        .policy
        .failover
        .iter()
        .filter_map(|f| snapshot.cluster(f))
        .find(|c| c.has_usable(now))
        .or((!first.healthy().is_empty()).then_some(first))
}

fn record(cluster: &ClusterEntry, index: usize, outcome: Outcome) {
    let Some(detection) = &cluster.cluster().policy.outlier_detection else {
        return;
    };
    let states = cluster.states();
    let now = Instant::now();
    if states[index].record(outcome, detection, states, now) {
        let m = cluster.metrics();
        m.ejection();
        m.set_ejected(states.iter().filter(|s| s.is_ejected(now)).count());
        warn!(
            cluster = %cluster.cluster().name,
            endpoint = %cluster.healthy()[index].address,
            "endpoint ejected by outlier detection"
        );
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`), as
/// WebSocket does over HTTP/1.1.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Rewrites the request for the upstream hop: origin-form URI (path rewritten by the route),
/// HTTP/1.1, Host kept (or taken from the h2 `:authority`), hop-by-hop headers stripped (an
/// upgrade keeps `Upgrade` and `Connection: upgrade`), route headers applied, `x-forwarded-*`.
fn prepare<B>(
    req: Request<B>,
    f: &Forward<'_>,
    route: Option<&HttpRoute>,
    upgrade: bool,
) -> (http::request::Parts, B) {
    let (mut parts, body) = req.into_parts();
    let upgrade_to = upgrade
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = upgrade_to {
        parts.headers.insert(header::UPGRADE, proto);
        parts.headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
    }
    let path = parts.uri.path();
    let rewritten = route.and_then(|r| r.rewrite_path(path));
    let path_and_query = match (rewritten, parts.uri.query()) {
        (None, _) => parts.uri.path_and_query().cloned(),
        (Some(p), None) => p.parse().ok(),
        (Some(p), Some(q)) => format!("{p}?{q}").parse().ok(),
    };
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = path_and_query;
    let host_from_authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST)
        && let Some(host) = f
            .raw_host
            .map(str::to_owned)
            .or(host_from_authority)
            .and_then(|h| header::HeaderValue::from_str(&h).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    if let Some(r) = route {
        for name in &r.headers_remove {
            parts.headers.remove(name);
        }
        for (name, value) in &r.headers_set {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    headers::set_forwarded(&mut parts.headers, f.peer, f.raw_host, f.scheme);
    (parts, body)
}

/// `http://<host><path>` for an HTTP/2 upstream request (h2 needs scheme and authority).
fn absolute(uri: &Uri, headers: &HeaderMap) -> Uri {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{host}{pq}")
        .parse()
        .unwrap_or_else(|_| uri.clone())
}

/// Keeps a small body with a known length so the request can be retried; streams anything
/// else (then only connect failures are retried).
async fn keep_body(body: Incoming) -> Result<RequestBody, RequestError> {
    use http_body::Body as _;
    let hint = body.size_hint();
    if body.is_end_stream() {
        return Ok(RequestBody::Kept(Bytes::new()));
    }
    match hint.exact() {
        Some(len) if len <= RETRY_BUFFER_LIMIT => {
            match Limited::new(body, RETRY_BUFFER_LIMIT as usize)
                .collect()
                .await
            {
                Ok(collected) => Ok(RequestBody::Kept(collected.to_bytes())),
                Err(error) => Err(RequestError::BadRequestBody {
                    error: error.to_string(),
                }),
            }
        }
        _ => Ok(RequestBody::Stream(Some(body.boxed()))),
    }
}

/// The response for the client: hop-by-hop headers stripped, the body wrapped so the
/// endpoint's in-flight count and the cluster's request slot last until it ends.
fn finish<G: Send + Sync + Unpin + 'static>(
    resp: Response<UpstreamResponseBody>,
    guards: G,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Guarded::new(body, guards).boxed())
}

/// The answer to an upgrade request. On 101 both connections are upgraded and joined into a
/// byte tunnel (its own task, holding the guards until either side closes); any other answer
/// is an ordinary response.
fn switch_protocols<G: Send + Sync + Unpin + 'static>(
    mut resp: Response<UpstreamResponseBody>,
    downstream: hyper::upgrade::OnUpgrade,
    guards: G,
) -> Response<ResponseBody> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return finish(resp, guards);
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _guards = guards;
        match tokio::try_join!(downstream, upstream) {
            Ok((down, up)) => {
                let mut down = hyper_util::rt::TokioIo::new(down);
                let mut up = hyper_util::rt::TokioIo::new(up);
                match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
                    Err(error) => debug!(%error, "upgraded connection ended with error"),
                }
            }
            Err(error) => debug!(%error, "upgrade failed"),
        }
    });
    // 101 keeps `Upgrade` and `Connection: upgrade`; the body is empty.
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, empty())
}

fn from_hyper(resp: Response<Incoming>) -> Response<UpstreamResponseBody> {
    resp.map(UpstreamResponseBody::Hyper)
}

fn kept(bytes: &Bytes) -> UpstreamBody {
    Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body (for responses this proxy makes).
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}
