//! Reading a task's rotated log files as one stream.
//!
//! Drivers write `<task>.<stdout|stderr>.<n>` under the allocation's `alloc/logs/` and move to
//! `n + 1` when a file reaches `max_file_size`, deleting the oldest beyond `max_files` (Nomad's
//! logmon scheme). The lowest index still present is the oldest file, the highest the one
//! being written. [`LogReader`] reads them in index order as if they were one file: offsets
//! count across files, reading moves on to the next file at the end of one, and following
//! waits for more bytes (or a new file) until the allocation is done.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::env::LogKind;

/// How often a followed log is polled for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes read per chunk.
const CHUNK: usize = 64 * 1024;

/// The rotated files of one task's stream.
#[derive(Debug, Clone)]
pub struct LogFiles {
    dir: PathBuf,
    prefix: String,
}

impl LogFiles {
    /// The `kind` stream of `task` in the logs directory `dir`.
    pub fn new(dir: PathBuf, task: &str, kind: LogKind) -> Self {
        Self {
            dir,
            prefix: format!("{task}.{}.", kind.as_str()),
        }
    }

    /// The file with index `n`.
    pub fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{}{n}", self.prefix))
    }

    /// The files present, oldest first: (index, length).
    pub async fn list(&self) -> std::io::Result<Vec<(u64, u64)>> {
        let mut found = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&self.prefix))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            // A file rotated away between listing and stat is simply skipped.
            if let Ok(meta) = entry.metadata().await
                && meta.is_file()
            {
                found.push((index, meta.len()));
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// Whether any file of the stream exists.
    pub async fn exists(&self) -> bool {
        self.list().await.is_ok_and(|l| !l.is_empty())
    }
}

/// Where reading starts across `files` (oldest first, with lengths): `offset` bytes from the
/// start of the oldest file, or back from the end of the newest. Returns (index, position).
pub fn start_position(files: &[(u64, u64)], from_end: bool, offset: u64) -> (u64, u64) {
    let (Some(first), Some(last)) = (files.first(), files.last()) else {
        return (0, 0);
    };
    let mut left = offset;
    if from_end {
        for &(index, len) in files.iter().rev() {
            if left <= len {
                return (index, len - left);
            }
            left -= len;
        }
        (first.0, 0)
    } else {
        for &(index, len) in files {
            if left < len {
                return (index, left);
            }
            left -= len;
        }
        (last.0, last.1)
    }
}

/// A position in a task's log stream that yields chunks until the end (or, following, until
/// the allocation is done or the agent shuts down).
pub struct LogReader {
    files: LogFiles,
    index: u64,
    pos: u64,
    file: Option<tokio::fs::File>,
    follow: bool,
    /// Turns true when the allocation's tasks have all ended; `None` when it does not run here.
    done: Option<watch::Receiver<bool>>,
    shutdown: watch::Receiver<bool>,
    /// Not following (any more): read to the end, then stop.
    draining: bool,
    finished: bool,
}

impl LogReader {
    /// A reader of `files` starting `offset` bytes from the start (or the end).
    pub async fn open(
        files: LogFiles,
        from_end: bool,
        offset: u64,
        follow: bool,
        done: Option<watch::Receiver<bool>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let list = files.list().await.unwrap_or_default();
        let (index, pos) = start_position(&list, from_end, offset);
        Self {
            files,
            index,
            pos,
            file: None,
            follow,
            done,
            shutdown,
            draining: false,
            finished: false,
        }
    }

    /// The reader as a stream of chunks.
    pub fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
        futures::stream::unfold(self, |mut r| async move {
            r.next_chunk().await.map(|chunk| (chunk, r))
        })
    }

    fn live(&self) -> bool {
        self.follow && !*self.shutdown.borrow() && self.done.as_ref().is_some_and(|d| !*d.borrow())
    }

    /// The next file after the current one, if one exists.
    async fn next_index(&self) -> std::io::Result<Option<u64>> {
        Ok(self
            .files
            .list()
            .await?
            .into_iter()
            .map(|(i, _)| i)
            .find(|i| *i > self.index))
    }

    /// Reads what is there now, moving across files; `Ok(None)` at the current end.
    async fn read_some(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.file.is_none() {
                match tokio::fs::File::open(self.files.path(self.index)).await {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(self.pos)).await?;
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Rotated away (or not written yet): go on with the next one, if any.
                        match self.next_index().await? {
                            Some(next) => {
                                self.index = next;
                                self.pos = 0;
                                continue;
                            }
                            None => return Ok(None),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(f) = self.file.as_mut() else {
                return Ok(None);
            };
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf).await?;
            if n > 0 {
                buf.truncate(n);
                self.pos += n as u64;
                return Ok(Some(Bytes::from(buf)));
            }
            // At the end of this file: a newer one means this one is complete.
            match self.next_index().await? {
                Some(next) => {
                    self.file = None;
                    self.index = next;
                    self.pos = 0;
                }
                None => return Ok(None),
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        loop {
            match self.read_some().await {
                Ok(Some(bytes)) => return Some(Ok(bytes)),
                Ok(None) => {}
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
            if self.draining {
                self.finished = true;
                return None;
            }
            if !self.live() {
                // Read on to the end once more: bytes written just before the task ended.
                self.draining = true;
                continue;
            }
            let mut shutdown = self.shutdown.clone();
            let mut done = self.done.clone();
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = shutdown.wait_for(|s| *s) => {}
                _ = async {
                    match done.as_mut() {
                        Some(d) => { let _ = d.wait_for(|d| *d).await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
    }
}

/// The logs directory of an allocation.
pub fn logs_dir(data_dir: &Path, alloc_id: &str) -> PathBuf {
    crate::env::alloc_root(data_dir, alloc_id)
        .join("alloc")
        .join("logs")
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn positions_span_files() {
        let files = [(3, 10), (4, 10), (5, 5)];
        assert_eq!(start_position(&files, false, 0), (3, 0));
        assert_eq!(start_position(&files, false, 12), (4, 2));
        assert_eq!(start_position(&files, false, 25), (5, 5));
        assert_eq!(start_position(&files, false, 99), (5, 5));
        assert_eq!(start_position(&files, true, 0), (5, 5));
        assert_eq!(start_position(&files, true, 5), (5, 0));
        assert_eq!(start_position(&files, true, 7), (4, 8));
        assert_eq!(start_position(&files, true, 99), (3, 0));
        assert_eq!(start_position(&[], true, 5), (0, 0));
    }

    async fn read_all(files: LogFiles, from_end: bool, offset: u64) -> String {
        let (_tx, shutdown) = watch::channel(false);
        let reader = LogReader::open(files, from_end, offset, false, None, shutdown).await;
        let chunks: Vec<_> = reader.into_stream().collect().await;
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&c.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn reads_rotated_files_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        // Index 10 sorts after 9 (numerically, not as text); 0..=7 were rotated away.
        for (i, text) in [(8, "eight\n"), (9, "nine\n"), (10, "ten\n")] {
            std::fs::write(dir.path().join(format!("web.stdout.{i}")), text).unwrap();
        }
        std::fs::write(dir.path().join("web.stderr.0"), "err\n").unwrap();
        std::fs::write(dir.path().join("web.stdout.x"), "junk").unwrap();
        let files = LogFiles::new(dir.path().to_path_buf(), "web", LogKind::Stdout);
        assert_eq!(files.list().await.unwrap(), [(8, 6), (9, 5), (10, 4)]);
        assert_eq!(
            read_all(files.clone(), false, 0).await,
            "eight\nnine\nten\n"
        );
        assert_eq!(read_all(files.clone(), false, 8).await, "ne\nten\n");
        assert_eq!(read_all(files.clone(), true, 6).await, "e\nten\n");
        let missing = LogFiles::new(dir.path().join("nope"), "web", LogKind::Stdout);
        assert!(!missing.exists().await);
        assert_eq!(read_all(missing, false, 0).await, "");
    }

    #[tokio::test]
    async fn following_moves_to_new_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.stdout.0"), "a").unwrap();
        let files = LogFiles::new(dir.path().to_path_buf(), "t", LogKind::Stdout);
        let (done_tx, done) = watch::channel(false);
        let (_sd, shutdown) = watch::channel(false);
        let reader = LogReader::open(files, false, 0, true, Some(done), shutdown).await;
        let mut stream = Box::pin(reader.into_stream());
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"a");
        std::fs::write(dir.path().join("t.stdout.0"), "ab").unwrap();
        std::fs::write(dir.path().join("t.stdout.1"), "c").unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend_from_slice(&stream.next().await.unwrap().unwrap());
        }
        assert_eq!(got, b"bc");
        done_tx.send_replace(true);
        assert!(stream.next().await.is_none());
    }
}
