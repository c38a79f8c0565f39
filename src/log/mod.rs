//! The event log: segment format, recovery and the group-commit writer.
//!
//! - `format`: bytes on disk (headers, record framing, payload encoding);
//! - `segment`: segment file names, listing and creation;
//! - `recovery`: reading and verifying a log, torn-tail handling;
//! - `writer`: the single writer, group commit and durability.

pub mod format;
pub mod recovery;
pub mod segment;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::RwLock;

use crate::fsutil::create_dir_all_durable_with;
use crate::projection::State;
use crate::storage::{self, Fs, OpenMode};
pub use recovery::{
    ReadOptions, RecordView, RecoveryError, RecoveryMode, RecoveryReport, ReplayFrom,
};
pub use writer::{
    Committed, Durability, FollowedRecord, LogTip, LogWriter, SubmitError, WriterOptions,
    WriterStart,
};

/// A log opened for writing, with the state recovered from it.
pub struct OpenedLog {
    pub writer: LogWriter,
    pub writer_thread: JoinHandle<()>,
    pub state: Arc<RwLock<State>>,
    pub report: RecoveryReport,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("I/O error opening the log: {0}")]
    Io(#[from] std::io::Error),
    #[error("the log ends at sequence {log_last_seq}, before the snapshot's {state_seq}: records are missing")]
    LogBehindState { log_last_seq: u64, state_seq: u64 },
    #[error("the log starts at sequence {log_first_seq} but the state to replay onto ends at {state_seq}: records {}..{} are missing", state_seq + 1, log_first_seq - 1)]
    LogStartsAfterState { log_first_seq: u64, state_seq: u64 },
    #[error("the state at sequence {state_seq} carries checksum {state_crc:#010x} but the log's record {state_seq} has {log_crc:#010x}: they are not the same history")]
    StateNotOfThisLog {
        state_seq: u64,
        state_crc: u32,
        log_crc: u32,
    },
}

/// Recovers the log in `log_dir` onto `base` (the default state, or a
/// snapshot's state whose last record had checksum `base_crc`), cuts a torn
/// tail if the mode allows, and starts the writer.
///
/// With a snapshot as `base`, sealed segments it already covers are not
/// read (their checksums were verified when the snapshot's state was
/// built; `ferroctl verify` checks them again). Nothing on disk changes
/// unless every check passed, so a caller may retry with another base.
pub fn open(
    log_dir: &Path,
    base: State,
    base_crc: u32,
    mode: RecoveryMode,
    options: WriterOptions,
) -> Result<OpenedLog, OpenError> {
    open_with_fs(storage::real(), log_dir, base, base_crc, mode, options)
}

/// [`open`], with every change to the log's files going through `fs`
/// (reading goes to the files directly). Cutting a torn tail uses the real
/// file system: tests run recovery on a real directory.
pub fn open_with_fs(
    fs: Fs,
    log_dir: &Path,
    mut base: State,
    base_crc: u32,
    mode: RecoveryMode,
    options: WriterOptions,
) -> Result<OpenedLog, OpenError> {
    create_dir_all_durable_with(&*fs, log_dir)?;
    let state_seq = base.last_seq;
    // Before anything is read: the log must continue the base state.
    if let Some((log_first_seq, _)) = recovery::first_segment_after(log_dir, state_seq)? {
        return Err(OpenError::LogStartsAfterState {
            log_first_seq,
            state_seq,
        });
    }
    let read = ReadOptions {
        mode,
        replay_after: state_seq,
        skip_covered_segments: state_seq > 0,
    };
    let mut report = recovery::read_log(
        log_dir,
        &read,
        &mut recovery::decode_into(&mut |seq, time, entry| base.apply(seq, time, &entry)),
    )?;
    if report.segments.is_empty() {
        report.last_seq = state_seq;
        report.last_crc = base_crc;
        report.crc_at_replay_after = Some(base_crc);
    }
    if report.last_seq < state_seq {
        return Err(OpenError::LogBehindState {
            log_last_seq: report.last_seq,
            state_seq,
        });
    }
    match report.crc_at_replay_after {
        Some(log_crc) if log_crc != base_crc => {
            return Err(OpenError::StateNotOfThisLog {
                state_seq,
                state_crc: base_crc,
                log_crc,
            })
        }
        _ => {}
    }
    debug_assert_eq!(base.last_seq, report.last_seq);
    for leftover in segment::remove_leftover_temp_files_with(&*fs, log_dir)? {
        tracing::info!(file = %leftover.display(), "removed an unfinished segment file");
    }
    if let Some(torn) = &report.torn_tail {
        let aside = recovery::cut_torn_tail_with(&*fs, torn)?;
        tracing::warn!(
            segment = %torn.path.display(),
            offset = torn.offset,
            cut_bytes = torn.file_bytes - torn.offset,
            reason = %torn.reason,
            saved_to = %aside.display(),
            "cut a torn tail off the log"
        );
        if let Some(last) = report.segments.last_mut() {
            last.file_bytes = torn.offset;
        }
    }
    let active = match report.segments.last() {
        Some(last) => {
            let file = fs.open(&last.path, OpenMode::Append)?;
            Some((last.path.clone(), file, last.valid_bytes))
        }
        None => None,
    };
    let start = WriterStart {
        fs,
        log_dir: log_dir.to_owned(),
        active,
        last_seq: report.last_seq,
        last_crc: report.last_crc,
        last_time_unix_ns: base.last_time_unix_ns,
    };
    let state = Arc::new(RwLock::new(base));
    let (writer, writer_thread) = LogWriter::start(start, state.clone(), options)?;
    Ok(OpenedLog {
        writer,
        writer_thread,
        state,
        report,
    })
}
