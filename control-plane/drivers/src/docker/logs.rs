//! Copying a container's output into the task's log files.
//!
//! The output is read with `timestamps=true`, so every frame starts with the daemon's
//! RFC 3339 timestamp, and each stream remembers the newest one it wrote: a second pass (the
//! catch-up once the container has stopped) writes only what the first missed. When a
//! container is recovered, each stream resumes after the last
//! write to its file (the newest file's modification time): what the previous agent wrote is
//! not written again, and what the container printed while no agent was listening is not lost.
//! File times are coarse (the kernel stamps them with the last timer tick), so frames stamped
//! up to [`RESUME_SLACK_NANOS`] after the last write count as written: a line the previous agent
//! received in that window but never wrote is lost rather than a written one duplicated.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures::StreamExt;

use crate::logs::RotatingFile;
use crate::{DriverError, TaskSpec};

/// How much later than a file's modification time a frame may be stamped and still count as
/// written (one timer tick at the slowest common kernel `HZ` of 100).
pub const RESUME_SLACK_NANOS: i64 = 10_000_000;

/// One output stream's file and where to resume.
struct Target {
    file: RotatingFile,
    /// Frames stamped at or before this instant (Unix nanoseconds) are already in the file.
    after: Option<i64>,
    failed: bool,
}

impl Target {
    fn open(path: &Path, spec: &TaskSpec, resume: bool) -> Result<Self, DriverError> {
        let max_bytes = spec.log_max_file_size_mb.saturating_mul(1024 * 1024);
        let file = RotatingFile::open(path, spec.log_max_files, max_bytes).map_err(|source| {
            DriverError::Io {
                what: "opening log file",
                path: path.to_path_buf(),
                source,
            }
        })?;
        let after = if resume {
            file.last_modified()
                .and_then(unix_nanos)
                .map(|t| t.saturating_add(RESUME_SLACK_NANOS))
        } else {
            None
        };
        Ok(Self {
            file,
            after,
            failed: false,
        })
    }

    fn write(&mut self, frame: &[u8]) {
        let (stamp, body) = split_timestamp(frame);
        if let (Some(after), Some(stamp)) = (self.after, stamp)
            && stamp <= after
        {
            return;
        }
        if let Err(err) = self.file.write_all(body)
            && !self.failed
        {
            // Once per stream: a full disk would otherwise log every line.
            self.failed = true;
            tracing::warn!(file = %self.file.current_path().display(), error = %err, "writing task log failed");
        }
        // Later passes over the same output (the catch-up after the exit) skip what is written.
        if let Some(stamp) = stamp {
            self.after = Some(self.after.map_or(stamp, |a| a.max(stamp)));
        }
    }
}

/// Both output streams of one container.
pub(super) struct LogTargets {
    stdout: Target,
    stderr: Target,
}

impl LogTargets {
    /// Opens the task's log files. `resume`: the container was running before this agent,
    /// so skip what the files already hold.
    pub(super) fn open(spec: &TaskSpec, resume: bool) -> Result<Self, DriverError> {
        Ok(Self {
            stdout: Target::open(&spec.stdout_path, spec, resume)?,
            stderr: Target::open(&spec.stderr_path, spec, resume)?,
        })
    }

    /// The `since` to ask the daemon for: the earlier resume point, in whole seconds (0,
    /// everything, when a stream has none).
    fn since_secs(&self) -> i32 {
        match (self.stdout.after, self.stderr.after) {
            (Some(a), Some(b)) => i32::try_from(a.min(b).div_euclid(1_000_000_000)).unwrap_or(0),
            _ => 0,
        }
    }
}

/// Copies the container's output that is newer than what the files hold. With `follow`, keeps
/// copying until the container stops (the daemon then ends the stream) or the stream fails;
/// without, copies what there is and returns. A follow stream can end short of the last lines,
/// so the exit path makes one more pass without `follow`.
pub(super) async fn pump(
    docker: &bollard::Docker,
    id: &str,
    targets: &mut LogTargets,
    follow: bool,
) {
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        timestamps: true,
        since: targets.since_secs(),
        ..Default::default()
    };
    let mut stream = std::pin::pin!(docker.logs(id, Some(options)));
    while let Some(item) = stream.next().await {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                targets.stdout.write(&message)
            }
            Ok(LogOutput::StdErr { message }) => targets.stderr.write(&message),
            Ok(LogOutput::StdIn { .. }) => {}
            Err(err) => {
                tracing::warn!(container = %id, error = %err, "reading container output failed");
                break;
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> Option<i64> {
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()
}

/// Splits `"<RFC 3339 timestamp> <line>"` into the instant and the line. A frame that does not
/// start with a timestamp is returned whole.
pub fn split_timestamp(frame: &[u8]) -> (Option<i64>, &[u8]) {
    let Some(space) = frame.iter().take(40).position(|b| *b == b' ') else {
        return (None, frame);
    };
    match std::str::from_utf8(&frame[..space])
        .ok()
        .and_then(parse_rfc3339_nanos)
    {
        Some(t) => (Some(t), &frame[space + 1..]),
        None => (None, frame),
    }
}

/// Parses `2024-01-02T03:04:05.123456789Z` (or with a `±hh:mm` offset) to Unix nanoseconds.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac.bytes().take(digits).enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i64::from(c - b'0');
            }
        }
        for _ in digits..9 {
            nanos *= 10;
        }
        rest = &frac[digits..];
    }
    let offset_secs = match rest.as_bytes() {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let h = num(s.len() - 5, s.len() - 3)?;
            let m = num(s.len() - 2, s.len())?;
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2024-02-29T12:34:56.5Z"),
            Some(1_709_210_096_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-02-29T13:34:56.000000001+01:00"),
            Some(1_709_210_096_000_000_001)
        );
        assert_eq!(parse_rfc3339_nanos("2024-02-29 13:34:56Z"), None);
        assert_eq!(parse_rfc3339_nanos("2024-02-29T13:34:56."), None);
        assert_eq!(parse_rfc3339_nanos("hello"), None);
    }

    #[test]
    fn frames_split_at_the_timestamp() {
        let (t, body) = split_timestamp(b"2024-02-29T12:34:56.5Z hello world\n");
        assert_eq!(t, Some(1_709_210_096_500_000_000));
        assert_eq!(body, b"hello world\n");
        let (t, body) = split_timestamp(b"no timestamp here\n");
        assert_eq!(t, None);
        assert_eq!(body, b"no timestamp here\n");
    }
}
