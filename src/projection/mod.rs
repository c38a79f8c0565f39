//! The projection: the registry's current state, a pure fold over the log.
//!
//! `state = entries.fold(State::default(), apply)`. Same log, same state,
//! always: `apply` reads nothing but its arguments, and events are checked
//! by the writer (see `commands`) before they are logged, so `apply` never
//! fails. Readers hold the state's read lock only for a lookup.
//!
//! Memory: a digest is stored once however many places name it. `apply`
//! takes the copy the state already holds (a blob's from `State::blobs`, a
//! manifest's from its repository's `manifests`) rather than the event's,
//! so a tag costs its name and a shared pointer, and a manifest's blob
//! list points at the blobs' own digests. Decoding a state (a snapshot)
//! shares every equal digest as it reads them (`oci::share_decoded`).
//! Sharing is invisible to equality and to the snapshot bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::events::{Entry, Event, UploadId};
use crate::oci::{Digest, RepoName, Tag};

pub mod objects;
mod reach;
pub mod served;

pub use objects::{ObjectIndex, OpenMultipart, StoredPart};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct State {
    /// Sequence number of the last entry applied (0: none).
    pub last_seq: u64,
    /// Commit time of that entry.
    pub last_time_unix_ns: u64,
    /// Each repository behind an `Arc`, copied on write: a copy of the
    /// state (a snapshot's, a collection's mark) shares every repository
    /// until `apply` changes it, so it costs the map, not the contents.
    pub repos: BTreeMap<RepoName, Arc<Repo>>,
    /// Blobs whose bytes are in the store, with their sizes.
    pub blobs: BTreeMap<Digest, u64>,
    pub uploads: BTreeMap<UploadId, Upload>,
    /// Where blob bytes are in the object store, and its open multipart
    /// uploads (empty on the filesystem backend). Serialized after the
    /// rest, only when not empty (snapshot version 2, see
    /// `snapshot::format`), so a filesystem state's snapshot is unchanged.
    #[serde(skip)]
    pub objects: ObjectIndex,
    /// Derived from the fields above (never serialized, so the snapshot
    /// format does not change): how each blob is used, for garbage
    /// collection's re-check at planning time.
    #[serde(skip)]
    pub blob_use: BlobUseIndex,
}

/// The serialized fields of [`State`], in order: deserialization goes
/// through here, sharing equal digests as it reads them, so the derived
/// index is rebuilt once the state is read.
#[derive(Deserialize)]
struct StateFields {
    last_seq: u64,
    last_time_unix_ns: u64,
    repos: BTreeMap<RepoName, Arc<Repo>>,
    blobs: BTreeMap<Digest, u64>,
    uploads: BTreeMap<UploadId, Upload>,
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<State, D::Error> {
        crate::oci::share_decoded(|| StateFields::deserialize(d)).map(State::from)
    }
}

impl From<StateFields> for State {
    fn from(f: StateFields) -> State {
        let mut state = State {
            last_seq: f.last_seq,
            last_time_unix_ns: f.last_time_unix_ns,
            repos: f.repos,
            blobs: f.blobs,
            uploads: f.uploads,
            objects: ObjectIndex::default(),
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
///
/// A hash map with a fast non-cryptographic hasher, not a B-tree: nothing
/// iterates it in order, and rebuilding it after a snapshot load compared
/// digest strings in a B-tree some 20 times per insert (that rebuild and
/// its lookups were most of the time to start from a snapshot).
#[derive(Debug, Clone, Default)]
pub struct BlobUseIndex(pub HashMap<Digest, BlobUse, foldhash::fast::RandomState>);

impl PartialEq for BlobUseIndex {
    fn eq(&self, other: &Self) -> bool {
        let referenced = |m: &HashMap<Digest, BlobUse, foldhash::fast::RandomState>| {
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
        let u = self.0.entry(digest.clone()).or_default();
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
    /// Its GET/HEAD header values once read (derived; not in snapshots).
    #[serde(skip)]
    pub headers: served::HeadersCell,
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
                let blobs: Vec<Digest> = blobs.iter().map(|b| shared(&self.blobs, b)).collect();
                for b in &blobs {
                    self.blob_use.touch(b, seq).manifest_refs += 1;
                }
                let r = self.repo_mut(repo);
                let manifest = Manifest {
                    media_type: media_type.clone(),
                    body: body.clone(),
                    blobs,
                    manifests: manifests.iter().map(|m| shared(&r.manifests, m)).collect(),
                    subject: subject.as_ref().map(|s| shared(&r.manifests, s)),
                    artifact_type: artifact_type.clone(),
                    put_seq: seq,
                    headers: Default::default(),
                };
                // A replaced manifest keeps its key, which its tags share.
                let replaced = r.manifests.insert(digest.clone(), manifest);
                for b in replaced.iter().flat_map(|m| &m.blobs) {
                    self.blob_use.release(b);
                }
            }
            Event::TagSet {
                repo, tag, digest, ..
            } => {
                let r = self.repo_mut(repo);
                let digest = shared(&r.manifests, digest);
                r.tags.insert(tag.clone(), digest);
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
                let digest = &shared(&self.blobs, digest);
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
                self.objects.blobs.remove(digest);
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
                let r = self.repo_mut(repo);
                let subject = shared(&r.manifests, subject);
                let referrer = shared(&r.manifests, referrer);
                r.referrers.entry(subject).or_default().insert(referrer);
            }
            // On the record only: the run's deletions are their own events.
            Event::GcCompleted { .. } => {}
            // On the record only: the cursor itself lives in its own file.
            Event::NotificationCursorMoved { .. } => {}
            Event::MultipartStarted { .. }
            | Event::PartStored { .. }
            | Event::BlobObjectStored { .. }
            | Event::MultipartAborted { .. } => self.objects.apply(time_unix_ns, event),
        }
    }

    fn repo_mut(&mut self, name: &RepoName) -> &mut Repo {
        // Look up first: `entry` would clone the name on every event.
        if !self.repos.contains_key(name) {
            self.repos.insert(name.clone(), Arc::default());
        }
        Arc::make_mut(self.repos.get_mut(name).expect("inserted above"))
    }

    /// Edits a repository that may not exist, and removes it if the edit
    /// left it empty (the invariant on [`Repo`]).
    fn edit_repo(&mut self, name: &RepoName, edit: impl FnOnce(&mut Repo)) {
        if let Some(r) = self.repos.get_mut(name) {
            let r = Arc::make_mut(r);
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
        self.repos.get(name).map(|r| &**r)
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

/// The copy of `digest` that `map` holds as a key, else `digest`'s own:
/// how equal digests come to share one allocation.
fn shared<V>(map: &BTreeMap<Digest, V>, digest: &Digest) -> Digest {
    map.get_key_value(digest)
        .map_or_else(|| digest.clone(), |(k, _)| k.clone())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateSummary {
    pub repositories: u64,
    pub tags: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub uploads: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Actor, LinkSource};

    fn entry(events: Vec<Event>) -> Entry {
        Entry {
            actor: Actor::system(),
            events,
        }
    }

    /// A blob linked in two repositories, a manifest over it in one, two
    /// tags and a referrer: every copy of a digest is one allocation.
    fn sample() -> (State, Digest, Digest) {
        let repo = RepoName::parse("a/b").unwrap();
        let other = RepoName::parse("c").unwrap();
        let blob = Digest::sha256_of(b"layer");
        let manifest = Digest::sha256_of(b"manifest");
        let referrer = Digest::sha256_of(b"signature");
        let link = |repo: &RepoName| Event::BlobLinked {
            repo: repo.clone(),
            digest: Digest::parse(blob.as_str()).unwrap(),
            size: 5,
            source: LinkSource::Upload { upload: None },
        };
        let put = |digest: &Digest, subject: Option<&Digest>| Event::ManifestPut {
            repo: repo.clone(),
            digest: Digest::parse(digest.as_str()).unwrap(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: Bytes::from_static(b"{}"),
            blobs: vec![Digest::parse(blob.as_str()).unwrap()],
            manifests: vec![],
            subject: subject.map(|s| Digest::parse(s.as_str()).unwrap()),
            artifact_type: None,
        };
        let tag = |name: &str| Event::TagSet {
            repo: repo.clone(),
            tag: Tag::parse(name).unwrap(),
            digest: Digest::parse(manifest.as_str()).unwrap(),
            previous: None,
        };
        let mut state = State::default();
        let entries = [
            entry(vec![link(&repo)]),
            entry(vec![link(&other)]),
            entry(vec![put(&manifest, None), tag("latest")]),
            entry(vec![tag("v1")]),
            entry(vec![
                put(&referrer, Some(&manifest)),
                Event::ReferrerRegistered {
                    repo: repo.clone(),
                    subject: Digest::parse(manifest.as_str()).unwrap(),
                    referrer: Digest::parse(referrer.as_str()).unwrap(),
                },
            ]),
        ];
        for (i, e) in entries.iter().enumerate() {
            state.apply(i as u64 + 1, i as u64, e);
        }
        (state, blob, manifest)
    }

    fn assert_shared(state: &State, blob: &Digest, manifest: &Digest) {
        let (stored_blob, _) = state.blobs.get_key_value(blob).unwrap();
        let (used_blob, _) = state.blob_use.0.get_key_value(blob).unwrap();
        assert!(used_blob.shares_text_with(stored_blob));
        for r in state.repos.values() {
            let (linked, _) = r.blobs.get_key_value(blob).unwrap();
            assert!(linked.shares_text_with(stored_blob));
        }
        let r = state.repo(&RepoName::parse("a/b").unwrap()).unwrap();
        let (key, _) = r.manifests.get_key_value(manifest).unwrap();
        for m in r.manifests.values() {
            assert!(m.blobs[0].shares_text_with(stored_blob));
        }
        assert_eq!(r.tags.len(), 2);
        for d in r.tags.values() {
            assert!(d.shares_text_with(key));
        }
        let (subject, referrers) = r.referrers.iter().next().unwrap();
        assert!(subject.shares_text_with(key));
        let referrer = referrers.iter().next().unwrap();
        let (referrer_key, m) = r.manifests.get_key_value(referrer).unwrap();
        assert!(referrer.shares_text_with(referrer_key));
        assert!(m.subject.as_ref().unwrap().shares_text_with(key));
    }

    #[test]
    fn apply_shares_equal_digests() {
        let (state, blob, manifest) = sample();
        assert_shared(&state, &blob, &manifest);
    }

    #[test]
    fn a_snapshot_load_shares_them_too() {
        let (state, blob, manifest) = sample();
        let bytes = crate::snapshot::format::encode_state(&state).unwrap();
        let (loaded, _): (State, usize) =
            bincode::serde::decode_from_slice(&bytes, crate::log::format::PAYLOAD_CONFIG).unwrap();
        assert_eq!(loaded, state);
        assert_shared(&loaded, &blob, &manifest);
    }

    #[test]
    fn a_copy_shares_repositories_until_one_changes() {
        let (mut state, _, _) = sample();
        let copy = state.clone();
        let name = RepoName::parse("a/b").unwrap();
        let other = RepoName::parse("c").unwrap();
        assert!(Arc::ptr_eq(&state.repos[&name], &copy.repos[&name]));
        let untag = entry(vec![Event::TagDeleted {
            repo: name.clone(),
            tag: Tag::parse("v1").unwrap(),
            digest: Digest::sha256_of(b"manifest"),
        }]);
        state.apply(state.last_seq + 1, 9, &untag);
        assert!(!Arc::ptr_eq(&state.repos[&name], &copy.repos[&name]));
        assert!(Arc::ptr_eq(&state.repos[&other], &copy.repos[&other]));
        assert_eq!(state.repos[&name].tags.len(), 1);
        assert_eq!(copy.repos[&name].tags.len(), 2);
    }
}
