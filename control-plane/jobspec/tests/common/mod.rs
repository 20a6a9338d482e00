//! Helpers shared by the integration tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use flotilla_jobspec::{Diagnostic, ParseError, ParseOptions, Parsed, Severity, parse_with};
use flotilla_types::Job;

/// Parses `src` (as `test.hcl`) with options, panicking with the diagnostics on failure.
pub fn parsed_with(src: &str, opts: &ParseOptions) -> Parsed {
    match parse_with(src, "test.hcl", opts) {
        Ok(parsed) => parsed,
        Err(err) => panic!("unexpected errors:\n{err}"),
    }
}

pub fn parsed(src: &str) -> Parsed {
    parsed_with(src, &ParseOptions::default())
}

pub fn ok(src: &str) -> Job {
    parsed(src).job
}

pub fn errors_with(src: &str, opts: &ParseOptions) -> Vec<Diagnostic> {
    match parse_with(src, "test.hcl", opts) {
        Ok(parsed) => panic!("expected errors, got {:#?}", parsed.job),
        Err(ParseError { diagnostics }) => diagnostics,
    }
}

pub fn errors(src: &str) -> Vec<Diagnostic> {
    errors_with(src, &ParseOptions::default())
}

fn one(diags: Vec<Diagnostic>) -> Diagnostic {
    assert_eq!(
        diags.len(),
        1,
        "{}",
        diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    diags.into_iter().next().unwrap()
}

pub fn only_error(src: &str) -> Diagnostic {
    one(errors(src))
}

pub fn only_error_with(src: &str, opts: &ParseOptions) -> Diagnostic {
    one(errors_with(src, opts))
}

/// The one warning of a jobspec that parses.
pub fn only_warning(src: &str) -> Diagnostic {
    one(parsed(src).warnings)
}

/// Asserts a diagnostic's severity, line, field and the start of its path's last part.
pub fn assert_at(d: &Diagnostic, severity: Severity, line: usize, field: &str) {
    assert_eq!(d.severity, severity, "{d}");
    assert_eq!(d.file, "test.hcl", "{d}");
    assert_eq!(d.line, Some(line), "{d}");
    assert!(d.column.is_some(), "{d}");
    assert_eq!(d.field, field, "{d}");
}

/// A job with one group `g` holding `group_body` and one task `t` (raw_exec) holding
/// `task_body`. The group body starts on line 3 and the task body on line
/// `8 + lines(group_body)`: use [`task_line`].
pub fn job_with(group_body: &str, task_body: &str) -> String {
    format!(
        "job \"j\" {{\n  group \"g\" {{\n{group_body}    task \"t\" {{\n      driver = \"raw_exec\"\n      config {{\n        command = \"x\"\n      }}\n{task_body}    }}\n  }}\n}}\n"
    )
}

/// The line `task_body`'s first line lands on in [`job_with`].
pub fn task_line(group_body: &str) -> usize {
    8 + group_body.lines().count()
}
