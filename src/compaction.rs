//! Compaction: taking old segments out of the live log once the history
//! retention setting no longer asks for them.
//!
//! A sealed segment may leave the log when all of these hold:
//! - every record in it is older than the retention horizon (now minus
//!   the retention); with the default retention, `forever`, none is;
//! - every record in it is at or before the newest valid snapshot;
//! - every segment before it leaves too (the log stays one contiguous
//!   chain), and it is not the active (last) segment;
//! - every record in it was acknowledged by every enabled notification
//!   endpoint (`keep_after_seq`), unless `notifications.hold` is
//!   `"retention"` (see `notify`).
//!
//! Before any segment leaves, a *base snapshot* is written at the last
//! sequence number that leaves (rebuilt from an older snapshot and the log
//! if there is none there). The live log then always starts at record 1 or
//! right after a snapshot that pruning keeps (see `snapshot::plan_prune`),
//! so the current state, and every state within the kept history, can
//! still be rebuilt. Segments leave oldest first, so a crash at any step
//! leaves a valid log.
//!
//! Segments leave to `archive/log/` by default rather than being deleted:
//! a rename is instant and atomic, the registry never destroys history on
//! its own, and the operator decides whether archived segments go to cold
//! storage or away (`compacted_segments = "delete"` removes them instead).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::datadir::Layout;
use crate::fsutil::{create_dir_all_durable, fsync_dir};
use crate::limits::RECORD_PAYLOAD_BYTES_MAX;
use crate::log::format::{read_record, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::log::segment::list_segments;
use crate::replay::{self, AsOf, ReplayError};
use crate::snapshot::{self, SnapshotError, SnapshotFile, WrittenSnapshot};

/// How long the log keeps history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Every record stays in the live log. The default.
    #[default]
    Forever,
    /// Records older than this may leave the live log.
    For(Duration),
}

impl FromStr for Retention {
    type Err = String;

    /// `forever`, or a duration such as `30d`, `12h`, `1w 2d`.
    fn from_str(s: &str) -> Result<Retention, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            return Ok(Retention::Forever);
        }
        humantime::parse_duration(s)
            .map(Retention::For)
            .map_err(|e| {
                format!("{s:?} is neither \"forever\" nor a duration like 30d or 12h: {e}")
            })
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Forever => f.write_str("forever"),
            Retention::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Retention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What happens to segments that leave the live log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactedSegments {
    /// Moved to `archive/log/`. The default.
    #[default]
    Archive,
    /// Removed.
    Delete,
}

#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    pub retention: Retention,
    pub now_unix_ns: u64,
    pub compacted_segments: CompactedSegments,
    /// Snapshots kept besides the base (see `snapshot::plan_prune`).
    pub snapshots_keep: usize,
    /// Records after this one stay in the live log whatever their age:
    /// notification endpoints have not acknowledged them yet.
    pub keep_after_seq: Option<u64>,
}

/// A segment that will leave the live log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeavingSegment {
    pub path: PathBuf,
    pub first_seq: u64,
    pub last_seq: u64,
    /// An upper bound of its last record's commit time: that of the next
    /// segment's first record or of a snapshot after it, whichever is
    /// earlier.
    pub last_time_unix_ns_max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactionPlan {
    pub segments: Vec<LeavingSegment>,
    /// The last sequence number leaving (0: none); the base snapshot's.
    pub horizon_seq: u64,
    /// Why compaction stops where it does.
    pub limited_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompactionReport {
    pub plan: CompactionPlan,
    pub base_snapshot: Option<PathBuf>,
    /// Set when a base snapshot had to be written.
    pub written_snapshot: Option<WrittenSnapshot>,
    /// Where each segment went (`None`: deleted).
    pub moved: Vec<(PathBuf, Option<PathBuf>)>,
    pub snapshots_removed: Vec<SnapshotFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot rebuild the state for the base snapshot: {0}")]
    Replay(#[from] ReplayError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CompactionError + '_ {
    move |source| CompactionError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Decides which segments may leave the live log. Only reads.
pub fn plan(layout: &Layout, options: &CompactOptions) -> Result<CompactionPlan, CompactionError> {
    let mut plan = CompactionPlan {
        segments: Vec::new(),
        horizon_seq: 0,
        limited_by: String::new(),
    };
    let retain = match options.retention {
        Retention::Forever => {
            plan.limited_by = "history retention is forever".into();
            return Ok(plan);
        }
        Retention::For(d) => d,
    };
    let cutoff_unix_ns = options
        .now_unix_ns
        .saturating_sub(u64::try_from(retain.as_nanos()).unwrap_or(u64::MAX));
    let snapshots_dir = layout.snapshots_dir();
    let files = snapshot::list(&snapshots_dir).map_err(io_err(&snapshots_dir))?;
    let Some(newest) = files.iter().rev().find(|f| snapshot::check(f).is_ok()) else {
        plan.limited_by = "there is no valid snapshot".into();
        return Ok(plan);
    };
    // Commit times never go backwards, so a record's time is at most that
    // of any later record: of the next segment's first record, or of a
    // snapshot at or after it (its header holds its record's time).
    let snapshot_times: Vec<(u64, u64)> = files
        .iter()
        .filter_map(|f| {
            snapshot::read_header(f)
                .ok()
                .map(|h| (h.seq, h.time_unix_ns))
        })
        .collect();
    let log_dir = layout.log_dir();
    let segments = list_segments(&log_dir).map_err(io_err(&log_dir))?;
    for pair in segments.windows(2) {
        let ((first_seq, path), (next_first_seq, next_path)) = (&pair[0], &pair[1]);
        let last_seq = next_first_seq - 1;
        if last_seq > newest.seq {
            plan.limited_by = format!("the newest snapshot is at sequence {}", newest.seq);
            break;
        }
        if let Some(keep_after) = options.keep_after_seq.filter(|k| last_seq > *k) {
            plan.limited_by = format!(
                "notification endpoints have acknowledged only up to sequence {keep_after}"
            );
            break;
        }
        let by_snapshot = snapshot_times
            .iter()
            .filter(|(seq, _)| *seq >= last_seq)
            .map(|(_, time)| *time)
            .min();
        let by_next_record = first_record_time(next_path)?;
        let Some(last_time_max) = by_snapshot.into_iter().chain(by_next_record).min() else {
            plan.limited_by = format!("the commit time of sequence {last_seq} is not known yet");
            break;
        };
        if last_time_max >= cutoff_unix_ns {
            plan.limited_by = format!(
                "{} (from sequence {first_seq}) may hold records within the retention",
                path.display()
            );
            break;
        }
        plan.segments.push(LeavingSegment {
            path: path.clone(),
            first_seq: *first_seq,
            last_seq,
            last_time_unix_ns_max: last_time_max,
        });
        plan.horizon_seq = last_seq;
    }
    if plan.limited_by.is_empty() {
        plan.limited_by = "the active segment always stays".into();
    }
    Ok(plan)
}

/// The commit time of a segment's first record, if it has one that
/// verifies (its checksum covers the time).
fn first_record_time(path: &Path) -> Result<Option<u64>, CompactionError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES];
    if let Err(e) = f.read_exact(&mut head) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(io_err(path)(e)),
        };
    }
    let len_at = SEGMENT_HEADER_BYTES + 4;
    let payload_len = u32::from_le_bytes(head[len_at..len_at + 4].try_into().expect("4 bytes"));
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Ok(None);
    }
    let mut record = head.split_off(SEGMENT_HEADER_BYTES);
    let header_len = record.len();
    record.resize(header_len + payload_len as usize, 0);
    if let Err(e) = f.read_exact(&mut record[header_len..]) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(None),
            _ => Err(io_err(path)(e)),
        };
    }
    Ok(read_record(&record).ok().map(|r| r.header.time_unix_ns))
}

/// Carries out [`plan`]: writes the base snapshot, moves (or deletes) the
/// leaving segments oldest first, then prunes snapshots. The caller holds
/// the data directory (server or an offline tool).
pub fn compact(
    layout: &Layout,
    options: &CompactOptions,
) -> Result<CompactionReport, CompactionError> {
    let plan = plan(layout, options)?;
    let mut report = CompactionReport {
        plan,
        base_snapshot: None,
        written_snapshot: None,
        moved: Vec::new(),
        snapshots_removed: Vec::new(),
    };
    if report.plan.segments.is_empty() {
        return Ok(report);
    }
    let horizon = report.plan.horizon_seq;
    let snapshots_dir = layout.snapshots_dir();
    let existing = snapshot::list(&snapshots_dir)
        .map_err(io_err(&snapshots_dir))?
        .into_iter()
        .find(|f| f.seq == horizon && snapshot::check(f).is_ok());
    report.base_snapshot = Some(match existing {
        Some(f) => f.path,
        None => {
            let replayed = replay::state_as_of(layout, AsOf::Seq(horizon), &mut |_| {})?;
            debug_assert_eq!(replayed.state.last_seq, horizon);
            let written = snapshot::write(&snapshots_dir, &replayed.state, replayed.crc)?;
            let path = written.path.clone();
            report.written_snapshot = Some(written);
            path
        }
    });
    let log_dir = layout.log_dir();
    let archive_dir = layout.root.join("archive").join("log");
    for segment in &report.plan.segments {
        let target = match options.compacted_segments {
            CompactedSegments::Archive => {
                create_dir_all_durable(&archive_dir).map_err(io_err(&archive_dir))?;
                let target = free_name(&archive_dir, &segment.path);
                fs::rename(&segment.path, &target).map_err(io_err(&segment.path))?;
                fsync_dir(&archive_dir).map_err(io_err(&archive_dir))?;
                Some(target)
            }
            CompactedSegments::Delete => {
                fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
                None
            }
        };
        fsync_dir(&log_dir).map_err(io_err(&log_dir))?;
        report.moved.push((segment.path.clone(), target));
    }
    report.snapshots_removed =
        snapshot::prune(&snapshots_dir, options.snapshots_keep, Some(horizon + 1))
            .map_err(io_err(&snapshots_dir))?;
    Ok(report)
}

/// `dir/<name>`, or `dir/<name>.<n>` when an earlier archive (of a history
/// that a repair cut) already used the name.
fn free_name(dir: &Path, source: &Path) -> PathBuf {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = dir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_and_prints() {
        assert_eq!("forever".parse::<Retention>(), Ok(Retention::Forever));
        assert_eq!(
            "30d".parse::<Retention>(),
            Ok(Retention::For(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(
            "12h".parse::<Retention>(),
            Ok(Retention::For(Duration::from_secs(12 * 3600)))
        );
        assert!("soon".parse::<Retention>().is_err());
        let r = Retention::For(Duration::from_secs(86_400));
        assert_eq!(r.to_string().parse::<Retention>(), Ok(r));
    }
}
