//! The optional access log: one JSON object per request and line, with Envoy-style fields.
//!
//! [`AccessLog::log`] never blocks the request path: it serializes the entry on the caller's
//! thread and hands the line to a bounded queue ([`QUEUE_CAPACITY`] lines). A writer thread
//! drains the queue into a buffered stdout or file, flushing when it goes idle. When the queue
//! is full (or the writer fails) the line is dropped and counted ([`AccessLog::dropped`], and
//! `flotilla_proxy_access_log_dropped_total` on `/metrics`).
//!
//! ```json
//! {"start_time":"2026-05-01T12:00:00.123Z","method":"GET","path":"/api","protocol":"HTTP/1.1",
//!  "status":200,"response_flags":"","bytes_received":0,"bytes_sent":5,"duration_ms":1.234,
//!  "upstream_cluster":"hello","upstream_host":"10.0.0.7:8080","route":"default","attempts":1,
//!  "downstream_remote_address":"10.0.0.1:51234","user_agent":"curl/8.0","request_id":"abc"}
//! ```

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use http::{Method, Request, StatusCode, Version, header};
use serde::{Serialize, Serializer};
use tracing::warn;

/// Lines the queue holds before [`AccessLog::log`] starts dropping.
pub const QUEUE_CAPACITY: usize = 8192;

/// How long written lines may sit in the buffer while the writer is idle.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// The process's standard output.
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

impl fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("stdout"),
            AccessLogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a request did not get a normal upstream answer, as Envoy's short response flags. Several
/// can be combined with `|`; they print comma-separated, and as `""` when none is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No flag.
    pub const NONE: ResponseFlags = ResponseFlags(0);
    /// `UF`: connecting to the upstream failed.
    pub const UPSTREAM_CONNECT_FAILURE: ResponseFlags = ResponseFlags(1);
    /// `UO`: a circuit breaker overflowed.
    pub const UPSTREAM_OVERFLOW: ResponseFlags = ResponseFlags(1 << 1);
    /// `URX`: the retry limit was reached.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: ResponseFlags = ResponseFlags(1 << 2);
    /// `UT`: the upstream request timed out.
    pub const UPSTREAM_REQUEST_TIMEOUT: ResponseFlags = ResponseFlags(1 << 3);
    /// `NR`: no route matched.
    pub const NO_ROUTE_FOUND: ResponseFlags = ResponseFlags(1 << 4);
    /// `UH`: the cluster had no healthy endpoint.
    pub const NO_HEALTHY_UPSTREAM: ResponseFlags = ResponseFlags(1 << 5);
    /// `RL`: a rate limit refused the request.
    pub const RATE_LIMITED: ResponseFlags = ResponseFlags(1 << 6);

    const NAMES: [(ResponseFlags, &'static str); 7] = [
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Self::NO_ROUTE_FOUND, "NR"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::RATE_LIMITED, "RL"),
    ];

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: ResponseFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl Serialize for ResponseFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One request, as logged. Build it with [`RequestHead::entry`] and fill in what is known.
#[derive(Debug, Clone)]
pub struct AccessEntry<'a> {
    /// When the request was received.
    pub start_time: SystemTime,
    /// The request method.
    pub method: &'a Method,
    /// The request path; a query, if given, is not logged.
    pub path: &'a str,
    /// The downstream HTTP version.
    pub protocol: Version,
    /// The status answered downstream.
    pub status: StatusCode,
    /// Why the request did not get a normal upstream answer.
    pub response_flags: ResponseFlags,
    /// Request body bytes received (0 if unknown).
    pub bytes_received: u64,
    /// Response body bytes sent (0 if unknown).
    pub bytes_sent: u64,
    /// From receiving the request to the end of the response (or its head, if that is what the
    /// caller measured).
    pub duration: Duration,
    /// The cluster the request was routed to.
    pub upstream_cluster: Option<&'a str>,
    /// The endpoint of the last attempt.
    pub upstream_host: Option<SocketAddr>,
    /// The route that matched.
    pub route: Option<&'a str>,
    /// Upstream attempts made (0 when none was).
    pub attempts: u32,
    /// The client's address.
    pub downstream_remote_address: Option<SocketAddr>,
    /// The `user-agent` header.
    pub user_agent: Option<&'a str>,
    /// The `x-request-id` header.
    pub request_id: Option<&'a str>,
}

/// What the access log needs of a request, captured (cheaply: shared buffers) before the
/// request is forwarded.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// When the request was received (wall clock, for `start_time`).
    pub start_time: SystemTime,
    /// When the request was received (monotonic, for `duration_ms`).
    pub started: Instant,
    /// The request method.
    pub method: Method,
    /// The request URI (the path is logged without the query).
    pub uri: http::Uri,
    /// The downstream HTTP version.
    pub version: Version,
    /// The `user-agent` header.
    pub user_agent: Option<header::HeaderValue>,
    /// The `x-request-id` header.
    pub request_id: Option<header::HeaderValue>,
}

impl RequestHead {
    /// Captures `req`'s head, received now.
    pub fn capture<B>(req: &Request<B>) -> RequestHead {
        RequestHead {
            start_time: SystemTime::now(),
            started: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            request_id: req.headers().get("x-request-id").cloned(),
        }
    }

    /// An entry for this request answered with `status` now; the other fields are empty.
    pub fn entry(&self, status: StatusCode) -> AccessEntry<'_> {
        AccessEntry {
            start_time: self.start_time,
            method: &self.method,
            path: self.uri.path(),
            protocol: self.version,
            status,
            response_flags: ResponseFlags::NONE,
            bytes_received: 0,
            bytes_sent: 0,
            duration: self.started.elapsed(),
            upstream_cluster: None,
            upstream_host: None,
            route: None,
            attempts: 0,
            downstream_remote_address: None,
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
        }
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/unknown",
    }
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&DateTime::<Utc>::from(*t).to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The serialized shape of an [`AccessEntry`].
#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "rfc3339")]
    start_time: SystemTime,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    response_flags: ResponseFlags,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: f64,
    upstream_cluster: Option<&'a str>,
    upstream_host: Option<SocketAddr>,
    route: Option<&'a str>,
    attempts: u32,
    downstream_remote_address: Option<SocketAddr>,
    user_agent: Option<&'a str>,
    request_id: Option<&'a str>,
}

impl<'a> Line<'a> {
    fn of(e: &AccessEntry<'a>) -> Line<'a> {
        Line {
            start_time: e.start_time,
            method: e.method.as_str(),
            path: e.path.split('?').next().unwrap_or_default(),
            protocol: protocol(e.protocol),
            status: e.status.as_u16(),
            response_flags: e.response_flags,
            bytes_received: e.bytes_received,
            bytes_sent: e.bytes_sent,
            // Microsecond precision.
            duration_ms: e.duration.as_micros() as f64 / 1000.0,
            upstream_cluster: e.upstream_cluster,
            upstream_host: e.upstream_host,
            route: e.route,
            attempts: e.attempts,
            downstream_remote_address: e.downstream_remote_address,
            user_agent: e.user_agent,
            request_id: e.request_id,
        }
    }
}

enum Msg {
    Line(Vec<u8>),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<io::Result<()>>),
}

/// An open access log: a bounded queue and the thread writing it out. Share it as
/// `Arc<AccessLog>`; dropping the last reference writes out what is queued and ends the thread.
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    dropped: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
    target: AccessLogTarget,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("target", &self.target)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens `target` (a file is created if missing and appended to) and starts the writer
    /// thread.
    pub fn open(target: AccessLogTarget) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match &target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot open access log {}: {e}", path.display()),
                        )
                    })?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("flotilla-access-log".into())
            .spawn({
                let (dropped, target) = (dropped.clone(), target.clone());
                move || write_lines(rx, out, &dropped, &target)
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
            writer: Some(writer),
            target,
        })
    }

    /// Queues `entry` as one JSON line. Never blocks: when the queue is full the line is dropped
    /// and counted.
    pub fn log(&self, entry: AccessEntry<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, &Line::of(&entry)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line.push(b'\n');
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far (queue full, or the writer failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The shared drop counter, for `/metrics`.
    pub(crate) fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Waits until every line queued so far is written and flushed. Blocks the calling thread:
    /// for shutdown and tests, not the request path.
    pub fn flush(&self) -> io::Result<()> {
        let gone = || io::Error::other("the access log writer has stopped");
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Msg::Flush(reply_tx)).map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it, flush and exit.
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: drains `rx` into `out`, flushing once idle for [`FLUSH_INTERVAL`].
fn write_lines(
    rx: Receiver<Msg>,
    out: Box<dyn Write + Send>,
    dropped: &AtomicU64,
    target: &AccessLogTarget,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    // Lines written to the buffer but not yet flushed.
    let mut buffered: u64 = 0;
    let mut failing = false;
    let flush = |out: &mut BufWriter<Box<dyn Write + Send>>, buffered: &mut u64| {
        let result = out.flush();
        if result.is_err() {
            dropped.fetch_add(*buffered, Ordering::Relaxed);
        }
        *buffered = 0;
        result
    };
    let report = |result: &io::Result<()>, failing: &mut bool| match result {
        Err(error) if !*failing => {
            warn!(target_log = %target, %error, "cannot write the access log; dropping lines");
            *failing = true;
        }
        Ok(()) => *failing = false,
        Err(_) => {}
    };
    loop {
        let msg = if buffered > 0 {
            match rx.recv_timeout(FLUSH_INTERVAL) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    let result = flush(&mut out, &mut buffered);
                    report(&result, &mut failing);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            }
        };
        match msg {
            Msg::Line(line) => match out.write_all(&line) {
                Ok(()) => buffered += 1,
                Err(error) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    report(&Err(error), &mut failing);
                }
            },
            Msg::Flush(reply) => {
                let result = flush(&mut out, &mut buffered);
                report(&result, &mut failing);
                let _ = reply.send(result);
            }
        }
    }
    let result = flush(&mut out, &mut buffered);
    report(&result, &mut failing);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(method: &'a Method, path: &'a str, status: StatusCode) -> AccessEntry<'a> {
        AccessEntry {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            method,
            path,
            protocol: Version::HTTP_11,
            status,
            response_flags: ResponseFlags::NONE,
            bytes_received: 0,
            bytes_sent: 5,
            duration: Duration::from_micros(1234),
            upstream_cluster: Some("hello"),
            upstream_host: Some("10.0.0.7:8080".parse().unwrap()),
            route: Some("default"),
            attempts: 1,
            downstream_remote_address: Some("127.0.0.1:5000".parse().unwrap()),
            user_agent: Some("test/1"),
            request_id: None,
        }
    }

    #[test]
    fn flags_print_like_envoy() {
        assert_eq!(ResponseFlags::NONE.to_string(), "");
        assert_eq!(ResponseFlags::NO_ROUTE_FOUND.to_string(), "NR");
        let mut f = ResponseFlags::UPSTREAM_CONNECT_FAILURE;
        f |= ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        assert_eq!(f.to_string(), "UF,URX");
        assert!(f.contains(ResponseFlags::UPSTREAM_CONNECT_FAILURE));
        assert!(!f.contains(ResponseFlags::RATE_LIMITED));
    }

    #[test]
    fn entries_are_json_lines_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(AccessLogTarget::File(path.clone())).unwrap();
        let get = Method::GET;
        log.log(entry(&get, "/api/users?token=secret", StatusCode::OK));
        let mut failed = entry(&get, "/nothing", StatusCode::SERVICE_UNAVAILABLE);
        failed.response_flags = ResponseFlags::NO_HEALTHY_UPSTREAM;
        failed.upstream_host = None;
        failed.request_id = Some("req-1");
        failed.protocol = Version::HTTP_2;
        log.log(failed);
        let req = Request::post("/form?x=1")
            .header("user-agent", "curl/8")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let head = RequestHead::capture(&req);
        log.log(head.entry(StatusCode::CREATED));
        log.flush().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let first = &lines[0];
        assert_eq!(first["start_time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/api/users");
        assert_eq!(first["protocol"], "HTTP/1.1");
        assert_eq!(first["status"], 200);
        assert_eq!(first["response_flags"], "");
        assert_eq!(first["bytes_sent"], 5);
        assert_eq!(first["duration_ms"], 1.234);
        assert_eq!(first["upstream_cluster"], "hello");
        assert_eq!(first["upstream_host"], "10.0.0.7:8080");
        assert_eq!(first["route"], "default");
        assert_eq!(first["attempts"], 1);
        assert_eq!(first["downstream_remote_address"], "127.0.0.1:5000");
        assert_eq!(first["user_agent"], "test/1");
        assert_eq!(first["request_id"], serde_json::Value::Null);
        assert!(!text.contains("secret"));
        assert_eq!(lines[1]["response_flags"], "UH");
        assert_eq!(lines[1]["protocol"], "HTTP/2");
        assert_eq!(lines[1]["request_id"], "req-1");
        assert_eq!(lines[1]["upstream_host"], serde_json::Value::Null);
        assert_eq!(lines[2]["method"], "POST");
        assert_eq!(lines[2]["path"], "/form");
        assert_eq!(lines[2]["status"], 201);
        assert_eq!(lines[2]["user_agent"], "curl/8");
        assert_eq!(lines[2]["request_id"], "abc");
        assert_eq!(log.dropped(), 0);

        // Dropping the log writes out what is still queued.
        log.log(entry(&get, "/last", StatusCode::OK));
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // A writer that is stuck: the queue fills and further lines are dropped, without
        // blocking the caller.
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let log = AccessLog {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            writer: None,
            target: AccessLogTarget::Stdout,
        };
        let get = Method::GET;
        for _ in 0..5 {
            log.log(entry(&get, "/", StatusCode::OK));
        }
        assert_eq!(log.dropped(), 3);
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn opening_a_missing_directory_names_the_path() {
        let err = AccessLog::open(AccessLogTarget::File("/nonexistent/dir/access.log".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/dir/access.log"),
            "{err}"
        );
    }
}
