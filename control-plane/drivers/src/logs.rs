//! Task log files with Nomad's rotation scheme.
//!
//! A stream is written to `<dir>/<base>.<n>`: when the current file would grow past the size
//! limit, `<base>.<n+1>` is started, and files older than the newest `max_files` are deleted.
//! Opening a stream continues at the highest index already on disk, so restarts and agent
//! restarts append to the newest file rather than overwriting `.0`.
//!
//! The docker driver copies container output through a [`RotatingFile`]. The process drivers
//! hand the file itself to the child (so a task keeps logging while the agent restarts) and
//! therefore do not rotate.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// An append-only log file that rotates by size.
#[derive(Debug)]
pub struct RotatingFile {
    /// Rotation naming, when the path ends in `.<n>` and rotation is on.
    rotation: Option<Rotation>,
    path: PathBuf,
    file: File,
    size: u64,
    last_modified: Option<SystemTime>,
}

#[derive(Debug)]
struct Rotation {
    dir: PathBuf,
    base: String,
    index: u64,
    max_files: u32,
    max_bytes: u64,
}

impl Rotation {
    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{}.{index}", self.base))
    }

    /// Indexes of this stream's files present in the directory.
    fn indexes_on_disk(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let prefix = format!("{}.", self.base);
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_prefix(&prefix)?.parse::<u64>().ok()
            })
            .collect()
    }
}

/// Splits `task.stdout.0` into (`task.stdout`, 0).
fn split_index(path: &Path) -> Option<(PathBuf, String, u64)> {
    let name = path.file_name()?.to_str()?;
    let (base, index) = name.rsplit_once('.')?;
    let index = index.parse::<u64>().ok()?;
    if base.is_empty() {
        return None;
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    Some((dir, base.to_string(), index))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RotatingFile {
    /// Opens the stream whose first file is `path`, creating its directory.
    ///
    /// Rotation is on when `max_files > 0`, `max_bytes > 0` and the file name ends in `.<n>`
    /// (as the agent names log files); otherwise `path` simply grows.
    pub fn open(path: &Path, max_files: u32, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let rotation = match split_index(path) {
            Some((dir, base, index)) if max_files > 0 && max_bytes > 0 => {
                let mut r = Rotation {
                    dir,
                    base,
                    index,
                    max_files,
                    max_bytes,
                };
                if let Some(newest) = r.indexes_on_disk().into_iter().max() {
                    r.index = r.index.max(newest);
                }
                Some(r)
            }
            _ => None,
        };
        let path = rotation
            .as_ref()
            .map(|r| r.path(r.index))
            .unwrap_or_else(|| path.to_path_buf());
        let file = open_append(&path)?;
        let meta = file.metadata()?;
        let size = meta.len();
        // An empty file holds nothing anybody wrote.
        let last_modified = if size > 0 { meta.modified().ok() } else { None };
        Ok(Self {
            rotation,
            path,
            file,
            size,
            last_modified,
        })
    }

    /// The file currently written to.
    pub fn current_path(&self) -> &Path {
        &self.path
    }

    /// When the newest file was last written before this stream was opened, if it holds
    /// anything. The docker driver resumes a recovered container's output after this instant.
    pub fn last_modified(&self) -> Option<SystemTime> {
        self.last_modified
    }

    /// Appends `buf`, starting a new file first if `buf` would take the current one past the
    /// size limit. A single write larger than the limit goes whole into a fresh file.
    pub fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let over = self.rotation.as_ref().is_some_and(|r| {
            self.size > 0 && self.size.saturating_add(buf.len() as u64) > r.max_bytes
        });
        if over {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size = self.size.saturating_add(buf.len() as u64);
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let Some(r) = self.rotation.as_mut() else {
            return Ok(());
        };
        r.index += 1;
        let path = r.path(r.index);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        self.file = file;
        self.path = path;
        self.size = 0;
        // Keep the newest `max_files`, counting the one just started.
        let keep_from = r.index.saturating_sub(u64::from(r.max_files) - 1);
        for old in r.indexes_on_disk() {
            if old < keep_from
                && let Err(err) = std::fs::remove_file(r.path(old))
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %r.path(old).display(), error = %err, "removing an old log file failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.stdout.0");
        let mut f = RotatingFile::open(&path, 3, 10).unwrap();
        assert_eq!(f.last_modified(), None);
        for i in 0..6 {
            f.write_all(format!("line-{i}\n").as_bytes()).unwrap();
        }
        // 7 bytes a line, 10 bytes a file: one line per file, .0 … .5, the newest 3 kept.
        assert_eq!(
            names(dir.path()),
            vec!["web.stdout.3", "web.stdout.4", "web.stdout.5"]
        );
        assert_eq!(f.current_path(), dir.path().join("web.stdout.5"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("web.stdout.5")).unwrap(),
            "line-5\n"
        );

        // Reopening continues at the newest file.
        drop(f);
        let mut f = RotatingFile::open(&path, 3, 100).unwrap();
        assert!(f.last_modified().is_some());
        f.write_all(b"more\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("web.stdout.5")).unwrap(),
            "line-5\nmore\n"
        );
    }

    #[test]
    fn without_rotation_the_file_just_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/web.stderr.0");
        let mut f = RotatingFile::open(&path, 0, 10).unwrap();
        for _ in 0..5 {
            f.write_all(b"0123456789").unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 50);
        // No index in the name: no rotation either.
        let plain = dir.path().join("plain.log");
        let mut f = RotatingFile::open(&plain, 2, 10).unwrap();
        for _ in 0..3 {
            f.write_all(b"0123456789").unwrap();
        }
        assert_eq!(std::fs::metadata(&plain).unwrap().len(), 30);
    }

    #[test]
    fn splits_indexed_names() {
        let (dir, base, n) = split_index(Path::new("/a/b/task.stdout.12")).unwrap();
        assert_eq!(
            (dir.as_path(), base.as_str(), n),
            (Path::new("/a/b"), "task.stdout", 12)
        );
        assert!(split_index(Path::new("/a/task.stdout")).is_none());
        assert!(split_index(Path::new("/a/.3")).is_none());
    }
}
