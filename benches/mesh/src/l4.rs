//! L4 section: single-stream throughput and CPU seconds per GB of the forwarder.
//!
//! One TCP stream of `--l4-bytes` goes source -> forwarder -> sink on 127.0.0.1: the source
//! is a thread of this process writing one fixed 1 MiB buffer over and over, the sink a
//! thread that reads and discards. The forwarder runs in a child process (this binary again,
//! hidden subcommand `forwarder`) with a single-threaded tokio runtime, so that its
//! utime + stime from `/proc/<pid>/stat`, read before and after each transfer, is the
//! forwarder's CPU alone. Variants:
//!
//! * direct: no forwarder, the reference throughput of loopback TCP here;
//! * `forward_tcp` with `Mode::Auto`: splice(2) through a pipe per direction;
//! * `tokio::io::copy_bidirectional` on the two `TcpStream`s: the baseline of the target
//!   "the splice path takes ≥ 1.5× fewer CPU seconds per GB than copy_bidirectional";
//! * `forward_tcp` with `Mode::CopyOnly`: our buffered fallback (64 KiB buffers), for
//!   reference.
//!
//! Wall time runs from the source's first write to the sink having received every byte.
//! Each variant runs `--l4-repeats` times; the medians are reported.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use flotilla_forward::{Method, Mode, forward_tcp};

/// The target: copy_bidirectional's CPU per GB over splice's.
pub const TARGET_RATIO: f64 = 1.5;

/// The source writes this buffer again and again.
const WRITE_SIZE: usize = 1 << 20;

/// Options of the l4 section.
#[derive(Debug, Clone, clap::Args)]
pub struct L4Args {
    /// Bytes per transfer: a number with an optional unit (K, M, G or KiB, MiB, GiB are
    /// binary; KB, MB, GB decimal).
    #[arg(long = "l4-bytes", value_parser = parse_size, default_value = "2GiB")]
    pub bytes: u64,
    /// Transfers per variant; medians are reported.
    #[arg(long = "l4-repeats", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
}

/// How the forwarder child moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwarderMode {
    /// `flotilla_forward::forward_tcp` with `Mode::Auto` (splice).
    Splice,
    /// `tokio::io::copy_bidirectional` on the two `TcpStream`s.
    Copy,
    /// `flotilla_forward::forward_tcp` with `Mode::CopyOnly` (64 KiB buffered copy).
    Buffered,
}

/// The hidden `forwarder` subcommand: the child process of the l4 section.
#[derive(Debug, Clone, clap::Args)]
pub struct ForwarderArgs {
    #[arg(long, value_enum)]
    pub mode: ForwarderMode,
    /// Where to listen; the bound port is printed on stdout.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where to forward each accepted connection.
    #[arg(long)]
    pub to: SocketAddr,
}

/// One variant's figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub path: &'static str,
    /// How the bytes were moved, as the forwarder reported it ("-" for direct).
    pub method: String,
    /// Median throughput, bytes per second.
    pub bytes_per_sec: f64,
    /// Median forwarder CPU seconds per GB (10^9 bytes); `None` without a forwarder.
    pub cpu_s_per_gb: Option<f64>,
    /// Median forwarder CPU seconds over wall seconds (cores busy).
    pub cores: Option<f64>,
    /// Each run's wall time and forwarder CPU seconds.
    pub runs: Vec<(Duration, Option<f64>)>,
}

/// What the l4 section measured.
#[derive(Debug, Clone)]
pub struct L4Report {
    pub bytes: u64,
    pub repeats: u32,
    pub clock_ticks_per_sec: u64,
    pub direct: Row,
    pub splice: Row,
    pub copy: Row,
    pub buffered: Row,
}

impl L4Report {
    /// copy_bidirectional's CPU per GB over splice's.
    pub fn ratio(&self) -> Option<f64> {
        match (self.copy.cpu_s_per_gb, self.splice.cpu_s_per_gb) {
            (Some(copy), Some(splice)) if splice > 0.0 => Some(copy / splice),
            _ => None,
        }
    }

    pub fn pass(&self) -> bool {
        self.splice.method == "Splice" && self.ratio().is_some_and(|r| r >= TARGET_RATIO)
    }
}

/// Runs the section: every variant `repeats` times.
pub fn run(args: &L4Args) -> anyhow::Result<L4Report> {
    let sink = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
    let sink_addr = sink.local_addr()?;
    let ticks = rustix::param::clock_ticks_per_second();
    ensure!(ticks > 0, "clock ticks per second unknown");

    eprintln!(
        "l4: {} per transfer, {} repeat(s) per variant",
        Bytes(args.bytes),
        args.repeats
    );
    let direct = {
        let mut runs = Vec::new();
        for i in 0..args.repeats {
            let wall = transfer(sink_addr, &sink, args.bytes)?;
            eprintln!("  direct run {}: {:.2} s", i + 1, wall.as_secs_f64());
            runs.push((wall, None));
        }
        row("direct (no forwarder)", "-".into(), args.bytes, runs)
    };
    let through = |mode, path| -> anyhow::Result<Row> {
        let mut child = ForwarderChild::spawn(mode, sink_addr)?;
        let mut runs = Vec::new();
        let mut method = String::new();
        for i in 0..args.repeats {
            let before = child.cpu_ticks()?;
            let wall = transfer(child.addr, &sink, args.bytes)?;
            let (moved, how) = child.done()?;
            let after = child.cpu_ticks()?;
            ensure!(
                moved == args.bytes,
                "the forwarder reported {moved} bytes, not {}",
                args.bytes
            );
            let cpu = (after - before) as f64 / ticks as f64;
            eprintln!(
                "  {path} run {}: {:.2} s, forwarder CPU {cpu:.2} s ({how})",
                i + 1,
                wall.as_secs_f64()
            );
            runs.push((wall, Some(cpu)));
            method = how;
        }
        Ok(row(path, method, args.bytes, runs))
    };
    let splice = through(ForwarderMode::Splice, "forward_tcp, Mode::Auto")?;
    let copy = through(ForwarderMode::Copy, "tokio::io::copy_bidirectional")?;
    let buffered = through(ForwarderMode::Buffered, "forward_tcp, Mode::CopyOnly")?;
    Ok(L4Report {
        bytes: args.bytes,
        repeats: args.repeats,
        clock_ticks_per_sec: ticks,
        direct,
        splice,
        copy,
        buffered,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn row(path: &'static str, method: String, bytes: u64, runs: Vec<(Duration, Option<f64>)>) -> Row {
    let gb = bytes as f64 / 1e9;
    let bytes_per_sec = median(
        runs.iter()
            .map(|(wall, _)| bytes as f64 / wall.as_secs_f64())
            .collect(),
    );
    let with_cpu: Vec<(Duration, f64)> = runs
        .iter()
        .filter_map(|&(wall, cpu)| cpu.map(|c| (wall, c)))
        .collect();
    let (cpu_s_per_gb, cores) = if with_cpu.is_empty() {
        (None, None)
    } else {
        (
            Some(median(with_cpu.iter().map(|&(_, c)| c / gb).collect())),
            Some(median(
                with_cpu
                    .iter()
                    .map(|&(wall, c)| c / wall.as_secs_f64())
                    .collect(),
            )),
        )
    };
    Row {
        path,
        method,
        bytes_per_sec,
        cpu_s_per_gb,
        cores,
        runs,
    }
}

/// Sends `bytes` to `to` and waits for the sink (accepting on `sink`) to have them all.
/// Returns the wall time from the first write to the last byte received.
fn transfer(to: SocketAddr, sink: &TcpListener, bytes: u64) -> anyhow::Result<Duration> {
    let sink_addr = sink.local_addr()?;
    std::thread::scope(|scope| {
        let receiver = scope.spawn(move || -> anyhow::Result<(u64, Instant)> {
            let (mut conn, _) = sink.accept()?;
            let mut buf = vec![0u8; WRITE_SIZE];
            let mut got: u64 = 0;
            let mut all_at = None;
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                if got >= bytes && all_at.is_none() {
                    all_at = Some(Instant::now());
                }
            }
            Ok((got, all_at.unwrap_or_else(Instant::now)))
        });
        let sent = send(to, bytes);
        if sent.is_err() {
            // Unblock the sink's accept if the source never got through.
            let _ = TcpStream::connect(sink_addr);
        }
        let received = receiver
            .join()
            .map_err(|_| anyhow!("the sink thread panicked"))?;
        let start = sent?;
        let (got, all_at) = received?;
        ensure!(got == bytes, "the sink got {got} bytes, not {bytes}");
        Ok(all_at.duration_since(start))
    })
}

/// The source: connects, writes `bytes` from one 1 MiB buffer, half-closes and waits for the
/// far end to close. Returns when the first write started.
fn send(to: SocketAddr, bytes: u64) -> anyhow::Result<Instant> {
    let mut conn = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    let buf = vec![0xA5u8; WRITE_SIZE];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WRITE_SIZE as u64) as usize;
        conn.write_all(&buf[..n])?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 64];
    while conn.read(&mut rest)? > 0 {}
    Ok(start)
}

/// A forwarder child process; killed and reaped on drop.
struct ForwarderChild {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl ForwarderChild {
    fn spawn(mode: ForwarderMode, to: SocketAddr) -> anyhow::Result<ForwarderChild> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mode_name = match mode {
            ForwarderMode::Splice => "splice",
            ForwarderMode::Copy => "copy",
            ForwarderMode::Buffered => "buffered",
        };
        let mut child = Command::new(exe)
            .args(["forwarder", "--mode", mode_name, "--listen", "127.0.0.1:0"])
            .arg("--to")
            .arg(to.to_string())
            // The child exits when this pipe closes, even if we die without killing it.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the forwarder child")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut child = ForwarderChild {
            child,
            stdout: BufReader::new(stdout),
            addr: to,
        };
        let port: u16 = child
            .line()?
            .parse()
            .context("the forwarder's first line is not a port")?;
        child.addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(child)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the forwarder child exited");
        }
        Ok(line.trim().to_owned())
    }

    /// Waits for the forwarder to report the end of a connection: (bytes forwarded from the
    /// source, method).
    fn done(&mut self) -> anyhow::Result<(u64, String)> {
        let line = self.line()?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("done"), Some(up), Some(_down), Some(method)) => {
                Ok((up.parse().context("bytes")?, method.to_owned()))
            }
            _ => bail!("the forwarder reported: {line}"),
        }
    }

    /// The child's utime + stime, in clock ticks.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // "pid (comm) state ppid ...": comm may hold anything, so split after its last ')'.
        let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        let field =
            |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
        Ok(field(11)? + field(12)?)
    }
}

impl Drop for ForwarderChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child process: forwards every connection to `--to`, one tokio thread, and reports
/// `done <a_to_b> <b_to_a> <method>` (or `error <message>`) on stdout per connection.
pub fn serve_forwarder(args: &ForwarderArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The parent holds our stdin: its end means the parent is gone.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mode, to) = (args.mode, args.to);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("{}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        loop {
            let (a, _) = listener.accept().await?;
            tokio::spawn(async move {
                let line = match forward_one(a, to, mode).await {
                    Ok((up, down, method)) => format!("done {up} {down} {method}"),
                    Err(e) => format!("error {e:#}"),
                };
                println!("{line}");
            });
        }
    })
}

async fn forward_one(
    mut a: tokio::net::TcpStream,
    to: SocketAddr,
    mode: ForwarderMode,
) -> anyhow::Result<(u64, u64, &'static str)> {
    let mut b = tokio::net::TcpStream::connect(to).await?;
    let method_name = |m: Method| match m {
        Method::Splice => "Splice",
        Method::Copy => "Copy",
    };
    Ok(match mode {
        ForwarderMode::Splice | ForwarderMode::Buffered => {
            let m = if mode == ForwarderMode::Splice {
                Mode::Auto
            } else {
                Mode::CopyOnly
            };
            let f = forward_tcp(a, b, m).await?;
            (f.a_to_b, f.b_to_a, method_name(f.method))
        }
        ForwarderMode::Copy => {
            let (up, down) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
            (up, down, "copy_bidirectional")
        }
    })
}

/// Parses sizes like "2GiB", "512M", "1GB" or "1000000" (whole numbers only).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number of bytes with an optional unit"))?;
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("{other:?}: unknown unit")),
    };
    match number.checked_mul(unit) {
        Some(0) => Err("must be more than 0 bytes".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{s:?}: too large")),
    }
}

struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= 1 << 30 {
            write!(f, "{:.2} GiB", b / (1u64 << 30) as f64)
        } else if self.0 >= 1 << 20 {
            write!(f, "{:.2} MiB", b / (1u64 << 20) as f64)
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

/// Prints the report as markdown.
pub fn print(report: &L4Report) {
    println!(
        "## L4 forwarding: one TCP stream over 127.0.0.1, {} per transfer, median of {}",
        Bytes(report.bytes),
        report.repeats
    );
    println!();
    println!(
        "The forwarder is a child process with one tokio thread; its CPU is utime+stime from \
         /proc/<pid>/stat ({} ticks/s). GB = 10^9 bytes, MB = 10^6 bytes.",
        report.clock_ticks_per_sec
    );
    println!();
    println!("| path | method | Gbit/s | MB/s | forwarder CPU s/GB | forwarder cores busy |");
    println!("|---|---|---:|---:|---:|---:|");
    for row in [
        &report.direct,
        &report.splice,
        &report.copy,
        &report.buffered,
    ] {
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} |",
            row.path,
            row.method,
            row.bytes_per_sec * 8.0 / 1e9,
            row.bytes_per_sec / 1e6,
            opt(row.cpu_s_per_gb, 3),
            opt(row.cores, 2),
        );
    }
    println!();
    println!("Each run (Gbit/s, forwarder CPU s):");
    for row in [
        &report.direct,
        &report.splice,
        &report.copy,
        &report.buffered,
    ] {
        let runs: Vec<String> = row
            .runs
            .iter()
            .map(|(wall, cpu)| {
                let gbit = report.bytes as f64 * 8.0 / wall.as_secs_f64() / 1e9;
                match cpu {
                    Some(cpu) => format!("{gbit:.2} ({cpu:.2} s)"),
                    None => format!("{gbit:.2}"),
                }
            })
            .collect();
        println!("- {}: {}", row.path, runs.join(", "));
    }
    println!();
    match report.ratio() {
        Some(ratio) => println!(
            "CPU per GB, copy_bidirectional / splice: {ratio:.2}x (target >= {TARGET_RATIO}x): {}",
            if report.pass() { "PASS" } else { "FAIL" }
        ),
        None => println!("CPU per GB, copy_bidirectional / splice: not measurable: FAIL"),
    }
    if report.splice.method != "Splice" {
        println!(
            "note: the splice variant fell back to {} (see the forwarder's debug log)",
            report.splice.method
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
