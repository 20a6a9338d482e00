//! Printing a job diff (the API's `JobDiff`, as `job plan` and `job history -p` receive it)
//! the way Nomad's CLI does: `+` added, `-` deleted, `+/-` edited, with job → task group →
//! task nesting.

use std::fmt::Write as _;

use flotilla_types::{FieldDiff, JobDiff};

fn mark(diff_type: &str) -> &'static str {
    match diff_type {
        "Added" => "+ ",
        "Deleted" => "- ",
        "Edited" => "+/- ",
        _ => "",
    }
}

fn field_line(out: &mut String, indent: &str, f: &FieldDiff) {
    let _ = match f.diff_type.as_str() {
        "Added" => writeln!(out, "{indent}+ {}: {:?}", f.name, f.new),
        "Deleted" => writeln!(out, "{indent}- {}: {:?}", f.name, f.old),
        _ => writeln!(out, "{indent}+/- {}: {:?} => {:?}", f.name, f.old, f.new),
    };
}

/// The diff as Nomad prints it. Groups that neither changed nor have scheduler updates, and
/// tasks that did not change, are left out.
pub fn render(d: &JobDiff) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}Job: {:?}", mark(&d.diff_type), d.id);
    for f in &d.fields {
        field_line(&mut out, "", f);
    }
    for g in &d.task_groups {
        if g.diff_type == "None" && g.updates.is_empty() {
            continue;
        }
        let updates: Vec<String> = g.updates.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let updates = if updates.is_empty() {
            String::new()
        } else {
            format!(" ({})", updates.join(", "))
        };
        let _ = writeln!(
            out,
            "{}Task Group: {:?}{updates}",
            mark(&g.diff_type),
            g.name
        );
        for f in &g.fields {
            field_line(&mut out, "  ", f);
        }
        for t in g.tasks.iter().filter(|t| t.diff_type != "None") {
            let _ = writeln!(out, "  {}Task: {:?}", mark(&t.diff_type), t.name);
            for f in &t.fields {
                field_line(&mut out, "    ", f);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_nomad_style() {
        let d: JobDiff = serde_json::from_value(serde_json::json!({
            "Type": "Edited",
            "ID": "web",
            "Fields": [
                {"Type": "Edited", "Name": "Priority", "Old": "50", "New": "70"},
                {"Type": "Added", "Name": "Meta.team", "Old": "", "New": "a"},
                {"Type": "Deleted", "Name": "Meta.old", "Old": "x", "New": ""}
            ],
            "TaskGroups": [
                {
                    "Type": "Edited", "Name": "web",
                    "Fields": [{"Type": "Edited", "Name": "Count", "Old": "1", "New": "3"}],
                    "Tasks": [
                        {"Type": "Edited", "Name": "server", "Fields": [
                            {"Type": "Edited", "Name": "Config.image", "Old": "v1", "New": "v2"}
                        ]},
                        {"Type": "None", "Name": "sidecar", "Fields": []},
                        {"Type": "Added", "Name": "logs", "Fields": [
                            {"Type": "Added", "Name": "Driver", "Old": "", "New": "exec"}
                        ]}
                    ],
                    "Updates": {"canary": 1, "ignore": 2}
                },
                {"Type": "None", "Name": "idle", "Fields": [], "Tasks": [], "Updates": {}},
                {"Type": "None", "Name": "db", "Fields": [], "Tasks": [], "Updates": {"ignore": 3}},
                {"Type": "Deleted", "Name": "gone", "Fields": [], "Tasks": [], "Updates": {"destroy": 1}}
            ]
        }))
        .unwrap();
        assert!(d.changed());
        assert_eq!(
            render(&d),
            r#"+/- Job: "web"
+/- Priority: "50" => "70"
+ Meta.team: "a"
- Meta.old: "x"
+/- Task Group: "web" (1 canary, 2 ignore)
  +/- Count: "1" => "3"
  +/- Task: "server"
    +/- Config.image: "v1" => "v2"
  + Task: "logs"
    + Driver: "exec"
Task Group: "db" (3 ignore)
- Task Group: "gone" (1 destroy)
"#
        );
        let none = JobDiff {
            diff_type: "None".into(),
            id: "web".into(),
            ..Default::default()
        };
        assert!(!none.changed());
        assert_eq!(render(&none), "Job: \"web\"\n");
    }
}
