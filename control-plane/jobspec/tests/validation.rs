//! Semantic rules, each checked through a jobspec (so the diagnostic is located at the
//! offending attribute or block), and the same report for a job submitted as JSON.

mod common;

use common::{assert_at, errors, job_with, only_error, only_warning, parsed, task_line};
use flotilla_jobspec::{Diagnostic, Severity, validate};
use flotilla_types::Job;

/// A job of type `job_type` whose job-level body (from line 2) is `job_body`, and whose one
/// group's body (from line `3 + lines(job_body)`) is `group_body`.
fn typed(job_type: &str, job_body: &str, group_body: &str) -> String {
    job_with(group_body, "").replacen(
        "job \"j\" {\n",
        &format!("job \"j\" {{\n{job_body}  type = \"{job_type}\"\n"),
        1,
    )
}

fn error_at(src: &str, line: usize, field: &str) -> Diagnostic {
    let d = only_error(src);
    assert_at(&d, Severity::Error, line, field);
    d
}

fn warning_at(src: &str, line: usize, field: &str) -> Diagnostic {
    let w = only_warning(src);
    assert_at(&w, Severity::Warning, line, field);
    w
}

fn group(body: &str) -> String {
    job_with(body, "")
}

fn task(body: &str) -> String {
    job_with("", body)
}

/// The task body's first line in [`task`].
const T: usize = 8;

// ---- placement ----

#[test]
fn constraint_rules() {
    let d = error_at(
        &group(
            "    constraint {\n      attribute = \"${attr.x}\"\n      operator  = \"~\"\n      value     = \"1\"\n    }\n",
        ),
        5,
        "operator",
    );
    assert!(d.message.starts_with(r#"unknown constraint operator "~" (expected one of: =, !=, <, <=, >, >=, regexp, version, semver, set_contains, set_contains_any, is_set, is_not_set, distinct_hosts, distinct_property)"#), "{d}");
    assert_eq!(d.path, r#"job "j" > group "g" > constraint[0]"#);

    let d = error_at(
        &group(
            "    constraint {\n      attribute = \"${node.class}\"\n      regexp    = \"[a-\"\n    }\n",
        ),
        5,
        "value",
    );
    assert!(d.message.starts_with(r#"invalid regexp "[a-": "#), "{d}");

    let d = error_at(
        &group(
            "    constraint {\n      attribute = \"${attr.nomad.version}\"\n      version   = \">= x\"\n    }\n",
        ),
        5,
        "value",
    );
    assert!(
        d.message
            .starts_with(r#"invalid version constraint ">= x": "#),
        "{d}"
    );

    let d = error_at(
        &group(
            "    constraint {\n      attribute = \"${attr.os.version}\"\n      semver    = \"~> 1.2\"\n    }\n",
        ),
        5,
        "value",
    );
    assert!(d.message.contains("not allowed in semver"), "{d}");

    let d = error_at(
        &group("    constraint {\n      attribute = \"${attr.x}\"\n    }\n"),
        3,
        "value",
    );
    assert_eq!(d.message, r#"operator "=" needs a value"#);

    let d = error_at(
        &group(
            "    constraint {\n      attribute = \"${meta.x}\"\n      operator  = \"is_set\"\n      value     = \"y\"\n    }\n",
        ),
        6,
        "value",
    );
    assert_eq!(d.message, r#"operator "is_set" takes no value, got "y""#);

    let d = error_at(
        &group("    constraint {\n      value = \"linux\"\n    }\n"),
        3,
        "attribute",
    );
    assert!(
        d.message.starts_with("constraint needs an attribute"),
        "{d}"
    );

    let d = error_at(
        &group(
            "    constraint {\n      distinct_property = \"${meta.rack}\"\n      value             = \"zero\"\n    }\n",
        ),
        5,
        "value",
    );
    assert!(
        d.message.contains("expected a whole number of at least 1"),
        "{d}"
    );
}

#[test]
fn affinity_rules() {
    let d = error_at(
        &group(
            "    affinity {\n      attribute = \"${node.class}\"\n      value     = \"a\"\n      weight    = 0\n    }\n",
        ),
        6,
        "weight",
    );
    assert_eq!(
        d.message,
        "affinity weight must not be zero (expected -100 to 100)"
    );

    let d = error_at(
        &group(
            "    affinity {\n      attribute = \"${node.class}\"\n      value     = \"a\"\n      weight    = -101\n    }\n",
        ),
        6,
        "weight",
    );
    assert_eq!(d.message, "-101 is out of range (expected -100 to 100)");

    let d = error_at(
        &group(
            "    affinity {\n      attribute = \"${meta.x}\"\n      operator  = \"is_set\"\n    }\n",
        ),
        5,
        "operator",
    );
    assert!(
        d.message
            .starts_with(r#"unknown affinity operator "is_set""#),
        "{d}"
    );

    let d = error_at(
        &task("      affinity {\n        value = \"a\"\n      }\n"),
        T,
        "attribute",
    );
    assert!(d.path.ends_with(r#"task "t" > affinity[0]"#), "{d}");
}

#[test]
fn spread_rules() {
    let d = error_at(
        &group(
            "    spread {\n      attribute = \"${node.datacenter}\"\n      target \"a\" {\n        percent = 60\n      }\n      target \"b\" {\n        percent = 50\n      }\n    }\n",
        ),
        5,
        "target",
    );
    assert_eq!(
        d.message,
        "spread target percentages add up to 110%, more than 100%"
    );

    let d = error_at(
        &group(
            "    spread {\n      attribute = \"${node.datacenter}\"\n      target \"a\" {\n        percent = 150\n      }\n    }\n",
        ),
        6,
        "percent",
    );
    assert_eq!(d.message, "percent 150 is out of range (expected 0 to 100)");

    let d = error_at(
        &group(
            "    spread {\n      attribute = \"${node.datacenter}\"\n      target \"a\" {}\n      target \"a\" {}\n    }\n",
        ),
        6,
        "value",
    );
    assert_eq!(d.message, r#"duplicate spread target "a""#);

    let d = error_at(
        &group(
            "    spread {\n      attribute = \"${node.datacenter}\"\n      weight    = 0\n    }\n",
        ),
        5,
        "weight",
    );
    assert_eq!(
        d.message,
        "spread weight 0 is out of range (expected 1 to 100)"
    );

    let d = error_at(
        &group("    spread {\n      weight = 10\n    }\n"),
        3,
        "attribute",
    );
    assert!(d.message.starts_with("spread needs an attribute"), "{d}");
}

// ---- job types ----

#[test]
fn system_group_count_is_a_warning() {
    for t in ["system", "sysbatch"] {
        let w = warning_at(&typed(t, "", "    count = 3\n"), 4, "count");
        assert_eq!(
            w.message,
            format!(
                "count = 3 is ignored for {t} jobs: they run one instance of the group on every eligible node"
            )
        );
    }
    assert!(
        parsed(&typed("system", "", "")).warnings.is_empty(),
        "count defaults to 1"
    );
}

#[test]
fn update_is_not_allowed_for_batch_jobs() {
    let d = error_at(
        &typed("batch", "  update {\n    max_parallel = 2\n  }\n", ""),
        2,
        "update",
    );
    assert_eq!(d.message, "update is not allowed for batch jobs");
    assert_eq!(d.path, r#"job "j""#);

    let d = error_at(
        &typed("sysbatch", "", "    update {\n      canary = 1\n    }\n"),
        4,
        "update",
    );
    assert_eq!(d.message, "update is not allowed for sysbatch jobs");
    assert_eq!(d.path, r#"job "j" > group "g""#);
}

#[test]
fn periodic_rules() {
    let d = error_at(
        &typed("service", "  periodic {\n    cron = \"@daily\"\n  }\n", ""),
        2,
        "periodic",
    );
    assert_eq!(
        d.message,
        "periodic is only allowed for batch and sysbatch jobs (this is a service job)"
    );

    let d = error_at(
        &typed("batch", "  periodic {\n    cron = \"0 3 * *\"\n  }\n", ""),
        3,
        "cron",
    );
    assert!(
        d.message
            .starts_with(r#"cron expression "0 3 * *" has 4 fields (expected 5"#),
        "{d}"
    );

    let d = error_at(
        &typed("batch", "  periodic {\n    crons = [\"* * *\"]\n  }\n", ""),
        3,
        "cron",
    );
    assert!(d.message.contains("has 3 fields"), "{d}");

    let d = error_at(&typed("batch", "  periodic {}\n", ""), 2, "cron");
    assert!(
        d.message.starts_with("periodic needs a cron expression"),
        "{d}"
    );
}

#[test]
fn parameterized_rules() {
    let d = error_at(
        &typed("service", "  parameterized {}\n", ""),
        2,
        "parameterized",
    );
    assert_eq!(
        d.message,
        "parameterized is only allowed for batch and sysbatch jobs (this is a service job)"
    );

    let d = error_at(
        &typed(
            "batch",
            "  parameterized {\n    payload = \"maybe\"\n  }\n",
            "",
        ),
        3,
        "payload",
    );
    assert_eq!(
        d.message,
        r#"unknown payload "maybe" (expected one of: optional, required, forbidden)"#
    );

    let d = error_at(
        &typed(
            "batch",
            "  parameterized {\n    meta_required = [\"a\"]\n    meta_optional = [\"a\"]\n  }\n",
            "",
        ),
        4,
        "meta_optional",
    );
    assert_eq!(
        d.message,
        "meta keys cannot be both required and optional: a"
    );
}

// ---- update and reschedule ----

#[test]
fn update_rules() {
    let d = error_at(
        &group("    update {\n      health_check = \"http\"\n    }\n"),
        4,
        "health_check",
    );
    assert_eq!(
        d.message,
        r#"unknown health_check "http" (expected one of: checks, task_states, manual)"#
    );

    let d = error_at(
        &group(
            "    update {\n      min_healthy_time = \"5m\"\n      healthy_deadline = \"5m\"\n    }\n",
        ),
        4,
        "min_healthy_time",
    );
    assert_eq!(
        d.message,
        "min_healthy_time (5m0s) must be less than healthy_deadline (5m0s)"
    );

    let d = error_at(
        &group("    update {\n      healthy_deadline = \"15m\"\n    }\n"),
        4,
        "healthy_deadline",
    );
    assert_eq!(
        d.message, "healthy_deadline (15m0s) must be less than progress_deadline (10m0s)",
        "against Nomad's default progress_deadline"
    );

    let d = error_at(
        &group("    update {\n      auto_promote = true\n    }\n"),
        4,
        "auto_promote",
    );
    assert_eq!(
        d.message,
        "auto_promote needs canaries: set canary to 1 or more"
    );

    let w = warning_at(
        &group("    count = 2\n    update {\n      canary = 3\n    }\n"),
        5,
        "canary",
    );
    assert!(
        w.message
            .starts_with("canary = 3 is more than the group's count (2)"),
        "{w}"
    );

    let d = error_at(
        &typed("system", "", "    update {\n      canary = 1\n    }\n"),
        5,
        "canary",
    );
    assert_eq!(
        d.message,
        "canary deployments are not supported for system jobs"
    );

    let d = error_at(
        &typed("system", "  update {\n    canary = 1\n  }\n", ""),
        3,
        "canary",
    );
    assert_eq!(d.path, r#"job "j" > update"#);
}

#[test]
fn update_durations_as_nomad_checks_them() {
    let d = error_at(
        &group("    update {\n      min_healthy_time = \"-1s\"\n    }\n"),
        4,
        "min_healthy_time",
    );
    assert_eq!(d.message, "min_healthy_time must not be negative, got -1s");
    assert_eq!(d.path, r#"job "j" > group "g" > update"#);

    let d = error_at(
        &group("    update {\n      progress_deadline = \"-10m\"\n    }\n"),
        4,
        "progress_deadline",
    );
    assert_eq!(
        d.message,
        "progress_deadline must not be negative, got -10m0s"
    );

    // Nomad refuses a zero healthy_deadline and stagger; written out, they are errors.
    let d = error_at(
        &group("    update {\n      healthy_deadline = \"0s\"\n    }\n"),
        4,
        "healthy_deadline",
    );
    assert_eq!(d.message, "healthy_deadline must be positive, got 0s");
    let d = error_at(
        &typed("service", "  update {\n    stagger = \"0s\"\n  }\n", ""),
        3,
        "stagger",
    );
    assert_eq!(d.message, "stagger must be positive, got 0s");

    // A zero progress_deadline means no deadline: any healthy_deadline fits.
    let p = parsed(&group(
        "    update {\n      healthy_deadline  = \"1h\"\n      progress_deadline = \"0s\"\n    }\n",
    ));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    assert_eq!(
        p.job.task_groups[0]
            .update
            .as_ref()
            .unwrap()
            .progress_deadline,
        0
    );

    // Set at the job level, reported there once.
    let d = error_at(
        &typed(
            "service",
            "  update {\n    min_healthy_time = \"6m\"\n  }\n",
            "",
        ),
        3,
        "min_healthy_time",
    );
    assert_eq!(
        d.message,
        "min_healthy_time (6m0s) must be less than healthy_deadline (5m0s)"
    );
    assert_eq!(d.path, r#"job "j" > update"#);
}

#[test]
fn update_counts_and_promotion_as_nomad_checks_them() {
    // More in parallel than the group runs: Nomad's warning.
    let w = warning_at(
        &group("    count = 2\n    update {\n      max_parallel = 3\n    }\n"),
        5,
        "max_parallel",
    );
    assert_eq!(
        w.message,
        "max_parallel = 3 is more than the group's count (2): a destructive change would \
         replace every instance at once"
    );
    // Not for a group of one (Nomad's exception), nor for system jobs (no count).
    let p = parsed(&group("    update {\n      max_parallel = 3\n    }\n"));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    let p = parsed(&typed(
        "system",
        "  update {\n    max_parallel = 2\n  }\n",
        "",
    ));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);

    // Blue/green: as many canaries as instances, promoted automatically.
    let p = parsed(&group(
        "    count = 3\n    update {\n      canary       = 3\n      max_parallel = 3\n      auto_promote = true\n    }\n",
    ));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);

    // auto_promote is all or nothing across the groups with canaries.
    let src = r#"job "j" {
  group "a" {
    update {
      canary       = 1
      auto_promote = true
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "x"
      }
    }
  }
  group "b" {
    update {
      canary = 1
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "x"
      }
    }
  }
  group "c" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "x"
      }
    }
  }
}
"#;
    let w = only_warning(src);
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.path, r#"job "j" > group "b" > update"#);
    assert_eq!(w.field, "auto_promote");
    assert_eq!(w.line, Some(15), "at group b's update block: {w}");
    assert!(
        w.message
            .starts_with(r#"auto_promote is false here but true in group "a""#),
        "{w}"
    );
    // A group without canaries does not hold promotion back.
    let p = parsed(&src.replace("      canary = 1\n", "      max_parallel = 1\n"));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);

    // System jobs: rolling updates yes, canaries no (also when set at the group level).
    let d = error_at(
        &typed(
            "system",
            "  update {\n    max_parallel = 2\n  }\n",
            "    update {\n      canary = 1\n    }\n",
        ),
        8,
        "canary",
    );
    assert_eq!(
        d.message,
        "canary deployments are not supported for system jobs"
    );
    // Batch jobs: no update block at all, whatever it holds.
    for body in ["max_parallel = 1", "canary = 1"] {
        let d = error_at(
            &typed(
                "batch",
                "",
                &format!("    update {{\n      {body}\n    }}\n"),
            ),
            4,
            "update",
        );
        assert_eq!(d.message, "update is not allowed for batch jobs");
    }
}

#[test]
fn reschedule_rules() {
    let d = error_at(
        &group("    reschedule {\n      delay_function = \"linear\"\n    }\n"),
        4,
        "delay_function",
    );
    assert_eq!(
        d.message,
        r#"unknown delay_function "linear" (expected one of: constant, exponential, fibonacci)"#
    );

    let d = error_at(
        &group("    reschedule {\n      delay = \"1s\"\n    }\n"),
        4,
        "delay",
    );
    assert_eq!(d.message, "delay must be at least 5s, got 1s");

    let d = error_at(
        &group("    reschedule {\n      delay     = \"2m\"\n      max_delay = \"1m\"\n    }\n"),
        5,
        "max_delay",
    );
    assert_eq!(
        d.message,
        r#"max_delay (1m0s) must not be less than delay (2m0s) with delay_function "exponential""#
    );

    let d = error_at(
        &group(
            "    reschedule {\n      attempts       = 10\n      interval       = \"5m\"\n      delay          = \"1m\"\n      delay_function = \"constant\"\n      unlimited      = false\n    }\n",
        ),
        5,
        "interval",
    );
    assert_eq!(
        d.message,
        "10 attempts with a constant delay of 1m0s do not fit in an interval of 5m0s"
    );

    let w = warning_at(
        &group("    reschedule {\n      attempts = 3\n    }\n"),
        4,
        "attempts",
    );
    assert_eq!(
        w.message,
        "attempts = 3 is ignored because unlimited = true"
    );
}

// ---- group and task parts ----

#[test]
fn volume_rules() {
    let d = error_at(
        &group("    volume \"data\" {\n      type = \"host\"\n    }\n"),
        3,
        "source",
    );
    assert!(d.message.starts_with("host volume needs a source"), "{d}");
    assert_eq!(d.path, r#"job "j" > group "g" > volume "data""#);

    let d = error_at(
        &group("    volume \"data\" {\n      source = \"d\"\n    }\n"),
        3,
        "type",
    );
    assert_eq!(
        d.message,
        r#"volume needs a type (only "host" is supported)"#
    );

    let d = error_at(
        &group("    volume \"data\" {\n      type   = \"nfs\"\n      source = \"d\"\n    }\n"),
        4,
        "type",
    );
    assert_eq!(
        d.message,
        r#"unknown volume type "nfs" (only "host" is supported)"#
    );
}

#[test]
fn volume_mount_rules() {
    let g = "    volume \"data\" {\n      type   = \"host\"\n      source = \"d\"\n    }\n";
    let line = task_line(g);
    let d = error_at(
        &job_with(
            g,
            "      volume_mount {\n        volume      = \"dat\"\n        destination = \"/d\"\n      }\n",
        ),
        line + 1,
        "volume",
    );
    assert_eq!(
        d.message,
        r#"volume "dat" is not declared by group "g" (declared: data)"#
    );

    let d = error_at(
        &job_with(
            g,
            "      volume_mount {\n        volume = \"data\"\n      }\n",
        ),
        line,
        "destination",
    );
    assert!(
        d.message.starts_with("volume_mount needs a destination"),
        "{d}"
    );
}

#[test]
fn template_rules() {
    let d = error_at(
        &task("      template {\n        data = \"x\"\n      }\n"),
        T,
        "destination",
    );
    assert!(d.message.starts_with("template needs a destination"), "{d}");

    let d = error_at(
        &task(
            "      template {\n        data        = \"x\"\n        source      = \"y\"\n        destination = \"z\"\n      }\n",
        ),
        T + 2,
        "source",
    );
    assert_eq!(d.message, "set data or source, not both");

    let d = error_at(
        &task("      template {\n        destination = \"z\"\n      }\n"),
        T,
        "data",
    );
    assert!(d.message.starts_with("template needs data"), "{d}");

    let d = error_at(
        &task(
            "      template {\n        data        = \"x\"\n        destination = \"z\"\n        change_mode = \"signal\"\n      }\n",
        ),
        T,
        "change_signal",
    );
    assert!(
        d.message
            .starts_with(r#"change_mode "signal" needs a change_signal"#),
        "{d}"
    );

    let d = error_at(
        &task(
            "      template {\n        data        = \"x\"\n        destination = \"z\"\n        change_mode = \"script\"\n      }\n",
        ),
        T + 3,
        "change_mode",
    );
    assert_eq!(
        d.message,
        r#"unknown change_mode "script" (expected one of: noop, restart, signal)"#
    );

    let d = error_at(
        &task(
            "      template {\n        data        = \"x\"\n        destination = \"z\"\n        perms       = \"rw\"\n      }\n",
        ),
        T + 3,
        "perms",
    );
    assert_eq!(
        d.message,
        r#"perms "rw" is not an octal file mode like "0644""#
    );

    let d = error_at(
        &task(
            "      template {\n        data        = \"x\"\n        destination = \"../../etc/passwd\"\n      }\n",
        ),
        T + 2,
        "destination",
    );
    assert!(d.message.ends_with("escapes the task directory"), "{d}");
}

#[test]
fn lifecycle_rules() {
    let d = error_at(
        &task("      lifecycle {\n        hook = \"prerun\"\n      }\n"),
        T + 1,
        "hook",
    );
    assert_eq!(
        d.message,
        r#"unknown lifecycle hook "prerun" (expected one of: prestart, poststart, poststop)"#
    );

    let d = error_at(
        &task(
            "      lifecycle {\n        hook    = \"poststop\"\n        sidecar = true\n      }\n",
        ),
        T + 2,
        "sidecar",
    );
    assert_eq!(
        d.message,
        "sidecar is only allowed with the prestart and poststart hooks"
    );

    let d = error_at(
        &task("      lifecycle {\n        sidecar = true\n      }\n"),
        T,
        "hook",
    );
    assert!(d.message.starts_with("lifecycle needs a hook"), "{d}");
}

#[test]
fn artifact_rules() {
    let d = error_at(
        &task("      artifact {\n        source = \"https://example.com/app.tar.gz\"\n      }\n"),
        T + 1,
        "source",
    );
    assert_eq!(
        d.message,
        r#"only local artifact sources are supported (a path or a file:// URL), got "https://example.com/app.tar.gz""#
    );
    assert!(d.path.ends_with(r#"task "t" > artifact[0]"#), "{d}");

    for remote in [
        "git::https://example.com/repo",
        "github.com/org/repo",
        "s3://bucket/key",
    ] {
        let d = error_at(
            &task(&format!(
                "      artifact {{\n        source = {remote:?}\n      }}\n"
            )),
            T + 1,
            "source",
        );
        assert!(d.message.contains(remote), "{d}");
    }

    let d = error_at(
        &task("      artifact {\n        source = \"/a\"\n        mode   = \"tree\"\n      }\n"),
        T + 2,
        "mode",
    );
    assert_eq!(
        d.message,
        r#"unknown artifact mode "tree" (expected one of: any, file, dir)"#
    );
}

#[test]
fn logs_and_disk_rules() {
    let d = error_at(
        &task("      logs {\n        max_files = 0\n      }\n"),
        T + 1,
        "max_files",
    );
    assert_eq!(d.message, "max_files must be at least 1");

    let g = "    ephemeral_disk {\n      size = 50\n    }\n";
    let line = task_line(g);
    let d = error_at(
        &job_with(
            g,
            "      logs {\n        max_files     = 10\n        max_file_size = 10\n      }\n",
        ),
        line + 1,
        "max_files",
    );
    assert_eq!(
        d.message,
        "logs may use 100 MB (10 files of 10 MB), which does not fit in the group's 50 MB ephemeral disk"
    );

    let d = error_at(
        &group("    ephemeral_disk {\n      size = 5\n    }\n"),
        4,
        "size",
    );
    assert_eq!(
        d.message,
        "ephemeral disk size 5 MB is too small (at least 10 MB)"
    );
}

#[test]
fn dispatch_payload_rules() {
    let w = warning_at(
        &task("      dispatch_payload {\n        file = \"in.json\"\n      }\n"),
        T + 1,
        "file",
    );
    assert_eq!(
        w.message,
        "dispatch_payload has no effect: the job is not parameterized"
    );

    let src = typed("batch", "  parameterized {}\n", "").replace(
        "      config {",
        "      dispatch_payload {\n        file = \"../in.json\"\n      }\n      config {",
    );
    let d = only_error(&src);
    assert_eq!((d.line, d.field.as_str()), (Some(8), "file"));
    assert!(
        d.message
            .contains("must be a path inside the task directory"),
        "{d}"
    );
}

#[test]
fn check_rules() {
    let base = "    network {\n      port \"http\" {}\n    }\n    service {\n      name = \"s\"\n      port = \"http\"\n      check {\n        type = \"grpc\"\n      }\n    }\n";
    assert!(
        parsed(&group(base)).warnings.is_empty(),
        "grpc checks are supported"
    );

    let src = group(&base.replace(
        "type = \"grpc\"",
        "type = \"http\"\n        path = \"/\"\n        grpc_service = \"x\"",
    ));
    let w = warning_at(&src, 12, "grpc_service");
    assert_eq!(
        w.message,
        "grpc_service is only used by grpc checks; this is a http check"
    );
}

// ---- connect ----

/// A group with port `http` and a service `web` whose sidecar proxy holds `upstreams` (from
/// line 12), and a task whose body (from line `T + 13 + lines(upstreams)`) is `task_body`.
fn mesh(upstreams: &str, task_body: &str) -> String {
    job_with(
        &format!(
            "    network {{\n      port \"http\" {{}}\n    }}\n    service {{\n      name = \"web\"\n      port = \"http\"\n      connect {{\n        sidecar_service {{\n          proxy {{\n{upstreams}          }}\n        }}\n      }}\n    }}\n"
        ),
        task_body,
    )
}

fn upstream(name: &str, port: u16) -> String {
    format!(
        "            upstreams {{\n              destination_name = \"{name}\"\n              local_bind_port  = {port}\n            }}\n"
    )
}

const UPSTREAM_PATH: &str =
    r#"job "j" > group "g" > service "web" > connect > sidecar_service > proxy > upstreams"#;

#[test]
fn connect_upstream_rules() {
    let good = format!("{}{}", upstream("db", 5432), upstream("cache", 6379));
    assert_eq!(parsed(&mesh(&good, "")).warnings, vec![]);

    let d = error_at(
        &mesh(
            "            upstreams {\n              local_bind_port = 5432\n            }\n",
            "",
        ),
        12,
        "destination_name",
    );
    assert_eq!(
        d.message,
        "upstream needs a destination_name (the service to connect to)"
    );
    assert_eq!(d.path, format!("{UPSTREAM_PATH}[0]"));

    let d = error_at(&mesh(&upstream("", 5432), ""), 13, "destination_name");
    assert_eq!(d.path, format!("{UPSTREAM_PATH}[0]"));

    let d = error_at(
        &mesh(
            "            upstreams {\n              destination_name = \"db\"\n            }\n",
            "",
        ),
        12,
        "local_bind_port",
    );
    assert_eq!(
        d.message,
        "upstream needs a local_bind_port (the local port the app connects to), from 1 to \
         65535; got 0"
    );
    assert_eq!(d.path, format!(r#"{UPSTREAM_PATH} "db""#));

    let src = mesh(
        &upstream("db", 5432).replace(
            "5432\n",
            "5432\n              local_bind_address = \"localhost\"\n",
        ),
        "",
    );
    let d = error_at(&src, 15, "local_bind_address");
    assert_eq!(
        d.message,
        r#"local_bind_address "localhost" is not an IP address (expected one like "127.0.0.1" or "::1")"#
    );
    let ipv6 = src.replace("localhost", "::1");
    assert_eq!(parsed(&ipv6).warnings, vec![]);
}

#[test]
fn connect_upstreams_of_a_group_need_their_own_ports() {
    // Two upstreams of one service on the same port: the second is reported, naming both.
    let src = mesh(
        &format!("{}{}", upstream("db", 5432), upstream("cache", 5432)),
        "",
    );
    let d = error_at(&src, 18, "local_bind_port");
    assert_eq!(
        d.message,
        r#"upstreams "db" and "cache" both bind 127.0.0.1:5432 (each upstream of group "g" needs its own local_bind_port)"#
    );
    assert_eq!(d.path, format!(r#"{UPSTREAM_PATH} "cache""#));

    // The same port on another address is fine…
    let other = mesh(
        &format!(
            "{}{}",
            upstream("db", 5432),
            upstream("cache", 5432).replace(
                "5432\n",
                "5432\n              local_bind_address = \"127.0.0.2\"\n"
            )
        ),
        "",
    );
    assert_eq!(parsed(&other).warnings, vec![]);
    // …unless one of them is a wildcard address, which takes the port on every address.
    let d = error_at(
        &other.replace("127.0.0.2", "0.0.0.0"),
        18,
        "local_bind_port",
    );
    assert_eq!(
        d.message,
        r#"upstream "cache" on 0.0.0.0:5432 and upstream "db" on 127.0.0.1:5432 both take port 5432 (each upstream of group "g" needs its own local_bind_port)"#
    );

    // A task's service counts too, and is reported in the task.
    let task_service = "      service {\n        name = \"worker\"\n        connect {\n          sidecar_service {\n            proxy {\n              upstreams {\n                destination_name = \"queue\"\n                local_bind_port  = 5432\n              }\n            }\n          }\n        }\n      }\n";
    let src = mesh(&upstream("db", 5432), task_service);
    let d = error_at(&src, T + 13 + 4 + 7, "local_bind_port");
    assert!(
        d.message
            .starts_with(r#"upstreams "db" and "queue" both bind 127.0.0.1:5432"#),
        "{d}"
    );
    assert_eq!(
        d.path,
        r#"job "j" > group "g" > task "t" > service "worker" > connect > sidecar_service > proxy > upstreams "queue""#
    );
    // Other groups do not: each allocation's listeners are its own (the scheduler keeps
    // allocations with clashing upstreams off the same node).
    let two_groups = src.replacen(
        "    task \"t\" {",
        "    task \"t0\" {\n      driver = \"raw_exec\"\n      config {\n        command = \"x\"\n      }\n    }\n  }\n  group \"h\" {\n    task \"t\" {",
        1,
    );
    assert_eq!(parsed(&two_groups).warnings, vec![]);
}

#[test]
fn connect_reserved_name_and_native_sidecar() {
    let src = mesh(&upstream("db", 5432), "").replace("\"web\"", "\"ingress-gateway\"");
    let d = error_at(&src, 7, "name");
    assert_eq!(
        d.message,
        r#"service name "ingress-gateway" is reserved: it is the mesh identity of every node's ingress"#
    );

    let src = mesh(&upstream("db", 5432), "")
        .replace("connect {\n", "connect {\n        native = true\n");
    let d = error_at(&src, 10, "native");
    assert_eq!(
        d.message,
        "native = true cannot be combined with a sidecar_service block (a native app speaks \
         mTLS itself; a sidecar does it for the app)"
    );
    assert_eq!(d.path, r#"job "j" > group "g" > service "web" > connect"#);
}

const JSON_MESH: &str = r#"{
  "ID": "j",
  "TaskGroups": [{
    "Name": "g",
    "Count": 1,
    "Services": [{
      "Name": "ingress-gateway",
      "Connect": {
        "Native": true,
        "SidecarService": {
          "Proxy": {
            "Upstreams": [
              { "DestinationName": "db", "LocalBindPort": 5432 },
              { "DestinationName": "cache", "LocalBindPort": 5432 },
              { "LocalBindPort": 0, "LocalBindAddress": "localhost" }
            ]
          }
        }
      }
    }],
    "Tasks": [{ "Name": "t", "Driver": "raw_exec", "Config": { "command": "x" } }]
  }]
}"#;

const HCL_MESH: &str = r#"job "j" {
  group "g" {
    service {
      name = "ingress-gateway"
      connect {
        native = true
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "db"
              local_bind_port  = 5432
            }
            upstreams {
              destination_name = "cache"
              local_bind_port  = 5432
            }
            upstreams {
              local_bind_address = "localhost"
            }
          }
        }
      }
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "x"
      }
    }
  }
}
"#;

#[test]
fn json_and_hcl_connect_get_the_same_report() {
    let mut job: Job = serde_json::from_str(JSON_MESH).unwrap();
    job.canonicalize();
    let mut from_json: Vec<_> = validate(&job)
        .into_iter()
        .map(|d| (d.severity.to_string(), d.path, d.field, d.message))
        .collect();
    let hcl = errors(HCL_MESH);
    let mut from_hcl: Vec<_> = hcl
        .iter()
        .map(|d| {
            (
                d.severity.to_string(),
                d.path.clone(),
                d.field.clone(),
                d.message.clone(),
            )
        })
        .collect();
    from_json.sort();
    from_hcl.sort();
    assert_eq!(from_json, from_hcl);
    let lines: Vec<_> = hcl.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        lines,
        [
            (Some(4), "name"),
            (Some(6), "native"),
            (Some(15), "local_bind_port"),
            (Some(17), "destination_name"),
            (Some(17), "local_bind_port"),
            (Some(18), "local_bind_address"),
        ],
        "{hcl:#?}"
    );
}

// ---- JSON jobs get the same report ----

const JSON_JOB: &str = r#"{
  "ID": "j",
  "Type": "batch",
  "Update": { "MaxParallel": 1 },
  "Constraints": [{ "LTarget": "${attr.x}", "RTarget": "[a-", "Operand": "regexp" }],
  "TaskGroups": [{
    "Name": "g",
    "Count": 1,
    "Tasks": [{
      "Name": "t",
      "Driver": "raw_exec",
      "Config": { "command": "x" },
      "Artifacts": [{ "GetterSource": "https://example.com/x" }],
      "VolumeMounts": [{ "Volume": "data", "Destination": "/d" }],
      "Lifecycle": { "Hook": "poststop", "Sidecar": true }
    }]
  }]
}"#;

const HCL_JOB: &str = r#"job "j" {
  type = "batch"
  update {
    max_parallel = 1
  }
  constraint {
    attribute = "${attr.x}"
    regexp    = "[a-"
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "x"
      }
      artifact {
        source = "https://example.com/x"
      }
      volume_mount {
        volume      = "data"
        destination = "/d"
      }
      lifecycle {
        hook    = "poststop"
        sidecar = true
      }
    }
  }
}
"#;

#[test]
fn json_and_hcl_jobs_get_the_same_report() {
    let mut job: Job = serde_json::from_str(JSON_JOB).unwrap();
    job.canonicalize();
    let mut from_json: Vec<_> = validate(&job)
        .into_iter()
        .map(|d| (d.severity.to_string(), d.path, d.field, d.message))
        .collect();
    let hcl = errors(HCL_JOB);
    let mut from_hcl: Vec<_> = hcl
        .iter()
        .map(|d| {
            (
                d.severity.to_string(),
                d.path.clone(),
                d.field.clone(),
                d.message.clone(),
            )
        })
        .collect();
    from_json.sort();
    from_hcl.sort();
    assert_eq!(from_json, from_hcl);
    assert_eq!(from_hcl.len(), 5, "{hcl:#?}");
    // Only the HCL report is located.
    let lines: Vec<_> = hcl.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        lines,
        [
            (Some(3), "update"),
            (Some(8), "value"),
            (Some(17), "source"),
            (Some(20), "volume"),
            (Some(25), "sidecar"),
        ]
    );
}

// ---- update and shutdown_delay of JSON jobs ----

/// A JSON job with an update strategy and shutdown delays, as the API receives it: every
/// duration written out (in nanoseconds), as Nomad's clients send them.
const JSON_UPDATE: &str = r#"{
  "ID": "j",
  "TaskGroups": [{
    "Name": "g",
    "Count": 2,
    "ShutdownDelay": -1000000000,
    "Update": {
      "Stagger": 30000000000,
      "MaxParallel": 1,
      "HealthCheck": "http",
      "MinHealthyTime": 300000000000,
      "HealthyDeadline": 300000000000,
      "ProgressDeadline": 600000000000,
      "AutoPromote": true
    },
    "Services": [{ "Name": "web", "CanaryTags": ["canary"] }],
    "Tasks": [{
      "Name": "t",
      "Driver": "raw_exec",
      "Config": { "command": "x" },
      "ShutdownDelay": -2000000000
    }]
  }]
}"#;

const HCL_UPDATE: &str = r#"job "j" {
  group "g" {
    count          = 2
    shutdown_delay = "-1s"
    update {
      health_check     = "http"
      min_healthy_time = "5m"
      auto_promote     = true
    }
    service {
      name        = "web"
      canary_tags = ["canary"]
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "x"
      }
      shutdown_delay = "-2s"
    }
  }
}
"#;

#[test]
fn json_and_hcl_update_strategies_get_the_same_report() {
    let mut job: Job = serde_json::from_str(JSON_UPDATE).unwrap();
    assert_eq!(job.task_groups[0].services[0].canary_tags, ["canary"]);
    job.canonicalize();
    let mut from_json: Vec<_> = validate(&job)
        .into_iter()
        .map(|d| (d.severity.to_string(), d.path, d.field, d.message))
        .collect();
    let hcl = errors(HCL_UPDATE);
    let mut from_hcl: Vec<_> = hcl
        .iter()
        .map(|d| {
            (
                d.severity.to_string(),
                d.path.clone(),
                d.field.clone(),
                d.message.clone(),
            )
        })
        .collect();
    from_json.sort();
    from_hcl.sort();
    assert_eq!(from_json, from_hcl);
    let lines: Vec<_> = hcl.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        lines,
        [
            (Some(4), "shutdown_delay"),
            (Some(6), "health_check"),
            (Some(7), "min_healthy_time"),
            (Some(8), "auto_promote"),
            (Some(19), "shutdown_delay"),
        ]
    );
    let messages: Vec<_> = hcl.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "shutdown_delay must not be negative, got -1s",
            r#"unknown health_check "http" (expected one of: checks, task_states, manual)"#,
            "min_healthy_time (5m0s) must be less than healthy_deadline (5m0s)",
            "auto_promote needs canaries: set canary to 1 or more",
            "shutdown_delay must not be negative, got -2s",
        ]
    );
}

#[test]
fn json_update_strategies_are_checked_too() {
    let json = |update: &str| -> Vec<Diagnostic> {
        let mut job: Job = serde_json::from_str(&format!(
            r#"{{
  "ID": "j",
  "TaskGroups": [{{
    "Name": "g",
    "Count": 1,
    "Update": {update},
    "Tasks": [{{ "Name": "t", "Driver": "raw_exec", "Config": {{ "command": "x" }} }}]
  }}]
}}"#
        ))
        .unwrap();
        job.canonicalize();
        validate(&job)
    };
    // Left-out deadlines are none (as the deployment watcher reads them): nothing to compare.
    assert_eq!(json(r#"{ "MaxParallel": 1, "Canary": 1 }"#), vec![]);
    assert_eq!(
        json(r#"{ "MaxParallel": 1, "MinHealthyTime": 600000000000 }"#),
        vec![]
    );

    let diags = json(r#"{ "MinHealthyTime": 60000000000, "HealthyDeadline": 30000000000 }"#);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].field, "min_healthy_time");
    assert_eq!(
        diags[0].message,
        "min_healthy_time (1m0s) must be less than healthy_deadline (30s)"
    );
    assert_eq!((diags[0].line, diags[0].file.as_str()), (None, ""));

    let diags = json(r#"{ "HealthyDeadline": 60000000000, "ProgressDeadline": 30000000000 }"#);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(
        diags[0].message,
        "healthy_deadline (1m0s) must be less than progress_deadline (30s)"
    );

    let diags = json(r#"{ "Stagger": -1, "HealthyDeadline": -1000000000 }"#);
    let fields: Vec<_> = diags.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["stagger", "healthy_deadline"], "{diags:#?}");
    assert!(diags.iter().all(Diagnostic::is_error));

    let diags = json(r#"{ "Canary": 0, "AutoPromote": true }"#);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].field, "auto_promote");
}
