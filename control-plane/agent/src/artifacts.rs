//! `artifact` blocks: files copied into the task directory before the task starts.
//!
//! Only local sources are fetched: an absolute path, a `file://` URL or go-getter's forced
//! `file::` form. Anything else (`http://`, `git::`, `s3::`, …) is refused with a message that
//! says so. Unlike go-getter, archives are copied as they are, not unpacked.
//!
//! `relative_dest` (default `local/`) is relative to the task directory. In mode `any` (the
//! default) a file source lands in the destination directory under its own name and a directory
//! source has its contents copied into it; in mode `file` the destination names the file; in
//! mode `dir` the source must be a directory.

use std::path::{Path, PathBuf};

use flotilla_proto::agent::v1 as pb;

use crate::template::within;

/// Why an artifact could not be fetched; the text names the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("artifact {artifact:?}: {message}")]
pub struct ArtifactError {
    /// The source as the job gave it.
    pub artifact: String,
    pub message: String,
}

/// The local path an artifact source names.
pub fn local_source(source: &str) -> Result<PathBuf, String> {
    let s = source.trim();
    let s = s.strip_prefix("file::").unwrap_or(s);
    let path = if let Some(rest) = s.strip_prefix("file://") {
        // file:///abs/path or file://localhost/abs/path.
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        percent_decode(rest)?
    } else if s.contains("://") || s.contains("::") {
        return Err(
            "only local sources (an absolute path or a file:// URL) are supported on this node"
                .into(),
        );
    } else {
        s.to_string()
    };
    if path.is_empty() {
        return Err("empty source".into());
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err("expected an absolute path or a file:// URL".into());
    }
    Ok(path)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Fetches `artifact` into `task_dir`; returns where it landed.
pub fn fetch(task_dir: &Path, artifact: &pb::Artifact) -> Result<PathBuf, ArtifactError> {
    let err = |message: String| ArtifactError {
        artifact: artifact.source.clone(),
        message,
    };
    let source = local_source(&artifact.source).map_err(err)?;
    let dest_rel = if artifact.relative_dest.trim().is_empty() {
        "local/"
    } else {
        artifact.relative_dest.as_str()
    };
    let dest = within(task_dir, dest_rel).map_err(|m| err(format!("destination: {m}")))?;
    let meta = std::fs::metadata(&source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err(format!("{} does not exist", source.display()))
        } else {
            err(format!("{}: {e}", source.display()))
        }
    })?;
    let mode = artifact.mode.trim().to_ascii_lowercase();
    let io =
        |what: &str, path: &Path, e: std::io::Error| err(format!("{what} {}: {e}", path.display()));
    match (mode.as_str(), meta.is_dir()) {
        ("" | "any" | "dir", true) => {
            copy_dir(&source, &dest)
                .map_err(|e| err(format!("copying into {}: {e}", dest.display())))?;
            Ok(dest)
        }
        ("dir", false) => Err(err(format!(
            "{} is not a directory (mode is \"dir\")",
            source.display()
        ))),
        ("file", true) => Err(err(format!(
            "{} is a directory (mode is \"file\")",
            source.display()
        ))),
        ("file", false) => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
            }
            std::fs::copy(&source, &dest).map_err(|e| io("copying to", &dest, e))?;
            Ok(dest)
        }
        ("" | "any", false) => {
            std::fs::create_dir_all(&dest).map_err(|e| io("creating", &dest, e))?;
            let name = source
                .file_name()
                .ok_or_else(|| err("the source names no file".into()))?;
            let target = dest.join(name);
            std::fs::copy(&source, &target).map_err(|e| io("copying to", &target, e))?;
            Ok(target)
        }
        (other, _) => Err(err(format!(
            "mode: expected any, file or dir, got {other:?}"
        ))),
    }
}

/// Copies the contents of `from` into `to` (created), recursively. Symbolic links are copied
/// as links, never followed.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(local_source("/a/b").unwrap(), Path::new("/a/b"));
        assert_eq!(
            local_source("file:///a/b%20c").unwrap(),
            Path::new("/a/b c")
        );
        assert_eq!(local_source("file://localhost/a").unwrap(), Path::new("/a"));
        assert_eq!(local_source("file::/a").unwrap(), Path::new("/a"));
        let err = local_source("https://example.com/x.tgz").unwrap_err();
        assert!(err.contains("only local sources"), "{err}");
        assert!(local_source("git::https://x/y").is_err());
        assert!(local_source("relative/x").is_err());
        assert!(local_source("file:///a%2").is_err());
    }

    #[test]
    fn copies_files_and_dirs() {
        let src = tempfile::tempdir().unwrap();
        let task = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("app.bin"), "bin").unwrap();
        std::fs::create_dir_all(src.path().join("tree/sub")).unwrap();
        std::fs::write(src.path().join("tree/sub/x.txt"), "x").unwrap();

        let file = src.path().join("app.bin");
        let got = fetch(
            task.path(),
            &pb::Artifact {
                source: file.display().to_string(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(got, task.path().join("local/app.bin"));
        assert_eq!(std::fs::read_to_string(got).unwrap(), "bin");

        let got = fetch(
            task.path(),
            &pb::Artifact {
                source: format!("file://{}", src.path().join("tree").display()),
                relative_dest: "local/conf".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(got.join("sub/x.txt")).unwrap(), "x");

        let got = fetch(
            task.path(),
            &pb::Artifact {
                source: file.display().to_string(),
                relative_dest: "local/renamed".into(),
                mode: "file".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(got, task.path().join("local/renamed"));
        assert!(got.is_file());

        let err = fetch(
            task.path(),
            &pb::Artifact {
                source: "/no/such/flotilla/artifact".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/no/such/flotilla/artifact") && err.contains("does not exist"),
            "{err}"
        );
        let err = fetch(
            task.path(),
            &pb::Artifact {
                source: file.display().to_string(),
                relative_dest: "../out".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("leaves the task directory"), "{err}");
    }
}
