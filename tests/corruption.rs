//! Random bit flips anywhere in log segments and snapshots. Whatever bit
//! flips, startup either
//! - starts with exactly the right state: the whole log, or (a flip in the
//!   last record of the last segment, indistinguishable from a torn write)
//!   a prefix of it with the tail cut and kept aside, or the whole state
//!   from an older snapshot or a full replay when a snapshot is damaged; or
//! - refuses to start, naming the damaged file and the offset.
//!
//! It never panics, and never serves a state that is not one the log
//! really went through. `tests/log_recovery.rs` covers truncation at every
//! offset and flips in non-final records of a single segment; this file
//! flips bits at random anywhere, across several segments and snapshots,
//! and runs a few cases through the real binary to check the exit status
//! and what it says.
//!
//! `FERRO_CORRUPTION_TRIALS` sets the number of flips per test (default
//! 300).

mod common;

use ferro::storage::sim::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use ferro::commands::Command;
use ferro::datadir::Layout;
use ferro::events::Actor;
use ferro::log::segment::list_segments;
use ferro::log::{Durability, RecoveryMode, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;
use ferro::{snapshot, startup};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn options(segment_bytes_max: u64) -> WriterOptions {
    WriterOptions {
        durability: Durability::Always,
        segment_bytes_max,
    }
}

fn trials() -> u64 {
    std::env::var("FERRO_CORRUPTION_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A data directory written by the real writer, and the state after every
/// record.
struct Fixture {
    dir: tempfile::TempDir,
    states: BTreeMap<u64, State>,
}

impl Fixture {
    fn last(&self) -> &State {
        self.states.values().last().unwrap()
    }
}

/// `images` images (a blob link and a tagged manifest each) over segments
/// of `segment_bytes_max`, with a snapshot after each record number in
/// `snapshot_at`.
fn build(images: u64, segment_bytes_max: u64, snapshot_at: &[u64]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opened = ferro::log::open(
        &layout.log_dir(),
        State::default(),
        0,
        RecoveryMode::Strict,
        options(segment_bytes_max),
    )
    .unwrap();
    let mut states = BTreeMap::new();
    states.insert(0, State::default());
    let repo = RepoName::parse("flip/app").unwrap();
    rt.block_on(async {
        for i in 0..images {
            let blob = Digest::sha256_of(format!("layer {i}").as_bytes());
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{blob}","size":7}}],"annotations":{{"i":"{i}"}}}}"#
            );
            let commands = [
                Command::LinkUploadedBlob {
                    repo: repo.clone(),
                    digest: blob.clone(),
                    size: 7,
                },
                Command::PutManifest {
                    repo: repo.clone(),
                    digest: Digest::sha256_of(body.as_bytes()),
                    media_type: MANIFEST.into(),
                    body: Bytes::from(body),
                    blobs: vec![blob],
                    manifests: vec![],
                    subject: None,
                    artifact_type: None,
                    tags: vec![Tag::parse(&format!("t{}", i % 3)).unwrap()],
                },
            ];
            for command in commands {
                let seq = opened
                    .writer
                    .submit(Actor::system(), command)
                    .await
                    .unwrap()
                    .seq
                    .unwrap();
                let state = opened.state.read().clone();
                assert_eq!(state.last_seq, seq);
                if snapshot_at.contains(&seq) {
                    let crc = opened.writer.tip().crc();
                    snapshot::write(&layout.snapshots_dir(), &state, crc).unwrap();
                }
                states.insert(seq, state);
            }
        }
    });
    drop(opened.writer);
    opened.writer_thread.join().unwrap();
    // A roll after the last record leaves a segment with only a header;
    // without it the last record is the end of the last segment, where a
    // damaged record is a torn tail.
    let segments = list_segments(&layout.log_dir()).unwrap();
    let (_, last) = segments.last().unwrap();
    if std::fs::metadata(last).unwrap().len() == ferro::log::format::SEGMENT_HEADER_BYTES as u64 {
        std::fs::remove_file(last).unwrap();
    }
    Fixture { dir, states }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Flips bit `bit` of byte `offset` of `path`.
fn flip(path: &Path, offset: u64, bit: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

#[derive(Debug, Default)]
struct Outcomes {
    whole: u64,
    tail_cut: u64,
    snapshot_rejected: u64,
    refused: u64,
}

/// Flips one random bit in one of `files` (relative to the data
/// directory) and checks what startup does.
fn flip_trials(fixture: &Fixture, files: &[PathBuf], seed: u64) -> Outcomes {
    let mut rng = Rng(seed);
    let mut outcomes = Outcomes::default();
    let segments = list_segments(&fixture.dir.path().join("log")).unwrap();
    let last_segment = segments.last().unwrap().1.clone();
    let newest_snapshot: Option<PathBuf> = snapshot::list(&fixture.dir.path().join("snapshots"))
        .unwrap()
        .last()
        .map(|s| PathBuf::from("snapshots").join(s.path.file_name().unwrap()));
    let last_rel = PathBuf::from("log").join(last_segment.file_name().unwrap());
    for t in 0..trials() {
        // The last segment, where damage can be a torn tail, a third of
        // the time.
        let file = match files.iter().find(|f| **f == last_rel) {
            Some(last) if rng.below(3) == 0 => last,
            _ => &files[rng.below(files.len() as u64) as usize],
        };
        let original = fixture.dir.path().join(file);
        let len = std::fs::metadata(&original).unwrap().len();
        let offset = rng.below(len);
        let bit = rng.below(8) as u32;
        let what = format!(
            "trial {t}: bit {bit} of byte {offset} of {}",
            file.display()
        );
        let copy = tempfile::tempdir().unwrap();
        copy_dir(fixture.dir.path(), copy.path());
        flip(&copy.path().join(file), offset, bit);
        let layout = Layout::new(copy.path());
        let result = std::panic::catch_unwind(|| {
            startup::open(&layout, RecoveryMode::TolerateTornTail, options(1 << 20))
        })
        .unwrap_or_else(|_| panic!("{what}: startup panicked"));
        let is_snapshot = file.starts_with("snapshots");
        match result {
            Ok(started) => {
                let served = started.log.state.read().clone();
                let torn = started.log.report.torn_tail.clone();
                let rejected = started.rejected.clone();
                drop(started.log.writer);
                started.log.writer_thread.join().unwrap();
                let expected = fixture
                    .states
                    .get(&served.last_seq)
                    .unwrap_or_else(|| panic!("{what}: served a sequence never written"));
                assert_eq!(&served, expected, "{what}: served a wrong state");
                if served.last_seq == fixture.last().last_seq {
                    if Some(file) == newest_snapshot.as_ref() {
                        assert!(
                            rejected.iter().any(|r| r.path.ends_with(file)),
                            "{what}: a damaged snapshot was used"
                        );
                        outcomes.snapshot_rejected += 1;
                    } else {
                        outcomes.whole += 1;
                    }
                } else {
                    // Only the last record of the last segment can go.
                    let torn = torn.unwrap_or_else(|| panic!("{what}: records lost silently"));
                    assert!(!is_snapshot, "{what}: a snapshot flip lost records");
                    assert!(
                        last_segment.ends_with(file),
                        "{what}: records lost from a sealed segment"
                    );
                    assert_eq!(
                        served.last_seq + 1,
                        fixture.last().last_seq,
                        "{what}: more than the last record cut"
                    );
                    assert!(torn.path.ends_with(file));
                    outcomes.tail_cut += 1;
                }
            }
            Err(e) => {
                assert!(
                    !is_snapshot,
                    "{what}: a damaged snapshot stopped startup: {e}"
                );
                let message = e.to_string();
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    message.contains(&name) && message.contains("offset"),
                    "{what}: the refusal does not name the file and offset: {message}"
                );
                outcomes.refused += 1;
            }
        }
    }
    outcomes
}

fn relative_files(root: &Path, dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| PathBuf::from(dir).join(e.unwrap().file_name()))
        .collect();
    out.sort();
    out
}

#[test]
fn bit_flips_in_segments_refuse_or_keep_a_correct_prefix() {
    // No snapshot: every segment is read at startup.
    let fixture = build(30, 2048, &[]);
    let files = relative_files(fixture.dir.path(), "log");
    assert!(files.len() >= 4, "several segments: {files:?}");
    let outcomes = flip_trials(&fixture, &files, 0xf11b);
    eprintln!("segment flips: {outcomes:?}");
    assert!(
        outcomes.refused > 0 && outcomes.tail_cut > 0,
        "{outcomes:?}"
    );
}

#[test]
fn bit_flips_in_snapshots_fall_back_and_serve_the_same_state() {
    let fixture = build(30, 2048, &[20, 40, 55]);
    let files = relative_files(fixture.dir.path(), "snapshots");
    assert_eq!(files.len(), 3);
    let outcomes = flip_trials(&fixture, &files, 0x5a4b);
    eprintln!("snapshot flips: {outcomes:?}");
    assert!(outcomes.snapshot_rejected > 0, "{outcomes:?}");
    assert_eq!(outcomes.refused + outcomes.tail_cut, 0);
}

#[test]
fn bit_flips_anywhere_with_snapshots_never_serve_wrong_data() {
    let fixture = build(30, 2048, &[25, 50]);
    let mut files = relative_files(fixture.dir.path(), "log");
    files.extend(relative_files(fixture.dir.path(), "snapshots"));
    let outcomes = flip_trials(&fixture, &files, 0xa11);
    eprintln!("flips in segments and snapshots: {outcomes:?}");
}

/// Runs `ferro serve` on `data_dir` until it listens (then kills it) or
/// exits; returns its exit status (`None` if it started) and its stderr.
fn run_binary(data_dir: &Path) -> (Option<std::process::ExitStatus>, Vec<String>) {
    let mut child = Process::new(common::FERRO)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferro");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let listening = line.contains("listening on http://");
                lines.push(line);
                if listening {
                    let _ = child.kill();
                    let _ = child.wait();
                    return (None, lines);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = child.try_wait().unwrap() {
                    lines.extend(rx.try_iter());
                    return (Some(status), lines);
                }
                assert!(
                    Instant::now() < deadline,
                    "ferro neither started nor exited"
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                return (Some(status), lines);
            }
        }
    }
}

/// The offset of record `index` (0-based) in a segment.
fn record_offset(segment: &Path, index: usize) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    let mut offset = ferro::log::format::SEGMENT_HEADER_BYTES;
    for _ in 0..index {
        offset += ferro::log::format::read_record(&bytes[offset..])
            .unwrap()
            .len_bytes();
    }
    offset as u64
}

#[test]
fn the_binary_refuses_a_corrupt_sealed_segment_naming_file_and_offset() {
    let fixture = build(12, 2048, &[]);
    let segments = list_segments(&fixture.dir.path().join("log")).unwrap();
    let (_, sealed) = &segments[0];
    let offset = record_offset(sealed, 2);
    // A bit in the payload of the third record.
    flip(sealed, offset + 40, 3);
    let (status, lines) = run_binary(fixture.dir.path());
    let status = status.unwrap_or_else(|| panic!("started on a corrupt log: {lines:?}"));
    assert!(!status.success());
    let name = sealed.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&name) && l.contains(&format!("offset {offset}"))),
        "the error names {name} and offset {offset}: {lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains("panicked")), "{lines:#?}");
}

#[test]
fn the_binary_cuts_a_torn_tail_with_a_warning_and_serves_the_rest() {
    let fixture = build(12, 2048, &[]);
    let segments = list_segments(&fixture.dir.path().join("log")).unwrap();
    let (_, last) = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    // Half of the last record is missing, as a torn write leaves it.
    let records = {
        let bytes = std::fs::read(last).unwrap();
        let mut n = 0;
        let mut offset = ferro::log::format::SEGMENT_HEADER_BYTES;
        while offset < bytes.len() {
            offset += ferro::log::format::read_record(&bytes[offset..])
                .unwrap()
                .len_bytes();
            n += 1;
        }
        n
    };
    let cut_at = record_offset(last, records - 1);
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(cut_at + (len - cut_at) / 2).unwrap();
    drop(f);
    let (status, lines) = run_binary(fixture.dir.path());
    assert!(status.is_none(), "refused a torn tail: {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("torn tail") && l.contains(&format!("offset={cut_at}"))),
        "a warning names the offset {cut_at}: {lines:#?}"
    );
    let aside = last.with_file_name(format!(
        "{}.{cut_at}.broken",
        last.file_name().unwrap().to_string_lossy()
    ));
    assert!(aside.is_file(), "the cut bytes are kept aside");
}

#[test]
fn the_binary_skips_a_damaged_snapshot_and_serves_the_whole_state() {
    let fixture = build(12, 2048, &[10, 20]);
    let newest = snapshot::list(&fixture.dir.path().join("snapshots"))
        .unwrap()
        .pop()
        .unwrap();
    let len = std::fs::metadata(&newest.path).unwrap().len();
    flip(&newest.path, len / 2, 5);
    let dir = fixture.dir.path().to_owned();
    let (status, lines) = run_binary(&dir);
    assert!(status.is_none(), "refused to start: {lines:#?}");
    let name = newest
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("snapshot rejected") && l.contains(&name)),
        "a warning names {name}: {lines:#?}"
    );
    // And over HTTP the state is whole: every tag where the log left it.
    let server = common::TestServer::start(&dir, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let want = fixture.last().repos[&RepoName::parse("flip/app").unwrap()].clone();
    rt.block_on(async {
        let c = common::client();
        for (tag, digest) in &want.tags {
            let r = c
                .get(server.url(&format!("/v2/flip/app/manifests/{tag}")))
                .header("Accept", MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let body = r.bytes().await.unwrap();
            assert_eq!(Digest::sha256_of(&body), *digest);
        }
    });
}
