//! Recovery: read every segment, verify every checksum, the checksum chain
//! and sequence continuity, hand each entry to the caller, and report what
//! was found. Deciding what to do about a torn tail is the caller's (see
//! [`cut_torn_tail`]); this module only reads.
//!
//! Rules (see FORMAT.md, "Recovery"):
//! - a short or bad record at the end of the *last* segment, with no valid
//!   record anywhere after it, is a torn tail: everything before it is kept;
//! - anything else that does not verify is corruption: recovery stops and
//!   names the file, the offset and the reason. No record is ever skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::format::{
    decode_payload, read_record, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::segment::list_segments;
use crate::events::Entry;
use crate::fsutil::fsync_dir;

/// What recovery does with a torn tail (RocksDB's WAL recovery modes are
/// the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Cut a torn tail off the last segment (it can only hold a batch that
    /// was never acknowledged) and start. The default.
    #[default]
    TolerateTornTail,
    /// Refuse to start on any damage, even a torn tail.
    Strict,
}

/// One segment as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Sequence number of its last valid record; `first_seq - 1` when empty.
    pub last_seq: u64,
    pub records: u64,
    /// Bytes up to the end of the last valid record.
    pub valid_bytes: u64,
    pub file_bytes: u64,
}

/// Damage at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub file_bytes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    pub segments: Vec<SegmentSummary>,
    /// Sequence number of the last valid record (0 for an empty log).
    pub last_seq: u64,
    /// Its crc, which the next record chains to (0 for an empty log).
    pub last_crc: u32,
    pub records_verified: u64,
    pub entries_replayed: u64,
    pub torn_tail: Option<TornTail>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("log corrupt in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("torn tail in {path} at offset {offset} ({reason}); recovery mode is strict")]
    TornTailStrict {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the caller's state already is: entries up to and including
/// `replay_after` are verified but not decoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayFrom {
    pub replay_after: u64,
}

/// Reads the log in `log_dir`. Calls `apply(seq, time_unix_ns, entry)` for
/// every entry after `from.replay_after`, in order.
pub fn recover(
    log_dir: &Path,
    from: ReplayFrom,
    mode: RecoveryMode,
    apply: &mut dyn FnMut(u64, u64, Entry),
) -> Result<RecoveryReport, RecoveryError> {
    let segments = list_segments(log_dir).map_err(io_err(log_dir))?;
    let mut report = RecoveryReport {
        segments: Vec::with_capacity(segments.len()),
        last_seq: 0,
        last_crc: 0,
        records_verified: 0,
        entries_replayed: 0,
        torn_tail: None,
    };
    let count = segments.len();
    for (index, (name_seq, path)) in segments.into_iter().enumerate() {
        let is_last = index + 1 == count;
        let summary = recover_segment(
            &path,
            name_seq,
            index == 0,
            is_last,
            from,
            mode,
            &mut report,
            apply,
        )?;
        report.segments.push(summary);
    }
    if let Some(first) = report.segments.first() {
        if first.first_seq > from.replay_after + 1 {
            return Err(RecoveryError::Corrupt {
                path: first.path.clone(),
                offset: 0,
                reason: format!(
                    "log starts at sequence {} but the state to replay onto ends at {}: records {}..{} are missing",
                    first.first_seq,
                    from.replay_after,
                    from.replay_after + 1,
                    first.first_seq - 1
                ),
            });
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
fn recover_segment(
    path: &Path,
    name_seq: u64,
    is_first: bool,
    is_last: bool,
    from: ReplayFrom,
    mode: RecoveryMode,
    report: &mut RecoveryReport,
    apply: &mut dyn FnMut(u64, u64, Entry),
) -> Result<SegmentSummary, RecoveryError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_bytes = file.metadata().map_err(io_err(path))?.len();
    let corrupt = |offset: u64, reason: String| RecoveryError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        return Err(corrupt(
            0,
            format!("segment is {file_bytes} bytes, shorter than its header"),
        ));
    }
    // SAFETY: segment files are only appended to by the single writer of a
    // locked data directory; recovery runs before that writer exists.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    let bytes: &[u8] = &map;
    let header =
        SegmentHeader::decode(bytes).map_err(|e| corrupt(0, format!("bad segment header: {e}")))?;
    if header.first_seq != name_seq {
        return Err(corrupt(
            16,
            format!(
                "header says first sequence {} but the file is named for {name_seq}",
                header.first_seq
            ),
        ));
    }
    if is_first {
        if header.first_seq == 1 && header.prev_crc != 0 {
            return Err(corrupt(
                24,
                "first segment of the log chains to a non-zero checksum".into(),
            ));
        }
        report.last_seq = header.first_seq - 1;
        report.last_crc = header.prev_crc;
    } else {
        if header.first_seq != report.last_seq + 1 {
            return Err(corrupt(
                16,
                format!(
                    "sequence gap: previous segment ends at {}, this one starts at {}",
                    report.last_seq, header.first_seq
                ),
            ));
        }
        if header.prev_crc != report.last_crc {
            return Err(corrupt(
                24,
                format!(
                    "checksum chain broken: header expects {:#010x}, previous record is {:#010x}",
                    header.prev_crc, report.last_crc
                ),
            ));
        }
    }

    let mut offset = SEGMENT_HEADER_BYTES;
    let mut records = 0u64;
    while offset < bytes.len() {
        let record = match read_record(&bytes[offset..]) {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                if !is_last {
                    return Err(corrupt(
                        offset as u64,
                        format!("bad record in a sealed segment: {reason}"),
                    ));
                }
                if let Some(valid_at) = find_valid_record_after(bytes, offset, report.last_seq) {
                    return Err(corrupt(
                        offset as u64,
                        format!(
                            "bad record ({reason}) followed by a valid record at offset {valid_at}"
                        ),
                    ));
                }
                let torn = TornTail {
                    path: path.to_owned(),
                    offset: offset as u64,
                    file_bytes,
                    reason,
                };
                if mode == RecoveryMode::Strict {
                    return Err(RecoveryError::TornTailStrict {
                        path: torn.path,
                        offset: torn.offset,
                        reason: torn.reason,
                    });
                }
                report.torn_tail = Some(torn);
                break;
            }
        };
        let h = record.header;
        if h.seq != report.last_seq + 1 {
            return Err(corrupt(
                offset as u64,
                format!(
                    "sequence gap: expected {}, found {}",
                    report.last_seq + 1,
                    h.seq
                ),
            ));
        }
        if h.prev_crc != report.last_crc {
            return Err(corrupt(
                offset as u64,
                format!(
                    "checksum chain broken: record chains to {:#010x}, previous record is {:#010x}",
                    h.prev_crc, report.last_crc
                ),
            ));
        }
        if h.seq > from.replay_after {
            let entry = decode_payload(record.payload).map_err(|e| {
                corrupt(
                    offset as u64,
                    format!("record {} checksum is valid but {e}", h.seq),
                )
            })?;
            apply(h.seq, h.time_unix_ns, entry);
            report.entries_replayed += 1;
        }
        report.last_seq = h.seq;
        report.last_crc = h.crc;
        report.records_verified += 1;
        records += 1;
        offset += record.len_bytes();
    }
    let valid_bytes = report
        .torn_tail
        .as_ref()
        .map(|t| t.offset)
        .unwrap_or(bytes.len() as u64);
    Ok(SegmentSummary {
        path: path.to_owned(),
        first_seq: header.first_seq,
        last_seq: report.last_seq,
        records,
        valid_bytes,
        file_bytes,
    })
}

/// Looks for any record after `bad_offset` that verifies on its own and
/// could follow `last_seq`. Finding one means the damage is not a torn
/// tail. Cheap checks first, so scanning garbage or zeros stays fast.
fn find_valid_record_after(bytes: &[u8], bad_offset: usize, last_seq: u64) -> Option<usize> {
    let end = bytes.len();
    let mut q = bad_offset + 1;
    while q + RECORD_HEADER_BYTES <= end {
        let b = &bytes[q..];
        let reserved_zero = b[12..16] == [0; 4];
        let seq = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let plausible_seq =
            seq > last_seq && seq - last_seq <= (end / RECORD_HEADER_BYTES) as u64 + 1;
        if reserved_zero && plausible_seq && read_record(b).is_ok() {
            return Some(q);
        }
        q += 1;
    }
    None
}

/// Cuts a torn tail off: the cut bytes are copied aside to
/// `<segment>.<offset>.broken` (fsynced) first, then the segment is
/// truncated and fsynced, so stale bytes can never be read as records later.
pub fn cut_torn_tail(torn: &TornTail) -> io::Result<PathBuf> {
    let data = fs::read(&torn.path)?;
    let cut = &data[(torn.offset as usize).min(data.len())..];
    let aside = torn.path.with_file_name(format!(
        "{}.{}.broken",
        torn.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("segment"),
        torn.offset
    ));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&aside)?;
        f.write_all(cut)?;
        f.sync_all()?;
    }
    let f = OpenOptions::new().write(true).open(&torn.path)?;
    f.set_len(torn.offset)?;
    f.sync_all()?;
    if let Some(dir) = torn.path.parent() {
        fsync_dir(dir)?;
    }
    Ok(aside)
}
