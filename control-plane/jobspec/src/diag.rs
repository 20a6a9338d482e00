//! Diagnostics, and the structured keys that tie a diagnostic to a place in the job.
//!
//! Every diagnostic is produced together with a [`Key`]: the position of the offending
//! object in the typed job (group 0, task 1, service 0, …) plus the field name. Validation of a
//! typed job knows nothing about HCL; `parse` looks the key up in the [`SpanTable`] the HCL
//! converter filled in, to give the diagnostic its line and column.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The job is rejected.
    Error,
    /// The job is accepted, but probably not what the author meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A problem found in a jobspec, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The filename given to [`parse`](crate::parse), or the path of a `-var-file`; `""` for
    /// jobs submitted as JSON and for problems with `-var` options.
    pub file: String,
    /// 1-based line, `None` when unknown (jobs submitted as JSON).
    pub line: Option<usize>,
    /// 1-based column, counted in characters.
    pub column: Option<usize>,
    /// Where in the job, in human form: `job "hello" > group "web" > task "server"`.
    pub path: String,
    /// The attribute or block name: `driver`, `port`, `count`, …
    pub field: String,
    /// What is wrong, naming the value given and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// Whether this diagnostic rejects the job.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut location = self.file.clone();
        if let Some(line) = self.line {
            if !location.is_empty() {
                location.push(':');
            }
            location.push_str(&line.to_string());
            if let Some(column) = self.column {
                location.push_str(&format!(":{column}"));
            }
        }
        if !location.is_empty() {
            write!(f, "{location}: ")?;
        }
        write!(f, "{}: ", self.severity)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// One step from the job down to an object inside it, by index in the typed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Group(usize),
    Task(usize),
    /// A service of the enclosing group or task.
    Service(usize),
    Check(usize),
    Network(usize),
    /// Index into `NetworkResource::reserved_ports`.
    ReservedPort(usize),
    /// Index into `NetworkResource::dynamic_ports`.
    DynamicPort(usize),
    Restart,
    Resources,
    Config,
    Meta,
    Env,
    Constraint(usize),
    Affinity(usize),
    Spread(usize),
    /// Index into `Spread::spread_target`.
    SpreadTarget(usize),
    Update,
    Reschedule,
    Periodic,
    Parameterized,
    /// Index of the volume in the group's (name-ordered) volume map.
    Volume(usize),
    VolumeMount(usize),
    EphemeralDisk,
    Lifecycle,
    Artifact(usize),
    Template(usize),
    Logs,
    DispatchPayload,
    CheckRestart,
    /// A service's `connect` block, its `sidecar_service` and that one's `proxy`.
    Connect,
    SidecarService,
    Proxy,
    /// Index into `ConsulProxy::upstreams`.
    Upstream(usize),
    /// A docker `config { port_map { … } }` block.
    PortMap,
    /// The n-th `dynamic` block of the file (its own attributes, not what it generates).
    Dynamic(usize),
}

/// A field of an object in the job: the structured twin of a diagnostic's `path` and `field`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub node: Vec<Seg>,
    /// The attribute name; `""` for the block itself.
    pub field: String,
}

/// Where we are in a job while converting or validating it: the structured position and the
/// human-readable path that goes into diagnostics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub node: Vec<Seg>,
    labels: Vec<String>,
}

impl Scope {
    /// The scope of the job itself.
    pub fn job(id: &str) -> Scope {
        Scope {
            node: Vec::new(),
            labels: vec![if id.is_empty() {
                "job".to_string()
            } else {
                format!("job {id:?}")
            }],
        }
    }

    /// A top-level scope outside the job, like `variable "region"` or `locals`.
    pub fn top(label: impl Into<String>) -> Scope {
        Scope {
            node: Vec::new(),
            labels: vec![label.into()],
        }
    }

    /// A scope one level down.
    pub fn child(&self, seg: Seg, label: impl Into<String>) -> Scope {
        let mut child = self.clone();
        child.node.push(seg);
        child.labels.push(label.into());
        child
    }

    pub fn path(&self) -> String {
        self.labels.join(" > ")
    }

    pub fn key(&self, field: &str) -> Key {
        Key {
            node: self.node.clone(),
            field: field.to_string(),
        }
    }

    /// A diagnostic at this scope, not yet located in any file.
    pub fn diag(&self, severity: Severity, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            severity,
            file: String::new(),
            line: None,
            column: None,
            path: self.path(),
            field: field.to_string(),
            message,
        }
    }
}

/// The human label of a block: `group "web"`, or `service[0]` when it has no name.
pub(crate) fn named(kind: &str, name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("{kind}[{index}]")
    } else {
        format!("{kind} {name:?}")
    }
}

/// Byte spans of the blocks and attributes of a parsed file, by [`Key`].
#[derive(Debug, Default)]
pub(crate) struct SpanTable {
    spans: HashMap<Key, Range<usize>>,
}

impl SpanTable {
    pub fn insert(&mut self, key: Key, span: Range<usize>) {
        self.spans.entry(key).or_insert(span);
    }

    /// The span of the field, else of the closest enclosing block that has one.
    pub fn locate(&self, key: &Key) -> Option<Range<usize>> {
        if let Some(span) = self.spans.get(key) {
            return Some(span.clone());
        }
        let mut block = Key {
            node: key.node.clone(),
            field: String::new(),
        };
        loop {
            if let Some(span) = self.spans.get(&block) {
                return Some(span.clone());
            }
            block.node.pop()?;
        }
    }
}

/// Builds diagnostics located in one source file.
#[derive(Debug)]
pub(crate) struct Locator<'a> {
    file: &'a str,
    lines: LineIndex<'a>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, src: &'a str) -> Self {
        Locator {
            file,
            lines: LineIndex::new(src),
        }
    }

    pub fn file(&self) -> &'a str {
        self.file
    }

    /// A diagnostic at `scope`, located at the start of `span` when there is one.
    pub fn diag(
        &self,
        scope: &Scope,
        severity: Severity,
        field: &str,
        span: Option<Range<usize>>,
        message: String,
    ) -> Diagnostic {
        let mut diag = scope.diag(severity, field, message);
        diag.file = self.file.to_string();
        if let Some(span) = span {
            let (line, column) = self.lines.position(span.start);
            diag.line = Some(line);
            diag.column = Some(column);
        }
        diag
    }

    pub fn position(&self, offset: usize) -> (usize, usize) {
        self.lines.position(offset)
    }
}

/// Turns byte offsets into 1-based lines and columns (columns count characters).
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(src: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { src, starts }
    }

    pub fn position(&self, offset: usize) -> (usize, usize) {
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(line).copied().unwrap_or(0);
        let column = self
            .src
            .get(start..offset)
            .map_or(offset.saturating_sub(start), |s| s.chars().count());
        (line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag() -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            file: "examples/hello.hcl".into(),
            line: Some(12),
            column: Some(7),
            path: r#"job "hello" > group "web" > task "server""#.into(),
            field: "driver".into(),
            message: r#"unknown driver "dockr" (expected one of: docker, exec, raw_exec)"#.into(),
        }
    }

    #[test]
    fn display_has_every_part() {
        assert_eq!(
            diag().to_string(),
            r#"examples/hello.hcl:12:7: error: job "hello" > group "web" > task "server": driver: unknown driver "dockr" (expected one of: docker, exec, raw_exec)"#
        );
    }

    #[test]
    fn display_omits_empty_parts() {
        let d = Diagnostic {
            file: String::new(),
            line: None,
            column: None,
            field: String::new(),
            severity: Severity::Warning,
            ..diag()
        };
        assert_eq!(
            d.to_string(),
            r#"warning: job "hello" > group "web" > task "server": unknown driver "dockr" (expected one of: docker, exec, raw_exec)"#
        );
    }

    #[test]
    fn severity_serializes_lowercase() {
        let v = serde_json::to_value(diag()).unwrap();
        assert_eq!(v["severity"], "error");
        assert_eq!(v["line"], 12);
    }

    #[test]
    fn line_index_counts_characters() {
        let idx = LineIndex::new("ab\nçd\n\nx");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(3), (2, 1));
        assert_eq!(idx.position(5), (2, 2)); // after the two-byte 'ç'
        assert_eq!(idx.position(7), (3, 1));
        assert_eq!(idx.position(8), (4, 1));
        assert_eq!(idx.position(9), (4, 2)); // end of input
    }

    #[test]
    fn locate_falls_back_to_enclosing_block() {
        let mut t = SpanTable::default();
        let group = Scope::job("j").child(Seg::Group(0), "group \"g\"");
        t.insert(group.key(""), 10..20);
        t.insert(group.key("count"), 12..15);
        assert_eq!(t.locate(&group.key("count")), Some(12..15));
        let task = group.child(Seg::Task(0), "task \"t\"");
        assert_eq!(t.locate(&task.key("driver")), Some(10..20));
        assert_eq!(t.locate(&Scope::job("j").key("type")), None);
    }
}
