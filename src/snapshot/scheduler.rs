//! When the server takes snapshots: after `every_records` records or
//! `every_bytes` bytes of log since the last one, and on clean shutdown.
//! After each one it prunes old snapshots and, when history retention is
//! not `forever`, compacts the log.
//!
//! Writes are never stopped for longer than a copy of the state takes: the
//! state is cloned under the read lock (manifest bodies are shared
//! `Bytes`, so the copy is of the maps only), together with the log tip,
//! which the writer updates only under the write lock, so the (sequence
//! number, checksum) pair is the clone's. Serializing and writing happen on
//! a blocking thread while the writer goes on.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{SnapshotError, WrittenSnapshot};
use crate::compaction::{self, CompactOptions, CompactionError, Retention};
use crate::config::{HistoryConfig, SnapshotConfig};
use crate::datadir::Layout;
use crate::log::segment::list_segments;
use crate::log::{LogWriter, SubmitError};
use crate::projection::State;
use crate::storage::{self, Fs};

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the log could not be made durable before the snapshot: {0}")]
    Writer(#[from] SubmitError),
    #[error("cannot prune snapshots: {0}")]
    Prune(std::io::Error),
    #[error("compaction failed: {0}")]
    Compaction(#[from] CompactionError),
    #[error("the snapshot task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Where the last snapshot was taken.
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    appended_bytes: u64,
}

pub struct Scheduler {
    layout: Layout,
    /// Snapshot files are written and pruned through it.
    fs: Fs,
    state: Arc<RwLock<State>>,
    writer: LogWriter,
    snapshots: SnapshotConfig,
    history: HistoryConfig,
    last: Mutex<Mark>,
    /// One snapshot at a time (the background loop and shutdown).
    busy: tokio::sync::Mutex<()>,
    stop: Notify,
    /// What compaction must keep for notification endpoints (see
    /// `CompactOptions::keep_after_seq`).
    log_hold: Mutex<Option<LogHold>>,
}

/// The last sequence number compaction may remove, asked before each run.
pub type LogHold = Box<dyn Fn() -> Option<u64> + Send + Sync>;

impl Scheduler {
    /// `last_snapshot_seq`: the snapshot startup loaded (0: none).
    pub fn new(
        layout: Layout,
        state: Arc<RwLock<State>>,
        writer: LogWriter,
        snapshots: SnapshotConfig,
        history: HistoryConfig,
        last_snapshot_seq: u64,
    ) -> Arc<Scheduler> {
        Scheduler::new_with_fs(
            layout,
            state,
            writer,
            snapshots,
            history,
            last_snapshot_seq,
            storage::real(),
        )
    }

    /// [`Scheduler::new`], writing and pruning snapshots through `fs`.
    pub fn new_with_fs(
        layout: Layout,
        state: Arc<RwLock<State>>,
        writer: LogWriter,
        snapshots: SnapshotConfig,
        history: HistoryConfig,
        last_snapshot_seq: u64,
        fs: Fs,
    ) -> Arc<Scheduler> {
        let appended_bytes = writer.tip().appended_bytes();
        Arc::new(Scheduler {
            layout,
            fs,
            state,
            writer,
            snapshots,
            history,
            last: Mutex::new(Mark {
                seq: last_snapshot_seq,
                appended_bytes,
            }),
            busy: tokio::sync::Mutex::new(()),
            stop: Notify::new(),
            log_hold: Mutex::new(None),
        })
    }

    /// Sets what compaction must keep (the notification endpoints'
    /// cursors).
    pub fn set_log_hold(&self, hold: LogHold) {
        *self.log_hold.lock() = Some(hold);
    }

    /// Runs the background loop until [`Scheduler::stop`]. It checks once
    /// at start (a long replay is worth a snapshot) and after every commit.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            this.writer.tip().wake();
            loop {
                tokio::select! {
                    _ = this.writer.tip().changed() => {}
                    _ = this.stop.notified() => break,
                }
                if !this.due() {
                    continue;
                }
                if let Err(e) = this.take("threshold").await {
                    tracing::warn!(error = %e, "snapshot failed; the log stays the truth, retrying after the next write");
                }
            }
        })
    }

    /// Asks the loop to end after the snapshot in progress, if any; await
    /// its handle to be sure it has.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    fn due(&self) -> bool {
        let tip = self.writer.tip();
        let last = *self.last.lock();
        let records = tip.seq().saturating_sub(last.seq);
        let bytes = tip.appended_bytes().saturating_sub(last.appended_bytes);
        records > 0
            && ((self.snapshots.every_records > 0 && records >= self.snapshots.every_records)
                || (self.snapshots.every_bytes > 0 && bytes >= self.snapshots.every_bytes))
    }

    /// Takes a snapshot now unless the last one is of the same state.
    /// `reason` goes into the log line.
    pub async fn take(&self, reason: &str) -> Result<Option<WrittenSnapshot>, ScheduleError> {
        let _busy = self.busy.lock().await;
        let started = Instant::now();
        let shared = self.state.clone();
        let tip = self.writer.tip().clone();
        let (state, crc, appended_bytes) = tokio::task::spawn_blocking(move || {
            let guard = shared.read();
            // Consistent: the writer changes the tip only under the write lock.
            debug_assert_eq!(tip.seq(), guard.last_seq);
            (guard.clone(), tip.crc(), tip.appended_bytes())
        })
        .await?;
        let copy_ms = started.elapsed().as_millis() as u64;
        let seq = state.last_seq;
        if seq == 0 || seq == self.last.lock().seq {
            return Ok(None);
        }
        // Under interval durability the records may not be durable yet: a
        // snapshot must never be ahead of the durable log.
        self.writer.sync().await?;
        let layout = self.layout.clone();
        let keep = self.snapshots.keep;
        let history = self.history.clone();
        let fs = self.fs.clone();
        let keep_after_seq = self.log_hold.lock().as_ref().and_then(|hold| hold());
        let (written, removed, compacted) = tokio::task::spawn_blocking(move || {
            let dir = layout.snapshots_dir();
            let written = super::write_with_fs(&*fs, &dir, &state, crc)?;
            drop(state);
            let log_first_seq = list_segments(&layout.log_dir())
                .ok()
                .and_then(|s| s.first().map(|(seq, _)| *seq));
            let removed = super::prune_with_fs(&*fs, &dir, keep, log_first_seq)
                .map_err(ScheduleError::Prune)?;
            let compacted = match history.retention {
                Retention::Forever => None,
                retention => Some(compaction::compact(
                    &layout,
                    &CompactOptions {
                        retention,
                        now_unix_ns: now_unix_ns(),
                        compacted_segments: history.compacted_segments,
                        snapshots_keep: keep,
                        keep_after_seq,
                    },
                )?),
            };
            Ok::<_, ScheduleError>((written, removed, compacted))
        })
        .await??;
        *self.last.lock() = Mark {
            seq,
            appended_bytes,
        };
        tracing::info!(
            reason,
            seq,
            file = %written.path.display(),
            bytes = written.header.file_bytes(),
            copy_ms,
            total_ms = started.elapsed().as_millis() as u64,
            snapshots_removed = removed.len(),
            "snapshot written"
        );
        if let Some(report) = compacted.filter(|r| !r.moved.is_empty()) {
            tracing::info!(
                segments = report.moved.len(),
                horizon_seq = report.plan.horizon_seq,
                to = ?self.history.compacted_segments,
                "compacted the log"
            );
        }
        Ok(Some(written))
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
