//! The `job` and `group` blocks and the policies attached to them: `update`, `reschedule`,
//! `periodic`, `parameterized`, `volume`, `ephemeral_disk`.

use std::collections::BTreeMap;

use flotilla_types::{
    EphemeralDisk, Job, NANOS_PER_SEC, ParameterizedJobConfig, PeriodicConfig, ReschedulePolicy,
    RestartPolicy, TaskGroup, UpdateStrategy, VolumeRequest,
};
use hcl_edit::Span;
use hcl_edit::structure::Structure;

use super::{BlockRef, Converter, Fields, schema};
use crate::diag::{Scope, Seg, named};

/// The fields an `update` block sets: a job-level block is merged into each group's field by
/// field, as Nomad does.
#[derive(Debug, Clone, Default)]
pub(super) struct UpdateFields {
    stagger: Option<i64>,
    max_parallel: Option<u32>,
    health_check: Option<String>,
    min_healthy_time: Option<i64>,
    healthy_deadline: Option<i64>,
    progress_deadline: Option<i64>,
    auto_revert: Option<bool>,
    auto_promote: Option<bool>,
    canary: Option<u32>,
}

impl UpdateFields {
    fn apply(&self, to: &mut UpdateStrategy) {
        if let Some(v) = self.stagger {
            to.stagger = v;
        }
        if let Some(v) = self.max_parallel {
            to.max_parallel = v;
        }
        if let Some(v) = &self.health_check {
            to.health_check = v.clone();
        }
        if let Some(v) = self.min_healthy_time {
            to.min_healthy_time = v;
        }
        if let Some(v) = self.healthy_deadline {
            to.healthy_deadline = v;
        }
        if let Some(v) = self.progress_deadline {
            to.progress_deadline = v;
        }
        if let Some(v) = self.auto_revert {
            to.auto_revert = v;
        }
        if let Some(v) = self.auto_promote {
            to.auto_promote = v;
        }
        if let Some(v) = self.canary {
            to.canary = v;
        }
    }
}

/// Nomad's defaults for what an `update` block leaves out (`api.DefaultUpdateStrategy`).
pub(crate) fn default_update() -> UpdateStrategy {
    let s = NANOS_PER_SEC;
    UpdateStrategy {
        stagger: 30 * s,
        max_parallel: 1,
        health_check: "checks".to_string(),
        min_healthy_time: 10 * s,
        healthy_deadline: 5 * 60 * s,
        progress_deadline: 10 * 60 * s,
        auto_revert: false,
        auto_promote: false,
        canary: 0,
    }
}

/// The defaults, then the job's block, then the group's: `None` when neither has one.
fn merged_update(
    job: Option<&UpdateFields>,
    group: Option<&UpdateFields>,
) -> Option<UpdateStrategy> {
    if job.is_none() && group.is_none() {
        return None;
    }
    let mut update = default_update();
    for fields in job.into_iter().chain(group) {
        fields.apply(&mut update);
    }
    Some(update)
}

impl Converter<'_> {
    pub(super) fn job(&mut self, block: &BlockRef<'_>) -> Job {
        let id = match Self::one_label(block, "the job ID") {
            Ok(id) => id,
            Err(message) => {
                let scope = Scope::job("");
                self.error(&scope, "job", block.span.clone(), message);
                self.failed.insert(scope.key("id"));
                String::new()
            }
        };
        let scope = Scope::job(&id);
        self.record(&scope, "", block.span.clone());
        let f = self.fields(&scope, block, &schema::JOB);
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
        for (i, b) in f.blocks("constraint").enumerate() {
            let constraint = self.constraint(&scope, i, b);
            job.constraints.push(constraint);
        }
        for (i, b) in f.blocks("affinity").enumerate() {
            let affinity = self.affinity(&scope, i, b);
            job.affinities.push(affinity);
        }
        for (i, b) in f.blocks("spread").enumerate() {
            let spread = self.spread(&scope, i, b);
            job.spreads.push(spread);
        }
        let update = self
            .single(&scope, &f, "update")
            .map(|b| self.update(&scope, b));
        job.update = merged_update(update.as_ref(), None);
        job.periodic = self
            .single(&scope, &f, "periodic")
            .map(|b| self.periodic(&scope, b));
        job.parameterized_job = self
            .single(&scope, &f, "parameterized")
            .map(|b| self.parameterized(&scope, b));
        if let Some(b) = self.single(&scope, &f, "multiregion") {
            self.multiregion(&scope, b);
        }

        let job_type = if job.job_type.is_empty() {
            flotilla_types::JOB_TYPE_SERVICE.to_string()
        } else {
            job.job_type.clone()
        };
        for (i, g) in f.blocks("group").enumerate() {
            let group = self.group(&scope, i, g, &job_type, update.as_ref());
            job.task_groups.push(group);
        }
        job
    }

    /// `multiregion`: ignored with a warning when it names one region, an error when the job
    /// would run in several.
    fn multiregion(&mut self, scope: &Scope, block: &BlockRef<'_>) {
        let regions = block
            .body
            .iter()
            .filter_map(Structure::as_block)
            .filter(|b| b.ident.as_str() == "region")
            .count();
        if regions > 1 {
            self.error(
                scope,
                "multiregion",
                block.span.clone(),
                format!(
                    "multiregion is not supported: the job would run in {regions} regions, and \
                     Flotilla runs it in this region only"
                ),
            );
        } else {
            self.warn(
                scope,
                "multiregion",
                block.span.clone(),
                "multiregion is not supported yet; ignored (the job runs in this region only)"
                    .to_string(),
            );
        }
    }

    fn group(
        &mut self,
        job: &Scope,
        index: usize,
        block: &BlockRef<'_>,
        job_type: &str,
        job_update: Option<&UpdateFields>,
    ) -> TaskGroup {
        let (scope, name) = self.labeled(job, Seg::Group(index), index, block, "the group name");
        let f = self.fields(&scope, block, &schema::GROUP);
        let mut group = TaskGroup {
            name,
            count: 1,
            ..Default::default()
        };
        if let Some(a) = f.attr("count") {
            group.count = self.unsigned(&scope, a, i64::from(u32::MAX)).unwrap_or(1);
        }
        group.meta = self.string_map(&scope, &f, "meta", Seg::Meta);
        group.shutdown_delay = self.shutdown_delay(&scope, &f);
        let default_policy = RestartPolicy::default_for(job_type);
        group.restart_policy = self
            .single(&scope, &f, "restart")
            .map(|b| self.restart(&scope, b, &default_policy));
        group.reschedule_policy = self
            .single(&scope, &f, "reschedule")
            .map(|b| self.reschedule(&scope, b, job_type));
        let own_update = self
            .single(&scope, &f, "update")
            .map(|b| self.update(&scope, b));
        group.update = merged_update(job_update, own_update.as_ref());
        for (i, b) in f.blocks("constraint").enumerate() {
            let constraint = self.constraint(&scope, i, b);
            group.constraints.push(constraint);
        }
        for (i, b) in f.blocks("affinity").enumerate() {
            let affinity = self.affinity(&scope, i, b);
            group.affinities.push(affinity);
        }
        for (i, b) in f.blocks("spread").enumerate() {
            let spread = self.spread(&scope, i, b);
            group.spreads.push(spread);
        }
        group.volumes = self.volumes(&scope, &f);
        group.ephemeral_disk = self
            .single(&scope, &f, "ephemeral_disk")
            .map(|b| self.ephemeral_disk(&scope, b));
        for (i, b) in f.blocks("network").enumerate() {
            let network = self.network(&scope, i, b);
            group.networks.push(network);
        }
        for (i, b) in f.blocks("service").enumerate() {
            let service = self.service(&scope, i, b);
            group.services.push(service);
        }
        let task_policy = group
            .restart_policy
            .clone()
            .unwrap_or_else(|| default_policy.clone());
        for (i, b) in f.blocks("task").enumerate() {
            let task = self.task(&scope, i, b, &task_policy, &mut group.networks);
            group.tasks.push(task);
        }
        self.port_maps(&scope, &mut group);
        group
    }

    /// A `restart` block, filling what it leaves out from `base` as Nomad does.
    pub(super) fn restart(
        &mut self,
        parent: &Scope,
        block: &BlockRef<'_>,
        base: &RestartPolicy,
    ) -> RestartPolicy {
        let scope = self.unlabeled(parent, Seg::Restart, "restart", block);
        let f = self.fields(&scope, block, &schema::RESTART);
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

    /// A `reschedule` block, filling what it leaves out from the job type's defaults.
    fn reschedule(
        &mut self,
        parent: &Scope,
        block: &BlockRef<'_>,
        job_type: &str,
    ) -> ReschedulePolicy {
        let scope = self.unlabeled(parent, Seg::Reschedule, "reschedule", block);
        let f = self.fields(&scope, block, &schema::RESCHEDULE);
        let mut policy = ReschedulePolicy::default_for(job_type);
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
        if let Some(a) = f.attr("delay_function") {
            policy.delay_function = self.string(&scope, a).unwrap_or(policy.delay_function);
        }
        if let Some(a) = f.attr("max_delay") {
            policy.max_delay = self.duration(&scope, a).unwrap_or(policy.max_delay);
        }
        if let Some(a) = f.attr("unlimited") {
            policy.unlimited = self.boolean(&scope, a).unwrap_or(policy.unlimited);
        }
        policy
    }

    /// An `update` block. `healthy_deadline` and `stagger` must be above zero, as Nomad
    /// requires; the other checks are [`validate`](crate::validate)'s, on the merged strategy.
    fn update(&mut self, parent: &Scope, block: &BlockRef<'_>) -> UpdateFields {
        let scope = self.unlabeled(parent, Seg::Update, "update", block);
        let f = self.fields(&scope, block, &schema::UPDATE);
        let mut u = UpdateFields::default();
        if let Some(a) = f.attr("max_parallel") {
            u.max_parallel = self.unsigned(&scope, a, i64::from(u32::MAX));
        }
        if let Some(a) = f.attr("health_check") {
            u.health_check = self.string(&scope, a);
        }
        if let Some(a) = f.attr("min_healthy_time") {
            u.min_healthy_time = self.duration(&scope, a);
        }
        if let Some(a) = f.attr("healthy_deadline") {
            u.healthy_deadline = self.positive_duration(&scope, a);
        }
        if let Some(a) = f.attr("progress_deadline") {
            u.progress_deadline = self.duration(&scope, a);
        }
        if let Some(a) = f.attr("stagger") {
            u.stagger = self.positive_duration(&scope, a);
        }
        if let Some(a) = f.attr("auto_revert") {
            u.auto_revert = self.boolean(&scope, a);
        }
        if let Some(a) = f.attr("auto_promote") {
            u.auto_promote = self.boolean(&scope, a);
        }
        if let Some(a) = f.attr("canary") {
            u.canary = self.unsigned(&scope, a, i64::from(u32::MAX));
        }
        u
    }

    fn periodic(&mut self, parent: &Scope, block: &BlockRef<'_>) -> PeriodicConfig {
        let scope = self.unlabeled(parent, Seg::Periodic, "periodic", block);
        let f = self.fields(&scope, block, &schema::PERIODIC);
        let mut periodic = PeriodicConfig {
            enabled: true,
            spec_type: "cron".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("cron") {
            periodic.spec = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("crons") {
            if f.attr("cron").is_some() {
                self.error(
                    &scope,
                    "crons",
                    a.span(),
                    "set cron or crons, not both".to_string(),
                );
            } else if let Some(crons) = self.strings(&scope, a) {
                match crons.as_slice() {
                    [one] => {
                        periodic.spec = one.clone();
                        self.record(&scope, "cron", a.span());
                    }
                    [] => self.error(
                        &scope,
                        "crons",
                        a.span(),
                        "crons must hold one cron expression, got an empty list".to_string(),
                    ),
                    many => self.error(
                        &scope,
                        "crons",
                        a.span(),
                        format!(
                            "only one cron expression is supported, got {}; use one periodic \
                             job per schedule",
                            many.len()
                        ),
                    ),
                }
            }
            if self.failed.contains(&scope.key("crons")) {
                // crons was wrong (and said so): no second error about a missing cron.
                self.failed.insert(scope.key("cron"));
            }
        }
        if let Some(a) = f.attr("prohibit_overlap") {
            periodic.prohibit_overlap = self.boolean(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("time_zone") {
            periodic.time_zone = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("enabled") {
            periodic.enabled = self.boolean(&scope, a).unwrap_or(true);
        }
        periodic
    }

    fn parameterized(&mut self, parent: &Scope, block: &BlockRef<'_>) -> ParameterizedJobConfig {
        let scope = self.unlabeled(parent, Seg::Parameterized, "parameterized", block);
        let f = self.fields(&scope, block, &schema::PARAMETERIZED);
        let mut config = ParameterizedJobConfig {
            payload: "optional".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("payload") {
            config.payload = self.string(&scope, a).unwrap_or(config.payload);
        }
        if let Some(a) = f.attr("meta_required") {
            config.meta_required = self.strings(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("meta_optional") {
            config.meta_optional = self.strings(&scope, a).unwrap_or_default();
        }
        config
    }

    /// `volume "name" { … }` blocks, keyed by name. Their scopes are numbered in name order, as
    /// validation walks the map.
    fn volumes(&mut self, group: &Scope, f: &Fields<'_>) -> BTreeMap<String, VolumeRequest> {
        let blocks: Vec<&BlockRef<'_>> = f.blocks("volume").collect();
        let mut names: Vec<String> = blocks
            .iter()
            .filter_map(|b| Self::one_label(b, "the volume name").ok())
            .collect();
        names.sort();
        names.dedup();
        let mut volumes = BTreeMap::new();
        for (i, block) in blocks.into_iter().enumerate() {
            let index = Self::one_label(block, "")
                .ok()
                .and_then(|name| names.binary_search(&name).ok())
                .unwrap_or(names.len() + i);
            let (scope, name) =
                self.labeled(group, Seg::Volume(index), index, block, "the volume name");
            if name.is_empty() {
                continue;
            }
            if volumes.contains_key(&name) {
                self.error(
                    &scope,
                    "volume",
                    block.span.clone(),
                    format!(
                        "duplicate volume {name:?} (volume names must be unique within a group)"
                    ),
                );
                continue;
            }
            if self.peek_string(block, "type") == "csi" {
                let span = block
                    .body
                    .get_attribute("type")
                    .and_then(|a| a.span())
                    .or(block.span.clone());
                self.error(
                    &scope,
                    "type",
                    span,
                    "csi volumes are not supported: only host volumes are (the task would start \
                     without its volume)"
                        .to_string(),
                );
                volumes.insert(
                    name.clone(),
                    VolumeRequest {
                        name,
                        volume_type: "csi".to_string(),
                        ..Default::default()
                    },
                );
                continue;
            }
            let f = self.fields(&scope, block, &schema::VOLUME);
            let mut volume = VolumeRequest {
                name: name.clone(),
                ..Default::default()
            };
            if let Some(a) = f.attr("type") {
                volume.volume_type = self.string(&scope, a).unwrap_or_default();
            }
            if let Some(a) = f.attr("source") {
                volume.source = self.string(&scope, a).unwrap_or_default();
            }
            if let Some(a) = f.attr("read_only") {
                volume.read_only = self.boolean(&scope, a).unwrap_or_default();
            }
            volumes.insert(name, volume);
        }
        volumes
    }

    fn ephemeral_disk(&mut self, parent: &Scope, block: &BlockRef<'_>) -> EphemeralDisk {
        let scope = self.unlabeled(parent, Seg::EphemeralDisk, "ephemeral_disk", block);
        let f = self.fields(&scope, block, &schema::EPHEMERAL_DISK);
        let mut disk = EphemeralDisk::default();
        if let Some(a) = f.attr("size") {
            disk.size_mb = self.unsigned(&scope, a, i64::MAX).unwrap_or(disk.size_mb);
        }
        if let Some(a) = f.attr("sticky") {
            disk.sticky = self.boolean(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("migrate") {
            disk.migrate = self.boolean(&scope, a).unwrap_or_default();
        }
        disk
    }
}

/// The human label of a block written without a name, numbered: `constraint[0]`.
pub(super) fn numbered(kind: &str, index: usize) -> String {
    named(kind, "", index)
}
