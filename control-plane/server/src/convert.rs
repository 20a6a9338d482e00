//! Conversions between the store's types and the agent API's protobuf messages.

use std::collections::BTreeMap;

use base64::Engine as _;
use flotilla_proto::agent::v1 as pb;
use flotilla_types::*;

fn ms(nanos: i64) -> u64 {
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}

/// What an agent needs to run `alloc`.
pub fn alloc_to_proto(alloc: &Allocation, node: Option<&Node>) -> pb::Allocation {
    let job = alloc.job.as_deref();
    let group = alloc.group();
    let tasks = group
        .map(|g| {
            g.tasks
                .iter()
                .map(|t| {
                    let restart = t.restart_policy.clone().unwrap_or_default();
                    pb::Task {
                        name: t.name.clone(),
                        driver: t.driver.clone(),
                        config_json: serde_json::to_string(&t.config)
                            .unwrap_or_else(|_| "{}".into()),
                        env: t.env.clone().into_iter().collect(),
                        cpu_mhz: t.resources.cpu,
                        memory_mb: t.resources.memory_mb,
                        restart: Some(pb::RestartPolicy {
                            attempts: restart.attempts,
                            interval_ms: ms(restart.interval),
                            delay_ms: ms(restart.delay),
                            mode: restart.mode,
                        }),
                        kill_timeout_ms: ms(t.kill_timeout),
                        kill_signal: t.kill_signal.clone(),
                        meta: t.meta.clone().into_iter().collect(),
                        lifecycle_hook: t
                            .lifecycle
                            .as_ref()
                            .map(|l| l.hook.clone())
                            .unwrap_or_default(),
                        lifecycle_sidecar: t.lifecycle.as_ref().is_some_and(|l| l.sidecar),
                        artifacts: t
                            .artifacts
                            .iter()
                            .map(|a| pb::Artifact {
                                source: a.getter_source.clone(),
                                relative_dest: a.relative_dest.clone(),
                                mode: a.getter_mode.clone(),
                                options: a.getter_options.clone().into_iter().collect(),
                            })
                            .collect(),
                        templates: t
                            .templates
                            .iter()
                            .map(|tp| pb::Template {
                                source_path: tp.source_path.clone(),
                                dest_path: tp.dest_path.clone(),
                                embedded_tmpl: tp.embedded_tmpl.clone(),
                                change_mode: tp.change_mode.clone(),
                                change_signal: tp.change_signal.clone(),
                                envvars: tp.envvars,
                                perms: tp.perms.clone(),
                                left_delim: tp.left_delim.clone(),
                                right_delim: tp.right_delim.clone(),
                            })
                            .collect(),
                        log_max_files: t
                            .log_config
                            .as_ref()
                            .map(|l| l.max_files)
                            .unwrap_or_default(),
                        log_max_file_size_mb: t
                            .log_config
                            .as_ref()
                            .map(|l| l.max_file_size_mb)
                            .unwrap_or_default(),
                        user: t.user.clone(),
                        volume_mounts: t
                            .volume_mounts
                            .iter()
                            .map(|m| pb::VolumeMount {
                                volume: m.volume.clone(),
                                destination: m.destination.clone(),
                                read_only: m.read_only,
                            })
                            .collect(),
                        dispatch_payload_file: t
                            .dispatch_payload
                            .as_ref()
                            .map(|d| d.file.clone())
                            .unwrap_or_default(),
                        shutdown_delay_ms: ms(t.shutdown_delay),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let services = group
        .map(|g| {
            let group_services = g.services.iter().map(|s| (s, String::new()));
            let task_services = g
                .tasks
                .iter()
                .flat_map(|t| t.services.iter().map(move |s| (s, t.name.clone())));
            group_services
                .chain(task_services)
                .map(|(s, task)| pb::Service {
                    upstreams: s
                        .upstreams()
                        .iter()
                        .map(|u| pb::Upstream {
                            destination_name: u.destination_name.clone(),
                            destination_namespace: u.destination_namespace.clone(),
                            local_bind_address: u.local_bind_address.clone(),
                            local_bind_port: u32::from(u.local_bind_port),
                            datacenter: u.datacenter.clone(),
                        })
                        .collect(),
                    name: s.name.clone(),
                    port_label: s.port_label.clone(),
                    tags: s.tags.clone(),
                    checks: s
                        .checks
                        .iter()
                        .map(|c| pb::Check {
                            name: c.name.clone(),
                            r#type: c.check_type.clone(),
                            path: c.path.clone(),
                            port_label: c.port_label.clone(),
                            interval_ms: ms(c.interval),
                            timeout_ms: ms(c.timeout),
                            method: c.method.clone(),
                            grpc_service: c.grpc_service.clone(),
                            grpc_use_tls: c.grpc_use_tls,
                            check_restart_limit: c
                                .check_restart
                                .as_ref()
                                .map(|r| r.limit)
                                .unwrap_or_default(),
                            check_restart_grace_ms: c
                                .check_restart
                                .as_ref()
                                .map(|r| ms(r.grace))
                                .unwrap_or_default(),
                            check_restart_ignore_warnings: c
                                .check_restart
                                .as_ref()
                                .is_some_and(|r| r.ignore_warnings),
                        })
                        .collect(),
                    task,
                })
                .collect()
        })
        .unwrap_or_default();
    pb::Allocation {
        id: alloc.id.clone(),
        name: alloc.name.clone(),
        namespace: alloc.namespace.clone(),
        job_id: alloc.job_id.clone(),
        task_group: alloc.task_group.clone(),
        desired_status: alloc.desired_status.clone(),
        tasks,
        ports: alloc
            .allocated_resources
            .shared
            .ports
            .iter()
            .map(|p| pb::Port {
                label: p.label.clone(),
                value: u32::from(p.value),
                to: u32::from(p.to),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        services,
        datacenter: node.map(|n| n.datacenter.clone()).unwrap_or_default(),
        region: job.map(|j| j.region.clone()).unwrap_or_default(),
        job_version: job.map(|j| j.version).unwrap_or_default(),
        job_meta: job
            .map(|j| j.meta.clone().into_iter().collect())
            .unwrap_or_default(),
        group_meta: group
            .map(|g| g.meta.clone().into_iter().collect())
            .unwrap_or_default(),
        node_name: alloc.node_name.clone(),
        node_id: alloc.node_id.clone(),
        client_status: alloc.client_status.clone(),
        job_type: job.map(|j| j.job_type.clone()).unwrap_or_default(),
        volumes: group
            .map(|g| {
                g.volumes
                    .iter()
                    .map(|(name, v)| {
                        (
                            name.clone(),
                            pb::VolumeRequest {
                                name: v.name.clone(),
                                r#type: v.volume_type.clone(),
                                source: v.source.clone(),
                                read_only: v.read_only,
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        payload: job
            .filter(|j| !j.payload.is_empty())
            .and_then(|j| {
                base64::engine::general_purpose::STANDARD
                    .decode(j.payload.as_bytes())
                    .ok()
            })
            .unwrap_or_default(),
        job_name: job.map(|j| j.name.clone()).unwrap_or_default(),
        shutdown_delay_ms: group.map(|g| ms(g.shutdown_delay)).unwrap_or_default(),
    }
}

/// A node as the agent describes it at registration.
pub fn node_from_proto(n: pb::Node, existing: Option<&Node>, now: i64) -> Node {
    let drivers: BTreeMap<String, DriverInfo> = n
        .drivers
        .into_iter()
        .map(|d| {
            (
                d.name,
                DriverInfo {
                    detected: d.detected,
                    healthy: d.healthy,
                    health_description: d.health_description,
                },
            )
        })
        .collect();
    Node {
        id: n.id,
        secret_id: n.secret_id,
        name: n.name,
        datacenter: if n.datacenter.is_empty() {
            "dc1".into()
        } else {
            n.datacenter
        },
        node_class: n.node_class,
        status: NODE_STATUS_READY.to_string(),
        status_description: "node registered".to_string(),
        scheduling_eligibility: existing
            .map(|e| e.scheduling_eligibility.clone())
            .unwrap_or_else(|| NODE_ELIGIBLE.to_string()),
        drain: existing.is_some_and(|e| e.drain),
        drain_strategy: existing.and_then(|e| e.drain_strategy.clone()),
        attributes: n.attributes.into_iter().collect(),
        meta: n.meta.into_iter().collect(),
        node_resources: NodeResources {
            cpu: NodeCpu {
                cpu_shares: n.cpu_mhz,
                total_core_count: n.cpu_cores,
            },
            memory: NodeMemory {
                memory_mb: n.memory_mb,
            },
            min_dynamic_port: MIN_DYNAMIC_PORT,
            max_dynamic_port: MAX_DYNAMIC_PORT,
        },
        drivers,
        host_volumes: n
            .host_volumes
            .into_iter()
            .map(|(name, path)| {
                (
                    name.clone(),
                    ClientHostVolume {
                        name,
                        path,
                        read_only: false,
                    },
                )
            })
            .collect(),
        address: n.address,
        http_addr: n.http_addr,
        proxy_addr: n.proxy_addr,
        status_updated_at: now,
        create_index: 0,
        modify_index: 0,
    }
}

pub fn task_state_from_proto(t: pb::TaskState) -> TaskState {
    TaskState {
        state: t.state,
        failed: t.failed,
        restarts: t.restarts,
        started_at: t.started_at,
        finished_at: t.finished_at,
        events: t
            .events
            .into_iter()
            .map(|e| TaskEvent {
                event_type: e.r#type,
                time: e.time_unix_nanos,
                display_message: e.message,
                exit_code: e.exit_code,
                signal: e.signal,
            })
            .collect(),
    }
}
