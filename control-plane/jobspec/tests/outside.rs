//! Nomad features outside Flotilla's subset: an error where ignoring them would change what
//! runs, a warning where it would not. Each names the file, the line and the block.

mod common;

use common::{assert_at, errors, job_with, only_error, only_warning, task_line};
use flotilla_jobspec::{Diagnostic, Severity};

fn rejected(d: &Diagnostic, line: usize, name: &str, path_end: &str) {
    assert_at(d, Severity::Error, line, name);
    assert!(d.path.ends_with(path_end), "{d}");
    assert!(
        d.message.starts_with(&format!("{name} is not supported: ")),
        "{d}"
    );
    assert!(
        d.to_string().starts_with(&format!("test.hcl:{line}:")),
        "{d}"
    );
}

fn ignored(d: &Diagnostic, line: usize, name: &str, path_end: &str) {
    assert_at(d, Severity::Warning, line, name);
    assert!(d.path.ends_with(path_end), "{d}");
    assert!(
        d.message
            .starts_with(&format!("{name} is not supported yet; ignored (")),
        "{d}"
    );
}

/// The job-level body starts on line 2.
fn job_level(job_body: &str) -> String {
    job_with("", "").replacen("job \"j\" {\n", &format!("job \"j\" {{\n{job_body}"), 1)
}

// ---- errors: ignoring them would change what runs ----

#[test]
fn vault_in_job_group_and_task() {
    let d = only_error(&job_level("  vault {\n    policies = [\"x\"]\n  }\n"));
    rejected(&d, 2, "vault", r#"job "j""#);
    assert!(d.message.contains("without their secrets"), "{d}");

    let d = only_error(&job_with("    vault {}\n", ""));
    rejected(&d, 3, "vault", r#"group "g""#);

    let d = only_error(&job_with(
        "",
        "      vault {\n        role = \"r\"\n      }\n",
    ));
    rejected(&d, task_line(""), "vault", r#"task "t""#);
}

#[test]
fn csi_volume() {
    let d = only_error(&job_with(
        "    volume \"data\" {\n      type            = \"csi\"\n      source          = \"ebs\"\n      attachment_mode = \"file-system\"\n    }\n",
        "",
    ));
    assert_at(&d, Severity::Error, 4, "type");
    assert!(d.path.ends_with(r#"group "g" > volume "data""#), "{d}");
    assert!(
        d.message.starts_with("csi volumes are not supported"),
        "{d}"
    );
}

/// A group service `api` whose `connect` block holds `connect_body` (from line 6), with a
/// sidecar proxy holding `proxy_body` (from line 8 with an empty `connect_body`) and one
/// upstream holding `upstream_body` (from line 11 with an empty `proxy_body`).
fn connect(connect_body: &str, proxy_body: &str, upstream_body: &str) -> String {
    job_with(
        &format!(
            "    service {{\n      name = \"api\"\n      connect {{\n{connect_body}        sidecar_service {{\n          proxy {{\n{proxy_body}            upstreams {{\n              destination_name = \"db\"\n              local_bind_port  = 5432\n{upstream_body}            }}\n          }}\n        }}\n      }}\n    }}\n"
        ),
        "",
    )
}

#[test]
fn connect_gateways_and_proxy_settings() {
    let connect_at = |body: &str| connect(body, "", "");
    let d = only_error(&connect_at(
        "        gateway {\n          ingress {}\n        }\n",
    ));
    rejected(&d, 6, "gateway", r#"service "api" > connect"#);
    assert!(d.message.contains("no Connect gateways"), "{d}");

    for (name, body) in [
        (
            "config",
            "            config {\n              protocol = \"http\"\n            }\n",
        ),
        (
            "expose",
            "            expose {\n              path {}\n            }\n",
        ),
        (
            "local_service_address",
            "            local_service_address = \"10.0.0.1\"\n",
        ),
        (
            "local_service_port",
            "            local_service_port = 8080\n",
        ),
        ("transparent_proxy", "            transparent_proxy {}\n"),
    ] {
        let d = only_error(&connect("", body, ""));
        rejected(&d, 8, name, "> connect > sidecar_service > proxy");
    }
    // proxy.config written as an attribute is the same feature.
    let d = only_error(&connect("", "            config = {}\n", ""));
    rejected(&d, 8, "config", "> proxy");

    for (name, body) in [
        (
            "mesh_gateway",
            "              mesh_gateway {\n                mode = \"local\"\n              }\n",
        ),
        (
            "config",
            "              config {\n                connect_timeout_ms = 1000\n              }\n",
        ),
        (
            "local_bind_socket_path",
            "              local_bind_socket_path = \"/tmp/db.sock\"\n",
        ),
    ] {
        let d = only_error(&connect("", "", body));
        rejected(&d, 11, name, r#"> proxy > upstreams "db""#);
    }
}

#[test]
fn connect_sidecar_task_is_ignored() {
    let w = only_warning(&connect(
        "        sidecar_task {\n          driver = \"docker\"\n        }\n",
        "",
        "",
    ));
    ignored(&w, 6, "sidecar_task", r#"service "api" > connect"#);
}

#[test]
fn device_in_task_resources() {
    let d = only_error(&job_with(
        "",
        "      resources {\n        device \"nvidia/gpu\" {\n          count = 1\n        }\n      }\n",
    ));
    rejected(&d, task_line("") + 1, "device", r#"task "t" > resources"#);
}

#[test]
fn identity_in_task() {
    let d = only_error(&job_with(
        "",
        "      identity {\n        env = true\n      }\n",
    ));
    rejected(&d, task_line(""), "identity", r#"task "t""#);
}

#[test]
fn csi_plugin_in_task() {
    let d = only_error(&job_with(
        "",
        "      csi_plugin {\n        id   = \"ebs\"\n        type = \"node\"\n      }\n",
    ));
    rejected(&d, task_line(""), "csi_plugin", r#"task "t""#);
}

#[test]
fn multiregion_with_several_regions() {
    let d = only_error(&job_level(
        "  multiregion {\n    region \"west\" {}\n    region \"east\" {}\n  }\n",
    ));
    rejected(&d, 2, "multiregion", r#"job "j""#);
    assert!(d.message.contains("would run in 2 regions"), "{d}");
}

#[test]
fn unknown_driver() {
    let d = only_error(&job_with("", "").replace("\"raw_exec\"", "\"podman\""));
    assert_at(&d, Severity::Error, 4, "driver");
    assert!(d.message.starts_with(r#"unknown driver "podman""#), "{d}");
}

// ---- warnings: ignoring them does not change what runs ----

#[test]
fn multiregion_with_one_region() {
    let w = only_warning(&job_level("  multiregion {\n    region \"west\" {}\n  }\n"));
    ignored(&w, 2, "multiregion", r#"job "j""#);
}

#[test]
fn migrate_in_job_and_group() {
    let w = only_warning(&job_level("  migrate {\n    max_parallel = 2\n  }\n"));
    ignored(&w, 2, "migrate", r#"job "j""#);
    let w = only_warning(&job_with("    migrate {}\n", ""));
    ignored(&w, 3, "migrate", r#"group "g""#);
}

#[test]
fn ui_in_job() {
    let w = only_warning(&job_level("  ui {\n    description = \"x\"\n  }\n"));
    ignored(&w, 2, "ui", r#"job "j""#);
}

#[test]
fn scaling_in_group_and_task() {
    let w = only_warning(&job_with(
        "    scaling {\n      min = 1\n      max = 5\n    }\n",
        "",
    ));
    ignored(&w, 3, "scaling", r#"group "g""#);
    let w = only_warning(&job_with(
        "",
        "      scaling \"cpu\" {\n        enabled = true\n      }\n",
    ));
    ignored(&w, task_line(""), "scaling", r#"task "t""#);
}

#[test]
fn consul_in_group_and_task() {
    let w = only_warning(&job_with(
        "    consul {\n      namespace = \"x\"\n    }\n",
        "",
    ));
    ignored(&w, 3, "consul", r#"group "g""#);
    let w = only_warning(&job_with("", "      consul {}\n"));
    ignored(&w, task_line(""), "consul", r#"task "t""#);
}

#[test]
fn client_disconnect_settings() {
    let w = only_warning(&job_with("    max_client_disconnect = \"1h\"\n", ""));
    ignored(&w, 3, "max_client_disconnect", r#"group "g""#);
    let w = only_warning(&job_with("    stop_after_client_disconnect = \"1m\"\n", ""));
    ignored(&w, 3, "stop_after_client_disconnect", r#"group "g""#);
    let w = only_warning(&job_with(
        "    disconnect {\n      lost_after = \"1h\"\n    }\n",
        "",
    ));
    ignored(&w, 3, "disconnect", r#"group "g""#);
}

#[test]
fn outside_features_are_recognised_in_dynamic_blocks_too() {
    let w = only_warning(&job_with(
        "    dynamic \"scaling\" {\n      for_each = [1]\n      content {}\n    }\n",
        "",
    ));
    ignored(&w, 3, "scaling", r#"group "g""#);
}

// ---- anything else stays an error listing what is allowed ----

#[test]
fn unknown_blocks_and_attributes_list_the_allowed_names() {
    let d = only_error(&job_with("", "      leader = true\n"));
    assert_at(&d, Severity::Error, task_line(""), "leader");
    assert_eq!(
        d.message,
        r#"unknown attribute "leader" (allowed: driver, kill_timeout, kill_signal, env, meta, user, shutdown_delay, config, resources, restart, service, constraint, affinity, lifecycle, artifact, template, logs, volume_mount, dispatch_payload)"#
    );

    let d = only_error(&job_with(
        "",
        "      template {\n        destination = \"x\"\n        data = \"y\"\n        splay = \"5s\"\n      }\n",
    ));
    assert_at(&d, Severity::Error, task_line("") + 3, "splay");
    assert!(
        d.message
            .starts_with(r#"unknown attribute "splay" (allowed: data, source, destination"#)
    );

    let errs = errors(&job_with(
        "    volume \"v\" {\n      type = \"host\"\n      source = \"s\"\n      per_alloc = true\n    }\n",
        "",
    ));
    assert_eq!(errs.len(), 1);
    assert_at(&errs[0], Severity::Error, 6, "per_alloc");
}
