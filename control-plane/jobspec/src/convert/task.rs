//! The `task` block and what only tasks have: driver `config`, `resources` (with the Nomad 0.x
//! task-level `network`), `lifecycle`, `artifact`, `template`, `logs`, `volume_mount`,
//! `dispatch_payload`.

use flotilla_types::{
    DispatchPayloadConfig, LogConfig, NetworkResource, Resources, RestartPolicy, Task,
    TaskArtifact, TaskLifecycle, Template, VolumeMount,
};

use super::job::numbered;
use super::network::network_label;
use super::{BlockRef, Converter, schema};
use crate::diag::{Scope, Seg};

impl Converter<'_> {
    /// A task. Ports declared in its `resources { network { … } }` are added to `networks`, the
    /// group's (the first one, made if the group has none).
    pub(super) fn task(
        &mut self,
        group: &Scope,
        index: usize,
        block: &BlockRef<'_>,
        group_policy: &RestartPolicy,
        networks: &mut Vec<NetworkResource>,
    ) -> Task {
        let (scope, name) = self.labeled(group, Seg::Task(index), index, block, "the task name");
        let f = self.fields(&scope, block, &schema::TASK);
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
        if let Some(a) = f.attr("user") {
            task.user = self.string(&scope, a).unwrap_or_default();
        }
        task.shutdown_delay = self.shutdown_delay(&scope, &f);
        if let Some(b) = self.single(&scope, &f, "config") {
            let config = self.unlabeled(&scope, Seg::Config, "config", b);
            task.config = self.config_body(&config, b, true).into_iter().collect();
        }
        task.env = self.string_map(&scope, &f, "env", Seg::Env);
        if let Some(b) = self.single(&scope, &f, "resources") {
            task.resources = self.resources(&scope, b, group, networks);
        }
        task.restart_policy = self
            .single(&scope, &f, "restart")
            .map(|b| self.restart(&scope, b, group_policy));
        for (i, b) in f.blocks("service").enumerate() {
            let service = self.service(&scope, i, b);
            task.services.push(service);
        }
        task.meta = self.string_map(&scope, &f, "meta", Seg::Meta);
        for (i, b) in f.blocks("constraint").enumerate() {
            let constraint = self.constraint(&scope, i, b);
            task.constraints.push(constraint);
        }
        for (i, b) in f.blocks("affinity").enumerate() {
            let affinity = self.affinity(&scope, i, b);
            task.affinities.push(affinity);
        }
        task.lifecycle = self
            .single(&scope, &f, "lifecycle")
            .map(|b| self.lifecycle(&scope, b));
        for (i, b) in f.blocks("artifact").enumerate() {
            let artifact = self.artifact(&scope, i, b);
            task.artifacts.push(artifact);
        }
        for (i, b) in f.blocks("template").enumerate() {
            let template = self.template(&scope, i, b);
            task.templates.push(template);
        }
        task.log_config = self
            .single(&scope, &f, "logs")
            .map(|b| self.logs(&scope, b));
        for (i, b) in f.blocks("volume_mount").enumerate() {
            let mount = self.volume_mount(&scope, i, b);
            task.volume_mounts.push(mount);
        }
        task.dispatch_payload = self
            .single(&scope, &f, "dispatch_payload")
            .map(|b| self.dispatch_payload(&scope, b));
        task
    }

    fn resources(
        &mut self,
        task: &Scope,
        block: &BlockRef<'_>,
        group: &Scope,
        networks: &mut Vec<NetworkResource>,
    ) -> Resources {
        let scope = self.unlabeled(task, Seg::Resources, "resources", block);
        let f = self.fields(&scope, block, &schema::RESOURCES);
        let mut resources = Resources::default();
        if let Some(a) = f.attr("cpu") {
            resources.cpu = self.unsigned(&scope, a, i64::MAX).unwrap_or_default();
        }
        if let Some(a) = f.attr("memory") {
            resources.memory_mb = self.unsigned(&scope, a, i64::MAX).unwrap_or_default();
        }
        for (i, b) in f.blocks("network").enumerate() {
            self.task_network(&scope, i, b, group, networks);
        }
        resources
    }

    /// `resources { network { mbits = 10  port "http" {} } }` (Nomad 0.x): the ports join the
    /// group's first network, where Nomad 1.x declares them.
    fn task_network(
        &mut self,
        resources: &Scope,
        index: usize,
        block: &BlockRef<'_>,
        group: &Scope,
        networks: &mut Vec<NetworkResource>,
    ) {
        let scope = self.unlabeled(resources, Seg::Network(index), &network_label(index), block);
        self.warn(
            resources,
            "network",
            block.span.clone(),
            "a task-level network is deprecated: its ports are added to the group's network \
             (declare them in a group `network` block)"
                .to_string(),
        );
        let f = self.fields(&scope, block, &schema::TASK_NETWORK);
        if let Some(a) = f.attr("mbits")
            && self.unsigned::<u64>(&scope, a, i64::MAX).is_some()
        {
            self.warn(
                &scope,
                "mbits",
                a.span(),
                "mbits is deprecated and ignored (bandwidth is not scheduled)".to_string(),
            );
        }
        if networks.is_empty() {
            networks.push(NetworkResource {
                mode: "host".to_string(),
                ..Default::default()
            });
        }
        let target = group.child(Seg::Network(0), network_label(0));
        if let Some(network) = networks.first_mut() {
            for b in f.blocks("port") {
                self.port(&target, b, network);
            }
        }
    }

    fn lifecycle(&mut self, parent: &Scope, block: &BlockRef<'_>) -> TaskLifecycle {
        let scope = self.unlabeled(parent, Seg::Lifecycle, "lifecycle", block);
        let f = self.fields(&scope, block, &schema::LIFECYCLE);
        let mut lifecycle = TaskLifecycle::default();
        if let Some(a) = f.attr("hook") {
            lifecycle.hook = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("sidecar") {
            lifecycle.sidecar = self.boolean(&scope, a).unwrap_or_default();
        }
        lifecycle
    }

    fn artifact(&mut self, parent: &Scope, index: usize, block: &BlockRef<'_>) -> TaskArtifact {
        let scope = self.unlabeled(
            parent,
            Seg::Artifact(index),
            &numbered("artifact", index),
            block,
        );
        let f = self.fields(&scope, block, &schema::ARTIFACT);
        let mut artifact = TaskArtifact {
            relative_dest: "local/".to_string(),
            getter_mode: "any".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("source") {
            artifact.getter_source = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("destination") {
            artifact.relative_dest = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("mode") {
            artifact.getter_mode = self.string(&scope, a).unwrap_or_default();
        }
        artifact.getter_options = self.string_map(&scope, &f, "options", Seg::Config);
        artifact
    }

    fn template(&mut self, parent: &Scope, index: usize, block: &BlockRef<'_>) -> Template {
        let scope = self.unlabeled(
            parent,
            Seg::Template(index),
            &numbered("template", index),
            block,
        );
        let f = self.fields(&scope, block, &schema::TEMPLATE);
        // Nomad's defaults (`api.Template.Canonicalize`).
        let mut template = Template {
            change_mode: "restart".to_string(),
            perms: "0644".to_string(),
            left_delim: "{{".to_string(),
            right_delim: "}}".to_string(),
            ..Default::default()
        };
        if let Some(a) = f.attr("data") {
            template.embedded_tmpl = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("source") {
            template.source_path = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("destination") {
            template.dest_path = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("change_mode") {
            template.change_mode = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("change_signal") {
            template.change_signal = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("env") {
            template.envvars = self.boolean(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("perms") {
            template.perms = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("left_delimiter") {
            template.left_delim = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("right_delimiter") {
            template.right_delim = self.string(&scope, a).unwrap_or_default();
        }
        template
    }

    fn logs(&mut self, parent: &Scope, block: &BlockRef<'_>) -> LogConfig {
        let scope = self.unlabeled(parent, Seg::Logs, "logs", block);
        let f = self.fields(&scope, block, &schema::LOGS);
        let mut logs = LogConfig::default();
        if let Some(a) = f.attr("max_files") {
            logs.max_files = self
                .unsigned(&scope, a, i64::from(u32::MAX))
                .unwrap_or(logs.max_files);
        }
        if let Some(a) = f.attr("max_file_size") {
            logs.max_file_size_mb = self
                .unsigned(&scope, a, i64::MAX)
                .unwrap_or(logs.max_file_size_mb);
        }
        logs
    }

    fn volume_mount(&mut self, parent: &Scope, index: usize, block: &BlockRef<'_>) -> VolumeMount {
        let scope = self.unlabeled(
            parent,
            Seg::VolumeMount(index),
            &numbered("volume_mount", index),
            block,
        );
        let f = self.fields(&scope, block, &schema::VOLUME_MOUNT);
        let mut mount = VolumeMount::default();
        if let Some(a) = f.attr("volume") {
            mount.volume = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("destination") {
            mount.destination = self.string(&scope, a).unwrap_or_default();
        }
        if let Some(a) = f.attr("read_only") {
            mount.read_only = self.boolean(&scope, a).unwrap_or_default();
        }
        mount
    }

    fn dispatch_payload(&mut self, parent: &Scope, block: &BlockRef<'_>) -> DispatchPayloadConfig {
        let scope = self.unlabeled(parent, Seg::DispatchPayload, "dispatch_payload", block);
        let f = self.fields(&scope, block, &schema::DISPATCH_PAYLOAD);
        let mut payload = DispatchPayloadConfig::default();
        if let Some(a) = f.attr("file") {
            payload.file = self.string(&scope, a).unwrap_or_default();
        }
        payload
    }
}
