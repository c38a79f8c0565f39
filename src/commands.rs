//! Commands: what a request asks the log writer to do. The writer checks a
//! command's preconditions against the current state (`plan`) and, if they
//! hold, logs the events `plan` returns. Because only the writer plans, and
//! plans in sequence, two racing requests can never both succeed on stale
//! state.
//!
//! `keys` names everything a command reads or writes; the writer never
//! groups two commands with a common key into one commit, so each command
//! is planned against a state that includes every command before it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::events::{CancelReason, Event, LinkSource, UploadId};
use crate::oci::{Digest, RepoName, Tag};
use crate::projection::{State, StoredPart};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    PutManifest {
        repo: RepoName,
        digest: Digest,
        media_type: String,
        body: Bytes,
        blobs: Vec<Digest>,
        manifests: Vec<Digest>,
        subject: Option<Digest>,
        artifact_type: Option<String>,
        tags: Vec<Tag>,
    },
    /// A manifest a mirror fetched from its upstream (see `mirror`): the
    /// boxed [`Command::PutManifest`], planned without requiring the blobs
    /// and child manifests it references, which the mirror fetches only
    /// when they are pulled. It logs the same events as a push.
    FillManifest(Box<Command>),
    DeleteManifest {
        repo: RepoName,
        digest: Digest,
    },
    DeleteTag {
        repo: RepoName,
        tag: Tag,
    },
    /// Point a tag at a manifest the repository already has (restores).
    SetTag {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    /// Link a blob whose bytes were just committed to the store by a single
    /// `POST ?digest=` upload.
    LinkUploadedBlob {
        repo: RepoName,
        digest: Digest,
        size: u64,
    },
    /// Mount a blob from `from`, or from the store when `from` is `None`.
    MountBlob {
        repo: RepoName,
        digest: Digest,
        from: Option<RepoName>,
    },
    UnlinkBlob {
        repo: RepoName,
        digest: Digest,
    },
    StartUpload {
        repo: RepoName,
        upload: UploadId,
    },
    AppendChunk {
        upload: UploadId,
        offset: u64,
        length: u64,
        crc32: u32,
    },
    /// Finish an upload whose bytes (all `size` of them, the last chunk
    /// included) are now the blob `digest` in the store.
    CompleteUpload {
        upload: UploadId,
        digest: Digest,
        size: u64,
        last_chunk: Option<Chunk>,
    },
    CancelUpload {
        upload: UploadId,
        reason: CancelReason,
    },
    /// Garbage collection: delete blobs found unreferenced by a mark
    /// phase run on the state at `mark_seq`. `plan` re-checks each one
    /// against the current state and skips any that a live manifest
    /// references now, or that was linked or referenced after `mark_seq`;
    /// the rest are unlinked from every repository and deleted.
    CollectBlobs {
        mark_seq: u64,
        blobs: Vec<Collectable>,
    },
    /// Garbage collection's untagged-manifest policy: delete manifests of
    /// `repo` that a mark phase found untagged, put at or before record
    /// `put_seq_max`, and needed by no kept manifest. `plan` re-checks
    /// each one against the current state: one tagged since, put again
    /// since, or reachable from any manifest this command does not delete
    /// (see `Repo::reachable_manifests`) is kept. The rest go as a
    /// manifest DELETE would remove them.
    CollectManifests {
        repo: RepoName,
        put_seq_max: u64,
        digests: Vec<Digest>,
    },
    /// Garbage collection: put a finished run's figures on the record.
    RecordGcRun(GcRun),
    /// An operator's move of a notification endpoint's cursor, on the
    /// record before the cursor file changes.
    RecordCursorMove {
        endpoint: String,
        from_seq: u64,
        to_seq: u64,
    },
    /// Object store: `upload`'s bytes go to `key` through the multipart
    /// upload `multipart`, just opened.
    StartMultipart {
        upload: UploadId,
        key: String,
        multipart: String,
    },
    /// Object store: [`Command::AppendChunk`], the chunk's bytes stored as
    /// `parts` of the upload's multipart upload.
    AppendParts {
        upload: UploadId,
        offset: u64,
        length: u64,
        crc32: u32,
        parts: Vec<StoredPart>,
    },
    /// Object store: [`Command::CompleteUpload`], the last chunk's bytes
    /// stored as `parts`, the multipart upload completed as object `key`.
    CompleteObjectUpload {
        upload: UploadId,
        digest: Digest,
        size: u64,
        last_chunk: Option<Chunk>,
        parts: Vec<StoredPart>,
        key: String,
    },
    /// Object store: [`Command::LinkUploadedBlob`] for a whole blob in one
    /// request, written by `upload` (a generated id) as object `key`.
    LinkUploadedObject {
        repo: RepoName,
        digest: Digest,
        size: u64,
        upload: UploadId,
        key: String,
    },
    /// Object store: these uploads' multipart uploads were aborted.
    AbortMultiparts {
        uploads: Vec<UploadId>,
    },
}

/// The figures of a finished garbage collection run (see
/// `Event::GcCompleted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcRun {
    pub mark_seq: u64,
    pub manifests_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub orphans_removed: u64,
    pub orphan_bytes_freed: u64,
    pub duration_ms: u64,
}

/// A blob the mark phase found unreferenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collectable {
    pub digest: Digest,
    /// The repositories that linked it at the mark. A repository that
    /// links it later changes its `last_use_seq`, so this is every
    /// repository that can still link it at planning time.
    pub linked_in: Vec<RepoName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub length: u64,
    pub crc32: u32,
}

/// Why a command's preconditions do not hold. Nothing was logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("manifest references blobs this repository does not have: {blobs:?}; manifests: {manifests:?}")]
    MissingReferences {
        blobs: Vec<Digest>,
        manifests: Vec<Digest>,
    },
    #[error("manifest unknown to this repository")]
    ManifestUnknown,
    #[error("tag unknown to this repository")]
    TagUnknown,
    #[error("blob unknown to this repository")]
    BlobUnknown,
    #[error("the blob to mount was not found")]
    MountSourceMissing,
    #[error("upload unknown")]
    UploadUnknown,
    #[error("upload belongs to another repository")]
    UploadRepoMismatch,
    #[error("chunk starts at {offset} but the upload has {size} bytes")]
    UploadOffset { offset: u64, size: u64 },
    #[error("upload id already in use")]
    UploadExists,
    #[error("part {number} stored where part {expected} was expected")]
    PartOutOfOrder { number: u32, expected: u32 },
}

/// An opaque hash of something a command reads or writes.
pub type Key = u64;

fn key(parts: impl Hash) -> Key {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn repo_of_upload<'a>(state: &'a State, upload: &UploadId) -> Option<&'a RepoName> {
    state.uploads.get(upload).map(|u| &u.repo)
}

impl Command {
    /// Everything this command reads or writes, given the current state.
    pub fn keys(&self, state: &State) -> Vec<Key> {
        match self {
            Command::PutManifest {
                repo,
                digest,
                blobs,
                manifests,
                subject,
                tags,
                ..
            } => {
                let mut k = vec![key(("m", repo, digest))];
                k.extend(tags.iter().map(|t| key(("t", repo, t))));
                k.extend(blobs.iter().map(|b| key(("b", repo, b))));
                k.extend(manifests.iter().map(|m| key(("m", repo, m))));
                k.extend(subject.iter().map(|s| key(("m", repo, s))));
                k
            }
            Command::FillManifest(put) => put.keys(state),
            Command::DeleteManifest { repo, digest } => {
                let mut k = vec![key(("m", repo, digest))];
                if let Some(r) = state.repo(repo) {
                    k.extend(
                        r.tags
                            .iter()
                            .filter(|(_, d)| *d == digest)
                            .map(|(t, _)| key(("t", repo, t))),
                    );
                    // The references it drops: a collection planned after
                    // it must see them gone.
                    k.extend(
                        r.manifests
                            .get(digest)
                            .into_iter()
                            .flat_map(|m| &m.blobs)
                            .map(|b| key(("B", b))),
                    );
                }
                k
            }
            Command::DeleteTag { repo, tag } => vec![key(("t", repo, tag))],
            Command::SetTag { repo, tag, digest } => {
                vec![key(("t", repo, tag)), key(("m", repo, digest))]
            }
            Command::LinkUploadedBlob { repo, digest, .. }
            | Command::UnlinkBlob { repo, digest } => {
                vec![key(("b", repo, digest)), key(("B", digest))]
            }
            Command::MountBlob { repo, digest, from } => {
                let mut k = vec![key(("b", repo, digest)), key(("B", digest))];
                k.extend(from.iter().map(|f| key(("b", f, digest))));
                k
            }
            Command::StartUpload { upload, .. }
            | Command::AppendChunk { upload, .. }
            | Command::CancelUpload { upload, .. }
            | Command::StartMultipart { upload, .. }
            | Command::AppendParts { upload, .. } => vec![key(("u", upload))],
            Command::AbortMultiparts { uploads } => uploads.iter().map(|u| key(("u", u))).collect(),
            Command::LinkUploadedObject {
                repo,
                digest,
                upload,
                ..
            } => vec![
                key(("b", repo, digest)),
                key(("B", digest)),
                key(("u", upload)),
            ],
            Command::CompleteUpload { upload, digest, .. }
            | Command::CompleteObjectUpload { upload, digest, .. } => {
                let mut k = vec![key(("u", upload)), key(("B", digest))];
                if let Some(repo) = repo_of_upload(state, upload) {
                    k.push(key(("b", repo, digest)));
                }
                k
            }
            Command::CollectBlobs { blobs, .. } => blobs
                .iter()
                .flat_map(|c| {
                    std::iter::once(key(("B", &c.digest)))
                        .chain(c.linked_in.iter().map(|r| key(("b", r, &c.digest))))
                })
                .collect(),
            Command::CollectManifests { repo, digests, .. } => {
                // A put that tags one of them, references one as a child
                // or names one as its subject holds its ("m", repo, d).
                let mut k: Vec<Key> = digests.iter().map(|d| key(("m", repo, d))).collect();
                // The references it drops, as for a manifest DELETE.
                if let Some(r) = state.repo(repo) {
                    k.extend(
                        digests
                            .iter()
                            .filter_map(|d| r.manifests.get(d))
                            .flat_map(|m| &m.blobs)
                            .map(|b| key(("B", b))),
                    );
                }
                k
            }
            // Reads and writes nothing the others touch.
            Command::RecordGcRun(_) | Command::RecordCursorMove { .. } => Vec::new(),
        }
    }

    /// Checks the preconditions against `state` and returns the events to
    /// log. An empty list means the command changes nothing (a repeated
    /// push): it succeeds without a record.
    pub fn plan(&self, state: &State) -> Result<Vec<Event>, Rejection> {
        match self {
            Command::PutManifest { .. } => plan_put_manifest(self, state, true),
            Command::FillManifest(put) => plan_put_manifest(put, state, false),
            Command::DeleteManifest { repo, digest } => {
                let r = state.repo(repo).ok_or(Rejection::ManifestUnknown)?;
                if !r.manifests.contains_key(digest) {
                    return Err(Rejection::ManifestUnknown);
                }
                let mut events: Vec<Event> = r
                    .tags
                    .iter()
                    .filter(|(_, d)| *d == digest)
                    .map(|(t, d)| Event::TagDeleted {
                        repo: repo.clone(),
                        tag: t.clone(),
                        digest: d.clone(),
                    })
                    .collect();
                events.push(Event::ManifestDeleted {
                    repo: repo.clone(),
                    digest: digest.clone(),
                });
                Ok(events)
            }
            Command::DeleteTag { repo, tag } => {
                let digest = state
                    .repo(repo)
                    .and_then(|r| r.tags.get(tag))
                    .ok_or(Rejection::TagUnknown)?;
                Ok(vec![Event::TagDeleted {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: digest.clone(),
                }])
            }
            Command::SetTag { repo, tag, digest } => {
                let r = state.repo(repo).ok_or(Rejection::ManifestUnknown)?;
                if !r.manifests.contains_key(digest) {
                    return Err(Rejection::ManifestUnknown);
                }
                let previous = r.tags.get(tag).cloned();
                if previous.as_ref() == Some(digest) {
                    return Ok(Vec::new());
                }
                Ok(vec![Event::TagSet {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: digest.clone(),
                    previous,
                }])
            }
            Command::LinkUploadedBlob { repo, digest, size } => {
                if state
                    .repo(repo)
                    .is_some_and(|r| r.blobs.contains_key(digest))
                {
                    return Ok(Vec::new());
                }
                Ok(vec![Event::BlobLinked {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    size: *size,
                    source: LinkSource::Upload { upload: None },
                }])
            }
            Command::MountBlob { repo, digest, from } => {
                let size = match from {
                    Some(f) => state.repo(f).and_then(|r| r.blobs.get(digest)),
                    None => state.blobs.get(digest),
                }
                .copied()
                .ok_or(Rejection::MountSourceMissing)?;
                if state
                    .repo(repo)
                    .is_some_and(|r| r.blobs.contains_key(digest))
                {
                    return Ok(Vec::new());
                }
                Ok(vec![Event::BlobLinked {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    size,
                    source: LinkSource::Mount { from: from.clone() },
                }])
            }
            Command::UnlinkBlob { repo, digest } => {
                if !state
                    .repo(repo)
                    .is_some_and(|r| r.blobs.contains_key(digest))
                {
                    return Err(Rejection::BlobUnknown);
                }
                Ok(vec![Event::BlobUnlinked {
                    repo: repo.clone(),
                    digest: digest.clone(),
                }])
            }
            Command::StartUpload { repo, upload } => {
                if state.uploads.contains_key(upload) {
                    return Err(Rejection::UploadExists);
                }
                Ok(vec![Event::UploadStarted {
                    repo: repo.clone(),
                    upload: upload.clone(),
                }])
            }
            Command::AppendChunk {
                upload,
                offset,
                length,
                crc32,
            } => {
                let u = state.uploads.get(upload).ok_or(Rejection::UploadUnknown)?;
                if u.size != *offset {
                    return Err(Rejection::UploadOffset {
                        offset: *offset,
                        size: u.size,
                    });
                }
                Ok(vec![Event::UploadChunk {
                    upload: upload.clone(),
                    offset: *offset,
                    length: *length,
                    crc32: *crc32,
                }])
            }
            Command::CompleteUpload {
                upload,
                digest,
                size,
                last_chunk,
            } => {
                let u = state.uploads.get(upload).ok_or(Rejection::UploadUnknown)?;
                let mut events = Vec::new();
                let mut acked = u.size;
                if let Some(c) = last_chunk {
                    if c.offset != acked {
                        return Err(Rejection::UploadOffset {
                            offset: c.offset,
                            size: acked,
                        });
                    }
                    if c.length > 0 {
                        events.push(Event::UploadChunk {
                            upload: upload.clone(),
                            offset: c.offset,
                            length: c.length,
                            crc32: c.crc32,
                        });
                    }
                    acked += c.length;
                }
                if acked != *size {
                    return Err(Rejection::UploadOffset {
                        offset: *size,
                        size: acked,
                    });
                }
                events.push(Event::UploadCompleted {
                    upload: upload.clone(),
                    digest: digest.clone(),
                    size: *size,
                });
                if !state
                    .repo(&u.repo)
                    .is_some_and(|r| r.blobs.contains_key(digest))
                {
                    events.push(Event::BlobLinked {
                        repo: u.repo.clone(),
                        digest: digest.clone(),
                        size: *size,
                        source: LinkSource::Upload {
                            upload: Some(upload.clone()),
                        },
                    });
                }
                Ok(events)
            }
            Command::CancelUpload { upload, reason } => {
                if !state.uploads.contains_key(upload) {
                    return Err(Rejection::UploadUnknown);
                }
                Ok(vec![Event::UploadCancelled {
                    upload: upload.clone(),
                    reason: *reason,
                }])
            }
            Command::CollectBlobs { mark_seq, blobs } => Ok(plan_collect(state, *mark_seq, blobs)),
            Command::CollectManifests {
                repo,
                put_seq_max,
                digests,
            } => Ok(plan_collect_manifests(state, repo, *put_seq_max, digests)),
            Command::StartMultipart {
                upload,
                key,
                multipart,
            } => Ok(vec![Event::MultipartStarted {
                upload: upload.clone(),
                key: key.clone(),
                multipart: multipart.clone(),
            }]),
            Command::AppendParts {
                upload,
                offset,
                length,
                crc32,
                parts,
            } => {
                let mut events = parts_events(state, upload, parts)?;
                events.extend(
                    Command::AppendChunk {
                        upload: upload.clone(),
                        offset: *offset,
                        length: *length,
                        crc32: *crc32,
                    }
                    .plan(state)?,
                );
                Ok(events)
            }
            Command::CompleteObjectUpload {
                upload,
                digest,
                size,
                last_chunk,
                parts,
                key,
            } => {
                let mut events = parts_events(state, upload, parts)?;
                events.extend(
                    Command::CompleteUpload {
                        upload: upload.clone(),
                        digest: digest.clone(),
                        size: *size,
                        last_chunk: *last_chunk,
                    }
                    .plan(state)?,
                );
                events.push(Event::BlobObjectStored {
                    digest: digest.clone(),
                    upload: upload.clone(),
                    key: key.clone(),
                });
                Ok(events)
            }
            Command::LinkUploadedObject {
                repo,
                digest,
                size,
                upload,
                key,
            } => {
                let mut events = Command::LinkUploadedBlob {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    size: *size,
                }
                .plan(state)?;
                events.push(Event::BlobObjectStored {
                    digest: digest.clone(),
                    upload: upload.clone(),
                    key: key.clone(),
                });
                Ok(events)
            }
            Command::AbortMultiparts { uploads } => Ok(uploads
                .iter()
                .filter(|u| state.objects.multiparts.contains_key(*u))
                .map(|u| Event::MultipartAborted { upload: u.clone() })
                .collect()),
            Command::RecordGcRun(run) => Ok(vec![Event::GcCompleted {
                mark_seq: run.mark_seq,
                manifests_deleted: run.manifests_deleted,
                blobs_deleted: run.blobs_deleted,
                bytes_freed: run.bytes_freed,
                orphans_removed: run.orphans_removed,
                orphan_bytes_freed: run.orphan_bytes_freed,
                duration_ms: run.duration_ms,
            }]),
            Command::RecordCursorMove {
                endpoint,
                from_seq,
                to_seq,
            } => Ok(vec![Event::NotificationCursorMoved {
                endpoint: endpoint.clone(),
                from_seq: *from_seq,
                to_seq: *to_seq,
            }]),
        }
    }
}

/// `PartStored` events for `parts`, which must continue the upload's open
/// multipart upload's parts.
fn parts_events(
    state: &State,
    upload: &UploadId,
    parts: &[StoredPart],
) -> Result<Vec<Event>, Rejection> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let open = state
        .objects
        .multiparts
        .get(upload)
        .ok_or(Rejection::UploadUnknown)?;
    let first = open.parts.len() as u32 + 1;
    let mut events = Vec::with_capacity(parts.len());
    for (expected, p) in (first..).zip(parts) {
        if p.number != expected {
            return Err(Rejection::PartOutOfOrder {
                number: p.number,
                expected,
            });
        }
        events.push(Event::PartStored {
            upload: upload.clone(),
            number: p.number,
            length: p.length,
            etag: p.etag.clone(),
        });
    }
    Ok(events)
}

/// Plans a [`Command::PutManifest`]; a mirror's fill
/// ([`Command::FillManifest`]) skips `check_references`.
fn plan_put_manifest(
    command: &Command,
    state: &State,
    check_references: bool,
) -> Result<Vec<Event>, Rejection> {
    let Command::PutManifest {
        repo,
        digest,
        media_type,
        body,
        blobs,
        manifests,
        subject,
        artifact_type,
        tags,
    } = command
    else {
        debug_assert!(false, "only a manifest put is planned here");
        return Ok(Vec::new());
    };
    let r = state.repo(repo);
    let has_blob = |d: &Digest| r.is_some_and(|r| r.blobs.contains_key(d));
    let has_manifest = |d: &Digest| r.is_some_and(|r| r.manifests.contains_key(d));
    let missing_blobs: Vec<Digest> = blobs.iter().filter(|d| !has_blob(d)).cloned().collect();
    let missing_manifests: Vec<Digest> = manifests
        .iter()
        .filter(|d| !has_manifest(d))
        .cloned()
        .collect();
    if check_references && (!missing_blobs.is_empty() || !missing_manifests.is_empty()) {
        return Err(Rejection::MissingReferences {
            blobs: missing_blobs,
            manifests: missing_manifests,
        });
    }
    let mut events = Vec::new();
    let existing = r.and_then(|r| r.manifests.get(digest));
    let unchanged = existing.is_some_and(|m| m.media_type == *media_type);
    if !unchanged {
        events.push(Event::ManifestPut {
            repo: repo.clone(),
            digest: digest.clone(),
            media_type: media_type.clone(),
            body: body.clone(),
            blobs: blobs.clone(),
            manifests: manifests.clone(),
            subject: subject.clone(),
            artifact_type: artifact_type.clone(),
        });
    }
    for tag in tags {
        let previous = r.and_then(|r| r.tags.get(tag)).cloned();
        if previous.as_ref() != Some(digest) {
            events.push(Event::TagSet {
                repo: repo.clone(),
                tag: tag.clone(),
                digest: digest.clone(),
                previous,
            });
        }
    }
    if let Some(subject) = subject {
        let registered = r
            .and_then(|r| r.referrers.get(subject))
            .is_some_and(|s| s.contains(digest));
        if !registered {
            events.push(Event::ReferrerRegistered {
                repo: repo.clone(),
                subject: subject.clone(),
                referrer: digest.clone(),
            });
        }
    }
    Ok(events)
}

/// The events that delete those of `blobs` still unused since `mark_seq`.
fn plan_collect(state: &State, mark_seq: u64, blobs: &[Collectable]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for c in blobs {
        if !seen.insert(&c.digest) {
            continue; // listed twice: planned once
        }
        let Some(&size) = state.blobs.get(&c.digest) else {
            continue; // already deleted
        };
        let Some(usage) = state.blob_use.get(&c.digest) else {
            continue; // the index covers every stored blob; keep it if not
        };
        if usage.manifest_refs > 0 || usage.last_use_seq > mark_seq {
            continue;
        }
        let linked: Vec<&RepoName> = c
            .linked_in
            .iter()
            .filter(|r| {
                state
                    .repo(r)
                    .is_some_and(|r| r.blobs.contains_key(&c.digest))
            })
            .collect();
        if linked.len() as u64 != u64::from(usage.links) {
            // Linked somewhere the mark did not see: not ours to judge.
            continue;
        }
        events.extend(linked.into_iter().map(|r| Event::BlobUnlinked {
            repo: r.clone(),
            digest: c.digest.clone(),
        }));
        events.push(Event::BlobDeleted {
            digest: c.digest.clone(),
            size,
        });
    }
    events
}

/// The events that delete those of `digests` that are still untagged, put
/// at or before `put_seq_max`, and unreachable from every manifest of
/// `repo` this command does not delete. Tagged manifests are never
/// deleted here, so the events are those of a manifest DELETE of an
/// untagged manifest: one `ManifestDeleted` each.
fn plan_collect_manifests(
    state: &State,
    repo: &RepoName,
    put_seq_max: u64,
    digests: &[Digest],
) -> Vec<Event> {
    let Some(r) = state.repo(repo) else {
        return Vec::new(); // the repository is gone, and its manifests with it
    };
    let listed: std::collections::HashSet<&Digest> = digests.iter().collect();
    // Everything not listed is a root, whatever its age: only a manifest
    // the mark chose can go, and only if nothing left behind needs it.
    let kept = r.reachable_manifests(|d, m| !listed.contains(d) || m.put_seq > put_seq_max);
    let mut seen = std::collections::HashSet::new();
    digests
        .iter()
        .filter(|d| seen.insert(*d))
        .filter(|d| r.manifests.contains_key(*d) && !kept.contains(d))
        .map(|d| {
            debug_assert!(
                !r.tags.values().any(|t| t == d),
                "a tagged manifest is kept"
            );
            Event::ManifestDeleted {
                repo: repo.clone(),
                digest: d.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::events::Entry;

    fn d(i: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{i:02x}").repeat(32))).unwrap()
    }

    fn put(
        repo: &RepoName,
        i: u8,
        children: &[u8],
        subject: Option<u8>,
        tag: Option<&str>,
    ) -> Command {
        Command::PutManifest {
            repo: repo.clone(),
            digest: d(i),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            body: Bytes::from(vec![i]),
            blobs: Vec::new(),
            manifests: children.iter().map(|c| d(*c)).collect(),
            subject: subject.map(d),
            artifact_type: None,
            tags: tag.map(|t| Tag::parse(t).unwrap()).into_iter().collect(),
        }
    }

    fn run(state: &mut State, command: &Command) -> Vec<Event> {
        let events = command.plan(state).unwrap();
        if !events.is_empty() {
            let entry = Entry {
                actor: crate::events::Actor::system(),
                events: events.clone(),
            };
            state.apply(state.last_seq + 1, state.last_seq + 1, &entry);
        }
        events
    }

    fn deleted(events: &[Event]) -> Vec<Digest> {
        events
            .iter()
            .map(|e| match e {
                Event::ManifestDeleted { digest, .. } => digest.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn collecting_manifests_rechecks_tags_puts_and_references() {
        let app = RepoName::parse("app").unwrap();
        let mut state = State::default();
        for i in 1..=4 {
            run(&mut state, &put(&app, i, &[], None, None));
        }
        let mark_seq = state.last_seq;
        let collect = Command::CollectManifests {
            repo: app.clone(),
            put_seq_max: mark_seq,
            digests: (1..=4).map(d).collect(),
        };
        // After the mark: 1 tagged, 2 becomes a child of a new index, 3
        // gets a referrer, 4 is left alone.
        run(
            &mut state,
            &Command::SetTag {
                repo: app.clone(),
                tag: Tag::parse("v1").unwrap(),
                digest: d(1),
            },
        );
        run(&mut state, &put(&app, 10, &[2], None, None));
        run(&mut state, &put(&app, 11, &[], Some(3), None));
        assert_eq!(deleted(&run(&mut state, &collect)), [d(4)]);
        assert!(state.repo(&app).unwrap().manifests.contains_key(&d(1)));
        // Planned again, nothing is left to delete.
        assert!(collect.plan(&state).unwrap().is_empty());
    }

    #[test]
    fn collecting_manifests_keeps_what_an_unlisted_or_newer_manifest_needs() {
        let app = RepoName::parse("app").unwrap();
        let mut state = State::default();
        run(&mut state, &put(&app, 2, &[], None, None));
        run(&mut state, &put(&app, 1, &[2], None, None));
        run(&mut state, &put(&app, 3, &[], None, None));
        run(&mut state, &put(&app, 4, &[], Some(3), None));
        let put_seq_max = state.last_seq;
        // 3 is re-put after the mark (a new media type logs a new put).
        let mut again = put(&app, 3, &[], None, None);
        if let Command::PutManifest { media_type, .. } = &mut again {
            *media_type = "application/vnd.oci.image.manifest.v1+json".into();
        }
        run(&mut state, &again);
        // The index 1 is not listed: its child 2 stays. 3 is newer than
        // the cutoff: its referrer 4 stays with it.
        let collect = Command::CollectManifests {
            repo: app.clone(),
            put_seq_max,
            digests: vec![d(2), d(3), d(4)],
        };
        assert!(collect.plan(&state).unwrap().is_empty());
        // Listed together, the index and its child both go.
        let collect = Command::CollectManifests {
            repo: app.clone(),
            put_seq_max,
            digests: vec![d(1), d(2), d(2)],
        };
        assert_eq!(deleted(&collect.plan(&state).unwrap()), [d(1), d(2)]);
    }
}
