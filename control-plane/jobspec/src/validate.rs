//! Semantic validation of a typed job, whether it came from HCL or from JSON.
//!
//! This file walks the job, group and task and checks names, drivers, ports, services and
//! restart policies; placement rules are checked in [`placement`], update, reschedule,
//! periodic and parameterized settings, volumes and disks in [`policies`], and the parts only
//! tasks have (lifecycle, artifacts, templates, logs, volume mounts, dispatch payload) in
//! [`task_parts`].

mod placement;
mod policies;
mod task_parts;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use flotilla_types::{
    ConsulConnect, ConsulUpstream, INGRESS_SERVICE, JOB_TYPE_SYSBATCH, JOB_TYPE_SYSTEM, Job,
    RestartPolicy, Service, Task, TaskGroup, UpstreamBind,
};
use serde_json::Value;

use crate::diag::{Diagnostic, Key, Scope, Seg, Severity, named};
use crate::duration::format_duration;
use crate::expr::describe;

/// The task drivers Flotilla knows.
pub(crate) const DRIVERS: &[&str] = &["docker", "exec", "raw_exec"];
const JOB_TYPES: &[&str] = &["service", "batch", "system", "sysbatch"];
const NETWORK_MODES: &[&str] = &["host", "bridge"];
const RESTART_MODES: &[&str] = &["fail", "delay"];
const CHECK_TYPES: &[&str] = &["http", "tcp", "grpc"];
const PROVIDERS: &[&str] = &["nomad", "consul"];

/// Semantic validation of a typed job: the checks Nomad's `Job.Validate` makes that matter to
/// Flotilla, for jobs parsed from HCL and jobs submitted as JSON alike.
///
/// Expects a job that went through [`Job::canonicalize`] (an empty type or a zero check interval
/// are errors here, because canonicalize fills them in). Returns errors and warnings (see
/// [`Diagnostic::severity`]); the job is acceptable when there are no errors. Diagnostics carry
/// `file` `""` and no line: [`parse`](crate::parse) locates them in the HCL source.
pub fn validate(job: &Job) -> Vec<Diagnostic> {
    validate_keyed(job).into_iter().map(|(_, d)| d).collect()
}

/// [`validate`], with the structured key of each diagnostic so `parse` can locate it.
pub(crate) fn validate_keyed(job: &Job) -> Vec<(Key, Diagnostic)> {
    let mut report = Report::default();
    report.job(job);
    report.out
}

#[derive(Default)]
struct Report {
    out: Vec<(Key, Diagnostic)>,
}

/// What a group offers to the services in it: its name and the labels of its ports.
struct GroupPorts<'a> {
    group: &'a str,
    labels: Vec<&'a str>,
}

impl Report {
    fn error(&mut self, scope: &Scope, field: &str, message: String) {
        self.out.push((
            scope.key(field),
            scope.diag(Severity::Error, field, message),
        ));
    }

    fn warn(&mut self, scope: &Scope, field: &str, message: String) {
        self.out.push((
            scope.key(field),
            scope.diag(Severity::Warning, field, message),
        ));
    }

    fn job(&mut self, job: &Job) {
        let scope = Scope::job(&job.id);
        if job.id.is_empty() {
            self.error(&scope, "id", "job ID must not be empty".to_string());
        } else if job.id.chars().any(char::is_whitespace) {
            self.error(
                &scope,
                "id",
                format!("job ID {:?} must not contain spaces", job.id),
            );
        }
        if !JOB_TYPES.contains(&job.job_type.as_str()) {
            self.error(
                &scope,
                "type",
                format!(
                    "unknown job type {:?} (expected one of: {})",
                    job.job_type,
                    JOB_TYPES.join(", ")
                ),
            );
        }
        if !(1..=100).contains(&job.priority) {
            self.error(
                &scope,
                "priority",
                format!(
                    "priority {} is out of range (expected 1 to 100)",
                    job.priority
                ),
            );
        }
        if job.task_groups.is_empty() {
            self.error(
                &scope,
                "group",
                "job has no groups (expected at least one `group \"name\" { … }` block)"
                    .to_string(),
            );
        }
        self.constraints(&scope, &job.constraints);
        self.affinities(&scope, &job.affinities);
        self.spreads(&scope, &job.spreads);
        if let Some(update) = &job.update {
            self.update(&scope, update, &job.job_type, None);
        }
        if let Some(periodic) = &job.periodic {
            self.periodic(&scope, periodic, &job.job_type);
        }
        if let Some(parameterized) = &job.parameterized_job {
            self.parameterized(&scope, parameterized, &job.job_type);
        }

        let mut names = HashMap::new();
        for (i, group) in job.task_groups.iter().enumerate() {
            let gs = scope.child(Seg::Group(i), named("group", &group.name, i));
            if group.name.is_empty() {
                self.error(&gs, "name", "group name must not be empty".to_string());
            } else if let Entry::Vacant(slot) = names.entry(group.name.as_str()) {
                slot.insert(i);
            } else {
                self.error(
                    &gs,
                    "name",
                    format!(
                        "duplicate group name {:?} (group names must be unique within a job)",
                        group.name
                    ),
                );
            }
            self.group(&gs, group, job);
        }
        self.auto_promote_all(&scope, &job.task_groups);
    }

    fn group(&mut self, scope: &Scope, group: &TaskGroup, job: &Job) {
        let job_type = job.job_type.as_str();
        if (job_type == JOB_TYPE_SYSTEM || job_type == JOB_TYPE_SYSBATCH) && group.count != 1 {
            self.warn(
                scope,
                "count",
                format!(
                    "count = {} is ignored for {job_type} jobs: they run one instance of the \
                     group on every eligible node",
                    group.count
                ),
            );
        }
        self.constraints(scope, &group.constraints);
        self.affinities(scope, &group.affinities);
        self.spreads(scope, &group.spreads);
        self.shutdown_delay(scope, group.shutdown_delay);
        if let Some(policy) = &group.reschedule_policy {
            self.reschedule(&scope.child(Seg::Reschedule, "reschedule"), policy);
        }
        if let Some(update) = &group.update {
            if job.update.as_ref() == Some(update) {
                // Inherited as it is: the job-level block was checked already, except against
                // this group's count (system jobs' canaries were reported at the job level).
                if job_type != JOB_TYPE_SYSTEM {
                    self.update_counts(scope, update, group.count, job_type);
                }
            } else {
                self.update(scope, update, job_type, Some(group.count));
            }
        }
        self.volumes(scope, group);
        if let Some(disk) = &group.ephemeral_disk {
            self.ephemeral_disk(scope, disk);
        }
        if group.tasks.is_empty() {
            self.error(
                scope,
                "task",
                format!(
                    "group {:?} has no tasks (expected at least one `task \"name\" {{ … }}` block)",
                    group.name
                ),
            );
        }
        if let Some(policy) = &group.restart_policy {
            self.restart(&scope.child(Seg::Restart, "restart"), policy);
        }

        let mut ports = GroupPorts {
            group: &group.name,
            labels: Vec::new(),
        };
        let mut statics: HashMap<u16, &str> = HashMap::new();
        for (ni, network) in group.networks.iter().enumerate() {
            let ns = scope.child(
                Seg::Network(ni),
                if ni == 0 {
                    "network".to_string()
                } else {
                    format!("network[{ni}]")
                },
            );
            if !network.mode.is_empty() && !NETWORK_MODES.contains(&network.mode.as_str()) {
                self.error(
                    &ns,
                    "mode",
                    format!(
                        "unknown network mode {:?} (expected one of: {})",
                        network.mode,
                        NETWORK_MODES.join(", ")
                    ),
                );
            }
            for (pi, port) in network.reserved_ports.iter().enumerate() {
                let ps = ns.child(Seg::ReservedPort(pi), named("port", &port.label, pi));
                self.port_label(&ps, &port.label, &mut ports);
                if port.value == 0 {
                    self.error(
                        &ps,
                        "static",
                        "static port 0 is out of range (expected 1 to 65535)".to_string(),
                    );
                } else if let Some(other) = statics.insert(port.value, &port.label) {
                    self.error(
                        &ps,
                        "static",
                        format!(
                            "static port {} is already used by port {other:?} of this group",
                            port.value
                        ),
                    );
                }
            }
            for (pi, port) in network.dynamic_ports.iter().enumerate() {
                let ps = ns.child(Seg::DynamicPort(pi), named("port", &port.label, pi));
                self.port_label(&ps, &port.label, &mut ports);
            }
        }

        for (si, service) in group.services.iter().enumerate() {
            self.service(scope, si, service, &ports);
        }

        self.upstream_binds(scope, group);

        let mut names = HashSet::new();
        for (ti, task) in group.tasks.iter().enumerate() {
            let ts = scope.child(Seg::Task(ti), named("task", &task.name, ti));
            if task.name.is_empty() {
                self.error(&ts, "name", "task name must not be empty".to_string());
            } else if !names.insert(task.name.as_str()) {
                self.error(
                    &ts,
                    "name",
                    format!(
                        "duplicate task name {:?} (task names must be unique within a group)",
                        task.name
                    ),
                );
            }
            self.task(&ts, task, &ports, group, job);
        }
    }

    fn port_label<'a>(&mut self, scope: &Scope, label: &'a str, ports: &mut GroupPorts<'a>) {
        if label.is_empty() {
            self.error(scope, "label", "port label must not be empty".to_string());
        } else if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.error(
                scope,
                "label",
                format!("port label {label:?} may only contain letters, digits and underscores"),
            );
        } else if ports.labels.contains(&label) {
            self.error(
                scope,
                "label",
                format!(
                    "duplicate port label {label:?} (port labels must be unique within a group)"
                ),
            );
        } else {
            ports.labels.push(label);
        }
    }

    /// A service or check `port`: a label of the group's network, or a port number.
    fn port_ref(&mut self, scope: &Scope, label: &str, ports: &GroupPorts<'_>) {
        if label.is_empty()
            || ports.labels.contains(&label)
            || label.parse::<u16>().is_ok_and(|n| n > 0)
        {
            return;
        }
        let defined = if ports.labels.is_empty() {
            "none".to_string()
        } else {
            ports.labels.join(", ")
        };
        self.error(
            scope,
            "port",
            format!(
                "port label {label:?} is not defined by any network block of group {:?} (defined: {defined})",
                ports.group
            ),
        );
    }

    fn service(&mut self, parent: &Scope, si: usize, service: &Service, ports: &GroupPorts<'_>) {
        let scope = service_scope(parent, si, service);
        if service.name.is_empty() {
            self.error(&scope, "name", "service name must not be empty".to_string());
        } else if service.name == INGRESS_SERVICE {
            self.error(
                &scope,
                "name",
                format!(
                    "service name {INGRESS_SERVICE:?} is reserved: it is the mesh identity of \
                     every node's ingress"
                ),
            );
        } else if !is_dns_label(&service.name) {
            self.error(
                &scope,
                "name",
                format!(
                    "service name {:?} is not a valid DNS label (expected 1 to 63 letters, \
                     digits and dashes, not starting or ending with a dash)",
                    service.name
                ),
            );
        }
        if !service.provider.is_empty() && !PROVIDERS.contains(&service.provider.as_str()) {
            self.error(
                &scope,
                "provider",
                format!(
                    "unknown service provider {:?} (expected one of: {})",
                    service.provider,
                    PROVIDERS.join(", ")
                ),
            );
        }
        self.port_ref(&scope, &service.port_label, ports);
        if let Some(connect) = &service.connect {
            self.connect(&scope, connect);
        }

        for (ci, check) in service.checks.iter().enumerate() {
            let cs = scope.child(Seg::Check(ci), named("check", &check.name, ci));
            let kind = check.check_type.as_str();
            match kind {
                "http" | "tcp" | "grpc" => {}
                "script" => self.error(
                    &cs,
                    "type",
                    format!(
                        "check type {kind:?} is not supported yet (supported: {})",
                        CHECK_TYPES.join(", ")
                    ),
                ),
                "" => self.error(
                    &cs,
                    "type",
                    format!(
                        "check has no type (expected one of: {})",
                        CHECK_TYPES.join(", ")
                    ),
                ),
                other => self.error(
                    &cs,
                    "type",
                    format!(
                        "unknown check type {other:?} (expected one of: {})",
                        CHECK_TYPES.join(", ")
                    ),
                ),
            }
            if kind == "http" && check.path.is_empty() {
                self.error(
                    &cs,
                    "path",
                    "http check needs a path, like path = \"/health\"".to_string(),
                );
            }
            if check.interval <= 0 {
                self.error(
                    &cs,
                    "interval",
                    format!(
                        "check interval must be positive, got {}",
                        format_duration(check.interval)
                    ),
                );
            }
            if check.timeout <= 0 {
                self.error(
                    &cs,
                    "timeout",
                    format!(
                        "check timeout must be positive, got {}",
                        format_duration(check.timeout)
                    ),
                );
            } else if check.interval > 0 && check.timeout > check.interval {
                self.warn(
                    &cs,
                    "timeout",
                    format!(
                        "check timeout {} is longer than its interval {}: runs will overlap",
                        format_duration(check.timeout),
                        format_duration(check.interval)
                    ),
                );
            }
            if !check.grpc_service.is_empty() && kind != "grpc" {
                self.warn(
                    &cs,
                    "grpc_service",
                    format!("grpc_service is only used by grpc checks; this is a {kind} check"),
                );
            }
            if let Some(restart) = &check.check_restart
                && restart.grace < 0
            {
                self.error(
                    &cs.child(Seg::CheckRestart, "check_restart"),
                    "grace",
                    format!(
                        "grace must not be negative, got {}",
                        format_duration(restart.grace)
                    ),
                );
            }
            self.port_ref(&cs, &check.port_label, ports);
            if CHECK_TYPES.contains(&kind)
                && check.port_label.is_empty()
                && service.port_label.is_empty()
            {
                self.error(
                    &cs,
                    "port",
                    format!(
                        "{kind} check has no port to probe: set `port` on the service or on the check"
                    ),
                );
            }
        }
    }

    /// A service's `connect` block and each of its upstreams on its own.
    fn connect(&mut self, service: &Scope, connect: &ConsulConnect) {
        let scope = service.child(Seg::Connect, "connect");
        if connect.native && connect.sidecar_service.is_some() {
            self.error(
                &scope,
                "native",
                "native = true cannot be combined with a sidecar_service block (a native app \
                 speaks mTLS itself; a sidecar does it for the app)"
                    .to_string(),
            );
        }
        let Some(proxy) = connect
            .sidecar_service
            .as_ref()
            .and_then(|s| s.proxy.as_ref())
        else {
            return;
        };
        for (ui, upstream) in proxy.upstreams.iter().enumerate() {
            let us = upstream_scope(service, ui, upstream);
            if upstream.destination_name.is_empty() {
                self.error(
                    &us,
                    "destination_name",
                    "upstream needs a destination_name (the service to connect to)".to_string(),
                );
            }
            if upstream.local_bind_port == 0 {
                self.error(
                    &us,
                    "local_bind_port",
                    "upstream needs a local_bind_port (the local port the app connects to), \
                     from 1 to 65535; got 0"
                        .to_string(),
                );
            }
            if !upstream.local_bind_address.is_empty()
                && upstream
                    .local_bind_address
                    .parse::<std::net::IpAddr>()
                    .is_err()
            {
                self.error(
                    &us,
                    "local_bind_address",
                    format!(
                        "local_bind_address {:?} is not an IP address (expected one like \
                         \"127.0.0.1\" or \"::1\")",
                        upstream.local_bind_address
                    ),
                );
            }
        }
    }

    /// Two upstreams of one group cannot listen on the same address and port: the node proxy
    /// opens one listener per upstream on the node. Reported at the later of the two.
    fn upstream_binds(&mut self, scope: &Scope, group: &TaskGroup) {
        if group.upstreams().next().is_none() {
            return;
        }
        let group_services = group
            .services
            .iter()
            .enumerate()
            .map(|(si, s)| (service_scope(scope, si, s), s));
        let task_services = group.tasks.iter().enumerate().flat_map(|(ti, t)| {
            let ts = scope.child(Seg::Task(ti), named("task", &t.name, ti));
            t.services
                .iter()
                .enumerate()
                .map(move |(si, s)| (service_scope(&ts, si, s), s))
        });
        let mut seen: Vec<(UpstreamBind, &str)> = Vec::new();
        for (ss, service) in group_services.chain(task_services) {
            for (ui, upstream) in service.upstreams().iter().enumerate() {
                let Some(bind) = upstream.bind() else {
                    continue;
                };
                let name = upstream.destination_name.as_str();
                let Some((other, other_name)) = seen.iter().find(|(b, _)| b.clashes(&bind)) else {
                    seen.push((bind, name));
                    continue;
                };
                let message = if *other == bind {
                    format!(
                        "upstreams {other_name:?} and {name:?} both bind {bind} (each upstream \
                         of group {:?} needs its own local_bind_port)",
                        group.name
                    )
                } else {
                    format!(
                        "upstream {name:?} on {bind} and upstream {other_name:?} on {other} \
                         both take port {} (each upstream of group {:?} needs its own \
                         local_bind_port)",
                        bind.port, group.name
                    )
                };
                self.error(
                    &upstream_scope(&ss, ui, upstream),
                    "local_bind_port",
                    message,
                );
            }
        }
    }

    fn task(
        &mut self,
        scope: &Scope,
        task: &Task,
        ports: &GroupPorts<'_>,
        group: &TaskGroup,
        job: &Job,
    ) {
        let driver = task.driver.as_str();
        if driver.is_empty() {
            self.error(
                scope,
                "driver",
                format!(
                    "task has no driver (expected one of: {})",
                    DRIVERS.join(", ")
                ),
            );
        } else if !DRIVERS.contains(&driver) {
            self.error(
                scope,
                "driver",
                format!(
                    "unknown driver {driver:?} (expected one of: {})",
                    DRIVERS.join(", ")
                ),
            );
        }

        let config = scope.child(Seg::Config, "config");
        match driver {
            "raw_exec" | "exec" => {
                self.config_string(&config, task, "command", "the program to run");
                if let Some(args) = task.config.get("args") {
                    let ok = args
                        .as_array()
                        .is_some_and(|items| items.iter().all(Value::is_string));
                    if !ok {
                        self.error(
                            &config,
                            "args",
                            format!("expected a list of strings, got {}", describe(args)),
                        );
                    }
                }
            }
            "docker" => self.config_string(&config, task, "image", "the image to run"),
            _ => {}
        }

        if task.kill_timeout < 0 {
            self.error(
                scope,
                "kill_timeout",
                format!(
                    "kill_timeout must not be negative, got {}",
                    format_duration(task.kill_timeout)
                ),
            );
        }
        self.shutdown_delay(scope, task.shutdown_delay);
        if let Some(policy) = &task.restart_policy {
            self.restart(&scope.child(Seg::Restart, "restart"), policy);
        }
        for (si, service) in task.services.iter().enumerate() {
            self.service(scope, si, service, ports);
        }
        self.constraints(scope, &task.constraints);
        self.affinities(scope, &task.affinities);
        if let Some(lifecycle) = &task.lifecycle {
            self.lifecycle(scope, lifecycle);
        }
        self.artifacts(scope, &task.artifacts);
        self.templates(scope, &task.templates);
        if let Some(logs) = &task.log_config {
            self.logs(scope, logs, group.ephemeral_disk.as_ref());
        }
        self.volume_mounts(scope, &task.volume_mounts, group);
        if let Some(payload) = &task.dispatch_payload {
            self.dispatch_payload(scope, payload, job);
        }
    }

    /// A group's or task's `shutdown_delay`.
    fn shutdown_delay(&mut self, scope: &Scope, nanos: i64) {
        if nanos < 0 {
            self.error(
                scope,
                "shutdown_delay",
                format!(
                    "shutdown_delay must not be negative, got {}",
                    format_duration(nanos)
                ),
            );
        }
    }

    /// A required, non-empty string in a task's driver config.
    fn config_string(&mut self, scope: &Scope, task: &Task, key: &str, what: &str) {
        let message = match task.config.get(key) {
            Some(Value::String(s)) if !s.is_empty() => return,
            Some(Value::String(_)) => format!("{key} must not be empty ({what})"),
            Some(other) => format!("expected a string ({what}), got {}", describe(other)),
            None => format!(
                "driver {:?} needs `{key}` in the task's config block ({what})",
                task.driver
            ),
        };
        self.error(scope, key, message);
    }

    fn restart(&mut self, scope: &Scope, policy: &RestartPolicy) {
        if !RESTART_MODES.contains(&policy.mode.as_str()) {
            self.error(
                scope,
                "mode",
                format!(
                    "unknown restart mode {:?} (expected one of: {})",
                    policy.mode,
                    RESTART_MODES.join(", ")
                ),
            );
        } else if policy.mode == "delay" && policy.attempts == 0 {
            self.error(
                scope,
                "attempts",
                "restart mode \"delay\" with 0 attempts is ambiguous (set attempts > 0, or use mode \"fail\")"
                    .to_string(),
            );
        }
        if policy.delay < 0 {
            self.error(
                scope,
                "delay",
                format!(
                    "delay must not be negative, got {}",
                    format_duration(policy.delay)
                ),
            );
        }
        if policy.interval < 0 {
            self.error(
                scope,
                "interval",
                format!(
                    "interval must not be negative, got {}",
                    format_duration(policy.interval)
                ),
            );
        } else if policy.delay > 0
            && i128::from(policy.attempts) * i128::from(policy.delay) > i128::from(policy.interval)
        {
            self.error(
                scope,
                "interval",
                format!(
                    "{} attempts with a delay of {} do not fit in an interval of {}",
                    policy.attempts,
                    format_duration(policy.delay),
                    format_duration(policy.interval)
                ),
            );
        }
    }
}

/// The scope of the `si`-th service of a group or task.
fn service_scope(parent: &Scope, si: usize, service: &Service) -> Scope {
    parent.child(Seg::Service(si), named("service", &service.name, si))
}

/// The scope of the `ui`-th upstream of the service at `service`.
fn upstream_scope(service: &Scope, ui: usize, upstream: &ConsulUpstream) -> Scope {
    service
        .child(Seg::Connect, "connect")
        .child(Seg::SidecarService, "sidecar_service")
        .child(Seg::Proxy, "proxy")
        .child(
            Seg::Upstream(ui),
            named("upstreams", &upstream.destination_name, ui),
        )
}

/// 1 to 63 ASCII letters, digits and dashes, not starting or ending with a dash.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{NANOS_PER_SEC, NetworkResource, Port, ServiceCheck};
    use serde_json::json;

    /// A valid, canonicalized job as a JSON client would build it.
    fn job() -> Job {
        let mut job = Job {
            id: "hello".into(),
            task_groups: vec![TaskGroup {
                name: "web".into(),
                count: 1,
                networks: vec![NetworkResource {
                    mode: "host".into(),
                    dynamic_ports: vec![Port {
                        label: "http".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                services: vec![Service {
                    name: "hello".into(),
                    port_label: "http".into(),
                    checks: vec![ServiceCheck {
                        check_type: "http".into(),
                        path: "/health".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                tasks: vec![Task {
                    name: "server".into(),
                    driver: "raw_exec".into(),
                    config: [("command".to_string(), json!("flotilla"))].into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        job.canonicalize();
        job
    }

    fn errors(job: &Job) -> Vec<Diagnostic> {
        validate(job).into_iter().filter(|d| d.is_error()).collect()
    }

    fn only_error(job: &Job) -> Diagnostic {
        let errs = errors(job);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn valid_job_has_no_diagnostics() {
        assert_eq!(validate(&job()), vec![]);
    }

    #[test]
    fn unknown_driver_names_group_and_task() {
        let mut j = job();
        j.task_groups[0].tasks[0].driver = "dockr".into();
        let d = only_error(&j);
        assert_eq!(d.path, r#"job "hello" > group "web" > task "server""#);
        assert_eq!(d.field, "driver");
        assert_eq!(
            d.message,
            r#"unknown driver "dockr" (expected one of: docker, exec, raw_exec)"#
        );
        assert_eq!((d.file.as_str(), d.line, d.column), ("", None, None));
    }

    #[test]
    fn job_level_rules() {
        let mut j = job();
        j.id = "my job".into();
        assert_eq!(only_error(&j).field, "id");
        j.id = String::new();
        assert_eq!(only_error(&j).message, "job ID must not be empty");
        let mut j = job();
        j.job_type = "servce".into();
        assert_eq!(only_error(&j).field, "type");
        let mut j = job();
        j.priority = 101;
        assert_eq!(only_error(&j).field, "priority");
        let mut j = job();
        j.task_groups.clear();
        assert_eq!(only_error(&j).field, "group");
    }

    #[test]
    fn group_and_task_names() {
        let mut j = job();
        let g = j.task_groups[0].clone();
        j.task_groups.push(g);
        let d = only_error(&j);
        assert_eq!(d.field, "name");
        assert!(d.message.contains(r#"duplicate group name "web""#));

        let mut j = job();
        let t = j.task_groups[0].tasks[0].clone();
        j.task_groups[0].tasks.push(t);
        assert!(only_error(&j).message.contains("duplicate task name"));

        let mut j = job();
        j.task_groups[0].tasks[0].name.clear();
        let d = only_error(&j);
        assert_eq!(d.path, r#"job "hello" > group "web" > task[0]"#);

        let mut j = job();
        j.task_groups[0].tasks.clear();
        assert_eq!(only_error(&j).field, "task");
    }

    #[test]
    fn driver_config() {
        let mut j = job();
        j.task_groups[0].tasks[0].config.clear();
        let d = only_error(&j);
        assert_eq!(d.field, "command");
        assert!(d.path.ends_with("> config"));

        let mut j = job();
        j.task_groups[0].tasks[0]
            .config
            .insert("command".into(), json!(5));
        assert!(only_error(&j).message.contains("got number 5"));

        let mut j = job();
        j.task_groups[0].tasks[0]
            .config
            .insert("args".into(), json!(["a", 1]));
        assert_eq!(only_error(&j).field, "args");

        let mut j = job();
        j.task_groups[0].tasks[0].driver = "docker".into();
        assert_eq!(only_error(&j).field, "image");
        j.task_groups[0].tasks[0]
            .config
            .insert("image".into(), json!("redis:7"));
        assert_eq!(errors(&j), vec![]);
    }

    #[test]
    fn port_references() {
        let mut j = job();
        j.task_groups[0].services[0].port_label = "htp".into();
        let d = only_error(&j);
        assert_eq!(d.field, "port");
        assert_eq!(
            d.message,
            r#"port label "htp" is not defined by any network block of group "web" (defined: http)"#
        );

        let mut j = job();
        j.task_groups[0].services[0].port_label = "8080".into();
        assert_eq!(errors(&j), vec![]);

        let mut j = job();
        j.task_groups[0].services[0].checks[0].port_label = "nope".into();
        let d = only_error(&j);
        assert!(
            d.path.ends_with(r#"service "hello" > check[0]"#),
            "{}",
            d.path
        );

        // Task-level services see the group's ports.
        let mut j = job();
        let s = j.task_groups[0].services.remove(0);
        j.task_groups[0].tasks[0].services.push(s);
        assert_eq!(errors(&j), vec![]);
        j.task_groups[0].networks.clear();
        let d = only_error(&j);
        assert!(d.message.ends_with("(defined: none)"), "{}", d.message);
    }

    #[test]
    fn ports() {
        let mut j = job();
        let net = &mut j.task_groups[0].networks[0];
        net.reserved_ports.push(Port {
            label: "a".into(),
            value: 8080,
            ..Default::default()
        });
        net.reserved_ports.push(Port {
            label: "b".into(),
            value: 8080,
            ..Default::default()
        });
        net.reserved_ports.push(Port {
            label: "c".into(),
            value: 0,
            ..Default::default()
        });
        net.dynamic_ports.push(Port {
            label: "a".into(),
            ..Default::default()
        });
        net.mode = "overlay".into();
        let errs = errors(&j);
        let fields: Vec<_> = errs.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["mode", "static", "static", "label"], "{errs:#?}");
        assert!(errs[1].message.contains(r#"already used by port "a""#));
        assert!(errs[2].message.contains("out of range"));
        assert!(errs[3].message.contains(r#"duplicate port label "a""#));
    }

    #[test]
    fn services_and_checks() {
        let mut j = job();
        j.task_groups[0].services[0].name = "hello_world".into();
        assert!(only_error(&j).message.contains("not a valid DNS label"));

        let mut j = job();
        j.task_groups[0].services[0].provider = "etcd".into();
        assert_eq!(only_error(&j).field, "provider");

        let mut j = job();
        j.task_groups[0].services[0].checks[0].check_type = "script".into();
        assert_eq!(
            only_error(&j).message,
            r#"check type "script" is not supported yet (supported: http, tcp, grpc)"#
        );

        let mut j = job();
        j.task_groups[0].services[0].checks[0].check_type = "grpc".into();
        j.task_groups[0].services[0].checks[0].path.clear();
        assert_eq!(errors(&j), vec![]);

        let mut j = job();
        j.task_groups[0].services[0].checks[0].path.clear();
        assert_eq!(only_error(&j).field, "path");

        let mut j = job();
        j.task_groups[0].services[0].checks[0].check_type = "tcp".into();
        j.task_groups[0].services[0].checks[0].path.clear();
        assert_eq!(errors(&j), vec![]);

        let mut j = job();
        j.task_groups[0].services[0].checks[0].interval = -NANOS_PER_SEC;
        assert_eq!(only_error(&j).field, "interval");

        let mut j = job();
        j.task_groups[0].services[0].port_label.clear();
        assert!(only_error(&j).message.contains("no port to probe"));

        let mut j = job();
        j.task_groups[0].services[0].checks[0].timeout = 60 * NANOS_PER_SEC;
        let all = validate(&j);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].severity, Severity::Warning);
        assert_eq!(all[0].field, "timeout");
    }

    #[test]
    fn restart_policies() {
        let mut j = job();
        j.task_groups[0].restart_policy = Some(RestartPolicy {
            mode: "retry".into(),
            ..Default::default()
        });
        let d = only_error(&j);
        assert_eq!(d.path, r#"job "hello" > group "web" > restart"#);
        assert_eq!(d.field, "mode");

        let mut j = job();
        j.task_groups[0].tasks[0].restart_policy = Some(RestartPolicy {
            attempts: 10,
            delay: 10 * NANOS_PER_SEC,
            interval: 60 * NANOS_PER_SEC,
            mode: "delay".into(),
        });
        let d = only_error(&j);
        assert_eq!(d.field, "interval");
        assert_eq!(
            d.message,
            "10 attempts with a delay of 10s do not fit in an interval of 1m0s"
        );
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("hello"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
