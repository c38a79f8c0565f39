//! Startup: the newest valid snapshot plus the log after it.
//!
//! Snapshots are tried newest first. One that fails a check (checksum,
//! decoding, version), that the log does not reach (the log ends before
//! it), or whose chain checksum is not the log's record at its sequence
//! number is reported and skipped, never trusted. When none is usable the
//! whole log is replayed; when the log no longer starts at record 1
//! (compaction) and no snapshot is usable, startup fails.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::datadir::Layout;
use crate::log::{self, OpenError, OpenedLog, RecoveryMode, WriterOptions};
use crate::projection::State;
use crate::snapshot;
use crate::storage::{self, Fs};

/// A snapshot skipped at startup, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedSnapshot {
    pub path: PathBuf,
    pub reason: String,
}

/// What startup used.
pub struct Started {
    pub log: OpenedLog,
    /// The snapshot the state was loaded from, if any.
    pub snapshot: Option<(PathBuf, u64)>,
    pub rejected: Vec<RejectedSnapshot>,
    pub snapshot_load_ms: u64,
    pub replay_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Log(#[from] OpenError),
    #[error("cannot list snapshots in {path}: {source}")]
    Snapshots {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Loads the newest usable snapshot of `layout`, replays the log after it
/// and starts the writer. Logs (warn) every snapshot it skips, with the
/// file and the reason.
pub fn open(
    layout: &Layout,
    mode: RecoveryMode,
    options: WriterOptions,
) -> Result<Started, StartupError> {
    open_with_fs(layout, mode, options, storage::real())
}

/// [`open`], with every change to the log's files going through `fs`.
pub fn open_with_fs(
    layout: &Layout,
    mode: RecoveryMode,
    options: WriterOptions,
    fs: Fs,
) -> Result<Started, StartupError> {
    let dir = layout.snapshots_dir();
    let files = snapshot::list(&dir).map_err(|source| StartupError::Snapshots {
        path: dir.clone(),
        source,
    })?;
    let mut rejected = Vec::new();
    let mut reject = |path: PathBuf, reason: String| {
        tracing::warn!(
            file = %path.display(),
            reason = %reason,
            "snapshot rejected; falling back to an older snapshot or a full replay"
        );
        rejected.push(RejectedSnapshot { path, reason });
    };
    for file in files.iter().rev() {
        let load_started = Instant::now();
        let loaded = match snapshot::load(file) {
            Ok(l) => l,
            Err(e) => {
                reject(file.path.clone(), e.reason());
                continue;
            }
        };
        let snapshot_load_ms = load_started.elapsed().as_millis() as u64;
        let replay_started = Instant::now();
        match log::open_with_fs(
            fs.clone(),
            &layout.log_dir(),
            loaded.state,
            loaded.header.chain_crc,
            mode,
            options.clone(),
        ) {
            Ok(log) => {
                return Ok(Started {
                    log,
                    snapshot: Some((file.path.clone(), loaded.header.seq)),
                    rejected,
                    snapshot_load_ms,
                    replay_ms: replay_started.elapsed().as_millis() as u64,
                })
            }
            // The snapshot does not belong to this log; nothing changed
            // on disk, so an older one may still do.
            Err(
                e @ (OpenError::LogBehindState { .. }
                | OpenError::StateNotOfThisLog { .. }
                | OpenError::LogStartsAfterState { .. }),
            ) => {
                reject(file.path.clone(), e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let replay_started = Instant::now();
    let log = log::open_with_fs(fs, &layout.log_dir(), State::default(), 0, mode, options)?;
    Ok(Started {
        log,
        snapshot: None,
        rejected,
        snapshot_load_ms: 0,
        replay_ms: replay_started.elapsed().as_millis() as u64,
    })
}
