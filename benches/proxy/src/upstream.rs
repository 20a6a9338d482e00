//! The upstream every path ends at: this binary's hidden `upstream` subcommand, a hyper server
//! on a multi-threaded tokio runtime serving HTTP/1.1 keep-alive and h2c (prior knowledge) on
//! one port, answering every `GET` with the same 200 and [`BODY`]. It is none of the
//! contenders, and it runs as a child process so its CPU is not the proxy's or the client's.
//! `GET` [`ACCEPTED_PATH`] answers how many connections it has accepted, so the bench sees
//! whether a proxy reuses its upstream connections; `GET` [`HEADERS_PATH`] answers the names of
//! the request's headers, so the bench sees that every proxy forwards the same ones.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::procs::Proc;

/// The answer body: 100 bytes.
pub const BODY: &str = "flotilla-bench-proxy upstream: the same answer, of exactly one hundred bytes, for each GET request.\n";

/// Answers the number of connections accepted so far (this one included).
pub const ACCEPTED_PATH: &str = "/__bench/accepted";

/// Answers the request's header names, lowercase, sorted, comma-separated.
pub const HEADERS_PATH: &str = "/__bench/headers";

/// The header names every proxy must forward to the upstream (the same work for each).
pub const FORWARDED_HEADERS: &str = "host,x-forwarded-for,x-forwarded-host,x-forwarded-proto";

static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// Flags of the hidden `upstream` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Where to listen; the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

fn answer(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.method() == Method::GET && req.uri().path() == ACCEPTED_PATH {
        let n = ACCEPTED.load(Ordering::Relaxed);
        (StatusCode::OK, Bytes::from(n.to_string()))
    } else if req.method() == Method::GET && req.uri().path() == HEADERS_PATH {
        let mut names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        (StatusCode::OK, Bytes::from(names.join(",")))
    } else if req.method() == Method::GET {
        (StatusCode::OK, Bytes::from_static(BODY.as_bytes()))
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, Bytes::new())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Serves until killed (the `upstream` subcommand).
pub fn serve(args: &UpstreamArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        println!("{}", listener.local_addr()?);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Above every client's stream count, so the upstream never limits h2 concurrency.
        builder.http2().max_concurrent_streams(1024);
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(a) => a,
                Err(_) => {
                    // Out of file descriptors or similar: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(answer(&req)) });
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    })
}

/// Starts this binary's `upstream` subcommand and returns it with its address.
pub fn start(dir: &Path) -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut proc = Proc::spawn_piped(
        Command::new(exe).args(["upstream", "--listen", "127.0.0.1:0"]),
        "upstream",
        dir,
    )?;
    let stdout = proc.stdout().context("upstream stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the upstream's address")?;
    let addr: SocketAddr = line.trim().parse().with_context(|| {
        format!(
            "the upstream printed {line:?}, not an address; its log:\n{}",
            proc.log_tail(20)
        )
    })?;
    Ok((proc, addr))
}

/// Checks that a request with only `Host` (and `Connection: close`) reaches the upstream
/// through `proxy` with exactly [`FORWARDED_HEADERS`] (`connection` aside: a proxy may pass it
/// on for this probe), so every proxy does the same header work.
pub fn check_forwarded_headers(name: &str, proxy: SocketAddr) -> anyhow::Result<()> {
    let (status, body) = crate::contenders::http_get(proxy, HEADERS_PATH, "bench.test")?;
    anyhow::ensure!(
        status == 200,
        "{name}: {HEADERS_PATH} answered {status}: {body}"
    );
    let names: Vec<&str> = body
        .trim()
        .split(',')
        .filter(|n| *n != "connection")
        .collect();
    anyhow::ensure!(
        names.join(",") == FORWARDED_HEADERS,
        "{name} forwards the headers {body:?} to the upstream, not {FORWARDED_HEADERS:?}: \
         the comparison needs the same header work from every proxy"
    );
    Ok(())
}

/// Connections the upstream at `addr` has accepted, not counting the one asking.
pub fn accepted(addr: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = crate::contenders::http_get(addr, ACCEPTED_PATH, "upstream")?;
    anyhow::ensure!(status == 200, "{ACCEPTED_PATH} answered {status}: {body}");
    let n: u64 = body
        .trim()
        .parse()
        .with_context(|| format!("{ACCEPTED_PATH} answered {body:?}"))?;
    Ok(n.saturating_sub(1))
}
