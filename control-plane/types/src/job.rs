use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A job: the unit an operator submits (Nomad's `structs.Job`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Job {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub region: String,
    /// `service`, `batch`, `system` or `sysbatch`.
    #[serde(rename = "Type")]
    pub job_type: String,
    pub priority: i32,
    pub datacenters: Vec<String>,
    pub task_groups: Vec<TaskGroup>,
    pub meta: BTreeMap<String, String>,
    pub constraints: Vec<crate::Constraint>,
    pub affinities: Vec<crate::Affinity>,
    pub spreads: Vec<crate::Spread>,
    /// The job-level `update` block (groups inherit what they do not set).
    pub update: Option<crate::UpdateStrategy>,
    pub periodic: Option<crate::PeriodicConfig>,
    #[serde(rename = "ParameterizedJob")]
    pub parameterized_job: Option<crate::ParameterizedJobConfig>,
    /// For a dispatched or periodic child: the parent job's id.
    #[serde(rename = "ParentID")]
    pub parent_id: String,
    /// The payload given to `job dispatch` (base64 in JSON, as Nomad).
    pub payload: String,
    /// `pending`, `running` or `dead`; maintained by the server.
    pub status: String,
    /// Set by `job stop`: the job stays known but nothing of it runs.
    pub stop: bool,
    /// Bumped by the server on every change to the specification.
    pub version: u64,
    /// Set once a deployment of this version completed successfully (`auto_revert` goes back
    /// to the latest stable version).
    pub stable: bool,
    pub submit_time: i64,
    pub create_index: u64,
    pub modify_index: u64,
    /// Index of the last change to the specification (not to the status).
    pub job_modify_index: u64,
}

impl Job {
    /// Fill in the defaults Nomad's `Canonicalize` applies, so every consumer sees the same job.
    pub fn canonicalize(&mut self) {
        if self.name.is_empty() {
            self.name = self.id.clone();
        }
        if self.namespace.is_empty() {
            self.namespace = crate::DEFAULT_NAMESPACE.to_string();
        }
        if self.region.is_empty() {
            self.region = "global".to_string();
        }
        if self.job_type.is_empty() {
            self.job_type = JOB_TYPE_SERVICE.to_string();
        }
        if self.priority == 0 {
            self.priority = 50;
        }
        if self.datacenters.is_empty() {
            self.datacenters = vec!["*".to_string()];
        }
        for group in &mut self.task_groups {
            group.canonicalize(&self.job_type);
        }
    }

    /// The group with this name, if any.
    pub fn group(&self, name: &str) -> Option<&TaskGroup> {
        self.task_groups.iter().find(|g| g.name == name)
    }

    /// Whether the job may run in datacenter `dc` (`*` in the list matches any).
    pub fn allows_datacenter(&self, dc: &str) -> bool {
        self.datacenters.iter().any(|d| glob_match(d, dc))
    }
}

/// Matches `pattern` against `value` where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((prefix, rest)) => {
            let Some(tail) = value.strip_prefix(prefix) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

pub const JOB_TYPE_SERVICE: &str = "service";
pub const JOB_TYPE_BATCH: &str = "batch";
pub const JOB_TYPE_SYSTEM: &str = "system";
pub const JOB_TYPE_SYSBATCH: &str = "sysbatch";

pub const JOB_STATUS_PENDING: &str = "pending";
pub const JOB_STATUS_RUNNING: &str = "running";
pub const JOB_STATUS_DEAD: &str = "dead";

/// A group of tasks placed together on one node (Nomad's `structs.TaskGroup`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroup {
    pub name: String,
    pub count: u32,
    pub tasks: Vec<Task>,
    pub networks: Vec<NetworkResource>,
    pub services: Vec<Service>,
    pub restart_policy: Option<RestartPolicy>,
    pub reschedule_policy: Option<crate::ReschedulePolicy>,
    pub update: Option<crate::UpdateStrategy>,
    pub constraints: Vec<crate::Constraint>,
    pub affinities: Vec<crate::Affinity>,
    pub spreads: Vec<crate::Spread>,
    pub volumes: BTreeMap<String, crate::VolumeRequest>,
    pub ephemeral_disk: Option<crate::EphemeralDisk>,
    pub meta: BTreeMap<String, String>,
    /// Nanoseconds between removing the group's services from every proxy's endpoints and
    /// sending its tasks their kill signal (0: none).
    pub shutdown_delay: i64,
}

impl TaskGroup {
    fn canonicalize(&mut self, job_type: &str) {
        if self.reschedule_policy.is_none() {
            self.reschedule_policy = Some(crate::ReschedulePolicy::default_for(job_type));
        }
        if self.ephemeral_disk.is_none() {
            self.ephemeral_disk = Some(crate::EphemeralDisk::default());
        }
        let default_policy = RestartPolicy::default_for(job_type);
        let group_policy = self.restart_policy.get_or_insert(default_policy).clone();
        for task in &mut self.tasks {
            if task.restart_policy.is_none() {
                task.restart_policy = Some(group_policy.clone());
            }
            if task.resources.cpu == 0 {
                task.resources.cpu = 100;
            }
            if task.resources.memory_mb == 0 {
                task.resources.memory_mb = 300;
            }
            if task.kill_timeout == 0 {
                task.kill_timeout = 5 * crate::NANOS_PER_SEC;
            }
            if task.log_config.is_none() {
                task.log_config = Some(crate::LogConfig::default());
            }
            for service in &mut task.services {
                service.canonicalize();
            }
        }
        for service in &mut self.services {
            service.canonicalize();
        }
    }

    /// Every port this group asks for, static and dynamic, with its label.
    pub fn ports(&self) -> impl Iterator<Item = (&Port, bool)> {
        self.networks.iter().flat_map(|n| {
            n.reserved_ports
                .iter()
                .map(|p| (p, true))
                .chain(n.dynamic_ports.iter().map(|p| (p, false)))
        })
    }

    /// Every service of the group, including the ones declared inside tasks.
    pub fn all_services(&self) -> impl Iterator<Item = &Service> {
        self.services
            .iter()
            .chain(self.tasks.iter().flat_map(|t| t.services.iter()))
    }

    /// Every upstream of the group's services (group- and task-level, in that order), with the
    /// service that declares it.
    pub fn upstreams(&self) -> impl Iterator<Item = (&Service, &ConsulUpstream)> {
        self.all_services()
            .flat_map(|s| s.upstreams().iter().map(move |u| (s, u)))
    }

    /// Total CPU (MHz) and memory (MB) the group's tasks ask for.
    pub fn total_resources(&self) -> Resources {
        self.tasks
            .iter()
            .fold(Resources::default(), |acc, t| Resources {
                cpu: acc.cpu + t.resources.cpu,
                memory_mb: acc.memory_mb + t.resources.memory_mb,
            })
    }
}

/// One task: a process or container run by a driver (Nomad's `structs.Task`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    pub name: String,
    pub driver: String,
    /// Driver-specific configuration (`config { … }`), kept as JSON as Nomad does.
    pub config: BTreeMap<String, serde_json::Value>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub services: Vec<Service>,
    pub restart_policy: Option<RestartPolicy>,
    /// Nanoseconds between the kill signal and a forced kill.
    pub kill_timeout: i64,
    pub kill_signal: String,
    pub meta: BTreeMap<String, String>,
    pub constraints: Vec<crate::Constraint>,
    pub affinities: Vec<crate::Affinity>,
    pub lifecycle: Option<crate::TaskLifecycle>,
    pub artifacts: Vec<crate::TaskArtifact>,
    pub templates: Vec<crate::Template>,
    #[serde(rename = "LogConfig")]
    pub log_config: Option<crate::LogConfig>,
    pub user: String,
    pub volume_mounts: Vec<crate::VolumeMount>,
    /// Where a dispatched job's payload is written in the task directory.
    pub dispatch_payload: Option<DispatchPayloadConfig>,
    /// Nanoseconds between removing the task's services from every proxy's endpoints and
    /// sending the kill signal (0: the group's, if any).
    pub shutdown_delay: i64,
}

/// Nomad's `DispatchPayloadConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DispatchPayloadConfig {
    pub file: String,
}

/// CPU in MHz and memory in MB (Nomad's `structs.Resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Resources {
    #[serde(rename = "CPU")]
    pub cpu: u64,
    #[serde(rename = "MemoryMB")]
    pub memory_mb: u64,
}

/// A group's `network` block (Nomad's `structs.NetworkResource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkResource {
    /// `host` (the default) or `bridge`.
    pub mode: String,
    /// Ports with a fixed `static` number.
    pub reserved_ports: Vec<Port>,
    /// Ports the scheduler picks from the dynamic range.
    pub dynamic_ports: Vec<Port>,
}

/// One labelled port of a `network` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Port {
    pub label: String,
    /// The static port for reserved ports; 0 for dynamic ones until allocated.
    pub value: u16,
    /// The port inside the task when it differs (`to`); 0 means the same.
    pub to: u16,
    pub host_network: String,
}

/// A `service` block (Nomad's `structs.Service`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    pub name: String,
    /// The label of the port (from the group's network) this service is reached on.
    pub port_label: String,
    pub tags: Vec<String>,
    /// The tags of a canary instance until its deployment is promoted (empty: `tags`).
    pub canary_tags: Vec<String>,
    pub checks: Vec<ServiceCheck>,
    /// `nomad` (the built-in catalog) or `consul`; Flotilla's catalog serves both.
    pub provider: String,
    /// Mesh settings (Nomad's `connect` block); `None` when the service declares none.
    pub connect: Option<ConsulConnect>,
}

/// A service's `connect` block (Nomad's `structs.ConsulConnect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConsulConnect {
    /// The app speaks mTLS itself; no sidecar listeners are opened for it.
    pub native: bool,
    pub sidecar_service: Option<ConsulSidecarService>,
}

/// `connect { sidecar_service { ... } }`: the node proxy acts as the service's sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConsulSidecarService {
    pub tags: Vec<String>,
    /// Accepted for compatibility; the node proxy's single inbound port serves every sidecar.
    pub port: String,
    pub proxy: Option<ConsulProxy>,
}

/// `sidecar_service { proxy { ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConsulProxy {
    pub upstreams: Vec<ConsulUpstream>,
}

/// One `upstreams` block: a local port the app connects to, carried to `destination_name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConsulUpstream {
    pub destination_name: String,
    /// Empty means the job's own namespace.
    pub destination_namespace: String,
    pub local_bind_port: u16,
    /// Empty means `127.0.0.1`.
    pub local_bind_address: String,
    pub datacenter: String,
}

/// The address upstream listeners bind when `local_bind_address` is empty.
pub const DEFAULT_UPSTREAM_BIND_ADDRESS: &str = "127.0.0.1";

impl ConsulUpstream {
    /// `local_bind_address`, or the loopback default.
    pub fn bind_address(&self) -> &str {
        if self.local_bind_address.is_empty() {
            DEFAULT_UPSTREAM_BIND_ADDRESS
        } else {
            &self.local_bind_address
        }
    }

    /// The socket its listener binds on the node; `None` when the bind address is not an IP
    /// address or the port is 0 (validation rejects both).
    pub fn bind(&self) -> Option<UpstreamBind> {
        let ip = self.bind_address().parse().ok()?;
        (self.local_bind_port != 0).then_some(UpstreamBind {
            ip,
            port: self.local_bind_port,
        })
    }
}

/// The host socket an upstream listener binds. Displays as `127.0.0.1:5432` or `[::1]:5432`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamBind {
    pub ip: IpAddr,
    pub port: u16,
}

impl UpstreamBind {
    /// Whether listeners on both cannot be open on one host at once: the same port, and the
    /// same address or either one a wildcard (`0.0.0.0`, `::`), which takes the port on every
    /// address.
    pub fn clashes(&self, other: &UpstreamBind) -> bool {
        self.port == other.port
            && (self.ip == other.ip || self.ip.is_unspecified() || other.ip.is_unspecified())
    }
}

impl fmt::Display for UpstreamBind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.ip, self.port).fmt(f)
    }
}

impl Service {
    /// The upstreams of this service's sidecar, if it has any.
    pub fn upstreams(&self) -> &[ConsulUpstream] {
        self.connect
            .as_ref()
            .and_then(|c| c.sidecar_service.as_ref())
            .and_then(|s| s.proxy.as_ref())
            .map(|p| p.upstreams.as_slice())
            .unwrap_or(&[])
    }

    fn canonicalize(&mut self) {
        if self.provider.is_empty() {
            self.provider = "nomad".to_string();
        }
        for check in &mut self.checks {
            if check.interval == 0 {
                check.interval = 10 * crate::NANOS_PER_SEC;
            }
            if check.timeout == 0 {
                check.timeout = 2 * crate::NANOS_PER_SEC;
            }
        }
    }
}

/// A health check of a service (Nomad's `structs.ServiceCheck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCheck {
    pub name: String,
    /// `http`, `tcp` or `grpc`.
    #[serde(rename = "Type")]
    pub check_type: String,
    pub path: String,
    /// Overrides the service's port label for this check.
    pub port_label: String,
    /// Nanoseconds between runs.
    pub interval: i64,
    /// Nanoseconds before a run counts as failed.
    pub timeout: i64,
    pub method: String,
    /// For `grpc` checks: the service name sent in the health request.
    #[serde(rename = "GRPCService")]
    pub grpc_service: String,
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: bool,
    pub check_restart: Option<crate::CheckRestart>,
}

/// What to do when a task exits (Nomad's `structs.RestartPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// Restarts allowed within `interval`.
    pub attempts: u32,
    /// Nanoseconds of the window in which `attempts` are counted.
    pub interval: i64,
    /// Nanoseconds to wait before a restart.
    pub delay: i64,
    /// `fail` (give up once attempts are used) or `delay` (wait for the interval to pass).
    pub mode: String,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self::default_for(JOB_TYPE_SERVICE)
    }
}

impl RestartPolicy {
    /// Nomad's defaults: 2 attempts in 30 min for services, 3 in 24 h for batch jobs.
    pub fn default_for(job_type: &str) -> Self {
        let s = crate::NANOS_PER_SEC;
        match job_type {
            JOB_TYPE_BATCH | JOB_TYPE_SYSBATCH => Self {
                attempts: 3,
                interval: 24 * 3600 * s,
                delay: 15 * s,
                mode: "fail".to_string(),
            },
            _ => Self {
                attempts: 2,
                interval: 30 * 60 * s,
                delay: 15 * s,
                mode: "fail".to_string(),
            },
        }
    }
}

/// The body of `POST /v1/jobs` and `PUT /v1/job/:id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRegisterRequest {
    pub job: Job,
}

/// The answer to a job registration or deregistration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobRegisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    pub eval_create_index: u64,
    pub job_modify_index: u64,
    pub warnings: String,
    pub index: u64,
}

/// The body of `POST /v1/jobs/parse`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobsParseRequest {
    #[serde(rename = "JobHCL")]
    pub job_hcl: String,
    pub canonicalize: bool,
}

/// One row of `GET /v1/jobs` (Nomad's `JobListStub`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobListStub {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub datacenters: Vec<String>,
    #[serde(rename = "Type")]
    pub job_type: String,
    pub priority: i32,
    pub status: String,
    pub stop: bool,
    pub version: u64,
    pub submit_time: i64,
    pub create_index: u64,
    pub modify_index: u64,
    pub job_modify_index: u64,
}

impl From<&Job> for JobListStub {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id.clone(),
            name: j.name.clone(),
            namespace: j.namespace.clone(),
            datacenters: j.datacenters.clone(),
            job_type: j.job_type.clone(),
            priority: j.priority,
            status: j.status.clone(),
            stop: j.stop,
            version: j.version,
            submit_time: j.submit_time,
            create_index: j.create_index,
            modify_index: j.modify_index,
            job_modify_index: j.job_modify_index,
        }
    }
}

impl Job {
    /// Whether the job is a periodic parent (its children do the work).
    pub fn is_periodic(&self) -> bool {
        self.periodic.as_ref().is_some_and(|p| p.enabled)
    }

    /// Whether the job is a parameterized template (run with `job dispatch`).
    pub fn is_parameterized(&self) -> bool {
        self.parameterized_job.is_some()
    }

    /// The child a periodic job launches at `launch` (unix seconds): `<id>/periodic-<launch>`.
    pub fn periodic_child(&self, launch: i64) -> Job {
        let mut child = self.clone();
        child.id = format!("{}/periodic-{launch}", self.id);
        child.name = child.id.clone();
        child.parent_id = self.id.clone();
        child.periodic = None;
        child.stop = false;
        child.version = 0;
        child.job_modify_index = 0;
        child.create_index = 0;
        child.modify_index = 0;
        child
    }

    /// The child `job dispatch` creates: `<id>/dispatch-<unix secs>-<suffix>` with the given
    /// metadata merged over the job's and the payload attached.
    pub fn dispatch_child(
        &self,
        now_secs: i64,
        suffix: &str,
        meta: &BTreeMap<String, String>,
        payload: String,
    ) -> Job {
        let mut child = self.clone();
        child.id = format!("{}/dispatch-{now_secs}-{suffix}", self.id);
        child.name = child.id.clone();
        child.parent_id = self.id.clone();
        child.parameterized_job = None;
        child
            .meta
            .extend(meta.iter().map(|(k, v)| (k.clone(), v.clone())));
        child.payload = payload;
        child.stop = false;
        child.version = 0;
        child.job_modify_index = 0;
        child.create_index = 0;
        child.modify_index = 0;
        child
    }

    /// Check a dispatch request against the job's `parameterized` block; the error names the
    /// key or rule broken.
    pub fn check_dispatch(
        &self,
        meta: &BTreeMap<String, String>,
        has_payload: bool,
    ) -> Result<(), String> {
        let Some(p) = &self.parameterized_job else {
            return Err(format!(
                "job \"{}\" is not parameterized; only parameterized jobs can be dispatched",
                self.id
            ));
        };
        match p.payload.as_str() {
            "required" if !has_payload => {
                return Err("payload is required by the job's parameterized block".into());
            }
            "forbidden" if has_payload => {
                return Err("payload is forbidden by the job's parameterized block".into());
            }
            _ => {}
        }
        for k in &p.meta_required {
            if !meta.contains_key(k) {
                return Err(format!(
                    "meta key {k:?} is required (meta_required: {})",
                    p.meta_required.join(", ")
                ));
            }
        }
        for k in meta.keys() {
            if !p.meta_required.contains(k) && !p.meta_optional.contains(k) {
                return Err(format!(
                    "meta key {k:?} is not allowed (allowed: {})",
                    p.meta_required
                        .iter()
                        .chain(p.meta_optional.iter())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("*", "dc1"));
        assert!(glob_match("dc*", "dc1"));
        assert!(glob_match("d*1", "dc1"));
        assert!(!glob_match("dc2", "dc1"));
        assert!(!glob_match("x*", "dc1"));
    }

    fn upstream(address: &str, port: u16) -> ConsulUpstream {
        ConsulUpstream {
            destination_name: "db".into(),
            local_bind_address: address.into(),
            local_bind_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn upstream_binds() {
        let bind = |a: &str, p: u16| upstream(a, p).bind();
        let loopback = bind("", 5432).unwrap();
        assert_eq!(loopback.to_string(), "127.0.0.1:5432");
        assert_eq!(bind("::1", 5432).unwrap().to_string(), "[::1]:5432");
        assert_eq!(bind("localhost", 5432), None);
        assert_eq!(bind("127.0.0.1", 0), None);
        assert!(loopback.clashes(&bind("127.0.0.1", 5432).unwrap()));
        assert!(!loopback.clashes(&bind("127.0.0.1", 5433).unwrap()));
        assert!(!loopback.clashes(&bind("127.0.0.2", 5432).unwrap()));
        assert!(loopback.clashes(&bind("0.0.0.0", 5432).unwrap()));
        assert!(bind("::", 5432).unwrap().clashes(&loopback));
    }

    #[test]
    fn group_upstreams_cover_group_and_task_services() {
        let service = |name: &str, dest: &str| Service {
            name: name.into(),
            connect: Some(ConsulConnect {
                native: false,
                sidecar_service: Some(ConsulSidecarService {
                    proxy: Some(ConsulProxy {
                        upstreams: vec![ConsulUpstream {
                            destination_name: dest.into(),
                            ..upstream("", 1)
                        }],
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let group = TaskGroup {
            services: vec![service("web", "db"), Service::default()],
            tasks: vec![Task {
                services: vec![service("worker", "cache")],
                ..Default::default()
            }],
            ..Default::default()
        };
        let got: Vec<_> = group
            .upstreams()
            .map(|(s, u)| (s.name.as_str(), u.destination_name.as_str()))
            .collect();
        assert_eq!(got, [("web", "db"), ("worker", "cache")]);
    }

    #[test]
    fn job_json_uses_nomad_field_names() {
        let mut job = Job {
            id: "hello".into(),
            ..Default::default()
        };
        job.canonicalize();
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["ID"], "hello");
        assert_eq!(v["Type"], "service");
        assert_eq!(v["Namespace"], "default");
        assert!(v.get("TaskGroups").is_some());
    }
}
