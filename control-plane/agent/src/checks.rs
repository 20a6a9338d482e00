//! Service checks: `http` (GET expecting 2xx; 429 is a warning, as in Consul), `tcp`
//! (connect) and `grpc` (the standard `grpc.health.v1.Health/Check`, `SERVING` passes), each on
//! its own interval. A check loop reports only when its result flips (or on its first result),
//! except for checks with `check_restart`, which report every result so that consecutive
//! failures can be counted ([`CheckRestartWatch`]).

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use tokio::sync::mpsc;

/// Interval used when a check gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Timeout used when a check gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// One check result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub passing: bool,
    /// Not passing, but only a warning (HTTP 429); `check_restart { ignore_warnings }` does
    /// not count warnings as failures.
    pub warning: bool,
    pub output: String,
}

impl CheckResult {
    fn pass(output: String) -> Self {
        Self {
            passing: true,
            warning: false,
            output,
        }
    }

    fn fail(output: String) -> Self {
        Self {
            passing: false,
            warning: false,
            output,
        }
    }
}

/// A result of check `check` of service `service` (indexes into the allocation's lists).
#[derive(Debug, Clone)]
pub struct CheckUpdate {
    pub service: usize,
    pub check: usize,
    pub result: CheckResult,
}

/// Where a check connects: the port label's host port on `address` (or the port's own host
/// IP). A label that is a plain number is used as the port itself.
pub fn check_target(
    alloc: &pb::Allocation,
    service: &pb::Service,
    check: &pb::Check,
    address: &str,
) -> Result<SocketAddr, String> {
    let label = if check.port_label.is_empty() {
        &service.port_label
    } else {
        &check.port_label
    };
    if label.is_empty() {
        return Err(format!(
            "check {:?} of service {:?} names no port",
            check.name, service.name
        ));
    }
    let (ip, port) = match alloc.ports.iter().find(|p| &p.label == label) {
        Some(p) => {
            let ip = match p.host_ip.parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => p.host_ip.clone(),
                _ => address.to_string(),
            };
            (ip, p.value)
        }
        None => match label.parse::<u16>() {
            Ok(n) => (address.to_string(), u32::from(n)),
            Err(_) => return Err(format!("port label {label:?} is not allocated")),
        },
    };
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("address {ip:?} is not an IP"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Runs one check once.
pub async fn run_once(
    http: &reqwest::Client,
    check: &pb::Check,
    target: SocketAddr,
) -> CheckResult {
    let timeout = non_zero(check.timeout_ms, DEFAULT_TIMEOUT);
    match check.r#type.to_ascii_lowercase().as_str() {
        "tcp" => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(_)) => CheckResult::pass(format!("TCP connect {target}: Success")),
                Ok(Err(e)) => CheckResult::fail(format!("TCP connect {target}: {e}")),
                Err(_) => {
                    CheckResult::fail(format!("TCP connect {target}: timed out after {timeout:?}"))
                }
            }
        }
        "http" => {
            let path = if check.path.is_empty() {
                "/".to_string()
            } else if check.path.starts_with('/') {
                check.path.clone()
            } else {
                format!("/{}", check.path)
            };
            let url = format!("http://{target}{path}");
            let method = if check.method.is_empty() {
                reqwest::Method::GET
            } else {
                match reqwest::Method::from_bytes(check.method.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        return CheckResult::fail(format!(
                            "invalid HTTP method {:?}",
                            check.method
                        ));
                    }
                }
            };
            match http
                .request(method.clone(), &url)
                .timeout(timeout)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    CheckResult::pass(format!("HTTP {method} {url}: {}", resp.status()))
                }
                Ok(resp) => CheckResult {
                    passing: false,
                    warning: resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS,
                    output: format!("HTTP {method} {url}: {}", resp.status()),
                },
                Err(e) => CheckResult::fail(format!("HTTP {method} {url}: {e}")),
            }
        }
        "grpc" => grpc_check(check, target, timeout).await,
        other => CheckResult::fail(format!(
            "check type {other:?} is not supported (expected http, tcp or grpc)"
        )),
    }
}

/// `grpc.health.v1.Health/Check` for `check.grpc_service` ("" asks about the whole server).
async fn grpc_check(check: &pb::Check, target: SocketAddr, timeout: Duration) -> CheckResult {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let what = if check.grpc_service.is_empty() {
        format!("gRPC health {target}")
    } else {
        format!("gRPC health {target} service {:?}", check.grpc_service)
    };
    if check.grpc_use_tls {
        return CheckResult::fail(format!(
            "{what}: grpc_use_tls is not supported by this agent (plaintext gRPC only)"
        ));
    }
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{target}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return CheckResult::fail(format!("{what}: {e}")),
    };
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: check.grpc_service.clone(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok::<_, String>(resp.into_inner().status())
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(ServingStatus::Serving)) => CheckResult::pass(format!("{what}: SERVING")),
        Ok(Ok(status)) => CheckResult::fail(format!("{what}: {}", status.as_str_name())),
        Ok(Err(e)) => CheckResult::fail(format!("{what}: {e}")),
        Err(_) => CheckResult::fail(format!("{what}: timed out after {timeout:?}")),
    }
}

/// Counts a `check_restart` check's consecutive failures (Nomad's check watcher): failures
/// within `grace` of the task's start do not count; with `ignore_warnings` neither do
/// warnings. Time is passed in.
#[derive(Debug, Clone)]
pub struct CheckRestartWatch {
    limit: u32,
    grace: Duration,
    ignore_warnings: bool,
    failures: u32,
}

impl CheckRestartWatch {
    /// `None` when the check has no `check_restart` (limit 0).
    pub fn from_check(check: &pb::Check) -> Option<Self> {
        (check.check_restart_limit > 0).then(|| Self {
            limit: check.check_restart_limit,
            grace: Duration::from_millis(check.check_restart_grace_ms),
            ignore_warnings: check.check_restart_ignore_warnings,
            failures: 0,
        })
    }

    /// A result `since_start` after the task (last) started; true when the task must be
    /// restarted now (the count starts again).
    pub fn observe(&mut self, result: &CheckResult, since_start: Option<Duration>) -> bool {
        let healthy = result.passing || (result.warning && self.ignore_warnings);
        if healthy {
            self.failures = 0;
            return false;
        }
        match since_start {
            Some(elapsed) if elapsed >= self.grace => {}
            // Not running, or still in its grace period.
            _ => return false,
        }
        self.failures += 1;
        if self.failures >= self.limit {
            self.failures = 0;
            return true;
        }
        false
    }

    /// Forgets the failures counted so far (the task restarted).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Runs check `check_idx` of service `service_idx` for ever, sending flips (or, with
/// `check_restart`, every result) to `updates`.
pub async fn run_loop(
    http: reqwest::Client,
    alloc: pb::Allocation,
    service_idx: usize,
    check_idx: usize,
    address: String,
    updates: mpsc::UnboundedSender<CheckUpdate>,
) {
    let Some(service) = alloc.services.get(service_idx) else {
        return;
    };
    let Some(check) = service.checks.get(check_idx) else {
        return;
    };
    let interval = non_zero(check.interval_ms, DEFAULT_INTERVAL);
    let every_result = check.check_restart_limit > 0;
    let mut last: Option<bool> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match check_target(&alloc, service, check, &address) {
            Ok(target) => run_once(&http, check, target).await,
            Err(output) => CheckResult::fail(output),
        };
        let changed = last != Some(result.passing);
        if changed {
            tracing::debug!(alloc_id = %alloc.id, service = %service.name, check = %check.name, passing = result.passing, output = %result.output, "check changed");
        }
        if changed || every_result {
            last = Some(result.passing);
            let update = CheckUpdate {
                service: service_idx,
                check: check_idx,
                result,
            };
            if updates.send(update).is_err() {
                return;
            }
        }
    }
}

/// An HTTP client for checks: plain HTTP only, no proxies from the environment.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
}

fn non_zero(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> pb::Allocation {
        pb::Allocation {
            ports: vec![pb::Port {
                label: "http".into(),
                value: 20001,
                to: 8080,
                host_ip: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn targets_resolve_from_labels() {
        let svc = pb::Service {
            name: "web".into(),
            port_label: "http".into(),
            ..Default::default()
        };
        let check = pb::Check::default();
        assert_eq!(
            check_target(&alloc(), &svc, &check, "127.0.0.1").unwrap(),
            "127.0.0.1:20001".parse().unwrap()
        );
        let numeric = pb::Check {
            port_label: "9999".into(),
            ..Default::default()
        };
        assert_eq!(
            check_target(&alloc(), &svc, &numeric, "127.0.0.1").unwrap(),
            "127.0.0.1:9999".parse().unwrap()
        );
        let missing = pb::Check {
            port_label: "admin".into(),
            ..Default::default()
        };
        let err = check_target(&alloc(), &svc, &missing, "127.0.0.1").unwrap_err();
        assert!(err.contains("admin"), "{err}");
    }

    #[test]
    fn check_restart_counts_consecutive_failures_after_the_grace() {
        let check = pb::Check {
            check_restart_limit: 2,
            check_restart_grace_ms: 1_000,
            check_restart_ignore_warnings: true,
            ..Default::default()
        };
        assert!(CheckRestartWatch::from_check(&pb::Check::default()).is_none());
        let mut w = CheckRestartWatch::from_check(&check).unwrap();
        let fail = CheckResult::fail("refused".into());
        let warn = CheckResult {
            passing: false,
            warning: true,
            output: "429".into(),
        };
        let pass = CheckResult::pass("ok".into());
        let early = Some(Duration::from_millis(500));
        let late = Some(Duration::from_secs(2));
        // Within the grace period, or while the task is not running: not counted.
        assert!(!w.observe(&fail, early));
        assert!(!w.observe(&fail, None));
        assert!(!w.observe(&fail, late));
        // A pass (or an ignored warning) resets the count.
        assert!(!w.observe(&warn, late));
        assert!(!w.observe(&fail, late));
        assert!(!w.observe(&pass, late));
        assert!(!w.observe(&fail, late));
        assert!(w.observe(&fail, late), "second consecutive failure");
        // Counting starts again after a restart.
        assert!(!w.observe(&fail, late));
        let strict = pb::Check {
            check_restart_ignore_warnings: false,
            ..check
        };
        let mut w = CheckRestartWatch::from_check(&strict).unwrap();
        assert!(!w.observe(&warn, late));
        assert!(w.observe(&warn, late), "warnings count unless ignored");
    }

    #[tokio::test]
    async fn tcp_and_http_checks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A one-route HTTP server: 200 on /ok, 500 elsewhere.
        tokio::spawn(async move {
            let app = axum::Router::new()
                .route("/ok", axum::routing::get(|| async { "fine" }))
                .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "bad") });
            let _ = axum::serve(listener, app).await;
        });
        let http = http_client().unwrap();
        let tcp = pb::Check {
            r#type: "tcp".into(),
            ..Default::default()
        };
        assert!(run_once(&http, &tcp, addr).await.passing);
        let ok = pb::Check {
            r#type: "http".into(),
            path: "/ok".into(),
            ..Default::default()
        };
        let r = run_once(&http, &ok, addr).await;
        assert!(r.passing, "{r:?}");
        let bad = pb::Check {
            r#type: "http".into(),
            path: "/nope".into(),
            ..Default::default()
        };
        let r = run_once(&http, &bad, addr).await;
        assert!(!r.passing && r.output.contains("500"), "{r:?}");

        // A port nothing listens on, held until the test ends.
        let held = flotilla_test_support::dead_addr();
        let closed = held.addr;
        assert!(!run_once(&http, &tcp, closed).await.passing);
    }
}
