//! Recovery of the event log, black-box: logs written by the real writer
//! (`ferro::log::open` + `LogWriter::submit`), then damaged on disk the ways
//! a crash or a bad disk damages them, then opened again.
//!
//! The rules under test are FORMAT.md's "Damage: torn tail or corruption":
//! a torn tail at the end of the last segment is cut (and kept aside); any
//! other damage refuses to start, naming the file and the offset.

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use ferro::commands::Command;
use ferro::datadir::{DataDir, DataDirError};
use ferro::events::{Actor, Entry};
use ferro::log::format::{read_record, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_BYTES};
use ferro::log::recovery::{self, ReadOptions, RecoveryReport, ResumeAt};
use ferro::log::segment::segment_file_name;
use ferro::log::{
    Durability, OpenError, OpenedLog, RecoveryError, RecoveryMode, ReplayFrom, WriterOptions,
};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;

const SEGMENT_BYTES_LARGE: u64 = 64 * 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open_log(
    log_dir: &Path,
    mode: RecoveryMode,
    segment_bytes_max: u64,
) -> Result<OpenedLog, OpenError> {
    ferro::log::open(
        log_dir,
        State::default(),
        0,
        mode,
        WriterOptions {
            durability: Durability::Always,
            segment_bytes_max,
        },
    )
}

/// Stops the writer (it makes its tail durable) and returns the live state.
fn close(opened: OpenedLog) -> State {
    let OpenedLog {
        writer,
        writer_thread,
        state,
        ..
    } = opened;
    drop(writer);
    writer_thread.join().unwrap();
    let state = state.read().clone();
    state
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn digest_of(s: &str) -> Digest {
    Digest::sha256_of(s.as_bytes())
}

/// `n` commands that all succeed in order from an empty state, of varied
/// kinds and sizes: uploads in pieces, manifests with tags, tag deletes.
fn workload(n: usize, salt: &str) -> Vec<Command> {
    let repos = [repo("library/alpine"), repo("team/app")];
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        let r = repos[i % 2].clone();
        let upload = format!("{salt}upload{i:04}");
        let blob = digest_of(&format!("{salt}blob{i}"));
        let size = 100 + (i as u64 * 37) % 900;
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{{"digest":"{blob}","size":{size}}}],"annotations":{{"n":"{}"}}}}"#,
            "x".repeat(i % 40)
        );
        let manifest = Digest::sha256_of(body.as_bytes());
        let tag_name = Tag::parse(&format!("v{i}")).unwrap();
        out.push(Command::StartUpload {
            repo: r.clone(),
            upload: upload.clone(),
        });
        out.push(Command::AppendChunk {
            upload: upload.clone(),
            offset: 0,
            length: size,
            crc32: i as u32,
        });
        out.push(Command::CompleteUpload {
            upload,
            digest: blob.clone(),
            size,
            last_chunk: None,
        });
        out.push(Command::PutManifest {
            repo: r.clone(),
            digest: manifest,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: Bytes::from(body),
            blobs: vec![blob],
            manifests: vec![],
            subject: None,
            artifact_type: None,
            tags: vec![tag_name.clone(), Tag::parse("latest").unwrap()],
        });
        if i % 3 == 2 {
            out.push(Command::DeleteTag {
                repo: r,
                tag: tag_name,
            });
        }
        i += 1;
    }
    out.truncate(n);
    out
}

fn actor(i: usize) -> Actor {
    if i.is_multiple_of(2) {
        Actor::anonymous(Some(format!("192.0.2.{}:{}", i % 250, 40000 + i)))
    } else {
        Actor {
            user: Some("alice".into()),
            peer: Some("198.51.100.7:5000".into()),
        }
    }
}

/// Submits `commands` one after the other; every one must be logged.
fn submit_all(rt: &tokio::runtime::Runtime, opened: &OpenedLog, commands: Vec<Command>) {
    rt.block_on(async {
        for (i, command) in commands.into_iter().enumerate() {
            let committed = opened
                .writer
                .submit(actor(i), command.clone())
                .await
                .unwrap_or_else(|e| panic!("{command:?}: {e}"));
            assert!(committed.seq.is_some(), "{command:?} changed nothing");
        }
    });
}

/// Submits `commands` all at once (group commit); every one must succeed.
fn submit_concurrently(rt: &tokio::runtime::Runtime, opened: &OpenedLog, commands: Vec<Command>) {
    rt.block_on(async {
        let futures = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| opened.writer.submit(actor(i), c));
        for result in futures_util::future::join_all(futures).await {
            assert!(result.unwrap().seq.is_some());
        }
    });
}

/// A log written by the real writer: `n` commands, in segments of at most
/// `segment_bytes_max`.
fn write_log(
    rt: &tokio::runtime::Runtime,
    log_dir: &Path,
    n: usize,
    segment_bytes_max: u64,
) -> State {
    let opened = open_log(log_dir, RecoveryMode::Strict, segment_bytes_max).unwrap();
    submit_all(rt, &opened, workload(n, ""));
    close(opened)
}

type Replayed = Vec<(u64, u64, Entry)>;

fn recover_all(
    log_dir: &Path,
    mode: RecoveryMode,
) -> (Replayed, Result<RecoveryReport, RecoveryError>) {
    let mut got = Vec::new();
    let result = recovery::recover(log_dir, ReplayFrom::default(), mode, &mut |s, t, e| {
        got.push((s, t, e))
    });
    (got, result)
}

/// Segment files in order.
fn segments(log_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    out.sort();
    out
}

/// `(start, end)` of every record in a segment file's bytes.
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let r = read_record(&bytes[offset..]).expect("a whole record");
        out.push((offset, offset + r.len_bytes()));
        offset += r.len_bytes();
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn broken_path(segment: &Path, offset: u64) -> PathBuf {
    segment.with_file_name(format!(
        "{}.{offset}.broken",
        segment.file_name().unwrap().to_str().unwrap()
    ))
}

/// Asserts that opening `log_dir` is refused as corruption at `offset` of
/// `file`, and that the error message names both.
#[track_caller]
fn assert_refused(log_dir: &Path, file: &Path, offset: u64, reason_part: &str) {
    let err = match open_log(log_dir, RecoveryMode::TolerateTornTail, SEGMENT_BYTES_LARGE) {
        Ok(opened) => {
            close(opened);
            panic!("damage at {} offset {offset} was accepted", file.display())
        }
        Err(e) => e,
    };
    let message = err.to_string();
    match err {
        OpenError::Recovery(RecoveryError::Corrupt {
            path,
            offset: at,
            reason,
        }) => {
            assert_eq!(path, file, "{message}");
            assert_eq!(at, offset, "{message}");
            assert!(reason.contains(reason_part), "{message}");
            assert!(message.contains(&file.display().to_string()), "{message}");
            assert!(message.contains(&format!("offset {offset}")), "{message}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// (a) Torn tails.

/// Cutting the last segment at every byte offset inside its last records
/// keeps exactly the whole records before the cut, reports the tail at the
/// start of the cut record, keeps the cut bytes aside, and the log goes on.
#[test]
fn truncation_at_every_offset_of_the_last_records_keeps_whole_records() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    // Several small segments, then more records in the last one.
    write_log(&rt, &template, 24, 1_500);
    let opened = open_log(&template, RecoveryMode::Strict, SEGMENT_BYTES_LARGE).unwrap();
    submit_all(&rt, &opened, workload(30, "")[24..].to_vec());
    close(opened);

    let (reference, report) = recover_all(&template, RecoveryMode::Strict);
    let report = report.unwrap();
    assert!(report.segments.len() >= 3, "{:?}", report.segments);
    let segs = segments(&template);
    let last = segs.last().unwrap().clone();
    let name = last.file_name().unwrap().to_owned();
    let bytes = fs::read(&last).unwrap();
    let spans = record_spans(&bytes);
    assert!(spans.len() >= 4);
    let records_before_last_segment = reference.len() - spans.len();
    let from = spans[spans.len() - 3].0;

    let work = tmp.path().join("work");
    let mut cuts = 0;
    for cut in from..bytes.len() {
        let _ = fs::remove_dir_all(&work);
        copy_dir(&template, &work);
        let segment = work.join(&name);
        fs::write(&segment, &bytes[..cut]).unwrap();

        let whole = spans.iter().filter(|s| s.1 <= cut).count();
        let kept = records_before_last_segment + whole;
        let torn_at = spans.iter().find(|s| s.0 < cut && cut < s.1).map(|s| s.0);

        // Recovery alone: reads, reports, changes nothing.
        let (got, report) = recover_all(&work, RecoveryMode::TolerateTornTail);
        let report = report.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(got, reference[..kept], "cut at {cut}");
        assert_eq!(report.last_seq, kept as u64, "cut at {cut}");
        match (torn_at, &report.torn_tail) {
            (None, None) => {}
            (Some(at), Some(t)) => {
                assert_eq!(t.path, segment);
                assert_eq!(t.offset, at as u64, "cut at {cut}");
                assert_eq!(t.file_bytes, cut as u64);
            }
            (want, got) => panic!("cut at {cut}: expected torn {want:?}, got {got:?}"),
        }
        assert_eq!(fs::metadata(&segment).unwrap().len(), cut as u64);

        // Opening cuts the tail, keeps it aside, and appends after it.
        let opened = open_log(&work, RecoveryMode::TolerateTornTail, SEGMENT_BYTES_LARGE)
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(opened.state.read().last_seq, kept as u64);
        let valid_bytes = torn_at.unwrap_or(cut);
        assert_eq!(fs::metadata(&segment).unwrap().len(), valid_bytes as u64);
        let aside = broken_path(&segment, valid_bytes as u64);
        match torn_at {
            Some(at) => assert_eq!(fs::read(&aside).unwrap(), &bytes[at..cut]),
            None => assert!(!aside.exists()),
        }
        let committed = rt
            .block_on(opened.writer.submit(
                Actor::system(),
                Command::StartUpload {
                    repo: repo("after/cut"),
                    upload: format!("after-{cut}"),
                },
            ))
            .unwrap();
        assert_eq!(committed.seq, Some(kept as u64 + 1), "cut at {cut}");
        let live = close(opened);

        let reopened = open_log(&work, RecoveryMode::Strict, SEGMENT_BYTES_LARGE)
            .unwrap_or_else(|e| panic!("reopen after cut at {cut}: {e}"));
        assert_eq!(reopened.report.torn_tail, None);
        assert_eq!(reopened.report.last_seq, kept as u64 + 1);
        assert_eq!(*reopened.state.read(), live, "cut at {cut}");
        close(reopened);
        cuts += 1;
    }
    assert!(cuts > 300, "only {cuts} offsets tried");
}

/// A segment file is created whole (tmp + fsync + rename), so a last
/// segment shorter than its header is corruption, not a torn tail; a
/// header with no records is an empty segment.
#[test]
fn last_segment_shorter_than_its_header_is_corruption() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 5, SEGMENT_BYTES_LARGE);
    let next = log.join(segment_file_name(6));
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        first_seq: 6,
        prev_crc: recover_all(&log, RecoveryMode::Strict).1.unwrap().last_crc,
    }
    .encode();
    for len in 0..SEGMENT_HEADER_BYTES {
        fs::write(&next, &header[..len]).unwrap();
        assert_refused(&log, &next, 0, "shorter than its header");
    }
    fs::write(&next, header).unwrap();
    let opened = open_log(&log, RecoveryMode::Strict, SEGMENT_BYTES_LARGE).unwrap();
    assert_eq!(opened.report.segments.len(), 2);
    assert_eq!(opened.report.last_seq, 5);
    close(opened);
}

// ---------------------------------------------------------------------------
// (b) Corruption.

/// Flipping any byte of a segment header or of any record but the very
/// last one of the log is refused, naming the file and the record's (or
/// header's) offset; nothing on disk is touched.
#[test]
fn flipping_any_byte_before_the_last_record_is_refused() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    // Two segments: the first sealed, the second active.
    write_log(&rt, &log, 14, 1_200);
    let segs = segments(&log);
    assert!(segs.len() >= 2, "{segs:?}");
    let last_segment = segs.len() - 1;
    let mut flips = 0;
    for (index, segment) in segs.iter().enumerate() {
        let original = fs::read(segment).unwrap();
        let spans = record_spans(&original);
        // In the active segment, leave out the final record of the log.
        let end = if index == last_segment {
            spans.last().unwrap().0
        } else {
            original.len()
        };
        for p in 0..end {
            let mut damaged = original.clone();
            damaged[p] ^= 1 << (p % 8);
            fs::write(segment, &damaged).unwrap();
            let expected_offset = spans
                .iter()
                .find(|s| s.0 <= p && p < s.1)
                .map(|s| s.0 as u64)
                .unwrap_or(0);
            assert_refused(&log, segment, expected_offset, "");
            assert_eq!(
                fs::read(segment).unwrap(),
                damaged,
                "refusal changes nothing"
            );
            flips += 1;
        }
        fs::write(segment, &original).unwrap();
    }
    assert!(flips > 1_000, "{flips}");
    // Nothing was cut or set aside along the way, and the log is whole.
    assert_eq!(
        fs::read_dir(&log).unwrap().count(),
        segs.len(),
        "no .broken files"
    );
    let (_, report) = recover_all(&log, RecoveryMode::Strict);
    assert_eq!(report.unwrap().last_seq, 14);
}

/// The final record of the log, damaged, cannot be told from a torn write:
/// the tolerant mode cuts it (keeping it aside), strict mode refuses.
#[test]
fn damaged_final_record_is_a_torn_tail() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 6, SEGMENT_BYTES_LARGE);
    let segment = segments(&log).pop().unwrap();
    let original = fs::read(&segment).unwrap();
    let (last_start, _) = *record_spans(&original).last().unwrap();
    let mut damaged = original.clone();
    damaged[last_start + 40] ^= 0x20;
    fs::write(&segment, &damaged).unwrap();

    let err = open_log(&log, RecoveryMode::Strict, SEGMENT_BYTES_LARGE)
        .err()
        .unwrap();
    assert!(
        matches!(err, OpenError::Recovery(RecoveryError::TornTailStrict { offset, .. }) if offset == last_start as u64),
        "{err}"
    );
    let opened = open_log(&log, RecoveryMode::TolerateTornTail, SEGMENT_BYTES_LARGE).unwrap();
    assert_eq!(opened.report.last_seq, 5);
    assert_eq!(
        fs::read(broken_path(&segment, last_start as u64)).unwrap(),
        &damaged[last_start..]
    );
    close(opened);
}

// ---------------------------------------------------------------------------
// (c) Gaps and broken chains.

#[test]
fn deleting_a_middle_segment_is_a_sequence_gap() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 20, 900);
    let segs = segments(&log);
    assert!(segs.len() >= 4, "{segs:?}");
    fs::remove_file(&segs[1]).unwrap();
    assert_refused(&log, &segs[2], 16, "sequence gap");
}

/// A log whose first segment is gone no longer reaches back to the state
/// it is replayed onto: refused before a single entry is handed over (an
/// entry that does not follow the state must never be applied to it).
#[test]
fn deleting_the_first_segment_leaves_records_missing() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 12, 900);
    let segs = segments(&log);
    fs::remove_file(&segs[0]).unwrap();

    let mut handed_over = Vec::new();
    let result = recovery::recover(
        &log,
        ReplayFrom::default(),
        RecoveryMode::TolerateTornTail,
        &mut |seq, _, _| handed_over.push(seq),
    );
    match result {
        Err(RecoveryError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, segs[1]);
            assert_eq!(offset, 0);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(handed_over, Vec::<u64>::new(), "entries handed over anyway");

    // Opening refuses too (and must not apply those entries first).
    match open_log(&log, RecoveryMode::TolerateTornTail, SEGMENT_BYTES_LARGE) {
        Err(OpenError::LogStartsAfterState {
            log_first_seq,
            state_seq: 0,
        }) => assert!(log_first_seq > 1),
        Err(OpenError::Recovery(RecoveryError::Corrupt {
            path, offset: 0, ..
        })) => {
            assert_eq!(path, segs[1])
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(opened) => {
            close(opened);
            panic!("a log without its first segment was opened");
        }
    }
}

#[test]
fn renaming_a_segment_is_refused() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 12, 900);
    let segs = segments(&log);
    let renamed = log.join(segment_file_name(1_000));
    fs::rename(segs.last().unwrap(), &renamed).unwrap();
    assert_refused(&log, &renamed, 16, "named for");
}

/// Two logs of the same commands, written at different times: their
/// records have the same sequence numbers but different checksums.
fn twin_logs(rt: &tokio::runtime::Runtime, root: &Path, n: usize, seg: u64) -> (PathBuf, PathBuf) {
    let a = root.join("a");
    let b = root.join("b");
    write_log(rt, &a, n, seg);
    write_log(rt, &b, n, seg);
    (a, b)
}

#[test]
fn splicing_segments_of_two_logs_breaks_the_chain() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = twin_logs(&rt, tmp.path(), 20, 900);
    let segs_a = segments(&a);
    let segs_b = segments(&b);
    assert_eq!(
        segs_a.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        segs_b.iter().map(|p| p.file_name()).collect::<Vec<_>>()
    );
    fs::copy(&segs_b[1], &segs_a[1]).unwrap();
    assert_refused(&a, &segs_a[1], 24, "checksum chain broken");
}

#[test]
fn splicing_records_of_two_logs_breaks_the_chain() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = twin_logs(&rt, tmp.path(), 10, SEGMENT_BYTES_LARGE);
    let seg_a = segments(&a).pop().unwrap();
    let bytes_a = fs::read(&seg_a).unwrap();
    let bytes_b = fs::read(segments(&b).pop().unwrap()).unwrap();
    let spans = record_spans(&bytes_a);
    assert_eq!(spans, record_spans(&bytes_b));
    for k in [1, 5, spans.len() - 1] {
        let at = spans[k].0;
        let mut spliced = bytes_a[..at].to_vec();
        spliced.extend_from_slice(&bytes_b[at..]);
        fs::write(&seg_a, &spliced).unwrap();
        assert_refused(&a, &seg_a, at as u64, "checksum chain broken");
    }
}

#[test]
fn reordered_duplicated_or_missing_records_are_refused() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 10, SEGMENT_BYTES_LARGE);
    let segment = segments(&log).pop().unwrap();
    let original = fs::read(&segment).unwrap();
    let spans = record_spans(&original);
    let record = |k: usize| &original[spans[k].0..spans[k].1];
    let n = spans.len();

    // Swap two records, in the middle and at the very end.
    for k in [3, n - 2] {
        let mut v = original[..spans[k].0].to_vec();
        v.extend_from_slice(record(k + 1));
        v.extend_from_slice(record(k));
        v.extend_from_slice(&original[spans[k + 1].1..]);
        fs::write(&segment, &v).unwrap();
        assert_refused(&log, &segment, spans[k].0 as u64, "sequence gap");
    }
    // Repeat a record.
    for k in [2, n - 1] {
        let mut v = original[..spans[k].1].to_vec();
        v.extend_from_slice(record(k));
        v.extend_from_slice(&original[spans[k].1..]);
        fs::write(&segment, &v).unwrap();
        assert_refused(&log, &segment, spans[k].1 as u64, "sequence gap");
    }
    // Drop a record from the middle.
    let mut v = original[..spans[4].0].to_vec();
    v.extend_from_slice(&original[spans[4].1..]);
    fs::write(&segment, &v).unwrap();
    assert_refused(&log, &segment, spans[4].0 as u64, "sequence gap");
}

/// Sequence numbers start at 1: a segment claiming to start at 0 is
/// corrupt, and must be refused as such, not crash the reader.
#[test]
fn segment_starting_at_sequence_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    fs::create_dir_all(&log).unwrap();
    let segment = log.join(segment_file_name(0));
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        first_seq: 0,
        prev_crc: 0,
    };
    fs::write(&segment, header.encode()).unwrap();
    let (_, result) = recover_all(&log, RecoveryMode::Strict);
    match result {
        Err(RecoveryError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(offset, 16);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// (d) Strict mode.

#[test]
fn strict_mode_refuses_a_torn_tail_and_changes_nothing() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    write_log(&rt, &log, 8, SEGMENT_BYTES_LARGE);
    let segment = segments(&log).pop().unwrap();
    let original = fs::read(&segment).unwrap();
    let (last_start, last_end) = *record_spans(&original).last().unwrap();
    let cut = (last_start + last_end) / 2;
    fs::write(&segment, &original[..cut]).unwrap();

    let err = open_log(&log, RecoveryMode::Strict, SEGMENT_BYTES_LARGE)
        .err()
        .expect("strict mode refuses");
    let message = err.to_string();
    match err {
        OpenError::Recovery(RecoveryError::TornTailStrict { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(offset, last_start as u64);
            assert!(
                message.contains(&format!("offset {last_start}")),
                "{message}"
            );
        }
        other => panic!("expected a strict refusal, got {other:?}"),
    }
    assert_eq!(fs::read(&segment).unwrap(), &original[..cut]);
    assert!(!broken_path(&segment, last_start as u64).exists());
    // The same log opens in the tolerant mode.
    let opened = open_log(&log, RecoveryMode::TolerateTornTail, SEGMENT_BYTES_LARGE).unwrap();
    assert_eq!(opened.report.last_seq, 7);
    close(opened);
}

// ---------------------------------------------------------------------------
// (e) Segment roll.

#[test]
fn tiny_segments_roll_chain_and_recover() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let segment_bytes_max = 700;
    let opened = open_log(&log, RecoveryMode::Strict, segment_bytes_max).unwrap();
    let commands = workload(120, "");
    submit_all(&rt, &opened, commands[..60].to_vec());
    // Group commits across rolls too.
    submit_concurrently(
        &rt,
        &opened,
        (0..60)
            .map(|i| Command::StartUpload {
                repo: repo("roll/test"),
                upload: format!("concurrent-{i}"),
            })
            .collect(),
    );
    let live = close(opened);
    assert_eq!(live.last_seq, 120);

    let (replayed, report) = recover_all(&log, RecoveryMode::Strict);
    let report = report.unwrap();
    assert_eq!(replayed.len(), 120);
    let segs = segments(&log);
    assert!(segs.len() >= 8, "{} segments", segs.len());
    assert_eq!(report.segments.len(), segs.len());
    let mut prev_crc = 0;
    let mut next_seq = 1;
    for (summary, path) in report.segments.iter().zip(&segs) {
        assert_eq!(&summary.path, path);
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            segment_file_name(summary.first_seq)
        );
        assert_eq!(summary.first_seq, next_seq);
        let bytes = fs::read(path).unwrap();
        let header = SegmentHeader::decode(&bytes).unwrap();
        assert_eq!(header.prev_crc, prev_crc);
        for (start, _) in record_spans(&bytes) {
            let r = read_record(&bytes[start..]).unwrap();
            assert_eq!(r.header.seq, next_seq);
            assert_eq!(r.header.prev_crc, prev_crc);
            prev_crc = r.header.crc;
            next_seq += 1;
        }
        if path != segs.last().unwrap() {
            // Sealed segments reached the limit; the roll never splits a
            // group commit.
            assert!(summary.file_bytes >= segment_bytes_max, "{summary:?}");
        }
    }
    assert_eq!(next_seq, 121);

    // Reopen: same state; append; reopen again.
    let reopened = open_log(&log, RecoveryMode::Strict, segment_bytes_max).unwrap();
    assert_eq!(*reopened.state.read(), live);
    submit_all(&rt, &reopened, commands[60..].to_vec());
    let live = close(reopened);
    let again = open_log(&log, RecoveryMode::Strict, segment_bytes_max).unwrap();
    assert_eq!(*again.state.read(), live);
    assert_eq!(again.report.last_seq, 180);
    close(again);
}

/// Records as a read hands them over: sequence number, checksum, payload.
type Handed = Vec<(u64, u32, Vec<u8>)>;

/// Every record after `after` as a resumed read hands it over, with the
/// number of records it verified.
fn read_after(
    log_dir: &Path,
    after: u64,
    resume: Option<ResumeAt>,
) -> Result<(Handed, u64), RecoveryError> {
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: after,
        skip_covered_segments: true,
    };
    let mut got = Vec::new();
    let report = recovery::read_log_resuming(log_dir, &options, resume, &mut |r| {
        got.push((r.seq, r.crc, r.payload.to_vec()));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok((got, report.records_verified))
}

#[test]
fn a_resumed_read_hands_over_exactly_what_a_full_read_does() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let segment_bytes_max = 2_000;
    let commands = workload(120, "");
    let opened = open_log(&log, RecoveryMode::Strict, segment_bytes_max).unwrap();
    submit_all(&rt, &opened, commands[..60].to_vec());
    // The positions a follower of the live log would hold.
    let mut positions = Vec::new();
    recovery::read_log(&log, &ReadOptions::default(), &mut |r| {
        positions.push(ResumeAt::after(r));
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(positions.len(), 60);
    // The log grows past them: the active segment fills and rolls.
    submit_all(&rt, &opened, commands[60..].to_vec());
    close(opened);
    assert!(segments(&log).len() >= 4);

    let mut saved = 0;
    for position in &positions {
        let (full, verified_full) = read_after(&log, position.seq, None).unwrap();
        let (resumed, verified_resumed) = read_after(&log, position.seq, Some(*position)).unwrap();
        assert_eq!(resumed, full, "after {}", position.seq);
        assert_eq!(full.len() as u64, 120 - position.seq);
        assert!(verified_resumed <= verified_full);
        saved += verified_full - verified_resumed;
    }
    // Records before the position in its segment are not read again.
    assert!(saved > 60, "resuming verified only {saved} records fewer");

    // A position that does not belong to the log is refused, not read past.
    let good = positions[30];
    for stale in [
        ResumeAt {
            crc: good.crc ^ 1,
            ..good
        },
        ResumeAt {
            seq: good.seq - 1,
            ..good
        },
        ResumeAt {
            offset: good.offset - 1,
            ..good
        },
    ] {
        let err = read_after(&log, stale.seq, Some(stale)).unwrap_err();
        assert!(
            matches!(err, RecoveryError::Corrupt { .. }),
            "{stale:?}: {err}"
        );
    }
    // A position past the segment's end is refused too.
    let past_end = ResumeAt {
        offset: 1 << 40,
        ..good
    };
    assert!(read_after(&log, past_end.seq, Some(past_end)).is_err());
    // A position in a segment that is gone (compaction) or that is after
    // `replay_after` is ignored: the read starts over.
    let gone = ResumeAt {
        segment_first_seq: 1_000_000,
        ..good
    };
    assert_eq!(
        read_after(&log, good.seq, Some(gone)).unwrap(),
        read_after(&log, good.seq, None).unwrap()
    );
    assert_eq!(
        read_after(&log, good.seq - 5, Some(good)).unwrap(),
        read_after(&log, good.seq - 5, None).unwrap()
    );
}

// ---------------------------------------------------------------------------
// (f) The data directory lock.

#[test]
fn a_second_open_of_a_data_dir_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let first = DataDir::open(&root).unwrap();
    for dir in ["log", "snapshots", "blobs", "uploads"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }
    match DataDir::open(&root) {
        Err(DataDirError::Locked(path)) => assert_eq!(path, root),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of a locked data directory succeeded"),
    }
    drop(first);
    let again = DataDir::open(&root).expect("the lock is released on drop");
    drop(again);
}

/// Every record of the log in `log_dir`: (seq, time, crc, prev crc, the
/// record's bytes as on disk, its entry).
fn raw_records(log_dir: &Path) -> Vec<ferro::log::FollowedRecord> {
    let mut out: Vec<ferro::log::FollowedRecord> = Vec::new();
    let mut prev_crc = 0;
    recovery::read_log(log_dir, &ReadOptions::default(), &mut |r| {
        let mut bytes = Vec::new();
        let crc = ferro::log::format::encode_record(
            &mut bytes,
            r.seq,
            r.time_unix_ns,
            prev_crc,
            r.payload,
        );
        assert_eq!(crc, r.crc, "re-encoding record {} gives its bytes", r.seq);
        out.push(ferro::log::FollowedRecord {
            seq: r.seq,
            time_unix_ns: r.time_unix_ns,
            crc: r.crc,
            prev_crc,
            bytes: Bytes::from(bytes),
            entry: r.decode().unwrap(),
        });
        prev_crc = r.crc;
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    out
}

/// A follower's log (a read replica's): records of another log appended
/// as they are, across segment rolls, are the same log record for record
/// and fold to the same state; a record that does not continue it is
/// refused with nothing written; commands are refused.
#[test]
fn a_followed_log_is_the_same_log() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (primary_dir, follower_dir) = (dir.path().join("primary"), dir.path().join("follower"));
    let primary = open_log(&primary_dir, RecoveryMode::Strict, SEGMENT_BYTES_LARGE).unwrap();
    submit_all(&rt, &primary, workload(120, "f"));
    let primary_state = close(primary);
    let records = raw_records(&primary_dir);
    assert_eq!(records.len(), 120);

    let follower = open_log(&follower_dir, RecoveryMode::Strict, 4096).unwrap();
    follower.writer.follow_only("a read replica".into());
    let refused = rt.block_on(follower.writer.submit(actor(0), workload(1, "x").remove(0)));
    assert!(
        matches!(refused, Err(ferro::log::SubmitError::Follower(_))),
        "{refused:?}"
    );
    rt.block_on(follower.writer.append_followed(records[..50].to_vec()))
        .unwrap();
    // Not after record 50: a gap, then a record off the chain.
    let gap = rt.block_on(follower.writer.append_followed(records[51..60].to_vec()));
    assert!(gap.is_err());
    let mut forked = records[50].clone();
    forked.prev_crc ^= 1;
    let fork = rt.block_on(follower.writer.append_followed(vec![forked]));
    assert!(fork.is_err());
    assert_eq!(follower.writer.tip().seq(), 50);
    rt.block_on(follower.writer.append_followed(records[50..].to_vec()))
        .unwrap();
    let follower_state = close(follower);
    assert_eq!(follower_state, primary_state);
    assert!(
        recovery::read_log(&follower_dir, &ReadOptions::default(), &mut |_| Ok(
            ControlFlow::Continue(())
        ))
        .unwrap()
        .segments
        .len()
            > 2,
        "the follower's log rolled its 4 KiB segments"
    );
    let followed = raw_records(&follower_dir);
    assert_eq!(followed.len(), records.len());
    for (a, b) in records.iter().zip(&followed) {
        assert_eq!(
            (a.seq, a.time_unix_ns, a.crc, &a.bytes),
            (b.seq, b.time_unix_ns, b.crc, &b.bytes)
        );
    }
}
