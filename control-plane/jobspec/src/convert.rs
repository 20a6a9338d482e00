//! HCL body to typed [`Job`], checking the block and attribute schema and recording the span of
//! every block and attribute so later diagnostics can be located.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use flotilla_types::{
    Job, NetworkResource, Port, Resources, RestartPolicy, Service, ServiceCheck, Task, TaskGroup,
};
use hcl_edit::Span;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use serde_json::Value;

use crate::diag::{Diagnostic, Key, LineIndex, Scope, Seg, Severity, SpanTable, named};
use crate::duration::{format_duration, parse_duration};
use crate::expr::{describe, to_json};

/// The attributes and blocks allowed in one kind of block.
struct Schema {
    attrs: &'static [&'static str],
    blocks: &'static [&'static str],
}

impl Schema {
    /// Everything allowed, for "unknown …" messages.
    fn allowed(&self) -> String {
        let mut all: Vec<&str> = Vec::new();
        for name in self.attrs.iter().chain(self.blocks) {
            if !all.contains(name) {
                all.push(name);
            }
        }
        all.join(", ")
    }
}

const TOP: Schema = Schema {
    attrs: &[],
    blocks: &["job"],
};
const JOB: Schema = Schema {
    attrs: &[
        "type",
        "datacenters",
        "region",
        "namespace",
        "priority",
        "meta",
    ],
    blocks: &["group", "meta"],
};
const GROUP: Schema = Schema {
    attrs: &["count", "meta"],
    blocks: &["network", "service", "task", "restart", "meta"],
};
const TASK: Schema = Schema {
    attrs: &["driver", "kill_timeout", "kill_signal", "env", "meta"],
    blocks: &["config", "env", "resources", "restart", "service", "meta"],
};
const RESTART: Schema = Schema {
    attrs: &["attempts", "interval", "delay", "mode"],
    blocks: &[],
};
const NETWORK: Schema = Schema {
    attrs: &["mode"],
    blocks: &["port"],
};
const PORT: Schema = Schema {
    attrs: &["static", "to", "host_network"],
    blocks: &[],
};
const SERVICE: Schema = Schema {
    attrs: &["name", "port", "tags", "provider"],
    blocks: &["check"],
};
const CHECK: Schema = Schema {
    attrs: &[
        "name", "type", "path", "interval", "timeout", "method", "port",
    ],
    blocks: &[],
};
const RESOURCES: Schema = Schema {
    attrs: &["cpu", "memory"],
    blocks: &[],
};

/// The result of converting a parsed HCL body.
#[derive(Debug)]
pub(crate) struct Converted {
    /// `None` when the file has no `job` block.
    pub job: Option<Job>,
    pub errors: Vec<Diagnostic>,
    /// Fields that already have a conversion error; validation errors on them are noise.
    pub failed: HashSet<Key>,
    pub spans: SpanTable,
}

pub(crate) fn convert(body: &Body, src: &str, file: &str) -> Converted {
    let mut c = Converter {
        src,
        file,
        lines: LineIndex::new(src),
        errors: Vec::new(),
        failed: HashSet::new(),
        spans: SpanTable::default(),
    };
    let root = Scope::default();
    let top = c.fields(&root, body, &TOP);
    let mut blocks = top.blocks("job");
    let job = match blocks.next() {
        Some(block) => Some(c.job(block)),
        None => {
            c.error(
                &root,
                "job",
                Some(0..0),
                "no job block found (expected exactly one `job \"name\" { … }` block)".to_string(),
            );
            None
        }
    };
    for extra in blocks {
        c.error(
            &root,
            "job",
            extra.span(),
            "only one job block is allowed per file".to_string(),
        );
    }
    Converted {
        job,
        errors: c.errors,
        failed: c.failed,
        spans: c.spans,
    }
}

/// The attributes and blocks of one body that passed the schema check.
struct Fields<'b> {
    attrs: Vec<&'b Attribute>,
    blocks: Vec<&'b Block>,
}

impl<'b> Fields<'b> {
    fn attr(&self, name: &str) -> Option<&'b Attribute> {
        self.attrs.iter().copied().find(|a| a.key.as_str() == name)
    }

    fn blocks<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b Block> + 's {
        self.blocks
            .iter()
            .copied()
            .filter(move |b| b.ident.as_str() == name)
    }
}

struct Converter<'a> {
    src: &'a str,
    file: &'a str,
    lines: LineIndex<'a>,
    errors: Vec<Diagnostic>,
    failed: HashSet<Key>,
    spans: SpanTable,
}

impl Converter<'_> {
    // ---- diagnostics and spans ----

    fn error(&mut self, scope: &Scope, field: &str, span: Option<Range<usize>>, message: String) {
        let mut diag = scope.diag(Severity::Error, field, message);
        diag.file = self.file.to_string();
        if let Some(span) = span {
            let (line, column) = self.lines.position(span.start);
            diag.line = Some(line);
            diag.column = Some(column);
        }
        self.failed.insert(scope.key(field));
        self.errors.push(diag);
    }

    fn record(&mut self, scope: &Scope, field: &str, span: Option<Range<usize>>) {
        if let Some(span) = span {
            self.spans.insert(scope.key(field), span);
        }
    }

    /// Splits a body into the attributes and blocks `schema` allows, reporting the others, and
    /// records the span of each allowed attribute.
    fn fields<'b>(&mut self, scope: &Scope, body: &'b Body, schema: &Schema) -> Fields<'b> {
        let mut fields = Fields {
            attrs: Vec::new(),
            blocks: Vec::new(),
        };
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let name = attr.key.as_str();
                    if schema.attrs.contains(&name) {
                        self.record(scope, name, attr.span());
                        fields.attrs.push(attr);
                    } else if schema.blocks.contains(&name) {
                        self.error(
                            scope,
                            name,
                            attr.span(),
                            format!(
                                "{name:?} is a block: write `{name} {{ … }}`, not `{name} = …`"
                            ),
                        );
                    } else {
                        self.error(
                            scope,
                            name,
                            attr.span(),
                            format!("unknown attribute {name:?} (allowed: {})", schema.allowed()),
                        );
                    }
                }
                Structure::Block(block) => {
                    let name = block.ident.as_str();
                    if schema.blocks.contains(&name) {
                        fields.blocks.push(block);
                    } else if schema.attrs.contains(&name) {
                        self.error(
                            scope,
                            name,
                            block.span(),
                            format!(
                                "{name:?} is an attribute: write `{name} = …`, not `{name} {{ … }}`"
                            ),
                        );
                    } else {
                        self.error(
                            scope,
                            name,
                            block.span(),
                            format!("unknown block {name:?} (allowed: {})", schema.allowed()),
                        );
                    }
                }
            }
        }
        fields
    }

    /// The one block called `name`, reporting any repeats.
    fn single<'b>(&mut self, scope: &Scope, fields: &Fields<'b>, name: &str) -> Option<&'b Block> {
        let mut blocks = fields.blocks(name);
        let first = blocks.next();
        for dup in blocks {
            self.error(
                scope,
                name,
                dup.span(),
                format!("duplicate {name} block (only one is allowed here)"),
            );
        }
        first
    }

    /// The single label of a block like `group "web"`; `what` describes it for messages.
    fn one_label(block: &Block, what: &str) -> Result<String, String> {
        let kind = block.ident.as_str();
        match block.labels.as_slice() {
            [label] => Ok(label.as_str().to_string()),
            [] => Err(format!(
                "{kind} block needs a label ({what}), like `{kind} \"name\" {{ … }}`"
            )),
            labels => Err(format!(
                "{kind} block takes one label ({what}), got {}",
                labels.len()
            )),
        }
    }

    fn no_labels(&mut self, scope: &Scope, block: &Block) {
        if let Some(label) = block.labels.first() {
            let kind = block.ident.as_str();
            self.error(
                scope,
                kind,
                label.span().or(block.span()),
                format!("{kind} block takes no labels, got {:?}", label.as_str()),
            );
        }
    }

    // ---- values ----

    fn json(&mut self, scope: &Scope, attr: &Attribute) -> Option<Value> {
        self.expr_json(scope, attr.key.as_str(), &attr.value)
    }

    fn expr_json(&mut self, scope: &Scope, field: &str, expr: &Expression) -> Option<Value> {
        match to_json(expr, self.src) {
            Ok(value) => Some(value),
            Err(unsupported) => {
                self.error(scope, field, unsupported.span, unsupported.message);
                None
            }
        }
    }

    fn type_error(&mut self, scope: &Scope, attr: &Attribute, expected: &str, got: &Value) {
        self.error(
            scope,
            attr.key.as_str(),
            attr.span(),
            format!("expected {expected}, got {}", describe(got)),
        );
    }

    fn string(&mut self, scope: &Scope, attr: &Attribute) -> Option<String> {
        match self.json(scope, attr)? {
            Value::String(s) => Some(s),
            other => {
                self.type_error(scope, attr, "a string", &other);
                None
            }
        }
    }

    fn strings(&mut self, scope: &Scope, attr: &Attribute) -> Option<Vec<String>> {
        let value = self.json(scope, attr)?;
        let strings = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        });
        if strings.is_none() {
            self.type_error(scope, attr, "a list of strings", &value);
        }
        strings
    }

    /// A whole number within `min..=max`.
    fn integer(&mut self, scope: &Scope, attr: &Attribute, min: i64, max: i64) -> Option<i64> {
        let value = self.json(scope, attr)?;
        let Some(n) = value.as_i64() else {
            let expected = if value.as_u64().is_some() {
                format!("a whole number from {min} to {max}")
            } else {
                "a whole number".to_string()
            };
            self.type_error(scope, attr, &expected, &value);
            return None;
        };
        if !(min..=max).contains(&n) {
            self.error(
                scope,
                attr.key.as_str(),
                attr.span(),
                format!("{n} is out of range (expected {min} to {max})"),
            );
            return None;
        }
        Some(n)
    }

    fn unsigned<T: TryFrom<i64>>(
        &mut self,
        scope: &Scope,
        attr: &Attribute,
        max: i64,
    ) -> Option<T> {
        self.integer(scope, attr, 0, max)
            .and_then(|n| T::try_from(n).ok())
    }

    fn duration(&mut self, scope: &Scope, attr: &Attribute) -> Option<i64> {
        let value = self.json(scope, attr)?;
        let Value::String(text) = &value else {
            self.type_error(scope, attr, "a duration string like \"10s\"", &value);
            return None;
        };
        match parse_duration(text) {
            Ok(nanos) => Some(nanos),
            Err(message) => {
                self.error(scope, attr.key.as_str(), attr.span(), message);
                None
            }
        }
    }

    /// A duration that must be above zero when given (zero would mean "the default" once the
    /// job is canonicalized, which is not what an explicit `"0s"` asks for).
    fn positive_duration(&mut self, scope: &Scope, attr: &Attribute) -> Option<i64> {
        let nanos = self.duration(scope, attr)?;
        if nanos <= 0 {
            self.error(
                scope,
                attr.key.as_str(),
                attr.span(),
                format!(
                    "{} must be positive, got {}",
                    attr.key.as_str(),
                    format_duration(nanos)
                ),
            );
            return None;
        }
        Some(nanos)
    }

    /// A `meta`/`env` map, from `name { k = "v" }` blocks and/or a `name = { k = "v" }` attribute.
    /// Numbers and bools are turned into strings, as Nomad does.
    fn string_map(
        &mut self,
        scope: &Scope,
        fields: &Fields<'_>,
        name: &str,
        seg: Seg,
    ) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let inner = scope.child(seg, name);
        if let Some(attr) = fields.attr(name) {
            match self.json(scope, attr) {
                Some(Value::Object(entries)) => {
                    for (key, value) in entries {
                        match scalar_string(&value) {
                            Some(s) => {
                                map.insert(key, s);
                            }
                            None => self.error(
                                &inner,
                                &key,
                                attr.span(),
                                format!(
                                    "expected a string, number or bool, got {}",
                                    describe(&value)
                                ),
                            ),
                        }
                    }
                }
                Some(other) => self.type_error(scope, attr, "an object", &other),
                None => {}
            }
        }
        if let Some(block) = self.single(scope, fields, name) {
            self.no_labels(scope, block);
            self.record(&inner, "", block.span());
            for structure in block.body.iter() {
                match structure {
                    Structure::Attribute(attr) => {
                        let key = attr.key.as_str();
                        self.record(&inner, key, attr.span());
                        let Some(value) = self.json(&inner, attr) else {
                            continue;
                        };
                        match scalar_string(&value) {
                            Some(s) => {
                                map.insert(key.to_string(), s);
                            }
                            None => {
                                self.type_error(&inner, attr, "a string, number or bool", &value);
                            }
                        }
                    }
                    Structure::Block(nested) => self.error(
                        &inner,
                        nested.ident.as_str(),
                        nested.span(),
                        format!(
                            "unknown block {:?} ({name} holds only `key = \"value\"` attributes)",
                            nested.ident.as_str()
                        ),
                    ),
                }
            }
        }
        map
    }

    // ---- blocks ----

    fn job(&mut self, block: &Block) -> Job {
        let id = match Self::one_label(block, "the job ID") {
            Ok(id) => id,
            Err(message) => {
                let scope = Scope::job("");
                self.error(&scope, "job", block.span(), message);
                self.failed.insert(scope.key("id"));
                String::new()
            }
        };
        let scope = Scope::job(&id);
        self.record(&scope, "", block.span());
        let f = self.fields(&scope, &block.body, &JOB);
        let mut job = Job {
            name: id.clone(),
            id,
            ..Default::default()
        };
        if let Some(a) = f.attr("type") {
            job.job_type = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("datacenters") {
            job.datacenters = self.strings(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("region") {
            job.region = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("namespace") {
            job.namespace = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("priority") {
            job.priority = self
                .integer(&scope, a, 1, 100)
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or_default();
        }
        job.meta = self.string_map(&scope, &f, "meta", Seg::Meta);

        let job_type = if job.job_type.is_empty() {
            flotilla_types::JOB_TYPE_SERVICE
        } else {
            job.job_type.as_str()
        };
        let default_policy = RestartPolicy::default_for(job_type);
        for (i, g) in f.blocks("group").enumerate() {
            let group = self.group(&scope, i, g, &default_policy);
            job.task_groups.push(group);
        }
        job
    }

    fn group(
        &mut self,
        job: &Scope,
        index: usize,
        block: &Block,
        default_policy: &RestartPolicy,
    ) -> TaskGroup {
        let (scope, name) = self.labeled(job, Seg::Group(index), index, block, "the group name");
        let f = self.fields(&scope, &block.body, &GROUP);
        let mut group = TaskGroup {
            name,
            count: 1,
            ..Default::default()
        };
        if let Some(a) = f.attr("count") {
            group.count = self.unsigned(&scope, a, i64::from(u32::MAX)).unwrap_or(1);
        }
        group.meta = self.string_map(&scope, &f, "meta", Seg::Meta);
        group.restart_policy = self
            .single(&scope, &f, "restart")
            .map(|b| self.restart(&scope, b, default_policy));
        for (i, b) in f.blocks("network").enumerate() {
            let network = self.network(&scope, i, b);
            group.networks.push(network);
        }
        for (i, b) in f.blocks("service").enumerate() {
            let service = self.service(&scope, i, b);
            group.services.push(service);
        }
        let task_policy = group.restart_policy.as_ref().unwrap_or(default_policy);
        for (i, b) in f.blocks("task").enumerate() {
            let task = self.task(&scope, i, b, task_policy);
            group.tasks.push(task);
        }
        group
    }

    /// The scope and name of a block with one label (a group or a task).
    fn labeled(
        &mut self,
        parent: &Scope,
        seg: Seg,
        index: usize,
        block: &Block,
        what: &str,
    ) -> (Scope, String) {
        let kind = block.ident.as_str();
        let name = match Self::one_label(block, what) {
            Ok(name) => name,
            Err(message) => {
                let scope = parent.child(seg, named(kind, "", index));
                self.error(&scope, kind, block.span(), message);
                self.failed.insert(scope.key("name"));
                String::new()
            }
        };
        let scope = parent.child(seg, named(kind, &name, index));
        self.record(&scope, "", block.span());
        (scope, name)
    }

    /// A `restart` block, filling what it leaves out from `base` as Nomad does.
    fn restart(&mut self, parent: &Scope, block: &Block, base: &RestartPolicy) -> RestartPolicy {
        let scope = parent.child(Seg::Restart, "restart");
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span());
        let f = self.fields(&scope, &block.body, &RESTART);
        let mut policy = base.clone();
        if let Some(a) = f.attr("attempts") {
            policy.attempts = self
                .unsigned(&scope, a, i64::from(u32::MAX))
                .unwrap_or(policy.attempts);
        }
        if let Some(a) = f.attr("interval") {
            policy.interval = self.duration(&scope, a).unwrap_or(policy.interval);
        }
        if let Some(a) = f.attr("delay") {
            policy.delay = self.duration(&scope, a).unwrap_or(policy.delay);
        }
        if let Some(a) = f.attr("mode") {
            policy.mode = self.string(&scope, a).unwrap_or(policy.mode);
        }
        policy
    }

    fn network(&mut self, group: &Scope, index: usize, block: &Block) -> NetworkResource {
        let label = if index == 0 {
            "network".to_string()
        } else {
            format!("network[{index}]")
        };
        let scope = group.child(Seg::Network(index), label);
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span());
        let f = self.fields(&scope, &block.body, &NETWORK);
        let mut network = NetworkResource {
            mode: "host".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("mode") {
            network.mode = self.string(&scope, a).unwrap_or(network.mode);
        }
        for b in f.blocks("port") {
            self.port(&scope, b, &mut network);
        }
        network
    }

    /// A `port "label" { … }` block: reserved when it has `static`, dynamic otherwise.
    fn port(&mut self, network: &Scope, block: &Block, into: &mut NetworkResource) {
        let label = Self::one_label(block, "the port label");
        let name = label.as_deref().unwrap_or_default();
        let is_static = block.body.has_attribute("static");
        let (seg, index) = if is_static {
            let i = into.reserved_ports.len();
            (Seg::ReservedPort(i), i)
        } else {
            let i = into.dynamic_ports.len();
            (Seg::DynamicPort(i), i)
        };
        let scope = network.child(seg, named("port", name, index));
        self.record(&scope, "", block.span());
        if let Err(message) = &label {
            self.error(&scope, "port", block.span(), message.clone());
            self.failed.insert(scope.key("label"));
        }
        let f = self.fields(&scope, &block.body, &PORT);
        let mut port = Port {
            label: name.to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("static") {
            match self.integer(&scope, a, 1, i64::from(u16::MAX)) {
                Some(n) => port.value = u16::try_from(n).unwrap_or_default(),
                None => {
                    // Keep the port (as static 0) so services can still refer to its label.
                    self.failed.insert(scope.key("static"));
                }
            }
        }
        if let Some(a) = f.attr("to") {
            port.to = self.unsigned(&scope, a, i64::from(u16::MAX)).unwrap_or(0);
        }
        if let Some(a) = f.attr("host_network") {
            port.host_network = self.string(&scope, a).unwrap_or_default();
        }
        if is_static {
            into.reserved_ports.push(port);
        } else {
            into.dynamic_ports.push(port);
        }
    }

    fn service(&mut self, parent: &Scope, index: usize, block: &Block) -> Service {
        let name = peek_string(&block.body, "name");
        let scope = parent.child(Seg::Service(index), named("service", &name, index));
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span());
        let f = self.fields(&scope, &block.body, &SERVICE);
        let mut service = Service::default();
        if let Some(a) = f.attr("name") {
            service.name = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("port") {
            service.port_label = self.port_label(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("tags") {
            service.tags = self.strings(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("provider") {
            service.provider = self.string(&scope, a).unwrap_or_default();
        }
        for (i, b) in f.blocks("check").enumerate() {
            let check = self.check(&scope, i, b);
            service.checks.push(check);
        }
        service
    }

    /// A service or check `port`: a label, or a port number (kept as its decimal string).
    fn port_label(&mut self, scope: &Scope, attr: &Attribute) -> Option<String> {
        match self.json(scope, attr)? {
            Value::String(s) => Some(s),
            Value::Number(n) if n.is_u64() => Some(n.to_string()),
            other => {
                self.type_error(scope, attr, "a port label or number", &other);
                None
            }
        }
    }

    fn check(&mut self, service: &Scope, index: usize, block: &Block) -> ServiceCheck {
        let name = peek_string(&block.body, "name");
        let scope = service.child(Seg::Check(index), named("check", &name, index));
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span());
        let f = self.fields(&scope, &block.body, &CHECK);
        let mut check = ServiceCheck::default();
        if let Some(a) = f.attr("name") {
            check.name = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("type") {
            check.check_type = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("path") {
            check.path = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("interval") {
            check.interval = self.positive_duration(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("timeout") {
            check.timeout = self.positive_duration(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("method") {
            check.method = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("port") {
            check.port_label = self.port_label(&scope, a).unwrap_or_default();
        }
        check
    }

    fn task(
        &mut self,
        group: &Scope,
        index: usize,
        block: &Block,
        group_policy: &RestartPolicy,
    ) -> Task {
        let (scope, name) = self.labeled(group, Seg::Task(index), index, block, "the task name");
        let f = self.fields(&scope, &block.body, &TASK);
        let mut task = Task {
            name,
            ..Default::default()
        };
        if let Some(a) = f.attr("driver") {
            task.driver = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("kill_timeout") {
            task.kill_timeout = self.duration(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("kill_signal") {
            task.kill_signal = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(b) = self.single(&scope, &f, "config") {
            let config = scope.child(Seg::Config, "config");
            self.no_labels(&config, b);
            self.record(&config, "", b.span());
            task.config = self.config_body(&config, &b.body).into_iter().collect();
        }
        task.env = self.string_map(&scope, &f, "env", Seg::Env);
        if let Some(b) = self.single(&scope, &f, "resources") {
            task.resources = self.resources(&scope, b);
        }
        task.restart_policy = self
            .single(&scope, &f, "restart")
            .map(|b| self.restart(&scope, b, group_policy));
        for (i, b) in f.blocks("service").enumerate() {
            let service = self.service(&scope, i, b);
            task.services.push(service);
        }
        task.meta = self.string_map(&scope, &f, "meta", Seg::Meta);
        task
    }

    fn resources(&mut self, task: &Scope, block: &Block) -> Resources {
        let scope = task.child(Seg::Resources, "resources");
        self.no_labels(&scope, block);
        self.record(&scope, "", block.span());
        let f = self.fields(&scope, &block.body, &RESOURCES);
        let mut resources = Resources::default();
        if let Some(a) = f.attr("cpu") {
            resources.cpu = self.unsigned(&scope, a, i64::MAX).unwrap_or_default();
        }
        if let Some(a) = f.attr("memory") {
            resources.memory_mb = self.unsigned(&scope, a, i64::MAX).unwrap_or_default();
        }
        resources
    }

    /// A driver `config` body, free-form: attributes become JSON values, nested blocks JSON
    /// objects (nested under their labels; a repeated block becomes a list).
    fn config_body(&mut self, scope: &Scope, body: &Body) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    self.record(scope, key, attr.span());
                    if let Some(value) = self.json(scope, attr) {
                        map.insert(key.to_string(), value);
                    }
                }
                Structure::Block(block) => {
                    let mut value = Value::Object(self.config_body(scope, &block.body));
                    for label in block.labels.iter().rev() {
                        let mut wrapper = serde_json::Map::new();
                        wrapper.insert(label.as_str().to_string(), value);
                        value = Value::Object(wrapper);
                    }
                    let key = block.ident.as_str().to_string();
                    match map.remove(&key) {
                        None => {
                            map.insert(key, value);
                        }
                        Some(Value::Array(mut items)) => {
                            items.push(value);
                            map.insert(key, Value::Array(items));
                        }
                        Some(Value::Object(mut existing))
                            if !block.labels.is_empty()
                                && disjoint(&existing, value.as_object()) =>
                        {
                            if let Value::Object(more) = value {
                                existing.extend(more);
                            }
                            map.insert(key, Value::Object(existing));
                        }
                        Some(existing) => {
                            map.insert(key, Value::Array(vec![existing, value]));
                        }
                    }
                }
            }
        }
        map
    }
}

/// Whether two labeled config blocks can be merged into one object without losing anything.
fn disjoint(
    a: &serde_json::Map<String, Value>,
    b: Option<&serde_json::Map<String, Value>>,
) -> bool {
    b.is_some_and(|b| b.keys().all(|k| !a.contains_key(k)))
}

/// A string, number or bool as a string (for `meta` and `env`).
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value of a plain string attribute, for naming a block in paths before it is converted.
fn peek_string(body: &Body, key: &str) -> String {
    match body.get_attribute(key).map(|a| &a.value) {
        Some(Expression::String(s)) => s.value().clone(),
        _ => String::new(),
    }
}
