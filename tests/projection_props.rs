//! Property tests of the projection and the record encoding.
//!
//! - Random command sequences over a small universe of repositories, tags,
//!   manifests, blobs and uploads (many of them invalid) go through the real
//!   writer, one by one or in forced group commits. Every outcome (logged,
//!   no-op, rejected and why) and the final state must match a reference
//!   model written here from the command semantics; the live projection
//!   must equal the projection rebuilt from disk.
//! - Entries of every shape round-trip through the payload and record
//!   encodings, and every truncation of a record reads as short.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::Poll;

use bytes::Bytes;
use proptest::prelude::*;

use ferro::commands::{Chunk, Collectable, Command, Rejection};
use ferro::events::{Actor, CancelReason, Entry, Event, LinkSource};
use ferro::log::format::{
    decode_payload, encode_payload, encode_record, read_record, RECORD_HEADER_BYTES,
};
use ferro::log::{Committed, Durability, OpenedLog, RecoveryMode, SubmitError, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

// ---------------------------------------------------------------------------
// The universe.

const REPOS: [&str; 2] = ["a", "b/c"];
const TAGS: [&str; 3] = ["latest", "v1", "v2"];
const UPLOADS: [&str; 3] = ["u0", "u1", "u2"];
const BLOBS: usize = 4;
const MANIFESTS: usize = 5;
const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn repo(i: usize) -> RepoName {
    RepoName::parse(REPOS[i]).unwrap()
}

fn tag(i: usize) -> Tag {
    Tag::parse(TAGS[i]).unwrap()
}

fn blob(i: usize) -> Digest {
    Digest::sha256_of(format!("blob-{i}").as_bytes())
}

fn blob_size(i: usize) -> u64 {
    1000 + i as u64
}

/// A manifest of the universe: its body, what it references, its subject.
struct ManifestDef {
    body: Bytes,
    digest: Digest,
    blobs: Vec<Digest>,
    manifests: Vec<Digest>,
    subject: Option<Digest>,
    artifact_type: Option<String>,
}

fn manifest_defs() -> &'static Vec<ManifestDef> {
    static DEFS: OnceLock<Vec<ManifestDef>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut defs: Vec<ManifestDef> = Vec::new();
        let add = |blobs: Vec<usize>,
                   manifests: Vec<usize>,
                   subject: Option<usize>,
                   artifact_type: Option<&str>,
                   defs: &mut Vec<ManifestDef>| {
            let blob_digests: Vec<Digest> = blobs.into_iter().map(blob).collect();
            let manifest_digests: Vec<Digest> = manifests
                .into_iter()
                .map(|m| defs[m].digest.clone())
                .collect();
            let subject = subject.map(|m| defs[m].digest.clone());
            let list = |ds: &[Digest]| {
                let quoted: Vec<String> = ds.iter().map(|d| format!("\"{d}\"")).collect();
                quoted.join(",")
            };
            let body = Bytes::from(format!(
                r#"{{"n":{},"blobs":[{}],"manifests":[{}],"subject":"{}"}}"#,
                defs.len(),
                list(&blob_digests),
                list(&manifest_digests),
                subject.as_ref().map(Digest::to_string).unwrap_or_default()
            ));
            defs.push(ManifestDef {
                digest: Digest::sha256_of(&body),
                body,
                blobs: blob_digests,
                manifests: manifest_digests,
                subject,
                artifact_type: artifact_type.map(str::to_owned),
            });
        };
        add(vec![0, 1], vec![], None, Some(IMAGE), &mut defs); // m0: image
        add(vec![0, 2], vec![], None, None, &mut defs); // m1: image
        add(
            vec![3],
            vec![],
            Some(0),
            Some("application/example"),
            &mut defs,
        ); // m2: refers to m0
        add(vec![], vec![0, 1], None, None, &mut defs); // m3: index of m0, m1
        add(vec![], vec![], Some(3), None, &mut defs); // m4: refers to m3, no blobs
        assert_eq!(defs.len(), MANIFESTS);
        defs
    })
}

/// A command before it is resolved against the model (offsets and sizes
/// are chosen right or wrong relative to what the model knows).
#[derive(Debug, Clone)]
enum Op {
    Put {
        repo: usize,
        manifest: usize,
        tags: u8,
        docker: bool,
    },
    DeleteManifest {
        repo: usize,
        manifest: usize,
    },
    DeleteTag {
        repo: usize,
        tag: usize,
    },
    SetTag {
        repo: usize,
        tag: usize,
        manifest: usize,
    },
    Link {
        repo: usize,
        blob: usize,
    },
    Mount {
        repo: usize,
        blob: usize,
        from: Option<usize>,
    },
    Unlink {
        repo: usize,
        blob: usize,
    },
    Start {
        repo: usize,
        upload: usize,
    },
    Append {
        upload: usize,
        right_offset: bool,
        length: u64,
    },
    Complete {
        upload: usize,
        blob: usize,
        right_size: bool,
        last_chunk: Option<(bool, u64)>,
    },
    /// Garbage collection of one blob, re-checked against the state as of
    /// the mark (the latest state: every use is before it).
    Collect {
        blob: usize,
    },
    Cancel {
        upload: usize,
        reason: usize,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let r = 0..REPOS.len();
    let b = 0..BLOBS;
    let m = 0..MANIFESTS;
    let u = 0..UPLOADS.len();
    let t = 0..TAGS.len();
    prop_oneof![
        4 => (r.clone(), m.clone(), 0u8..8, prop::bool::weighted(0.2)).prop_map(
            |(repo, manifest, tags, docker)| Op::Put { repo, manifest, tags, docker }
        ),
        1 => (r.clone(), m.clone()).prop_map(|(repo, manifest)| Op::DeleteManifest { repo, manifest }),
        1 => (r.clone(), t.clone()).prop_map(|(repo, tag)| Op::DeleteTag { repo, tag }),
        1 => (r.clone(), t, m).prop_map(|(repo, tag, manifest)| Op::SetTag { repo, tag, manifest }),
        4 => (r.clone(), b.clone()).prop_map(|(repo, blob)| Op::Link { repo, blob }),
        2 => (r.clone(), b.clone(), prop::option::of(r.clone()))
            .prop_map(|(repo, blob, from)| Op::Mount { repo, blob, from }),
        1 => (r.clone(), b.clone()).prop_map(|(repo, blob)| Op::Unlink { repo, blob }),
        3 => (r, u.clone()).prop_map(|(repo, upload)| Op::Start { repo, upload }),
        3 => (u.clone(), prop::bool::weighted(0.8), 0u64..50)
            .prop_map(|(upload, right_offset, length)| Op::Append { upload, right_offset, length }),
        3 => (
            u.clone(),
            b,
            prop::bool::weighted(0.8),
            prop::option::of((prop::bool::weighted(0.8), 0u64..20))
        )
            .prop_map(|(upload, blob, right_size, last_chunk)| Op::Complete {
                upload,
                blob,
                right_size,
                last_chunk
            }),
        1 => (u, 0usize..4).prop_map(|(upload, reason)| Op::Cancel { upload, reason }),
        2 => (0..BLOBS).prop_map(|blob| Op::Collect { blob }),
    ]
}

// ---------------------------------------------------------------------------
// The reference model: plain maps, the command semantics written out again.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Observed {
    /// (repo, tag) → manifest digest
    tags: BTreeMap<(String, String), String>,
    /// (repo, manifest digest) → media type
    manifests: BTreeMap<(String, String), String>,
    /// (repo, subject, referrer)
    referrers: BTreeSet<(String, String, String)>,
    /// (repo, blob digest) → size
    repo_blobs: BTreeMap<(String, String), u64>,
    /// blob digest → size
    blobs: BTreeMap<String, u64>,
    /// upload → (repo, size)
    uploads: BTreeMap<String, (String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Logged,
    Unchanged,
    Rejected(&'static str),
}

fn rejection_name(r: &Rejection) -> &'static str {
    match r {
        Rejection::MissingReferences { .. } => "MissingReferences",
        Rejection::ManifestUnknown => "ManifestUnknown",
        Rejection::TagUnknown => "TagUnknown",
        Rejection::BlobUnknown => "BlobUnknown",
        Rejection::MountSourceMissing => "MountSourceMissing",
        Rejection::UploadUnknown => "UploadUnknown",
        Rejection::UploadRepoMismatch => "UploadRepoMismatch",
        Rejection::UploadOffset { .. } => "UploadOffset",
        Rejection::UploadExists => "UploadExists",
        Rejection::PartOutOfOrder { .. } => "PartOutOfOrder",
    }
}

fn s<T: ToString>(v: &T) -> String {
    v.to_string()
}

impl Observed {
    fn upload_size(&self, upload: usize) -> u64 {
        self.uploads.get(UPLOADS[upload]).map_or(0, |u| u.1)
    }

    /// The concrete command for `op`, given what the model knows now.
    fn resolve(&self, op: &Op) -> Command {
        let defs = manifest_defs();
        match *op {
            Op::Put {
                repo: r,
                manifest,
                tags,
                docker,
            } => {
                let d = &defs[manifest];
                Command::PutManifest {
                    repo: repo(r),
                    digest: d.digest.clone(),
                    media_type: if docker { DOCKER } else { IMAGE }.into(),
                    body: d.body.clone(),
                    blobs: d.blobs.clone(),
                    manifests: d.manifests.clone(),
                    subject: d.subject.clone(),
                    artifact_type: d.artifact_type.clone(),
                    tags: (0..TAGS.len())
                        .filter(|i| tags & (1 << i) != 0)
                        .map(tag)
                        .collect(),
                }
            }
            Op::DeleteManifest { repo: r, manifest } => Command::DeleteManifest {
                repo: repo(r),
                digest: defs[manifest].digest.clone(),
            },
            Op::DeleteTag { repo: r, tag: t } => Command::DeleteTag {
                repo: repo(r),
                tag: tag(t),
            },
            Op::SetTag {
                repo: r,
                tag: t,
                manifest,
            } => Command::SetTag {
                repo: repo(r),
                tag: tag(t),
                digest: defs[manifest].digest.clone(),
            },
            Op::Link { repo: r, blob: b } => Command::LinkUploadedBlob {
                repo: repo(r),
                digest: blob(b),
                size: blob_size(b),
            },
            Op::Mount {
                repo: r,
                blob: b,
                from,
            } => Command::MountBlob {
                repo: repo(r),
                digest: blob(b),
                from: from.map(repo),
            },
            Op::Unlink { repo: r, blob: b } => Command::UnlinkBlob {
                repo: repo(r),
                digest: blob(b),
            },
            Op::Start { repo: r, upload } => Command::StartUpload {
                repo: repo(r),
                upload: UPLOADS[upload].into(),
            },
            Op::Append {
                upload,
                right_offset,
                length,
            } => {
                let size = self.upload_size(upload);
                Command::AppendChunk {
                    upload: UPLOADS[upload].into(),
                    offset: if right_offset { size } else { size + 1 },
                    length,
                    crc32: length as u32,
                }
            }
            Op::Complete {
                upload,
                blob: b,
                right_size,
                last_chunk,
            } => {
                let size = self.upload_size(upload);
                let chunk = last_chunk.map(|(right, length)| Chunk {
                    offset: if right { size } else { size + 7 },
                    length,
                    crc32: 0,
                });
                let total = size + chunk.map_or(0, |c| c.length);
                Command::CompleteUpload {
                    upload: UPLOADS[upload].into(),
                    digest: blob(b),
                    size: if right_size { total } else { total + 1 },
                    last_chunk: chunk,
                }
            }
            Op::Collect { blob: b } => Command::CollectBlobs {
                mark_seq: u64::MAX,
                blobs: vec![Collectable {
                    digest: blob(b),
                    linked_in: (0..REPOS.len()).map(repo).collect(),
                }],
            },
            Op::Cancel { upload, reason } => Command::CancelUpload {
                upload: UPLOADS[upload].into(),
                reason: [
                    CancelReason::ClientDeleted,
                    CancelReason::DigestMismatch,
                    CancelReason::Expired,
                    CancelReason::StagingLost,
                ][reason],
            },
        }
    }

    fn link(&mut self, repo: String, digest: String, size: u64) {
        self.repo_blobs.insert((repo, digest.clone()), size);
        self.blobs.insert(digest, size);
    }

    /// Applies `command` as the registry's rules say, sequentially.
    /// A manifest put; a mirror's fill skips `check_references`.
    fn put_manifest(&mut self, command: &Command, check_references: bool) -> Outcome {
        let Command::PutManifest {
            repo,
            digest,
            media_type,
            blobs,
            manifests,
            subject,
            tags,
            ..
        } = command
        else {
            unreachable!("only manifest puts")
        };
        let r = s(repo);
        let d = s(digest);
        let missing_blob = blobs
            .iter()
            .any(|b| !self.repo_blobs.contains_key(&(r.clone(), s(b))));
        let missing_manifest = manifests
            .iter()
            .any(|m| !self.manifests.contains_key(&(r.clone(), s(m))));
        if check_references && (missing_blob || missing_manifest) {
            return Outcome::Rejected("MissingReferences");
        }
        let mut changed = false;
        let key = (r.clone(), d.clone());
        if self.manifests.get(&key) != Some(media_type) {
            self.manifests.insert(key, media_type.clone());
            changed = true;
        }
        for t in tags {
            let key = (r.clone(), s(t));
            if self.tags.get(&key) != Some(&d) {
                self.tags.insert(key, d.clone());
                changed = true;
            }
        }
        if let Some(subject) = subject {
            changed |= self.referrers.insert((r, s(subject), d));
        }
        if changed {
            Outcome::Logged
        } else {
            Outcome::Unchanged
        }
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::PutManifest { .. } => self.put_manifest(command, true),
            Command::FillManifest(put) => self.put_manifest(put, false),
            Command::DeleteManifest { repo, digest } => {
                let (r, d) = (s(repo), s(digest));
                if self.manifests.remove(&(r.clone(), d.clone())).is_none() {
                    return Outcome::Rejected("ManifestUnknown");
                }
                self.tags.retain(|(tr, _), td| !(tr == &r && td == &d));
                self.referrers
                    .retain(|(rr, _, referrer)| !(rr == &r && referrer == &d));
                Outcome::Logged
            }
            Command::DeleteTag { repo, tag } => match self.tags.remove(&(s(repo), s(tag))) {
                Some(_) => Outcome::Logged,
                None => Outcome::Rejected("TagUnknown"),
            },
            Command::SetTag { repo, tag, digest } => {
                let (r, d) = (s(repo), s(digest));
                if !self.manifests.contains_key(&(r.clone(), d.clone())) {
                    return Outcome::Rejected("ManifestUnknown");
                }
                match self.tags.insert((r, s(tag)), d.clone()) {
                    Some(previous) if previous == d => Outcome::Unchanged,
                    _ => Outcome::Logged,
                }
            }
            Command::LinkUploadedBlob { repo, digest, size } => {
                if self.repo_blobs.contains_key(&(s(repo), s(digest))) {
                    return Outcome::Unchanged;
                }
                self.link(s(repo), s(digest), *size);
                Outcome::Logged
            }
            Command::MountBlob { repo, digest, from } => {
                let size = match from {
                    Some(f) => self.repo_blobs.get(&(s(f), s(digest))),
                    None => self.blobs.get(&s(digest)),
                };
                let Some(&size) = size else {
                    return Outcome::Rejected("MountSourceMissing");
                };
                if self.repo_blobs.contains_key(&(s(repo), s(digest))) {
                    return Outcome::Unchanged;
                }
                self.link(s(repo), s(digest), size);
                Outcome::Logged
            }
            Command::UnlinkBlob { repo, digest } => {
                match self.repo_blobs.remove(&(s(repo), s(digest))) {
                    Some(_) => Outcome::Logged,
                    None => Outcome::Rejected("BlobUnknown"),
                }
            }
            Command::StartUpload { repo, upload } => {
                if self.uploads.contains_key(upload) {
                    return Outcome::Rejected("UploadExists");
                }
                self.uploads.insert(upload.clone(), (s(repo), 0));
                Outcome::Logged
            }
            Command::AppendChunk {
                upload,
                offset,
                length,
                ..
            } => {
                let Some(u) = self.uploads.get_mut(upload) else {
                    return Outcome::Rejected("UploadUnknown");
                };
                if u.1 != *offset {
                    return Outcome::Rejected("UploadOffset");
                }
                u.1 += length;
                Outcome::Logged
            }
            Command::CompleteUpload {
                upload,
                digest,
                size,
                last_chunk,
            } => {
                let Some((repo, acked)) = self.uploads.get(upload).cloned() else {
                    return Outcome::Rejected("UploadUnknown");
                };
                let mut total = acked;
                if let Some(c) = last_chunk {
                    if c.offset != acked {
                        return Outcome::Rejected("UploadOffset");
                    }
                    total += c.length;
                }
                if total != *size {
                    return Outcome::Rejected("UploadOffset");
                }
                self.uploads.remove(upload);
                if !self.repo_blobs.contains_key(&(repo.clone(), s(digest))) {
                    self.link(repo, s(digest), *size);
                }
                Outcome::Logged
            }
            Command::CollectBlobs { blobs, .. } => {
                let mut logged = false;
                for c in blobs {
                    let d = s(&c.digest);
                    let referenced = self.manifests.keys().any(|(_, m)| {
                        manifest_defs()
                            .iter()
                            .find(|x| s(&x.digest) == *m)
                            .is_some_and(|x| x.blobs.contains(&c.digest))
                    });
                    if referenced || self.blobs.remove(&d).is_none() {
                        continue;
                    }
                    self.repo_blobs.retain(|(_, b), _| *b != d);
                    logged = true;
                }
                if logged {
                    Outcome::Logged
                } else {
                    Outcome::Unchanged
                }
            }
            Command::CancelUpload { upload, .. } => match self.uploads.remove(upload) {
                Some(_) => Outcome::Logged,
                None => Outcome::Rejected("UploadUnknown"),
            },
            // Not generated: the manifest policy's re-check has its own
            // tests (`commands::tests`, `tests/gc_untagged.rs`).
            Command::CollectManifests { .. }
            | Command::RecordGcRun(_)
            | Command::StartMultipart { .. }
            | Command::AppendParts { .. }
            | Command::CompleteObjectUpload { .. }
            | Command::LinkUploadedObject { .. }
            | Command::AbortMultiparts { .. }
            | Command::RecordCursorMove { .. } => {
                unreachable!("no op resolves to {command:?}")
            }
        }
    }
}

/// What the model tracks, read off a projection. Also checks the
/// projection's own invariants.
fn observe(state: &State) -> Observed {
    let mut rebuilt = state.clone();
    rebuilt.rebuild_blob_use();
    assert_eq!(
        rebuilt.blob_use, state.blob_use,
        "the blob use index agrees with the state it is derived from"
    );
    let mut o = Observed::default();
    for (name, r) in &state.repos {
        assert!(
            !(r.tags.is_empty() && r.manifests.is_empty() && r.blobs.is_empty()),
            "empty repository {name} kept in the projection"
        );
        for (t, d) in &r.tags {
            o.tags.insert((s(name), s(t)), s(d));
        }
        for (d, m) in &r.manifests {
            o.manifests.insert((s(name), s(d)), m.media_type.clone());
            let def = manifest_defs().iter().find(|x| &x.digest == d).unwrap();
            assert_eq!(m.body, def.body);
            assert!(m.put_seq >= 1 && m.put_seq <= state.last_seq);
        }
        for (subject, referrers) in &r.referrers {
            assert!(!referrers.is_empty(), "empty referrer set kept");
            for referrer in referrers {
                o.referrers.insert((s(name), s(subject), s(referrer)));
            }
        }
        for (b, size) in &r.blobs {
            o.repo_blobs.insert((s(name), s(b)), *size);
        }
    }
    for (b, size) in &state.blobs {
        o.blobs.insert(s(b), *size);
    }
    for (id, u) in &state.uploads {
        o.uploads.insert(id.clone(), (s(&u.repo), u.size));
    }
    o
}

// ---------------------------------------------------------------------------
// Driving the real writer.

fn open_log(log_dir: &Path) -> OpenedLog {
    ferro::log::open(
        log_dir,
        State::default(),
        0,
        RecoveryMode::Strict,
        WriterOptions {
            // The properties are about order and state, not the disk.
            durability: Durability::Never,
            segment_bytes_max: 4096,
        },
    )
    .unwrap()
}

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

type SubmitFuture<'a> = Pin<Box<dyn Future<Output = Result<Committed, SubmitError>> + Send + 'a>>;

/// Submits `commands` in order as one burst: they are all queued while the
/// writer is held off the state lock, so it takes most of them as one group
/// commit. Returns the results in order.
// Holding the state lock over the first poll is the point: it keeps the
// writer from planning until every command is queued. That await never
// suspends (the future it polls is ready at once).
#[allow(clippy::await_holding_lock)]
fn submit_burst(opened: &OpenedLog, commands: &[Command]) -> Vec<Result<Committed, SubmitError>> {
    runtime().block_on(async {
        let mut futures: Vec<SubmitFuture<'_>> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Box::pin(
                    opened
                        .writer
                        .submit(Actor::anonymous(Some(format!("p{i}"))), c.clone()),
                ) as SubmitFuture<'_>
            })
            .collect();
        let mut results: Vec<Option<Result<Committed, SubmitError>>> =
            (0..futures.len()).map(|_| None).collect();
        let mut poll_all = |cx: &mut std::task::Context<'_>| {
            for (f, r) in futures.iter_mut().zip(results.iter_mut()) {
                if r.is_none() {
                    if let Poll::Ready(out) = f.as_mut().poll(cx) {
                        *r = Some(out);
                    }
                }
            }
            results.iter().all(Option::is_some)
        };
        {
            // The first poll of each submit queues it, in order.
            let _hold = opened.state.write();
            std::future::poll_fn(|cx| {
                poll_all(cx);
                Poll::Ready(())
            })
            .await;
        }
        std::future::poll_fn(|cx| {
            if poll_all(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        results.into_iter().map(Option::unwrap).collect()
    })
}

fn outcome_of(result: &Result<Committed, SubmitError>) -> Outcome {
    match result {
        Ok(Committed { seq: Some(_), .. }) => Outcome::Logged,
        Ok(Committed { seq: None, .. }) => Outcome::Unchanged,
        Err(SubmitError::Rejected(r)) => Outcome::Rejected(rejection_name(r)),
        Err(e) => panic!("storage failure: {e}"),
    }
}

/// Runs `ops` (split into bursts of the given sizes, or one by one) through
/// the writer and checks every outcome, the live state, the state rebuilt
/// from disk, and the model.
fn check_against_model(ops: &[Op], bursts: Option<&[usize]>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let opened = open_log(&log_dir);
    let mut model = Observed::default();
    let mut next_seq = 1;
    let mut remaining = ops;
    let mut burst_sizes = bursts.unwrap_or(&[]).iter().cycle();
    while !remaining.is_empty() {
        let n = match bursts {
            Some(_) => (*burst_sizes.next().unwrap()).clamp(1, remaining.len()),
            None => 1,
        };
        let (now, rest) = remaining.split_at(n);
        remaining = rest;
        // Resolve against the model as it will be when each command runs.
        let mut commands = Vec::new();
        let mut expected = Vec::new();
        for op in now {
            let command = model.resolve(op);
            expected.push(model.apply(&command));
            commands.push(command);
        }
        let results = if bursts.is_some() {
            submit_burst(&opened, &commands)
        } else {
            commands
                .iter()
                .map(|c| runtime().block_on(opened.writer.submit(Actor::system(), c.clone())))
                .collect()
        };
        for ((command, want), got) in commands.iter().zip(&expected).zip(&results) {
            prop_assert_eq!(
                outcome_of(got),
                *want,
                "command {:?} got {:?}",
                command,
                got
            );
            if let Ok(Committed { seq: Some(seq), .. }) = got {
                prop_assert_eq!(*seq, next_seq, "sequence follows submission order");
                next_seq += 1;
            }
        }
    }
    let live = close(opened);
    prop_assert_eq!(live.last_seq, next_seq - 1);
    prop_assert_eq!(&observe(&live), &model);

    let reopened = open_log(&log_dir);
    prop_assert_eq!(reopened.report.torn_tail.clone(), None);
    let rebuilt = close(reopened);
    prop_assert_eq!(&rebuilt, &live, "projection rebuilt from disk");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    })]

    #[test]
    fn commands_one_by_one_match_the_model_and_the_log(
        ops in prop::collection::vec(arb_op(), 1..60)
    ) {
        check_against_model(&ops, None)?;
    }

    #[test]
    fn group_commits_match_the_model_and_the_log(
        ops in prop::collection::vec(arb_op(), 1..80),
        bursts in prop::collection::vec(1usize..24, 1..6),
    ) {
        check_against_model(&ops, Some(&bursts))?;
    }
}

#[derive(Debug, Clone)]
enum BlobOp {
    Link { repo: usize, blob: usize },
    Unlink { repo: usize, blob: usize },
    Delete { blob: usize },
}

fn arb_blob_op() -> impl Strategy<Value = BlobOp> {
    prop_oneof![
        3 => (0..REPOS.len(), 0..BLOBS).prop_map(|(repo, blob)| BlobOp::Link { repo, blob }),
        1 => (0..REPOS.len(), 0..BLOBS).prop_map(|(repo, blob)| BlobOp::Unlink { repo, blob }),
        1 => (0..BLOBS).prop_map(|blob| BlobOp::Delete { blob }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The fold over blob events, garbage collection included (no command
    /// plans `BlobDeleted`: the collector logs it), matches the model, and
    /// a state that went through a snapshot's encoding folds on exactly like
    /// the one that did not.
    #[test]
    fn blob_events_fold_like_the_model_across_a_snapshot(
        ops in prop::collection::vec(arb_blob_op(), 1..60),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(ops.len());
        let mut state = State::default();
        let mut restored: Option<State> = None;
        let mut model = Observed::default();
        for (i, op) in ops.iter().enumerate() {
            if i == split {
                let config = ferro::log::format::PAYLOAD_CONFIG;
                let bytes = bincode::serde::encode_to_vec(&state, config).unwrap();
                let (back, _): (State, usize) =
                    bincode::serde::decode_from_slice(&bytes, config).unwrap();
                prop_assert_eq!(&back, &state);
                restored = Some(back);
            }
            let events = match *op {
                BlobOp::Link { repo: r, blob: b } => {
                    model.link(s(&repo(r)), s(&blob(b)), blob_size(b));
                    vec![Event::BlobLinked {
                        repo: repo(r),
                        digest: blob(b),
                        size: blob_size(b),
                        source: LinkSource::Upload { upload: None },
                    }]
                }
                BlobOp::Unlink { repo: r, blob: b } => {
                    model.repo_blobs.remove(&(s(&repo(r)), s(&blob(b))));
                    vec![Event::BlobUnlinked { repo: repo(r), digest: blob(b) }]
                }
                BlobOp::Delete { blob: b } => {
                    // The collector unlinks the blob everywhere, then
                    // deletes it, in one entry.
                    let d = s(&blob(b));
                    let mut events: Vec<Event> = state
                        .repos
                        .iter()
                        .filter(|(_, r)| r.blobs.contains_key(&blob(b)))
                        .map(|(name, _)| Event::BlobUnlinked { repo: name.clone(), digest: blob(b) })
                        .collect();
                    events.push(Event::BlobDeleted { digest: blob(b), size: blob_size(b) });
                    model.blobs.remove(&d);
                    model.repo_blobs.retain(|(_, linked), _| linked != &d);
                    events
                }
            };
            let entry = Entry { actor: Actor::system(), events };
            let seq = state.last_seq + 1;
            state.apply(seq, 1, &entry);
            if let Some(r) = restored.as_mut() {
                r.apply(seq, 1, &entry);
            }
        }
        prop_assert_eq!(&observe(&state), &model);
        if let Some(r) = restored {
            prop_assert_eq!(&r, &state);
        }
    }
}

/// Submits `commands` so that they form one group commit: the writer is
/// first parked on the state lock with an unrelated command, and all of
/// `commands` are queued before it can take the next batch. Returns their
/// outcomes and the final state.
// The state lock is held across the awaits on purpose, to park the writer;
// the runtime's workers go on running the spawned submit.
#[allow(clippy::await_holding_lock)]
fn in_one_group_commit(commands: &[Command]) -> (Vec<Outcome>, State) {
    let tmp = tempfile::tempdir().unwrap();
    let opened = open_log(&tmp.path().join("log"));
    let blocker = Command::StartUpload {
        repo: repo(1),
        upload: "blocker".into(),
    };
    let results = runtime().block_on(async {
        let hold = opened.state.write();
        let writer = opened.writer.clone();
        let parked = tokio::spawn(async move { writer.submit(Actor::system(), blocker).await });
        // Time for the writer to take the blocker alone and wait for the lock.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut futures: Vec<SubmitFuture<'_>> = commands
            .iter()
            .map(|c| Box::pin(opened.writer.submit(Actor::system(), c.clone())) as SubmitFuture<'_>)
            .collect();
        std::future::poll_fn(|cx| {
            for f in futures.iter_mut() {
                assert!(f.as_mut().poll(cx).is_pending());
            }
            Poll::Ready(())
        })
        .await;
        drop(hold);
        parked.await.unwrap().unwrap();
        futures_util::future::join_all(futures).await
    });
    let live = close(opened);
    (results.iter().map(outcome_of).collect(), live)
}

/// The outcomes the model gives `commands` run one after the other.
fn sequential_outcomes(commands: &[Command]) -> Vec<Outcome> {
    let mut model = Observed::default();
    commands.iter().map(|c| model.apply(c)).collect()
}

/// A command queued behind another in the same group commit is planned
/// against that command's effect. Here: an upload is started and
/// completed, and a manifest referencing the uploaded blob is pushed.
/// (`CompleteUpload`'s keys name the upload's repository only once the
/// upload exists.)
#[test]
fn a_manifest_sees_the_upload_completed_before_it_in_the_same_group_commit() {
    let defs = manifest_defs();
    let commands = [
        Command::StartUpload {
            repo: repo(0),
            upload: "u0".into(),
        },
        Command::CompleteUpload {
            upload: "u0".into(),
            digest: blob(3),
            size: 0,
            last_chunk: None,
        },
        // m2 references blob 3, which the completed upload links.
        Command::PutManifest {
            repo: repo(0),
            digest: defs[2].digest.clone(),
            media_type: IMAGE.into(),
            body: defs[2].body.clone(),
            blobs: defs[2].blobs.clone(),
            manifests: vec![],
            subject: defs[2].subject.clone(),
            artifact_type: defs[2].artifact_type.clone(),
            tags: vec![tag(0)],
        },
    ];
    let (outcomes, live) = in_one_group_commit(&commands);
    assert_eq!(outcomes, sequential_outcomes(&commands));
    assert_eq!(outcomes, [Outcome::Logged; 3]);
    assert!(live.repos[&repo(0)].manifests.contains_key(&defs[2].digest));
}

/// Same rule: a manifest is put with a tag and deleted, then the tag is
/// deleted, all in one group commit. The manifest delete removed the tag,
/// so the tag delete must be refused, not logged a second time.
/// (`DeleteManifest`'s keys name the tags pointing at the manifest only
/// once they exist.) Found by `group_commits_match_the_model_and_the_log`.
#[test]
fn a_tag_delete_sees_the_manifest_delete_before_it_in_the_same_group_commit() {
    let defs = manifest_defs();
    let commands = [
        Command::PutManifest {
            repo: repo(1),
            digest: defs[4].digest.clone(),
            media_type: IMAGE.into(),
            body: defs[4].body.clone(),
            blobs: vec![],
            manifests: vec![],
            subject: defs[4].subject.clone(),
            artifact_type: None,
            tags: vec![tag(2)],
        },
        Command::DeleteManifest {
            repo: repo(1),
            digest: defs[4].digest.clone(),
        },
        Command::DeleteTag {
            repo: repo(1),
            tag: tag(2),
        },
    ];
    let (outcomes, live) = in_one_group_commit(&commands);
    assert_eq!(outcomes, sequential_outcomes(&commands));
    assert_eq!(
        outcomes,
        [
            Outcome::Logged,
            Outcome::Logged,
            Outcome::Rejected("TagUnknown")
        ]
    );
    // The blocker and the two logged commands.
    assert_eq!(live.last_seq, 3);
}

/// The untagged-manifest policy's deletion, queued in one group commit
/// behind a tag set on the manifest, an index put over another, and a
/// referrer put onto a third: each is planned first (they share the
/// manifest's key), so all three manifests are kept; the fourth, which
/// nothing touched, goes.
#[test]
fn collecting_manifests_sees_a_tag_an_index_and_a_referrer_queued_before_it() {
    // `plan` checks no body: synthetic manifests without blobs will do.
    let put = |name: &str, children: Vec<Digest>, subject: Option<Digest>, tags: Vec<Tag>| {
        let body = Bytes::from(name.to_owned());
        Command::PutManifest {
            repo: repo(0),
            digest: Digest::sha256_of(&body),
            media_type: IMAGE.into(),
            body,
            blobs: vec![],
            manifests: children,
            subject,
            artifact_type: None,
            tags,
        }
    };
    let digest = |name: &str| Digest::sha256_of(name.as_bytes());
    let images = ["one", "two", "three", "four"];
    let mut commands: Vec<Command> = images
        .iter()
        .map(|n| put(n, vec![], None, vec![]))
        .collect();
    commands.extend([
        Command::SetTag {
            repo: repo(0),
            tag: tag(0),
            digest: digest("one"),
        },
        put("index", vec![digest("two")], None, vec![tag(1)]),
        put("referrer", vec![], Some(digest("three")), vec![tag(2)]),
        Command::CollectManifests {
            repo: repo(0),
            put_seq_max: u64::MAX,
            digests: images.iter().map(|n| digest(n)).collect(),
        },
    ]);
    let (outcomes, live) = in_one_group_commit(&commands);
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Logged),
        "{outcomes:?}"
    );
    let kept = &live.repos[&repo(0)].manifests;
    for n in &images[..3] {
        assert!(kept.contains_key(&digest(n)), "{n}");
    }
    assert!(!kept.contains_key(&digest("four")));
}

// ---------------------------------------------------------------------------
// Encoding round trips.

fn arb_repo() -> impl Strategy<Value = RepoName> {
    "[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?(/[a-z0-9]{1,8}){0,2}"
        .prop_map(|s| RepoName::parse(&s).unwrap())
}

fn arb_tag() -> impl Strategy<Value = Tag> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}".prop_map(|s| Tag::parse(&s).unwrap())
}

fn arb_digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        4 => "[0-9a-f]{64}".prop_map(|h| Digest::parse(&format!("sha256:{h}")).unwrap()),
        1 => "[0-9a-f]{128}".prop_map(|h| Digest::parse(&format!("sha512:{h}")).unwrap()),
    ]
}

fn arb_text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn arb_event() -> impl Strategy<Value = Event> {
    let reason = prop_oneof![
        Just(CancelReason::ClientDeleted),
        Just(CancelReason::DigestMismatch),
        Just(CancelReason::Expired),
        Just(CancelReason::StagingLost),
    ];
    let source = prop_oneof![
        prop::option::of(arb_text()).prop_map(|upload| LinkSource::Upload { upload }),
        prop::option::of(arb_repo()).prop_map(|from| LinkSource::Mount { from }),
    ];
    prop_oneof![
        (
            arb_repo(),
            arb_digest(),
            arb_text(),
            prop::collection::vec(any::<u8>(), 0..700),
            prop::collection::vec(arb_digest(), 0..4),
            prop::collection::vec(arb_digest(), 0..3),
            prop::option::of(arb_digest()),
            prop::option::of(arb_text()),
        )
            .prop_map(
                |(repo, digest, media_type, body, blobs, manifests, subject, artifact_type)| {
                    Event::ManifestPut {
                        repo,
                        digest,
                        media_type,
                        body: Bytes::from(body),
                        blobs,
                        manifests,
                        subject,
                        artifact_type,
                    }
                }
            ),
        (
            arb_repo(),
            arb_tag(),
            arb_digest(),
            prop::option::of(arb_digest())
        )
            .prop_map(|(repo, tag, digest, previous)| Event::TagSet {
                repo,
                tag,
                digest,
                previous
            }),
        (arb_repo(), arb_tag(), arb_digest()).prop_map(|(repo, tag, digest)| Event::TagDeleted {
            repo,
            tag,
            digest
        }),
        (arb_repo(), arb_digest())
            .prop_map(|(repo, digest)| Event::ManifestDeleted { repo, digest }),
        (arb_repo(), arb_digest(), any::<u64>(), source).prop_map(
            |(repo, digest, size, source)| Event::BlobLinked {
                repo,
                digest,
                size,
                source
            }
        ),
        (arb_repo(), arb_digest()).prop_map(|(repo, digest)| Event::BlobUnlinked { repo, digest }),
        (arb_digest(), any::<u64>()).prop_map(|(digest, size)| Event::BlobDeleted { digest, size }),
        (arb_repo(), arb_text()).prop_map(|(repo, upload)| Event::UploadStarted { repo, upload }),
        (arb_text(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(upload, offset, length, crc32)| Event::UploadChunk {
                upload,
                offset,
                length,
                crc32
            }
        ),
        (arb_text(), arb_digest(), any::<u64>()).prop_map(|(upload, digest, size)| {
            Event::UploadCompleted {
                upload,
                digest,
                size,
            }
        }),
        (arb_text(), reason).prop_map(|(upload, reason)| Event::UploadCancelled { upload, reason }),
        (arb_repo(), arb_digest(), arb_digest()).prop_map(|(repo, subject, referrer)| {
            Event::ReferrerRegistered {
                repo,
                subject,
                referrer,
            }
        }),
        any::<[u64; 7]>().prop_map(|n| Event::GcCompleted {
            mark_seq: n[0],
            manifests_deleted: n[1],
            blobs_deleted: n[2],
            bytes_freed: n[3],
            orphans_removed: n[4],
            orphan_bytes_freed: n[5],
            duration_ms: n[6],
        }),
        (arb_text(), any::<u64>(), any::<u64>()).prop_map(|(endpoint, from_seq, to_seq)| {
            Event::NotificationCursorMoved {
                endpoint,
                from_seq,
                to_seq,
            }
        }),
    ]
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        prop::option::of(arb_text()),
        prop::option::of(arb_text()),
        prop::collection::vec(arb_event(), 0..6),
    )
        .prop_map(|(user, peer, events)| Entry {
            actor: Actor { user, peer },
            events,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn payload_round_trips_and_every_truncation_fails(entry in arb_entry()) {
        let payload = encode_payload(&entry).unwrap();
        prop_assert_eq!(&decode_payload(&payload).unwrap(), &entry);
        for cut in 0..payload.len() {
            prop_assert!(decode_payload(&payload[..cut]).is_err(), "prefix of {} decodes", cut);
        }
        let mut trailing = payload.clone();
        trailing.push(0);
        prop_assert!(decode_payload(&trailing).is_err());
    }

    #[test]
    fn record_round_trips_and_every_truncation_is_short(
        entry in arb_entry(),
        seq in 1u64..u64::MAX,
        time_unix_ns in any::<u64>(),
        prev_crc in any::<u32>(),
        garbage in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let payload = encode_payload(&entry).unwrap();
        let mut out = Vec::new();
        let crc = encode_record(&mut out, seq, time_unix_ns, prev_crc, &payload);
        prop_assert_eq!(out.len(), RECORD_HEADER_BYTES + payload.len());
        prop_assert_eq!(crc, crc32fast::hash(&out[4..]));
        let record_bytes = out.len();
        // Whatever follows a record does not change how it reads.
        out.extend_from_slice(&garbage);
        let r = read_record(&out).unwrap();
        prop_assert_eq!(r.len_bytes(), record_bytes);
        prop_assert_eq!(r.header.crc, crc);
        prop_assert_eq!(r.header.payload_len as usize, payload.len());
        prop_assert_eq!(r.header.prev_crc, prev_crc);
        prop_assert_eq!(r.header.seq, seq);
        prop_assert_eq!(r.header.time_unix_ns, time_unix_ns);
        prop_assert_eq!(r.payload, &payload[..]);
        prop_assert_eq!(&decode_payload(r.payload).unwrap(), &entry);
        for cut in 0..record_bytes {
            match read_record(&out[..cut]) {
                Err(e) => prop_assert!(e.is_short(), "cut at {}: {}", cut, e),
                Ok(_) => prop_assert!(false, "cut at {} reads as a record", cut),
            }
        }
    }
}
