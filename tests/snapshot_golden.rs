//! Golden samples of the snapshot format (`log-format/samples/snapshot/`),
//! and the decoder test that reads them.
//!
//! The valid sample must go on decoding to `expected.json`, and encoding
//! that state again must give the sample's bytes exactly: a change to the
//! snapshot bytes, or to the shape of `State`, fails here and must come
//! with a new `SNAPSHOT_VERSION` (see SNAPSHOT.md). Regenerate only on
//! purpose:
//!
//! ```text
//! cargo test --test snapshot_golden -- --ignored regenerate_samples
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{json, Value};

use ferro::commands::Command;
use ferro::events::{Actor, Entry};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;
use ferro::snapshot::format::{self, SnapshotFormatError, SNAPSHOT_HEADER_BYTES};
use ferro::snapshot::{self as snap, SnapshotFile};

const SAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/log-format/samples/snapshot");
const SNAPSHOT_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/log-format/SNAPSHOT.md");

/// 2025-11-27T09:00:00Z, as in the log samples; one second per record.
const SAMPLE_EPOCH_UNIX_NS: u64 = 1_764_234_000_000_000_000;
/// The sample's chain checksum: that of a log's record 9 (any value does
/// for the format; a real one ties the snapshot to its log).
const SAMPLE_CHAIN_CRC: u32 = 0x5eed_c0de;
/// The byte the corrupt sample flips (inside the payload).
const CORRUPT_FLIP_OFFSET: usize = SNAPSHOT_HEADER_BYTES + 40;

fn sample(name: &str) -> PathBuf {
    Path::new(SAMPLES_DIR).join(name)
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).unwrap()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn manifest_body(config: &Digest, layers: &[&Digest]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|d| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":5}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    )
}

fn put(
    repo_name: &str,
    body: &str,
    media_type: &str,
    blobs: Vec<Digest>,
    manifests: Vec<Digest>,
    subject: Option<Digest>,
    tags: &[&str],
) -> Command {
    Command::PutManifest {
        repo: repo(repo_name),
        digest: Digest::sha256_of(body.as_bytes()),
        media_type: media_type.into(),
        body: Bytes::from(body.to_owned()),
        blobs,
        manifests,
        subject,
        artifact_type: None,
        tags: tags.iter().map(|t| tag(t)).collect(),
    }
}

/// The story of the sample: nine records, planned as the writer would
/// plan them, applied at fixed times.
fn sample_state() -> State {
    let config = Digest::sha256_of(b"{}");
    let layer1 = Digest::sha256_of(b"one!!");
    let layer2 = Digest::sha256_of(b"two!!");
    let m1 = manifest_body(&config, &[&layer1]);
    let m2 = manifest_body(&config, &[&layer1, &layer2]);
    let d1 = Digest::sha256_of(m1.as_bytes());
    let d2 = Digest::sha256_of(m2.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{d2}","size":{}}}]}}"#,
        m1.len(),
        m2.len()
    );
    let signature = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{config}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{}}}}}"#,
        m1.len()
    );
    let link = |r: &str, d: &Digest, size| Command::LinkUploadedBlob {
        repo: repo(r),
        digest: d.clone(),
        size,
    };
    let upload = "0123456789abcdef0123456789abcdef".to_owned();
    let alice = Actor {
        user: Some("alice".into()),
        peer: Some("192.0.2.7:50123".into()),
    };
    let ci = Actor::anonymous(Some("198.51.100.2:41000".into()));
    let story: Vec<(Actor, Vec<Command>)> = vec![
        (
            alice.clone(),
            vec![link("app/web", &config, 2), link("app/web", &layer1, 5)],
        ),
        (
            alice.clone(),
            vec![put(
                "app/web",
                &m1,
                OCI_MANIFEST,
                vec![config.clone(), layer1.clone()],
                vec![],
                None,
                &["v1"],
            )],
        ),
        (ci.clone(), vec![link("app/web", &layer2, 5)]),
        (
            ci.clone(),
            vec![put(
                "app/web",
                &m2,
                OCI_MANIFEST,
                vec![config.clone(), layer1.clone(), layer2.clone()],
                vec![],
                None,
                &["v2"],
            )],
        ),
        (
            ci.clone(),
            vec![put(
                "app/web",
                &index,
                OCI_INDEX,
                vec![],
                vec![d1.clone(), d2.clone()],
                None,
                &["latest"],
            )],
        ),
        (
            alice.clone(),
            vec![put(
                "app/web",
                &signature,
                OCI_MANIFEST,
                vec![config.clone()],
                vec![],
                Some(d1.clone()),
                &[],
            )],
        ),
        (
            alice.clone(),
            vec![Command::SetTag {
                repo: repo("app/web"),
                tag: tag("v1"),
                digest: d2.clone(),
            }],
        ),
        (
            ci.clone(),
            vec![Command::StartUpload {
                repo: repo("tools/cli"),
                upload: upload.clone(),
            }],
        ),
        (
            ci.clone(),
            vec![
                Command::AppendChunk {
                    upload: upload.clone(),
                    offset: 0,
                    length: 5,
                    crc32: crc32fast::hash(b"hello"),
                },
                Command::MountBlob {
                    repo: repo("tools/cli"),
                    digest: layer1.clone(),
                    from: Some(repo("app/web")),
                },
            ],
        ),
    ];
    let mut state = State::default();
    for (i, (actor, commands)) in story.into_iter().enumerate() {
        let mut events = Vec::new();
        for c in commands {
            let mut planned = c.plan(&state).expect("the story is valid");
            events.append(&mut planned);
        }
        let seq = i as u64 + 1;
        let time = SAMPLE_EPOCH_UNIX_NS + seq * 1_000_000_000;
        state.apply(seq, time, &Entry { actor, events });
    }
    state
}

fn encode(state: &State) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    format::encode_to(&mut out, state, SAMPLE_CHAIN_CRC).unwrap();
    out.into_inner()
}

fn file_name() -> String {
    snap::snapshot_file_name(9)
}

#[test]
#[ignore = "rewrites the golden samples; run on purpose only"]
fn regenerate_samples() {
    let state = sample_state();
    let bytes = encode(&state);
    let (header, _) = format::decode(&bytes).unwrap();
    fs::create_dir_all(sample("valid")).unwrap();
    fs::write(sample("valid").join(file_name()), &bytes).unwrap();
    let expected = json!({ "header": header, "state": state });
    fs::write(
        sample("valid").join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
    let mut corrupt = bytes.clone();
    corrupt[CORRUPT_FLIP_OFFSET] ^= 0x01;
    fs::create_dir_all(sample("corrupt")).unwrap();
    fs::write(sample("corrupt").join(file_name()), &corrupt).unwrap();
    let error = format::decode(&corrupt).unwrap_err().to_string();
    fs::write(
        sample("corrupt").join("expected_error.json"),
        serde_json::to_string_pretty(&json!({
            "flipped_byte_offset": CORRUPT_FLIP_OFFSET,
            "error": error,
        }))
        .unwrap()
            + "\n",
    )
    .unwrap();
}

fn expected() -> Value {
    serde_json::from_slice(&fs::read(sample("valid").join("expected.json")).unwrap()).unwrap()
}

#[test]
fn the_valid_sample_decodes_to_the_expected_state() {
    let path = sample("valid").join(file_name());
    let bytes = fs::read(&path).unwrap();
    let (header, state) = format::decode(&bytes).unwrap();
    let expected = expected();
    assert_eq!(serde_json::to_value(header).unwrap(), expected["header"]);
    assert_eq!(serde_json::to_value(&state).unwrap(), expected["state"]);
    // Through the file API too (the name must match the header).
    let loaded = snap::load(&SnapshotFile { seq: 9, path }).unwrap();
    assert_eq!(loaded.state, state);
    assert_eq!(loaded.header.chain_crc, SAMPLE_CHAIN_CRC);
}

#[test]
fn encoding_the_sample_state_gives_the_sample_bytes() {
    let bytes = fs::read(sample("valid").join(file_name())).unwrap();
    assert_eq!(
        encode(&sample_state()),
        bytes,
        "the snapshot bytes or the shape of State changed: bump SNAPSHOT_VERSION and add samples"
    );
}

#[test]
fn the_corrupt_sample_is_refused() {
    let bytes = fs::read(sample("corrupt").join(file_name())).unwrap();
    let want: Value =
        serde_json::from_slice(&fs::read(sample("corrupt").join("expected_error.json")).unwrap())
            .unwrap();
    let err = format::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, SnapshotFormatError::PayloadChecksum { .. }),
        "{err}"
    );
    assert_eq!(err.to_string(), want["error"].as_str().unwrap());
    let valid = fs::read(sample("valid").join(file_name())).unwrap();
    let flipped = want["flipped_byte_offset"].as_u64().unwrap() as usize;
    let differing: Vec<usize> = (0..valid.len()).filter(|&i| valid[i] != bytes[i]).collect();
    assert_eq!(differing, [flipped]);
}

#[test]
fn refusals_for_every_kind_of_damage() {
    let valid = fs::read(sample("valid").join(file_name())).unwrap();
    let header_flip = {
        let mut b = valid.clone();
        b[16] ^= 1; // seq
        b
    };
    assert!(matches!(
        format::decode(&header_flip),
        Err(SnapshotFormatError::HeaderChecksum { .. })
    ));
    let relabel = |version: u8| {
        let mut b = valid.clone();
        b[8] = version; // with a header checksum to match
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    };
    assert!(matches!(
        format::decode(&relabel(3)),
        Err(SnapshotFormatError::Version(3))
    ));
    // Version 2 has the object index after the state: a version-1
    // payload under its label ends too early.
    assert!(matches!(
        format::decode(&relabel(2)),
        Err(SnapshotFormatError::Decode(_))
    ));
    assert!(matches!(
        format::decode(&valid[..valid.len() - 1]),
        Err(SnapshotFormatError::Length { .. })
    ));
    assert!(matches!(
        format::decode(&valid[..20]),
        Err(SnapshotFormatError::Short(20))
    ));
    let mut magic = valid.clone();
    magic[0] = b'X';
    assert!(matches!(
        format::decode(&magic),
        Err(SnapshotFormatError::Magic(_))
    ));
}

/// The hex example in SNAPSHOT.md is the valid sample's header, byte for
/// byte.
#[test]
fn the_documented_header_is_the_sample_header() {
    let doc = fs::read_to_string(SNAPSHOT_DOC).unwrap();
    let start = doc
        .find("<!-- hex-example:start -->")
        .expect("SNAPSHOT.md has the hex example");
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
    let bytes = fs::read(sample("valid").join(file_name())).unwrap();
    assert_eq!(from_doc, &bytes[..SNAPSHOT_HEADER_BYTES]);
    for constant in ["FERROSNP", "48", "snapshots/"] {
        assert!(doc.contains(constant), "SNAPSHOT.md mentions {constant}");
    }
}
