//! Nomad-style HCL jobspecs parsed into jobs, with errors that name file, line and field.
//!
//! This crate is the edge where an operator's jobspec becomes a typed
//! [`flotilla_types::Job`]. It does three things:
//!
//! - [`parse`] reads HCL text (the Nomad jobspec subset Flotilla supports: `job`, `group`,
//!   `task`, `network`/`port`, `service`/`check`, `restart`, `resources`, `config`, `env`,
//!   `meta`) into a [`Job`], without canonicalizing it. Runtime interpolations such as
//!   `"${NOMAD_PORT_http}"` or `"${node.unique.name}"` are kept literally for the node to expand.
//!   Unknown blocks and attributes, wrong types, bad durations and syntax errors are all
//!   reported at once, each located by file, line and column.
//! - [`validate`] checks the semantics of a typed job (drivers, port labels, checks, restart
//!   policies, unique names, …). It serves jobs submitted as JSON as well; `parse` runs it on the
//!   canonicalized job and maps its findings back to the HCL source.
//! - [`parse_duration`] reads Go duration strings (`"10s"`, `"1m30s"`) into nanoseconds.
//!
//! Every problem is a [`Diagnostic`]: severity, file, line, column, a human path like
//! `job "hello" > group "web" > task "server"`, the field, and a message naming the value given
//! and what was expected. Its `Display` is the one-line form tools print:
//! `examples/hello.hcl:12:7: error: job "hello" > group "web" > task "server": driver: unknown driver "dockr" (expected one of: docker, exec, raw_exec)`.
//!
//! ```
//! let src = r#"
//! job "hello" {
//!   group "web" {
//!     task "server" {
//!       driver = "raw_exec"
//!       config { command = "sleep" }
//!     }
//!   }
//! }
//! "#;
//! let parsed = flotilla_jobspec::parse(src, "hello.hcl").unwrap();
//! assert_eq!(parsed.job.task_groups[0].count, 1);
//! ```

mod convert;
mod diag;
mod duration;
mod expr;
mod validate;

use flotilla_types::Job;

pub use diag::{Diagnostic, Severity};
pub use duration::parse_duration;
pub use validate::validate;

/// A successfully parsed jobspec: the job (not canonicalized) and any warnings.
#[derive(Debug)]
pub struct Parsed {
    pub job: Job,
    pub warnings: Vec<Diagnostic>,
}

/// A jobspec that cannot be accepted; `diagnostics` holds every error found, in source order.
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

/// Parse HCL text into a job. `filename` is only used in messages.
///
/// The job is not canonicalized (call [`Job::canonicalize`]); once it is, it passes
/// [`validate`]. On failure every error found is returned, not just the first: schema and type
/// errors from the whole file, plus [`validate`]'s findings located at the offending HCL
/// attribute or block. A syntax error stops parsing and is reported alone.
pub fn parse(src: &str, filename: &str) -> Result<Parsed, ParseError> {
    let body = match hcl_edit::parser::parse_body(src) {
        Ok(body) => body,
        Err(err) => {
            let location = err.location();
            return Err(ParseError {
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    file: filename.to_string(),
                    line: Some(location.line()),
                    column: Some(location.column()),
                    path: String::new(),
                    field: String::new(),
                    message: format!("syntax error: {}", err.message()),
                }],
            });
        }
    };

    let converted = convert::convert(&body, src, filename);
    let mut errors = converted.errors;
    let mut warnings = Vec::new();
    let Some(job) = converted.job else {
        return Err(ParseError {
            diagnostics: errors,
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
        Ok(Parsed { job, warnings })
    } else {
        errors.sort_by_key(|d| (d.line, d.column));
        Err(ParseError {
            diagnostics: errors,
        })
    }
}
