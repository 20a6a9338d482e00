//! Black-box tests of `parse` and `validate` through the public API.

use flotilla_jobspec::{Diagnostic, ParseError, Severity, parse, validate};
use flotilla_types::{Job, NANOS_PER_SEC, RestartPolicy, Task, TaskGroup};
use serde_json::json;

const S: i64 = NANOS_PER_SEC;

/// The project's example, `examples/hello.hcl`.
const HELLO: &str = r#"job "hello" {
  datacenters = ["*"]
  type        = "service"

  group "web" {
    count = 3

    network {
      port "http" {}
    }

    service {
      name = "hello"
      port = "http"
      tags = ["urlprefix-/"]

      check {
        type     = "http"
        path     = "/health"
        interval = "2s"
        timeout  = "1s"
      }
    }

    task "server" {
      driver = "raw_exec"

      config {
        command = "flotilla"
        args    = ["demo-app", "--listen", "${NOMAD_ADDR_http}", "--node", "${node.unique.name}"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
"#;

/// Every block and attribute of the supported subset.
const FULL: &str = r#"job "full" {
  type        = "batch"
  datacenters = ["dc1", "dc2"]
  region      = "eu"
  namespace   = "team-a"
  priority    = 70
  meta {
    owner = "ops"
    tier  = 2
  }

  group "web" {
    count = 2
    meta {
      g = "1"
    }
    restart {
      attempts = 5
      interval = "1h"
      delay    = "20s"
      mode     = "delay"
    }
    network {
      mode = "bridge"
      port "http" {}
      port "admin" {
        static = 8081
      }
      port "x" {
        to = 8080
      }
      port "y" {
        static       = 9090
        to           = 90
        host_network = "public"
      }
    }
    service {
      name     = "web-svc"
      port     = "http"
      tags     = ["a", "b"]
      provider = "consul"
      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "1m30s"
        timeout  = "500ms"
        method   = "POST"
        port     = "admin"
      }
    }

    task "server" {
      driver = "raw_exec"
      config {
        command = "flotilla"
        args    = ["demo-app", "--listen", "${NOMAD_ADDR_http}"]
        verbose = true
        limits {
          files = 1024
        }
      }
      env {
        FOO  = "bar"
        PORT = 8080
      }
      resources {
        cpu    = 250
        memory = 128
      }
      restart {
        attempts = 1
        mode     = "fail"
      }
      kill_timeout = "45s"
      kill_signal  = "SIGINT"
      meta {
        t = "task"
      }
      service {
        name = "server-admin"
        port = 8081
        check {
          type = "tcp"
        }
      }
    }

    task "sidecar" {
      driver = "docker"
      config {
        image = "redis:7"
      }
    }
  }

  group "other" {
    task "t" {
      driver = "exec"
      config {
        command = "/bin/true"
      }
    }
  }
}
"#;

fn ok(src: &str) -> Job {
    match parse(src, "test.hcl") {
        Ok(parsed) => parsed.job,
        Err(err) => panic!("unexpected errors:\n{err}"),
    }
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(src, "test.hcl") {
        Ok(parsed) => panic!("expected errors, got {:#?}", parsed.job),
        Err(ParseError { diagnostics }) => diagnostics,
    }
}

fn only_error(src: &str) -> Diagnostic {
    let errs = errors(src);
    assert_eq!(
        errs.len(),
        1,
        "{}",
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    errs.into_iter().next().unwrap()
}

/// Replaces `from` in the example (exactly once) and returns the new source.
fn hello_with(from: &str, to: &str) -> String {
    assert_eq!(HELLO.matches(from).count(), 1, "{from:?}");
    HELLO.replacen(from, to, 1)
}

fn assert_at(d: &Diagnostic, line: usize, field: &str) {
    assert_eq!(d.file, "test.hcl", "{d}");
    assert_eq!(d.line, Some(line), "{d}");
    assert!(d.column.is_some(), "{d}");
    assert_eq!(d.field, field, "{d}");
    assert_eq!(d.severity, Severity::Error, "{d}");
}

#[test]
fn example_file() {
    let parsed = parse(HELLO, "examples/hello.hcl").unwrap();
    assert_eq!(parsed.warnings, vec![]);
    let job = parsed.job;
    assert_eq!(job.id, "hello");
    assert_eq!(job.name, "hello");
    assert_eq!(job.datacenters, ["*"]);
    assert_eq!(job.job_type, "service");
    assert_eq!(job.task_groups.len(), 1);
    let group = &job.task_groups[0];
    assert_eq!(group.name, "web");
    assert_eq!(group.count, 3);
    assert_eq!(group.networks.len(), 1);
    assert_eq!(group.networks[0].mode, "host");
    assert_eq!(group.networks[0].reserved_ports, vec![]);
    assert_eq!(group.networks[0].dynamic_ports.len(), 1);
    assert_eq!(group.networks[0].dynamic_ports[0].label, "http");
    assert_eq!(group.services.len(), 1);
    let service = &group.services[0];
    assert_eq!(service.name, "hello");
    assert_eq!(service.port_label, "http");
    assert_eq!(service.tags, ["urlprefix-/"]);
    assert_eq!(service.checks.len(), 1);
    assert_eq!(service.checks[0].check_type, "http");
    assert_eq!(service.checks[0].path, "/health");
    assert_eq!(service.checks[0].interval, 2 * S);
    assert_eq!(service.checks[0].timeout, S);
    let task = &group.tasks[0];
    assert_eq!(task.name, "server");
    assert_eq!(task.driver, "raw_exec");
    assert_eq!(task.config["command"], json!("flotilla"));
    assert_eq!(
        task.config["args"],
        json!([
            "demo-app",
            "--listen",
            "${NOMAD_ADDR_http}",
            "--node",
            "${node.unique.name}"
        ])
    );
    assert_eq!(task.resources.cpu, 100);
    assert_eq!(task.resources.memory_mb, 64);

    // Not canonicalized by parse, and valid once canonicalized.
    assert_eq!(job.namespace, "");
    assert_eq!(group.restart_policy, None);
    let mut canonical = job.clone();
    canonical.canonicalize();
    assert_eq!(validate(&canonical), vec![]);
}

#[test]
fn job_attributes() {
    let job = ok(FULL);
    assert_eq!(job.id, "full");
    assert_eq!(job.job_type, "batch");
    assert_eq!(job.datacenters, ["dc1", "dc2"]);
    assert_eq!(job.region, "eu");
    assert_eq!(job.namespace, "team-a");
    assert_eq!(job.priority, 70);
    assert_eq!(job.meta["owner"], "ops");
    assert_eq!(job.meta["tier"], "2");
    assert_eq!(job.task_groups.len(), 2);
}

#[test]
fn group_attributes_and_count_default() {
    let job = ok(FULL);
    let web = &job.task_groups[0];
    assert_eq!(web.count, 2);
    assert_eq!(web.meta["g"], "1");
    let other = &job.task_groups[1];
    assert_eq!(other.name, "other");
    assert_eq!(other.count, 1, "count defaults to 1");

    let zero = ok(&hello_with("count = 3", "count = 0"));
    assert_eq!(zero.task_groups[0].count, 0);
}

#[test]
fn restart_group_and_task_level() {
    let job = ok(FULL);
    let web = &job.task_groups[0];
    let group_policy = RestartPolicy {
        attempts: 5,
        interval: 3600 * S,
        delay: 20 * S,
        mode: "delay".into(),
    };
    assert_eq!(web.restart_policy.as_ref(), Some(&group_policy));
    // The task block overrides what it sets and inherits the rest from the group's.
    assert_eq!(
        web.tasks[0].restart_policy,
        Some(RestartPolicy {
            attempts: 1,
            mode: "fail".into(),
            ..group_policy.clone()
        })
    );
    assert_eq!(web.tasks[1].restart_policy, None);
    // A group without a restart block gets the job type's defaults only from canonicalize.
    assert_eq!(job.task_groups[1].restart_policy, None);
    let mut canonical = job.clone();
    canonical.canonicalize();
    assert_eq!(
        canonical.task_groups[0].tasks[1].restart_policy,
        Some(group_policy)
    );
    assert_eq!(
        canonical.task_groups[1].restart_policy,
        Some(RestartPolicy::default_for("batch"))
    );
    assert_eq!(validate(&canonical), vec![]);

    // Partial blocks are filled from the job type's defaults (batch here).
    let src = FULL.replace(
        "    restart {\n      attempts = 5\n      interval = \"1h\"\n      delay    = \"20s\"\n      mode     = \"delay\"\n    }\n",
        "    restart {\n      attempts = 7\n    }\n",
    );
    let job = ok(&src);
    assert_eq!(
        job.task_groups[0].restart_policy,
        Some(RestartPolicy {
            attempts: 7,
            ..RestartPolicy::default_for("batch")
        })
    );
}

#[test]
fn network_ports_static_and_dynamic() {
    let job = ok(FULL);
    let net = &job.task_groups[0].networks[0];
    assert_eq!(net.mode, "bridge");
    let dynamic: Vec<_> = net
        .dynamic_ports
        .iter()
        .map(|p| (p.label.as_str(), p.value, p.to))
        .collect();
    assert_eq!(dynamic, [("http", 0, 0), ("x", 0, 8080)]);
    let reserved: Vec<_> = net
        .reserved_ports
        .iter()
        .map(|p| (p.label.as_str(), p.value, p.to, p.host_network.as_str()))
        .collect();
    assert_eq!(
        reserved,
        [("admin", 8081, 0, ""), ("y", 9090, 90, "public")]
    );
}

#[test]
fn group_and_task_services() {
    let job = ok(FULL);
    let web = &job.task_groups[0];
    assert_eq!(web.services.len(), 1);
    let svc = &web.services[0];
    assert_eq!(svc.name, "web-svc");
    assert_eq!(svc.port_label, "http");
    assert_eq!(svc.tags, ["a", "b"]);
    assert_eq!(svc.provider, "consul");
    let check = &svc.checks[0];
    assert_eq!(check.name, "alive");
    assert_eq!(check.check_type, "http");
    assert_eq!(check.path, "/health");
    assert_eq!(check.interval, 90 * S);
    assert_eq!(check.timeout, S / 2);
    assert_eq!(check.method, "POST");
    assert_eq!(check.port_label, "admin");

    let task_services = &web.tasks[0].services;
    assert_eq!(task_services.len(), 1);
    assert_eq!(task_services[0].name, "server-admin");
    assert_eq!(
        task_services[0].port_label, "8081",
        "numeric ports are kept"
    );
    assert_eq!(task_services[0].checks[0].check_type, "tcp");
    assert_eq!(task_services[0].provider, "", "not canonicalized");
    assert!(web.tasks[1].services.is_empty());
}

#[test]
fn task_attributes() {
    let job = ok(FULL);
    let task = &job.task_groups[0].tasks[0];
    assert_eq!(task.driver, "raw_exec");
    assert_eq!(task.config["command"], json!("flotilla"));
    assert_eq!(
        task.config["args"],
        json!(["demo-app", "--listen", "${NOMAD_ADDR_http}"])
    );
    assert_eq!(task.config["verbose"], json!(true));
    assert_eq!(task.config["limits"], json!({"files": 1024}));
    assert_eq!(task.env["FOO"], "bar");
    assert_eq!(task.env["PORT"], "8080");
    assert_eq!(task.resources.cpu, 250);
    assert_eq!(task.resources.memory_mb, 128);
    assert_eq!(task.kill_timeout, 45 * S);
    assert_eq!(task.kill_signal, "SIGINT");
    assert_eq!(task.meta["t"], "task");

    let sidecar = &job.task_groups[0].tasks[1];
    assert_eq!(sidecar.driver, "docker");
    assert_eq!(sidecar.config["image"], json!("redis:7"));
    assert_eq!(sidecar.kill_timeout, 0, "not canonicalized");
}

#[test]
fn config_nested_blocks_become_objects() {
    let src = hello_with(
        "command = \"flotilla\"",
        r#"command = "flotilla"
        mount {
          source = "/a"
        }
        mount {
          source = "/b"
        }
        labels "x" {
          k = 1
        }
        labels "y" {
          k = 2
        }
        map = { a = "b", "c d" = ["e"] }"#,
    );
    let job = ok(&src);
    let config = &job.task_groups[0].tasks[0].config;
    assert_eq!(config["mount"], json!([{"source": "/a"}, {"source": "/b"}]));
    assert_eq!(config["labels"], json!({"x": {"k": 1}, "y": {"k": 2}}));
    assert_eq!(config["map"], json!({"a": "b", "c d": ["e"]}));
}

#[test]
fn runtime_interpolations_are_kept_literally() {
    let src = hello_with(
        "      resources {",
        r#"      env {
        ADDR    = "http://${attr.unique.network.ip-address}:${NOMAD_PORT_http}"
        ALLOC   = "${NOMAD_ALLOC_ID}"
        RACK    = "${meta.rack}"
        ESCAPED = "$${not_a_var}"
        HEREDOC = <<EOT
node=${node.unique.name}
EOT
      }
      resources {"#,
    );
    let job = ok(&src);
    let task = &job.task_groups[0].tasks[0];
    assert_eq!(
        task.config["args"][2],
        json!("${NOMAD_ADDR_http}"),
        "kept exactly"
    );
    assert_eq!(task.config["args"][4], json!("${node.unique.name}"));
    assert_eq!(
        task.env["ADDR"],
        "http://${attr.unique.network.ip-address}:${NOMAD_PORT_http}"
    );
    assert_eq!(task.env["ALLOC"], "${NOMAD_ALLOC_ID}");
    assert_eq!(task.env["RACK"], "${meta.rack}");
    assert_eq!(task.env["ESCAPED"], "${not_a_var}");
    assert_eq!(task.env["HEREDOC"], "node=${node.unique.name}\n");
    assert_eq!(task.resources.memory_mb, 64);
}

// ---- errors, each with its line and field ----

#[test]
fn syntax_error_has_parser_line_and_column() {
    let src = hello_with("count = 3", "count = = 3");
    let d = only_error(&src);
    assert_eq!(d.line, Some(6));
    assert_eq!(d.column, Some(13));
    assert!(d.message.starts_with("syntax error: "), "{d}");
    assert_eq!(d.path, "");
    assert!(
        d.to_string()
            .starts_with("test.hcl:6:13: error: syntax error: ")
    );

    let d = only_error("job \"x\" {\n  group \"g\" {\n");
    assert!(d.line.is_some());
}

#[test]
fn unknown_driver() {
    let d = only_error(&hello_with("\"raw_exec\"", "\"dockr\""));
    assert_at(&d, 26, "driver");
    assert_eq!(d.column, Some(7));
    assert_eq!(d.path, r#"job "hello" > group "web" > task "server""#);
    assert_eq!(
        d.to_string(),
        r#"test.hcl:26:7: error: job "hello" > group "web" > task "server": driver: unknown driver "dockr" (expected one of: docker, exec, raw_exec)"#
    );
}

#[test]
fn missing_driver_points_at_task_block() {
    let d = only_error(&hello_with("      driver = \"raw_exec\"\n", ""));
    assert_at(&d, 25, "driver");
    assert!(d.message.contains("no driver"), "{d}");
}

#[test]
fn missing_command_points_at_config_block() {
    let d = only_error(&hello_with("        command = \"flotilla\"\n", ""));
    assert_at(&d, 28, "command");
    assert!(d.path.ends_with(r#"task "server" > config"#), "{d}");
}

#[test]
fn undefined_service_port_label() {
    let d = only_error(&hello_with("port = \"http\"", "port = \"htp\""));
    assert_at(&d, 14, "port");
    assert_eq!(d.path, r#"job "hello" > group "web" > service "hello""#);
    assert_eq!(
        d.message,
        r#"port label "htp" is not defined by any network block of group "web" (defined: http)"#
    );
}

#[test]
fn undefined_check_port_label() {
    let src = hello_with(
        "timeout  = \"1s\"",
        "timeout  = \"1s\"\n        port     = \"metrics\"",
    );
    let d = only_error(&src);
    assert_at(&d, 22, "port");
    assert!(d.path.ends_with(r#"service "hello" > check[0]"#), "{d}");
}

#[test]
fn numeric_service_port_is_accepted() {
    ok(&hello_with("port = \"http\"", "port = \"8080\""));
    ok(&hello_with("port = \"http\"", "port = 8080"));
}

#[test]
fn unknown_block() {
    let d = only_error(&hello_with(
        "    count = 3\n",
        "    count = 3\n    volumee \"data\" {}\n",
    ));
    assert_at(&d, 7, "volumee");
    assert_eq!(d.column, Some(5));
    assert_eq!(d.path, r#"job "hello" > group "web""#);
    assert_eq!(
        d.message,
        r#"unknown block "volumee" (allowed: count, meta, shutdown_delay, network, service, task, restart, constraint, affinity, spread, reschedule, update, volume, ephemeral_disk)"#
    );
}

#[test]
fn unknown_attribute() {
    let d = only_error(&hello_with(
        "cpu    = 100",
        "cpu    = 100\n        cores  = 2",
    ));
    assert_at(&d, 35, "cores");
    assert_eq!(
        d.path,
        r#"job "hello" > group "web" > task "server" > resources"#
    );
    assert_eq!(
        d.message,
        r#"unknown attribute "cores" (allowed: cpu, memory, network)"#
    );
}

#[test]
fn block_written_as_attribute_and_vice_versa() {
    let d = only_error(&hello_with("count = 3", "count {}"));
    assert_at(&d, 6, "count");
    assert!(d.message.contains("is an attribute"), "{d}");
    let d = only_error(&hello_with(
        "    count = 3\n",
        "    count = 3\n    network = {}\n",
    ));
    assert_at(&d, 7, "network");
    assert!(d.message.contains("is a block"), "{d}");
}

#[test]
fn wrong_type() {
    let d = only_error(&hello_with("count = 3", "count = \"three\""));
    assert_at(&d, 6, "count");
    assert_eq!(d.message, r#"expected a whole number, got string "three""#);

    let d = only_error(&hello_with(
        "tags = [\"urlprefix-/\"]",
        "tags = \"urlprefix-/\"",
    ));
    assert_at(&d, 15, "tags");
    assert_eq!(
        d.message,
        r#"expected a list of strings, got string "urlprefix-/""#
    );

    let d = only_error(&hello_with("driver = \"raw_exec\"", "driver = 5"));
    assert_at(&d, 26, "driver");
    assert_eq!(d.message, "expected a string, got number 5");

    let d = only_error(&hello_with("memory = 64", "memory = -64"));
    assert_at(&d, 35, "memory");
    assert!(d.message.contains("-64 is out of range"), "{d}");

    let d = only_error(&hello_with("count = 3", "count = var.count"));
    assert_at(&d, 6, "count");
    assert!(
        d.message
            .contains(r#"undeclared variable "count" in `var.count`"#),
        "{d}"
    );

    let d = only_error(&hello_with("count = 3", "count = NOMAD_ALLOC_INDEX"));
    assert_at(&d, 6, "count");
    assert!(
        d.message
            .contains("unsupported expression `NOMAD_ALLOC_INDEX`"),
        "{d}"
    );
}

#[test]
fn bad_duration() {
    let d = only_error(&hello_with("interval = \"2s\"", "interval = \"2 secs\""));
    assert_at(&d, 20, "interval");
    assert!(d.message.starts_with(r#"invalid duration "2 secs""#), "{d}");

    let d = only_error(&hello_with("interval = \"2s\"", "interval = 2"));
    assert_at(&d, 20, "interval");
    assert_eq!(
        d.message,
        r#"expected a duration string like "10s", got number 2"#
    );
}

#[test]
fn duplicate_group() {
    let src = HELLO.replacen(
        "  group \"web\" {",
        "  group \"web\" {\n    task \"t\" {\n      driver = \"exec\"\n      config {\n        command = \"x\"\n      }\n    }\n  }\n\n  group \"web\" {",
        1,
    );
    let d = only_error(&src);
    assert_at(&d, 14, "name");
    assert_eq!(d.column, Some(3));
    assert_eq!(
        d.message,
        r#"duplicate group name "web" (group names must be unique within a job)"#
    );
}

#[test]
fn static_port_rules() {
    let d = only_error(&hello_with(
        "port \"http\" {}",
        "port \"http\" {\n        static = 70000\n      }",
    ));
    assert_at(&d, 10, "static");
    assert!(
        d.message
            .contains("70000 is out of range (expected 1 to 65535)"),
        "{d}"
    );

    let src = hello_with(
        "port \"http\" {}",
        "port \"http\" {\n        static = 8080\n      }\n      port \"other\" {\n        static = 8080\n      }",
    );
    let d = only_error(&src);
    assert_at(&d, 13, "static");
    assert!(d.message.contains(r#"already used by port "http""#), "{d}");

    let src = hello_with(
        "port \"http\" {}",
        "port \"http\" {}\n      port \"http\" {}",
    );
    let d = only_error(&src);
    assert_at(&d, 10, "label");
}

#[test]
fn check_rules() {
    let d = only_error(&hello_with("type     = \"http\"", "type     = \"script\""));
    assert_at(&d, 18, "type");
    assert!(d.message.contains("not supported yet"), "{d}");

    let d = only_error(&hello_with("        path     = \"/health\"\n", ""));
    assert_at(&d, 17, "path");

    for bad in ["-2s", "0s"] {
        let d = only_error(&hello_with(
            "interval = \"2s\"",
            &format!("interval = {bad:?}"),
        ));
        assert_at(&d, 20, "interval");
        assert_eq!(d.message, format!("interval must be positive, got {bad}"));
    }
}

#[test]
fn warnings_do_not_reject() {
    let parsed = parse(
        &hello_with("timeout  = \"1s\"", "timeout  = \"5s\""),
        "w.hcl",
    )
    .unwrap();
    assert_eq!(parsed.warnings.len(), 1);
    let w = &parsed.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!((w.line, w.field.as_str()), (Some(21), "timeout"));
    assert!(w.to_string().starts_with("w.hcl:21:9: warning: "), "{w}");
}

#[test]
fn job_block_rules() {
    let d = only_error("");
    assert!(d.message.contains("no job block"), "{d}");
    assert_eq!(d.line, Some(1));

    let d = only_error(&format!("{HELLO}\njob \"two\" {{}}\n"));
    assert_at(&d, 41, "job");
    assert!(d.message.contains("only one job block"), "{d}");

    let d = only_error(&HELLO.replacen("job \"hello\"", "job", 1));
    assert_at(&d, 1, "job");
    assert!(d.message.contains("needs a label"), "{d}");

    let d = only_error(&hello_with(
        "type        = \"service\"",
        "type        = \"servce\"",
    ));
    assert_at(&d, 3, "type");

    let d = only_error(&hello_with("network {", "network \"n\" {"));
    assert_at(&d, 8, "network");
    assert!(d.message.contains("takes no labels"), "{d}");
}

#[test]
fn duplicate_singleton_block() {
    let d = only_error(&hello_with(
        "      resources {",
        "      resources {\n        cpu = 1\n      }\n      resources {",
    ));
    assert_at(&d, 36, "resources");
    assert!(d.message.contains("duplicate resources block"), "{d}");
}

#[test]
fn all_errors_are_reported_in_source_order() {
    let src = hello_with("count = 3", "count = \"3\"\n    bogus = 1");
    let src = src.replacen("\"raw_exec\"", "\"dockr\"", 1);
    let src = src.replacen("port = \"http\"", "port = \"htp\"", 1);
    let src = src.replacen("interval = \"2s\"", "interval = \"2x\"", 1);
    let errs = errors(&src);
    let got: Vec<_> = errs
        .iter()
        .map(|d| (d.line.unwrap_or(0), d.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (6, "count"),
            (7, "bogus"),
            (15, "port"),
            (21, "interval"),
            (27, "driver")
        ]
    );
    let err = ParseError {
        diagnostics: errs.clone(),
    };
    let text = err.to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().all(|l| l.starts_with("test.hcl:")), "{text}");
}

#[test]
fn conversion_errors_are_not_repeated_by_validation() {
    // A driver of the wrong type is one error, not also "task has no driver".
    let d = only_error(&hello_with(
        "driver = \"raw_exec\"",
        "driver = [\"raw_exec\"]",
    ));
    assert_at(&d, 26, "driver");
    // A group without a label is one error, not also "group name must not be empty".
    let d = only_error(&hello_with("group \"web\" {", "group {"));
    assert_at(&d, 5, "group");
    assert_eq!(d.path, r#"job "hello" > group[0]"#);
}

#[test]
fn validate_json_job_reports_unknown_driver() {
    let mut job = Job {
        id: "api".into(),
        task_groups: vec![TaskGroup {
            name: "cache".into(),
            count: 1,
            tasks: vec![Task {
                name: "redis".into(),
                driver: "podman".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    job.canonicalize();
    let diags = validate(&job);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.path, r#"job "api" > group "cache" > task "redis""#);
    assert_eq!(d.field, "driver");
    assert_eq!(d.file, "");
    assert_eq!(d.line, None);
    assert_eq!(
        d.to_string(),
        r#"error: job "api" > group "cache" > task "redis": driver: unknown driver "podman" (expected one of: docker, exec, raw_exec)"#
    );
}

/// Property-style robustness: every prefix of the examples, and every single-character
/// corruption of the small one, parses or fails with located diagnostics, never a panic.
#[test]
fn mangled_input_never_panics_and_is_always_located() {
    let check = |src: &str| {
        if let Err(err) = parse(src, "m.hcl") {
            assert!(!err.diagnostics.is_empty(), "{src}");
            for d in &err.diagnostics {
                assert!(d.line.is_some() && d.column.is_some(), "{d}\n{src}");
                assert_eq!(d.severity, Severity::Error);
            }
        }
    };
    for src in [HELLO, FULL] {
        for (i, _) in src.char_indices() {
            check(&src[..i]);
        }
    }
    for (i, c) in HELLO.char_indices() {
        for replacement in ["\"", "{", "}", "$", "=", "\n", "", "x", "${"] {
            let mut src = String::with_capacity(HELLO.len() + 2);
            src.push_str(&HELLO[..i]);
            src.push_str(replacement);
            src.push_str(&HELLO[i + c.len_utf8()..]);
            check(&src);
        }
    }
}
