//! The task environment (Nomad's `NOMAD_*` variables) and `${…}` interpolation.
//!
//! Everything here is pure: the allocation, the task, the node and the directories go in, a
//! map or a string comes out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_proto::agent::v1 as pb;
use flotilla_types::ConsulUpstream;
use serde_json::Value;

/// What interpolation may read about the node (`${node.*}`, `${attr.*}`, `${meta.*}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub class: String,
    /// The IP workloads bind to; the default for `NOMAD_IP_<label>`.
    pub address: String,
    pub attributes: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

/// The directories of one task, laid out like Nomad's:
///
/// ```text
/// <data_dir>/allocs/<alloc_id>/alloc/            NOMAD_ALLOC_DIR (shared by the group's tasks)
/// <data_dir>/allocs/<alloc_id>/alloc/logs/       <task>.stdout.0, <task>.stderr.0
/// <data_dir>/allocs/<alloc_id>/<task>/           the working directory
/// <data_dir>/allocs/<alloc_id>/<task>/local/     NOMAD_TASK_DIR
/// <data_dir>/allocs/<alloc_id>/<task>/secrets/   NOMAD_SECRETS_DIR
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDirs {
    pub alloc_dir: PathBuf,
    pub task_dir: PathBuf,
    pub local_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl TaskDirs {
    /// The layout for `task` of `alloc_id` under `data_dir`.
    pub fn new(data_dir: &Path, alloc_id: &str, task: &str) -> Self {
        let root = alloc_root(data_dir, alloc_id);
        let alloc_dir = root.join("alloc");
        let task_dir = root.join(task);
        Self {
            stdout: log_path(data_dir, alloc_id, task, LogKind::Stdout),
            stderr: log_path(data_dir, alloc_id, task, LogKind::Stderr),
            local_dir: task_dir.join("local"),
            secrets_dir: task_dir.join("secrets"),
            alloc_dir,
            task_dir,
        }
    }

    /// Creates every directory (idempotent).
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [
            self.alloc_dir.join("logs"),
            self.alloc_dir.join("data"),
            self.alloc_dir.join("tmp"),
            self.local_dir.clone(),
            self.secrets_dir.clone(),
        ] {
            std::fs::create_dir_all(&dir)?;
        }
        Ok(())
    }
}

/// Where a task sees its directories: the host paths (process drivers) or Nomad's fixed paths
/// inside a container (`/alloc`, `/local`, `/secrets`), where the container drivers mount them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirView {
    pub alloc_dir: String,
    pub task_dir: String,
    pub secrets_dir: String,
}

impl DirView {
    /// Nomad's paths inside a container.
    pub fn container() -> Self {
        Self {
            alloc_dir: "/alloc".into(),
            task_dir: "/local".into(),
            secrets_dir: "/secrets".into(),
        }
    }
}

impl TaskDirs {
    /// The directories as a process on the host sees them.
    pub fn host_view(&self) -> DirView {
        DirView {
            alloc_dir: self.alloc_dir.display().to_string(),
            task_dir: self.local_dir.display().to_string(),
            secrets_dir: self.secrets_dir.display().to_string(),
        }
    }
}

/// `<data_dir>/allocs/<alloc_id>`.
pub fn alloc_root(data_dir: &Path, alloc_id: &str) -> PathBuf {
    data_dir.join("allocs").join(alloc_id)
}

/// Which of a task's two log streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Stdout,
    Stderr,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Stdout => "stdout",
            LogKind::Stderr => "stderr",
        }
    }
}

/// `<data_dir>/allocs/<alloc_id>/alloc/logs/<task>.<stdout|stderr>.0`.
pub fn log_path(data_dir: &Path, alloc_id: &str, task: &str, kind: LogKind) -> PathBuf {
    alloc_root(data_dir, alloc_id)
        .join("alloc")
        .join("logs")
        .join(format!("{task}.{}.0", kind.as_str()))
}

/// The instance index from an allocation name (`web.api[2]` → 2).
pub fn alloc_index(name: &str) -> Option<u32> {
    let open = name.rfind('[')?;
    name.get(open + 1..)?.strip_suffix(']')?.parse().ok()
}

/// Nomad's rule for meta keys in variable names: anything but `[A-Za-z0-9_.]` becomes `_`.
fn env_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The complete environment of `task`: the `NOMAD_*` variables, then the task's own `env`
/// block with its values interpolated (the task's block wins over the generated variables).
/// `dirs` says where the task sees its directories; `upstreams` are the Connect upstreams of
/// the group's services (group- and task-level), which every task of the group sees.
pub fn task_env(
    alloc: &pb::Allocation,
    task: &pb::Task,
    node: &NodeContext,
    dirs: &DirView,
    upstreams: &[ConsulUpstream],
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("NOMAD_ALLOC_ID", alloc.id.clone());
    set(
        "NOMAD_SHORT_ALLOC_ID",
        alloc.id.get(..8).unwrap_or(&alloc.id).to_string(),
    );
    set("NOMAD_ALLOC_NAME", alloc.name.clone());
    set(
        "NOMAD_ALLOC_INDEX",
        alloc_index(&alloc.name).unwrap_or(0).to_string(),
    );
    set("NOMAD_JOB_ID", alloc.job_id.clone());
    set(
        "NOMAD_JOB_NAME",
        if alloc.job_name.is_empty() {
            alloc.job_id.clone()
        } else {
            alloc.job_name.clone()
        },
    );
    set("NOMAD_GROUP_NAME", alloc.task_group.clone());
    set("NOMAD_TASK_NAME", task.name.clone());
    set(
        "NOMAD_NAMESPACE",
        non_empty(&alloc.namespace, flotilla_types::DEFAULT_NAMESPACE),
    );
    set("NOMAD_DC", non_empty(&alloc.datacenter, &node.datacenter));
    set("NOMAD_REGION", non_empty(&alloc.region, "global"));
    set("NOMAD_ALLOC_DIR", dirs.alloc_dir.clone());
    set("NOMAD_TASK_DIR", dirs.task_dir.clone());
    set("NOMAD_SECRETS_DIR", dirs.secrets_dir.clone());
    set("NOMAD_CPU_LIMIT", task.cpu_mhz.to_string());
    set("NOMAD_MEMORY_LIMIT", task.memory_mb.to_string());

    for port in &alloc.ports {
        let label = env_key(&port.label);
        let host_ip = usable_ip(&port.host_ip, &node.address);
        let inner = if port.to != 0 { port.to } else { port.value };
        set(&format!("NOMAD_PORT_{label}"), inner.to_string());
        set(&format!("NOMAD_HOST_PORT_{label}"), port.value.to_string());
        set(&format!("NOMAD_ALLOC_PORT_{label}"), inner.to_string());
        set(&format!("NOMAD_IP_{label}"), host_ip.clone());
        set(&format!("NOMAD_HOST_IP_{label}"), host_ip.clone());
        set(
            &format!("NOMAD_ADDR_{label}"),
            join_host_port(&host_ip, inner),
        );
        set(
            &format!("NOMAD_HOST_ADDR_{label}"),
            join_host_port(&host_ip, port.value),
        );
    }

    for (k, v) in upstream_env(upstreams) {
        set(&k, v);
    }

    // Job, then group, then task meta: later levels win.
    let mut meta: BTreeMap<&str, &str> = BTreeMap::new();
    for level in [&alloc.job_meta, &alloc.group_meta, &task.meta] {
        for (k, v) in level {
            meta.insert(k, v);
        }
    }
    for (k, v) in meta {
        let key = env_key(k);
        set(&format!("NOMAD_META_{key}"), v.to_string());
        set(
            &format!("NOMAD_META_{}", key.to_ascii_uppercase()),
            v.to_string(),
        );
    }

    // The task's env block may refer to the generated variables, not to itself.
    let generated = env.clone();
    for (k, v) in &task.env {
        env.insert(k.clone(), interpolate(v, &generated, node));
    }
    env
}

/// Nomad's variables for Connect upstreams: `NOMAD_UPSTREAM_ADDR_<name>` (`ip:port`),
/// `NOMAD_UPSTREAM_IP_<name>` and `NOMAD_UPSTREAM_PORT_<name>`, where the listener the node
/// proxy opens for the upstream binds. `<name>` is the destination with the characters that
/// port labels may not have in variable names replaced by `_` (`my-db` → `my_db`).
pub fn upstream_env(upstreams: &[ConsulUpstream]) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(upstreams.len() * 3);
    for u in upstreams {
        let name = env_key(&u.destination_name);
        let ip = u.bind_address();
        let port = u32::from(u.local_bind_port);
        out.push((
            format!("NOMAD_UPSTREAM_ADDR_{name}"),
            join_host_port(ip, port),
        ));
        out.push((format!("NOMAD_UPSTREAM_IP_{name}"), ip.to_string()));
        out.push((format!("NOMAD_UPSTREAM_PORT_{name}"), port.to_string()));
    }
    out
}

fn non_empty(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

/// The port's own host IP when it names one, else the node's address.
fn usable_ip(host_ip: &str, node_address: &str) -> String {
    match host_ip.parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => host_ip.to_string(),
        _ => node_address.to_string(),
    }
}

/// `ip:port`, with brackets around IPv6 addresses.
pub fn join_host_port(host: &str, port: u32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Replaces every `${…}` reference in `input` that names something known; unknown references
/// stay as they are.
///
/// - `${NOMAD_…}` and `${env.X}` (or `${env["X"]}`): from the task environment `env`;
/// - `${node.unique.id}`, `${node.unique.name}`, `${node.datacenter}`, `${node.class}`;
/// - `${attr.<name>}` (or `${node.attr.<name>}`): node attributes such as `kernel.name`;
/// - `${meta.<key>}` (or `${node.meta.<key>}`): node meta.
pub fn interpolate(input: &str, env: &BTreeMap<String, String>, node: &NodeContext) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            // No closing brace: the remainder is literal.
            out.push_str(&rest[start..]);
            return out;
        };
        let reference = &after[..end];
        match resolve(reference.trim(), env, node) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn resolve<'a>(
    reference: &str,
    env: &'a BTreeMap<String, String>,
    node: &'a NodeContext,
) -> Option<&'a str> {
    if reference.starts_with("NOMAD_") {
        return env.get(reference).map(String::as_str);
    }
    if let Some(name) = reference.strip_prefix("env.") {
        return env.get(name).map(String::as_str);
    }
    if let Some(quoted) = reference
        .strip_prefix("env[")
        .and_then(|r| r.strip_suffix(']'))
    {
        let name = quoted.trim().trim_matches('"');
        return env.get(name).map(String::as_str);
    }
    match reference {
        "node.unique.id" => return Some(&node.id),
        "node.unique.name" => return Some(&node.name),
        "node.datacenter" => return Some(&node.datacenter),
        "node.class" => return Some(&node.class),
        _ => {}
    }
    if let Some(name) = reference
        .strip_prefix("attr.")
        .or_else(|| reference.strip_prefix("node.attr."))
    {
        return node.attributes.get(name).map(String::as_str);
    }
    if let Some(key) = reference
        .strip_prefix("meta.")
        .or_else(|| reference.strip_prefix("node.meta."))
    {
        return node.meta.get(key).map(String::as_str);
    }
    None
}

/// [`interpolate`] applied to every string in a JSON value (object values, list items, nested
/// at any depth). Keys, numbers and booleans are left alone.
pub fn interpolate_json(
    value: &Value,
    env: &BTreeMap<String, String>,
    node: &NodeContext,
) -> Value {
    match value {
        Value::String(s) => Value::String(interpolate(s, env, node)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| interpolate_json(v, env, node))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), interpolate_json(v, env, node)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node() -> NodeContext {
        NodeContext {
            id: "node-1234".into(),
            name: "worker-a".into(),
            datacenter: "dc1".into(),
            class: "gpu".into(),
            address: "10.0.0.5".into(),
            attributes: BTreeMap::from([("kernel.name".into(), "linux".into())]),
            meta: BTreeMap::from([("rack".into(), "r1".into())]),
        }
    }

    fn alloc() -> pb::Allocation {
        pb::Allocation {
            id: "0123456789abcdef".into(),
            name: "shop.web[3]".into(),
            namespace: String::new(),
            job_id: "shop".into(),
            task_group: "web".into(),
            datacenter: "dc1".into(),
            ports: vec![
                pb::Port {
                    label: "http".into(),
                    value: 23456,
                    to: 0,
                    host_ip: String::new(),
                },
                pb::Port {
                    label: "admin".into(),
                    value: 24000,
                    to: 9000,
                    host_ip: "192.168.1.9".into(),
                },
            ],
            job_meta: [
                ("owner".to_string(), "team-a".to_string()),
                ("tier".into(), "job".into()),
            ]
            .into(),
            group_meta: [("tier".to_string(), "group".to_string())].into(),
            ..Default::default()
        }
    }

    fn task() -> pb::Task {
        pb::Task {
            name: "server".into(),
            driver: "raw_exec".into(),
            cpu_mhz: 500,
            memory_mb: 256,
            meta: [
                ("tier".to_string(), "task".to_string()),
                ("my-key".into(), "x".into()),
            ]
            .into(),
            env: [
                ("LISTEN".to_string(), "${NOMAD_ADDR_http}".to_string()),
                ("NOMAD_DC".into(), "overridden".into()),
            ]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn env_has_nomads_variables() {
        let dirs = TaskDirs::new(Path::new("/data"), "0123456789abcdef", "server");
        let env = task_env(&alloc(), &task(), &node(), &dirs.host_view(), &[]);
        let get = |k: &str| env.get(k).map(String::as_str).unwrap_or("<missing>");
        assert_eq!(get("NOMAD_ALLOC_ID"), "0123456789abcdef");
        assert_eq!(get("NOMAD_SHORT_ALLOC_ID"), "01234567");
        assert_eq!(get("NOMAD_ALLOC_NAME"), "shop.web[3]");
        assert_eq!(get("NOMAD_ALLOC_INDEX"), "3");
        assert_eq!(get("NOMAD_JOB_ID"), "shop");
        assert_eq!(get("NOMAD_JOB_NAME"), "shop");
        assert_eq!(get("NOMAD_GROUP_NAME"), "web");
        assert_eq!(get("NOMAD_TASK_NAME"), "server");
        assert_eq!(get("NOMAD_NAMESPACE"), "default");
        assert_eq!(get("NOMAD_REGION"), "global");
        assert_eq!(get("NOMAD_CPU_LIMIT"), "500");
        assert_eq!(get("NOMAD_MEMORY_LIMIT"), "256");
        assert_eq!(
            get("NOMAD_ALLOC_DIR"),
            "/data/allocs/0123456789abcdef/alloc"
        );
        assert_eq!(
            get("NOMAD_TASK_DIR"),
            "/data/allocs/0123456789abcdef/server/local"
        );
        assert_eq!(
            get("NOMAD_SECRETS_DIR"),
            "/data/allocs/0123456789abcdef/server/secrets"
        );
        // A port without `to`: everything is the host port on the node's address.
        assert_eq!(get("NOMAD_PORT_http"), "23456");
        assert_eq!(get("NOMAD_HOST_PORT_http"), "23456");
        assert_eq!(get("NOMAD_IP_http"), "10.0.0.5");
        assert_eq!(get("NOMAD_ADDR_http"), "10.0.0.5:23456");
        assert_eq!(get("NOMAD_HOST_ADDR_http"), "10.0.0.5:23456");
        // A mapped port on its own host IP.
        assert_eq!(get("NOMAD_PORT_admin"), "9000");
        assert_eq!(get("NOMAD_ALLOC_PORT_admin"), "9000");
        assert_eq!(get("NOMAD_HOST_PORT_admin"), "24000");
        assert_eq!(get("NOMAD_IP_admin"), "192.168.1.9");
        assert_eq!(get("NOMAD_ADDR_admin"), "192.168.1.9:9000");
        assert_eq!(get("NOMAD_HOST_ADDR_admin"), "192.168.1.9:24000");
        // Meta: task wins over group wins over job; odd characters become `_`.
        assert_eq!(get("NOMAD_META_tier"), "task");
        assert_eq!(get("NOMAD_META_TIER"), "task");
        assert_eq!(get("NOMAD_META_owner"), "team-a");
        assert_eq!(get("NOMAD_META_my_key"), "x");
        // The task's env block is interpolated and wins.
        assert_eq!(get("LISTEN"), "10.0.0.5:23456");
        assert_eq!(get("NOMAD_DC"), "overridden");

        // In a container the directories are where the driver mounts them.
        let env = task_env(&alloc(), &task(), &node(), &DirView::container(), &[]);
        assert_eq!(env["NOMAD_ALLOC_DIR"], "/alloc");
        assert_eq!(env["NOMAD_TASK_DIR"], "/local");
        assert_eq!(env["NOMAD_SECRETS_DIR"], "/secrets");
    }

    #[test]
    fn upstreams_are_in_every_tasks_environment() {
        let upstreams = [
            ConsulUpstream {
                destination_name: "my-db".into(),
                local_bind_port: 5432,
                ..Default::default()
            },
            ConsulUpstream {
                destination_name: "cache.v2".into(),
                local_bind_port: 6379,
                local_bind_address: "::1".into(),
                ..Default::default()
            },
        ];
        let mut task = task();
        task.env.insert(
            "DB".into(),
            "postgres://${NOMAD_UPSTREAM_ADDR_my_db}/app".into(),
        );
        let env = task_env(&alloc(), &task, &node(), &DirView::container(), &upstreams);
        let get = |k: &str| env.get(k).map(String::as_str).unwrap_or("<missing>");
        // Dashes become `_`, as in port labels and meta keys; the default bind is loopback.
        assert_eq!(get("NOMAD_UPSTREAM_ADDR_my_db"), "127.0.0.1:5432");
        assert_eq!(get("NOMAD_UPSTREAM_IP_my_db"), "127.0.0.1");
        assert_eq!(get("NOMAD_UPSTREAM_PORT_my_db"), "5432");
        assert_eq!(get("NOMAD_UPSTREAM_ADDR_cache.v2"), "[::1]:6379");
        assert_eq!(get("NOMAD_UPSTREAM_PORT_cache.v2"), "6379");
        // The task's env block may refer to them.
        assert_eq!(get("DB"), "postgres://127.0.0.1:5432/app");

        let plain = task_env(&alloc(), &task, &node(), &DirView::container(), &[]);
        assert!(!plain.keys().any(|k| k.starts_with("NOMAD_UPSTREAM_")));
    }

    #[test]
    fn index_defaults_and_ipv6() {
        assert_eq!(alloc_index("a.b[12]"), Some(12));
        assert_eq!(alloc_index("weird"), None);
        assert_eq!(alloc_index("a[x]"), None);
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(usable_ip("0.0.0.0", "10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn interpolation_resolves_known_references() {
        let env = BTreeMap::from([
            ("NOMAD_PORT_http".to_string(), "8080".to_string()),
            ("GREETING".to_string(), "hello".to_string()),
        ]);
        let n = node();
        let cases = [
            ("--port=${NOMAD_PORT_http}", "--port=8080"),
            ("${env.GREETING} ${env[\"GREETING\"]}", "hello hello"),
            (
                "${node.unique.id}/${node.unique.name}",
                "node-1234/worker-a",
            ),
            ("${node.datacenter}-${node.class}", "dc1-gpu"),
            (
                "${attr.kernel.name} ${node.attr.kernel.name}",
                "linux linux",
            ),
            ("${meta.rack}${node.meta.rack}", "r1r1"),
            ("${ NOMAD_PORT_http }", "8080"),
            ("no references", "no references"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(interpolate(input, &env, &n), want, "input {input:?}");
        }
    }

    #[test]
    fn unknown_references_stay_literal() {
        let env = BTreeMap::new();
        let n = node();
        let cases = [
            "${NOMAD_PORT_missing}",
            "${env.NOPE}",
            "${attr.nope}",
            "${meta.nope}",
            "${something.else}",
            "price: $5 ${unclosed",
            "${}",
            "$NOMAD_PORT_http",
        ];
        for input in cases {
            assert_eq!(interpolate(input, &env, &n), input);
        }
        assert_eq!(
            interpolate("a ${x} b ${node.class} c", &env, &n),
            "a ${x} b gpu c"
        );
    }

    #[test]
    fn json_interpolation_reaches_nested_strings() {
        let env = BTreeMap::from([("NOMAD_PORT_http".to_string(), "8080".to_string())]);
        let config = json!({
            "command": "sh",
            "args": ["-c", "serve ${NOMAD_PORT_http}", 3, true],
            "nested": {"list": [{"x": "${node.class}"}]},
            "${NOMAD_PORT_http}": null,
        });
        let got = interpolate_json(&config, &env, &node());
        assert_eq!(
            got,
            json!({
                "command": "sh",
                "args": ["-c", "serve 8080", 3, true],
                "nested": {"list": [{"x": "gpu"}]},
                "${NOMAD_PORT_http}": null,
            })
        );
    }

    #[test]
    fn log_paths_follow_nomads_layout() {
        let p = log_path(Path::new("/d"), "a1", "web", LogKind::Stderr);
        assert_eq!(p, Path::new("/d/allocs/a1/alloc/logs/web.stderr.0"));
        let dirs = TaskDirs::new(Path::new("/d"), "a1", "web");
        assert_eq!(dirs.task_dir, Path::new("/d/allocs/a1/web"));
        assert_eq!(
            dirs.stdout,
            Path::new("/d/allocs/a1/alloc/logs/web.stdout.0")
        );
    }
}
