//! Job and group policies: `update`, `reschedule`, `periodic`, `parameterized`, host volumes
//! and the ephemeral disk.

use flotilla_types::{
    EphemeralDisk, JOB_TYPE_BATCH, JOB_TYPE_SYSBATCH, JOB_TYPE_SYSTEM, ParameterizedJobConfig,
    PeriodicConfig, ReschedulePolicy, TaskGroup, UpdateStrategy,
};

use super::Report;
use crate::diag::{Scope, Seg, named};
use crate::duration::format_duration;

const HEALTH_CHECKS: &[&str] = &["checks", "task_states", "manual"];
const DELAY_FUNCTIONS: &[&str] = &["constant", "exponential", "fibonacci"];
const PAYLOAD_MODES: &[&str] = &["optional", "required", "forbidden"];
const CRON_MACROS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];
/// Nomad's smallest reschedule delay.
const MIN_RESCHEDULE_DELAY: i64 = 5 * flotilla_types::NANOS_PER_SEC;
/// Nomad's smallest ephemeral disk, in MB.
pub(super) const MIN_DISK_MB: u64 = 10;

fn batch_like(job_type: &str) -> bool {
    job_type == JOB_TYPE_BATCH || job_type == JOB_TYPE_SYSBATCH
}

impl Report {
    /// An `update` strategy of the job (`count` `None`) or of a group. A zero
    /// `healthy_deadline` or `progress_deadline` means none, as the deployment watcher reads
    /// them (a job submitted as JSON may leave them out; the HCL converter fills in Nomad's
    /// defaults and refuses an explicit zero `healthy_deadline`).
    pub(super) fn update(
        &mut self,
        parent: &Scope,
        u: &UpdateStrategy,
        job_type: &str,
        count: Option<u32>,
    ) {
        if batch_like(job_type) {
            self.error(
                parent,
                "update",
                format!("update is not allowed for {job_type} jobs"),
            );
            return;
        }
        let scope = parent.child(Seg::Update, "update");
        if !u.health_check.is_empty() && !HEALTH_CHECKS.contains(&u.health_check.as_str()) {
            self.error(
                &scope,
                "health_check",
                format!(
                    "unknown health_check {:?} (expected one of: {})",
                    u.health_check,
                    HEALTH_CHECKS.join(", ")
                ),
            );
        }
        let durations = [
            ("stagger", u.stagger),
            ("min_healthy_time", u.min_healthy_time),
            ("healthy_deadline", u.healthy_deadline),
            ("progress_deadline", u.progress_deadline),
        ];
        let mut negative = false;
        for (field, nanos) in durations {
            if nanos < 0 {
                negative = true;
                self.error(
                    &scope,
                    field,
                    format!(
                        "{field} must not be negative, got {}",
                        format_duration(nanos)
                    ),
                );
            }
        }
        if !negative {
            if u.healthy_deadline > 0 && u.min_healthy_time >= u.healthy_deadline {
                self.error(
                    &scope,
                    "min_healthy_time",
                    format!(
                        "min_healthy_time ({}) must be less than healthy_deadline ({})",
                        format_duration(u.min_healthy_time),
                        format_duration(u.healthy_deadline)
                    ),
                );
            }
            if u.healthy_deadline > 0
                && u.progress_deadline > 0
                && u.healthy_deadline >= u.progress_deadline
            {
                self.error(
                    &scope,
                    "healthy_deadline",
                    format!(
                        "healthy_deadline ({}) must be less than progress_deadline ({})",
                        format_duration(u.healthy_deadline),
                        format_duration(u.progress_deadline)
                    ),
                );
            }
        }
        if u.auto_promote && u.canary == 0 {
            self.error(
                &scope,
                "auto_promote",
                "auto_promote needs canaries: set canary to 1 or more".to_string(),
            );
        }
        if let Some(count) = count {
            self.update_counts(parent, u, count, job_type);
        } else if job_type == JOB_TYPE_SYSTEM && u.canary > 0 {
            self.system_canaries(&scope);
        }
    }

    /// A group's update strategy against its count and job type: canaries (none for system
    /// jobs, warned when more than the count) and `max_parallel` (warned when more than the
    /// count, as Nomad does). Called alone for a strategy inherited unchanged from the job
    /// (checked there already).
    pub(super) fn update_counts(
        &mut self,
        group: &Scope,
        u: &UpdateStrategy,
        count: u32,
        job_type: &str,
    ) {
        if batch_like(job_type) {
            return;
        }
        let scope = group.child(Seg::Update, "update");
        if job_type == JOB_TYPE_SYSTEM {
            if u.canary > 0 {
                self.system_canaries(&scope);
            }
            return;
        }
        if u.canary > count {
            self.warn(
                &scope,
                "canary",
                format!(
                    "canary = {} is more than the group's count ({count}): a deployment starts \
                     {} canaries, more instances than the group runs",
                    u.canary, u.canary
                ),
            );
        }
        if count > 1 && u.max_parallel > count {
            self.warn(
                &scope,
                "max_parallel",
                format!(
                    "max_parallel = {} is more than the group's count ({count}): a destructive \
                     change would replace every instance at once",
                    u.max_parallel
                ),
            );
        }
    }

    /// Nomad promotes a deployment automatically only when every group with canaries sets
    /// `auto_promote`: warn on the groups that would hold it back.
    pub(super) fn auto_promote_all(&mut self, job: &Scope, groups: &[TaskGroup]) {
        let Some(promoting) = groups.iter().find(|g| {
            g.update
                .as_ref()
                .is_some_and(|u| u.auto_promote && u.canary > 0)
        }) else {
            return;
        };
        for (i, g) in groups.iter().enumerate() {
            if let Some(u) = &g.update
                && u.canary > 0
                && !u.auto_promote
            {
                let scope = job
                    .child(Seg::Group(i), named("group", &g.name, i))
                    .child(Seg::Update, "update");
                self.warn(
                    &scope,
                    "auto_promote",
                    format!(
                        "auto_promote is false here but true in group {:?}: deployments are \
                         promoted automatically only when every group with canaries sets \
                         auto_promote = true, so they will wait for a manual promotion",
                        promoting.name
                    ),
                );
            }
        }
    }

    fn system_canaries(&mut self, scope: &Scope) {
        self.error(
            scope,
            "canary",
            "canary deployments are not supported for system jobs".to_string(),
        );
    }

    pub(super) fn reschedule(&mut self, scope: &Scope, p: &ReschedulePolicy) {
        if !DELAY_FUNCTIONS.contains(&p.delay_function.as_str()) {
            self.error(
                scope,
                "delay_function",
                format!(
                    "unknown delay_function {:?} (expected one of: {})",
                    p.delay_function,
                    DELAY_FUNCTIONS.join(", ")
                ),
            );
        }
        let mut negative = false;
        for (field, nanos) in [
            ("interval", p.interval),
            ("delay", p.delay),
            ("max_delay", p.max_delay),
        ] {
            if nanos < 0 {
                negative = true;
                self.error(
                    scope,
                    field,
                    format!(
                        "{field} must not be negative, got {}",
                        format_duration(nanos)
                    ),
                );
            }
        }
        let enabled = p.unlimited || p.attempts > 0;
        if negative || !enabled {
            return;
        }
        if p.delay < MIN_RESCHEDULE_DELAY {
            self.error(
                scope,
                "delay",
                format!(
                    "delay must be at least {}, got {}",
                    format_duration(MIN_RESCHEDULE_DELAY),
                    format_duration(p.delay)
                ),
            );
            return;
        }
        if p.delay_function != "constant" && p.max_delay < p.delay {
            self.error(
                scope,
                "max_delay",
                format!(
                    "max_delay ({}) must not be less than delay ({}) with delay_function {:?}",
                    format_duration(p.max_delay),
                    format_duration(p.delay),
                    p.delay_function
                ),
            );
            return;
        }
        if p.unlimited {
            if p.attempts > 0 {
                self.warn(
                    scope,
                    "attempts",
                    format!(
                        "attempts = {} is ignored because unlimited = true",
                        p.attempts
                    ),
                );
            }
            return;
        }
        if p.interval == 0 {
            self.error(
                scope,
                "interval",
                format!(
                    "interval must be set when attempts are limited ({} attempts in what window?)",
                    p.attempts
                ),
            );
            return;
        }
        // Nomad's check: the attempts, with their delays, must fit in the interval.
        let needed = (1..=p.attempts.min(1000))
            .map(|i| i128::from(p.delay_for(i)))
            .sum::<i128>();
        if needed > i128::from(p.interval) {
            self.error(
                scope,
                "interval",
                format!(
                    "{} attempts with a {} delay of {} do not fit in an interval of {}",
                    p.attempts,
                    p.delay_function,
                    format_duration(p.delay),
                    format_duration(p.interval)
                ),
            );
        }
    }

    pub(super) fn periodic(&mut self, job: &Scope, p: &PeriodicConfig, job_type: &str) {
        if !batch_like(job_type) {
            self.error(
                job,
                "periodic",
                format!(
                    "periodic is only allowed for batch and sysbatch jobs (this is a {job_type} \
                     job)"
                ),
            );
        }
        let scope = job.child(Seg::Periodic, "periodic");
        if !p.spec_type.is_empty() && p.spec_type != "cron" {
            self.error(
                &scope,
                "spec_type",
                format!("unknown spec type {:?} (expected \"cron\")", p.spec_type),
            );
        }
        if let Err(why) = cron(&p.spec) {
            self.error(&scope, "cron", why);
        }
    }

    pub(super) fn parameterized(
        &mut self,
        job: &Scope,
        p: &ParameterizedJobConfig,
        job_type: &str,
    ) {
        if !batch_like(job_type) {
            self.error(
                job,
                "parameterized",
                format!(
                    "parameterized is only allowed for batch and sysbatch jobs (this is a \
                     {job_type} job)"
                ),
            );
        }
        let scope = job.child(Seg::Parameterized, "parameterized");
        if !p.payload.is_empty() && !PAYLOAD_MODES.contains(&p.payload.as_str()) {
            self.error(
                &scope,
                "payload",
                format!(
                    "unknown payload {:?} (expected one of: {})",
                    p.payload,
                    PAYLOAD_MODES.join(", ")
                ),
            );
        }
        let both: Vec<&str> = p
            .meta_optional
            .iter()
            .filter(|k| p.meta_required.contains(k))
            .map(String::as_str)
            .collect();
        if !both.is_empty() {
            self.error(
                &scope,
                "meta_optional",
                format!(
                    "meta keys cannot be both required and optional: {}",
                    both.join(", ")
                ),
            );
        }
    }

    pub(super) fn volumes(&mut self, group: &Scope, g: &TaskGroup) {
        for (i, (name, volume)) in g.volumes.iter().enumerate() {
            let scope = group.child(Seg::Volume(i), named("volume", name, i));
            match volume.volume_type.as_str() {
                "host" => {
                    if volume.source.is_empty() {
                        self.error(
                            &scope,
                            "source",
                            "host volume needs a source (the name of a host volume configured \
                             on the nodes)"
                                .to_string(),
                        );
                    }
                }
                "csi" => self.error(
                    &scope,
                    "type",
                    "csi volumes are not supported: only host volumes are (the task would start \
                     without its volume)"
                        .to_string(),
                ),
                "" => self.error(
                    &scope,
                    "type",
                    "volume needs a type (only \"host\" is supported)".to_string(),
                ),
                other => self.error(
                    &scope,
                    "type",
                    format!("unknown volume type {other:?} (only \"host\" is supported)"),
                ),
            }
        }
    }

    pub(super) fn ephemeral_disk(&mut self, group: &Scope, disk: &EphemeralDisk) {
        if disk.size_mb < MIN_DISK_MB {
            self.error(
                &group.child(Seg::EphemeralDisk, "ephemeral_disk"),
                "size",
                format!(
                    "ephemeral disk size {} MB is too small (at least {MIN_DISK_MB} MB)",
                    disk.size_mb
                ),
            );
        }
    }
}

/// A cron expression: 5 or 6 fields (with seconds) of `0-9 * / , - ? L W #` and names, or one
/// of the `@daily`-style macros.
fn cron(spec: &str) -> Result<(), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("periodic needs a cron expression, like cron = \"*/15 * * * *\"".to_string());
    }
    if spec.starts_with('@') {
        return if CRON_MACROS.contains(&spec) {
            Ok(())
        } else {
            Err(format!(
                "unknown cron macro {spec:?} (expected one of: {})",
                CRON_MACROS.join(", ")
            ))
        };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "cron expression {spec:?} has {} fields (expected 5, minute hour day-of-month month \
             day-of-week, or 6 with seconds first)",
            fields.len()
        ));
    }
    if let Some(bad) = fields.iter().find(|f| {
        !f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?#".contains(c))
    }) {
        return Err(format!(
            "cron expression {spec:?} has an invalid field {bad:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions() {
        for ok in [
            "*/15 * * * *",
            "0 30 2 * * MON-FRI",
            "0 0 1,15 * ?",
            "@daily",
            "0 0 L * *",
        ] {
            assert_eq!(cron(ok), Ok(()), "{ok}");
        }
        assert!(cron("").unwrap_err().contains("needs a cron expression"));
        assert!(cron("* * * *").unwrap_err().contains("has 4 fields"));
        assert!(cron("* * * * * * *").unwrap_err().contains("has 7 fields"));
        assert!(cron("@often").unwrap_err().contains("unknown cron macro"));
        assert!(cron("* * * * $").unwrap_err().contains("invalid field"));
    }
}
