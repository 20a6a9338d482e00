//! Latency section: what two proxy hops with mTLS add to 1 KiB HTTP requests at 1,000 req/s,
//! measured on a real cluster.
//!
//! The section starts the release `flotilla` binary as child processes: a server on
//! `<net>.1` and two agents, node-1 on `<net>.2` and node-2 on `<net>.3` (each agent hosts its
//! node proxy), with their data directories in a temporary directory. It submits two jobs
//! through the HTTP API (`/v1/jobs/parse`, then `/v1/jobs`):
//!
//! * `echo`, pinned to node-2: `flotilla demo-app`, whose `POST /echo` answers with the
//!   request body, registered as service `echo` with an HTTP check;
//! * `client`, pinned to node-1: a long-running demo-app whose service `client` has the
//!   Connect upstream `echo` on `127.0.0.1:<upstream port>`.
//!
//! Once node-1's proxy lists the upstream listener and a healthy remote `echo` endpoint, and a
//! request through the listener is answered, the same client code measures two paths:
//!
//! * direct: straight to the echo instance's address from the catalog;
//! * mesh: to the upstream listener: app → node-1 proxy → mTLS → node-2 proxy → echo.
//!
//! The load is open loop: request `i` is due at `start + i / rate`, and its latency runs from
//! that scheduled time to the last byte of the answer, so a slow answer that delays the next
//! sends is counted against the path (no coordinated omission). Each request is a `POST /echo`
//! of 1024 bytes answered with the same 1024 bytes, over a pool of keep-alive HTTP/1.1
//! connections (`TCP_NODELAY`), each driven by a blocking thread that writes the request and
//! reads the answer; a scheduler thread hands every due request to the longest-idle
//! connection (or queues it until one is free). The paths alternate over rounds (direct then
//! mesh, mesh then direct, ...), each round a warm-up at the same rate and a recorded period,
//! so background load on a shared machine falls on both alike.
//!
//! Every child is stopped on the way out (a drop guard, so errors and panics too): agents
//! first with SIGTERM (they run with `--stop-tasks-on-shutdown` and stop their workloads),
//! then the server; whatever is still running is killed, and any `demo-app` left on the
//! section's addresses is reported and killed.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Value, json};

/// Target: what the two hops add to the median, in milliseconds.
pub const TARGET_ADDED_P50_MS: f64 = 0.25;
/// Target: what the two hops add to the 99th percentile, in milliseconds.
pub const TARGET_ADDED_P99_MS: f64 = 1.0;
/// Istio's published figure for the same shape (client and server sidecar, 1 kB payload,
/// 1,000 req/s, mTLS): "The Envoy proxy adds 2.76 ms to the 90th percentile latency".
const ISTIO_ADDED_P90_MS: f64 = 2.76;
const ISTIO_SOURCE: &str = "https://istio.io/v1.7/docs/ops/deployment/performance-and-scalability/";

/// Request and answer body size.
const BODY_SIZE: usize = 1024;
/// Proxy admin port (the agent's `--admin-port` default, passed explicitly).
const ADMIN_PORT: u16 = 19000;
/// How long one request may take before it counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of the latency section.
#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Seconds recorded per path (direct and mesh), split evenly over the rounds.
    #[arg(long = "latency-seconds", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Requests per second, on a fixed (open-loop) schedule.
    #[arg(long = "rate", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,
    /// Seconds at the same rate before each recorded round, not recorded.
    #[arg(long = "latency-warmup", default_value_t = 2.0)]
    pub warmup: f64,
    /// Rounds per path; the paths alternate (direct, mesh; mesh, direct; ...).
    #[arg(long = "latency-rounds", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Keep-alive HTTP/1.1 connections per path.
    #[arg(long = "latency-connections", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub connections: u64,
    /// Local port of the client's Connect upstream for `echo` on 127.0.0.1 (the next free
    /// port is used if it is taken).
    #[arg(long = "upstream-port", default_value_t = 25432)]
    pub upstream_port: u16,
    /// Loopback block of the cluster: `.1` is the server, `.2` node-1, `.3` node-2.
    #[arg(long = "latency-net", default_value = "127.0.77.0")]
    pub net: Ipv4Addr,
    /// The `flotilla` binary to run (default: `<workspace>/target/release/flotilla`, built
    /// with `cargo build --release --bin flotilla` if missing).
    #[arg(long = "flotilla-bin", env = "FLOTILLA_BIN")]
    pub flotilla_bin: Option<PathBuf>,
}

impl LatencyArgs {
    fn ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.net.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    fn round_duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds as f64 / self.rounds as f64)
    }

    fn warmup_duration(&self) -> anyhow::Result<Duration> {
        ensure!(
            self.warmup.is_finite() && (0.0..=600.0).contains(&self.warmup),
            "--latency-warmup: {} is not a number of seconds between 0 and 600",
            self.warmup
        );
        Ok(Duration::from_secs_f64(self.warmup))
    }
}

// ---------------------------------------------------------------------------------------------
// Report

/// Latency figures of one set of requests, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Answer complete − scheduled send time, per successful recorded request.
    latency: Vec<u64>,
    /// Answer complete − actual send time (the connection thread's write).
    service: Vec<u64>,
    /// Actual send − scheduled send: the client's own delay (timer, hand-over, queueing).
    lag: Vec<u64>,
    /// Recorded requests that failed.
    errors: u64,
    /// The first few error messages.
    error_messages: Vec<String>,
    /// From the first recorded scheduled send to the last recorded answer.
    window: Duration,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.lag.extend(other.lag);
        self.errors += other.errors;
        for m in other.error_messages {
            if self.error_messages.len() < 5 {
                self.error_messages.push(m);
            }
        }
        self.window += other.window;
    }

    fn sort(&mut self) {
        self.latency.sort_unstable();
        self.service.sort_unstable();
        self.lag.sort_unstable();
    }

    fn ok(&self) -> usize {
        self.latency.len()
    }

    fn achieved_rate(&self) -> f64 {
        if self.window.is_zero() {
            0.0
        } else {
            self.ok() as f64 / self.window.as_secs_f64()
        }
    }
}

/// The `p`-th percentile (0..=100) of sorted values, in milliseconds (nearest rank).
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

/// CPU used by the processes involved while one path ran, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    node1: u64,
    node2: u64,
    echo: u64,
    client: u64,
    /// Requests sent while measuring (warm-up included).
    requests: u64,
}

impl Cpu {
    fn add(&mut self, other: Cpu) {
        self.node1 += other.node1;
        self.node2 += other.node2;
        self.echo += other.echo;
        self.client += other.client;
        self.requests += other.requests;
    }
}

/// One path's results.
#[derive(Debug, Clone)]
pub struct PathReport {
    name: &'static str,
    hops: String,
    all: Samples,
    /// (p50, p99) in ms of each round.
    rounds: Vec<(f64, f64)>,
    cpu: Cpu,
}

/// What the latency section measured.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    args: LatencyArgs,
    bin: PathBuf,
    built: bool,
    upstream: SocketAddr,
    echo: SocketAddr,
    direct: PathReport,
    mesh: PathReport,
    /// `/stats` of node-1 and node-2 before and after the measurement.
    stats_before: [Value; 2],
    stats_after: [Value; 2],
    loadavg_before: String,
    loadavg_after: String,
    ticks_per_sec: u64,
    cleanup: Vec<String>,
}

impl LatencyReport {
    fn added(&self, p: f64) -> f64 {
        percentile_ms(&self.mesh.all.latency, p) - percentile_ms(&self.direct.all.latency, p)
    }

    fn errors(&self) -> u64 {
        self.direct.all.errors + self.mesh.all.errors
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs the section: starts the cluster, measures both paths, stops everything.
pub fn run(args: &LatencyArgs) -> anyhow::Result<LatencyReport> {
    let warmup = args.warmup_duration()?;
    let (bin, built) = flotilla_test_support::release_flotilla(args.flotilla_bin.as_deref())
        .map_err(anyhow::Error::msg)?;
    let upstream_port = free_upstream_port(args.upstream_port)?;
    let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
    preflight(args)?;

    let mut cluster = Cluster::start(&bin, args)?;
    let result = measure(args, &mut cluster, warmup, upstream);
    let cleanup = cluster.shutdown();
    if result.is_err() {
        for note in &cleanup {
            eprintln!("latency: {note}");
        }
    }
    let mut report = result?;
    report.bin = bin;
    report.built = built;
    report.cleanup = cleanup;
    Ok(report)
}

fn measure(
    args: &LatencyArgs,
    cluster: &mut Cluster,
    warmup: Duration,
    upstream: SocketAddr,
) -> anyhow::Result<LatencyReport> {
    let api = SocketAddr::from((args.ip(1), 4646));
    let admin = [
        SocketAddr::from((args.ip(2), ADMIN_PORT)),
        SocketAddr::from((args.ip(3), ADMIN_PORT)),
    ];

    // Both nodes ready.
    let nodes = cluster.wait_for("node-1 and node-2 ready", Duration::from_secs(60), || {
        let nodes = get_json(api, "/v1/nodes")?;
        let ready: Vec<(String, String)> = nodes
            .as_array()
            .context("/v1/nodes is not an array")?
            .iter()
            .filter(|n| n["Status"] == "ready")
            .map(|n| {
                (
                    n["Name"].as_str().unwrap_or("").to_owned(),
                    n["ID"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let has = |name: &str| ready.iter().any(|(n, _)| n == name);
        Ok((has("node-1") && has("node-2")).then_some(ready))
    })?;
    let node2_id = nodes
        .iter()
        .find(|(n, _)| n == "node-2")
        .map(|(_, id)| id.clone())
        .unwrap_or_default();
    eprintln!("latency: server and both agents up; submitting the jobs");

    submit(api, &echo_job())?;
    submit(api, &client_job(upstream.port()))?;

    // The echo instance, healthy in the catalog.
    let echo = cluster.wait_for("a passing `echo` instance", Duration::from_secs(90), || {
        let regs = get_json(api, "/v1/service/echo")?;
        let Some(reg) = regs
            .as_array()
            .and_then(|a| a.iter().find(|r| r["Status"] == "passing"))
        else {
            return Ok(None);
        };
        ensure!(
            reg["NodeID"] == node2_id.as_str(),
            "echo runs on node {}, not node-2 ({node2_id})",
            reg["NodeID"]
        );
        let address = reg["Address"].as_str().context("echo has no Address")?;
        let port = reg["Port"].as_u64().context("echo has no Port")?;
        let addr: SocketAddr = format!("{address}:{port}")
            .parse()
            .with_context(|| format!("echo's address {address}:{port}"))?;
        Ok(Some(addr))
    })?;
    // The same request both paths will send, straight to echo first (a stale binary without
    // `POST /echo` shows here).
    let request = Request::new();
    cluster.wait_for(
        "echo to answer POST /echo directly",
        Duration::from_secs(30),
        || {
            probe(echo, &request).map(|()| Some(())).map_err(|e| {
                anyhow!(
                    "{e} (a `flotilla` binary built before demo-app had POST /echo? rebuild it)"
                )
            })
        },
    )?;

    // node-1's proxy: the upstream listener and a healthy remote echo endpoint.
    let bind = upstream.to_string();
    cluster.wait_for(
        "node-1's proxy to list the upstream listener and a healthy echo endpoint",
        Duration::from_secs(90),
        || {
            let dump = get_json(admin[0], "/config_dump")?;
            let listener = dump["listeners"].as_array().is_some_and(|ls| {
                ls.iter()
                    .any(|l| l["destination"] == "echo" && l["bind"] == bind.as_str())
            });
            let endpoint = dump["clusters"].as_array().is_some_and(|cs| {
                cs.iter().filter(|c| c["name"] == "echo").any(|c| {
                    c["endpoints"].as_array().is_some_and(|es| {
                        es.iter().any(|e| {
                            e["healthy"] == true
                                && e["local"] == false
                                && e["address"] == echo.to_string().as_str()
                                && e["identity"].is_string()
                        })
                    })
                })
            });
            Ok((listener && endpoint).then_some(()))
        },
    )?;
    cluster.wait_for(
        "a request through the upstream listener to be answered",
        Duration::from_secs(60),
        || Ok(probe(upstream, &request).is_ok().then_some(())),
    )?;
    eprintln!(
        "latency: mesh ready: direct {echo}, upstream listener {upstream}; measuring {} s per path at {} req/s",
        args.seconds, args.rate
    );

    let stats_before = [get_json(admin[0], "/stats")?, get_json(admin[1], "/stats")?];
    let loadavg_before = loadavg();
    let echo_pid = cluster.echo_pid(echo)?;

    // Both pools stay connected across the rounds.
    let connections = args.connections as usize;
    let request = Arc::new(request);
    let direct_pool = Pool::connect(echo, connections, request.clone())?;
    let mesh_pool = Pool::connect(upstream, connections, request)?;
    set_precise_timers();

    let mut direct = PathReport {
        name: "direct",
        hops: format!("app → echo ({echo})"),
        all: Samples::default(),
        rounds: Vec::new(),
        cpu: Cpu::default(),
    };
    let mut mesh = PathReport {
        name: "mesh",
        hops: format!("app → {upstream} node-1 proxy → mTLS → node-2 proxy → echo"),
        all: Samples::default(),
        rounds: Vec::new(),
        cpu: Cpu::default(),
    };
    let record = args.round_duration();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [(&direct_pool, &mut direct), (&mesh_pool, &mut mesh)]
        } else {
            [(&mesh_pool, &mut mesh), (&direct_pool, &mut direct)]
        };
        for (pool, path) in order {
            let before = cluster.cpu_ticks(echo_pid);
            let mut samples = pool.run(args.rate, warmup, record)?;
            let after = cluster.cpu_ticks(echo_pid);
            samples.sort();
            let (p50, p99) = (
                percentile_ms(&samples.latency, 50.0),
                percentile_ms(&samples.latency, 99.0),
            );
            eprintln!(
                "  round {} {}: {} ok, {} errors, p50 {p50:.3} ms, p99 {p99:.3} ms",
                round + 1,
                path.name,
                samples.ok(),
                samples.errors
            );
            path.rounds.push((p50, p99));
            path.all.merge(samples);
            path.cpu.add(Cpu {
                node1: after.node1.saturating_sub(before.node1),
                node2: after.node2.saturating_sub(before.node2),
                echo: after.echo.saturating_sub(before.echo),
                client: after.client.saturating_sub(before.client),
                requests: requests_in(args.rate, warmup) + requests_in(args.rate, record),
            });
        }
    }
    direct.all.sort();
    mesh.all.sort();
    drop(direct_pool);
    drop(mesh_pool);

    let stats_after = [get_json(admin[0], "/stats")?, get_json(admin[1], "/stats")?];
    Ok(LatencyReport {
        args: args.clone(),
        bin: PathBuf::new(),
        built: false,
        upstream,
        echo,
        direct,
        mesh,
        stats_before,
        stats_after,
        loadavg_before,
        loadavg_after: loadavg(),
        ticks_per_sec: rustix::param::clock_ticks_per_second(),
        cleanup: Vec::new(),
    })
}

fn echo_job() -> String {
    r#"job "echo" {
  datacenters = ["*"]
  type        = "service"

  constraint {
    attribute = "${node.unique.name}"
    value     = "node-2"
  }

  group "echo" {
    count = 1

    network {
      port "http" {}
    }

    service {
      name = "echo"
      port = "http"

      check {
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
      }
    }

    task "echo" {
      driver = "raw_exec"

      config {
        command = "flotilla"
        args    = ["demo-app", "--listen", "${NOMAD_ADDR_http}", "--node", "${node.unique.name}"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
"#
    .to_owned()
}

fn client_job(upstream_port: u16) -> String {
    format!(
        r#"job "client" {{
  datacenters = ["*"]
  type        = "service"

  constraint {{
    attribute = "${{node.unique.name}}"
    value     = "node-1"
  }}

  group "client" {{
    count = 1

    network {{
      port "http" {{}}
    }}

    service {{
      name = "client"
      port = "http"

      connect {{
        sidecar_service {{
          proxy {{
            upstreams {{
              destination_name = "echo"
              local_bind_port  = {upstream_port}
            }}
          }}
        }}
      }}
    }}

    task "app" {{
      driver = "raw_exec"

      config {{
        command = "flotilla"
        args    = ["demo-app", "--listen", "${{NOMAD_ADDR_http}}", "--node", "${{node.unique.name}}"]
      }}

      resources {{
        cpu    = 100
        memory = 64
      }}
    }}
  }}
}}
"#
    )
}

/// Parses `hcl` with the server (`/v1/jobs/parse`) and registers the job (`/v1/jobs`).
fn submit(api: SocketAddr, hcl: &str) -> anyhow::Result<()> {
    let parse = json!({ "JobHCL": hcl, "Canonicalize": true });
    let (status, body) = http(api, "POST", "/v1/jobs/parse", Some(&parse))?;
    ensure!(status == 200, "/v1/jobs/parse answered {status}: {body}");
    let job: Value = serde_json::from_str(&body).context("/v1/jobs/parse: not JSON")?;
    let id = job["ID"].as_str().unwrap_or("?").to_owned();
    let (status, body) = http(api, "POST", "/v1/jobs", Some(&json!({ "Job": job })))?;
    ensure!(status == 200, "registering job {id}: {status}: {body}");
    Ok(())
}

/// One request on a new connection; Ok when the echo came back.
fn probe(addr: SocketAddr, request: &Request) -> anyhow::Result<()> {
    let mut conn = Conn::connect(addr)?;
    conn.exchange(request).map_err(|e| anyhow!("{addr}: {e}"))
}

fn requests_in(rate: u64, d: Duration) -> u64 {
    (d.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
}

/// Asks the kernel for precise sleeps on this thread (the scheduler's): the default 50 µs
/// timer slack would be added to every send time.
fn set_precise_timers() {
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// The request every path sends, and the answer body it expects.
#[derive(Debug)]
struct Request {
    bytes: Vec<u8>,
    body: Vec<u8>,
}

impl Request {
    fn new() -> Request {
        let body: Vec<u8> = (0..BODY_SIZE).map(|i| (i * 31 % 251) as u8).collect();
        let mut bytes = format!(
            "POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {BODY_SIZE}\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        Request { bytes, body }
    }
}

/// A keep-alive HTTP/1.1 connection with a blocking socket.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Writes the request (one write) and reads the whole answer; checks it is a 200 carrying
    /// the request's body back, on a connection that stays open.
    fn exchange(&mut self, request: &Request) -> Result<(), String> {
        self.stream
            .write_all(&request.bytes)
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("answer head over 64 KiB".into());
            }
            self.read_more(&mut chunk)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP/1.1 answer: {:?}", first_line(&head)))?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                return Err(format!("the server closes the connection ({status})"));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(format!("unexpected transfer-encoding {value}"));
            }
        }
        let length = length.ok_or_else(|| format!("answer {status} without content-length"))?;
        while self.buf.len() < head_end + length {
            self.read_more(&mut chunk)?;
        }
        let body = &self.buf[head_end..head_end + length];
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ));
        }
        if body != request.body.as_slice() {
            return Err(format!(
                "the answer is not the echo of the request ({length} bytes: {:?})",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            ));
        }
        if self.buf.len() != head_end + length {
            return Err("bytes after the answer".into());
        }
        Ok(())
    }

    fn read_more(&mut self, chunk: &mut [u8]) -> Result<(), String> {
        match self.stream.read(chunk) {
            Ok(0) => Err("connection closed before the whole answer".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// One request's outcome, from a connection thread.
struct Done {
    conn: usize,
    scheduled: Instant,
    sent: Instant,
    finished: Instant,
    result: Result<(), String>,
}

/// Connections to one address, each with its own thread.
struct Pool {
    addr: SocketAddr,
    jobs: Vec<mpsc::Sender<Instant>>,
    done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn connect(addr: SocketAddr, n: usize, request: Arc<Request>) -> anyhow::Result<Pool> {
        let (done_tx, done) = mpsc::channel();
        let mut jobs = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for id in 0..n {
            let conn = Conn::connect(addr)?;
            let (job_tx, job_rx) = mpsc::channel::<Instant>();
            let (done_tx, request) = (done_tx.clone(), request.clone());
            let thread = std::thread::Builder::new()
                .name(format!("latency-conn-{id}"))
                .spawn(move || connection(id, addr, conn, &request, &job_rx, &done_tx))
                .context("starting a connection thread")?;
            jobs.push(job_tx);
            threads.push(thread);
        }
        Ok(Pool {
            addr,
            jobs,
            done,
            threads,
        })
    }

    /// Sends `rate` requests a second for `warmup` + `record`; returns the recorded ones.
    fn run(&self, rate: u64, warmup: Duration, record: Duration) -> anyhow::Result<Samples> {
        let n_warm = requests_in(rate, warmup);
        let total = n_warm + requests_in(rate, record).max(1);
        let start = Instant::now() + Duration::from_millis(5);
        let due = |i: u64| {
            start + Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(rate)) as u64)
        };
        let record_from = due(n_warm);
        let mut free: VecDeque<usize> = (0..self.jobs.len()).collect();
        let mut backlog: VecDeque<Instant> = VecDeque::new();
        let (mut next, mut in_flight) = (0u64, 0usize);
        let mut samples = Samples::default();
        let mut last_finished = record_from;
        loop {
            let now = Instant::now();
            while next < total && due(next) <= now {
                backlog.push_back(due(next));
                next += 1;
            }
            while !backlog.is_empty() {
                let Some(conn) = free.pop_front() else { break };
                let scheduled = backlog.pop_front().context("backlog")?;
                self.jobs[conn]
                    .send(scheduled)
                    .map_err(|_| anyhow!("connection thread {conn} to {} is gone", self.addr))?;
                in_flight += 1;
            }
            if next == total && backlog.is_empty() && in_flight == 0 {
                break;
            }
            let wait = if next < total {
                due(next).saturating_duration_since(now)
            } else {
                IO_TIMEOUT * 3
            };
            let done = match self.done.recv_timeout(wait) {
                Ok(d) => d,
                Err(RecvTimeoutError::Timeout) if next < total => continue,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{in_flight} request(s) to {} never finished", self.addr)
                }
                Err(RecvTimeoutError::Disconnected) => bail!("every connection thread is gone"),
            };
            let mut handle = |d: Done| {
                in_flight -= 1;
                free.push_back(d.conn);
                if d.scheduled < record_from {
                    return;
                }
                last_finished = last_finished.max(d.finished);
                match d.result {
                    Ok(()) => {
                        samples.latency.push(nanos(d.finished - d.scheduled));
                        samples.service.push(nanos(d.finished - d.sent));
                        samples
                            .lag
                            .push(nanos(d.sent.saturating_duration_since(d.scheduled)));
                    }
                    Err(e) => {
                        samples.errors += 1;
                        if samples.error_messages.len() < 5 {
                            samples.error_messages.push(e);
                        }
                    }
                }
            };
            handle(done);
            while let Ok(d) = self.done.try_recv() {
                handle(d);
            }
        }
        samples.window = last_finished.saturating_duration_since(record_from);
        Ok(samples)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channels ends the threads (each after its request in flight).
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A connection thread: one request at a time, as the scheduler hands them over. A failed
/// request closes the connection; the next one opens a new one.
fn connection(
    id: usize,
    addr: SocketAddr,
    conn: Conn,
    request: &Request,
    jobs: &mpsc::Receiver<Instant>,
    done: &mpsc::Sender<Done>,
) {
    let mut conn = Some(conn);
    while let Ok(scheduled) = jobs.recv() {
        let sent = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => c.exchange(request),
            None => match Conn::connect(addr) {
                Ok(c) => conn.insert(c).exchange(request),
                Err(e) => Err(format!("{e:#}")),
            },
        };
        let finished = Instant::now();
        if result.is_err() {
            conn = None;
        }
        let outcome = Done {
            conn: id,
            scheduled,
            sent,
            finished,
            result,
        };
        if done.send(outcome).is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// The first free port on 127.0.0.1 from `from`.
fn free_upstream_port(from: u16) -> anyhow::Result<u16> {
    for port in from..=from.saturating_add(200) {
        if port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            if port != from {
                eprintln!("latency: 127.0.0.1:{from} is taken; the upstream uses {port}");
            }
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 from {from} for the upstream listener")
}

/// Fails early if a port the cluster needs is taken (a previous run still up?).
fn preflight(args: &LatencyArgs) -> anyhow::Result<()> {
    ensure!(
        args.net.octets()[0] == 127,
        "--latency-net {} is not a loopback block",
        args.net
    );
    let mut wanted = vec![(args.ip(1), 4646), (args.ip(1), 4647)];
    for host in [2, 3] {
        wanted.extend([
            (args.ip(host), 8080),
            (args.ip(host), 15008),
            (args.ip(host), ADMIN_PORT),
        ]);
    }
    for (ip, port) in wanted {
        TcpListener::bind((ip, port)).with_context(|| {
            format!(
                "{ip}:{port} is not free (another flotilla or bench running?); pick another \
                 block with --latency-net"
            )
        })?;
    }
    Ok(())
}

/// A child process whose output goes to a log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl Proc {
    fn spawn(bin: &Path, name: &str, args: &[String], dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(args)
            // Plain log files (tracing's formatter honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            exited: false,
        })
    }

    fn running(&mut self) -> bool {
        if !self.exited && matches!(self.child.try_wait(), Ok(Some(_))) {
            self.exited = true;
        }
        !self.exited
    }

    fn term(&mut self) {
        if self.running()
            && let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Waits up to `grace` for the process to exit, then kills it. Returns whether it exited
    /// by itself.
    fn wait(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
        false
    }

    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The server and the two agents; stopped when dropped.
struct Cluster {
    dir: Option<tempfile::TempDir>,
    /// Server first, then node-1 and node-2.
    procs: Vec<Proc>,
    /// The addresses of the nodes, to find workloads left behind.
    node_ips: [Ipv4Addr; 2],
    stopped: bool,
}

impl Cluster {
    fn start(bin: &Path, args: &LatencyArgs) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-latency-")
            .tempdir()
            .context("creating a temporary directory")?;
        let path = dir.path().to_path_buf();
        let mut cluster = Cluster {
            dir: Some(dir),
            procs: Vec::new(),
            node_ips: [args.ip(2), args.ip(3)],
            stopped: false,
        };
        let rpc = SocketAddr::from((args.ip(1), 4647));
        let server: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            path.join("server").display().to_string(),
            "--http-addr".into(),
            SocketAddr::from((args.ip(1), 4646)).to_string(),
            "--rpc-addr".into(),
            rpc.to_string(),
            "--default-intention".into(),
            "allow".into(),
        ];
        cluster
            .procs
            .push(Proc::spawn(bin, "server", &server, &path)?);
        for i in 1..=2u8 {
            let agent: Vec<String> = vec![
                "agent".into(),
                "--server".into(),
                format!("http://{rpc}"),
                "--data-dir".into(),
                path.join(format!("agent-{i}")).display().to_string(),
                "--name".into(),
                format!("node-{i}"),
                "--address".into(),
                args.ip(1 + i).to_string(),
                "--admin-port".into(),
                ADMIN_PORT.to_string(),
                "--stop-tasks-on-shutdown".into(),
            ];
            cluster
                .procs
                .push(Proc::spawn(bin, &format!("agent-{i}"), &agent, &path)?);
        }
        Ok(cluster)
    }

    /// Polls `check` every 100 ms until it gives a value; fails after `timeout` (with the last
    /// error seen) or as soon as a process of the cluster has exited, with the logs' ends.
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<anyhow::Error> = None;
        loop {
            match check() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
            if let Some(i) = self.procs.iter_mut().position(|p| !p.running()) {
                let name = self.procs[i].name.clone();
                bail!(
                    "{name} exited while waiting for {what}\n{}",
                    self.log_tails(30)
                );
            }
            if Instant::now() > deadline {
                let why = last
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}{why}\n{}",
                    self.log_tails(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let _ = writeln!(
                out,
                "----- {} ({}) -----\n{}",
                p.name,
                p.log.display(),
                p.tail(lines)
            );
        }
        out
    }

    /// The echo workload's process (a `demo-app` listening on `echo`).
    fn echo_pid(&self, echo: SocketAddr) -> anyhow::Result<u32> {
        let pids = pids_matching(&["demo-app", &format!("{echo}")]);
        match pids.as_slice() {
            [pid] => Ok(*pid),
            [] => bail!("no demo-app process listening on {echo}"),
            more => bail!("several demo-app processes listening on {echo}: {more:?}"),
        }
    }

    fn cpu_ticks(&self, echo_pid: u32) -> Cpu {
        let of = |pid: u32| cpu_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0);
        Cpu {
            node1: of(self.procs[1].child.id()),
            node2: of(self.procs[2].child.id()),
            echo: of(echo_pid),
            client: cpu_ticks("/proc/self/stat").unwrap_or(0),
            requests: 0,
        }
    }

    /// Stops the agents (which stop their workloads), then the server; kills what is left.
    /// Returns what happened, for the report.
    fn shutdown(&mut self) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let mut notes = Vec::new();
        for p in self.procs.iter_mut().skip(1) {
            p.term();
        }
        for p in self.procs.iter_mut().skip(1) {
            if !p.wait(Duration::from_secs(60)) {
                notes.push(format!(
                    "{} did not stop within 60 s after SIGTERM: killed",
                    p.name
                ));
            }
        }
        if let Some(server) = self.procs.first_mut() {
            server.term();
            if !server.wait(Duration::from_secs(15)) {
                notes.push("server did not stop within 15 s after SIGTERM: killed".into());
            }
        }
        // Workloads left behind: those of our nodes' addresses, and anything running in our
        // data directories.
        let mut left: Vec<u32> = Vec::new();
        for ip in self.node_ips {
            left.extend(pids_matching(&["demo-app", &format!("{ip}:")]));
        }
        if let Some(dir) = &self.dir {
            left.extend(pids_in_dir(dir.path()));
        }
        left.sort_unstable();
        left.dedup();
        if left.is_empty() {
            notes.push("all children stopped; no demo-app process left".into());
        } else {
            notes.push(format!(
                "processes left after the agents stopped, killed: {left:?}"
            ));
            for pid in left {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        notes
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for note in self.shutdown() {
            eprintln!("latency: {note}");
        }
    }
}

/// utime + stime of a process (from its `/proc/<pid>/stat`), in clock ticks.
fn cpu_ticks(stat_path: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(stat_path)?;
    // "pid (comm) state ...": comm may hold anything, so split after its last ')'.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    Ok(field(11)? + field(12)?)
}

/// Processes whose command line contains every one of `needles`.
fn pids_matching(needles: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    proc_entries()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
                needles.iter().all(|n| cmd.contains(n))
            })
        })
        .collect()
}

/// Processes whose working directory is inside `dir`.
fn pids_in_dir(dir: &Path) -> Vec<u32> {
    proc_entries()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

fn proc_entries() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

// ---------------------------------------------------------------------------------------------
// A minimal blocking HTTP client for the API and the proxies' admin endpoints

/// One request on a new connection (`Connection: close`); the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if body.is_some() {
        let _ = write!(
            req,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        );
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("{method} http://{addr}{path}: reading the answer"))?;
    let head_end = find(&raw, b"\r\n\r\n")
        .map(|i| i + 4)
        .with_context(|| format!("{method} http://{addr}{path}: no complete answer"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| {
            format!(
                "{method} http://{addr}{path}: bad status line {:?}",
                first_line(&head)
            )
        })?;
    let chunked = head.split("\r\n").any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(&raw[head_end..])
            .with_context(|| format!("{method} http://{addr}{path}: bad chunked body"))?
    } else {
        raw[head_end..].to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("chunk size {size_hex:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(raw.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let (status, body) = http(addr, "GET", path, None)?;
    ensure!(
        status == 200,
        "GET http://{addr}{path}: {status}: {}",
        body.trim()
    );
    serde_json::from_str(&body).with_context(|| format!("GET http://{addr}{path}: not JSON"))
}

// ---------------------------------------------------------------------------------------------
// Printing

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn signed_ms(v: f64) -> String {
    format!("{v:+.3}")
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// Prints the report as markdown.
pub fn print(r: &LatencyReport) {
    let a = &r.args;
    let round = a.round_duration().as_secs_f64();
    println!(
        "## Latency: 1 KiB HTTP requests at {} req/s, two proxy hops with mTLS vs direct",
        a.rate
    );
    println!();
    println!(
        "A real cluster of `{}` processes{}: server on {}, node-1 on {}, node-2 on {}. \
         `echo` is `flotilla demo-app` on node-2 (`POST /echo` answers with the body); the \
         job `client` on node-1 has the Connect upstream `echo` on {}.",
        r.bin.display(),
        if r.built { " (built by this run)" } else { "" },
        a.ip(1),
        a.ip(2),
        a.ip(3),
        r.upstream
    );
    println!();
    println!(
        "Load: open loop, {} req/s on a fixed schedule, latency from each request's scheduled \
         send time to the last byte of its answer (no coordinated omission); `POST /echo` with \
         {BODY_SIZE} bytes answered with the same {BODY_SIZE} bytes, over {} keep-alive \
         HTTP/1.1 connections per path (blocking client, TCP_NODELAY). {} alternating round(s) \
         per path, each {:.1} s warm-up + {round:.1} s recorded: {} s recorded per path.",
        a.rate, a.connections, a.rounds, a.warmup, a.seconds
    );
    println!();
    println!(
        "| path | hops | recorded | errors | achieved req/s | p50 ms | p90 ms | p99 ms | max ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in [&r.direct, &r.mesh] {
        let l = &p.all.latency;
        println!(
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            p.name,
            p.hops,
            p.all.ok() + p.all.errors as usize,
            p.all.errors,
            p.all.achieved_rate(),
            ms(percentile_ms(l, 50.0)),
            ms(percentile_ms(l, 90.0)),
            ms(percentile_ms(l, 99.0)),
            ms(percentile_ms(l, 100.0)),
        );
    }
    println!(
        "| **added (mesh − direct)** | two hops, mTLS between the proxies | | | | **{}** | **{}** | **{}** | |",
        signed_ms(r.added(50.0)),
        signed_ms(r.added(90.0)),
        signed_ms(r.added(99.0)),
    );
    println!();
    let (p50, p90, p99) = (r.added(50.0), r.added(90.0), r.added(99.0));
    println!(
        "- added p50 {} ms (target ≤ {TARGET_ADDED_P50_MS} ms): {}",
        signed_ms(p50),
        verdict(p50 <= TARGET_ADDED_P50_MS)
    );
    println!(
        "- added p99 {} ms (target ≤ {TARGET_ADDED_P99_MS} ms): {}",
        signed_ms(p99),
        verdict(p99 <= TARGET_ADDED_P99_MS)
    );
    println!(
        "- errors {} (must be 0): {}",
        r.errors(),
        verdict(r.errors() == 0)
    );
    println!(
        "- for context: Istio 1.7.4 publishes \"the Envoy proxy adds {ISTIO_ADDED_P90_MS} ms \
         to the 90th percentile latency\" for the same shape (client and server sidecars, \
         1 kB payload, 1,000 req/s, mTLS; {ISTIO_SOURCE}); added p90 here: {} ms.",
        signed_ms(p90)
    );
    for p in [&r.direct, &r.mesh] {
        if !p.all.error_messages.is_empty() {
            println!(
                "- {} errors, first ones: {}",
                p.name,
                p.all.error_messages.join("; ")
            );
        }
    }
    println!();

    println!(
        "Where the time goes (ms): service = answer − actual send; lag = actual send − scheduled (the client's timer and hand-over, the same code on both paths)."
    );
    println!();
    println!("| path | service p50 | service p90 | service p99 | lag p50 | lag p99 | lag max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for p in [&r.direct, &r.mesh] {
        let (s, g) = (&p.all.service, &p.all.lag);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            ms(percentile_ms(s, 50.0)),
            ms(percentile_ms(s, 90.0)),
            ms(percentile_ms(s, 99.0)),
            ms(percentile_ms(g, 50.0)),
            ms(percentile_ms(g, 99.0)),
            ms(percentile_ms(g, 100.0)),
        );
    }
    println!();

    let per_round = |p: &PathReport| {
        p.rounds
            .iter()
            .map(|(p50, p99)| format!("{p50:.3}/{p99:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("Each round, p50/p99 ms:");
    println!("- direct: {}", per_round(&r.direct));
    println!("- mesh: {}", per_round(&r.mesh));
    println!();

    println!(
        "CPU while each path ran (warm-ups included), ms per 1,000 requests (utime+stime from \
         /proc, {} ticks/s; the agents also run their control-plane work, which the direct row \
         shows as a baseline):",
        r.ticks_per_sec
    );
    println!();
    println!(
        "| path | node-1 agent + proxy | node-2 agent + proxy | echo app | client (this bench) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for p in [&r.direct, &r.mesh] {
        let per_k = |ticks: u64| {
            if p.cpu.requests == 0 || r.ticks_per_sec == 0 {
                f64::NAN
            } else {
                ticks as f64 * 1000.0 / r.ticks_per_sec as f64 / p.cpu.requests as f64 * 1000.0
            }
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.name,
            per_k(p.cpu.node1),
            per_k(p.cpu.node2),
            per_k(p.cpu.echo),
            per_k(p.cpu.client)
        );
    }
    println!();

    println!("Proxy counters (`/stats` on the admin port), before → after the measurement:");
    println!();
    println!("| counter | node-1 (client side) | node-2 (echo side) |");
    println!("|---|---:|---:|");
    for key in [
        "tls_handshakes_full",
        "tls_handshakes_resumed",
        "tls_handshakes_failed",
        "outbound_connections",
        "inbound_tunnels",
        "inbound_handshakes_failed",
        "forwarded_copy",
        "forwarded_splice",
        "outbound_failed",
    ] {
        let cell = |i: usize| {
            let v = |s: &Value| {
                s[key]
                    .as_u64()
                    .map_or_else(|| "?".to_owned(), |n| n.to_string())
            };
            format!("{} → {}", v(&r.stats_before[i]), v(&r.stats_after[i]))
        };
        println!("| {key} | {} | {} |", cell(0), cell(1));
    }
    println!();
    println!(
        "Load average (1, 5, 15 min) before: {}; after: {}. Echo instance: {}.",
        r.loadavg_before, r.loadavg_after, r.echo
    );
    for note in &r.cleanup {
        println!("Cleanup: {note}.");
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&v, 0.0), 1.0);
        assert!(percentile_ms(&[], 50.0).is_nan());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_err());
    }

    #[test]
    fn requests_per_period() {
        assert_eq!(requests_in(1000, Duration::from_secs(2)), 2000);
        assert_eq!(requests_in(1000, Duration::from_millis(2500)), 2500);
    }

    /// The load generator against a local echo server: every request answered, none lost.
    #[test]
    fn pool_against_a_local_echo() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { break };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n").map(|i| i + 4) else {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        if buf.len() < end + BODY_SIZE {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        }
                        let body = buf[end..end + BODY_SIZE].to_vec();
                        buf.drain(..end + BODY_SIZE);
                        let mut answer =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY_SIZE}\r\n\r\n")
                                .into_bytes();
                        answer.extend_from_slice(&body);
                        if s.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let pool = Pool::connect(addr, 3, Arc::new(Request::new())).unwrap();
        let mut samples = pool
            .run(2000, Duration::from_millis(100), Duration::from_millis(250))
            .unwrap();
        samples.sort();
        assert_eq!(samples.errors, 0, "{:?}", samples.error_messages);
        assert_eq!(samples.ok(), 500);
        assert!(
            samples.achieved_rate() > 1000.0,
            "{}",
            samples.achieved_rate()
        );
    }
}
