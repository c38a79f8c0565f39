//! Pull-through caches of other registries (`[[mirrors]]`): a pull under a
//! mirror's prefix that the state cannot answer, or of a tag last checked
//! more than `tag_ttl` ago, asks the upstreams; what they send is checked
//! against its digest and committed through the log like a push, with the
//! upstream as actor, so history, reads as of a point, the event feed and
//! notifications cover mirrored images like any other.
//!
//! - `config`: the settings and their checks;
//! - `client`: one upstream registry (token flow, Basic, manifests, blobs);
//! - `fill`: blobs fetched once however many pull them at the same time,
//!   streamed to every puller while they are written and hashed, linked
//!   only once whole and verified;
//! - `evict`: the size cap, least recently pulled manifests first;
//! - `prefetch`: an image pulled through a running server's mirror
//!   (`ferroctl mirror sync`);
//! - `sync`: the schedule that keeps a list of repositories' tags (glob
//!   or version range) cached, in process.
//!
//! This module decides what to fetch and commits it; `api::mirror` turns
//! its answers into HTTP. When every upstream fails (no answer, 5xx, 429)
//! what is cached is served, however old (a warning and
//! `ferro_mirror_stale_served_total`); an upstream error is never cached.
//!
//! Boundary: everything reaches the log as a [`Command`], through the
//! writer, like a client's push.

pub mod client;
pub mod config;
pub mod evict;
pub mod fill;
pub mod prefetch;
pub mod sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::blobs::BlobStore;
use crate::commands::Command;
use crate::events::Actor;
use crate::log::{LogWriter, SubmitError};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::projection::State;
use client::{FetchedManifest, Upstream, UpstreamError};
use config::MirrorConfig;

/// Upstream content requests (manifest and blob GETs), by kind.
pub const FETCHES: &str = "ferro_mirror_fetches_total";
/// Upstream requests that failed, by kind of failure.
pub const UPSTREAM_FAILURES: &str = "ferro_mirror_upstream_failures_total";
/// Pulls answered from the cache because every upstream failed.
pub const STALE_SERVED: &str = "ferro_mirror_stale_served_total";
/// Manifests evicted under a mirror's `max_bytes`.
pub const EVICTIONS: &str = "ferro_mirror_evictions_total";
/// Bytes of blobs linked under a mirror's prefix, at its last check.
pub const CACHED_BYTES: &str = "ferro_mirror_cached_bytes";

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(FETCHES, "Manifest and blob GETs sent to upstreams");
    describe_counter!(
        UPSTREAM_FAILURES,
        "Upstream requests without a usable answer (unreachable, 429, 5xx, bad content)"
    );
    describe_counter!(
        STALE_SERVED,
        "Mirror pulls answered from the cache because every upstream failed"
    );
    describe_counter!(EVICTIONS, "Cached manifests evicted under max_bytes");
    describe_gauge!(
        CACHED_BYTES,
        "Bytes of blobs cached under a mirror's prefix"
    );
    sync::describe_metrics();
}

/// What the mirrors need of the registry: the log, the state and the
/// blob store.
#[derive(Clone)]
pub struct Registry {
    pub writer: LogWriter,
    pub state: Arc<RwLock<State>>,
    pub store: BlobStore,
    /// `limits.manifest_bytes_max`: the largest manifest fetched.
    pub manifest_bytes_max: u64,
}

/// Why a pull through a mirror has no answer.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The upstreams have no such manifest or blob (404 everywhere).
    #[error("not found upstream")]
    NotFound,
    /// No upstream gave a usable answer and nothing is cached.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// What arrived could not be stored.
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Log(#[from] SubmitError),
}

/// Every configured mirror.
#[derive(Default)]
pub struct Mirrors {
    mirrors: Vec<Arc<Mirror>>,
}

impl Mirrors {
    pub fn new(configs: &[MirrorConfig], registry: &Registry) -> Result<Mirrors, String> {
        let mirrors = configs
            .iter()
            .map(|c| Mirror::new(c, registry.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mirrors { mirrors })
    }

    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty()
    }

    /// The mirror whose prefix `repo` is under, and the repository's name
    /// upstream. A name that is only the prefix (`hub`) is under none.
    pub fn find(&self, repo: &RepoName) -> Option<(&Arc<Mirror>, RepoName)> {
        self.mirrors.iter().find_map(|m| {
            let rest = repo.as_str().strip_prefix(m.config.prefix.as_str())?;
            Some((m, RepoName::parse(rest).ok()?))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Mirror>> {
        self.mirrors.iter()
    }
}

/// One mirror: its upstreams and what it remembers between pulls (when
/// each tag was last checked, when each manifest was last pulled). Not
/// durable: after a restart every tag is checked again on its first pull
/// and eviction starts from the order manifests were put in.
pub struct Mirror {
    pub config: MirrorConfig,
    upstreams: Vec<Upstream>,
    registry: Registry,
    tags_checked: Mutex<HashMap<(RepoName, Tag), Instant>>,
    /// (repository, manifest) → the pull clock when last pulled.
    last_pulled: Mutex<HashMap<(RepoName, Digest), u64>>,
    pull_clock: AtomicU64,
    fills: fill::Fills,
    /// One eviction pass at a time.
    evicting: tokio::sync::Mutex<()>,
}

impl Mirror {
    fn new(config: &MirrorConfig, registry: Registry) -> Result<Mirror, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(config, u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("mirrors {:?}: {e}", config.prefix))?;
        Ok(Mirror {
            config: config.clone(),
            upstreams,
            registry,
            tags_checked: Mutex::new(HashMap::new()),
            last_pulled: Mutex::new(HashMap::new()),
            pull_clock: AtomicU64::new(1),
            fills: fill::Fills::default(),
            evicting: tokio::sync::Mutex::new(()),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Who the log says made a change fetched from `upstream`.
    fn actor(upstream: &Upstream) -> Actor {
        Actor {
            user: Some(format!("mirror:{}", upstream.url())),
            peer: None,
        }
    }

    /// Notes a pull of a manifest, for eviction's order.
    pub fn touch(&self, repo: &RepoName, digest: &Digest) {
        let now = self.pull_clock.fetch_add(1, Ordering::Relaxed);
        self.last_pulled
            .lock()
            .insert((repo.clone(), digest.clone()), now);
    }

    /// Makes the state able to answer a pull of manifest `reference` of
    /// `repo` (under this mirror, `upstream_repo` upstream): fetched if it
    /// is missing or a tag is due for a check. `Ok` also when the
    /// upstreams failed and a cached copy is served instead.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        upstream_repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), MirrorError> {
        match reference {
            Reference::Digest(d) => {
                if self.has_manifest(repo, d) {
                    self.touch(repo, d);
                    return Ok(());
                }
                let (upstream, m) = self.fetch_manifest(upstream_repo, d.as_str()).await?;
                self.commit_manifest(upstream, repo, m, None).await?;
                self.touch(repo, d);
                Ok(())
            }
            Reference::Tag(t) => self.tag(repo, upstream_repo, t).await,
        }
    }

    fn has_manifest(&self, repo: &RepoName, digest: &Digest) -> bool {
        self.registry
            .state
            .read()
            .repo(repo)
            .is_some_and(|r| r.manifests.contains_key(digest))
    }

    async fn tag(
        &self,
        repo: &RepoName,
        upstream_repo: &RepoName,
        tag: &Tag,
    ) -> Result<(), MirrorError> {
        let cached = self
            .registry
            .state
            .read()
            .repo(repo)
            .and_then(|r| r.tags.get(tag).cloned());
        let key = (repo.clone(), tag.clone());
        let fresh = self
            .tags_checked
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < self.config.tag_ttl);
        if let (Some(d), true) = (&cached, fresh) {
            self.touch(repo, d);
            return Ok(());
        }
        let checked = self
            .check_tag(repo, upstream_repo, tag, cached.as_ref())
            .await;
        match (checked, cached) {
            (Ok(digest), _) => {
                self.tags_checked.lock().insert(key, Instant::now());
                self.touch(repo, &digest);
                Ok(())
            }
            (Err(e), Some(d)) if !matches!(e, MirrorError::NotFound) => {
                metrics::counter!(STALE_SERVED, "prefix" => self.config.prefix.clone())
                    .increment(1);
                tracing::warn!(
                    %repo, %tag, digest = %d, error = %e,
                    "upstreams failed: serving the cached tag"
                );
                self.touch(repo, &d);
                Ok(())
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Asks the upstreams what `tag` is (HEAD), and fetches it when that
    /// is not what is cached. The digest the tag now has.
    async fn check_tag(
        &self,
        repo: &RepoName,
        upstream_repo: &RepoName,
        tag: &Tag,
        cached: Option<&Digest>,
    ) -> Result<Digest, MirrorError> {
        let mut last = None;
        for upstream in &self.upstreams {
            match upstream.head_manifest(upstream_repo, tag.as_str()).await {
                Ok(None) => return Err(MirrorError::NotFound),
                Ok(Some(head)) => {
                    if cached == Some(&head.digest) && self.has_manifest(repo, &head.digest) {
                        return Ok(head.digest);
                    }
                    let m = match self.has_manifest(repo, &head.digest) {
                        // Known by digest already: only the tag moves.
                        true => None,
                        false => {
                            let (_, m) = self
                                .fetch_manifest(upstream_repo, head.digest.as_str())
                                .await?;
                            Some(m)
                        }
                    };
                    let digest = head.digest.clone();
                    match m {
                        Some(m) => self.commit_manifest(upstream, repo, m, Some(tag)).await?,
                        None => {
                            self.registry
                                .writer
                                .submit(
                                    Mirror::actor(upstream),
                                    Command::SetTag {
                                        repo: repo.clone(),
                                        tag: tag.clone(),
                                        digest: digest.clone(),
                                    },
                                )
                                .await?;
                        }
                    }
                    return Ok(digest);
                }
                Err(e) => {
                    self.note_failure(&e, "manifest_head");
                    if !e.is_transient() {
                        return Err(e.into());
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.map_or(MirrorError::NotFound, MirrorError::Upstream))
    }

    /// GETs manifest `reference` from the first upstream that answers.
    async fn fetch_manifest(
        &self,
        upstream_repo: &RepoName,
        reference: &str,
    ) -> Result<(&Upstream, FetchedManifest), MirrorError> {
        let mut last = None;
        for upstream in &self.upstreams {
            metrics::counter!(FETCHES, "kind" => "manifest").increment(1);
            match upstream
                .get_manifest(upstream_repo, reference, self.registry.manifest_bytes_max)
                .await
            {
                Ok(Some(m)) => return Ok((upstream, m)),
                Ok(None) => return Err(MirrorError::NotFound),
                Err(e) => {
                    self.note_failure(&e, "manifest_get");
                    if !e.is_transient() {
                        return Err(e.into());
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.map_or(MirrorError::NotFound, MirrorError::Upstream))
    }

    fn note_failure(&self, e: &UpstreamError, kind: &'static str) {
        let reason = match e.status() {
            Some(429) => "429",
            Some(s) if s >= 500 => "5xx",
            Some(_) => "refused",
            None if matches!(e, UpstreamError::Invalid { .. }) => "invalid",
            None => "unreachable",
        };
        metrics::counter!(UPSTREAM_FAILURES, "kind" => kind, "reason" => reason).increment(1);
        tracing::info!(error = %e, kind, "upstream request failed");
    }

    /// Commits a fetched manifest (and `tag`, if any) through the log.
    async fn commit_manifest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        m: FetchedManifest,
        tag: Option<&Tag>,
    ) -> Result<(), MirrorError> {
        let parsed = crate::manifest::parse(&m.body, m.media_type.as_deref())
            .or_else(|_| crate::manifest::parse(&m.body, None))
            .map_err(|e| {
                MirrorError::Upstream(UpstreamError::Invalid {
                    upstream: upstream.url().to_owned(),
                    reason: format!("manifest {}: {e}", m.digest),
                })
            })?;
        let put = Command::PutManifest {
            repo: repo.clone(),
            digest: m.digest,
            media_type: parsed.media_type,
            body: m.body,
            blobs: parsed.blobs,
            manifests: parsed.manifests,
            subject: parsed.subject,
            artifact_type: parsed.artifact_type,
            tags: tag.into_iter().cloned().collect(),
        };
        self.registry
            .writer
            .submit(
                Mirror::actor(upstream),
                Command::FillManifest(Box::new(put)),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_a_prefix_map_to_upstream_names() {
        let dir = tempfile::tempdir().unwrap();
        let layout = crate::datadir::Layout::new(dir.path());
        let registry = Registry {
            writer: LogWriter::detached(0, 0),
            state: Arc::default(),
            store: BlobStore::new(&layout),
            manifest_bytes_max: 1 << 20,
        };
        let config: MirrorConfig =
            toml::from_str("prefix = \"hub/\"\n[[upstreams]]\nurl = \"http://127.0.0.1:9\"\n")
                .unwrap();
        let mirrors = Mirrors::new(&[config], &registry).unwrap();
        let repo = |s: &str| RepoName::parse(s).unwrap();
        let (m, upstream) = mirrors.find(&repo("hub/library/alpine")).unwrap();
        assert_eq!(m.config.prefix, "hub/");
        assert_eq!(upstream.as_str(), "library/alpine");
        assert!(mirrors.find(&repo("hub")).is_none());
        assert!(mirrors.find(&repo("hubx/alpine")).is_none());
        assert!(mirrors.find(&repo("other/alpine")).is_none());
    }
}
