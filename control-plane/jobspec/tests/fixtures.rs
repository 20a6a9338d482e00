//! The realistic fixture job, `tests/fixtures/webapp.nomad.hcl` (a web application and its
//! Redis cache), parsed with a var-file and options the way `flotilla job run -var-file … -var …`
//! would.

use std::path::{Path, PathBuf};

use flotilla_jobspec::{ParseError, ParseOptions, Parsed, Severity, parse_with, validate};
use flotilla_types::{
    Affinity, CheckRestart, Constraint, EphemeralDisk, LogConfig, NANOS_PER_SEC, Port,
    ReschedulePolicy, RestartPolicy, Spread, SpreadTarget, TaskArtifact, TaskLifecycle,
    UpdateStrategy, VolumeMount, VolumeRequest,
};
use serde_json::json;

const S: i64 = NANOS_PER_SEC;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn parse_fixture(opts: &ParseOptions) -> Result<Parsed, ParseError> {
    let src = std::fs::read_to_string(fixtures().join("webapp.nomad.hcl")).unwrap();
    parse_with(&src, "webapp.nomad.hcl", opts)
}

fn options() -> ParseOptions {
    ParseOptions {
        vars: vec![("web_count".into(), "3".into())],
        var_files: vec![fixtures().join("webapp.vars.hcl")],
        base_dir: Some(fixtures()),
    }
}

#[test]
fn webapp_job() {
    let parsed = match parse_fixture(&options()) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{err}"),
    };
    let job = &parsed.job;

    // The one warning: the Nomad 0.x task-level network of the redis task.
    assert_eq!(parsed.warnings.len(), 1, "{:#?}", parsed.warnings);
    let w = &parsed.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!((w.line, w.field.as_str()), (Some(125), "network"));
    assert!(w.path.ends_with(r#"task "redis" > resources"#), "{w}");

    // Job: variables from the defaults, the var-file (region, image_tag) and -var (web_count).
    assert_eq!(job.id, "webapp");
    assert_eq!(job.job_type, "service");
    assert_eq!(job.datacenters, ["dc1"]);
    assert_eq!(job.region, "eu-west");
    assert_eq!(job.namespace, "apps");
    assert_eq!(job.priority, 60);
    assert_eq!(job.meta["team"], "web");
    assert_eq!(job.meta["owner"], "PLATFORM");
    assert_eq!(job.meta["dcs"], "dc1");
    assert_eq!(
        job.constraints,
        [
            Constraint {
                l_target: "${attr.kernel.name}".into(),
                r_target: "linux".into(),
                operand: "=".into(),
            },
            Constraint {
                l_target: "${attr.nomad.version}".into(),
                r_target: ">= 1.4, < 2.0".into(),
                operand: "version".into(),
            },
        ]
    );
    assert_eq!(
        job.spreads,
        [Spread {
            attribute: "${node.datacenter}".into(),
            weight: 80,
            spread_target: vec![
                SpreadTarget {
                    value: "dc1".into(),
                    percent: 70
                },
                SpreadTarget {
                    value: "dc2".into(),
                    percent: 30
                },
            ],
        }]
    );
    let job_update = UpdateStrategy {
        stagger: 20 * S,
        max_parallel: 1,
        health_check: "checks".into(),
        min_healthy_time: 15 * S,
        healthy_deadline: 180 * S,
        progress_deadline: 480 * S,
        auto_revert: true,
        auto_promote: false,
        canary: 0,
    };
    assert_eq!(job.update.as_ref(), Some(&job_update));
    assert_eq!(job.task_groups.len(), 2);

    // Group "cache".
    let cache = &job.task_groups[0];
    assert_eq!(cache.name, "cache");
    assert_eq!(cache.count, 1);
    assert_eq!(cache.update.as_ref(), Some(&job_update), "inherited");
    assert_eq!(
        cache.ephemeral_disk,
        Some(EphemeralDisk {
            sticky: true,
            size_mb: 512,
            migrate: true
        })
    );
    assert_eq!(
        cache.volumes["redis-data"],
        VolumeRequest {
            name: "redis-data".into(),
            volume_type: "host".into(),
            source: "redis".into(),
            read_only: false,
        }
    );
    assert_eq!(
        cache.restart_policy,
        Some(RestartPolicy {
            attempts: 3,
            interval: 600 * S,
            delay: 25 * S,
            mode: "delay".into(),
        })
    );
    // The task-level network became the group's, and port_map set the port's `to`.
    assert_eq!(cache.networks.len(), 1);
    assert_eq!(cache.networks[0].mode, "host");
    assert_eq!(
        cache.networks[0].dynamic_ports,
        [Port {
            label: "db".into(),
            value: 0,
            to: 6379,
            host_network: String::new(),
        }]
    );
    let redis = &cache.tasks[0];
    assert_eq!(redis.driver, "docker");
    assert_eq!(redis.user, "redis");
    assert_eq!(redis.config.get("port_map"), None, "translated away");
    assert_eq!(redis.config["image"], json!("redis:7.2"));
    assert_eq!((redis.resources.cpu, redis.resources.memory_mb), (500, 256));
    assert_eq!(
        redis.volume_mounts,
        [VolumeMount {
            volume: "redis-data".into(),
            destination: "/data".into(),
            read_only: false,
        }]
    );
    assert_eq!(
        redis.templates[0].embedded_tmpl, "maxmemory 200mb\nappendonly yes\n",
        "file() reads relative to base_dir"
    );
    assert_eq!(redis.templates[0].dest_path, "local/redis.conf");
    assert_eq!(redis.templates[0].change_mode, "signal");
    assert_eq!(redis.templates[0].change_signal, "SIGHUP");
    assert_eq!(
        redis.log_config,
        Some(LogConfig {
            max_files: 5,
            max_file_size_mb: 20
        })
    );
    assert_eq!(redis.services[0].name, "redis");
    assert_eq!(redis.services[0].checks[0].check_type, "tcp");

    // Group "web".
    let web = &job.task_groups[1];
    assert_eq!(web.count, 3, "-var beats the default");
    assert_eq!(
        web.affinities,
        [Affinity {
            l_target: "${meta.tier}".into(),
            r_target: "frontend".into(),
            operand: "=".into(),
            weight: 60,
        }]
    );
    assert_eq!(web.constraints[0].operand, "distinct_hosts");
    assert_eq!(
        web.reschedule_policy,
        Some(ReschedulePolicy {
            attempts: 0,
            interval: 0,
            delay: 30 * S,
            delay_function: "fibonacci".into(),
            max_delay: 600 * S,
            unlimited: true,
        })
    );
    assert_eq!(
        web.update,
        Some(UpdateStrategy {
            canary: 1,
            auto_promote: true,
            ..job_update.clone()
        }),
        "the group's block merged over the job's"
    );
    // The dynamic port blocks, one per entry of local.ports (map keys in order).
    assert_eq!(web.networks[0].mode, "bridge");
    let ports: Vec<_> = web.networks[0]
        .dynamic_ports
        .iter()
        .map(|p| (p.label.as_str(), p.to))
        .collect();
    assert_eq!(ports, [("admin", 9090), ("http", 8080)]);
    let service = &web.services[0];
    assert_eq!(service.tags, ["urlprefix-/web", "v1.4.2"]);
    assert_eq!(service.canary_tags, ["canary", "v1.4.2"]);
    assert_eq!(web.shutdown_delay, 5 * S);
    let alive = &service.checks[0];
    assert_eq!(
        alive.check_restart,
        Some(CheckRestart {
            limit: 3,
            grace: 90 * S,
            ignore_warnings: false,
        }),
        "the service's check_restart"
    );
    let grpc = &service.checks[1];
    assert_eq!(grpc.check_type, "grpc");
    assert_eq!(grpc.grpc_service, "webapp.Health");
    assert!(grpc.grpc_use_tls);
    assert_eq!(grpc.port_label, "admin");
    assert_eq!(
        grpc.check_restart,
        Some(CheckRestart {
            limit: 3,
            grace: 90 * S,
            ignore_warnings: true,
        }),
        "merged field by field"
    );

    let migrate = &web.tasks[0];
    assert_eq!(
        migrate.lifecycle,
        Some(TaskLifecycle {
            hook: "prestart".into(),
            sidecar: false,
        })
    );
    assert_eq!(
        migrate.artifacts,
        [TaskArtifact {
            getter_source: "file:///srv/seeds/seed.sql".into(),
            getter_options: Default::default(),
            relative_dest: "local/seed".into(),
            getter_mode: "file".into(),
        }]
    );
    assert_eq!(
        migrate.config["image"],
        json!("registry.example.com/webapp:1.4.2")
    );

    let server = &web.tasks[1];
    assert_eq!(server.kill_timeout, 20 * S);
    assert_eq!(server.kill_signal, "SIGTERM");
    assert_eq!(server.shutdown_delay, 2 * S);
    assert_eq!(server.env["APP_ENV"], "production");
    assert_eq!(server.env["REGION"], "eu-west");
    assert_eq!(server.env["REDIS_URL"], "redis://${NOMAD_ADDR_db}");
    assert_eq!(server.env["LISTEN"], "0.0.0.0:${NOMAD_PORT_http}");
    assert_eq!(
        server.templates[0].embedded_tmpl,
        "upstream = \"{{ range service \"redis\" }}{{ .Address }}:{{ .Port }}{{ end }}\"\nnode     = \"${node.unique.name}\"\n"
    );
    let secret = &server.templates[1];
    assert!(secret.envvars);
    assert_eq!(secret.perms, "0600");
    assert_eq!(
        (secret.left_delim.as_str(), secret.right_delim.as_str()),
        ("[[", "]]")
    );
    assert_eq!(secret.change_mode, "noop");

    // Valid once canonicalized, as a JSON client would submit it.
    let mut canonical = job.clone();
    canonical.canonicalize();
    assert_eq!(validate(&canonical), vec![]);
}

#[test]
fn webapp_needs_its_region() {
    let opts = ParseOptions {
        base_dir: Some(fixtures()),
        ..ParseOptions::default()
    };
    let err = parse_fixture(&opts).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1, "{err}");
    let d = &err.diagnostics[0];
    assert_eq!((d.file.as_str(), d.line), ("webapp.nomad.hcl", Some(19)));
    assert_eq!(d.path, r#"variable "region""#);
    assert!(d.message.contains("no default and no value"), "{d}");
}

#[test]
fn webapp_without_base_dir_cannot_read_files() {
    let opts = ParseOptions {
        base_dir: None,
        ..options()
    };
    let err = parse_fixture(&opts).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1, "{err}");
    let d = &err.diagnostics[0];
    assert_eq!((d.line, d.field.as_str()), (Some(136), "data"));
    assert!(
        d.message
            .contains("file(): cannot read \"files/redis.conf\""),
        "{d}"
    );
}

/// Property-style robustness: every prefix of the fixture, and every single-line deletion,
/// parses or fails with located diagnostics — never a panic.
#[test]
fn mangled_fixture_never_panics_and_is_always_located() {
    let src = std::fs::read_to_string(fixtures().join("webapp.nomad.hcl")).unwrap();
    let opts = ParseOptions {
        base_dir: Some(fixtures()),
        ..ParseOptions::default()
    };
    let check = |text: &str| {
        if let Err(err) = parse_with(text, "m.hcl", &opts) {
            assert!(!err.diagnostics.is_empty());
            for d in &err.diagnostics {
                assert_eq!(d.file, "m.hcl", "{d}");
                assert!(d.line.is_some() && d.column.is_some(), "{d}\n{text}");
            }
        }
    };
    for (i, _) in src.char_indices().step_by(7) {
        check(&src[..i]);
    }
    let lines: Vec<&str> = src.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        check(&text.join("\n"));
    }
}
