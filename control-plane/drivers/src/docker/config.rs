//! The docker driver's `config { … }` block (Nomad's names), and the container it describes.
//!
//! Parsing and building the container definition are pure, so every rule here is unit-tested
//! without a daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, PortBinding};
use serde_json::{Map, Value};

use crate::config::{invalid, kind};
use crate::{DriverError, TaskSpec};

/// Label marking containers this driver created.
pub const LABEL_MANAGED: &str = "com.flotilla.managed";
/// Label holding the allocation id.
pub const LABEL_ALLOC_ID: &str = "com.flotilla.alloc_id";
/// Label holding the task name.
pub const LABEL_TASK: &str = "com.flotilla.task";
/// Label holding the node scope, when the driver has one.
pub const LABEL_NODE: &str = "com.flotilla.node";

/// `config { … }` of a docker task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerConfig {
    /// `image`: the image reference (required).
    pub image: String,
    /// `command`: replaces the image's command.
    pub command: Option<String>,
    /// `args`: arguments to `command` (or, without one, the image's command line).
    pub args: Vec<String>,
    /// `entrypoint`: replaces the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// `work_dir`: the working directory inside the container.
    pub work_dir: Option<String>,
    /// `ports`: labels of the allocation's ports to publish.
    pub ports: Vec<String>,
    /// `volumes`: `host:container[:options]` binds.
    pub volumes: Vec<VolumeBind>,
    /// `mount` blocks.
    pub mounts: Vec<MountBlock>,
    /// `network_mode`: `bridge`, `host`, `none`, `container:<id>` or a network's name.
    pub network_mode: Option<String>,
    /// `labels`: extra container labels (Flotilla's own always win).
    pub labels: BTreeMap<String, String>,
    /// `force_pull`: pull the image even when it is present.
    pub force_pull: bool,
}

/// One `volumes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    /// The host path as written (relative ones are relative to the task directory).
    pub source: String,
    /// The path inside the container.
    pub target: String,
    /// The options after the second colon (`ro`, `rw`, `z`, …), if any.
    pub options: Option<String>,
}

/// What a `mount` block mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named (or, without `source`, anonymous) Docker volume.
    Volume,
    /// A memory file system.
    Tmpfs,
}

/// One `mount { type = … source = … target = … readonly = … }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountBlock {
    /// `type`, `volume` when absent (as in Nomad).
    pub kind: MountKind,
    /// `source`: host path for binds (relative to the task directory), volume name.
    pub source: Option<String>,
    /// `target`: the path inside the container.
    pub target: String,
    /// `readonly`.
    pub read_only: bool,
}

impl DockerConfig {
    /// Reads the block; errors name the field (`config.ports: expected a list of strings`).
    /// Other fields (`port_map`, `auth`, …) are ignored.
    pub fn parse(config: &Value) -> Result<Self, DriverError> {
        let obj = match config {
            Value::Object(obj) => obj,
            Value::Null => {
                return Err(invalid(
                    "config.image",
                    "required, but the task has no config block",
                ));
            }
            other => {
                return Err(invalid(
                    "config",
                    format!("expected an object, got {}", kind(other)),
                ));
            }
        };
        let image = match opt_string(obj, "image")? {
            None => return Err(invalid("config.image", "required")),
            Some(s) if s.trim().is_empty() => {
                return Err(invalid("config.image", "must not be empty"));
            }
            Some(s) => s,
        };
        let volumes = string_list(obj, "volumes")?
            .iter()
            .enumerate()
            .map(|(i, v)| parse_volume(i, v))
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = match obj.get("mount") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, m)| parse_mount(&format!("config.mount[{i}]"), m))
                .collect::<Result<Vec<_>, _>>()?,
            Some(one @ Value::Object(_)) => vec![parse_mount("config.mount", one)?],
            Some(other) => {
                return Err(invalid(
                    "config.mount",
                    format!("expected mount blocks, got {}", kind(other)),
                ));
            }
        };
        let force_pull = match obj.get("force_pull") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(
                    "config.force_pull",
                    format!("expected a boolean, got {}", kind(other)),
                ));
            }
        };
        let entrypoint = match obj.get("entrypoint") {
            None | Some(Value::Null) => None,
            Some(_) => Some(string_list(obj, "entrypoint")?),
        };
        Ok(Self {
            image,
            command: opt_string(obj, "command")?.filter(|c| !c.is_empty()),
            args: string_list(obj, "args")?,
            entrypoint,
            work_dir: opt_string(obj, "work_dir")?.filter(|w| !w.is_empty()),
            ports: string_list(obj, "ports")?,
            volumes,
            mounts,
            network_mode: opt_string(obj, "network_mode")?.filter(|n| !n.is_empty()),
            labels: labels(obj)?,
            force_pull,
        })
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, DriverError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            &format!("config.{key}"),
            format!("expected a string, got {}", kind(other)),
        )),
    }
}

fn string_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, DriverError> {
    let field = format!("config.{key}");
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(
                    &field,
                    format!("expected a list of strings, element {i} is {}", kind(other)),
                )),
            })
            .collect(),
        Some(other) => Err(invalid(
            &field,
            format!("expected a list of strings, got {}", kind(other)),
        )),
    }
}

/// `labels { a = "b" }` arrives as an object, or as a list of objects when written as blocks.
fn labels(obj: &Map<String, Value>) -> Result<BTreeMap<String, String>, DriverError> {
    let mut out = BTreeMap::new();
    let blocks: Vec<&Map<String, Value>> = match obj.get("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => vec![m],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::Object(m) => Ok(m),
                other => Err(invalid(
                    "config.labels",
                    format!(
                        "expected a map of strings, got a list holding {}",
                        kind(other)
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid(
                "config.labels",
                format!("expected a map of strings, got {}", kind(other)),
            ));
        }
    };
    for block in blocks {
        for (k, v) in block {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(invalid(
                        &format!("config.labels.{k}"),
                        format!("expected a string, got {}", kind(other)),
                    ));
                }
            };
            out.insert(k.clone(), v);
        }
    }
    Ok(out)
}

fn parse_volume(i: usize, spec: &str) -> Result<VolumeBind, DriverError> {
    let field = format!("config.volumes[{i}]");
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let (source, target, options) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, o] => (*s, *t, Some(*o)),
        _ => {
            return Err(invalid(
                &field,
                format!("{spec:?}: expected \"host_path:container_path[:ro]\""),
            ));
        }
    };
    if source.is_empty() || target.is_empty() {
        return Err(invalid(
            &field,
            format!("{spec:?}: expected \"host_path:container_path[:ro]\""),
        ));
    }
    if !target.starts_with('/') {
        return Err(invalid(
            &field,
            format!("{spec:?}: the container path {target:?} must be absolute"),
        ));
    }
    Ok(VolumeBind {
        source: source.to_string(),
        target: target.to_string(),
        options: options.filter(|o| !o.is_empty()).map(str::to_string),
    })
}

fn parse_mount(field: &str, value: &Value) -> Result<MountBlock, DriverError> {
    let Value::Object(obj) = value else {
        return Err(invalid(
            field,
            format!("expected a mount block, got {}", kind(value)),
        ));
    };
    let get_str = |key: &str| -> Result<Option<String>, DriverError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(
                &format!("{field}.{key}"),
                format!("expected a string, got {}", kind(other)),
            )),
        }
    };
    let kind_name = get_str("type")?;
    let mount_kind = match kind_name.as_deref() {
        None | Some("volume") => MountKind::Volume,
        Some("bind") => MountKind::Bind,
        Some("tmpfs") => MountKind::Tmpfs,
        Some(other) => {
            return Err(invalid(
                &format!("{field}.type"),
                format!("{other:?}: expected \"bind\", \"volume\" or \"tmpfs\""),
            ));
        }
    };
    let Some(target) = get_str("target")? else {
        return Err(invalid(&format!("{field}.target"), "required"));
    };
    let source = get_str("source")?;
    if mount_kind == MountKind::Bind && source.is_none() {
        return Err(invalid(
            &format!("{field}.source"),
            "required for a bind mount",
        ));
    }
    let read_only = match obj.get("readonly") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                &format!("{field}.readonly"),
                format!("expected a boolean, got {}", kind(other)),
            ));
        }
    };
    Ok(MountBlock {
        kind: mount_kind,
        source,
        target,
        read_only,
    })
}

/// The container's name: `<task>-<alloc id>`, with characters Docker refuses replaced by `_`.
pub fn container_name(spec: &TaskSpec) -> String {
    let task = if spec.task_name.is_empty() {
        spec.name.as_str()
    } else {
        spec.task_name.as_str()
    };
    let raw = if spec.alloc_id.is_empty() {
        task.to_string()
    } else {
        format!("{task}-{}", spec.alloc_id)
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Docker wants an alphanumeric first character.
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 't');
    }
    name
}

/// A host path from the config: relative paths are relative to the task directory.
fn host_path(task_dir: &Path, source: &str) -> String {
    let p = Path::new(source);
    if p.is_absolute() {
        source.to_string()
    } else {
        task_dir.join(p).display().to_string()
    }
}

/// The container definition for `spec` (`node_scope` adds the node label).
pub fn container_body(
    cfg: &DockerConfig,
    spec: &TaskSpec,
    node_scope: Option<&str>,
) -> Result<ContainerCreateBody, DriverError> {
    // Ports: each label from `config.ports` must be one of the allocation's.
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    let mut exposed: Vec<String> = Vec::new();
    for label in &cfg.ports {
        let Some(port) = spec.ports.iter().find(|p| &p.label == label) else {
            let have: Vec<&str> = spec.ports.iter().map(|p| p.label.as_str()).collect();
            let have = if have.is_empty() {
                "it has none".to_string()
            } else {
                format!("it has {}", have.join(", "))
            };
            return Err(invalid(
                "config.ports",
                format!("port label {label:?} is not one of the allocation's ports ({have})"),
            ));
        };
        let inside = if port.to == 0 {
            port.host_port
        } else {
            port.to
        };
        for proto in ["tcp", "udp"] {
            let key = format!("{inside}/{proto}");
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(port.host_ip.clone()).filter(|ip| !ip.is_empty()),
                    host_port: Some(port.host_port.to_string()),
                });
        }
    }

    let binds: Vec<String> = cfg
        .volumes
        .iter()
        .map(|v| {
            let src = host_path(&spec.task_dir, &v.source);
            match &v.options {
                Some(o) => format!("{src}:{}:{o}", v.target),
                None => format!("{src}:{}", v.target),
            }
        })
        .collect();

    let mut mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    for m in &cfg.mounts {
        let (typ, source) = match m.kind {
            MountKind::Bind => (
                MountType::BIND,
                m.source.as_deref().map(|s| host_path(&spec.task_dir, s)),
            ),
            MountKind::Volume => (MountType::VOLUME, m.source.clone()),
            MountKind::Tmpfs => (MountType::TMPFS, None),
        };
        mounts.push(Mount {
            target: Some(m.target.clone()),
            source,
            typ: Some(typ),
            read_only: Some(m.read_only),
            ..Default::default()
        });
    }

    let mut labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_ALLOC_ID.into(), spec.alloc_id.clone());
    labels.insert(LABEL_TASK.into(), spec.task_name.clone());
    if let Some(node) = node_scope {
        labels.insert(LABEL_NODE.into(), node.to_string());
    }

    let cmd = match &cfg.command {
        Some(c) => Some(
            std::iter::once(c.clone())
                .chain(cfg.args.iter().cloned())
                .collect(),
        ),
        None if !cfg.args.is_empty() => Some(cfg.args.clone()),
        None => None,
    };

    Ok(ContainerCreateBody {
        image: Some(cfg.image.clone()),
        cmd,
        entrypoint: cfg.entrypoint.clone(),
        working_dir: cfg.work_dir.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: spec.user.clone().filter(|u| !u.trim().is_empty()),
        labels: Some(labels),
        exposed_ports: Some(exposed).filter(|e| !e.is_empty()),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(HostConfig {
            binds: Some(binds).filter(|b| !b.is_empty()),
            mounts: Some(mounts).filter(|m| !m.is_empty()),
            port_bindings: Some(bindings).filter(|b| !b.is_empty()),
            network_mode: cfg.network_mode.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{MountSpec, PortMapping};

    fn spec() -> TaskSpec {
        TaskSpec {
            name: "a1/web".into(),
            alloc_id: "a1".into(),
            task_name: "web".into(),
            task_dir: "/alloc/web".into(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            ports: vec![
                PortMapping {
                    label: "http".into(),
                    host_ip: "127.0.0.1".into(),
                    host_port: 23456,
                    to: 8080,
                },
                PortMapping {
                    label: "admin".into(),
                    host_ip: "".into(),
                    host_port: 23457,
                    to: 0,
                },
            ],
            mounts: vec![MountSpec {
                source: "/data/alloc".into(),
                target: "/alloc".into(),
                read_only: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn parses_every_field() {
        let c = DockerConfig::parse(&json!({
            "image": "app:1",
            "command": "/bin/app",
            "args": ["-v"],
            "entrypoint": ["/init"],
            "work_dir": "/srv",
            "ports": ["http"],
            "port_map": [{"http": 8080}],
            "volumes": ["data:/data", "/etc/x:/x:ro"],
            "mount": [{"type": "tmpfs", "target": "/tmp"}, {"type": "bind", "source": "conf", "target": "/conf", "readonly": true}],
            "network_mode": "host",
            "labels": [{"team": "core"}],
            "force_pull": true,
        }))
        .unwrap();
        assert_eq!(c.image, "app:1");
        assert_eq!(c.command.as_deref(), Some("/bin/app"));
        assert_eq!(c.entrypoint, Some(vec!["/init".to_string()]));
        assert_eq!(c.volumes[1].options.as_deref(), Some("ro"));
        assert_eq!(c.mounts[0].kind, MountKind::Tmpfs);
        assert!(c.mounts[1].read_only);
        assert_eq!(c.labels["team"], "core");
        assert!(c.force_pull);
        // A single mount block may arrive as an object.
        let c = DockerConfig::parse(&json!({"image": "x", "mount": {"target": "/v"}})).unwrap();
        assert_eq!(c.mounts[0].kind, MountKind::Volume);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "config.image: required"),
            (json!({"image": " "}), "config.image: must not be empty"),
            (
                json!({"image": "x", "ports": "http"}),
                "config.ports: expected a list of strings, got a string",
            ),
            (
                json!({"image": "x", "volumes": ["nocolon"]}),
                "config.volumes[0]: \"nocolon\": expected \"host_path:container_path[:ro]\"",
            ),
            (
                json!({"image": "x", "volumes": ["a:rel"]}),
                "config.volumes[0]: \"a:rel\": the container path \"rel\" must be absolute",
            ),
            (
                json!({"image": "x", "mount": [{"type": "nfs", "target": "/x"}]}),
                "config.mount[0].type: \"nfs\": expected \"bind\", \"volume\" or \"tmpfs\"",
            ),
            (
                json!({"image": "x", "mount": [{"type": "bind", "target": "/x"}]}),
                "config.mount[0].source: required for a bind mount",
            ),
            (
                json!({"image": "x", "force_pull": "yes"}),
                "config.force_pull: expected a boolean, got a string",
            ),
            (
                json!({"image": "x", "labels": {"a": [1]}}),
                "config.labels.a: expected a string, got a list",
            ),
        ];
        for (config, want) in cases {
            let err = DockerConfig::parse(&config).unwrap_err().to_string();
            assert_eq!(err, want, "for {config}");
        }
    }

    #[test]
    fn container_publishes_ports_mounts_and_labels() {
        let cfg = DockerConfig::parse(&json!({
            "image": "app:1",
            "args": ["serve"],
            "ports": ["http", "admin"],
            "volumes": ["data:/data:ro", "/abs:/abs"],
            "mount": [{"type": "bind", "source": "conf", "target": "/conf", "readonly": true}],
            "labels": {"com.flotilla.managed": "false", "team": "core"},
        }))
        .unwrap();
        let body = container_body(&cfg, &spec(), Some("node-1")).unwrap();
        assert_eq!(body.cmd, Some(vec!["serve".to_string()]));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_ALLOC_ID], "a1");
        assert_eq!(labels[LABEL_TASK], "web");
        assert_eq!(labels[LABEL_NODE], "node-1");
        assert_eq!(labels["team"], "core");
        let exposed = body.exposed_ports.unwrap();
        assert!(exposed.contains(&"8080/tcp".to_string()));
        assert!(exposed.contains(&"23457/udp".to_string()));
        let host = body.host_config.unwrap();
        let ports = host.port_bindings.unwrap();
        let http = ports["8080/tcp"].as_ref().unwrap();
        assert_eq!(http[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(http[0].host_port.as_deref(), Some("23456"));
        assert_eq!(ports["23457/tcp"].as_ref().unwrap()[0].host_ip, None);
        assert_eq!(
            host.binds.unwrap(),
            vec!["/alloc/web/data:/data:ro", "/abs:/abs"]
        );
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].source.as_deref(), Some("/data/alloc"));
        assert_eq!(mounts[1].source.as_deref(), Some("/alloc/web/conf"));
        assert_eq!(mounts[1].read_only, Some(true));
    }

    #[test]
    fn unknown_port_labels_are_refused() {
        let cfg = DockerConfig::parse(&json!({"image": "x", "ports": ["grpc"]})).unwrap();
        let err = container_body(&cfg, &spec(), None).unwrap_err().to_string();
        assert_eq!(
            err,
            "config.ports: port label \"grpc\" is not one of the allocation's ports (it has http, admin)"
        );
    }

    #[test]
    fn command_takes_args_and_names_are_docker_safe() {
        let cfg =
            DockerConfig::parse(&json!({"image": "x", "command": "/a", "args": ["b"]})).unwrap();
        let body = container_body(&cfg, &spec(), None).unwrap();
        assert_eq!(body.cmd, Some(vec!["/a".to_string(), "b".to_string()]));
        assert_eq!(container_name(&spec()), "web-a1");
        let odd = TaskSpec {
            task_name: "my task/1".into(),
            alloc_id: "x".into(),
            ..Default::default()
        };
        assert_eq!(container_name(&odd), "my_task_1-x");
    }
}
