//! A mirror's size cap (`max_bytes`): once the blobs linked under its
//! prefix add up to more, the least recently pulled manifest goes, as a
//! unit with the blobs only it references in its repository, through the
//! log like a client's DELETE (its tags as `TagDeleted`, then the
//! manifest, then each blob's link). A blob another manifest of the
//! repository references stays linked; one linked in another repository
//! (another mirror's, or a pushed image's) keeps its bytes there. The
//! bytes of blobs no repository links any more are freed by the next
//! garbage collection, like those of any deleted image.
//!
//! The most recently pulled manifest is never evicted, so an image larger
//! than the cap can still be pulled once.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{Mirror, MirrorError, CACHED_BYTES, EVICTIONS};
use crate::commands::{Command, Rejection};
use crate::events::Actor;
use crate::log::SubmitError;
use crate::oci::{Digest, RepoName};
use crate::projection::State;

/// What one look at the state found under a mirror's prefix.
struct Survey {
    cached_bytes: u64,
    /// (repository, manifest, put sequence number).
    manifests: Vec<(RepoName, Digest, u64)>,
    /// Blobs linked in a repository that no manifest of it references.
    unreferenced: Vec<(RepoName, Digest)>,
}

fn survey(state: &State, prefix: &str) -> Survey {
    let mut seen = HashSet::new();
    let mut s = Survey {
        cached_bytes: 0,
        manifests: Vec::new(),
        unreferenced: Vec::new(),
    };
    for (name, repo) in state
        .repos
        .iter()
        .filter(|(n, _)| n.as_str().starts_with(prefix))
    {
        let referenced: HashSet<&Digest> = repo.manifests.values().flat_map(|m| &m.blobs).collect();
        for (digest, size) in &repo.blobs {
            if seen.insert(digest.clone()) {
                s.cached_bytes += size;
            }
            if !referenced.contains(digest) {
                s.unreferenced.push((name.clone(), digest.clone()));
            }
        }
        for (digest, m) in &repo.manifests {
            s.manifests.push((name.clone(), digest.clone(), m.put_seq));
        }
    }
    s
}

impl Mirror {
    /// Runs an eviction pass in the background when the mirror has a cap.
    pub fn evict_soon(self: &Arc<Self>) {
        if self.config.max_bytes == 0 {
            return;
        }
        let mirror = self.clone();
        tokio::spawn(async move {
            if let Err(e) = mirror.evict().await {
                tracing::warn!(prefix = %mirror.config.prefix, error = %e, "mirror eviction failed");
            }
        });
    }

    /// Evicts until the cached bytes are within `max_bytes` (or only the
    /// most recently pulled manifest is left). The manifests evicted.
    pub async fn evict(&self) -> Result<u64, MirrorError> {
        let _one_at_a_time = self.evicting.lock().await;
        let actor = Actor {
            user: Some(format!("mirror-eviction:{}", self.config.prefix)),
            peer: None,
        };
        let mut evicted = 0;
        loop {
            let s = survey(&self.registry.state.read(), &self.config.prefix);
            metrics::gauge!(CACHED_BYTES, "prefix" => self.config.prefix.clone())
                .set(s.cached_bytes as f64);
            if self.config.max_bytes == 0 || s.cached_bytes <= self.config.max_bytes {
                return Ok(evicted);
            }
            // Blobs no manifest needs go first: nothing breaks.
            if !s.unreferenced.is_empty() {
                for (repo, digest) in s.unreferenced {
                    self.submit_ignoring_gone(&actor, Command::UnlinkBlob { repo, digest })
                        .await?;
                }
                continue;
            }
            let victim = {
                let pulled = self.last_pulled.lock();
                let age = |repo: &RepoName, d: &Digest, put_seq: u64| {
                    (
                        pulled.get(&(repo.clone(), d.clone())).copied().unwrap_or(0),
                        put_seq,
                    )
                };
                let newest = s.manifests.iter().map(|(r, d, p)| age(r, d, *p)).max();
                s.manifests
                    .iter()
                    .filter(|(r, d, p)| Some(age(r, d, *p)) != newest)
                    .min_by_key(|(r, d, p)| age(r, d, *p))
                    .cloned()
            };
            let Some((repo, digest, _)) = victim else {
                return Ok(evicted);
            };
            let unlink: Vec<Digest> = {
                let state = self.registry.state.read();
                let Some(r) = state.repo(&repo) else { continue };
                let others: BTreeSet<&Digest> = r
                    .manifests
                    .iter()
                    .filter(|(d, _)| **d != digest)
                    .flat_map(|(_, m)| &m.blobs)
                    .collect();
                r.manifests
                    .get(&digest)
                    .map(|m| {
                        m.blobs
                            .iter()
                            .filter(|b| !others.contains(b) && r.blobs.contains_key(*b))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            };
            tracing::info!(%repo, %digest, blobs = unlink.len(), "evicting a cached manifest");
            self.submit_ignoring_gone(
                &actor,
                Command::DeleteManifest {
                    repo: repo.clone(),
                    digest: digest.clone(),
                },
            )
            .await?;
            for b in unlink {
                self.submit_ignoring_gone(
                    &actor,
                    Command::UnlinkBlob {
                        repo: repo.clone(),
                        digest: b,
                    },
                )
                .await?;
            }
            self.last_pulled.lock().remove(&(repo, digest));
            metrics::counter!(EVICTIONS, "prefix" => self.config.prefix.clone()).increment(1);
            evicted += 1;
        }
    }

    /// Submits a delete; one whose target is already gone is done.
    async fn submit_ignoring_gone(&self, actor: &Actor, c: Command) -> Result<(), MirrorError> {
        match self.registry.writer.submit(actor.clone(), c).await {
            Ok(_)
            | Err(SubmitError::Rejected(
                Rejection::ManifestUnknown | Rejection::BlobUnknown | Rejection::TagUnknown,
            )) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
