//! One test per block and attribute of the supported subset: each lands in the right field of
//! the job, in the right units (durations in nanoseconds, sizes in MB), with Nomad's defaults
//! for what a block leaves out.

mod common;

use common::{assert_at, job_with, ok, only_error, parsed, task_line};
use flotilla_jobspec::Severity;
use flotilla_types::{
    Affinity, CheckRestart, Constraint, ConsulConnect, ConsulProxy, ConsulSidecarService,
    ConsulUpstream, DispatchPayloadConfig, EphemeralDisk, LogConfig, NANOS_PER_SEC,
    ParameterizedJobConfig, PeriodicConfig, Port, ReschedulePolicy, Spread, SpreadTarget,
    TaskArtifact, TaskLifecycle, Template, UpdateStrategy, VolumeMount, VolumeRequest,
};
use serde_json::json;

const S: i64 = NANOS_PER_SEC;

/// A job whose job-level body (from line 2) is `job_body`, with one valid group.
fn job_level(job_type: &str, job_body: &str) -> String {
    format!(
        "job \"j\" {{\n{job_body}  type = \"{job_type}\"\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"raw_exec\"\n      config {{\n        command = \"x\"\n      }}\n    }}\n  }}\n}}\n"
    )
}

fn group(src: &str) -> flotilla_types::TaskGroup {
    ok(src).task_groups[0].clone()
}

fn task(src: &str) -> flotilla_types::Task {
    ok(src).task_groups[0].tasks[0].clone()
}

// ---- job ----

#[test]
fn job_types() {
    for t in ["service", "batch", "system", "sysbatch"] {
        assert_eq!(ok(&job_level(t, "")).job_type, t);
    }
}

#[test]
fn constraint_spellings() {
    let src = job_level(
        "service",
        r#"  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  constraint {
    attribute = "${attr.cpu.numcores}"
    operator  = ">="
    value     = 4
  }
  constraint {
    attribute = "${attr.driver.docker.version}"
    version   = ">= 20.10, < 30"
  }
  constraint {
    attribute = "${attr.os.version}"
    semver    = ">= 1.2.3"
  }
  constraint {
    attribute = "${node.class}"
    regexp    = "^web-[0-9]+$"
  }
  constraint {
    attribute    = "${meta.tags}"
    set_contains = "ssd,gpu"
  }
  constraint {
    attribute = "${meta.zones}"
    operator  = "set_contains_any"
    value     = "a,b"
  }
  constraint {
    attribute = "${meta.maintenance}"
    operator  = "is_not_set"
  }
  constraint {
    distinct_hosts = true
  }
  constraint {
    operator = "distinct_hosts"
  }
  constraint {
    distinct_property = "${meta.rack}"
    value             = "2"
  }
"#,
    );
    let c = |l: &str, r: &str, op: &str| Constraint {
        l_target: l.into(),
        r_target: r.into(),
        operand: op.into(),
    };
    assert_eq!(
        ok(&src).constraints,
        [
            c("${attr.kernel.name}", "linux", "="),
            c("${attr.cpu.numcores}", "4", ">="),
            c("${attr.driver.docker.version}", ">= 20.10, < 30", "version"),
            c("${attr.os.version}", ">= 1.2.3", "semver"),
            c("${node.class}", "^web-[0-9]+$", "regexp"),
            c("${meta.tags}", "ssd,gpu", "set_contains"),
            c("${meta.zones}", "a,b", "set_contains_any"),
            c("${meta.maintenance}", "", "is_not_set"),
            c("", "", "distinct_hosts"),
            c("", "", "distinct_hosts"),
            c("${meta.rack}", "2", "distinct_property"),
        ]
    );
}

#[test]
fn constraint_shorthand_conflicts() {
    let d = only_error(&job_level(
        "service",
        "  constraint {\n    attribute = \"${attr.x}\"\n    operator  = \"=\"\n    regexp    = \"a\"\n  }\n",
    ));
    assert_at(&d, Severity::Error, 5, "regexp");
    assert!(
        d.message.starts_with("regexp conflicts with operator"),
        "{d}"
    );
    assert_eq!(d.path, r#"job "j" > constraint[0]"#);
}

#[test]
fn affinity() {
    let src = job_level(
        "service",
        r#"  affinity {
    attribute = "${node.datacenter}"
    value     = "dc1"
    weight    = -40
  }
  affinity {
    attribute = "${attr.os.version}"
    operator  = "version"
    value     = ">= 22"
  }
"#,
    );
    assert_eq!(
        ok(&src).affinities,
        [
            Affinity {
                l_target: "${node.datacenter}".into(),
                r_target: "dc1".into(),
                operand: "=".into(),
                weight: -40,
            },
            Affinity {
                l_target: "${attr.os.version}".into(),
                r_target: ">= 22".into(),
                operand: "version".into(),
                weight: 50,
            },
        ],
        "operator defaults to =, weight to 50"
    );
}

#[test]
fn spread() {
    let src = job_level(
        "service",
        r#"  spread {
    attribute = "${node.datacenter}"
    weight    = 100
    target "dc1" {
      percent = 60
    }
    target "dc2" {
      percent = 40
    }
  }
  spread {
    attribute = "${meta.rack}"
  }
"#,
    );
    assert_eq!(
        ok(&src).spreads,
        [
            Spread {
                attribute: "${node.datacenter}".into(),
                weight: 100,
                spread_target: vec![
                    SpreadTarget {
                        value: "dc1".into(),
                        percent: 60
                    },
                    SpreadTarget {
                        value: "dc2".into(),
                        percent: 40
                    },
                ],
            },
            Spread {
                attribute: "${meta.rack}".into(),
                weight: 50,
                spread_target: vec![],
            },
        ]
    );
}

#[test]
fn job_update_every_field() {
    let src = job_level(
        "service",
        r#"  update {
    max_parallel      = 3
    health_check      = "task_states"
    min_healthy_time  = "30s"
    healthy_deadline  = "10m"
    progress_deadline = "1h"
    auto_revert       = true
    auto_promote      = true
    canary            = 1
    stagger           = "45s"
  }
"#,
    );
    let job = ok(&src);
    let update = UpdateStrategy {
        stagger: 45 * S,
        max_parallel: 3,
        health_check: "task_states".into(),
        min_healthy_time: 30 * S,
        healthy_deadline: 600 * S,
        progress_deadline: 3600 * S,
        auto_revert: true,
        auto_promote: true,
        canary: 1,
    };
    assert_eq!(job.update.as_ref(), Some(&update));
    assert_eq!(job.task_groups[0].update, Some(update), "groups inherit it");
}

#[test]
fn update_defaults_and_group_merge() {
    let src = r#"job "j" {
  update {
    max_parallel = 2
    canary       = 1
  }
  group "a" {
    count = 2
    update {
      canary           = 2
      min_healthy_time = "20s"
    }
    task "t" {
      driver = "exec"
      config {
        command = "x"
      }
    }
  }
  group "b" {
    task "t" {
      driver = "exec"
      config {
        command = "x"
      }
    }
  }
}
"#;
    let job = ok(src);
    let defaults = UpdateStrategy {
        stagger: 30 * S,
        max_parallel: 2,
        health_check: "checks".into(),
        min_healthy_time: 10 * S,
        healthy_deadline: 300 * S,
        progress_deadline: 600 * S,
        auto_revert: false,
        auto_promote: false,
        canary: 1,
    };
    assert_eq!(
        job.update.as_ref(),
        Some(&defaults),
        "Nomad's defaults fill the rest"
    );
    assert_eq!(
        job.task_groups[0].update,
        Some(UpdateStrategy {
            canary: 2,
            min_healthy_time: 20 * S,
            ..defaults.clone()
        }),
        "the group overrides what it sets, field by field"
    );
    assert_eq!(job.task_groups[1].update, Some(defaults));

    // No update block anywhere: none.
    let job = ok(&job_level("service", ""));
    assert_eq!(
        (job.update, job.task_groups[0].update.clone()),
        (None, None)
    );
}

#[test]
fn periodic() {
    let job = ok(&job_level(
        "batch",
        "  periodic {\n    cron             = \"*/15 * * * *\"\n    prohibit_overlap = true\n    time_zone        = \"Europe/Paris\"\n  }\n",
    ));
    assert_eq!(
        job.periodic,
        Some(PeriodicConfig {
            enabled: true,
            spec: "*/15 * * * *".into(),
            spec_type: "cron".into(),
            prohibit_overlap: true,
            time_zone: "Europe/Paris".into(),
        })
    );
    let job = ok(&job_level(
        "sysbatch",
        "  periodic {\n    crons   = [\"0 3 * * *\"]\n    enabled = false\n  }\n",
    ));
    let p = job.periodic.unwrap();
    assert_eq!((p.spec.as_str(), p.enabled), ("0 3 * * *", false));
}

#[test]
fn periodic_crons_rules() {
    let d = only_error(&job_level(
        "batch",
        "  periodic {\n    crons = [\"0 3 * * *\", \"0 4 * * *\"]\n  }\n",
    ));
    assert_at(&d, Severity::Error, 3, "crons");
    assert!(
        d.message
            .starts_with("only one cron expression is supported, got 2"),
        "{d}"
    );

    let d = only_error(&job_level(
        "batch",
        "  periodic {\n    cron  = \"0 3 * * *\"\n    crons = [\"0 4 * * *\"]\n  }\n",
    ));
    assert_at(&d, Severity::Error, 4, "crons");
}

#[test]
fn parameterized() {
    let job = ok(&job_level(
        "batch",
        "  parameterized {\n    payload       = \"required\"\n    meta_required = [\"input\"]\n    meta_optional = [\"mode\", \"level\"]\n  }\n",
    ));
    assert_eq!(
        job.parameterized_job,
        Some(ParameterizedJobConfig {
            payload: "required".into(),
            meta_required: vec!["input".into()],
            meta_optional: vec!["mode".into(), "level".into()],
        })
    );
    let job = ok(&job_level("batch", "  parameterized {}\n"));
    assert_eq!(
        job.parameterized_job.unwrap().payload,
        "optional",
        "the default"
    );
}

// ---- group ----

#[test]
fn group_placement() {
    let g = group(&job_with(
        "    constraint {\n      attribute = \"${attr.unique.hostname}\"\n      operator  = \"!=\"\n      value     = \"bad\"\n    }\n    affinity {\n      attribute = \"${meta.ssd}\"\n      value     = \"true\"\n      weight    = 25\n    }\n    spread {\n      attribute = \"${meta.rack}\"\n      weight    = 10\n    }\n",
        "",
    ));
    assert_eq!(g.constraints[0].operand, "!=");
    assert_eq!(g.constraints[0].r_target, "bad");
    assert_eq!(g.affinities[0].weight, 25);
    assert_eq!(g.spreads[0].attribute, "${meta.rack}");
    assert_eq!(g.spreads[0].weight, 10);
}

#[test]
fn reschedule_every_field() {
    let g = group(&job_with(
        "    reschedule {\n      attempts       = 4\n      interval       = \"2h\"\n      delay          = \"10s\"\n      delay_function = \"exponential\"\n      max_delay      = \"5m\"\n      unlimited      = false\n    }\n",
        "",
    ));
    assert_eq!(
        g.reschedule_policy,
        Some(ReschedulePolicy {
            attempts: 4,
            interval: 7200 * S,
            delay: 10 * S,
            delay_function: "exponential".into(),
            max_delay: 300 * S,
            unlimited: false,
        })
    );
}

#[test]
fn reschedule_defaults_follow_the_job_type() {
    let g = group(&job_with(
        "    reschedule {\n      delay = \"1m\"\n    }\n",
        "",
    ));
    assert_eq!(
        g.reschedule_policy,
        Some(ReschedulePolicy {
            delay: 60 * S,
            ..ReschedulePolicy::default_for("service")
        })
    );
    let src = job_with("    reschedule {\n      attempts = 2\n    }\n", "").replacen(
        "job \"j\" {\n",
        "job \"j\" {\n  type = \"batch\"\n",
        1,
    );
    let g = group(&src);
    assert_eq!(
        g.reschedule_policy,
        Some(ReschedulePolicy {
            attempts: 2,
            ..ReschedulePolicy::default_for("batch")
        })
    );
    assert_eq!(
        group(&job_with("", "")).reschedule_policy,
        None,
        "not canonicalized"
    );
}

#[test]
fn host_volumes() {
    let g = group(&job_with(
        "    volume \"data\" {\n      type      = \"host\"\n      source    = \"pg-data\"\n      read_only = true\n    }\n    volume \"certs\" {\n      type   = \"host\"\n      source = \"tls\"\n    }\n",
        "",
    ));
    assert_eq!(g.volumes.len(), 2);
    assert_eq!(
        g.volumes["data"],
        VolumeRequest {
            name: "data".into(),
            volume_type: "host".into(),
            source: "pg-data".into(),
            read_only: true,
        }
    );
    assert!(!g.volumes["certs"].read_only);
}

#[test]
fn duplicate_volume() {
    let d = only_error(&job_with(
        "    volume \"data\" {\n      type   = \"host\"\n      source = \"a\"\n    }\n    volume \"data\" {\n      type   = \"host\"\n      source = \"b\"\n    }\n",
        "",
    ));
    assert_at(&d, Severity::Error, 7, "volume");
    assert!(d.message.starts_with(r#"duplicate volume "data""#), "{d}");
}

#[test]
fn ephemeral_disk() {
    let g = group(&job_with(
        "    ephemeral_disk {\n      size    = 1024\n      sticky  = true\n      migrate = true\n    }\n",
        "",
    ));
    assert_eq!(
        g.ephemeral_disk,
        Some(EphemeralDisk {
            sticky: true,
            size_mb: 1024,
            migrate: true,
        })
    );
    let g = group(&job_with(
        "    ephemeral_disk {\n      sticky = true\n    }\n",
        "",
    ));
    assert_eq!(
        g.ephemeral_disk.unwrap().size_mb,
        300,
        "Nomad's default size"
    );
}

#[test]
fn network_mode_and_ports() {
    let g = group(&job_with(
        "    network {\n      mode = \"bridge\"\n      port \"http\" {\n        to = 8080\n      }\n      port \"dns\" {\n        static       = 53\n        host_network = \"internal\"\n      }\n    }\n",
        "",
    ));
    let n = &g.networks[0];
    assert_eq!(n.mode, "bridge");
    assert_eq!(
        n.dynamic_ports,
        [Port {
            label: "http".into(),
            value: 0,
            to: 8080,
            host_network: String::new(),
        }]
    );
    assert_eq!(
        n.reserved_ports,
        [Port {
            label: "dns".into(),
            value: 53,
            to: 0,
            host_network: "internal".into(),
        }]
    );
}

#[test]
fn grpc_checks_and_check_restart() {
    let g = group(&job_with(
        r#"    network {
      port "grpc" {}
    }
    service {
      name = "api"
      port = "grpc"
      check_restart {
        limit = 2
        grace = "1m"
      }
      check {
        type         = "grpc"
        grpc_service = "api.v1.Health"
        grpc_use_tls = true
        interval     = "5s"
        timeout      = "1s"
        check_restart {
          limit           = 5
          ignore_warnings = true
        }
      }
      check {
        type = "tcp"
      }
    }
"#,
        "",
    ));
    let checks = &g.services[0].checks;
    assert_eq!(checks[0].check_type, "grpc");
    assert_eq!(checks[0].grpc_service, "api.v1.Health");
    assert!(checks[0].grpc_use_tls);
    assert_eq!(
        checks[0].check_restart,
        Some(CheckRestart {
            limit: 5,
            grace: 60 * S,
            ignore_warnings: true,
        }),
        "the check's own fields over the service's"
    );
    assert_eq!(
        checks[1].check_restart,
        Some(CheckRestart {
            limit: 2,
            grace: 60 * S,
            ignore_warnings: false,
        }),
        "inherited from the service"
    );
}

#[test]
fn check_restart_on_a_check_only() {
    let g = group(&job_with(
        "    network {\n      port \"http\" {}\n    }\n    service {\n      name = \"web\"\n      port = \"http\"\n      check {\n        type = \"tcp\"\n        check_restart {\n          grace = \"30s\"\n        }\n      }\n    }\n",
        "",
    ));
    assert_eq!(
        g.services[0].checks[0].check_restart,
        Some(CheckRestart {
            limit: 0,
            grace: 30 * S,
            ignore_warnings: false,
        })
    );
}

#[test]
fn connect_sidecar_upstreams() {
    let src = format!(
        "variable \"cache_port\" {{\n  default = 6379\n}}\n{}",
        job_with(
            r#"    network {
      port "http" {}
    }
    service {
      name = "web"
      port = "http"
      connect {
        native = false
        sidecar_service {
          tags = ["mesh", "v1"]
          port = "http"
          proxy {
            upstreams {
              destination_name      = "db"
              destination_namespace = "data"
              local_bind_port       = 5432
              local_bind_address    = "127.0.0.2"
              datacenter            = "dc2"
            }
            dynamic "upstreams" {
              for_each = ["cache"]
              content {
                destination_name = upstreams.value
                local_bind_port  = var.cache_port
              }
            }
          }
        }
      }
    }
"#,
            r#"      service {
        name = "worker"
        connect {
          sidecar_service {
            proxy {
              upstreams {
                destination_name = "queue"
                local_bind_port  = 5672
              }
            }
          }
        }
      }
"#,
        )
    );
    let job = ok(&src);
    let g = &job.task_groups[0];
    assert_eq!(
        g.services[0].connect,
        Some(ConsulConnect {
            native: false,
            sidecar_service: Some(ConsulSidecarService {
                tags: vec!["mesh".into(), "v1".into()],
                port: "http".into(),
                proxy: Some(ConsulProxy {
                    upstreams: vec![
                        ConsulUpstream {
                            destination_name: "db".into(),
                            destination_namespace: "data".into(),
                            local_bind_port: 5432,
                            local_bind_address: "127.0.0.2".into(),
                            datacenter: "dc2".into(),
                        },
                        ConsulUpstream {
                            destination_name: "cache".into(),
                            local_bind_port: 6379,
                            ..Default::default()
                        },
                    ],
                }),
            }),
        })
    );
    let all: Vec<_> = g
        .upstreams()
        .map(|(s, u)| {
            (
                s.name.as_str(),
                u.destination_name.as_str(),
                u.bind_address(),
            )
        })
        .collect();
    assert_eq!(
        all,
        [
            ("web", "db", "127.0.0.2"),
            ("web", "cache", "127.0.0.1"),
            ("worker", "queue", "127.0.0.1"),
        ]
    );
}

#[test]
fn connect_native_and_empty_blocks() {
    let g = group(&job_with(
        "    service {\n      name = \"api\"\n      connect {\n        native = true\n      }\n    }\n    service {\n      name = \"web\"\n      connect {\n        sidecar_service {}\n      }\n    }\n",
        "",
    ));
    assert_eq!(
        g.services[0].connect,
        Some(ConsulConnect {
            native: true,
            sidecar_service: None,
        })
    );
    assert_eq!(
        g.services[1].connect,
        Some(ConsulConnect {
            native: false,
            sidecar_service: Some(ConsulSidecarService::default()),
        })
    );
    assert!(g.services[1].upstreams().is_empty());
    assert_eq!(g.upstreams().count(), 0);
}

#[test]
fn connect_attribute_errors_are_located() {
    let body = |upstream: &str| {
        job_with(
            &format!(
                "    service {{\n      name = \"web\"\n      connect {{\n        sidecar_service {{\n          proxy {{\n            upstreams {{\n              destination_name = \"db\"\n{upstream}            }}\n          }}\n        }}\n      }}\n    }}\n"
            ),
            "",
        )
    };
    // The upstream's attributes start on line 10.
    let d = only_error(&body("              local_bind_port = 70000\n"));
    assert_at(&d, Severity::Error, 10, "local_bind_port");
    assert_eq!(d.message, "70000 is out of range (expected 1 to 65535)");
    assert_eq!(
        d.path,
        r#"job "j" > group "g" > service "web" > connect > sidecar_service > proxy > upstreams "db""#
    );

    let d = only_error(&body("              local_bind_port = 0\n"));
    assert_at(&d, Severity::Error, 10, "local_bind_port");
    assert_eq!(d.message, "0 is out of range (expected 1 to 65535)");

    let d = only_error(&body(
        "              local_bind_port = 1\n              local_bind_adress = \"x\"\n",
    ));
    assert_at(&d, Severity::Error, 11, "local_bind_adress");
    assert_eq!(
        d.message,
        r#"unknown attribute "local_bind_adress" (allowed: destination_name, destination_namespace, local_bind_port, local_bind_address, datacenter)"#
    );

    let d = only_error(&body("              local_bind_port = \"x\"\n"));
    assert_at(&d, Severity::Error, 10, "local_bind_port");

    let d = only_error(&job_with(
        "    service {\n      name = \"web\"\n      connect {\n        native = \"yes\"\n      }\n    }\n",
        "",
    ));
    assert_at(&d, Severity::Error, 6, "native");
}

// ---- task ----

#[test]
fn lifecycle() {
    let t = task(&job_with(
        "",
        "      lifecycle {\n        hook    = \"poststart\"\n        sidecar = true\n      }\n",
    ));
    assert_eq!(
        t.lifecycle,
        Some(TaskLifecycle {
            hook: "poststart".into(),
            sidecar: true,
        })
    );
    let t = task(&job_with(
        "",
        "      lifecycle {\n        hook = \"poststop\"\n      }\n",
    ));
    assert!(!t.lifecycle.unwrap().sidecar);
}

#[test]
fn artifacts() {
    let t = task(&job_with(
        "",
        r#"      artifact {
        source      = "/srv/releases/app.tar.gz"
        destination = "local/app"
        mode        = "dir"
        options {
          checksum = "sha256:abc"
        }
      }
      artifact {
        source  = "file:///etc/app/config.json"
        options = { archive = false }
      }
"#,
    ));
    assert_eq!(
        t.artifacts[0],
        TaskArtifact {
            getter_source: "/srv/releases/app.tar.gz".into(),
            getter_options: [("checksum".to_string(), "sha256:abc".to_string())].into(),
            relative_dest: "local/app".into(),
            getter_mode: "dir".into(),
        }
    );
    assert_eq!(
        t.artifacts[1],
        TaskArtifact {
            getter_source: "file:///etc/app/config.json".into(),
            getter_options: [("archive".to_string(), "false".to_string())].into(),
            relative_dest: "local/".into(),
            getter_mode: "any".into(),
        },
        "Nomad's defaults for destination and mode"
    );
}

#[test]
fn templates() {
    let t = task(&job_with(
        "",
        r#"      template {
        data            = "port=<< env \"NOMAD_PORT_http\" >>"
        destination     = "local/app.conf"
        change_mode     = "signal"
        change_signal   = "SIGUSR1"
        env             = false
        perms           = "0640"
        left_delimiter  = "<<"
        right_delimiter = ">>"
      }
      template {
        source      = "local/in.tpl"
        destination = "secrets/file.env"
        env         = true
      }
"#,
    ));
    assert_eq!(
        t.templates[0],
        Template {
            source_path: String::new(),
            dest_path: "local/app.conf".into(),
            embedded_tmpl: "port=<< env \"NOMAD_PORT_http\" >>".into(),
            change_mode: "signal".into(),
            change_signal: "SIGUSR1".into(),
            envvars: false,
            perms: "0640".into(),
            left_delim: "<<".into(),
            right_delim: ">>".into(),
        }
    );
    assert_eq!(
        t.templates[1],
        Template {
            source_path: "local/in.tpl".into(),
            dest_path: "secrets/file.env".into(),
            embedded_tmpl: String::new(),
            change_mode: "restart".into(),
            change_signal: String::new(),
            envvars: true,
            perms: "0644".into(),
            left_delim: "{{".into(),
            right_delim: "}}".into(),
        },
        "Nomad's defaults"
    );
}

#[test]
fn logs() {
    let t = task(&job_with(
        "",
        "      logs {\n        max_files     = 3\n        max_file_size = 15\n      }\n",
    ));
    assert_eq!(
        t.log_config,
        Some(LogConfig {
            max_files: 3,
            max_file_size_mb: 15,
        })
    );
    let t = task(&job_with(
        "",
        "      logs {\n        max_files = 2\n      }\n",
    ));
    assert_eq!(
        t.log_config.unwrap().max_file_size_mb,
        10,
        "Nomad's default"
    );
    assert_eq!(
        task(&job_with("", "")).log_config,
        None,
        "not canonicalized"
    );
}

#[test]
fn user_kill_timeout_and_signal() {
    let t = task(&job_with(
        "",
        "      user         = \"nobody\"\n      kill_timeout = \"1m30s\"\n      kill_signal  = \"SIGQUIT\"\n",
    ));
    assert_eq!(t.user, "nobody");
    assert_eq!(t.kill_timeout, 90 * S);
    assert_eq!(t.kill_signal, "SIGQUIT");
}

#[test]
fn volume_mounts() {
    let t = task(&job_with(
        "    volume \"data\" {\n      type   = \"host\"\n      source = \"d\"\n    }\n",
        "      volume_mount {\n        volume      = \"data\"\n        destination = \"/var/lib/data\"\n        read_only   = true\n      }\n",
    ));
    assert_eq!(
        t.volume_mounts,
        [VolumeMount {
            volume: "data".into(),
            destination: "/var/lib/data".into(),
            read_only: true,
        }]
    );
}

#[test]
fn dispatch_payload() {
    let src = job_with(
        "",
        "      dispatch_payload {\n        file = \"input.json\"\n      }\n",
    )
    .replacen(
        "job \"j\" {\n",
        "job \"j\" {\n  type = \"batch\"\n  parameterized {}\n",
        1,
    );
    assert_eq!(
        task(&src).dispatch_payload,
        Some(DispatchPayloadConfig {
            file: "input.json".into()
        })
    );
}

#[test]
fn task_constraints_and_affinities() {
    let t = task(&job_with(
        "",
        "      constraint {\n        attribute = \"${attr.driver.docker}\"\n        value     = \"1\"\n      }\n      affinity {\n        attribute = \"${node.class}\"\n        value     = \"fast\"\n        weight    = 100\n      }\n",
    ));
    assert_eq!(t.constraints[0].l_target, "${attr.driver.docker}");
    assert_eq!(t.affinities[0].weight, 100);
}

#[test]
fn old_style_task_network_joins_the_group_network() {
    let group_body = "    network {\n      port \"metrics\" {}\n    }\n";
    let src = job_with(
        group_body,
        "      resources {\n        cpu    = 200\n        memory = 100\n        network {\n          mbits = 10\n          port \"http\" {}\n          port \"https\" {\n            static = 443\n          }\n        }\n      }\n",
    );
    let p = parsed(&src);
    let g = &p.job.task_groups[0];
    let t = &g.tasks[0];
    assert_eq!((t.resources.cpu, t.resources.memory_mb), (200, 100));
    assert_eq!(g.networks.len(), 1);
    let dynamic: Vec<_> = g.networks[0]
        .dynamic_ports
        .iter()
        .map(|p| p.label.as_str())
        .collect();
    assert_eq!(dynamic, ["metrics", "http"]);
    assert_eq!(g.networks[0].reserved_ports[0].label, "https");
    assert_eq!(g.networks[0].reserved_ports[0].value, 443);

    // Two warnings: the deprecated form, and mbits.
    let line = task_line(group_body);
    let got: Vec<_> = p
        .warnings
        .iter()
        .map(|w| (w.line, w.field.as_str(), w.severity))
        .collect();
    assert_eq!(
        got,
        [
            (Some(line + 3), "network", Severity::Warning),
            (Some(line + 4), "mbits", Severity::Warning),
        ]
    );
    assert!(
        p.warnings[1]
            .message
            .contains("mbits is deprecated and ignored")
    );
}

#[test]
fn old_style_network_without_group_network() {
    let g = group(&job_with(
        "",
        "      resources {\n        network {\n          port \"http\" {}\n        }\n      }\n",
    ));
    assert_eq!(g.networks.len(), 1);
    assert_eq!(g.networks[0].mode, "host");
    assert_eq!(g.networks[0].dynamic_ports[0].label, "http");
}

#[test]
fn old_style_port_conflicts_are_located_in_the_task() {
    let src = job_with(
        "    network {\n      port \"http\" {}\n    }\n",
        "      resources {\n        network {\n          port \"http\" {}\n        }\n      }\n",
    );
    let d = only_error(&src);
    assert_at(
        &d,
        Severity::Error,
        task_line("...\n...\n...\n") + 2,
        "label",
    );
    assert!(d.message.contains(r#"duplicate port label "http""#), "{d}");
}

/// A docker task in a group with `network_body`, whose config holds `config_extra`.
fn docker(network_body: &str, config_extra: &str) -> String {
    format!(
        "job \"j\" {{\n  group \"g\" {{\n    network {{\n{network_body}\n    }}\n    task \"t\" {{\n      driver = \"docker\"\n      config {{\n        image = \"nginx\"\n{config_extra}\n      }}\n    }}\n  }}\n}}\n"
    )
}

#[test]
fn docker_port_map_sets_to() {
    let g = group(&docker(
        "      port \"http\" {}\n      port \"admin\" {\n        static = 9000\n      }",
        "        port_map {\n          http  = 80\n          admin = \"9001\"\n        }",
    ));
    assert_eq!(g.networks[0].dynamic_ports[0].to, 80);
    assert_eq!(g.networks[0].reserved_ports[0].to, 9001);
    assert_eq!(
        g.tasks[0].config.get("port_map"),
        None,
        "taken out of the config"
    );
    assert_eq!(g.tasks[0].config["image"], json!("nginx"));

    // The attribute form.
    let g = group(&docker(
        "      port \"http\" {}",
        "        port_map = { http = 8080 }",
    ));
    assert_eq!(g.networks[0].dynamic_ports[0].to, 8080);
}

#[test]
fn docker_port_map_errors() {
    let d = only_error(&docker(
        "      port \"http\" {}",
        "        port_map {\n          htp = 80\n        }",
    ));
    assert_at(&d, Severity::Error, 11, "htp");
    assert_eq!(
        d.path,
        r#"job "j" > group "g" > task "t" > config > port_map"#
    );
    assert_eq!(
        d.message,
        r#"port_map maps "htp", which no network block of group "g" defines (defined: http)"#
    );

    let d = only_error(&docker(
        "      port \"http\" {}",
        "        port_map {\n          http = \"eighty\"\n        }",
    ));
    assert_at(&d, Severity::Error, 11, "http");
    assert!(
        d.message
            .starts_with("expected a port number from 1 to 65535"),
        "{d}"
    );

    let d = only_error(&docker(
        "      port \"http\" {\n        to = 81\n      }",
        "        port_map {\n          http = 80\n        }",
    ));
    assert!(d.message.contains("already has to = 81"), "{d}");
}

#[test]
fn port_map_of_other_drivers_is_left_alone() {
    let src = docker(
        "      port \"http\" {}",
        "        port_map {\n          http = 80\n        }",
    )
    .replace("driver = \"docker\"", "driver = \"exec\"")
    .replace("image = \"nginx\"", "command = \"x\"");
    let g = group(&src);
    assert_eq!(g.tasks[0].config["port_map"], json!({"http": 80}));
    assert_eq!(g.networks[0].dynamic_ports[0].to, 0);
}

#[test]
fn shutdown_delay_in_group_and_task() {
    let parsed = parsed(&job_with(
        "    shutdown_delay = \"5s\"\n",
        "      shutdown_delay = \"1m30s\"\n",
    ));
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    let g = &parsed.job.task_groups[0];
    assert_eq!(g.shutdown_delay, 5 * S);
    assert_eq!(g.tasks[0].shutdown_delay, 90 * S);

    let g = group(&job_with("", ""));
    assert_eq!(
        (g.shutdown_delay, g.tasks[0].shutdown_delay),
        (0, 0),
        "none unless set"
    );

    let d = only_error(&job_with("    shutdown_delay = \"soon\"\n", ""));
    assert_at(&d, Severity::Error, 3, "shutdown_delay");
    let d = only_error(&job_with("", "      shutdown_delay = \"-2s\"\n"));
    assert_at(&d, Severity::Error, task_line(""), "shutdown_delay");
    assert_eq!(d.message, "shutdown_delay must not be negative, got -2s");
    assert!(d.path.ends_with(r#"task "t""#), "{d}");
    let d = only_error(&job_with("    shutdown_delay = 5\n", ""));
    assert_at(&d, Severity::Error, 3, "shutdown_delay");
}

#[test]
fn canary_tags_of_group_and_task_services() {
    let g = group(&job_with(
        r#"    network {
      port "http" {}
    }
    service {
      name        = "web"
      port        = "http"
      tags        = ["urlprefix-/web"]
      canary_tags = ["canary", "urlprefix-/canary"]
    }
"#,
        r#"      service {
        name        = "worker"
        canary_tags = ["next"]
      }
"#,
    ));
    assert_eq!(g.services[0].tags, ["urlprefix-/web"]);
    assert_eq!(g.services[0].canary_tags, ["canary", "urlprefix-/canary"]);
    assert_eq!(g.tasks[0].services[0].canary_tags, ["next"]);
    assert!(g.tasks[0].services[0].tags.is_empty());

    let d = only_error(&job_with(
        "    service {\n      name        = \"web\"\n      canary_tags = \"canary\"\n    }\n",
        "",
    ));
    assert_at(&d, Severity::Error, 5, "canary_tags");
}
