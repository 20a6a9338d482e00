use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const DIFF_ADDED: &str = "Added";
pub const DIFF_DELETED: &str = "Deleted";
pub const DIFF_EDITED: &str = "Edited";
pub const DIFF_NONE: &str = "None";

/// One changed field (Nomad's `FieldDiff`), named by its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct FieldDiff {
    /// `Added`, `Deleted` or `Edited`.
    #[serde(rename = "Type")]
    pub diff_type: String,
    pub name: String,
    pub old: String,
    pub new: String,
}

/// Differences of one task (Nomad's `TaskDiff`, with fields flattened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskDiff {
    #[serde(rename = "Type")]
    pub diff_type: String,
    pub name: String,
    pub fields: Vec<FieldDiff>,
}

/// Differences of one task group (Nomad's `TaskGroupDiff`, with fields flattened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct GroupDiff {
    #[serde(rename = "Type")]
    pub diff_type: String,
    pub name: String,
    pub fields: Vec<FieldDiff>,
    pub tasks: Vec<TaskDiff>,
    /// What the scheduler would do, in Nomad's words (`create`, `destroy`, `create/destroy
    /// update`, `in-place update`, `canary`, `ignore`) → count. Filled by `job plan` only.
    pub updates: BTreeMap<String, u64>,
}

/// A job's changes (Nomad's `JobDiff`, with fields flattened to paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDiff {
    #[serde(rename = "Type")]
    pub diff_type: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub fields: Vec<FieldDiff>,
    pub task_groups: Vec<GroupDiff>,
}

impl JobDiff {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.diff_type.is_empty() && self.diff_type != DIFF_NONE
    }
}
