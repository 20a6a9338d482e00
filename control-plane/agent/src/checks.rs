//! Service checks: `http` (GET expecting 2xx) and `tcp` (connect), each on its own interval.
//! A check loop reports only when its result flips (or on its first result).

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
    pub output: String,
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
                Ok(Ok(_)) => CheckResult {
                    passing: true,
                    output: format!("TCP connect {target}: Success"),
                },
                Ok(Err(e)) => CheckResult {
                    passing: false,
                    output: format!("TCP connect {target}: {e}"),
                },
                Err(_) => CheckResult {
                    passing: false,
                    output: format!("TCP connect {target}: timed out after {timeout:?}"),
                },
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
                        return CheckResult {
                            passing: false,
                            output: format!("invalid HTTP method {:?}", check.method),
                        };
                    }
                }
            };
            match http
                .request(method.clone(), &url)
                .timeout(timeout)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => CheckResult {
                    passing: true,
                    output: format!("HTTP {method} {url}: {}", resp.status()),
                },
                Ok(resp) => CheckResult {
                    passing: false,
                    output: format!("HTTP {method} {url}: {}", resp.status()),
                },
                Err(e) => CheckResult {
                    passing: false,
                    output: format!("HTTP {method} {url}: {e}"),
                },
            }
        }
        other => CheckResult {
            passing: false,
            output: format!("check type {other:?} is not supported (expected http or tcp)"),
        },
    }
}

/// Runs check `check_idx` of service `service_idx` for ever, sending flips to `updates`.
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
    let mut last: Option<bool> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match check_target(&alloc, service, check, &address) {
            Ok(target) => run_once(&http, check, target).await,
            Err(output) => CheckResult {
                passing: false,
                output,
            },
        };
        if last != Some(result.passing) {
            tracing::debug!(alloc_id = %alloc.id, service = %service.name, check = %check.name, passing = result.passing, output = %result.output, "check changed");
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

        // A port nothing listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!run_once(&http, &tcp, closed).await.passing);
    }
}
