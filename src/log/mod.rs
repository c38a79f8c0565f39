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

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::RwLock;

use crate::fsutil::create_dir_all_durable;
use crate::projection::State;
pub use recovery::{RecoveryError, RecoveryMode, RecoveryReport, ReplayFrom};
pub use writer::{Committed, Durability, LogWriter, SubmitError, WriterOptions, WriterStart};

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
}

/// Recovers the log in `log_dir` onto `base` (the default state, or a
/// snapshot's state whose last record had checksum `base_crc`), cuts a torn
/// tail if the mode allows, and starts the writer.
pub fn open(
    log_dir: &Path,
    mut base: State,
    base_crc: u32,
    mode: RecoveryMode,
    options: WriterOptions,
) -> Result<OpenedLog, OpenError> {
    create_dir_all_durable(log_dir)?;
    let state_seq = base.last_seq;
    let mut report = recovery::recover(
        log_dir,
        ReplayFrom {
            replay_after: state_seq,
        },
        mode,
        &mut |seq, time, entry| base.apply(seq, time, &entry),
    )?;
    if let Some(torn) = &report.torn_tail {
        let aside = recovery::cut_torn_tail(torn)?;
        tracing::warn!(
            segment = %torn.path.display(),
            offset = torn.offset,
            cut_bytes = torn.file_bytes - torn.offset,
            reason = %torn.reason,
            saved_to = %aside.display(),
            "cut a torn tail off the log"
        );
    }
    if report.segments.is_empty() {
        report.last_seq = state_seq;
        report.last_crc = base_crc;
    }
    if report.last_seq < state_seq {
        return Err(OpenError::LogBehindState {
            log_last_seq: report.last_seq,
            state_seq,
        });
    }
    debug_assert_eq!(base.last_seq, report.last_seq);
    let active = match report.segments.last() {
        Some(last) => {
            let file = OpenOptions::new().append(true).open(&last.path)?;
            Some((last.path.clone(), file, last.valid_bytes))
        }
        None => None,
    };
    let start = WriterStart {
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
