//! Nomad-style HCL jobspecs parsed into jobs, with errors that name file, line and field.
//!
//! This crate is the edge where an operator's jobspec becomes a typed
//! [`flotilla_types::Job`]. It does three things:
//!
//! - [`parse_with`] (and [`parse`], its form without options) reads HCL text into a [`Job`],
//!   without canonicalizing it. The Nomad jobspec subset Flotilla supports:
//!   - HCL2: `variable` blocks with values from [`ParseOptions`] (`-var`, `-var-file`),
//!     `locals`, `var.*`/`local.*` references (also inside `"${…}"` templates), heredocs,
//!     `dynamic` blocks, and the functions `file`, `format`, `join`, `lower`, `upper`, `concat`,
//!     `merge`;
//!   - `job` (type, datacenters, region, namespace, priority, meta, constraint, affinity, spread,
//!     update, periodic, parameterized), `group` (count, constraint, affinity, spread, network,
//!     service (tags, canary_tags, check), restart, reschedule, update, volume,
//!     ephemeral_disk, meta, shutdown_delay) and `task` (driver, config, env, resources,
//!     lifecycle, artifact, template, logs, user, volume_mount, dispatch_payload, kill_timeout,
//!     kill_signal, shutdown_delay, service, constraint, affinity), with
//!     Nomad 0.x forms translated: task `resources { network { … } }` ports join the group
//!     network, and docker `config { port_map { … } }` sets the ports' `to`;
//!   - services' `connect` blocks: `native`, and `sidecar_service` (tags, port) with
//!     `proxy { upstreams { … } }` (destination name and namespace, local bind address and
//!     port, datacenter), served by the node proxy.
//!
//!   Runtime interpolations such as `"${NOMAD_PORT_http}"` or `"${node.unique.name}"` are kept
//!   literally for the node to expand. Nomad features outside the subset are errors when
//!   ignoring them would change what runs (`vault`, CSI volumes, Connect gateways, devices, …) and
//!   warnings otherwise (`scaling`, `migrate`, …). Unknown blocks and attributes, wrong types,
//!   bad durations and syntax errors are all reported at once, each located by file, line and
//!   column.
//! - [`validate`] checks the semantics of a typed job (drivers, port labels, checks, Connect
//!   upstreams, restart and reschedule policies, update strategies as Nomad's
//!   `UpdateStrategy.Validate` and `Job.Warnings` check them, shutdown delays, constraints,
//!   affinities, spreads, volumes, templates, artifacts, …). It serves jobs submitted as JSON as
//!   well; `parse` runs it on the canonicalized job and maps its findings back to the HCL
//!   source.
//! - [`parse_config_entry`] reads a Consul config entry (service-defaults, service-router,
//!   service-splitter, service-resolver) from HCL or JSON, and [`validate_config_entry`] checks
//!   one, for the CLI and the HTTP API alike.
//! - [`parse_duration`] reads Go duration strings (`"10s"`, `"1m30s"`) into nanoseconds.
//!
//! Every problem is a [`Diagnostic`]: severity, file, line, column, a human path like
//! `job "hello" > group "web" > task "server"`, the field, and a message naming the value given
//! and what was expected. Its `Display` is the one-line form tools print:
//! `examples/hello.hcl:12:7: error: job "hello" > group "web" > task "server": driver: unknown driver "dockr" (expected one of: docker, exec, raw_exec)`.
//!
//! ```
//! use flotilla_jobspec::{ParseOptions, parse_with};
//!
//! let src = r#"
//! variable "command" {
//!   type    = string
//!   default = "sleep"
//! }
//! job "hello" {
//!   group "web" {
//!     task "server" {
//!       driver = "raw_exec"
//!       config { command = var.command }
//!     }
//!   }
//! }
//! "#;
//! let parsed = flotilla_jobspec::parse(src, "hello.hcl").unwrap();
//! assert_eq!(parsed.job.task_groups[0].count, 1);
//!
//! let opts = ParseOptions {
//!     vars: vec![("command".into(), "true".into())],
//!     ..ParseOptions::default()
//! };
//! let parsed = parse_with(src, "hello.hcl", &opts).unwrap();
//! assert_eq!(parsed.job.task_groups[0].tasks[0].config["command"], "true");
//! ```

mod config_entry;
mod convert;
mod diag;
mod duration;
mod expr;
mod funcs;
mod validate;
mod vars;

use std::path::PathBuf;

use flotilla_types::Job;

pub use config_entry::{parse_config_entry, validate_config_entry};
pub use diag::{Diagnostic, Severity};
pub use duration::parse_duration;
pub use validate::validate;

/// A successfully parsed jobspec: the job (not canonicalized) and any warnings.
#[derive(Debug)]
pub struct Parsed {
    pub job: Job,
    pub warnings: Vec<Diagnostic>,
}

/// A jobspec that cannot be accepted; `diagnostics` holds every error found: problems with the
/// options (`-var`, `-var-file`) first, then the jobspec's in source order.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(.diagnostics))]
pub struct ParseError {
    pub diagnostics: Vec<Diagnostic>,
}

fn lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Inputs of a parse besides the jobspec text, as `nomad job run` takes them.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// `-var name=value` options, in order (later wins). A value is taken as a string unless
    /// the variable's `type` is number, bool, a list or a map; then it is read as an HCL value
    /// (`-var count=3`, `-var 'dcs=["a","b"]'`).
    pub vars: Vec<(String, String)>,
    /// `-var-file` paths, in order (later wins; any `-var` beats them all). Each holds HCL
    /// `name = value` attributes.
    pub var_files: Vec<PathBuf>,
    /// The directory `file()` reads relative paths from, normally the jobspec's directory.
    /// `None` disables `file()`: a jobspec that arrived over the network must not read the
    /// server's files.
    pub base_dir: Option<PathBuf>,
}

/// [`parse_with`] and no options: variables take their defaults, and `file()` is disabled.
pub fn parse(src: &str, filename: &str) -> Result<Parsed, ParseError> {
    parse_with(src, filename, &ParseOptions::default())
}

/// Parse HCL text into a job. `filename` is only used in messages (`file()` reads relative to
/// [`ParseOptions::base_dir`]).
///
/// The job is not canonicalized (call [`Job::canonicalize`]); once it is, it passes
/// [`validate`]. On failure every error found is returned, not just the first: problems with the
/// variables, schema and type errors from the whole file, plus [`validate`]'s findings located
/// at the offending HCL attribute or block. A syntax error stops parsing and is reported alone.
/// An HCL syntax error, located: parsing stops there.
pub(crate) fn syntax_error(filename: &str, err: &hcl_edit::parser::Error) -> ParseError {
    let location = err.location();
    ParseError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: filename.to_string(),
            line: Some(location.line()),
            column: Some(location.column()),
            path: String::new(),
            field: String::new(),
            message: format!("syntax error: {}", err.message()),
        }],
    }
}

pub fn parse_with(src: &str, filename: &str, opts: &ParseOptions) -> Result<Parsed, ParseError> {
    let body = hcl_edit::parser::parse_body(src).map_err(|e| syntax_error(filename, &e))?;

    let resolved = vars::resolve(&body, src, filename, opts);
    let converted = convert::convert(&body, src, filename, &resolved.env);
    let mut errors = resolved.errors;
    errors.extend(converted.errors);
    let mut warnings = resolved.warnings;
    warnings.extend(converted.warnings);
    let Some(job) = converted.job else {
        return Err(ParseError {
            diagnostics: sorted(errors, filename),
        });
    };

    let mut canonical = job.clone();
    canonical.canonicalize();
    let lines = diag::LineIndex::new(src);
    for (key, mut diagnostic) in validate::validate_keyed(&canonical) {
        if converted.failed.contains(&key) {
            continue;
        }
        diagnostic.file = filename.to_string();
        if let Some(span) = converted.spans.locate(&key) {
            let (line, column) = lines.position(span.start);
            diagnostic.line = Some(line);
            diagnostic.column = Some(column);
        }
        match diagnostic.severity {
            Severity::Error => errors.push(diagnostic),
            Severity::Warning => warnings.push(diagnostic),
        }
    }

    if errors.is_empty() {
        Ok(Parsed {
            job,
            warnings: sorted(warnings, filename),
        })
    } else {
        Err(ParseError {
            diagnostics: sorted(errors, filename),
        })
    }
}

/// Diagnostics about the options and var-files first, then the jobspec's in source order.
fn sorted(mut diagnostics: Vec<Diagnostic>, filename: &str) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.file == filename, d.line, d.column));
    diagnostics
}
