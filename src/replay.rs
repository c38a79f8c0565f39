//! The state as of a point in the log: a sequence number, a time, or the
//! end. Rebuilt from the newest usable snapshot at or before that point
//! plus the records after it, reading only; safe while a server appends.
//!
//! Used by `ferroctl replay`, by compaction (to write the base snapshot at
//! the new start of the log), and meant for the server's time-travel reads.
//!
//! Boundary: only records the log still holds can be replayed. After
//! compaction the log starts after a base snapshot, and states before that
//! snapshot are gone from the live log (see `compaction`).

use std::ops::ControlFlow;
use std::path::PathBuf;

use serde::Serialize;

use crate::datadir::Layout;
use crate::log::recovery::{self, ReadOptions, RecordView, RecoveryError, RecoveryMode};
use crate::projection::State;
use crate::snapshot::{self, SnapshotFile};

/// A point in the log's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AsOf {
    /// Just after the record with this sequence number (0: before any).
    Seq(u64),
    /// After every record committed at or before this time.
    TimeUnixNs(u64),
    /// After the last record.
    End,
}

impl AsOf {
    /// Whether the state after record (`seq`, `time_unix_ns`) is at or
    /// before this point.
    fn includes(&self, seq: u64, time_unix_ns: u64) -> bool {
        match *self {
            AsOf::Seq(target) => seq <= target,
            AsOf::TimeUnixNs(target) => time_unix_ns <= target,
            AsOf::End => true,
        }
    }
}

/// What a state was rebuilt from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Base {
    /// The empty state before record 1.
    Empty,
    Snapshot {
        path: PathBuf,
        seq: u64,
    },
}

/// A snapshot that could not serve as the base, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedSnapshot {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Replayed {
    pub state: State,
    /// Checksum of the last record applied (`state.last_seq`); what a
    /// snapshot of this state must carry.
    pub crc: u32,
    pub base: Base,
    pub records_replayed: u64,
    pub skipped_snapshots: Vec<SkippedSnapshot>,
    /// First sequence number the live log holds (above 1 after compaction).
    pub log_first_seq: Option<u64>,
    /// Last valid record of the log when it was read.
    pub log_last_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] RecoveryError),
    #[error("cannot list snapshots in {path}: {source}")]
    Snapshots {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sequence {target} is past the end of the log (last record {log_last_seq})")]
    PastEnd { target: u64, log_last_seq: u64 },
    #[error("the log starts at sequence {log_first_seq}: older history was compacted, and states before sequence {earliest} cannot be rebuilt")]
    Compacted { log_first_seq: u64, earliest: u64 },
    #[error("the log starts at sequence {log_first_seq}, after the base state's {base_seq}: records are missing")]
    BaseNotInLog { base_seq: u64, log_first_seq: u64 },
    #[error("the base state at sequence {base_seq} carries checksum {base_crc:#010x} but the log's record has {log_crc:#010x}: not the same history")]
    BaseNotOfThisLog {
        base_seq: u64,
        base_crc: u32,
        log_crc: u32,
    },
}

/// Rebuilds the state as of `at`. `on_record` sees every record read
/// (progress reporting).
pub fn state_as_of(
    layout: &Layout,
    at: AsOf,
    on_record: &mut dyn FnMut(&RecordView<'_>),
) -> Result<Replayed, ReplayError> {
    let snapshots_dir = layout.snapshots_dir();
    let files = snapshot::list(&snapshots_dir).map_err(|source| ReplayError::Snapshots {
        path: snapshots_dir.clone(),
        source,
    })?;
    let mut skipped = Vec::new();
    // Newest first: the shortest replay wins.
    for file in files.iter().rev() {
        match try_snapshot_base(layout, file, at, on_record)? {
            Attempt::Done(mut replayed) => {
                replayed.skipped_snapshots = skipped;
                return Ok(replayed);
            }
            Attempt::NotBefore => {}
            Attempt::Unusable(reason) => skipped.push(SkippedSnapshot {
                path: file.path.clone(),
                reason,
            }),
        }
    }
    match replay_onto(layout, State::default(), 0, Base::Empty, at, on_record) {
        Ok(mut replayed) => {
            replayed.skipped_snapshots = skipped;
            check_reached(&replayed, at)?;
            Ok(replayed)
        }
        Err(ReplayError::BaseNotInLog { log_first_seq, .. }) => {
            let earliest = files
                .iter()
                .filter(|f| snapshot::check(f).is_ok())
                .map(|f| f.seq)
                .find(|&s| s + 1 >= log_first_seq)
                .unwrap_or(log_first_seq);
            Err(ReplayError::Compacted {
                log_first_seq,
                earliest,
            })
        }
        Err(e) => Err(e),
    }
}

// One value per replay attempt, moved once: boxing the state would buy
// nothing.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Done(Replayed),
    /// The snapshot is after the point asked for.
    NotBefore,
    Unusable(String),
}

fn try_snapshot_base(
    layout: &Layout,
    file: &SnapshotFile,
    at: AsOf,
    on_record: &mut dyn FnMut(&RecordView<'_>),
) -> Result<Attempt, ReplayError> {
    let header = match snapshot::read_header(file) {
        Ok(h) => h,
        Err(e) => return Ok(Attempt::Unusable(e.reason())),
    };
    if !at.includes(header.seq, header.time_unix_ns) {
        return Ok(Attempt::NotBefore);
    }
    let loaded = match snapshot::load(file) {
        Ok(l) => l,
        Err(e) => return Ok(Attempt::Unusable(e.reason())),
    };
    let base = Base::Snapshot {
        path: file.path.clone(),
        seq: header.seq,
    };
    let replayed = match replay_onto(
        layout,
        loaded.state,
        loaded.header.chain_crc,
        base,
        at,
        on_record,
    ) {
        Ok(r) => r,
        // A snapshot the log does not continue is unusable, not fatal.
        Err(e @ (ReplayError::BaseNotInLog { .. } | ReplayError::BaseNotOfThisLog { .. })) => {
            return Ok(Attempt::Unusable(e.to_string()))
        }
        Err(e) => return Err(e),
    };
    if replayed.log_last_seq < header.seq {
        return Ok(Attempt::Unusable(format!(
            "it is at sequence {} but the log ends at {}",
            header.seq, replayed.log_last_seq
        )));
    }
    check_reached(&replayed, at)?;
    Ok(Attempt::Done(replayed))
}

/// Replays the records after `base_state` up to `at`, checking that the log
/// holds `base_state`'s last record with checksum `base_crc`.
fn replay_onto(
    layout: &Layout,
    mut state: State,
    base_crc: u32,
    base: Base,
    at: AsOf,
    on_record: &mut dyn FnMut(&RecordView<'_>),
) -> Result<Replayed, ReplayError> {
    let base_seq = state.last_seq;
    let log_dir = layout.log_dir();
    if let Some((log_first_seq, _)) = recovery::first_segment_after(&log_dir, base_seq)? {
        return Err(ReplayError::BaseNotInLog {
            base_seq,
            log_first_seq,
        });
    }
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: base_seq,
        skip_covered_segments: base_seq > 0,
    };
    let mut crc = base_crc;
    let mut replayed = 0u64;
    let report = recovery::read_log(&log_dir, &options, &mut |record| {
        on_record(record);
        if !at.includes(record.seq, record.time_unix_ns) {
            return Ok(ControlFlow::Break(()));
        }
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        state.apply(record.seq, record.time_unix_ns, &entry);
        crc = record.crc;
        replayed += 1;
        if matches!(at, AsOf::Seq(t) if record.seq == t) {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    match report.crc_at_replay_after {
        Some(log_crc) if log_crc != base_crc => {
            return Err(ReplayError::BaseNotOfThisLog {
                base_seq,
                base_crc,
                log_crc,
            })
        }
        _ => {}
    }
    Ok(Replayed {
        state,
        crc,
        base,
        records_replayed: replayed,
        skipped_snapshots: Vec::new(),
        log_first_seq: report.first_seq,
        log_last_seq: report.last_seq,
    })
}

fn check_reached(replayed: &Replayed, at: AsOf) -> Result<(), ReplayError> {
    match at {
        AsOf::Seq(target) if replayed.state.last_seq < target => Err(ReplayError::PastEnd {
            target,
            log_last_seq: replayed.log_last_seq.max(replayed.state.last_seq),
        }),
        _ => Ok(()),
    }
}
