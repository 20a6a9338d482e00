//! Field-level differences between two versions of a job, in Nomad's `JobDiff` shape (job →
//! task groups → tasks → fields), for `job plan` and `GET /v1/job/:id/versions?diffs=true`.
//!
//! Both jobs are flattened to JSON paths (`Config.command`, `Meta[team]`, `Services[web].Tags[0]`;
//! lists of named objects are keyed by name so reordering them is not a change), and the paths
//! are compared. Fields the server maintains (versions, indexes, times, status) are ignored, and
//! so are empty strings (a field set to `""` is a field not set).

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::{
    DIFF_ADDED, DIFF_DELETED, DIFF_EDITED, DIFF_NONE, FieldDiff, GroupDiff, Job, JobDiff, TaskDiff,
};
use serde_json::Value;

/// Flatten a JSON value into `path → scalar` pairs. Lists of named objects are keyed by name
/// (`Tasks[server]`) so reordering is not a change.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = item
                    .get("Name")
                    .or_else(|| item.get("Label"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string());
                flatten(&format!("{prefix}[{key}]"), item, out);
            }
        }
        // Unset: an empty string is no value, as in Nomad's diffs.
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Job fields that are bookkeeping, not specification.
const IGNORED: &[&str] = &[
    "Status",
    "Version",
    "Stable",
    "SubmitTime",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Stop",
];

fn spec_fields(job: Option<&Job>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(job) = job {
        let mut v = serde_json::to_value(job).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            for k in IGNORED {
                m.remove(*k);
            }
        }
        flatten("", &v, &mut out);
    }
    out
}

fn field(diff_type: &str, name: &str, old: &str, new: &str) -> FieldDiff {
    FieldDiff {
        diff_type: diff_type.to_string(),
        name: name.to_string(),
        old: old.to_string(),
        new: new.to_string(),
    }
}

fn diff_maps(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    for (k, o) in old {
        match new.get(k) {
            None => out.push(field(DIFF_DELETED, k, o, "")),
            Some(n) if n != o => out.push(field(DIFF_EDITED, k, o, n)),
            _ => {}
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) {
            out.push(field(DIFF_ADDED, k, "", n));
        }
    }
    out
}

fn kind(changed: bool, old_exists: bool, new_exists: bool) -> String {
    match (old_exists, new_exists) {
        (false, true) => DIFF_ADDED,
        (true, false) => DIFF_DELETED,
        _ if changed => DIFF_EDITED,
        _ => DIFF_NONE,
    }
    .to_string()
}

/// Split fields named `<list>[<name>].<rest>` (or exactly `<list>[<name>]`) by name, with the
/// prefix removed; the others are returned as they are.
fn split_named(
    fields: Vec<FieldDiff>,
    list: &str,
) -> (Vec<FieldDiff>, BTreeMap<String, Vec<FieldDiff>>) {
    let mut rest = Vec::new();
    let mut named: BTreeMap<String, Vec<FieldDiff>> = BTreeMap::new();
    let open = format!("{list}[");
    for f in fields {
        match f
            .name
            .strip_prefix(&open)
            .and_then(|r| r.split_once(']'))
            .map(|(n, r)| (n.to_string(), r.trim_start_matches('.').to_string()))
        {
            Some((name, inner)) => named
                .entry(name)
                .or_default()
                .push(FieldDiff { name: inner, ..f }),
            None => rest.push(f),
        }
    }
    (rest, named)
}

/// Diff of two versions of a job, split into job-level, group-level and task-level fields.
/// `old` is `None` for a job that is not registered yet.
pub fn job_diff(old: Option<&Job>, new: &Job) -> JobDiff {
    let all = diff_maps(&spec_fields(old), &spec_fields(Some(new)));
    let (fields, mut groups) = split_named(all, "TaskGroups");
    let old_group = |name: &str| old.and_then(|j| j.group(name));
    let names: BTreeSet<String> = old
        .into_iter()
        .flat_map(|j| j.task_groups.iter().map(|g| g.name.clone()))
        .chain(new.task_groups.iter().map(|g| g.name.clone()))
        .collect();
    let task_groups: Vec<GroupDiff> = names
        .into_iter()
        .map(|name| {
            let (group_fields, mut tasks) =
                split_named(groups.remove(&name).unwrap_or_default(), "Tasks");
            let (old_g, new_g) = (old_group(&name), new.group(&name));
            let task_names: BTreeSet<String> = old_g
                .into_iter()
                .chain(new_g)
                .flat_map(|g| g.tasks.iter().map(|t| t.name.clone()))
                .collect();
            let tasks: Vec<TaskDiff> = task_names
                .into_iter()
                .map(|t| {
                    let f = tasks.remove(&t).unwrap_or_default();
                    let had = |g: Option<&flotilla_types::TaskGroup>| {
                        g.is_some_and(|g| g.tasks.iter().any(|x| x.name == t))
                    };
                    TaskDiff {
                        diff_type: kind(!f.is_empty(), had(old_g), had(new_g)),
                        name: t,
                        fields: f,
                    }
                })
                .collect();
            let changed =
                !group_fields.is_empty() || tasks.iter().any(|t| t.diff_type != DIFF_NONE);
            GroupDiff {
                diff_type: kind(changed, old_g.is_some(), new_g.is_some()),
                name,
                fields: group_fields,
                tasks,
                updates: BTreeMap::new(),
            }
        })
        .collect();
    let changed = !fields.is_empty() || task_groups.iter().any(|g| g.diff_type != DIFF_NONE);
    JobDiff {
        diff_type: kind(changed, old.is_some(), true),
        id: new.id.clone(),
        fields,
        task_groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{Task, TaskGroup};

    fn job() -> Job {
        let mut j = Job {
            id: "j".into(),
            ..Default::default()
        };
        j.task_groups.push(TaskGroup {
            name: "web".into(),
            count: 1,
            tasks: vec![Task {
                name: "server".into(),
                driver: "raw_exec".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        j.canonicalize();
        j
    }

    #[test]
    fn names_changed_fields_per_job_group_and_task() {
        let old = job();
        let mut new = old.clone();
        new.task_groups[0].count = 3;
        new.task_groups[0].tasks[0].driver = "exec".into();
        new.priority = 70;
        new.meta.insert("team".into(), "a".into());
        // Bookkeeping is not a change.
        new.version = 9;
        new.stable = true;
        new.submit_time = 42;
        let d = job_diff(Some(&old), &new);
        assert_eq!(d.diff_type, DIFF_EDITED);
        assert!(
            d.fields
                .contains(&field(DIFF_EDITED, "Priority", "50", "70"))
        );
        assert!(d.fields.contains(&field(DIFF_ADDED, "Meta.team", "", "a")));
        assert_eq!(d.fields.len(), 2, "{:?}", d.fields);
        let g = &d.task_groups[0];
        assert_eq!(g.diff_type, DIFF_EDITED);
        assert_eq!(g.fields, vec![field(DIFF_EDITED, "Count", "1", "3")]);
        assert_eq!(g.tasks[0].name, "server");
        assert_eq!(g.tasks[0].diff_type, DIFF_EDITED);
        assert_eq!(
            g.tasks[0].fields,
            vec![field(DIFF_EDITED, "Driver", "raw_exec", "exec")]
        );
    }

    #[test]
    fn types_of_whole_jobs_groups_and_tasks() {
        let old = job();
        assert_eq!(job_diff(Some(&old), &old).diff_type, DIFF_NONE);
        assert_eq!(
            job_diff(Some(&old), &old).task_groups[0].diff_type,
            DIFF_NONE
        );
        let added = job_diff(None, &old);
        assert_eq!(added.diff_type, DIFF_ADDED);
        assert_eq!(added.task_groups[0].diff_type, DIFF_ADDED);
        assert_eq!(added.task_groups[0].tasks[0].diff_type, DIFF_ADDED);
        assert!(added.fields.iter().all(|f| !f.new.is_empty()));
        assert!(added.fields.iter().any(|f| f.name == "ID" && f.new == "j"));

        let mut new = old.clone();
        new.task_groups[0].name = "api".into();
        new.task_groups[0].tasks.push(Task {
            name: "sidecar".into(),
            ..Default::default()
        });
        let d = job_diff(Some(&old), &new);
        let by_name: BTreeMap<&str, &GroupDiff> =
            d.task_groups.iter().map(|g| (g.name.as_str(), g)).collect();
        assert_eq!(by_name["web"].diff_type, DIFF_DELETED);
        assert_eq!(by_name["api"].diff_type, DIFF_ADDED);
        assert_eq!(by_name["api"].tasks.len(), 2);
        assert!(
            by_name["api"]
                .tasks
                .iter()
                .all(|t| t.diff_type == DIFF_ADDED)
        );
    }
}
