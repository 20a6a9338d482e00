//! The load generators: `wrk` for HTTP/1.1 keep-alive and `h2load` for h2c, and parsers for
//! what they print.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// The two load shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `wrk -t2 -c64`: 64 HTTP/1.1 keep-alive connections, one request in flight on each.
    Http1,
    /// `h2load -t2 -c4 -m100`: 4 h2c connections (prior knowledge), 100 streams in flight on
    /// each.
    H2,
}

/// HTTP/1.1 connections of the wrk shape.
pub const H1_CONNECTIONS: u32 = 64;
/// h2c connections of the h2load shape.
pub const H2_CONNECTIONS: u32 = 4;
/// Concurrent streams per h2c connection.
pub const H2_STREAMS: u32 = 100;
/// Client threads (wrk `-t`, h2load `-t`).
pub const CLIENT_THREADS: u32 = 2;

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Http1, Shape::H2];

    pub fn title(self) -> String {
        match self {
            Shape::Http1 => format!(
                "HTTP/1.1 keep-alive, {H1_CONNECTIONS} connections (`wrk -t{CLIENT_THREADS} -c{H1_CONNECTIONS} --latency`)"
            ),
            Shape::H2 => format!(
                "HTTP/2 h2c (prior knowledge), {H2_CONNECTIONS} connections × {H2_STREAMS} streams (`h2load -t{CLIENT_THREADS} -c{H2_CONNECTIONS} -m{H2_STREAMS}`)"
            ),
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Shape::Http1 => "HTTP/1.1",
            Shape::H2 => "h2c",
        }
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadResult {
    pub requests: u64,
    pub req_per_sec: f64,
    /// Median request latency, seconds.
    pub p50: f64,
    /// 99th percentile request latency, seconds.
    pub p99: f64,
    /// Requests that did not get a 2xx (non-2xx answers, socket errors, failed streams).
    pub errors: u64,
}

/// Runs one load of `shape` against `url` for `duration`. `log` is where h2load writes its
/// per-request log.
pub fn run(shape: Shape, url: &str, duration: Duration, log: &Path) -> anyhow::Result<LoadResult> {
    let secs = duration.as_secs().max(1).to_string();
    match shape {
        Shape::Http1 => {
            let out = command_output(Command::new("wrk").args([
                format!("-t{CLIENT_THREADS}").as_str(),
                &format!("-c{H1_CONNECTIONS}"),
                &format!("-d{secs}s"),
                "--latency",
                url,
            ]))?;
            parse_wrk(&out).with_context(|| format!("parsing wrk's output:\n{out}"))
        }
        Shape::H2 => {
            let _ = std::fs::remove_file(log);
            let out = command_output(Command::new("h2load").args([
                format!("-t{CLIENT_THREADS}").as_str(),
                &format!("-c{H2_CONNECTIONS}"),
                &format!("-m{H2_STREAMS}"),
                "-D",
                &secs,
                &format!("--log-file={}", log.display()),
                url,
            ]))?;
            let summary =
                parse_h2load(&out).with_context(|| format!("parsing h2load's output:\n{out}"))?;
            let log_text = std::fs::read_to_string(log)
                .with_context(|| format!("reading h2load's log {}", log.display()))?;
            let (p50, p99) = h2load_percentiles(&log_text)
                .with_context(|| format!("h2load's log {} has no requests", log.display()))?;
            Ok(LoadResult {
                p50,
                p99,
                ..summary
            })
        }
    }
}

/// Checks that `url` answers `shape` requests with 2xx: a short run of a few requests.
pub fn probe(shape: Shape, url: &str) -> anyhow::Result<()> {
    let out = match shape {
        Shape::Http1 => command_output(Command::new("wrk").args(["-t1", "-c1", "-d1s", url]))?,
        Shape::H2 => command_output(Command::new("h2load").args(["-n20", "-c1", "-m4", url]))?,
    };
    let r = match shape {
        Shape::Http1 => parse_wrk_counts(&out),
        Shape::H2 => parse_h2load(&out),
    }
    .with_context(|| format!("parsing the probe's output:\n{out}"))?;
    ensure!(
        r.requests > 0 && r.errors == 0,
        "{} probe of {url}: {} requests, {} not 2xx:\n{out}",
        shape.short(),
        r.requests,
        r.errors
    );
    // h2load falls back to nothing: check it really spoke h2c (prior knowledge).
    ensure!(
        shape != Shape::H2 || out.contains("Application protocol: h2c"),
        "h2c probe of {url}: h2load did not negotiate h2c:\n{out}"
    );
    Ok(())
}

fn command_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// `"1.23ms"` (wrk: `us`, `ms`, `s`, `m`) in seconds.
fn wrk_duration(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

/// Requests, req/s and errors from wrk's summary (no latency distribution needed).
fn parse_wrk_counts(out: &str) -> anyhow::Result<LoadResult> {
    let mut requests = None;
    let mut req_per_sec = None;
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            req_per_sec = rest.trim().parse().ok();
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(LoadResult {
        requests: requests.context("no \"N requests in\" line")?,
        req_per_sec: req_per_sec.context("no Requests/sec line")?,
        p50: f64::NAN,
        p99: f64::NAN,
        errors,
    })
}

/// wrk's summary and `--latency` distribution.
pub fn parse_wrk(out: &str) -> anyhow::Result<LoadResult> {
    let mut r = parse_wrk_counts(out)?;
    let percentile = |p: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p).and_then(|rest| wrk_duration(rest.trim())))
    };
    r.p50 = percentile("50%").context("no 50% latency line (was --latency given?)")?;
    r.p99 = percentile("99%").context("no 99% latency line")?;
    Ok(r)
}

/// h2load's summary: requests, req/s and failures (percentiles come from its log).
pub fn parse_h2load(out: &str) -> anyhow::Result<LoadResult> {
    let mut req_per_sec = None;
    let mut done = None;
    let mut errors = 0u64;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 10.00s, 12345.60 req/s, 1.23MB/s"
            req_per_sec = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|n| n.trim().parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "done" => done = Some(n),
                    "failed" | "errored" | "timeout" => errors += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            // "N 2xx, N 3xx, N 4xx, N 5xx": non-2xx answers are errors here.
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(class)) = (words.next(), words.next())
                    && class != "2xx"
                {
                    errors += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok(LoadResult {
        requests: done.context("no \"requests:\" line")?,
        req_per_sec: req_per_sec.context("no \"finished in\" line")?,
        p50: f64::NAN,
        p99: f64::NAN,
        errors,
    })
}

/// p50 and p99 (seconds) from h2load's `--log-file`: one line per request,
/// `<start µs since epoch>\t<status>\t<duration µs>`. Only 2xx requests count.
pub fn h2load_percentiles(log: &str) -> Option<(f64, f64)> {
    let mut durations: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _start = f.next()?;
            let status: u16 = f.next()?.trim().parse().ok()?;
            let micros: u64 = f.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(micros)
        })
        .collect();
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    Some((
        percentile(&durations, 0.50) / 1e6,
        percentile(&durations, 0.99) / 1e6,
    ))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms    2.10ms  45.30ms   93.10%
    Req/Sec    23.10k     2.02k   28.00k    70.00%
  Latency Distribution
     50%  832.00us
     75%    1.50ms
     90%    3.12ms
     99%   11.20ms
  459873 requests in 10.00s, 90.14MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  45987.30
Transfer/sec:      9.01MB
";

    #[test]
    fn parses_wrk() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 459_873);
        assert!((r.req_per_sec - 45_987.3).abs() < 1e-6);
        assert!((r.p50 - 832e-6).abs() < 1e-12);
        assert!((r.p99 - 11.2e-3).abs() < 1e-12);
        assert_eq!(r.errors, 6);
        assert!(parse_wrk("nothing").is_err());
    }

    const H2LOAD: &str = "starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 10s of main duration for measurements.
Application protocol: h2c

finished in 10.00s, 61234.50 req/s, 9.12MB/s
requests: 612345 total, 612745 started, 612345 done, 612340 succeeded, 5 failed, 0 errored, 0 timeout
status codes: 612340 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 91.23MB (95661234) total, 1.23MB (1234567) headers (space savings 95.12%), 58.40MB (61234500) data
                     min         max         mean         sd        +/- sd
time for request:      301us     45.12ms      6.51ms      2.10ms    70.12%
";

    #[test]
    fn parses_h2load_and_its_log() {
        let r = parse_h2load(H2LOAD).unwrap();
        assert_eq!(r.requests, 612_345);
        assert!((r.req_per_sec - 61_234.5).abs() < 1e-6);
        assert_eq!(r.errors, 7);

        let mut log = String::new();
        for i in 1..=100u64 {
            log.push_str(&format!("1700000000000000\t200\t{}\n", i * 1000));
        }
        log.push_str("1700000000000000\t503\t999999999\n");
        let (p50, p99) = h2load_percentiles(&log).unwrap();
        assert!((p50 - 0.050).abs() < 1e-12, "{p50}");
        assert!((p99 - 0.099).abs() < 1e-12, "{p99}");
        assert!(h2load_percentiles("").is_none());
    }

    #[test]
    fn wrk_units() {
        assert_eq!(wrk_duration("2.00s"), Some(2.0));
        assert_eq!(wrk_duration("1.5m"), Some(90.0));
        assert_eq!(wrk_duration("12x"), None);
    }
}
