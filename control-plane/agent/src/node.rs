//! What the node is: its stable id, capacity and attributes, as reported at registration.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_drivers::Drivers;
use flotilla_proto::agent::v1 as pb;

use crate::AgentError;
use crate::config::AgentConfig;
use crate::env::NodeContext;

/// The node's id from `<data_dir>/node-id`, created (uuid v4) on first start.
pub fn load_or_create_node_id(data_dir: &Path) -> Result<String, AgentError> {
    load_or_create_uuid(data_dir, "node-id")
}

/// The node's secret from `<data_dir>/node-secret` (mode 0600), created on first start. The
/// server records it at the first registration; certificate requests must present it.
pub fn load_or_create_node_secret(data_dir: &Path) -> Result<String, AgentError> {
    load_or_create_uuid(data_dir, "node-secret")
}

fn load_or_create_uuid(data_dir: &Path, name: &str) -> Result<String, AgentError> {
    let path = data_dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            uuid::Uuid::parse_str(id).map_err(|e| AgentError::NodeId {
                path: path.clone(),
                message: format!("expected a UUID, found {id:?}: {e}"),
            })?;
            Ok(id.to_string())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let id = uuid::Uuid::new_v4().to_string();
            // Write then rename, so a crash never leaves a half-written file; owner-only, as
            // the secret is a credential.
            let tmp = data_dir.join(format!("{name}.tmp"));
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(format!("{id}\n").as_bytes()))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| AgentError::DataDir {
                    path: path.clone(),
                    source,
                })?;
            Ok(id)
        }
        Err(source) => Err(AgentError::DataDir { path, source }),
    }
}

/// Capacity read from the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cores: u32,
    pub cpu_mhz: u64,
    pub memory_mb: u64,
}

/// Cores and total MHz from `/proc/cpuinfo` text: (processor count, sum of `cpu MHz`).
/// Missing MHz lines count as 1000 MHz per core.
pub fn parse_cpuinfo(text: &str) -> (u32, u64) {
    let mut cores = 0u32;
    let mut mhz_sum = 0f64;
    let mut mhz_lines = 0u32;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => cores += 1,
            "cpu MHz" => {
                if let Ok(mhz) = value.trim().parse::<f64>() {
                    mhz_sum += mhz;
                    mhz_lines += 1;
                }
            }
            _ => {}
        }
    }
    let total = if cores > 0 && mhz_lines > 0 {
        // Average per core × cores, in case some processors lack the line.
        (mhz_sum / f64::from(mhz_lines) * f64::from(cores)).round() as u64
    } else {
        1000 * u64::from(cores)
    };
    (cores, total)
}

/// `MemTotal` in MB from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The machine's capacity, with the config's overrides applied.
pub fn capacity(cfg: &AgentConfig) -> Capacity {
    let parallelism = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let (proc_cores, proc_mhz) = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or((0, 0));
    let cores = if proc_cores > 0 {
        proc_cores
    } else {
        parallelism
    };
    let cpu_mhz = cfg.cpu_mhz.unwrap_or(if proc_mhz > 0 {
        proc_mhz
    } else {
        1000 * u64::from(cores)
    });
    let memory_mb = cfg.memory_mb.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .unwrap_or(1024)
    });
    Capacity {
        cores,
        cpu_mhz,
        memory_mb,
    }
}

/// The host name from the kernel.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
}

/// `ID` and `VERSION_ID` from `/etc/os-release` text.
fn parse_os_release(text: &str) -> (Option<String>, Option<String>) {
    let mut id = None;
    let mut version = None;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "ID" => id = Some(v),
                "VERSION_ID" => version = Some(v),
                _ => {}
            }
        }
    }
    (id, version)
}

/// Nomad-style node attributes (`kernel.name`, `os.name`, `cpu.numcores`, `unique.hostname`, …).
pub fn attributes(cfg: &AgentConfig, cap: &Capacity) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        attrs.insert(k.to_string(), v);
    };
    set("kernel.name", std::env::consts::OS.to_string());
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        set("kernel.version", release.trim().to_string());
    }
    let (os_id, os_version) = std::fs::read_to_string("/etc/os-release")
        .map(|t| parse_os_release(&t))
        .unwrap_or((None, None));
    set(
        "os.name",
        os_id.unwrap_or_else(|| std::env::consts::OS.to_string()),
    );
    if let Some(v) = os_version {
        set("os.version", v);
    }
    set("cpu.arch", std::env::consts::ARCH.to_string());
    set("cpu.numcores", cap.cores.to_string());
    set("cpu.totalcompute", cap.cpu_mhz.to_string());
    set(
        "memory.totalbytes",
        (cap.memory_mb * 1024 * 1024).to_string(),
    );
    set(
        "unique.hostname",
        hostname().unwrap_or_else(|| cfg.name.clone()),
    );
    set("unique.network.ip-address", cfg.address.clone());
    set("flotilla.version", env!("CARGO_PKG_VERSION").to_string());
    attrs
}

/// Everything the server learns about the node at registration.
pub async fn describe(
    cfg: &AgentConfig,
    node_id: &str,
    node_secret: &str,
    http_port: u16,
    drivers: &Drivers,
) -> (pb::Node, NodeContext) {
    let cap = capacity(cfg);
    let mut attrs = attributes(cfg, &cap);
    let mut driver_list = Vec::new();
    for d in drivers.iter() {
        let fp = d.fingerprint().await;
        if fp.detected {
            attrs.insert(format!("driver.{}", d.name()), "1".into());
        }
        driver_list.push(pb::Driver {
            name: d.name().to_string(),
            detected: fp.detected,
            healthy: fp.healthy,
            health_description: fp.description,
        });
    }
    let node = pb::Node {
        id: node_id.to_string(),
        secret_id: node_secret.to_string(),
        name: cfg.name.clone(),
        datacenter: cfg.datacenter.clone(),
        node_class: cfg.node_class.clone(),
        address: cfg.address.clone(),
        http_addr: crate::env::join_host_port(&cfg.address, u32::from(http_port)),
        proxy_addr: cfg.proxy_addr.clone(),
        cpu_mhz: cap.cpu_mhz,
        memory_mb: cap.memory_mb,
        cpu_cores: cap.cores,
        attributes: attrs.clone().into_iter().collect(),
        meta: cfg.meta.clone().into_iter().collect(),
        drivers: driver_list,
        host_volumes: cfg
            .host_volumes
            .iter()
            .map(|(name, path)| (name.clone(), path.display().to_string()))
            .collect(),
    };
    let ctx = NodeContext {
        id: node_id.to_string(),
        name: cfg.name.clone(),
        datacenter: cfg.datacenter.clone(),
        class: cfg.node_class.clone(),
        address: cfg.address.clone(),
        attributes: attrs,
        meta: cfg.meta.clone(),
    };
    (node, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_counts_cores_and_mhz() {
        let text =
            "processor\t: 0\ncpu MHz\t\t: 2400.000\n\nprocessor\t: 1\ncpu MHz\t\t: 2600.000\n";
        assert_eq!(parse_cpuinfo(text), (2, 5000));
        // ARM boxes often have no MHz line.
        assert_eq!(parse_cpuinfo("processor : 0\nprocessor : 1\n"), (2, 2000));
        assert_eq!(parse_cpuinfo(""), (0, 0));
    }

    #[test]
    fn meminfo_total() {
        let text = "MemTotal:       16314236 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo(text), Some(15931));
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn os_release() {
        let (id, v) = parse_os_release("NAME=\"Ubuntu\"\nID=ubuntu\nVERSION_ID=\"24.04\"\n");
        assert_eq!(id.as_deref(), Some("ubuntu"));
        assert_eq!(v.as_deref(), Some("24.04"));
    }

    #[test]
    fn node_id_is_stable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path()).unwrap();
        let b = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(a, b);
        std::fs::write(dir.path().join("node-id"), "garbage").unwrap();
        let err = load_or_create_node_id(dir.path()).unwrap_err().to_string();
        assert!(err.contains("node-id") && err.contains("garbage"), "{err}");
    }
}
