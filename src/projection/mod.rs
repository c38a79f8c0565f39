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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last entry applied (0: none).
    pub last_seq: u64,
    /// Commit time of that entry.
    pub last_time_unix_ns: u64,
    pub repos: BTreeMap<RepoName, Repo>,
    /// Blobs whose bytes are in the store, with their sizes.
    pub blobs: BTreeMap<Digest, u64>,
    pub uploads: BTreeMap<UploadId, Upload>,
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
                self.repo_mut(repo).manifests.insert(
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
                self.edit_repo(repo, |r| {
                    if let Some(m) = r.manifests.remove(digest) {
                        if let Some(subject) = m.subject {
                            if let Some(set) = r.referrers.get_mut(&subject) {
                                set.remove(digest);
                                if set.is_empty() {
                                    r.referrers.remove(&subject);
                                }
                            }
                        }
                    }
                });
            }
            Event::BlobLinked {
                repo, digest, size, ..
            } => {
                self.repo_mut(repo).blobs.insert(digest.clone(), *size);
                self.blobs.insert(digest.clone(), *size);
            }
            Event::BlobUnlinked { repo, digest } => {
                self.edit_repo(repo, |r| {
                    r.blobs.remove(digest);
                });
            }
            Event::BlobDeleted { digest, .. } => {
                // The writer logs this only once no repository links the
                // blob (their `BlobUnlinked` events come first).
                debug_assert!(
                    self.repos.values().all(|r| !r.blobs.contains_key(digest)),
                    "a deleted blob is linked nowhere"
                );
                self.blobs.remove(digest);
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
