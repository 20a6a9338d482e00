//! Test support for black-box tests of the `flotilla` binary.
//!
//! - [`Net`]: a private block of loopback addresses per test (`127.X.Y.0/24`), so every process
//!   of a test can use Flotilla's default ports and tests can run side by side.
//! - [`Proc`]: a child process with its output captured to a file, stopped (SIGTERM, then
//!   SIGKILL) when dropped, and killable with SIGKILL on purpose (`kill9`).
//! - [`Cluster`]: a server and agents as separate processes.
//! - [`eventually`]: wait for a condition with a deadline — never a fixed sleep.
//! - [`dead_addr`]: an address nothing listens on, that no parallel test can be handed.
//! - HTTP helpers ([`get`], [`get_host`]) on plain reqwest.
//! - [`release_flotilla`]: the release binary the benchmarks run (built when missing).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The release `flotilla` binary for benchmarks: `given` (`FLOTILLA_BIN` / `--flotilla-bin`),
/// else `<workspace>/target/release/flotilla`, built with `cargo build --release --bin flotilla`
/// when missing. Returns the path and whether it was built.
pub fn release_flotilla(given: Option<&Path>) -> Result<(PathBuf, bool), String> {
    if let Some(p) = given {
        if !p.is_file() {
            return Err(format!(
                "FLOTILLA_BIN / --flotilla-bin: {} is not a file",
                p.display()
            ));
        }
        return Ok((p.to_path_buf(), false));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let bin = root.join("target/release/flotilla");
    if bin.is_file() {
        return Ok((bin, false));
    }
    eprintln!(
        "{} is missing; running `cargo build --release --bin flotilla` in {}",
        bin.display(),
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "flotilla"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release --bin flotilla failed: {status}"
        ));
    }
    if !bin.is_file() {
        return Err(format!("{} still missing after the build", bin.display()));
    }
    Ok((bin, true))
}

/// A block of loopback addresses for one test.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    a: u8,
    b: u8,
}

impl Net {
    /// A block no other test in this run uses (derived from the pid and a counter).
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let seed = std::process::id()
            .wrapping_mul(2654435761)
            .wrapping_add(n.wrapping_mul(40503));
        let a = 10 + (seed % 200) as u8;
        let b = 1 + ((seed / 200) % 250) as u8;
        Self { a, b }
    }

    /// The `i`-th host address of the block (1 = server, 2.. = nodes by convention).
    pub fn ip(&self, i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, i))
    }

    pub fn addr(&self, i: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(i), port)
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

/// A running child process whose combined output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(bin: &Path, name: &str, args: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", bin.display()));
        Self {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// An address nothing listens on, held for as long as the value lives: the socket is bound but
/// never listens, so connects are refused and no other test can be handed the port meanwhile
/// (a listener bound and dropped frees the port for the next test that asks for one).
pub struct DeadAddr {
    pub addr: SocketAddr,
    _held: tokio::net::TcpSocket,
}

/// See [`DeadAddr`].
pub fn dead_addr() -> DeadAddr {
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind 127.0.0.1:0");
    DeadAddr {
        addr: held.local_addr().expect("local address"),
        _held: held,
    }
}

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// GET a URL: status and body, or `None` if nothing answered.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let r = http().get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// GET with a `Host` header.
pub async fn get_host(url: &str, host: &str) -> Option<(u16, String)> {
    let r = http().get(url).header("host", host).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// GET a JSON document from an API.
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    let r = http().get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The output of a finished command: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the binary to completion (a CLI verb), with a timeout.
pub fn run(bin: &Path, args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", bin.display()));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            _ if Instant::now() > deadline => {
                let _ = child.kill();
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().expect("collect output");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Process ids whose command line contains every one of `needles`.
pub fn pids_matching(needles: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

/// Processes whose working directory is inside `dir` (workloads started by agents whose data
/// directories live there).
pub fn pids_in_dir(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL every process whose working directory is inside `dir`.
pub fn kill_in_dir(dir: &Path) {
    for pid in pids_in_dir(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Remove Docker containers of the nodes whose agent data directories are under `dir` (found
/// through their `node-id` files and the `com.flotilla.node` label).
pub fn remove_containers_of(dir: &Path) {
    if !Path::new("/var/run/docker.sock").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(id) = std::fs::read_to_string(e.path().join("node-id")) else {
            continue;
        };
        let filter = format!("label=com.flotilla.node={}", id.trim());
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            continue;
        };
        for c in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
    }
}

/// A server and its nodes, each a separate `flotilla` process on its own loopback address.
pub struct Cluster {
    pub bin: PathBuf,
    pub net: Net,
    pub dir: tempfile::TempDir,
    pub server: Option<Proc>,
    pub agents: Vec<Proc>,
    /// Start agents without `--stop-tasks-on-shutdown`, so tasks outlive a stopped agent (to
    /// test re-attaching). Teardown still removes everything.
    pub keep_tasks_on_shutdown: bool,
    /// Extra `flotilla server` flags. Default: `--default-intention allow`, so tests that are
    /// not about intentions need none.
    pub server_args: Vec<String>,
}

impl Cluster {
    pub fn new(bin: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            net: Net::new(),
            dir: tempfile::Builder::new()
                .prefix("flotilla-e2e-")
                .tempdir()
                .expect("temp dir"),
            server: None,
            agents: Vec::new(),
            keep_tasks_on_shutdown: false,
            server_args: vec!["--default-intention".into(), "allow".into()],
        }
    }

    pub fn api(&self) -> String {
        format!("http://{}", self.net.addr(1, 4646))
    }

    pub fn rpc(&self) -> String {
        format!("http://{}", self.net.addr(1, 4647))
    }

    /// Ingress URL of node `i` (1-based, in the order added).
    pub fn ingress(&self, i: usize) -> String {
        format!("http://{}", self.net.addr(1 + i as u8, 8080))
    }

    pub fn start_server(&mut self) {
        let data = self.dir.path().join("server");
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--http-addr".into(),
            self.net.addr(1, 4646).to_string(),
            "--rpc-addr".into(),
            self.net.addr(1, 4647).to_string(),
            "--heartbeat-ttl".into(),
            "5s".into(),
        ];
        args.extend(self.server_args.iter().cloned());
        self.server = Some(Proc::spawn(&self.bin, "server", &args, self.dir.path()));
    }

    /// Start node `i` (1-based) named `node-i`.
    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// Start node `i` with extra agent flags (e.g. `--node-class`).
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let ip = self.net.ip(1 + i as u8);
        let data = self.dir.path().join(format!("agent-{i}"));
        let args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            self.rpc(),
            "--data-dir".into(),
            data.display().to_string(),
            "--name".into(),
            format!("node-{i}"),
            "--address".into(),
            ip.to_string(),
        ];
        let mut args = args;
        if !self.keep_tasks_on_shutdown {
            args.push("--stop-tasks-on-shutdown".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = Proc::spawn(&self.bin, &format!("agent-{i}"), &args, self.dir.path());
        if self.agents.len() >= i {
            self.agents[i - 1] = p;
        } else {
            self.agents.push(p);
        }
    }

    /// Run a CLI verb against this cluster's API.
    pub fn cli(&self, args: &[&str]) -> Output {
        let api = self.api();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--address", api.as_str()]);
        run(&self.bin, &full, Duration::from_secs(120))
    }

    /// Node `i`'s process, to kill or restart it.
    pub fn agent(&mut self, i: usize) -> &mut Proc {
        &mut self.agents[i - 1]
    }

    /// Write a jobspec into the cluster's directory; returns its path.
    pub fn jobspec(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, body).expect("write jobspec");
        p.display().to_string()
    }

    /// Allocations of a job (the API's list stubs).
    pub async fn allocs(&self, job: &str) -> Vec<serde_json::Value> {
        get_json(&format!(
            "{}/v1/job/{}/allocations",
            self.api(),
            job.replace('/', "%2F")
        ))
        .await
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
    }

    /// Node id → name.
    pub async fn node_names(&self) -> std::collections::BTreeMap<String, String> {
        get_json(&format!("{}/v1/nodes", self.api()))
            .await
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|n| {
                (
                    n["ID"].as_str().unwrap_or("").to_string(),
                    n["Name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Wait until `n` nodes are ready.
    pub async fn wait_nodes(&self, n: usize) {
        let url = format!("{}/v1/nodes", self.api());
        eventually(&format!("{n} ready nodes"), Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let v = get_json(&url).await?;
                let ready = v
                    .as_array()?
                    .iter()
                    .filter(|n| n["Status"] == "ready")
                    .count();
                (ready >= n).then_some(())
            }
        })
        .await
    }

    /// Everything the processes printed, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.server.iter().chain(self.agents.iter()) {
            s.push_str(&format!("----- {} -----\n{}\n", p.name, p.output()));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (they stop their workloads), then the server.
        for a in &mut self.agents {
            a.stop(Duration::from_secs(15));
        }
        if let Some(s) = &mut self.server {
            s.stop(Duration::from_secs(10));
        }
        // Workloads of agents that were killed (or that keep tasks across restarts).
        kill_in_dir(self.dir.path());
        remove_containers_of(self.dir.path());
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
