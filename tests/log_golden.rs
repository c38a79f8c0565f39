//! Golden samples of the log format (`log-format/samples/`), and the decoder
//! test that reads them.
//!
//! The samples are bytes on disk that a reader of any version must go on
//! decoding exactly as `expected.jsonl` says. They were made by the crate's
//! own encoder with fixed timestamps; regenerate them only on purpose (a new
//! format version gets new samples beside the old ones):
//!
//! ```text
//! cargo test --test log_golden -- --ignored regenerate_samples
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use ferro::commands::{Chunk, Command};
use ferro::events::{Actor, CancelReason, Entry, Event};
use ferro::log::format::{
    encode_payload, encode_record, read_record, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use ferro::log::recovery::{self, RecoveryError, RecoveryMode, ReplayFrom};
use ferro::log::segment::segment_file_name;
use ferro::log::{Durability, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;

const SAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/log-format/samples");
const FORMAT_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/log-format/FORMAT.md");

/// 2025-11-27T09:00:00Z: every sample timestamp counts from here.
const SAMPLE_EPOCH_UNIX_NS: u64 = 1_764_234_000_000_000_000;
/// Records of the valid sample that go into its first segment.
const VALID_FIRST_SEGMENT_RECORDS: usize = 10;

/// One line of `expected.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ExpectedRecord {
    seq: u64,
    time_unix_ns: u64,
    entry: Entry,
}

/// `torn/expected_torn.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ExpectedTorn {
    /// Relative to the sample directory.
    file: String,
    /// Where the torn record starts: everything before it is kept.
    offset: u64,
    file_bytes: u64,
    records_kept: u64,
}

/// `corrupt/expected_error.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ExpectedCorrupt {
    file: String,
    /// Start of the damaged record: the offset the error names.
    offset: u64,
    /// The byte that was flipped (inside that record).
    flipped_byte_offset: u64,
    /// The next record, still valid, which proves this is not a torn tail.
    next_valid_record_offset: u64,
    /// Records recovery verified (and handed over) before the damage.
    records_before_error: u64,
}

fn sample_dir(name: &str) -> PathBuf {
    Path::new(SAMPLES_DIR).join(name)
}

// ---------------------------------------------------------------------------
// The story the samples tell, built by planning real commands.

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

fn peer(addr: &str) -> Actor {
    Actor::anonymous(Some(addr.to_owned()))
}

fn user(name: &str, addr: &str) -> Actor {
    Actor {
        user: Some(name.to_owned()),
        peer: Some(addr.to_owned()),
    }
}

struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = Digest::sha256_of(&bytes);
        Blob { bytes, digest }
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const COSIGN_SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

fn image_manifest(config: &Blob, layers: &[&Blob]) -> Bytes {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| descriptor(OCI_LAYER, &l.digest, l.size()))
        .collect();
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor(OCI_CONFIG, &config.digest, config.size()),
        layers.join(",")
    ))
}

#[allow(clippy::too_many_arguments)] // mirrors Command::PutManifest, field for field
fn put_manifest(
    repo_name: &str,
    media_type: &str,
    body: &Bytes,
    blobs: Vec<Digest>,
    manifests: Vec<Digest>,
    subject: Option<Digest>,
    artifact_type: Option<&str>,
    tags: &[&str],
) -> Command {
    Command::PutManifest {
        repo: repo(repo_name),
        digest: Digest::sha256_of(body),
        media_type: media_type.to_owned(),
        body: body.clone(),
        blobs,
        manifests,
        subject,
        artifact_type: artifact_type.map(str::to_owned),
        tags: tags.iter().map(|t| tag(t)).collect(),
    }
}

struct Story {
    state: State,
    time_unix_ns: u64,
    records: Vec<ExpectedRecord>,
}

impl Story {
    fn new() -> Story {
        Story {
            state: State::default(),
            time_unix_ns: SAMPLE_EPOCH_UNIX_NS,
            records: Vec::new(),
        }
    }

    /// Plans `command` exactly as the writer would, `after_ms` after the
    /// previous record (0: same group commit, same timestamp).
    fn command(&mut self, after_ms: u64, actor: Actor, command: Command) {
        let events = command
            .plan(&self.state)
            .unwrap_or_else(|r| panic!("sample command rejected: {r}: {command:?}"));
        assert!(!events.is_empty(), "sample command changes nothing");
        self.push(after_ms, actor, events);
    }

    fn push(&mut self, after_ms: u64, actor: Actor, events: Vec<Event>) {
        self.time_unix_ns += after_ms * 1_000_000;
        let seq = self.state.last_seq + 1;
        let entry = Entry { actor, events };
        self.state.apply(seq, self.time_unix_ns, &entry);
        self.records.push(ExpectedRecord {
            seq,
            time_unix_ns: self.time_unix_ns,
            entry,
        });
    }
}

/// A push of alpine, an app image mounted from it, a signature, an index,
/// tag moves, deletions, cancelled uploads and a garbage collection.
fn story() -> Vec<ExpectedRecord> {
    let mut s = Story::new();
    let alpine = "library/alpine";
    let app = "team/app";
    let ci = "10.1.2.3:50412";
    let alice = "192.0.2.10:41822";

    let layer = Blob::new(b"alpine-minirootfs-3.20.3-x86_64.tar.gz (sample bytes)\n".repeat(3));
    let config = Blob::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let upload_layer = "3f0c9a4e5b7d4c1e9a2b6d8f0e1c3a5b";
    let (first, rest) = layer.bytes.split_at(100);

    // 1. The worked example of FORMAT.md: a small, single-event entry.
    s.command(
        0,
        peer(ci),
        Command::StartUpload {
            repo: repo(alpine),
            upload: upload_layer.into(),
        },
    );
    // 2. A PATCH.
    s.command(
        3,
        peer(ci),
        Command::AppendChunk {
            upload: upload_layer.into(),
            offset: 0,
            length: first.len() as u64,
            crc32: crc32fast::hash(first),
        },
    );
    // 3. The closing PUT with its last chunk: chunk + completed + linked.
    s.command(
        2,
        peer(ci),
        Command::CompleteUpload {
            upload: upload_layer.into(),
            digest: layer.digest.clone(),
            size: layer.size(),
            last_chunk: Some(Chunk {
                offset: first.len() as u64,
                length: rest.len() as u64,
                crc32: crc32fast::hash(rest),
            }),
        },
    );
    // 4. A monolithic POST ?digest= of the config.
    s.command(
        1,
        peer(ci),
        Command::LinkUploadedBlob {
            repo: repo(alpine),
            digest: config.digest.clone(),
            size: config.size(),
        },
    );
    // 5. The manifest, by tag: ManifestPut + TagSet.
    let alpine_manifest = image_manifest(&config, &[&layer]);
    let alpine_digest = Digest::sha256_of(&alpine_manifest);
    s.command(
        4,
        peer(ci),
        put_manifest(
            alpine,
            OCI_MANIFEST,
            &alpine_manifest,
            vec![config.digest.clone(), layer.digest.clone()],
            vec![],
            None,
            Some(OCI_CONFIG),
            &["3.20"],
        ),
    );
    // 6. A second tag on it.
    s.command(
        0,
        user("alice", alice),
        Command::SetTag {
            repo: repo(alpine),
            tag: tag("latest"),
            digest: alpine_digest.clone(),
        },
    );
    // 7. Cross-repository mount with `from`, and 8. without it.
    s.command(
        60_000,
        user("alice", alice),
        Command::MountBlob {
            repo: repo(app),
            digest: layer.digest.clone(),
            from: Some(repo(alpine)),
        },
    );
    let app_config_v1 = Blob::new(
        br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/app"]},"rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    s.command(
        0,
        user("alice", alice),
        Command::LinkUploadedBlob {
            repo: repo(app),
            digest: app_config_v1.digest.clone(),
            size: app_config_v1.size(),
        },
    );
    s.command(
        1,
        user("alice", alice),
        Command::MountBlob {
            repo: repo(app),
            digest: config.digest.clone(),
            from: None,
        },
    );
    // 10. The app image, two tags at once.
    let app_v1 = image_manifest(&app_config_v1, &[&layer]);
    let app_v1_digest = Digest::sha256_of(&app_v1);
    s.command(
        2,
        user("alice", alice),
        put_manifest(
            app,
            OCI_MANIFEST,
            &app_v1,
            vec![app_config_v1.digest.clone(), layer.digest.clone()],
            vec![],
            None,
            Some(OCI_CONFIG),
            &["v1", "latest"],
        ),
    );
    // --- second segment from here (VALID_FIRST_SEGMENT_RECORDS = 10).
    // 11. A signature of v1: ManifestPut + ReferrerRegistered.
    let sig_config = Blob::new(b"{}".to_vec());
    s.command(
        30_000,
        user("cosign-bot", "10.1.2.4:36001"),
        Command::LinkUploadedBlob {
            repo: repo(app),
            digest: sig_config.digest.clone(),
            size: sig_config.size(),
        },
    );
    let sig_body = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{COSIGN_SIG}","config":{},"layers":[],"subject":{}}}"#,
        descriptor(
            "application/vnd.oci.empty.v1+json",
            &sig_config.digest,
            sig_config.size()
        ),
        descriptor(OCI_MANIFEST, &app_v1_digest, app_v1.len() as u64),
    ));
    s.command(
        0,
        user("cosign-bot", "10.1.2.4:36001"),
        put_manifest(
            app,
            OCI_MANIFEST,
            &sig_body,
            vec![sig_config.digest.clone()],
            vec![],
            Some(app_v1_digest.clone()),
            Some(COSIGN_SIG),
            &[],
        ),
    );
    // 13. v2 of the app moves `latest`: TagSet with `previous`.
    let app_config_v2 = Blob::new(
        br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/app","--v2"]},"rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    s.command(
        86_400_000,
        user("alice", alice),
        Command::LinkUploadedBlob {
            repo: repo(app),
            digest: app_config_v2.digest.clone(),
            size: app_config_v2.size(),
        },
    );
    let app_v2 = image_manifest(&app_config_v2, &[&layer]);
    let app_v2_digest = Digest::sha256_of(&app_v2);
    s.command(
        1,
        user("alice", alice),
        put_manifest(
            app,
            OCI_MANIFEST,
            &app_v2,
            vec![app_config_v2.digest.clone(), layer.digest.clone()],
            vec![],
            None,
            Some(OCI_CONFIG),
            &["v2", "latest"],
        ),
    );
    // 15. An index over both app images.
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
        descriptor(OCI_MANIFEST, &app_v1_digest, app_v1.len() as u64),
        descriptor(OCI_MANIFEST, &app_v2_digest, app_v2.len() as u64),
    ));
    s.command(
        5,
        user("alice", alice),
        put_manifest(
            app,
            OCI_INDEX,
            &index,
            vec![],
            vec![app_v1_digest.clone(), app_v2_digest.clone()],
            None,
            None,
            &["multi"],
        ),
    );
    // 16. A tag deleted.
    s.command(
        3_600_000,
        user("alice", alice),
        Command::DeleteTag {
            repo: repo(app),
            tag: tag("multi"),
        },
    );
    // 17. A manifest deleted with its tag: TagDeleted + ManifestDeleted.
    s.command(
        1_000,
        user("alice", alice),
        Command::DeleteManifest {
            repo: repo(app),
            digest: app_v1_digest.clone(),
        },
    );
    // 18. A blob unlinked.
    s.command(
        1_000,
        user("alice", alice),
        Command::UnlinkBlob {
            repo: repo(app),
            digest: app_config_v1.digest.clone(),
        },
    );
    // 19-26. Uploads cancelled for each reason.
    let reasons = [
        (CancelReason::ClientDeleted, peer(ci)),
        (CancelReason::DigestMismatch, peer(ci)),
        (CancelReason::Expired, Actor::system()),
        (CancelReason::StagingLost, Actor::system()),
    ];
    for (i, (reason, actor)) in reasons.into_iter().enumerate() {
        let upload = format!("9b2e7c1d4a6f48e0b3c5d7e9f1a2b4c{i}");
        s.command(
            10_000,
            peer(ci),
            Command::StartUpload {
                repo: repo(alpine),
                upload: upload.clone(),
            },
        );
        s.command(
            if reason == CancelReason::Expired {
                86_400_000
            } else {
                50
            },
            actor,
            Command::CancelUpload { upload, reason },
        );
    }
    // 27. Garbage collection deletes the unlinked config's bytes (no
    // command plans this: the collector writes the event itself).
    s.push(
        600_000,
        Actor::system(),
        vec![Event::BlobDeleted {
            digest: app_config_v1.digest.clone(),
            size: app_config_v1.size(),
        }],
    );
    // 28. The collection's summary, on the record (appended with
    // `GcCompleted`; records 1-27 are unchanged).
    s.command(
        150,
        Actor::system(),
        Command::RecordGcRun(ferro::commands::GcRun {
            mark_seq: 26,
            manifests_deleted: 0,
            blobs_deleted: 1,
            bytes_freed: app_config_v1.size(),
            orphans_removed: 0,
            orphan_bytes_freed: 0,
            duration_ms: 150,
        }),
    );
    // 29. An operator sends notification endpoint `ci` everything again
    // from record 20 (appended with `NotificationCursorMoved`; records
    // 1-28 are unchanged).
    s.command(
        30_000,
        user("alice", alice),
        Command::RecordCursorMove {
            endpoint: "ci".into(),
            from_seq: 28,
            to_seq: 19,
        },
    );
    s.records
}

// ---------------------------------------------------------------------------
// Encoding and reading sample files.

/// Encodes records into one segment file's bytes; returns them and the
/// last record's crc.
fn encode_segment(first_seq: u64, prev_crc: u32, records: &[ExpectedRecord]) -> (Vec<u8>, u32) {
    let mut out = SegmentHeader {
        version: FORMAT_VERSION,
        first_seq,
        prev_crc,
    }
    .encode()
    .to_vec();
    let mut crc = prev_crc;
    for r in records {
        let payload = encode_payload(&r.entry).unwrap();
        crc = encode_record(&mut out, r.seq, r.time_unix_ns, crc, &payload);
    }
    (out, crc)
}

/// Start offsets of the records in one segment file.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while let Ok(r) = read_record(&bytes[offset..]) {
        out.push(offset);
        offset += r.len_bytes();
    }
    out
}

fn jsonl(records: &[ExpectedRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

fn read_jsonl(path: &Path) -> (Vec<String>, Vec<ExpectedRecord>) {
    let text = fs::read_to_string(path).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let records = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, records)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json<T: Serialize>(path: &Path, value: &T) {
    fs::write(path, serde_json::to_string_pretty(value).unwrap() + "\n").unwrap();
}

/// Everything `recover` hands over, as records.
fn recover_records(
    log_dir: &Path,
    mode: RecoveryMode,
) -> (
    Vec<ExpectedRecord>,
    Result<recovery::RecoveryReport, RecoveryError>,
) {
    let mut got = Vec::new();
    let result = recovery::recover(log_dir, ReplayFrom::default(), mode, &mut |seq, t, e| {
        got.push(ExpectedRecord {
            seq,
            time_unix_ns: t,
            entry: e,
        })
    });
    (got, result)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Generation (ignored: run on purpose only).

#[test]
#[ignore = "rewrites the committed golden samples"]
fn regenerate_samples() {
    let records = story();
    let kinds: std::collections::BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.entry.events.iter().map(Event::kind))
        .collect();
    assert_eq!(kinds.len(), Event::KINDS.len(), "every variant once");

    // valid/: two segments.
    let valid = sample_dir("valid");
    let _ = fs::remove_dir_all(&valid);
    fs::create_dir_all(valid.join("log")).unwrap();
    let (first, second) = records.split_at(VALID_FIRST_SEGMENT_RECORDS);
    let (bytes, crc) = encode_segment(1, 0, first);
    fs::write(valid.join("log").join(segment_file_name(1)), bytes).unwrap();
    let (bytes, _) = encode_segment(second[0].seq, crc, second);
    fs::write(
        valid.join("log").join(segment_file_name(second[0].seq)),
        bytes,
    )
    .unwrap();
    fs::write(valid.join("expected.jsonl"), jsonl(&records)).unwrap();

    // torn/: five records, the fifth (a manifest put) cut mid-payload.
    let torn = sample_dir("torn");
    let _ = fs::remove_dir_all(&torn);
    fs::create_dir_all(torn.join("log")).unwrap();
    let (bytes, _) = encode_segment(1, 0, &records[..5]);
    let offsets = record_offsets(&bytes);
    let last = offsets[4];
    let payload_len = u32::from_le_bytes(bytes[last + 4..last + 8].try_into().unwrap()) as usize;
    let cut = last + 32 + payload_len / 2;
    let file = format!("log/{}", segment_file_name(1));
    fs::write(torn.join(&file), &bytes[..cut]).unwrap();
    fs::write(torn.join("expected.jsonl"), jsonl(&records[..4])).unwrap();
    write_json(
        &torn.join("expected_torn.json"),
        &ExpectedTorn {
            file: file.clone(),
            offset: last as u64,
            file_bytes: cut as u64,
            records_kept: 4,
        },
    );

    // corrupt/: six records, one byte of the third one's payload flipped.
    let corrupt = sample_dir("corrupt");
    let _ = fs::remove_dir_all(&corrupt);
    fs::create_dir_all(corrupt.join("log")).unwrap();
    let (mut bytes, _) = encode_segment(1, 0, &records[..6]);
    let offsets = record_offsets(&bytes);
    let third = offsets[2];
    let payload_len = u32::from_le_bytes(bytes[third + 4..third + 8].try_into().unwrap()) as usize;
    let flipped = third + 32 + payload_len / 2;
    bytes[flipped] ^= 0x01;
    fs::write(corrupt.join(&file), &bytes).unwrap();
    fs::write(corrupt.join("expected.jsonl"), jsonl(&records[..2])).unwrap();
    write_json(
        &corrupt.join("expected_error.json"),
        &ExpectedCorrupt {
            file,
            offset: third as u64,
            flipped_byte_offset: flipped as u64,
            next_valid_record_offset: offsets[3] as u64,
            records_before_error: 2,
        },
    );
}

// ---------------------------------------------------------------------------
// The decoder test: the committed bytes, read with today's reader.

#[test]
fn valid_sample_decodes_exactly_to_expected_json() {
    let dir = sample_dir("valid");
    let (lines, expected) = read_jsonl(&dir.join("expected.jsonl"));
    let (got, result) = recover_records(&dir.join("log"), RecoveryMode::Strict);
    let report = result.expect("the valid sample recovers in strict mode");
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.segments.len(), 2);
    assert_eq!(report.last_seq, expected.len() as u64);
    assert_eq!(report.records_verified, expected.len() as u64);
    assert_eq!(got.len(), expected.len());
    for ((got, want), line) in got.iter().zip(&expected).zip(&lines) {
        assert_eq!(got, want, "record {}", want.seq);
        // The JSON is exact too, text and all.
        assert_eq!(&serde_json::to_string(got).unwrap(), line);
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_value(got).unwrap(), value);
    }
}

#[test]
fn valid_sample_covers_every_event_variant_and_both_segments() {
    let dir = sample_dir("valid");
    let (_, expected) = read_jsonl(&dir.join("expected.jsonl"));
    let kinds: std::collections::BTreeSet<&str> = expected
        .iter()
        .flat_map(|r| r.entry.events.iter().map(Event::kind))
        .collect();
    let all: std::collections::BTreeSet<&str> = Event::KINDS.into_iter().collect();
    assert_eq!(kinds, all);
    let mut names: Vec<String> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            segment_file_name(1),
            segment_file_name(VALID_FIRST_SEGMENT_RECORDS as u64 + 1)
        ]
    );
}

/// Today's encoder writes the committed bytes exactly: the encoding of v1
/// has not drifted (a change here needs a new FORMAT_VERSION).
#[test]
fn encoder_reproduces_the_committed_valid_bytes() {
    let dir = sample_dir("valid");
    let (_, expected) = read_jsonl(&dir.join("expected.jsonl"));
    let (first, second) = expected.split_at(VALID_FIRST_SEGMENT_RECORDS);
    let (bytes, crc) = encode_segment(1, 0, first);
    assert_eq!(
        bytes,
        fs::read(dir.join("log").join(segment_file_name(1))).unwrap()
    );
    let (bytes, _) = encode_segment(second[0].seq, crc, second);
    assert_eq!(
        bytes,
        fs::read(dir.join("log").join(segment_file_name(second[0].seq))).unwrap()
    );
}

#[test]
fn torn_sample_keeps_whole_records_and_reports_the_offset() {
    let dir = sample_dir("torn");
    let want: ExpectedTorn = read_json(&dir.join("expected_torn.json"));
    let (_, expected) = read_jsonl(&dir.join("expected.jsonl"));
    let before = fs::read(dir.join(&want.file)).unwrap();
    assert_eq!(before.len() as u64, want.file_bytes);

    let (got, result) = recover_records(&dir.join("log"), RecoveryMode::TolerateTornTail);
    let report = result.unwrap();
    assert_eq!(got, expected);
    assert_eq!(report.last_seq, want.records_kept);
    let torn = report.torn_tail.expect("a torn tail");
    assert!(torn.path.ends_with(&want.file));
    assert_eq!(torn.offset, want.offset);
    assert_eq!(torn.file_bytes, want.file_bytes);
    // Recovery only reads.
    assert_eq!(fs::read(dir.join(&want.file)).unwrap(), before);

    let (_, result) = recover_records(&dir.join("log"), RecoveryMode::Strict);
    match result {
        Err(RecoveryError::TornTailStrict { path, offset, .. }) => {
            assert!(path.ends_with(&want.file));
            assert_eq!(offset, want.offset);
        }
        other => panic!("strict mode must refuse the torn tail: {other:?}"),
    }

    // Opening a copy cuts the tail, saves it aside, and appends after it.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir, tmp.path());
    let log_dir = tmp.path().join("log");
    let opened = ferro::log::open(
        &log_dir,
        State::default(),
        0,
        RecoveryMode::TolerateTornTail,
        WriterOptions {
            durability: Durability::Always,
            segment_bytes_max: 1 << 20,
        },
    )
    .unwrap();
    assert_eq!(opened.state.read().last_seq, want.records_kept);
    let segment = tmp.path().join(&want.file);
    assert_eq!(fs::metadata(&segment).unwrap().len(), want.offset);
    let aside = log_dir.join(format!(
        "{}.{}.broken",
        segment.file_name().unwrap().to_str().unwrap(),
        want.offset
    ));
    assert_eq!(fs::read(aside).unwrap(), &before[want.offset as usize..]);
    drop(opened.writer);
    opened.writer_thread.join().unwrap();
}

#[test]
fn corrupt_sample_is_refused_naming_file_and_offset() {
    let dir = sample_dir("corrupt");
    let want: ExpectedCorrupt = read_json(&dir.join("expected_error.json"));
    let (_, expected) = read_jsonl(&dir.join("expected.jsonl"));
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Strict] {
        let (got, result) = recover_records(&dir.join("log"), mode);
        assert_eq!(got, expected, "records before the damage, {mode:?}");
        assert_eq!(got.len() as u64, want.records_before_error);
        match result {
            Err(RecoveryError::Corrupt {
                path,
                offset,
                reason,
            }) => {
                assert!(path.ends_with(&want.file), "{path:?}");
                assert_eq!(offset, want.offset);
                assert!(reason.contains("checksum mismatch"), "{reason}");
                assert!(
                    reason.contains(&format!("offset {}", want.next_valid_record_offset)),
                    "{reason}"
                );
            }
            other => panic!("corruption must be refused ({mode:?}): {other:?}"),
        }
    }
    // The flipped byte is where the sample says, inside the named record.
    let bytes = fs::read(dir.join(&want.file)).unwrap();
    assert!(read_record(&bytes[want.offset as usize..]).is_err());
    assert!(read_record(&bytes[want.next_valid_record_offset as usize..]).is_ok());
    assert!(
        want.offset < want.flipped_byte_offset
            && want.flipped_byte_offset < want.next_valid_record_offset
    );
}

/// The worked example in FORMAT.md is the first bytes of the valid sample.
#[test]
fn format_doc_hex_example_matches_the_valid_sample() {
    let doc = fs::read_to_string(FORMAT_DOC).unwrap();
    let start = doc
        .find("<!-- hex-example:start -->")
        .expect("FORMAT.md has the hex example");
    let end = doc.find("<!-- hex-example:end -->").unwrap();
    let mut from_doc = Vec::new();
    for line in doc[start..end].lines() {
        let Some((data, _comment)) = line.split_once('|') else {
            continue;
        };
        let mut tokens = data.split_whitespace();
        let Some(offset) = tokens.next() else {
            continue;
        };
        let offset = usize::from_str_radix(offset, 16).expect("offset column");
        assert_eq!(offset, from_doc.len(), "offset column of {line:?}");
        for t in tokens {
            from_doc.push(u8::from_str_radix(t, 16).expect("hex byte"));
        }
    }
    let sample = fs::read(sample_dir("valid").join("log").join(segment_file_name(1))).unwrap();
    let first_record_end = record_offsets(&sample)[1];
    assert_eq!(from_doc.len(), first_record_end);
    assert_eq!(from_doc, &sample[..first_record_end]);
}

/// The CRC is CRC-32/ISO-HDLC, as FORMAT.md says.
#[test]
fn crc_is_crc32_iso_hdlc() {
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32fast::hash(b""), 0);
}

/// The payload encoding as FORMAT.md spells it out, byte by byte, without
/// the encoder: hand-made bytes decode to the entry and the encoder writes
/// exactly them.
#[test]
fn payload_encoding_matches_the_document() {
    let d = format!("sha256:{}", "ab".repeat(32));
    let digest = Digest::parse(&d).unwrap();
    let entry = Entry {
        actor: Actor {
            user: Some("ci".into()),
            peer: None,
        },
        events: vec![
            Event::UploadChunk {
                upload: "u1".into(),
                offset: 300,
                length: 65_536,
                crc32: u32::MAX,
            },
            Event::TagSet {
                repo: repo("a"),
                tag: tag("v1"),
                digest: digest.clone(),
                previous: Some(digest.clone()),
            },
            Event::BlobLinked {
                repo: repo("a"),
                digest: digest.clone(),
                size: 1 << 32,
                source: ferro::events::LinkSource::Mount {
                    from: Some(repo("b")),
                },
            },
            Event::UploadCancelled {
                upload: "u1".into(),
                reason: CancelReason::Expired,
            },
        ],
    };
    let string = |s: &str| {
        assert!(s.len() <= 250);
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    let mut hand: Vec<u8> = Vec::new();
    // actor: user Some("ci"), peer None; events: 4
    hand.push(1);
    hand.extend(string("ci"));
    hand.push(0);
    hand.push(4);
    // UploadChunk (8): "u1", 300, 65536, u32::MAX
    hand.push(8);
    hand.extend(string("u1"));
    hand.extend([0xfb, 0x2c, 0x01]);
    hand.extend([0xfc, 0x00, 0x00, 0x01, 0x00]);
    hand.extend([0xfc, 0xff, 0xff, 0xff, 0xff]);
    // TagSet (1): "a", "v1", d, Some(d)
    hand.push(1);
    hand.extend(string("a"));
    hand.extend(string("v1"));
    hand.extend(string(&d));
    hand.push(1);
    hand.extend(string(&d));
    // BlobLinked (4): "a", d, 2^32, Mount (1) { from: Some("b") }
    hand.push(4);
    hand.extend(string("a"));
    hand.extend(string(&d));
    hand.extend([0xfd, 0, 0, 0, 0, 1, 0, 0, 0]);
    hand.push(1);
    hand.push(1);
    hand.extend(string("b"));
    // UploadCancelled (10): "u1", Expired (2)
    hand.push(10);
    hand.extend(string("u1"));
    hand.push(2);

    assert_eq!(encode_payload(&entry).unwrap(), hand);
    assert_eq!(ferro::log::format::decode_payload(&hand).unwrap(), entry);

    // Trailing bytes, an Option tag other than 0/1, an unknown variant and
    // a grammar violation are all refused.
    let mut trailing = hand.clone();
    trailing.push(0);
    assert!(ferro::log::format::decode_payload(&trailing).is_err());
    let mut bad_option = hand.clone();
    bad_option[0] = 2;
    assert!(ferro::log::format::decode_payload(&bad_option).is_err());
    let mut bad_variant = hand.clone();
    bad_variant[6] = Event::KINDS.len() as u8;
    assert!(ferro::log::format::decode_payload(&bad_variant).is_err());
    let mut bad_repo = hand.clone();
    let at = hand.iter().position(|&b| b == b'a').unwrap();
    bad_repo[at] = b'A';
    assert!(ferro::log::format::decode_payload(&bad_repo).is_err());
}

/// The varint examples of FORMAT.md, and its reader notes: a longer form
/// is accepted, a marker wider than the field is not.
#[test]
fn varint_examples_of_the_document() {
    let config = bincode::config::standard();
    for (value, bytes) in [
        (0u64, &[0x00][..]),
        (250, &[0xfa]),
        (251, &[0xfb, 0xfb, 0x00]),
        (300, &[0xfb, 0x2c, 0x01]),
        (65_535, &[0xfb, 0xff, 0xff]),
        (65_536, &[0xfc, 0x00, 0x00, 0x01, 0x00]),
        (1 << 32, &[0xfd, 0, 0, 0, 0, 1, 0, 0, 0]),
    ] {
        assert_eq!(
            bincode::serde::encode_to_vec(value, config).unwrap(),
            bytes,
            "{value}"
        );
    }
    let (five, _): (u64, usize) =
        bincode::serde::decode_from_slice(&[0xfb, 0x05, 0x00], config).unwrap();
    assert_eq!(five, 5);
    assert!(
        bincode::serde::decode_from_slice::<u32, _>(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0], config)
            .is_err()
    );
    assert!(bincode::serde::decode_from_slice::<u64, _>(&[0xff], config).is_err());
    assert_eq!(bincode::serde::encode_to_vec(-1i64, config).unwrap(), [1]);
    assert_eq!(bincode::serde::encode_to_vec(1i64, config).unwrap(), [2]);
}
