//! The projection: the registry's current state, a pure fold over the log.
//!
//! `state = entries.fold(State::default(), apply)`. Same log, same state,
//! always: `apply` reads nothing but its arguments, and events are checked
//! by the writer (see `commands`) before they are logged, so `apply` never
//! fails. Readers hold the state's read lock only for a lookup.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::events::{Entry, Event, UploadId};
use crate::oci::{Digest, RepoName, Tag};

mod reach;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateFields")]
pub struct State {
    /// Sequence number of the last entry applied (0: none).
    pub last_seq: u64,
    /// Commit time of that entry.
    pub last_time_unix_ns: u64,
    pub repos: BTreeMap<RepoName, Repo>,
    /// Blobs whose bytes are in the store, with their sizes.
    pub blobs: BTreeMap<Digest, u64>,
    pub uploads: BTreeMap<UploadId, Upload>,
    /// Derived from the fields above (never serialized, so the snapshot
    /// format does not change): how each blob is used, for garbage
    /// collection's re-check at planning time.
    #[serde(skip)]
    pub blob_use: BlobUseIndex,
}

/// The serialized fields of [`State`], in order: deserialization goes
/// through here so the derived index is rebuilt once the state is read.
#[derive(Deserialize)]
struct StateFields {
    last_seq: u64,
    last_time_unix_ns: u64,
    repos: BTreeMap<RepoName, Repo>,
    blobs: BTreeMap<Digest, u64>,
    uploads: BTreeMap<UploadId, Upload>,
}

impl From<StateFields> for State {
    fn from(f: StateFields) -> State {
        let mut state = State {
            last_seq: f.last_seq,
            last_time_unix_ns: f.last_time_unix_ns,
            repos: f.repos,
            blobs: f.blobs,
            uploads: f.uploads,
            blob_use: BlobUseIndex::default(),
        };
        state.rebuild_blob_use();
        state
    }
}

/// How one blob is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobUse {
    /// References from live manifests, in every repository (a manifest
    /// listing a blob twice counts twice).
    pub manifest_refs: u32,
    /// Repositories that link the blob.
    pub links: u32,
    /// The last entry that linked the blob or stored a manifest referencing
    /// it. After a snapshot load this is a lower bound (the put sequence of
    /// a live manifest, or 0): history before the snapshot is not kept,
    /// which is enough because a collection only asks about entries after
    /// its mark, and a mark is never older than the running state's start.
    pub last_use_seq: u64,
}

/// `Digest -> BlobUse` for every blob linked or referenced since it was
/// last deleted.
///
/// # Invariants
/// `manifest_refs` equals the number of references from the live
/// manifests of `State::repos`, and `links` the number of repositories
/// whose `blobs` hold the digest. Equality compares only those (the part
/// that is a function of the state), see [`BlobUse::last_use_seq`].
#[derive(Debug, Clone, Default)]
pub struct BlobUseIndex(pub BTreeMap<Digest, BlobUse>);

impl PartialEq for BlobUseIndex {
    fn eq(&self, other: &Self) -> bool {
        let referenced = |m: &BTreeMap<Digest, BlobUse>| {
            m.iter()
                .filter(|(_, u)| u.manifest_refs > 0 || u.links > 0)
                .map(|(d, u)| (d.clone(), (u.manifest_refs, u.links)))
                .collect::<BTreeMap<_, _>>()
        };
        referenced(&self.0) == referenced(&other.0)
    }
}

impl Eq for BlobUseIndex {}

impl BlobUseIndex {
    pub fn get(&self, digest: &Digest) -> Option<&BlobUse> {
        self.0.get(digest)
    }

    fn touch(&mut self, digest: &Digest, seq: u64) -> &mut BlobUse {
        if !self.0.contains_key(digest) {
            self.0.insert(digest.clone(), BlobUse::default());
        }
        let u = self.0.get_mut(digest).expect("inserted above");
        u.last_use_seq = u.last_use_seq.max(seq);
        u
    }

    fn release(&mut self, digest: &Digest) {
        if let Some(u) = self.0.get_mut(digest) {
            debug_assert!(u.manifest_refs > 0, "released more than referenced");
            u.manifest_refs = u.manifest_refs.saturating_sub(1);
        }
    }
}

/// # Invariants
/// A repository in `State::repos` is never empty: it has a tag, a manifest
/// or a linked blob (an empty one is removed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub tags: BTreeMap<Tag, Digest>,
    pub manifests: BTreeMap<Digest, Manifest>,
    /// Blobs linked into this repository, with their sizes.
    pub blobs: BTreeMap<Digest, u64>,
    /// Subject digest → manifests in this repository that refer to it.
    pub referrers: BTreeMap<Digest, BTreeSet<Digest>>,
}

impl Repo {
    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.manifests.is_empty() && self.blobs.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub media_type: String,
    #[serde(with = "crate::events::bytes_serde")]
    pub body: Bytes,
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    /// Sequence number of the entry that stored it.
    pub put_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub repo: RepoName,
    /// Bytes acknowledged so far (the next chunk's offset).
    pub size: u64,
    pub started_unix_ns: u64,
    pub updated_unix_ns: u64,
}

impl State {
    /// Applies one logged entry.
    ///
    /// # Panics (debug)
    /// If `seq` does not follow `last_seq`: the log guarantees continuity.
    pub fn apply(&mut self, seq: u64, time_unix_ns: u64, entry: &Entry) {
        debug_assert_eq!(seq, self.last_seq + 1, "entries apply in sequence");
        for event in &entry.events {
            self.apply_event(seq, time_unix_ns, event);
        }
        self.last_seq = seq;
        self.last_time_unix_ns = time_unix_ns;
    }

    fn apply_event(&mut self, seq: u64, time_unix_ns: u64, event: &Event) {
        match event {
            Event::ManifestPut {
                repo,
                digest,
                media_type,
                body,
                blobs,
                manifests,
                subject,
                artifact_type,
            } => {
                for b in blobs {
                    self.blob_use.touch(b, seq).manifest_refs += 1;
                }
                let replaced = self.repo_mut(repo).manifests.insert(
                    digest.clone(),
                    Manifest {
                        media_type: media_type.clone(),
                        body: body.clone(),
                        blobs: blobs.clone(),
                        manifests: manifests.clone(),
                        subject: subject.clone(),
                        artifact_type: artifact_type.clone(),
                        put_seq: seq,
                    },
                );
                for b in replaced.iter().flat_map(|m| &m.blobs) {
                    self.blob_use.release(b);
                }
            }
            Event::TagSet {
                repo, tag, digest, ..
            } => {
                self.repo_mut(repo).tags.insert(tag.clone(), digest.clone());
            }
            Event::TagDeleted { repo, tag, .. } => {
                self.edit_repo(repo, |r| {
                    r.tags.remove(tag);
                });
            }
            Event::ManifestDeleted { repo, digest } => {
                let mut removed = None;
                self.edit_repo(repo, |r| {
                    if let Some(m) = r.manifests.remove(digest) {
                        if let Some(subject) = &m.subject {
                            if let Some(set) = r.referrers.get_mut(subject) {
                                set.remove(digest);
                                if set.is_empty() {
                                    r.referrers.remove(subject);
                                }
                            }
                        }
                        removed = Some(m);
                    }
                });
                for b in removed.iter().flat_map(|m| &m.blobs) {
                    self.blob_use.release(b);
                }
            }
            Event::BlobLinked {
                repo, digest, size, ..
            } => {
                let newly = self
                    .repo_mut(repo)
                    .blobs
                    .insert(digest.clone(), *size)
                    .is_none();
                self.blobs.insert(digest.clone(), *size);
                let u = self.blob_use.touch(digest, seq);
                if newly {
                    u.links += 1;
                }
            }
            Event::BlobUnlinked { repo, digest } => {
                let mut unlinked = false;
                self.edit_repo(repo, |r| {
                    unlinked = r.blobs.remove(digest).is_some();
                });
                if unlinked {
                    if let Some(u) = self.blob_use.0.get_mut(digest) {
                        u.links = u.links.saturating_sub(1);
                    }
                }
            }
            Event::BlobDeleted { digest, .. } => {
                // The writer logs this only once no repository links the
                // blob (their `BlobUnlinked` events come first).
                debug_assert!(
                    self.repos.values().all(|r| !r.blobs.contains_key(digest)),
                    "a deleted blob is linked nowhere"
                );
                self.blobs.remove(digest);
                let unused = self.blob_use.0.remove(digest);
                debug_assert!(
                    unused.is_none_or(|u| u.manifest_refs == 0),
                    "a deleted blob is referenced by no live manifest"
                );
            }
            Event::UploadStarted { repo, upload } => {
                self.uploads.insert(
                    upload.clone(),
                    Upload {
                        repo: repo.clone(),
                        size: 0,
                        started_unix_ns: time_unix_ns,
                        updated_unix_ns: time_unix_ns,
                    },
                );
            }
            Event::UploadChunk {
                upload,
                offset,
                length,
                ..
            } => {
                if let Some(u) = self.uploads.get_mut(upload) {
                    debug_assert_eq!(u.size, *offset);
                    u.size = offset + length;
                    u.updated_unix_ns = time_unix_ns;
                }
            }
            Event::UploadCompleted { upload, .. } | Event::UploadCancelled { upload, .. } => {
                self.uploads.remove(upload);
            }
            Event::ReferrerRegistered {
                repo,
                subject,
                referrer,
            } => {
                self.repo_mut(repo)
                    .referrers
                    .entry(subject.clone())
                    .or_default()
                    .insert(referrer.clone());
            }
            // On the record only: the run's deletions are their own events.
            Event::GcCompleted { .. } => {}
        }
    }

    fn repo_mut(&mut self, name: &RepoName) -> &mut Repo {
        // Look up first: `entry` would clone the name on every event.
        if !self.repos.contains_key(name) {
            self.repos.insert(name.clone(), Repo::default());
        }
        self.repos.get_mut(name).expect("inserted above")
    }

    /// Edits a repository that may not exist, and removes it if the edit
    /// left it empty (the invariant on [`Repo`]).
    fn edit_repo(&mut self, name: &RepoName, edit: impl FnOnce(&mut Repo)) {
        if let Some(r) = self.repos.get_mut(name) {
            edit(r);
            if r.is_empty() {
                self.repos.remove(name);
            }
        }
    }

    /// Recomputes [`State::blob_use`] from the repositories (after a
    /// snapshot load).
    pub fn rebuild_blob_use(&mut self) {
        let mut index = BlobUseIndex::default();
        for digest in self.blobs.keys() {
            index.touch(digest, 0);
        }
        for r in self.repos.values() {
            for digest in r.blobs.keys() {
                index.touch(digest, 0).links += 1;
            }
            for m in r.manifests.values() {
                for b in &m.blobs {
                    index.touch(b, m.put_seq).manifest_refs += 1;
                }
            }
        }
        self.blob_use = index;
    }

    pub fn repo(&self, name: &RepoName) -> Option<&Repo> {
        self.repos.get(name)
    }

    /// Counts for logs and metrics.
    pub fn summary(&self) -> StateSummary {
        let mut s = StateSummary {
            repositories: self.repos.len() as u64,
            blobs: self.blobs.len() as u64,
            uploads: self.uploads.len() as u64,
            ..StateSummary::default()
        };
        for r in self.repos.values() {
            s.tags += r.tags.len() as u64;
            s.manifests += r.manifests.len() as u64;
        }
        s
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateSummary {
    pub repositories: u64,
    pub tags: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub uploads: u64,
}
