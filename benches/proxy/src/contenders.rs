//! The paths under test, each started (and configured) by the bench in a temporary directory:
//! straight to the upstream, `flotilla proxy --bootstrap`, HAProxy and nginx.
//!
//! Every proxy gets the same production-minded shape: 2 worker threads (or processes), no
//! access or request logging, keep-alive to the upstream with reused connections, and h2c
//! with prior knowledge for the HTTP/2 shape. Every proxy does the same header work: the
//! client's `Host` goes through, and the request gains `x-forwarded-for`, `x-forwarded-host`
//! and `x-forwarded-proto`, as Flotilla's ingress always adds them (HAProxy and nginx add
//! none by default; each extra header also costs the upstream a little to parse).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procs::{self, Proc};

/// Worker threads (Flotilla, HAProxy) or worker processes (nginx) of every proxy.
pub const PROXY_WORKERS: u32 = 2;

/// Which path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Flotilla,
    HAProxy,
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Flotilla => "Flotilla",
            Kind::HAProxy => "HAProxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// A started path: where the HTTP/1.1 and h2c clients connect, and the process to measure.
#[derive(Debug)]
pub struct Contender {
    pub kind: Kind,
    /// `None` for direct.
    pub proc: Option<Proc>,
    pub h1: SocketAddr,
    pub h2: SocketAddr,
    /// Version and how it was configured, for the report.
    pub about: String,
}

impl Contender {
    pub fn url(&self, shape: crate::load::Shape) -> String {
        let addr = match shape {
            crate::load::Shape::Http1 => self.h1,
            crate::load::Shape::H2 => self.h2,
        };
        format!("http://{addr}/")
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The first line a `--version`-style command prints (stdout or stderr).
fn version_of(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(if out.stdout.is_empty() {
                &out.stderr
            } else {
                &out.stdout
            })
            .into_owned();
            text.lines().next().unwrap_or("?").trim().to_owned()
        }
        Err(e) => format!("? ({e})"),
    }
}

pub fn direct(upstream: SocketAddr) -> Contender {
    Contender {
        kind: Kind::Direct,
        proc: None,
        h1: upstream,
        h2: upstream,
        about: "the upstream itself, no proxy".into(),
    }
}

/// A bootstrap with one cluster per `(name, host)` pointing at `upstream`, a route for each
/// (`host` + `/`; an empty host matches any) and an allow-all authorization.
pub fn bootstrap_json(upstream: SocketAddr, services: &[(String, String)]) -> serde_json::Value {
    let clusters: Vec<serde_json::Value> = services
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            // The real upstream, plus (from the second service on) an unhealthy second
            // endpoint, so a large config looks like a real one without changing the traffic.
            let mut endpoints = vec![serde_json::json!({
                "address": upstream.to_string(), "local": true, "healthy": true,
                "alloc_id": format!("{name}-1"),
            })];
            if i > 0 {
                endpoints.push(serde_json::json!({
                    "address": format!("127.0.0.2:{}", 20_000 + i % 40_000),
                    "local": true, "healthy": false, "alloc_id": format!("{name}-2"),
                }));
            }
            serde_json::json!({"name": name, "kind": {"cluster": {
                "name": name, "namespace": "default", "protocol": "http",
                "endpoints": endpoints,
            }}})
        })
        .collect();
    let routes: Vec<serde_json::Value> = services
        .iter()
        .map(|(name, host)| {
            serde_json::json!({"name": name, "kind": {"route": {
                "host": host, "path_prefix": "/", "cluster": name,
            }}})
        })
        .collect();
    serde_json::json!({
        "clusters": clusters,
        "routes": routes,
        "listeners": [],
        "authorization": [{"name": "intentions",
            "kind": {"authorization": {"default_action": "allow"}}}],
    })
}

/// `flotilla proxy` listening on a free port.
pub struct FlotillaStart {
    pub proc: Proc,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `flotilla proxy --bootstrap <file>` and waits for its `/ready`.
pub fn start_flotilla(
    bin: &Path,
    bootstrap: &serde_json::Value,
    name: &str,
    workers: Option<u32>,
    dir: &Path,
    ready_timeout: Duration,
) -> anyhow::Result<FlotillaStart> {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec(bootstrap)?)
        .with_context(|| format!("writing {}", file.display()))?;
    let ingress = loopback(procs::free_port()?);
    let admin = loopback(procs::free_port()?);
    let inbound = loopback(procs::free_port()?);
    let mut cmd = Command::new(bin);
    cmd.arg("proxy")
        .arg("--bootstrap")
        .arg(&file)
        .args(["--ingress", &ingress.to_string()])
        .args(["--inbound", &inbound.to_string()])
        .args(["--admin", &admin.to_string()])
        // Logging off, as for the others: warnings and errors only (none per request).
        .env("RUST_LOG", "warn");
    if let Some(n) = workers {
        cmd.args(["--workers", &n.to_string()]);
    }
    let mut proc = Proc::spawn(&mut cmd, name, dir)?;
    let deadline = Instant::now() + ready_timeout;
    loop {
        if http_get(admin, "/ready", "localhost").is_ok_and(|(status, _)| status == 200) {
            break;
        }
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "flotilla proxy not ready on {admin} after {ready_timeout:?}; its log:\n{}",
                proc.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(FlotillaStart {
        proc,
        ingress,
        admin,
    })
}

pub fn flotilla(bin: &Path, upstream: SocketAddr, dir: &Path) -> anyhow::Result<Contender> {
    let bootstrap = bootstrap_json(upstream, &[("upstream".into(), String::new())]);
    let started = start_flotilla(
        bin,
        &bootstrap,
        "flotilla",
        Some(PROXY_WORKERS),
        dir,
        Duration::from_secs(30),
    )?;
    Ok(Contender {
        kind: Kind::Flotilla,
        proc: Some(started.proc),
        h1: started.ingress,
        h2: started.ingress,
        about: format!(
            "{} (`{}`): `flotilla proxy --bootstrap --workers {PROXY_WORKERS}`, RUST_LOG=warn, \
             default `--worker-affinity auto` (workers pinned one per CPU when the process may \
             use {PROXY_WORKERS} CPUs); HTTP/1.1 and h2c on one port; HTTP/1.1 upstream pool",
            version_of(bin, &["--version"]),
            bin.display()
        ),
    })
}

/// HAProxy; `pin` binds thread `i` to CPU `i - 1` (`cpu-map`).
pub fn haproxy(
    program: &Path,
    upstream: SocketAddr,
    dir: &Path,
    pin: bool,
) -> anyhow::Result<Contender> {
    let (h1, h2) = (loopback(procs::free_port()?), loopback(procs::free_port()?));
    let cpu_map = pin.then(|| format!("cpu-map auto:1/1-{PROXY_WORKERS} 0-{}", PROXY_WORKERS - 1));
    let cpu_map_line = cpu_map
        .as_ref()
        .map(|l| format!("\n    {l}"))
        .unwrap_or_default();
    let cpu_map_note = cpu_map
        .as_ref()
        .map(|l| format!(", `{l}`"))
        .unwrap_or_default();
    // No `log` line anywhere: HAProxy logs nothing. One process, PROXY_WORKERS threads.
    // maxconn sizes its FD limit (2 per connection): keep it under a 20,000 hard limit.
    let config = format!(
        "global
    nbthread {PROXY_WORKERS}
    maxconn 8000{cpu_map_line}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend http1
    bind {h1}
    default_backend upstream

frontend h2c
    bind {h2} proto h2
    default_backend upstream

# The same header work as the other proxies, once for both frontends.
backend upstream
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto http
    server upstream {upstream}
"
    );
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config)?;
    let mut cmd = Command::new(program);
    cmd.arg("-db").arg("-f").arg(&file);
    let mut proc = Proc::spawn(&mut cmd, "haproxy", dir)?;
    procs::wait_listening(h1, &mut proc, Duration::from_secs(10))?;
    procs::wait_listening(h2, &mut proc, Duration::from_secs(10))?;
    Ok(Contender {
        kind: Kind::HAProxy,
        proc: Some(proc),
        h1,
        h2,
        about: format!(
            "{}: `nbthread {PROXY_WORKERS}`{}, `http-reuse always`, `option forwardfor` + \
             `X-Forwarded-Host`/`-Proto`, no logging; HTTP/1.1 and h2c (`bind … proto h2`) \
             on two ports",
            // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
            version_of(program, &["-v"])
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            cpu_map_note
        ),
    })
}

/// nginx; `pin` binds each worker process to a CPU of its own (`worker_cpu_affinity auto`).
pub fn nginx(
    program: &Path,
    upstream: SocketAddr,
    dir: &Path,
    pin: bool,
) -> anyhow::Result<Contender> {
    let (h1, h2) = (loopback(procs::free_port()?), loopback(procs::free_port()?));
    let d = dir.display();
    let affinity = pin.then_some("worker_cpu_affinity auto");
    let affinity_line = affinity.map(|l| format!("\n{l};")).unwrap_or_default();
    let affinity_note = affinity.map(|l| format!(", `{l}`")).unwrap_or_default();
    // `daemon off` keeps the master as our child; the workers are its children.
    let config = format!(
        "daemon off;
master_process on;
worker_processes {PROXY_WORKERS};{affinity_line}
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;

events {{
    worker_connections 8000;
}}

http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream upstream {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen {h1};
        listen {h2} http2;
        location / {{
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, config)?;
    let mut cmd = Command::new(program);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&file)
        .arg("-e")
        .arg(dir.join("nginx-error.log"));
    let mut proc = Proc::spawn(&mut cmd, "nginx", dir)?;
    procs::wait_listening(h1, &mut proc, Duration::from_secs(10))?;
    procs::wait_listening(h2, &mut proc, Duration::from_secs(10))?;
    Ok(Contender {
        kind: Kind::Nginx,
        proc: Some(proc),
        h1,
        h2,
        about: format!(
            "{}: `worker_processes {PROXY_WORKERS}`{}, `upstream {{ keepalive 128; }}` + \
             `proxy_http_version 1.1`, `Host` + `X-Forwarded-For`/`-Host`/`-Proto`, \
             `keepalive_requests 1000000`, `access_log off`; \
             HTTP/1.1 and h2c (`listen … http2`) on two ports",
            // "nginx version: nginx/1.22.1"
            version_of(program, &["-v"]).replace("nginx version: ", ""),
            affinity_note
        ),
    })
}

/// One HTTP/1.1 GET with `Connection: close`: status and body.
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
