//! The HCL2 surface: variables and their values from options, locals, references, templates,
//! heredocs, functions and `dynamic` blocks.

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_at, errors, errors_with, ok, only_error, only_error_with, parsed, parsed_with,
};
use flotilla_jobspec::{ParseOptions, Severity};
use serde_json::json;

/// A job whose group count, task command and env come from variables and locals.
const VARS: &str = r#"variable "count" {
  type    = number
  default = 2
}

variable "command" {
  default     = "sleep"
  description = "What the task runs."
}

variable "debug" {
  type    = bool
  default = false
}

variable "dcs" {
  type    = list(string)
  default = ["dc1"]
}

variable "labels" {
  type    = map(string)
  default = { tier = "web" }
}

job "j" {
  datacenters = var.dcs
  group "g" {
    count = var.count
    task "t" {
      driver = "raw_exec"
      config {
        command = var.command
        args    = ["--debug=${var.debug}"]
      }
      meta = var.labels
    }
  }
}
"#;

fn opts(vars: &[(&str, &str)]) -> ParseOptions {
    ParseOptions {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ParseOptions::default()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A var-file with `text`, in a fresh directory under the target's temp dir.
fn var_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flotilla-jobspec-hcl2-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.hcl"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A job with one raw_exec task whose `env` block is `env_body`, after `prelude`.
fn with_env(prelude: &str, env_body: &str) -> String {
    format!(
        "{prelude}job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"raw_exec\"\n      config {{\n        command = \"x\"\n      }}\n      env {{\n{env_body}\n      }}\n    }}\n  }}\n}}\n"
    )
}

fn env_of(src: &str) -> std::collections::BTreeMap<String, String> {
    ok(src).task_groups[0].tasks[0].env.clone()
}

// ---- variables ----

#[test]
fn variable_defaults() {
    let job = ok(VARS);
    assert_eq!(job.datacenters, ["dc1"]);
    let g = &job.task_groups[0];
    assert_eq!(g.count, 2);
    assert_eq!(g.tasks[0].config["command"], json!("sleep"));
    assert_eq!(g.tasks[0].config["args"], json!(["--debug=false"]));
    assert_eq!(g.tasks[0].meta["tier"], "web");
}

#[test]
fn var_option_overrides_default() {
    let job = parsed_with(
        VARS,
        &opts(&[
            ("count", "5"),
            ("command", "true"),
            ("debug", "true"),
            ("dcs", r#"["a", "b"]"#),
            ("labels", r#"{ tier = "api", zone = 3 }"#),
        ]),
    )
    .job;
    assert_eq!(job.datacenters, ["a", "b"], "list(string) read as HCL");
    let g = &job.task_groups[0];
    assert_eq!(g.count, 5, "number read as HCL");
    assert_eq!(
        g.tasks[0].config["command"],
        json!("true"),
        "untyped: a string"
    );
    assert_eq!(g.tasks[0].config["args"], json!(["--debug=true"]));
    assert_eq!(g.tasks[0].meta["tier"], "api");
    assert_eq!(g.tasks[0].meta["zone"], "3", "map(string) converts numbers");
}

#[test]
fn later_var_option_wins() {
    let job = parsed_with(VARS, &opts(&[("count", "5"), ("count", "7")])).job;
    assert_eq!(job.task_groups[0].count, 7);
}

#[test]
fn var_file_overrides_default() {
    let file = var_file("one", "count = 4\ncommand = \"echo\"\ndcs = [\"x\"]\n");
    let o = ParseOptions {
        var_files: vec![file],
        ..ParseOptions::default()
    };
    let job = parsed_with(VARS, &o).job;
    assert_eq!(job.task_groups[0].count, 4);
    assert_eq!(job.task_groups[0].tasks[0].config["command"], json!("echo"));
    assert_eq!(job.datacenters, ["x"]);
}

#[test]
fn precedence_default_then_var_files_then_vars() {
    let first = var_file("first", "count = 4\ncommand = \"first\"\ndebug = true\n");
    let second = var_file("second", "count = \"6\"\ncommand = \"second\"\n");
    let o = ParseOptions {
        vars: vec![("command".into(), "cli".into())],
        var_files: vec![first, second],
        base_dir: None,
    };
    let job = parsed_with(VARS, &o).job;
    let g = &job.task_groups[0];
    assert_eq!(
        g.count, 6,
        "the later var-file wins (its string converts to number)"
    );
    assert_eq!(
        g.tasks[0].config["command"],
        json!("cli"),
        "-var beats var-files"
    );
    assert_eq!(
        g.tasks[0].config["args"],
        json!(["--debug=true"]),
        "set by the first file only"
    );
}

#[test]
fn missing_variable_is_named() {
    let src = VARS.replace("  default     = \"sleep\"\n", "");
    let d = only_error(&src);
    assert_at(&d, Severity::Error, 6, "variable");
    assert_eq!(d.path, r#"variable "command""#);
    assert_eq!(
        d.message,
        r#"variable "command" has no default and no value was given (set it with -var command=… or in a -var-file)"#
    );
    // Given, it is fine.
    let job = parsed_with(&src, &opts(&[("command", "x")])).job;
    assert_eq!(job.task_groups[0].tasks[0].config["command"], json!("x"));
}

#[test]
fn undeclared_var_option_is_an_error() {
    let d = only_error_with(VARS, &opts(&[("conut", "3")]));
    assert_eq!(
        (d.file.as_str(), d.line, d.field.as_str()),
        ("", None, "-var")
    );
    assert!(
        d.message.starts_with(r#"conut=3: undeclared variable "conut": test.hcl declares no such variable (declared: count, command, debug, dcs, labels)"#),
        "{d}"
    );
    assert!(d.to_string().starts_with("error: -var: conut=3:"), "{d}");
}

#[test]
fn undeclared_var_file_variable_is_located_in_the_file() {
    let file = var_file("undeclared", "count = 3\n\nregion = \"eu\"\n");
    let o = ParseOptions {
        var_files: vec![file.clone()],
        ..ParseOptions::default()
    };
    let d = only_error_with(VARS, &o);
    assert_eq!(d.file, file.display().to_string());
    assert_eq!((d.line, d.field.as_str()), (Some(3), "region"));
    assert!(d.message.contains(r#"undeclared variable "region""#), "{d}");
}

#[test]
fn bad_option_values() {
    let d = only_error_with(VARS, &opts(&[("count", "three")]));
    assert!(
        d.message
            .starts_with(r#"count=three: invalid value for variable "count" of type number"#),
        "{d}"
    );

    let d = only_error_with(VARS, &opts(&[("dcs", "[1, [2]]")]));
    assert!(d.message.contains("of type list(string)"), "{d}");

    let file = var_file("syntax", "count = = 3\n");
    let o = ParseOptions {
        var_files: vec![file.clone()],
        ..ParseOptions::default()
    };
    let d = only_error_with(VARS, &o);
    assert_eq!(
        (d.file.clone(), d.line),
        (file.display().to_string(), Some(1))
    );
    assert!(d.message.starts_with("syntax error"), "{d}");

    let missing = fixtures().join("no-such.vars.hcl");
    let o = ParseOptions {
        var_files: vec![missing.clone()],
        ..ParseOptions::default()
    };
    let d = only_error_with(VARS, &o);
    assert_eq!(d.file, missing.display().to_string());
    assert!(d.message.starts_with("cannot read var-file"), "{d}");

    let file = var_file("wrongtype", "debug = \"maybe\"\n");
    let o = ParseOptions {
        var_files: vec![file],
        ..ParseOptions::default()
    };
    let d = only_error_with(VARS, &o);
    assert_eq!((d.line, d.field.as_str()), (Some(1), "debug"));
    assert!(d.message.contains("expected bool"), "{d}");
}

#[test]
fn option_errors_come_first_then_source_order() {
    let src = VARS.replace("count = var.count", "count = var.nope");
    let errs = errors_with(&src, &opts(&[("zzz", "1")]));
    let got: Vec<_> = errs.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(got, [(None, "-var"), (Some(29), "count")]);
}

#[test]
fn variable_declaration_errors() {
    let d = only_error(&VARS.replace("type    = number", "type    = numbr"));
    assert_at(&d, Severity::Error, 2, "type");
    assert!(d.message.starts_with(r#"unknown type "numbr""#), "{d}");

    let d = only_error(&VARS.replace("default = 2", "default = \"two\""));
    assert_at(&d, Severity::Error, 3, "default");
    assert!(
        d.message.starts_with("default does not match type number"),
        "{d}"
    );

    let src = format!("{VARS}\nvariable \"count\" {{\n  default = 1\n}}\n");
    let d = only_error(&src);
    assert_at(&d, Severity::Error, VARS.lines().count() + 2, "variable");
    assert!(
        d.message
            .contains(r#"duplicate variable "count" (first declared on line 1)"#)
    );

    let d = only_error(&VARS.replace("  default = 2\n", "  default = 2\n  sensitive = true\n"));
    assert_at(&d, Severity::Error, 4, "sensitive");
    assert!(
        d.message.contains("allowed: type, default, description"),
        "{d}"
    );

    // Without a name, the variable is not declared: its uses are errors too.
    let errs = errors(&VARS.replacen("variable \"count\"", "variable", 1));
    assert_at(&errs[0], Severity::Error, 1, "variable");
    assert!(
        errs[0]
            .message
            .starts_with("variable block takes one label")
    );
    assert_eq!(errs.len(), 2);
}

#[test]
fn variable_validation_block_is_a_warning() {
    let src = VARS.replace(
        "  default = 2\n",
        "  default = 2\n  validation {\n    condition = true\n  }\n",
    );
    let p = parsed(&src);
    assert_eq!(p.warnings.len(), 1);
    assert_at(&p.warnings[0], Severity::Warning, 4, "validation");
    assert!(
        p.warnings[0]
            .message
            .starts_with("validation is not supported yet; ignored")
    );
}

#[test]
fn broken_variable_is_reported_once() {
    // The default is wrong; the reference to it is not a second error.
    let src = VARS.replace("default = 2", "default = [1]");
    let d = only_error(&src);
    assert_eq!((d.line, d.field.as_str()), (Some(3), "default"));
}

#[test]
fn undeclared_variable_reference() {
    let d = only_error(&VARS.replace("command = var.command", "command = var.cmd"));
    assert_at(&d, Severity::Error, 33, "command");
    assert_eq!(
        d.message,
        r#"undeclared variable "cmd" in `var.cmd` (declared: command, count, dcs, debug, labels); declare it with `variable "cmd" { … }`"#
    );
}

// ---- locals ----

#[test]
fn locals_use_vars_and_earlier_locals() {
    let src = with_env(
        "variable \"name\" {\n  default = \"web\"\n}\nlocals {\n  full = \"${var.name}-1\"\n}\nlocals {\n  upper_full = upper(local.full)\n  list = [local.full, var.name]\n}\n",
        "        A = local.full\n        B = local.upper_full\n        C = local.list[1]",
    );
    let env = env_of(&src);
    assert_eq!(env["A"], "web-1");
    assert_eq!(env["B"], "WEB-1");
    assert_eq!(env["C"], "web");
}

#[test]
fn local_errors() {
    let src = with_env(
        "locals {\n  a = local.b\n  b = 1\n}\n",
        "        A = local.b",
    );
    let d = only_error(&src);
    assert_eq!(
        (d.line, d.field.as_str(), d.path.as_str()),
        (Some(2), "a", "locals")
    );
    assert!(
        d.message.contains("local.b is defined after this point"),
        "{d}"
    );

    let src = with_env("locals {\n  a = 1\n}\n", "        A = local.c");
    let d = only_error(&src);
    assert_eq!((d.line, d.field.as_str()), (Some(12), "A"));
    assert!(
        d.message
            .contains(r#"undeclared local "c" in `local.c` (declared: a)"#),
        "{d}"
    );

    let src = with_env(
        "locals {\n  a = 1\n}\nlocals {\n  a = 2\n}\n",
        "        A = local.a",
    );
    let d = only_error(&src);
    assert_eq!((d.line, d.field.as_str()), (Some(5), "a"));
    assert!(
        d.message
            .contains("duplicate local \"a\" (first defined on line 2)")
    );

    // A failed local is one error, not one per use.
    let src = with_env(
        "locals {\n  a = 1 + 1\n}\n",
        "        A = local.a\n        B = local.a",
    );
    let d = only_error(&src);
    assert_eq!((d.line, d.field.as_str()), (Some(2), "a"));
}

// ---- templates, heredocs and runtime interpolations ----

#[test]
fn references_inside_templates() {
    let src = with_env(
        "variable \"x\" {\n  default = \"v\"\n}\nvariable \"n\" {\n  type = number\n  default = 3\n}\n",
        "        A = \"${var.x}-a\"\n        B = \"${var.n}\"\n        C = \"${var.x}:${NOMAD_PORT_http}\"\n        D = \"$${var.x}\"",
    );
    let env = env_of(&src);
    assert_eq!(env["A"], "v-a");
    assert_eq!(env["B"], "3");
    assert_eq!(env["C"], "v:${NOMAD_PORT_http}");
    assert_eq!(env["D"], "${var.x}", "escaped");
}

#[test]
fn runtime_interpolations_stay_literal() {
    let src = with_env(
        "variable \"x\" {\n  default = \"v\"\n}\n",
        r#"        A = "${NOMAD_ALLOC_ID}/${var.x}"
        B = "${attr.unique.network.ip-address}"
        C = "${meta.rack}"
        D = "${node.unique.name}"
        E = "${env.HOME}"
        F = "%{ if true }x%{ endif }""#,
    );
    let env = env_of(&src);
    assert_eq!(env["A"], "${NOMAD_ALLOC_ID}/v");
    assert_eq!(env["B"], "${attr.unique.network.ip-address}");
    assert_eq!(env["C"], "${meta.rack}");
    assert_eq!(env["D"], "${node.unique.name}");
    assert_eq!(env["E"], "${env.HOME}");
    assert_eq!(env["F"], "%{ if true }x%{ endif }");
}

#[test]
fn heredocs() {
    let src = with_env(
        "variable \"who\" {\n  default = \"world\"\n}\n",
        "        PLAIN = <<EOF\nhello ${var.who}\n  ${NOMAD_TASK_NAME}\nEOF\n        INDENTED = <<-EOF\n          hello ${var.who}\n            indented\n          EOF",
    );
    let env = env_of(&src);
    assert_eq!(env["PLAIN"], "hello world\n  ${NOMAD_TASK_NAME}\n");
    assert_eq!(env["INDENTED"], "hello world\n  indented\n");
}

#[test]
fn unsupported_expressions_are_located() {
    for (expr, shown) in [
        ("var.n + 1", "var.n + 1"),
        ("var.n > 1 ? \"a\" : \"b\"", "var.n > 1 ? \"a\" : \"b\""),
        ("[for s in var.l : upper(s)]", "[for s in var.l : upper(s)]"),
        ("\"${var.n * 2}\"", "var.n * 2"),
    ] {
        let src = with_env(
            "variable \"n\" {\n  default = 1\n}\nvariable \"l\" {\n  default = [\"a\"]\n}\n",
            &format!("        A = {expr}"),
        );
        let d = only_error(&src);
        assert_at(&d, Severity::Error, 15, "A");
        assert!(
            d.message.starts_with(&format!(
                "unsupported expression `{shown}`: conditionals, arithmetic"
            )),
            "{d}"
        );
    }
}

// ---- functions ----

#[test]
fn each_function() {
    let src = with_env(
        "locals {\n  m = merge({ a = \"1\", b = \"2\" }, { b = \"3\" })\n}\n",
        r#"        FORMAT = format("%s-%03d", "web", 7)
        JOIN   = join(",", ["a", "b"], ["c"])
        LOWER  = lower("MiXed")
        UPPER  = upper("MiXed")
        CONCAT = join(" ", concat(["x"], ["y", "z"]))
        MERGE  = local.m.b
        FILE   = file("files/redis.conf")
        NESTED = upper(format("%s", lower("ABC")))"#,
    );
    let o = ParseOptions {
        base_dir: Some(fixtures()),
        ..ParseOptions::default()
    };
    let env = parsed_with(&src, &o).job.task_groups[0].tasks[0]
        .env
        .clone();
    assert_eq!(env["FORMAT"], "web-007");
    assert_eq!(env["JOIN"], "a,b,c");
    assert_eq!(env["LOWER"], "mixed");
    assert_eq!(env["UPPER"], "MIXED");
    assert_eq!(env["CONCAT"], "x y z");
    assert_eq!(env["MERGE"], "3");
    assert_eq!(env["FILE"], "maxmemory 200mb\nappendonly yes\n");
    assert_eq!(env["NESTED"], "ABC");
}

#[test]
fn function_errors_are_located() {
    let src = with_env("", "        A = upper(1)");
    let d = only_error(&src);
    assert_at(&d, Severity::Error, 9, "A");
    assert_eq!(d.message, "upper(): expected a string, got number 1");

    let src = with_env("", "        A = base64encode(\"x\")");
    let d = only_error(&src);
    assert!(
        d.message
            .starts_with(r#"unknown function "base64encode" (supported: concat, file, format, join, lower, merge, upper)"#),
        "{d}"
    );

    let src = with_env("", "        A = file(\"x.txt\")");
    let d = only_error(&src);
    assert!(d.message.contains("no base directory"), "{d}");

    let o = ParseOptions {
        base_dir: Some(fixtures()),
        ..ParseOptions::default()
    };
    let d = only_error_with(&with_env("", "        A = file(\"nope.txt\")"), &o);
    assert!(d.message.starts_with(r#"file(): cannot read "#), "{d}");
}

// ---- dynamic blocks ----

/// A group whose body (after `network {` on line 3) is `network_body`.
fn with_network(prelude: &str, network_body: &str) -> String {
    format!(
        "{prelude}job \"j\" {{\n  group \"g\" {{\n    network {{\n{network_body}\n    }}\n    task \"t\" {{\n      driver = \"raw_exec\"\n      config {{\n        command = \"x\"\n      }}\n    }}\n  }}\n}}\n"
    )
}

#[test]
fn dynamic_over_a_list() {
    let src = with_network(
        "variable \"ports\" {\n  default = [\"http\", \"grpc\"]\n}\n",
        "      dynamic \"port\" {\n        for_each = var.ports\n        labels   = [each.value]\n        content {\n          host_network = \"n${port.key}\"\n        }\n      }",
    );
    let job = ok(&src);
    let got: Vec<_> = job.task_groups[0].networks[0]
        .dynamic_ports
        .iter()
        .map(|p| (p.label.as_str(), p.host_network.as_str()))
        .collect();
    assert_eq!(got, [("http", "n0"), ("grpc", "n1")]);
}

#[test]
fn dynamic_over_a_map_with_iterator() {
    let src = with_network(
        "locals {\n  ports = { web = 80, db = 5432 }\n}\n",
        "      dynamic \"port\" {\n        for_each = local.ports\n        iterator = p\n        labels   = [p.key]\n        content {\n          static = p.value\n          to     = each.value\n        }\n      }",
    );
    let job = ok(&src);
    let got: Vec<_> = job.task_groups[0].networks[0]
        .reserved_ports
        .iter()
        .map(|p| (p.label.as_str(), p.value, p.to))
        .collect();
    assert_eq!(got, [("db", 5432, 5432), ("web", 80, 80)]);
}

#[test]
fn dynamic_blocks_nest_and_work_in_config() {
    let src = r#"job "j" {
  group "g" {
    dynamic "task" {
      for_each = ["a", "b"]
      labels   = ["task-${task.value}"]
      content {
        driver = "docker"
        config {
          image = "img:${task.value}"
          dynamic "mount" {
            for_each = ["/x", "/y"]
            content {
              source = "${mount.value}/${task.value}"
            }
          }
        }
        dynamic "env" {
          for_each = [1]
          content {
            WHICH = task.key
          }
        }
      }
    }
  }
}
"#;
    let job = ok(src);
    let tasks = &job.task_groups[0].tasks;
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].name, "task-a");
    assert_eq!(tasks[1].config["image"], json!("img:b"));
    assert_eq!(
        tasks[1].config["mount"],
        json!([{"source": "/x/b"}, {"source": "/y/b"}])
    );
    assert_eq!(tasks[1].env["WHICH"], "1");
}

#[test]
fn dynamic_with_empty_for_each_generates_nothing() {
    let src = with_network(
        "",
        "      port \"http\" {}\n      dynamic \"port\" {\n        for_each = []\n        labels   = [\"x\"]\n        content {}\n      }",
    );
    let job = ok(&src);
    assert_eq!(job.task_groups[0].networks[0].dynamic_ports.len(), 1);
}

#[test]
fn dynamic_errors_are_located() {
    let d = only_error(&with_network(
        "",
        "      dynamic \"prot\" {\n        for_each = [1]\n        content {}\n      }",
    ));
    assert_at(&d, Severity::Error, 4, "prot");
    assert_eq!(d.message, r#"unknown block "prot" (allowed: mode, port)"#);

    let d = only_error(&with_network(
        "",
        "      dynamic \"port\" {\n        for_each = \"http\"\n        content {}\n      }",
    ));
    assert_at(&d, Severity::Error, 5, "for_each");
    assert_eq!(d.message, r#"expected a list or a map, got string "http""#);

    let d = only_error(&with_network(
        "",
        "      dynamic \"port\" {\n        content {}\n      }",
    ));
    assert_at(&d, Severity::Error, 4, "for_each");
    assert!(d.message.starts_with("dynamic block needs for_each"), "{d}");

    let d = only_error(&with_network(
        "",
        "      dynamic \"port\" {\n        for_each = [1]\n      }",
    ));
    assert_at(&d, Severity::Error, 4, "content");

    let d = only_error(&with_network(
        "",
        "      dynamic \"port\" {\n        for_each = [1]\n        labels = [1]\n        content {}\n      }",
    ));
    assert_at(&d, Severity::Error, 6, "labels");
    assert!(d.message.starts_with("expected a list of strings"), "{d}");

    // The content is converted like a written block: errors point into it.
    let d = only_error(&with_network(
        "",
        "      dynamic \"port\" {\n        for_each = [\"a\"]\n        labels = [port.value]\n        content {\n          static = \"x\"\n        }\n      }",
    ));
    assert_at(&d, Severity::Error, 8, "static");
}
