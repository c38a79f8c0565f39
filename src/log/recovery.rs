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
//!
//! [`read_log`] is the one reader: startup, snapshots, replay and the
//! operator tools all go through it, each with a visitor that decides what
//! to do with every verified record.

use std::fs::{self, File};
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::format::{
    decode_payload, read_record, PayloadError, SegmentHeader, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::segment::list_segments;
use crate::events::Entry;
use crate::storage::{FileSystem, OpenMode};

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
    /// First sequence number of the log's first segment (from its name);
    /// `None` for an empty log. Above 1 after compaction.
    pub first_seq: Option<u64>,
    pub first_segment: Option<PathBuf>,
    /// Sealed segments not opened (see [`ReadOptions::skip_covered_segments`]).
    pub segments_skipped: u64,
    /// The checksum of record `replay_after` (or the chain value a segment
    /// header gives for it), when the read reached it; 0 for `replay_after`
    /// 0.
    pub crc_at_replay_after: Option<u32>,
    /// The visitor stopped the read before the end of the log.
    pub stopped_early: bool,
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

/// How [`read_log`] reads: what to verify, what to hand over, what to skip.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    pub mode: RecoveryMode,
    /// Records up to and including this sequence number are verified but not
    /// handed to the visitor (the caller's state already holds them).
    pub replay_after: u64,
    /// Do not open sealed segments whose records are all at or before
    /// `replay_after` (startup from a snapshot). Their checksums are then
    /// not verified: `ferroctl verify` reads everything.
    pub skip_covered_segments: bool,
}

/// Where an earlier read of this log stopped: just after record `seq`,
/// whose checksum is `crc`, at byte `offset` of the segment whose first
/// record is `segment_first_seq`. A follower of the live log (the event
/// feed, a notification endpoint, the UI's timeline) passes it back so the
/// next read starts there instead of verifying the active segment again
/// from its start. Only meaningful for the log of the same running
/// process: segments are appended to and never rewritten while it runs
/// (compaction removes whole sealed segments, then the position is not
/// found and the read starts over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeAt {
    pub segment_first_seq: u64,
    pub offset: u64,
    pub seq: u64,
    pub crc: u32,
}

impl ResumeAt {
    /// The position just after `record`.
    pub fn after(record: &RecordView<'_>) -> ResumeAt {
        ResumeAt {
            segment_first_seq: record.segment_first_seq,
            offset: record.offset + record.len_bytes(),
            seq: record.seq,
            crc: record.crc,
        }
    }
}

/// One record whose checksum, sequence number and chain verified, as
/// [`read_log`] hands it to its visitor. The payload is not decoded: the
/// visitor decides whether it needs the entry.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub segment: &'a Path,
    /// Index of the segment among those read.
    pub segment_index: usize,
    /// The sequence number the segment is named for (its first record's).
    pub segment_first_seq: u64,
    /// Offset of the record in its segment.
    pub offset: u64,
    pub seq: u64,
    pub time_unix_ns: u64,
    pub crc: u32,
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    pub fn decode(&self) -> Result<Entry, PayloadError> {
        decode_payload(self.payload)
    }

    /// Bytes the record takes in its segment.
    pub fn len_bytes(&self) -> u64 {
        (RECORD_HEADER_BYTES + self.payload.len()) as u64
    }
}

/// What a visitor tells [`read_log`] after each record. An `Err` is a
/// record that verified but that the visitor cannot use (its payload does
/// not decode): reading stops with [`RecoveryError::Corrupt`] at its offset.
pub type VisitResult = Result<ControlFlow<()>, String>;

/// Reads the log in `log_dir`. Calls `apply(seq, time_unix_ns, entry)` for
/// every entry after `from.replay_after`, in order. The log must hold every
/// record after `from.replay_after`.
pub fn recover(
    log_dir: &Path,
    from: ReplayFrom,
    mode: RecoveryMode,
    apply: &mut dyn FnMut(u64, u64, Entry),
) -> Result<RecoveryReport, RecoveryError> {
    let options = ReadOptions {
        mode,
        replay_after: from.replay_after,
        skip_covered_segments: false,
    };
    if let Some((first_seq, path)) = first_segment_after(log_dir, from.replay_after)? {
        return Err(RecoveryError::Corrupt {
            path,
            offset: 0,
            reason: missing_records(first_seq, from.replay_after),
        });
    }
    read_log(log_dir, &options, &mut decode_into(apply))
}

/// A visitor that decodes every record it is given and applies it.
pub fn decode_into(
    apply: &mut dyn FnMut(u64, u64, Entry),
) -> impl FnMut(&RecordView<'_>) -> VisitResult + '_ {
    move |record| {
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        apply(record.seq, record.time_unix_ns, entry);
        Ok(ControlFlow::Continue(()))
    }
}

/// The log's first segment, when it starts after `replay_after + 1`: the
/// records between the caller's state and the log are missing. Checked
/// from the file names, before anything is read or handed over.
pub fn first_segment_after(
    log_dir: &Path,
    replay_after: u64,
) -> Result<Option<(u64, PathBuf)>, RecoveryError> {
    let segments = list_segments(log_dir).map_err(io_err(log_dir))?;
    Ok(segments
        .into_iter()
        .next()
        .filter(|(first_seq, _)| *first_seq > replay_after.saturating_add(1)))
}

/// Why a log that starts at `first_seq` cannot continue a state at
/// `replay_after`.
pub fn missing_records(first_seq: u64, replay_after: u64) -> String {
    format!(
        "log starts at sequence {first_seq} but the state to replay onto ends at {replay_after}: records {}..{} are missing",
        replay_after + 1,
        first_seq - 1
    )
}

/// Reads the log in `log_dir`: verifies every record it reads (checksum,
/// sequence continuity, checksum chain) and hands each one after
/// `options.replay_after` to `visit`, in order, until `visit` breaks.
/// Never writes: a torn tail is reported, not cut.
pub fn read_log(
    log_dir: &Path,
    options: &ReadOptions,
    visit: &mut dyn FnMut(&RecordView<'_>) -> VisitResult,
) -> Result<RecoveryReport, RecoveryError> {
    read_log_resuming(log_dir, options, None, visit)
}

/// [`read_log`], starting at `resume` (a position an earlier read of this
/// log returned) when its segment is still there and it is at or before
/// `options.replay_after`; otherwise from the start, as `read_log`. The
/// records after the position are verified as always: the first one must
/// follow `resume.seq` and chain to `resume.crc`, so a stale position is
/// reported as corruption, never read past.
pub fn read_log_resuming(
    log_dir: &Path,
    options: &ReadOptions,
    resume: Option<ResumeAt>,
    visit: &mut dyn FnMut(&RecordView<'_>) -> VisitResult,
) -> Result<RecoveryReport, RecoveryError> {
    let segments = list_segments(log_dir).map_err(io_err(log_dir))?;
    let resume = resume
        .filter(|r| r.seq <= options.replay_after)
        .and_then(|r| {
            let index = segments
                .iter()
                .position(|(first_seq, _)| *first_seq == r.segment_first_seq)?;
            Some((index, r))
        });
    let mut report = RecoveryReport {
        segments: Vec::with_capacity(segments.len()),
        last_seq: 0,
        last_crc: 0,
        records_verified: 0,
        entries_replayed: 0,
        torn_tail: None,
        first_seq: segments.first().map(|(seq, _)| *seq),
        first_segment: segments.first().map(|(_, path)| path.clone()),
        segments_skipped: 0,
        crc_at_replay_after: (options.replay_after == 0).then_some(0),
        stopped_early: false,
    };
    let count = segments.len();
    let mut first_read = true;
    for (index, (name_seq, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == count;
        let resume_here = match resume {
            Some((at, _)) if index < at => {
                report.segments_skipped += 1;
                continue;
            }
            Some((at, r)) if index == at => Some(r),
            _ => None,
        };
        if resume_here.is_none() && options.skip_covered_segments && !is_last {
            // A sealed segment ends where the next one starts.
            let next_first_seq = segments[index + 1].0;
            if next_first_seq <= options.replay_after.saturating_add(1) {
                report.segments_skipped += 1;
                continue;
            }
        }
        let segment = SegmentRead {
            path,
            index: report.segments.len(),
            name_seq: *name_seq,
            is_first: first_read,
            is_last,
            resume: resume_here,
        };
        first_read = false;
        let (summary, flow) = read_segment(&segment, options, &mut report, visit)?;
        report.segments.push(summary);
        if flow.is_break() {
            report.stopped_early = true;
            break;
        }
    }
    Ok(report)
}

struct SegmentRead<'a> {
    path: &'a Path,
    index: usize,
    name_seq: u64,
    /// The first segment read (not necessarily the log's first).
    is_first: bool,
    is_last: bool,
    /// Start at this position instead of the segment's first record.
    resume: Option<ResumeAt>,
}

fn read_segment(
    segment: &SegmentRead<'_>,
    options: &ReadOptions,
    report: &mut RecoveryReport,
    visit: &mut dyn FnMut(&RecordView<'_>) -> VisitResult,
) -> Result<(SegmentSummary, ControlFlow<()>), RecoveryError> {
    let path = segment.path;
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
    // SAFETY: segment files are only ever appended to, by the single writer
    // of a locked data directory; the map covers the length read above, and
    // only a failed append is cut back (to a length no reader has seen as a
    // whole record).
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    let bytes: &[u8] = &map;
    let header =
        SegmentHeader::decode(bytes).map_err(|e| corrupt(0, format!("bad segment header: {e}")))?;
    if header.first_seq != segment.name_seq {
        return Err(corrupt(
            16,
            format!(
                "header says first sequence {} but the file is named for {}",
                header.first_seq, segment.name_seq
            ),
        ));
    }
    if header.first_seq == 0 {
        return Err(corrupt(
            16,
            "segment starts at sequence 0; sequence numbers start at 1".into(),
        ));
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    if let Some(r) = segment.resume {
        if r.offset < SEGMENT_HEADER_BYTES as u64 || r.offset > bytes.len() as u64 {
            return Err(corrupt(
                r.offset,
                format!(
                    "resume position {} is outside the segment ({} bytes)",
                    r.offset,
                    bytes.len()
                ),
            ));
        }
        // The record at the position is checked against these like any
        // other: it must be `r.seq + 1` and chain to `r.crc`.
        report.last_seq = r.seq;
        report.last_crc = r.crc;
        note_replay_point(report, options);
        offset = r.offset as usize;
    } else if segment.is_first {
        if header.first_seq == 1 && header.prev_crc != 0 {
            return Err(corrupt(
                24,
                "first segment of the log chains to a non-zero checksum".into(),
            ));
        }
        report.last_seq = header.first_seq - 1;
        report.last_crc = header.prev_crc;
        note_replay_point(report, options);
    } else {
        if report.last_seq.checked_add(1) != Some(header.first_seq) {
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

    let mut records = 0u64;
    let mut flow = ControlFlow::Continue(());
    while offset < bytes.len() {
        let record = match read_record(&bytes[offset..]) {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                if !segment.is_last {
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
                if options.mode == RecoveryMode::Strict {
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
        // A record after one numbered u64::MAX cannot be numbered at all.
        if report.last_seq.checked_add(1) != Some(h.seq) {
            return Err(corrupt(
                offset as u64,
                format!(
                    "sequence gap: expected {}, found {}",
                    report.last_seq.wrapping_add(1),
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
        if h.seq > options.replay_after {
            let view = RecordView {
                segment: path,
                segment_index: segment.index,
                segment_first_seq: header.first_seq,
                offset: offset as u64,
                seq: h.seq,
                time_unix_ns: h.time_unix_ns,
                crc: h.crc,
                payload: record.payload,
            };
            flow = visit(&view).map_err(|reason| corrupt(offset as u64, reason))?;
            report.entries_replayed += 1;
        }
        report.last_seq = h.seq;
        report.last_crc = h.crc;
        report.records_verified += 1;
        note_replay_point(report, options);
        records += 1;
        offset += record.len_bytes();
        if flow.is_break() {
            break;
        }
    }
    let valid_bytes = match &report.torn_tail {
        Some(t) if t.path == path => t.offset,
        _ if flow.is_break() => offset as u64,
        _ => bytes.len() as u64,
    };
    let summary = SegmentSummary {
        path: path.to_owned(),
        first_seq: header.first_seq,
        last_seq: report.last_seq,
        records,
        valid_bytes,
        file_bytes,
    };
    Ok((summary, flow))
}

/// Remembers the checksum of record `replay_after` when the read reaches it,
/// so the caller can check that its state (a snapshot) belongs to this log.
fn note_replay_point(report: &mut RecoveryReport, options: &ReadOptions) {
    if report.last_seq == options.replay_after {
        report.crc_at_replay_after = Some(report.last_crc);
    }
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
/// `<segment>.<offset>.broken`, fsynced and its name made durable (an
/// fsync of the directory) first; only then is the segment truncated and
/// fsynced. A power cut at any point leaves the bytes in the segment or
/// in the copy, and stale bytes can never be read as records later.
pub fn cut_torn_tail(torn: &TornTail) -> io::Result<PathBuf> {
    cut_torn_tail_with(&*crate::storage::real(), torn)
}

/// [`cut_torn_tail`], with every change going through `fs`.
pub fn cut_torn_tail_with(fs_: &dyn FileSystem, torn: &TornTail) -> io::Result<PathBuf> {
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
    let dir = torn.path.parent().unwrap_or(Path::new("."));
    {
        let f = fs_.open(&aside, OpenMode::CreateTruncate)?;
        f.write_all(cut)?;
        f.sync_all()?;
    }
    // The copy's name must be durable before the bytes leave the segment.
    fs_.sync_dir(dir)?;
    let f = fs_.open(&torn.path, OpenMode::Existing)?;
    f.set_len(torn.offset)?;
    f.sync_all()?;
    Ok(aside)
}

#[cfg(test)]
mod cut_tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn a_power_cut_while_cutting_a_torn_tail_keeps_the_bytes_somewhere() {
        let kept = b"0123456789";
        let torn_bytes = b"torn record";
        // Crash before each operation in turn, until the cut completes.
        for crash_at in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("00000000000000000001.log");
            std::fs::write(&path, [&kept[..], &torn_bytes[..]].concat()).unwrap();
            let sim = SimFs::new(dir.path()).unwrap();
            sim.crash_after(crash_at, 0);
            let torn = TornTail {
                path: path.clone(),
                offset: kept.len() as u64,
                file_bytes: (kept.len() + torn_bytes.len()) as u64,
                reason: "test".into(),
            };
            let done = cut_torn_tail_with(&sim, &torn).is_ok();
            let image = if done {
                sim.durable_image()
            } else {
                sim.crash_now(0);
                sim.durable_image()
            };
            let segment = image.file(Path::new("00000000000000000001.log")).unwrap();
            let aside = image.file(Path::new("00000000000000000001.log.10.broken"));
            assert!(
                segment.len() == kept.len() + torn_bytes.len() || aside == Some(&torn_bytes[..]),
                "crash before op {crash_at}: the cut bytes are gone (segment {} bytes, copy {:?})",
                segment.len(),
                aside.map(<[u8]>::len)
            );
            if done {
                assert_eq!(segment, kept);
                break;
            }
        }
    }
}
