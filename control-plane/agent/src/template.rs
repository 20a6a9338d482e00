//! `template` blocks: files rendered into the task directory before the task starts.
//!
//! The renderer is a small subset of Go's `text/template` as Nomad's templates use it:
//! literal text, `{{ env "NAME" }}` (a variable of the task's environment, empty when unset),
//! comments (`{{/* … */}}`) and the whitespace trim markers `{{- ` and ` -}}`. Any other action
//! is an error naming the template and the line. Templates render once per task start; there is
//! no Consul or Vault data that could change, so `change_mode` has nothing to react to.
//!
//! With `envvars = true` the rendered `KEY=value` lines are added to the task's environment.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use flotilla_proto::agent::v1 as pb;

/// A template that could not be rendered, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    /// The template's destination (how Nomad names templates).
    pub template: String,
    /// The 1-based line of the offending action, when the error is about the text.
    pub line: Option<usize>,
    pub message: String,
}

impl TemplateError {
    fn new(template: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            template: template.to_string(),
            line,
            message: message.into(),
        }
    }
}

/// Renders `text` with the action delimiters `left` and `right` (empty means `{{` / `}}`).
/// `name` identifies the template in errors.
pub fn render(
    name: &str,
    text: &str,
    left: &str,
    right: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    let left = if left.is_empty() { "{{" } else { left };
    let right = if right.is_empty() { "}}" } else { right };
    let line_at = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = text[pos..].find(left) {
        let start = pos + found;
        let line = line_at(start);
        let mut literal = &text[pos..start];
        let mut inner_start = start + left.len();
        // `{{- ` trims the whitespace before the action.
        if text[inner_start..].starts_with('-')
            && text[inner_start + 1..].starts_with(char::is_whitespace)
        {
            literal = literal.trim_end();
            inner_start += 1;
        }
        out.push_str(literal);
        let Some(len) = text[inner_start..].find(right) else {
            return Err(TemplateError::new(
                name,
                Some(line),
                format!("unclosed action: {left} without {right}"),
            ));
        };
        let mut inner = &text[inner_start..inner_start + len];
        pos = inner_start + len + right.len();
        // ` -}}` trims the whitespace after the action.
        let trim_after =
            inner.ends_with('-') && inner[..inner.len() - 1].ends_with(char::is_whitespace);
        if trim_after {
            inner = &inner[..inner.len() - 1];
        }
        let value = action(inner.trim(), env)
            .map_err(|message| TemplateError::new(name, Some(line), message))?;
        out.push_str(value);
        if trim_after {
            let rest = &text[pos..];
            pos += rest.len() - rest.trim_start().len();
        }
    }
    out.push_str(&text[pos..]);
    Ok(out)
}

/// Evaluates one action (without its delimiters).
fn action<'a>(inner: &str, env: &'a BTreeMap<String, String>) -> Result<&'a str, String> {
    if inner.starts_with("/*") && inner.ends_with("*/") {
        return Ok("");
    }
    if inner.is_empty() {
        return Err("empty action".into());
    }
    let unsupported =
        || format!("unsupported action {inner:?}: only `env \"NAME\"` and comments are supported");
    let Some(arg) = inner.strip_prefix("env") else {
        return Err(unsupported());
    };
    if !arg.starts_with(char::is_whitespace) {
        return Err(unsupported());
    }
    let (var, rest) = string_literal(arg.trim_start()).ok_or_else(|| {
        format!(
            "env: expected a quoted variable name such as env \"NOMAD_ALLOC_ID\", got {inner:?}"
        )
    })?;
    if !rest.trim().is_empty() {
        return Err(unsupported());
    }
    Ok(env.get(&var).map(String::as_str).unwrap_or(""))
}

/// A Go string literal at the start of `s` (`"…"` with backslash escapes, or `` `…` ``) and
/// what follows it.
fn string_literal(s: &str) -> Option<(String, &str)> {
    if let Some(raw) = s.strip_prefix('`') {
        let end = raw.find('`')?;
        return Some((raw[..end].to_string(), &raw[end + 1..]));
    }
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// Parses rendered `KEY=value` lines (blank lines and `#` comments skipped, an optional
/// `export ` prefix, values optionally in matching quotes).
pub fn parse_env_lines(name: &str, text: &str) -> Result<Vec<(String, String)>, TemplateError> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(TemplateError::new(
                name,
                Some(i + 1),
                format!("envvars: expected KEY=value, got {line:?}"),
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(TemplateError::new(
                name,
                Some(i + 1),
                format!("envvars: invalid variable name {key:?}"),
            ));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.push((key.to_string(), value.to_string()));
    }
    Ok(vars)
}

/// `rel` inside `base`: relative, and never climbing above `base`.
pub fn within(base: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut out = base.to_path_buf();
    let mut depth = 0usize;
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => {
                out.pop();
                depth -= 1;
            }
            Component::ParentDir => {
                return Err(format!("{rel:?} leaves the task directory"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{rel:?} must be relative to the task directory"));
            }
        }
    }
    if depth == 0 {
        return Err(format!("{rel:?} names the task directory itself"));
    }
    Ok(out)
}

/// Parses `perms` (octal such as `"0644"`); empty means 0644.
fn parse_perms(perms: &str) -> Result<u32, String> {
    let p = perms.trim();
    if p.is_empty() {
        return Ok(0o644);
    }
    u32::from_str_radix(p.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("perms: expected an octal mode such as \"0644\", got {perms:?}"))
}

/// Renders `tmpl` into the task directory. Returns the variables to add to the task's
/// environment (empty unless `envvars`).
pub fn render_into(
    task_dir: &Path,
    tmpl: &pb::Template,
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, TemplateError> {
    use std::os::unix::fs::PermissionsExt;

    let name = tmpl.dest_path.as_str();
    let err = |message: String| TemplateError::new(name, None, message);
    if name.trim().is_empty() {
        return Err(err("destination: must not be empty".into()));
    }
    let dest = within(task_dir, name).map_err(|m| err(format!("destination: {m}")))?;
    let mode = parse_perms(&tmpl.perms).map_err(err)?;
    let text = if !tmpl.embedded_tmpl.is_empty() {
        tmpl.embedded_tmpl.clone()
    } else if !tmpl.source_path.is_empty() {
        let source =
            within(task_dir, &tmpl.source_path).map_err(|m| err(format!("source: {m}")))?;
        std::fs::read_to_string(&source)
            .map_err(|e| err(format!("reading source {}: {e}", source.display())))?
    } else {
        // Nomad renders an empty file for a template without data.
        String::new()
    };
    let rendered = render(name, &text, &tmpl.left_delim, &tmpl.right_delim, env)?;
    let vars = if tmpl.envvars {
        parse_env_lines(name, &rendered)?
    } else {
        Vec::new()
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| err(format!("creating {}: {e}", parent.display())))?;
    }
    // Write then rename, so the task never reads a half-written file.
    let tmp = dest.with_extension("flotilla-tmp");
    std::fs::write(&tmp, rendered.as_bytes())
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, &dest))
        .map_err(|e| err(format!("writing {}: {e}", dest.display())))?;
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("NOMAD_ALLOC_ID".to_string(), "a-1".to_string()),
            ("PORT".to_string(), "8080".to_string()),
        ])
    }

    #[test]
    fn renders_env_and_text() {
        let out = render(
            "t",
            "id={{ env \"NOMAD_ALLOC_ID\" }} port={{env `PORT`}} none=[{{ env \"NOPE\" }}]\n",
            "",
            "",
            &env(),
        )
        .unwrap();
        assert_eq!(out, "id=a-1 port=8080 none=[]\n");
        assert_eq!(render("t", "plain", "", "", &env()).unwrap(), "plain");
        assert_eq!(render("t", "", "", "", &env()).unwrap(), "");
    }

    #[test]
    fn comments_trim_markers_and_delimiters() {
        let out = render("t", "a  {{- /* gone */ -}}  b {{/* x */}}c", "", "", &env()).unwrap();
        assert_eq!(out, "ab c");
        let out = render("t", "{{ x }} [[ env \"PORT\" ]]", "[[", "]]", &env()).unwrap();
        assert_eq!(out, "{{ x }} 8080");
        // `{{-3}}` is not a trim marker (no space): it is an (unsupported) action.
        assert!(render("t", "{{-3}}", "", "", &env()).is_err());
    }

    #[test]
    fn errors_name_the_template_and_line() {
        let err = render(
            "local/app.conf",
            "ok\nok\nx={{ key \"a/b\" }}\n",
            "",
            "",
            &env(),
        )
        .unwrap_err();
        assert_eq!(err.line, Some(3));
        let text = err.to_string();
        assert!(
            text.contains("local/app.conf") && text.contains("line 3") && text.contains("key"),
            "{text}"
        );
        let err = render("t", "a\n{{ env \"X\"", "", "", &env()).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("unclosed"), "{err}");
        let err = render("t", "{{ env X }}", "", "", &env()).unwrap_err();
        assert!(err.message.contains("quoted"), "{err}");
        let err = render("t", "{{ env \"X\" | upper }}", "", "", &env()).unwrap_err();
        assert!(err.message.contains("unsupported"), "{err}");
        let err = render("t", "{{ }}", "", "", &env()).unwrap_err();
        assert!(err.message.contains("empty"), "{err}");
        let err = render("t", "{{ .Name }}", "", "", &env()).unwrap_err();
        assert!(err.message.contains(".Name"), "{err}");
    }

    #[test]
    fn env_lines() {
        let vars = parse_env_lines(
            "t",
            "# comment\n\nA=1\nexport B = two words \nC=\"quoted\"\nD='single'\nE=\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "quoted".into()),
                ("D".into(), "single".into()),
                ("E".into(), String::new()),
            ]
        );
        let err = parse_env_lines("local/env", "A=1\nnot a pair\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().contains("local/env"), "{err}");
    }

    #[test]
    fn paths_stay_in_the_task_dir() {
        let base = Path::new("/t");
        assert_eq!(
            within(base, "local/a.txt").unwrap(),
            Path::new("/t/local/a.txt")
        );
        assert_eq!(within(base, "./local/../x").unwrap(), Path::new("/t/x"));
        assert!(within(base, "../x").is_err());
        assert!(within(base, "local/../../x").is_err());
        assert!(within(base, "/etc/passwd").is_err());
        assert!(within(base, ".").is_err());
    }

    #[test]
    fn renders_into_files_with_perms_and_envvars() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("local")).unwrap();
        std::fs::write(dir.path().join("local/in.tpl"), "P={{ env \"PORT\" }}\n").unwrap();
        let vars = render_into(
            dir.path(),
            &pb::Template {
                source_path: "local/in.tpl".into(),
                dest_path: "secrets/out.env".into(),
                envvars: true,
                perms: "0600".into(),
                ..Default::default()
            },
            &env(),
        )
        .unwrap();
        assert_eq!(vars, [("P".to_string(), "8080".to_string())]);
        let out = dir.path().join("secrets/out.env");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "P=8080\n");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);

        let err = render_into(
            dir.path(),
            &pb::Template {
                source_path: "local/missing.tpl".into(),
                dest_path: "local/x".into(),
                ..Default::default()
            },
            &env(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing.tpl"), "{err}");
        let err = render_into(
            dir.path(),
            &pb::Template {
                embedded_tmpl: "x".into(),
                dest_path: "local/x".into(),
                perms: "rw".into(),
                ..Default::default()
            },
            &env(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("perms"), "{err}");
    }
}
