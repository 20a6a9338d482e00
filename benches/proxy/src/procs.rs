//! Child processes and what `/proc` says about them: CPU seconds and RSS of a process tree.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};

/// The pids of the [`Proc`]s started and not yet stopped, and the run's temporary directory:
/// what the signal watcher cleans up when the bench is told to stop.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static TEMP_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Set once the watcher has caught a signal and is stopping the children.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Locks `m`, also after a panic elsewhere held it (the lists stay valid either way).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Watches for SIGTERM, SIGINT and SIGHUP on a thread of its own. On the first, it stops every
/// live [`Proc`] (SIGTERM, then SIGKILL after a grace period), removes `temp_dir` and exits
/// with 128 + the signal's number, as a shell reports a process killed by it. Without this,
/// `kill <bench>` would end the bench alone and leave the upstream and the proxies running
/// (Ctrl-C reaches the whole process group, a `kill` only the bench).
pub fn stop_children_on_signal(temp_dir: &Path) -> anyhow::Result<()> {
    *lock(&TEMP_DIR) = Some(temp_dir.to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal watcher's runtime")?;
    let (mut term, mut int, mut hup) = {
        let _context = runtime.enter();
        let watch = |kind| signal(kind).context("watching for signals");
        (
            watch(SignalKind::terminate())?,
            watch(SignalKind::interrupt())?,
            watch(SignalKind::hangup())?,
        )
    };
    std::thread::Builder::new()
        .name("signal-watcher".into())
        .spawn(move || {
            let (number, name) = runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => (15, "SIGTERM"),
                    _ = int.recv() => (2, "SIGINT"),
                    _ = hup.recv() => (1, "SIGHUP"),
                }
            });
            STOPPING.store(true, Ordering::SeqCst);
            let pids = std::mem::take(&mut *lock(&LIVE));
            eprintln!(
                "{name}: stopping {} child process(es) and exiting",
                pids.len()
            );
            stop_pids(&pids, STOP_GRACE);
            if let Some(dir) = lock(&TEMP_DIR).take() {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(128 + number);
        })
        .context("starting the signal watcher")?;
    Ok(())
}

/// When the signal watcher is stopping the children, waits for it to end the process (with its
/// own message and exit status); otherwise returns at once.
pub fn wait_if_stopping() {
    if STOPPING.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// SIGTERM to every process in `pids`, up to `grace` for them all to exit, then SIGKILL to
/// those still running. For children of this process, "exited" includes a zombie's state (the
/// parent has not reaped it yet).
pub fn stop_pids(pids: &[u32], grace: Duration) {
    let signal_all = |pids: &[u32], signal| {
        for &pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    };
    signal_all(pids, rustix::process::Signal::TERM);
    let deadline = Instant::now() + grace;
    let running = || -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|&p| stat_fields(p).is_some_and(|f| f.first().is_some_and(|s| s != "Z")))
            .collect()
    };
    let mut left = running();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = running();
    }
    signal_all(&left, rustix::process::Signal::KILL);
}

/// A child process with its output in a log file; SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, name: &str, dir: &Path) -> anyhow::Result<Proc> {
        Self::start(cmd.env("NO_COLOR", "1"), name, dir, false)
    }

    /// A child whose stdout is piped (the caller reads it); stderr goes to the log file.
    pub fn spawn_piped(cmd: &mut Command, name: &str, dir: &Path) -> anyhow::Result<Proc> {
        Self::start(cmd, name, dir, true)
    }

    fn start(cmd: &mut Command, name: &str, dir: &Path, piped: bool) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let err =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let out = if piped {
            Stdio::piped()
        } else {
            Stdio::from(err.try_clone()?)
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        lock(&LIVE).push(child.id());
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL ([`stop_pids`]); then reaps it.
    pub fn stop(&mut self, grace: Duration) {
        let pid = self.child.id();
        lock(&LIVE).retain(|&p| p != pid);
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        stop_pids(&[pid], grace);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// `pid` and all its descendants, from the parent ids in `/proc/*/stat`.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the command name: `[0]` is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": comm may hold anything, so split after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of every process of the tree under `pid`, in seconds.
pub fn tree_cpu_secs(pid: u32) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    tree(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            // utime and stime are fields 14 and 15.
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (field(11) + field(12)) as f64 / ticks
        })
        .sum()
}

/// The machine's CPU time so far, from the first line of `/proc/stat`: `(steal, total)` in
/// clock ticks, where steal is the time this VM's CPUs were ready to run but the hypervisor ran
/// another guest, and total is every state's time (user, system, idle, steal, …) summed.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_ticks(stat.lines().next()?)
}

/// `(steal, total)` from a `/proc/stat` `cpu` line: `cpu user nice system idle iowait irq
/// softirq steal guest guest_nice`. Guest time is already counted in user and nice, so it is
/// left out of the total.
fn parse_cpu_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let steal = *values.get(7)?;
    Some((steal, values.iter().sum()))
}

/// The share of CPU time stolen by the hypervisor between two [`cpu_ticks`] readings.
pub fn steal_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    let total = t1.checked_sub(t0).filter(|t| *t > 0)?;
    Some(s1.saturating_sub(s0) as f64 / total as f64)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `VmHWM` (peak RSS) summed over the tree under `pid`, in bytes.
pub fn tree_peak_rss(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| status_kb(p, "VmHWM"))
        .sum()
}

/// `VmRSS` of one process, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// `RssAnon` and `RssFile` of one process (heap and stacks; mapped binary and libraries), in
/// bytes.
pub fn rss_split(pid: u32) -> Option<(u64, u64)> {
    Some((status_kb(pid, "RssAnon")?, status_kb(pid, "RssFile")?))
}

/// `VmHWM` of one process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Resets the peak RSS (`VmHWM`) of every process of the tree to its current RSS
/// (`echo 5 > /proc/<pid>/clear_refs`), so the next reading is the peak of what follows.
/// Returns false when that is not allowed (then the peak covers the process's whole life).
pub fn reset_peak_rss(pid: u32) -> bool {
    tree(pid)
        .into_iter()
        .all(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, proc: &mut Proc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} does not listen on {addr} after {timeout:?}; the end of its log:\n{}",
                proc.name,
                proc.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first three fields of `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Finds `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_pids_ends_children_and_kills_those_that_ignore_sigterm() {
        let mut polite = Command::new("sleep").arg("60").spawn().unwrap();
        let mut stubborn = Command::new("sh")
            .args([
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 0.1; done",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The trap is set once the shell says so.
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        let started = Instant::now();
        stop_pids(&[polite.id(), stubborn.id()], Duration::from_millis(500));
        let polite = polite.wait().unwrap();
        let stubborn = stubborn.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(polite.signal(), Some(15), "{polite:?}");
        assert_eq!(stubborn.signal(), Some(9), "{stubborn:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    #[test]
    fn steal_is_read_from_the_cpu_line() {
        let line = "cpu  199835 0 86948 65883 1292 0 37790 3815 0 0";
        let total = 199_835 + 86_948 + 65_883 + 1_292 + 37_790 + 3_815;
        assert_eq!(parse_cpu_ticks(line), Some((3_815, total)));
        assert_eq!(parse_cpu_ticks("cpu0 1 2 3 4 5 6 7 8 0 0"), None);
        assert_eq!(parse_cpu_ticks("cpu 1 2 3"), None);
        let share = steal_share(Some((100, 1_000)), Some((150, 2_000))).unwrap();
        assert!((share - 0.05).abs() < 1e-12, "{share}");
        assert_eq!(steal_share(Some((1, 10)), Some((1, 10))), None);
        assert_eq!(steal_share(None, Some((1, 10))), None);
    }
}
