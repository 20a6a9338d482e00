//! What each kind of block may hold, and the Nomad features outside Flotilla's subset.

/// The attributes and blocks allowed in one kind of block.
pub(super) struct Schema {
    pub attrs: &'static [&'static str],
    pub blocks: &'static [&'static str],
    /// Nomad attributes and blocks that are recognised but not supported.
    pub outside: &'static [Outside],
}

/// A Nomad feature outside the supported subset.
pub(super) struct Outside {
    pub name: &'static str,
    /// An error when ignoring it would change what runs; a warning when it would not.
    pub reject: bool,
    /// Why, for the message.
    pub why: &'static str,
}

impl Schema {
    /// Everything allowed, for "unknown …" messages.
    pub fn allowed(&self) -> String {
        let mut all: Vec<&str> = Vec::new();
        for name in self.attrs.iter().chain(self.blocks) {
            if !all.contains(name) {
                all.push(name);
            }
        }
        all.join(", ")
    }

    pub fn outside(&self, name: &str) -> Option<&'static Outside> {
        self.outside.iter().find(|o| o.name == name)
    }
}

const fn plain(attrs: &'static [&'static str]) -> Schema {
    Schema {
        attrs,
        blocks: &[],
        outside: &[],
    }
}

const VAULT: Outside = Outside {
    name: "vault",
    reject: true,
    why: "Flotilla has no Vault integration; the tasks would start without their secrets",
};
const MIGRATE: Outside = Outside {
    name: "migrate",
    reject: false,
    why: "allocations drained off a node are replaced at the default pace",
};
const SCALING: Outside = Outside {
    name: "scaling",
    reject: false,
    why: "nothing autoscales; the group runs `count` instances",
};
const CONSUL: Outside = Outside {
    name: "consul",
    reject: false,
    why: "services register in Flotilla's own catalog",
};

pub(super) const TOP: Schema = Schema {
    attrs: &[],
    blocks: &["job", "variable", "locals"],
    outside: &[],
};
pub(super) const JOB: Schema = Schema {
    attrs: &[
        "type",
        "datacenters",
        "region",
        "namespace",
        "priority",
        "meta",
    ],
    blocks: &[
        "group",
        "meta",
        "constraint",
        "affinity",
        "spread",
        "update",
        "periodic",
        "parameterized",
        "multiregion",
    ],
    outside: &[
        VAULT,
        MIGRATE,
        Outside {
            name: "ui",
            reject: false,
            why: "it only describes the job in Nomad's web UI",
        },
    ],
};
pub(super) const GROUP: Schema = Schema {
    attrs: &["count", "meta", "shutdown_delay"],
    blocks: &[
        "network",
        "service",
        "task",
        "restart",
        "meta",
        "constraint",
        "affinity",
        "spread",
        "reschedule",
        "update",
        "volume",
        "ephemeral_disk",
    ],
    outside: &[
        VAULT,
        SCALING,
        MIGRATE,
        CONSUL,
        Outside {
            name: "max_client_disconnect",
            reject: false,
            why: "allocations on a disconnected node are replaced as lost",
        },
        Outside {
            name: "stop_after_client_disconnect",
            reject: false,
            why: "allocations on a disconnected node keep running until it reconnects",
        },
        Outside {
            name: "disconnect",
            reject: false,
            why: "allocations on a disconnected node are replaced as lost",
        },
    ],
};
pub(super) const TASK: Schema = Schema {
    attrs: &[
        "driver",
        "kill_timeout",
        "kill_signal",
        "env",
        "meta",
        "user",
        "shutdown_delay",
    ],
    blocks: &[
        "config",
        "env",
        "resources",
        "restart",
        "service",
        "meta",
        "constraint",
        "affinity",
        "lifecycle",
        "artifact",
        "template",
        "logs",
        "volume_mount",
        "dispatch_payload",
    ],
    outside: &[
        VAULT,
        SCALING,
        CONSUL,
        Outside {
            name: "identity",
            reject: true,
            why: "workload identities are not issued; the task would start without its token",
        },
        Outside {
            name: "csi_plugin",
            reject: true,
            why: "Flotilla does not run CSI plugins",
        },
    ],
};
pub(super) const RESTART: Schema = plain(&["attempts", "interval", "delay", "mode"]);
pub(super) const RESCHEDULE: Schema = plain(&[
    "attempts",
    "interval",
    "delay",
    "delay_function",
    "max_delay",
    "unlimited",
]);
pub(super) const UPDATE: Schema = plain(&[
    "max_parallel",
    "health_check",
    "min_healthy_time",
    "healthy_deadline",
    "progress_deadline",
    "auto_revert",
    "auto_promote",
    "canary",
    "stagger",
]);
pub(super) const PERIODIC: Schema =
    plain(&["cron", "crons", "prohibit_overlap", "time_zone", "enabled"]);
pub(super) const PARAMETERIZED: Schema = plain(&["payload", "meta_required", "meta_optional"]);
pub(super) const CONSTRAINT: Schema = plain(&[
    "attribute",
    "operator",
    "value",
    "version",
    "semver",
    "regexp",
    "set_contains",
    "distinct_hosts",
    "distinct_property",
]);
pub(super) const AFFINITY: Schema = plain(&["attribute", "operator", "value", "weight"]);
pub(super) const SPREAD: Schema = Schema {
    attrs: &["attribute", "weight"],
    blocks: &["target"],
    outside: &[],
};
pub(super) const SPREAD_TARGET: Schema = plain(&["percent"]);
pub(super) const VOLUME: Schema = plain(&["type", "source", "read_only"]);
pub(super) const EPHEMERAL_DISK: Schema = plain(&["size", "sticky", "migrate"]);
pub(super) const NETWORK: Schema = Schema {
    attrs: &["mode"],
    blocks: &["port"],
    outside: &[],
};
/// A task's `resources { network { … } }` (Nomad 0.x).
pub(super) const TASK_NETWORK: Schema = Schema {
    attrs: &["mbits"],
    blocks: &["port"],
    outside: &[],
};
pub(super) const PORT: Schema = plain(&["static", "to", "host_network"]);
pub(super) const SERVICE: Schema = Schema {
    attrs: &["name", "port", "tags", "canary_tags", "provider"],
    blocks: &["check", "check_restart", "connect"],
    outside: &[],
};
pub(super) const CONNECT: Schema = Schema {
    attrs: &["native"],
    blocks: &["sidecar_service"],
    outside: &[
        Outside {
            name: "sidecar_task",
            reject: false,
            why: "the node proxy is every allocation's sidecar; no sidecar task is run",
        },
        Outside {
            name: "gateway",
            reject: true,
            why: "Flotilla runs no Connect gateways; every node proxy's ingress is the way into \
                  the mesh",
        },
    ],
};
pub(super) const SIDECAR_SERVICE: Schema = Schema {
    attrs: &["tags", "port"],
    blocks: &["proxy"],
    outside: &[],
};
pub(super) const PROXY: Schema = Schema {
    attrs: &[],
    blocks: &["upstreams"],
    outside: &[
        Outside {
            name: "config",
            reject: true,
            why: "the node proxy is not Envoy and takes no per-service proxy settings; \
                  protocols, timeouts and the like would silently not apply",
        },
        Outside {
            name: "expose",
            reject: true,
            why: "the node proxy exposes no paths of the service; checks or callers relying \
                  on them would fail",
        },
        Outside {
            name: "local_service_address",
            reject: true,
            why: "the node proxy delivers inbound connections to the service's own port on the \
                  node's address",
        },
        Outside {
            name: "local_service_port",
            reject: true,
            why: "the node proxy delivers inbound connections to the service's own port on the \
                  node's address",
        },
        Outside {
            name: "transparent_proxy",
            reject: true,
            why: "outbound traffic is not redirected; the app must connect to its upstreams' \
                  local_bind_port",
        },
    ],
};
pub(super) const UPSTREAMS: Schema = Schema {
    attrs: &[
        "destination_name",
        "destination_namespace",
        "local_bind_port",
        "local_bind_address",
        "datacenter",
    ],
    blocks: &[],
    outside: &[
        Outside {
            name: "mesh_gateway",
            reject: true,
            why: "there are no mesh gateways; connections go straight to a node proxy of the \
                  destination",
        },
        Outside {
            name: "config",
            reject: true,
            why: "the node proxy takes no per-upstream proxy settings; protocols, timeouts and \
                  the like would silently not apply",
        },
        Outside {
            name: "local_bind_socket_path",
            reject: true,
            why: "upstream listeners are TCP only; set local_bind_port",
        },
        Outside {
            name: "local_bind_socket_mode",
            reject: true,
            why: "upstream listeners are TCP only; set local_bind_port",
        },
    ],
};
pub(super) const CHECK: Schema = Schema {
    attrs: &[
        "name",
        "type",
        "path",
        "interval",
        "timeout",
        "method",
        "port",
        "grpc_service",
        "grpc_use_tls",
    ],
    blocks: &["check_restart"],
    outside: &[],
};
pub(super) const CHECK_RESTART: Schema = plain(&["limit", "grace", "ignore_warnings"]);
pub(super) const RESOURCES: Schema = Schema {
    attrs: &["cpu", "memory"],
    blocks: &["network"],
    outside: &[Outside {
        name: "device",
        reject: true,
        why: "devices are not scheduled; the task would run without the device",
    }],
};
pub(super) const LIFECYCLE: Schema = plain(&["hook", "sidecar"]);
pub(super) const ARTIFACT: Schema = Schema {
    attrs: &["source", "destination", "mode", "options"],
    blocks: &["options"],
    outside: &[],
};
pub(super) const TEMPLATE: Schema = plain(&[
    "data",
    "source",
    "destination",
    "change_mode",
    "change_signal",
    "env",
    "perms",
    "left_delimiter",
    "right_delimiter",
]);
pub(super) const LOGS: Schema = plain(&["max_files", "max_file_size"]);
pub(super) const VOLUME_MOUNT: Schema = plain(&["volume", "destination", "read_only"]);
pub(super) const DISPATCH_PAYLOAD: Schema = plain(&["file"]);
pub(super) const DYNAMIC: Schema = Schema {
    attrs: &["for_each", "iterator", "labels"],
    blocks: &["content"],
    outside: &[],
};
