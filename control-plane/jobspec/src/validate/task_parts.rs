//! What only tasks have: `lifecycle`, `artifact`, `template`, `logs`, `volume_mount` and
//! `dispatch_payload`.

use flotilla_types::{
    DispatchPayloadConfig, EphemeralDisk, Job, LogConfig, TaskArtifact, TaskGroup, TaskLifecycle,
    Template, VolumeMount,
};

use super::Report;
use crate::diag::{Scope, Seg, named};

const HOOKS: &[&str] = &["prestart", "poststart", "poststop"];
const GETTER_MODES: &[&str] = &["any", "file", "dir"];
const CHANGE_MODES: &[&str] = &["noop", "restart", "signal"];

impl Report {
    pub(super) fn lifecycle(&mut self, task: &Scope, lifecycle: &TaskLifecycle) {
        let scope = task.child(Seg::Lifecycle, "lifecycle");
        match lifecycle.hook.as_str() {
            "" => self.error(
                &scope,
                "hook",
                format!(
                    "lifecycle needs a hook (expected one of: {})",
                    HOOKS.join(", ")
                ),
            ),
            hook if !HOOKS.contains(&hook) => self.error(
                &scope,
                "hook",
                format!(
                    "unknown lifecycle hook {hook:?} (expected one of: {})",
                    HOOKS.join(", ")
                ),
            ),
            "poststop" if lifecycle.sidecar => self.error(
                &scope,
                "sidecar",
                "sidecar is only allowed with the prestart and poststart hooks".to_string(),
            ),
            _ => {}
        }
    }

    pub(super) fn artifacts(&mut self, task: &Scope, artifacts: &[TaskArtifact]) {
        for (i, artifact) in artifacts.iter().enumerate() {
            let scope = task.child(Seg::Artifact(i), named("artifact", "", i));
            if artifact.getter_source.is_empty() {
                self.error(
                    &scope,
                    "source",
                    "artifact needs a source (a local path or a file:// URL)".to_string(),
                );
            } else if !is_local_source(&artifact.getter_source) {
                self.error(
                    &scope,
                    "source",
                    format!(
                        "only local artifact sources are supported (a path or a file:// URL), \
                         got {:?}",
                        artifact.getter_source
                    ),
                );
            }
            if !artifact.getter_mode.is_empty()
                && !GETTER_MODES.contains(&artifact.getter_mode.as_str())
            {
                self.error(
                    &scope,
                    "mode",
                    format!(
                        "unknown artifact mode {:?} (expected one of: {})",
                        artifact.getter_mode,
                        GETTER_MODES.join(", ")
                    ),
                );
            }
            if escapes(&artifact.relative_dest) {
                self.error(
                    &scope,
                    "destination",
                    format!(
                        "destination {:?} escapes the task directory",
                        artifact.relative_dest
                    ),
                );
            }
        }
    }

    pub(super) fn templates(&mut self, task: &Scope, templates: &[Template]) {
        for (i, t) in templates.iter().enumerate() {
            let scope = task.child(Seg::Template(i), named("template", "", i));
            match (t.embedded_tmpl.is_empty(), t.source_path.is_empty()) {
                (true, true) => self.error(
                    &scope,
                    "data",
                    "template needs data (the template text) or source (a file to render)"
                        .to_string(),
                ),
                (false, false) => {
                    self.error(&scope, "source", "set data or source, not both".to_string())
                }
                _ => {}
            }
            if t.dest_path.is_empty() {
                self.error(
                    &scope,
                    "destination",
                    "template needs a destination (where to write it in the task directory)"
                        .to_string(),
                );
            } else if escapes(&t.dest_path) {
                self.error(
                    &scope,
                    "destination",
                    format!("destination {:?} escapes the task directory", t.dest_path),
                );
            }
            match t.change_mode.as_str() {
                "" | "noop" | "restart" => {}
                "signal" => {
                    if t.change_signal.is_empty() {
                        self.error(
                            &scope,
                            "change_signal",
                            "change_mode \"signal\" needs a change_signal, like \"SIGHUP\""
                                .to_string(),
                        );
                    }
                }
                other => self.error(
                    &scope,
                    "change_mode",
                    format!(
                        "unknown change_mode {other:?} (expected one of: {})",
                        CHANGE_MODES.join(", ")
                    ),
                ),
            }
            if !t.perms.is_empty() && !u32::from_str_radix(&t.perms, 8).is_ok_and(|p| p <= 0o7777) {
                self.error(
                    &scope,
                    "perms",
                    format!(
                        "perms {:?} is not an octal file mode like \"0644\"",
                        t.perms
                    ),
                );
            }
        }
    }

    pub(super) fn logs(&mut self, task: &Scope, logs: &LogConfig, disk: Option<&EphemeralDisk>) {
        let scope = task.child(Seg::Logs, "logs");
        if logs.max_files == 0 {
            self.error(
                &scope,
                "max_files",
                "max_files must be at least 1".to_string(),
            );
        }
        if logs.max_file_size_mb == 0 {
            self.error(
                &scope,
                "max_file_size",
                "max_file_size must be at least 1 (MB)".to_string(),
            );
        }
        let used = u64::from(logs.max_files).saturating_mul(logs.max_file_size_mb);
        // A disk below the minimum is reported on its own; do not also blame the logs.
        if let Some(disk) = disk.filter(|d| d.size_mb >= super::policies::MIN_DISK_MB)
            && used > 0
            && used >= disk.size_mb
        {
            self.error(
                &scope,
                "max_files",
                format!(
                    "logs may use {used} MB ({} files of {} MB), which does not fit in the \
                     group's {} MB ephemeral disk",
                    logs.max_files, logs.max_file_size_mb, disk.size_mb
                ),
            );
        }
    }

    pub(super) fn volume_mounts(
        &mut self,
        task: &Scope,
        mounts: &[VolumeMount],
        group: &TaskGroup,
    ) {
        for (i, mount) in mounts.iter().enumerate() {
            let scope = task.child(Seg::VolumeMount(i), named("volume_mount", "", i));
            if mount.volume.is_empty() {
                self.error(
                    &scope,
                    "volume",
                    "volume_mount needs the name of a volume of the group".to_string(),
                );
            } else if !group.volumes.contains_key(&mount.volume) {
                let declared: Vec<&str> = group.volumes.keys().map(String::as_str).collect();
                self.error(
                    &scope,
                    "volume",
                    format!(
                        "volume {:?} is not declared by group {:?} (declared: {})",
                        mount.volume,
                        group.name,
                        if declared.is_empty() {
                            "none".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
            }
            if mount.destination.is_empty() {
                self.error(
                    &scope,
                    "destination",
                    "volume_mount needs a destination (where the task sees the volume)".to_string(),
                );
            }
        }
    }

    pub(super) fn dispatch_payload(
        &mut self,
        task: &Scope,
        payload: &DispatchPayloadConfig,
        job: &Job,
    ) {
        let scope = task.child(Seg::DispatchPayload, "dispatch_payload");
        if payload.file.is_empty() {
            self.error(
                &scope,
                "file",
                "dispatch_payload needs a file (where to write the payload)".to_string(),
            );
        } else if escapes(&payload.file) || payload.file.starts_with('/') {
            self.error(
                &scope,
                "file",
                format!(
                    "file {:?} must be a path inside the task directory",
                    payload.file
                ),
            );
        }
        if job.parameterized_job.is_none() {
            self.warn(
                &scope,
                "file",
                "dispatch_payload has no effect: the job is not parameterized".to_string(),
            );
        }
    }
}

/// Whether an artifact source is on this machine: a path or a `file://` URL, not a URL of
/// another scheme, a go-getter forced getter (`git::…`) or a host go-getter detects
/// (`github.com/…`, `git@…`, S3 and GCS hosts).
fn is_local_source(source: &str) -> bool {
    if let Some(path) = source.strip_prefix("file://") {
        return !path.is_empty();
    }
    if source.contains("::") || source.contains("://") || source.starts_with("git@") {
        return false;
    }
    let host = source.split('/').next().unwrap_or_default();
    let detected = [
        "github.com",
        "gitlab.com",
        "bitbucket.org",
        "googleapis.com",
    ];
    !(detected
        .iter()
        .any(|h| host == *h || host.ends_with(&format!(".{h}")))
        || host.ends_with("amazonaws.com"))
}

/// Whether a relative path climbs out of the directory it is relative to.
fn escapes(path: &str) -> bool {
    let mut depth: i64 = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sources() {
        for ok in [
            "local/app.tar.gz",
            "/opt/app/bin",
            "./x",
            "file:///opt/app.tar.gz",
            "artifacts.example/app",
        ] {
            assert!(is_local_source(ok), "{ok}");
        }
        for remote in [
            "https://example.com/app.tar.gz",
            "http://x/y",
            "git::https://github.com/org/repo",
            "s3::https://s3.amazonaws.com/bucket/key",
            "github.com/hashicorp/nomad",
            "git@github.com:org/repo.git",
            "bucket.s3.amazonaws.com/key",
            "gcs::https://www.googleapis.com/storage/v1/b/o",
            "file://",
        ] {
            assert!(!is_local_source(remote), "{remote}");
        }
    }

    #[test]
    fn escaping_paths() {
        assert!(!escapes("local/"));
        assert!(!escapes("local/../secrets/x"));
        assert!(escapes("../x"));
        assert!(escapes("local/../../x"));
    }
}
