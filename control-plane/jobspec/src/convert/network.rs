//! Networking: group `network` blocks and their ports, `service` and `check` blocks with
//! `check_restart`, services' `connect` blocks (sidecar upstreams), and the docker `port_map`
//! translation (Nomad 0.x).

use flotilla_types::{
    CheckRestart, ConsulConnect, ConsulProxy, ConsulSidecarService, ConsulUpstream,
    NetworkResource, Port, Service, ServiceCheck, TaskGroup,
};
use serde_json::Value;

use super::{BlockRef, Converter, schema};
use crate::diag::{Scope, Seg, named};
use crate::expr::describe;

/// The fields a `check_restart` block sets: a service-level block is merged into each of its
/// checks' field by field, as Nomad does.
#[derive(Debug, Clone, Default)]
pub(super) struct CheckRestartFields {
    limit: Option<u32>,
    grace: Option<i64>,
    ignore_warnings: Option<bool>,
}

fn merged_check_restart(
    service: Option<&CheckRestartFields>,
    check: Option<&CheckRestartFields>,
) -> Option<CheckRestart> {
    if service.is_none() && check.is_none() {
        return None;
    }
    let mut out = CheckRestart::default();
    for fields in service.into_iter().chain(check) {
        if let Some(v) = fields.limit {
            out.limit = v;
        }
        if let Some(v) = fields.grace {
            out.grace = v;
        }
        if let Some(v) = fields.ignore_warnings {
            out.ignore_warnings = v;
        }
    }
    Some(out)
}

/// The human label of a group's n-th network block.
pub(super) fn network_label(index: usize) -> String {
    if index == 0 {
        "network".to_string()
    } else {
        format!("network[{index}]")
    }
}

impl Converter<'_> {
    pub(super) fn network(
        &mut self,
        group: &Scope,
        index: usize,
        block: &BlockRef<'_>,
    ) -> NetworkResource {
        let scope = self.unlabeled(group, Seg::Network(index), &network_label(index), block);
        let f = self.fields(&scope, block, &schema::NETWORK);
        let mut network = NetworkResource {
            mode: "host".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("mode") {
            network.mode = self.string(&scope, a).unwrap_or(network.mode);
        }
        for b in f.blocks("port") {
            self.port(&scope, b, &mut network);
        }
        network
    }

    /// A `port "label" { … }` block: reserved when it has `static`, dynamic otherwise.
    pub(super) fn port(
        &mut self,
        network: &Scope,
        block: &BlockRef<'_>,
        into: &mut NetworkResource,
    ) {
        let label = Self::one_label(block, "the port label");
        let name = label.as_deref().unwrap_or_default();
        let is_static = block.body.has_attribute("static");
        let (seg, index) = if is_static {
            let i = into.reserved_ports.len();
            (Seg::ReservedPort(i), i)
        } else {
            let i = into.dynamic_ports.len();
            (Seg::DynamicPort(i), i)
        };
        let scope = network.child(seg, named("port", name, index));
        self.record(&scope, "", block.span.clone());
        if let Err(message) = &label {
            self.error(&scope, "port", block.span.clone(), message.clone());
            self.failed.insert(scope.key("label"));
        }
        let f = self.fields(&scope, block, &schema::PORT);
        let mut port = Port {
            label: name.to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("static") {
            match self.integer(&scope, a, 1, i64::from(u16::MAX)) {
                Some(n) => port.value = u16::try_from(n).unwrap_or_default(),
                None => {
                    // Keep the port (as static 0) so services can still refer to its label.
                    self.failed.insert(scope.key("static"));
                }
            }
        }
        if let Some(a) = f.attr("to") {
            port.to = self.unsigned(&scope, a, i64::from(u16::MAX)).unwrap_or(0);
        }
        if let Some(a) = f.attr("host_network") {
            port.host_network = self.string(&scope, a).unwrap_or_default();
        }
        if is_static {
            into.reserved_ports.push(port);
        } else {
            into.dynamic_ports.push(port);
        }
    }

    pub(super) fn service(
        &mut self,
        parent: &Scope,
        index: usize,
        block: &BlockRef<'_>,
    ) -> Service {
        let name = self.peek_string(block, "name");
        let scope = parent.child(Seg::Service(index), named("service", &name, index));
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span.clone());
        let f = self.fields(&scope, block, &schema::SERVICE);
        let mut service = Service::default();
        if let Some(a) = f.attr("name") {
            service.name = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("port") {
            service.port_label = self.port_label(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("tags") {
            service.tags = self.strings(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("canary_tags") {
            service.canary_tags = self.strings(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("provider") {
            service.provider = self.string(&scope, a).unwrap_or_default();
        }
        let restart = self
            .single(&scope, &f, "check_restart")
            .map(|b| self.check_restart(&scope, b));
        for (i, b) in f.blocks("check").enumerate() {
            let check = self.check(&scope, i, b, restart.as_ref());
            service.checks.push(check);
        }
        service.connect = self
            .single(&scope, &f, "connect")
            .map(|b| self.connect(&scope, b));
        service
    }

    /// `connect { native, sidecar_service { tags, port, proxy { upstreams { … } } } }`.
    fn connect(&mut self, service: &Scope, block: &BlockRef<'_>) -> ConsulConnect {
        let scope = self.unlabeled(service, Seg::Connect, "connect", block);
        let f = self.fields(&scope, block, &schema::CONNECT);
        let mut connect = ConsulConnect::default();
        if let Some(a) = f.attr("native") {
            connect.native = self.boolean(&scope, a).unwrap_or_default();
        }
        connect.sidecar_service = self
            .single(&scope, &f, "sidecar_service")
            .map(|b| self.sidecar_service(&scope, b));
        connect
    }

    fn sidecar_service(&mut self, connect: &Scope, block: &BlockRef<'_>) -> ConsulSidecarService {
        let scope = self.unlabeled(connect, Seg::SidecarService, "sidecar_service", block);
        let f = self.fields(&scope, block, &schema::SIDECAR_SERVICE);
        let mut sidecar = ConsulSidecarService::default();
        if let Some(a) = f.attr("tags") {
            sidecar.tags = self.strings(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("port") {
            sidecar.port = self.port_label(&scope, a).unwrap_or_default();
        }
        sidecar.proxy = self
            .single(&scope, &f, "proxy")
            .map(|b| self.proxy(&scope, b));
        sidecar
    }

    fn proxy(&mut self, sidecar: &Scope, block: &BlockRef<'_>) -> ConsulProxy {
        let scope = self.unlabeled(sidecar, Seg::Proxy, "proxy", block);
        let f = self.fields(&scope, block, &schema::PROXY);
        let mut proxy = ConsulProxy::default();
        for (i, b) in f.blocks("upstreams").enumerate() {
            let upstream = self.upstream(&scope, i, b);
            proxy.upstreams.push(upstream);
        }
        proxy
    }

    /// One `upstreams` block (repeatable), named in paths by its destination.
    fn upstream(&mut self, proxy: &Scope, index: usize, block: &BlockRef<'_>) -> ConsulUpstream {
        let name = self.peek_string(block, "destination_name");
        let scope = proxy.child(Seg::Upstream(index), named("upstreams", &name, index));
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span.clone());
        let f = self.fields(&scope, block, &schema::UPSTREAMS);
        let mut upstream = ConsulUpstream::default();
        if let Some(a) = f.attr("destination_name") {
            upstream.destination_name = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("destination_namespace") {
            upstream.destination_namespace = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("local_bind_port") {
            upstream.local_bind_port = self
                .integer(&scope, a, 1, i64::from(u16::MAX))
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_default();
        }
        if let Some(a) = f.attr("local_bind_address") {
            upstream.local_bind_address = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("datacenter") {
            upstream.datacenter = self.string(&scope, a).unwrap_or_default();
        }
        upstream
    }

    /// A service or check `port`: a label, or a port number (kept as its decimal string).
    fn port_label(&mut self, scope: &Scope, attr: &super::AttrRef<'_>) -> Option<String> {
        match self.json(scope, attr)? {
            Value::String(s) => Some(s),
            Value::Number(n) if n.is_u64() => Some(n.to_string()),
            other => {
                self.type_error(scope, attr, "a port label or number", &other);
                None
            }
        }
    }

    fn check(
        &mut self,
        service: &Scope,
        index: usize,
        block: &BlockRef<'_>,
        service_restart: Option<&CheckRestartFields>,
    ) -> ServiceCheck {
        let name = self.peek_string(block, "name");
        let scope = service.child(Seg::Check(index), named("check", &name, index));
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span.clone());
        let f = self.fields(&scope, block, &schema::CHECK);
        let mut check = ServiceCheck::default();
        if let Some(a) = f.attr("name") {
            check.name = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("type") {
            check.check_type = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("path") {
            check.path = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("interval") {
            check.interval = self.positive_duration(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("timeout") {
            check.timeout = self.positive_duration(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("method") {
            check.method = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("port") {
            check.port_label = self.port_label(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("grpc_service") {
            check.grpc_service = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("grpc_use_tls") {
            check.grpc_use_tls = self.boolean(&scope, a).unwrap_or_default();
        }
        let own = self
            .single(&scope, &f, "check_restart")
            .map(|b| self.check_restart(&scope, b));
        check.check_restart = merged_check_restart(service_restart, own.as_ref());
        check
    }

    fn check_restart(&mut self, parent: &Scope, block: &BlockRef<'_>) -> CheckRestartFields {
        let scope = self.unlabeled(parent, Seg::CheckRestart, "check_restart", block);
        let f = self.fields(&scope, block, &schema::CHECK_RESTART);
        let mut fields = CheckRestartFields::default();
        if let Some(a) = f.attr("limit") {
            fields.limit = self.unsigned(&scope, a, i64::from(u32::MAX));
        }
        if let Some(a) = f.attr("grace") {
            fields.grace = self.nonnegative_duration(&scope, a);
        }
        if let Some(a) = f.attr("ignore_warnings") {
            fields.ignore_warnings = self.boolean(&scope, a);
        }
        fields
    }

    /// Docker's `config { port_map { http = 8080 } }` (Nomad 0.x): sets the `to` of the group
    /// port with that label, and is taken out of the driver config.
    pub(super) fn port_maps(&mut self, group_scope: &Scope, group: &mut TaskGroup) {
        for ti in 0..group.tasks.len() {
            let Some(task) = group.tasks.get_mut(ti) else {
                continue;
            };
            if task.driver != "docker" {
                continue;
            }
            let Some(value) = task.config.remove("port_map") else {
                continue;
            };
            let task_scope = group_scope.child(Seg::Task(ti), named("task", &task.name, ti));
            let scope = task_scope
                .child(Seg::Config, "config")
                .child(Seg::PortMap, "port_map");
            let entries: Vec<(String, Value)> = match value {
                Value::Object(map) => map.into_iter().collect(),
                // `port_map = [{ http = 80 }]`, as older JSON-converted jobspecs write it.
                Value::Array(items) if items.iter().all(Value::is_object) => items
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::Object(map) => Some(map),
                        _ => None,
                    })
                    .flatten()
                    .collect(),
                other => {
                    let span = self.spans.locate(&scope.key(""));
                    self.error(
                        &scope,
                        "port_map",
                        span,
                        format!(
                            "expected `port_map {{ label = port }}`, got {}",
                            describe(&other)
                        ),
                    );
                    continue;
                }
            };
            for (label, to) in entries {
                let span = self.spans.locate(&scope.key(&label));
                let port_number = match &to {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse::<u64>().ok(),
                    _ => None,
                }
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
                let Some(port_number) = port_number else {
                    self.error(
                        &scope,
                        &label,
                        span,
                        format!(
                            "expected a port number from 1 to 65535, got {}",
                            describe(&to)
                        ),
                    );
                    continue;
                };
                let defined: Vec<String> = group.ports().map(|(p, _)| p.label.clone()).collect();
                let port = group
                    .networks
                    .iter_mut()
                    .flat_map(|n| {
                        n.reserved_ports
                            .iter_mut()
                            .chain(n.dynamic_ports.iter_mut())
                    })
                    .find(|p| p.label == label);
                match port {
                    None => {
                        let defined = if defined.is_empty() {
                            "none".to_string()
                        } else {
                            defined.join(", ")
                        };
                        self.error(
                            &scope,
                            &label,
                            span,
                            format!(
                                "port_map maps {label:?}, which no network block of group {:?} \
                                 defines (defined: {defined})",
                                group.name
                            ),
                        );
                    }
                    Some(port) if port.to != 0 && port.to != port_number => {
                        let existing = port.to;
                        self.error(
                            &scope,
                            &label,
                            span,
                            format!(
                                "port_map maps {label:?} to {port_number}, but the port already \
                                 has to = {existing}"
                            ),
                        );
                    }
                    Some(port) => port.to = port_number,
                }
            }
        }
    }
}
