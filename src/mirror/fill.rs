//! Blobs fetched from an upstream on demand, once however many pull them
//! at the same time (single flight, by digest): one task streams the
//! upstream's answer into a one-shot staging file beside the blob's final
//! name, hashing as it writes, and publishes how far it got; every puller
//! reads the staging file up to there, so no client waits for the whole
//! layer. The last byte is held back until the digest is verified.
//!
//! Only a whole, verified blob is committed (fsynced, renamed into the
//! store) and linked through the log. A fill killed half way leaves a
//! staging file that no event names, removed at the next start or by
//! garbage collection: nothing half-cached is ever served.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::client::UpstreamError;
use super::{Mirror, MirrorError, FETCHES};
use crate::blobs::{new_upload_id, IO_BUFFER_BYTES};
use crate::commands::Command;
use crate::events::Actor;
use crate::oci::{Digest, RepoName};

/// How far a fill got.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The blob's size, once the upstream answered.
    pub size: Option<u64>,
    /// The staging file, once created (renamed into the store when done).
    pub staging: Option<PathBuf>,
    /// Bytes written to the staging file so far.
    pub written: u64,
    /// Set once the fill ended.
    pub outcome: Option<Outcome>,
}

/// How a fill ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Committed and linked.
    Done,
    /// Every upstream said 404.
    NotFound,
    /// No upstream gave the blob.
    Failed(UpstreamError),
    /// The bytes arrived but could not be stored.
    Store(String),
}

impl Outcome {
    fn into_error(self) -> Option<MirrorError> {
        match self {
            Outcome::Done => None,
            Outcome::NotFound => Some(MirrorError::NotFound),
            Outcome::Failed(e) => Some(MirrorError::Upstream(e)),
            Outcome::Store(e) => Some(MirrorError::Store(e)),
        }
    }
}

/// A fill in flight: its progress, and the repositories that asked for
/// the blob (each is linked once it is committed).
struct InFlight {
    progress: watch::Receiver<Progress>,
    repos: Arc<Mutex<Option<Vec<RepoName>>>>,
}

/// The fills in flight, by digest.
#[derive(Default)]
pub struct Fills {
    in_flight: Mutex<HashMap<Digest, InFlight>>,
}

/// What a blob pull under a mirror gets.
pub enum BlobAnswer {
    /// The repository has the blob: serve it as any other.
    Cached,
    /// Being fetched: stream it from the staging file.
    Filling(FillReader),
}

/// One puller's view of a fill.
pub struct FillReader {
    pub size: u64,
    progress: watch::Receiver<Progress>,
    blob_path: PathBuf,
}

impl Mirror {
    /// Makes `repo` able to serve blob `digest` (`upstream_repo` upstream):
    /// linked already, linked from another repository that has it, or
    /// fetched (joining a fill in flight for the same digest). Returns
    /// once the blob's size is known.
    pub async fn blob(
        self: &Arc<Self>,
        repo: &RepoName,
        upstream_repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer, MirrorError> {
        loop {
            if self.link_if_stored(repo, digest).await? {
                return Ok(BlobAnswer::Cached);
            }
            let mut progress = self.join_or_start(repo, upstream_repo, digest);
            let size = loop {
                let p = progress.borrow_and_update().clone();
                if let Some(outcome) = p.outcome {
                    match outcome.into_error() {
                        Some(e) => return Err(e),
                        // Done before we could read it: linked into the
                        // repositories that asked; take it from the store.
                        None => break None,
                    }
                }
                if let (Some(size), Some(_)) = (p.size, &p.staging) {
                    break Some(size);
                }
                if progress.changed().await.is_err() {
                    return Err(MirrorError::Store(
                        "the fill ended without an outcome".into(),
                    ));
                }
            };
            let Some(size) = size else { continue };
            return Ok(BlobAnswer::Filling(FillReader {
                size,
                progress,
                blob_path: self.registry.store.blob_path(digest),
            }));
        }
    }

    /// Links a blob the store has (from another repository) into `repo`,
    /// without asking upstream: the digest says it is the same bytes.
    async fn link_if_stored(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MirrorError> {
        let (linked, stored) = {
            let state = self.registry.state.read();
            (
                state
                    .repo(repo)
                    .is_some_and(|r| r.blobs.contains_key(digest)),
                state.blobs.contains_key(digest),
            )
        };
        if linked {
            return Ok(true);
        }
        if !stored {
            return Ok(false);
        }
        let actor = Actor {
            user: Some(format!("mirror:{}", self.config.prefix)),
            peer: None,
        };
        let mount = Command::MountBlob {
            repo: repo.clone(),
            digest: digest.clone(),
            from: None,
        };
        match self.registry.writer.submit(actor, mount).await {
            Ok(_) => Ok(true),
            // Collected in between: fetch it again.
            Err(crate::log::SubmitError::Rejected(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn join_or_start(
        self: &Arc<Self>,
        repo: &RepoName,
        upstream_repo: &RepoName,
        digest: &Digest,
    ) -> watch::Receiver<Progress> {
        let mut in_flight = self.fills.in_flight.lock();
        if let Some(f) = in_flight.get(digest) {
            if let Some(repos) = f.repos.lock().as_mut() {
                if !repos.contains(repo) {
                    repos.push(repo.clone());
                }
            }
            return f.progress.clone();
        }
        let (tx, rx) = watch::channel(Progress::default());
        let repos = Arc::new(Mutex::new(Some(vec![repo.clone()])));
        in_flight.insert(
            digest.clone(),
            InFlight {
                progress: rx.clone(),
                repos: repos.clone(),
            },
        );
        let mirror = self.clone();
        let (upstream_repo, digest) = (upstream_repo.clone(), digest.clone());
        // Its own task: a puller that goes away does not stop the fill.
        tokio::spawn(async move {
            let outcome = mirror.fill(&upstream_repo, &digest, &tx, &repos).await;
            mirror.fills.in_flight.lock().remove(&digest);
            let done = matches!(outcome, Outcome::Done);
            tx.send_modify(|p| p.outcome = Some(outcome));
            if done {
                mirror.evict_soon();
            }
        });
        rx
    }

    /// Fetches, writes, verifies, commits and links one blob.
    async fn fill(
        &self,
        upstream_repo: &RepoName,
        digest: &Digest,
        tx: &watch::Sender<Progress>,
        repos: &Mutex<Option<Vec<RepoName>>>,
    ) -> Outcome {
        let mut last = None;
        let mut found = None;
        for upstream in &self.upstreams {
            metrics::counter!(FETCHES, "kind" => "blob").increment(1);
            match upstream.get_blob(upstream_repo, digest).await {
                Ok(Some(answer)) => {
                    found = Some((upstream, answer));
                    break;
                }
                Ok(None) => return Outcome::NotFound,
                Err(e) => {
                    self.note_failure(&e, "blob_get");
                    if !e.is_transient() {
                        return Outcome::Failed(e);
                    }
                    last = Some(e);
                }
            }
        }
        let Some((upstream, mut answer)) = found else {
            return last.map_or(Outcome::NotFound, Outcome::Failed);
        };
        let invalid = |reason: String| {
            Outcome::Failed(UpstreamError::Invalid {
                upstream: upstream.url().to_owned(),
                reason,
            })
        };
        let Some(size) = answer.content_length() else {
            return invalid(format!("blob {digest} came without a Content-Length"));
        };
        let store = self.registry.store.clone();
        let staging = store.one_shot_staging_path(digest, &new_upload_id());
        let path = staging.to_path_buf();
        let opened = {
            let (store, path) = (store.clone(), path.clone());
            tokio::task::spawn_blocking(move || store.open_one_shot_staging(&path)).await
        };
        let writer = match opened {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Outcome::Store(format!("cannot create a staging file: {e}")),
            Err(e) => return Outcome::Store(e.to_string()),
        };
        tx.send_modify(|p| {
            p.size = Some(size);
            p.staging = Some(path.clone());
        });
        // Moved to the blocking pool for each write and back.
        let mut sink = Some((writer, digest.algorithm().hasher()));
        let mut written = 0u64;
        let mut buffer: Vec<u8> = Vec::with_capacity(IO_BUFFER_BYTES);
        let failure = loop {
            let chunk = match answer.chunk().await {
                Ok(c) => c,
                Err(e) => {
                    let e = UpstreamError::Unreachable {
                        upstream: upstream.url().to_owned(),
                        reason: format!(
                            "blob body cut after {written} bytes: {}",
                            super::client::error_chain(&e)
                        ),
                    };
                    self.note_failure(&e, "blob_get");
                    break Some(Outcome::Failed(e));
                }
            };
            let end = chunk.is_none();
            if let Some(c) = &chunk {
                if written + (buffer.len() + c.len()) as u64 > size {
                    break Some(invalid(format!(
                        "blob {digest} is longer than its {size} bytes"
                    )));
                }
                buffer.extend_from_slice(c);
            }
            if buffer.len() >= IO_BUFFER_BYTES || (end && !buffer.is_empty()) {
                let bytes = std::mem::take(&mut buffer);
                let Some((mut writer, mut hasher)) = sink.take() else {
                    break Some(Outcome::Store("the staging file was lost".into()));
                };
                let moved = tokio::task::spawn_blocking(move || {
                    hasher.update(&bytes);
                    let r = writer.write(&bytes);
                    (writer, hasher, r, bytes.len() as u64)
                })
                .await;
                let (w, h, r, n) = match moved {
                    Ok(m) => m,
                    Err(e) => break Some(Outcome::Store(e.to_string())),
                };
                sink = Some((w, h));
                if let Err(e) = r {
                    break Some(Outcome::Store(format!("staging file: {e}")));
                }
                buffer = Vec::with_capacity(IO_BUFFER_BYTES);
                written += n;
                tx.send_modify(|p| p.written = written);
            }
            if end {
                break None;
            }
        };
        let (writer, hasher) = match (failure, sink) {
            (None, Some(sink)) => sink,
            (failure, sink) => {
                drop(sink);
                let _ = tokio::task::spawn_blocking(move || store.remove_staging(&path)).await;
                drop(staging);
                return failure
                    .unwrap_or_else(|| Outcome::Store("the staging file was lost".into()));
            }
        };
        let computed = hasher.finish();
        if written != size || computed != *digest {
            drop(writer);
            let _ = tokio::task::spawn_blocking({
                let (store, path) = (store.clone(), path.clone());
                move || store.remove_staging(&path)
            })
            .await;
            return invalid(format!(
                "blob {digest}: received {written} of {size} bytes with digest {computed}"
            ));
        }
        // The digest's lock from before the file is in the store until it
        // is linked: garbage collection cannot take it in between.
        let _guard = store.locks().lock([digest]).await;
        let committed = {
            let (store, digest) = (store.clone(), digest.clone());
            tokio::task::spawn_blocking(move || store.commit_staging(writer, &digest)).await
        };
        drop(staging);
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Outcome::Store(format!("cannot commit the blob: {e}")),
            Err(e) => return Outcome::Store(e.to_string()),
        }
        // Later joiners find the blob stored and link it themselves.
        let linked = repos.lock().take().unwrap_or_default();
        for repo in linked {
            let link = Command::LinkUploadedBlob {
                repo,
                digest: digest.clone(),
                size,
            };
            if let Err(e) = self
                .registry
                .writer
                .submit(Mirror::actor(upstream), link)
                .await
            {
                return Outcome::Store(format!("cannot log the blob: {e}"));
            }
        }
        Outcome::Done
    }
}

/// Largest piece read from the staging file at once.
const READ_PIECE_BYTES: u64 = IO_BUFFER_BYTES as u64;

impl FillReader {
    /// The blob's bytes as the fill writes them; an error if the fill
    /// fails (the client's connection is then cut short).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
        struct Reading {
            reader: FillReader,
            file: Option<Arc<std::fs::File>>,
            pos: u64,
        }
        let start = Reading {
            reader: self,
            file: None,
            pos: 0,
        };
        futures_util::stream::unfold(Some(start), |state| async move {
            let mut s = state?;
            loop {
                let size = s.reader.size;
                if s.pos >= size {
                    return None;
                }
                let p = s.reader.progress.borrow_and_update().clone();
                let done = matches!(p.outcome, Some(Outcome::Done));
                // The last byte waits for the digest's check.
                let readable = if done { size } else { p.written.min(size - 1) };
                if s.pos < readable {
                    if s.file.is_none() {
                        match open_either(p.staging.as_ref(), &s.reader.blob_path) {
                            Ok(f) => s.file = Some(Arc::new(f)),
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                    let file = s.file.clone()?;
                    let (pos, len) = (s.pos, (readable - s.pos).min(READ_PIECE_BYTES));
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len as usize];
                        file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                    })
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
                    return match read {
                        Ok(bytes) => {
                            s.pos += bytes.len() as u64;
                            Some((Ok(bytes), Some(s)))
                        }
                        Err(e) => Some((Err(e), None)),
                    };
                }
                if let Some(outcome) = p.outcome {
                    if let Some(e) = outcome.into_error() {
                        return Some((Err(io::Error::other(e.to_string())), None));
                    }
                }
                if s.reader.progress.changed().await.is_err() {
                    return Some((Err(io::Error::other("the fill ended")), None));
                }
            }
        })
    }
}

/// The staging file, or the blob it became once committed.
fn open_either(staging: Option<&PathBuf>, blob: &std::path::Path) -> io::Result<std::fs::File> {
    if let Some(s) = staging {
        match std::fs::File::open(s) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
    }
    std::fs::File::open(blob)
}
