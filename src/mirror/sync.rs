//! The mirror's schedule (`sync` and `sync_interval`): at start and every
//! interval, each listed repository's tags are listed upstream, those the
//! rule keeps are checked (`HEAD`) and, when new or moved, pre-fetched in
//! process with the code on-demand pulls use (the manifest, an index's
//! children, every blob they reference), committed through the log with
//! the upstream as actor. An upstream failure is a log line and a metric;
//! the next interval tries again. The task ends on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{SyncRule, TagFilter};
use super::fill::BlobAnswer;
use super::{Mirror, MirrorError, Mirrors};
use crate::oci::{Digest, Reference, RepoName, Tag};

/// Scheduled runs, by outcome (`ok`, `failed`: at least one tag failed).
pub const RUNS: &str = "ferro_mirror_sync_runs_total";
/// Tags brought up to date by the schedule (checked and cached).
pub const TAGS_SYNCED: &str = "ferro_mirror_sync_tags_synced_total";
/// Repositories or tags the schedule could not bring up to date.
pub const FAILURES: &str = "ferro_mirror_sync_failures_total";
/// Unix time of the last run without a failure.
pub const LAST_SUCCESS: &str = "ferro_mirror_sync_last_success_timestamp_seconds";

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(RUNS, "Scheduled mirror syncs, by outcome");
    describe_counter!(TAGS_SYNCED, "Tags the mirror schedule checked and cached");
    describe_counter!(
        FAILURES,
        "Repositories or tags the mirror schedule could not bring up to date"
    );
    describe_gauge!(
        LAST_SUCCESS,
        "Unix time of the last mirror sync without a failure"
    );
}

/// Starts one task per mirror that has a schedule; each ends when `stop`
/// is cancelled.
pub fn spawn(mirrors: &Mirrors, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    mirrors
        .iter()
        .filter(|m| !m.config.sync.is_empty() && !m.config.sync_interval.is_zero())
        .map(|m| {
            let mirror = m.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let interval = mirror.config.sync_interval;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = run(&mirror) => {}
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            })
        })
        .collect()
}

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    pub tags_synced: u64,
    pub failures: u64,
}

/// One pass over the mirror's `sync` list.
pub async fn run(mirror: &Arc<Mirror>) -> RunReport {
    let prefix = mirror.config.prefix.clone();
    let started = Instant::now();
    let mut report = RunReport::default();
    for rule in &mirror.config.sync {
        match sync_rule(mirror, rule, &mut report).await {
            Ok(()) => {}
            Err(e) => {
                report.failures += 1;
                metrics::counter!(FAILURES, "prefix" => prefix.clone()).increment(1);
                tracing::warn!(
                    prefix, repository = rule.repository, error = %e,
                    "mirror sync failed; retried at the next interval"
                );
            }
        }
    }
    let outcome = if report.failures == 0 { "ok" } else { "failed" };
    metrics::counter!(RUNS, "prefix" => prefix.clone(), "outcome" => outcome).increment(1);
    if report.failures == 0 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        metrics::gauge!(LAST_SUCCESS, "prefix" => prefix.clone()).set(now.as_secs_f64());
    }
    tracing::info!(
        prefix,
        tags_synced = report.tags_synced,
        failures = report.failures,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "mirror sync run"
    );
    report
}

/// Lists one repository's tags upstream and brings those the rule keeps
/// up to date. A tag that fails is counted and the others still go.
async fn sync_rule(
    mirror: &Arc<Mirror>,
    rule: &SyncRule,
    report: &mut RunReport,
) -> Result<(), MirrorError> {
    // Checked at startup; a failure here is a configuration the check missed.
    let filter = TagFilter::new(rule).map_err(MirrorError::Store)?;
    let upstream_repo = RepoName::parse(&rule.repository)
        .map_err(|e| MirrorError::Store(format!("{:?}: {e}", rule.repository)))?;
    let repo = RepoName::parse(&format!("{}{}", mirror.config.prefix, rule.repository))
        .map_err(|e| MirrorError::Store(format!("{:?}: {e}", rule.repository)))?;
    let tags = list_tags(mirror, &upstream_repo).await?;
    let prefix = mirror.config.prefix.clone();
    for name in tags.iter().filter(|t| filter.matches(t)) {
        // A tag name the spec refuses is not one a client could pull.
        let Ok(tag) = Tag::parse(name) else { continue };
        match sync_tag(mirror, &repo, &upstream_repo, &tag).await {
            Ok(()) => {
                report.tags_synced += 1;
                metrics::counter!(TAGS_SYNCED, "prefix" => prefix.clone()).increment(1);
            }
            Err(e) => {
                report.failures += 1;
                metrics::counter!(FAILURES, "prefix" => prefix.clone()).increment(1);
                tracing::warn!(
                    %repo, %tag, error = %e,
                    "mirror sync of a tag failed; retried at the next interval"
                );
            }
        }
    }
    Ok(())
}

/// The repository's tags from the first upstream that answers.
async fn list_tags(mirror: &Mirror, upstream_repo: &RepoName) -> Result<Vec<String>, MirrorError> {
    let mut last = None;
    for upstream in &mirror.upstreams {
        match upstream.list_tags(upstream_repo).await {
            Ok(Some(tags)) => return Ok(tags),
            Ok(None) => return Err(MirrorError::NotFound),
            Err(e) => {
                mirror.note_failure(&e, "tags_list");
                if !e.is_transient() {
                    return Err(e.into());
                }
                last = Some(e);
            }
        }
    }
    Err(last.map_or(MirrorError::NotFound, MirrorError::Upstream))
}

/// Checks `tag` upstream whatever its `tag_ttl` (the schedule is there
/// to keep it current), then makes sure the manifest it names, an
/// index's children and every blob they reference are cached.
async fn sync_tag(
    mirror: &Arc<Mirror>,
    repo: &RepoName,
    upstream_repo: &RepoName,
    tag: &Tag,
) -> Result<(), MirrorError> {
    let cached = mirror
        .registry
        .state
        .read()
        .repo(repo)
        .and_then(|r| r.tags.get(tag).cloned());
    let digest = mirror
        .check_tag(repo, upstream_repo, tag, cached.as_ref())
        .await?;
    mirror
        .tags_checked
        .lock()
        .insert((repo.clone(), tag.clone()), Instant::now());
    mirror.touch(repo, &digest);
    let mut pending = vec![digest];
    let mut seen = std::collections::HashSet::new();
    while let Some(digest) = pending.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        if seen.len() as u64 > super::prefetch::MANIFESTS_MAX {
            return Err(MirrorError::Store(format!(
                "{repo}:{tag}: more than {} manifests",
                super::prefetch::MANIFESTS_MAX
            )));
        }
        mirror
            .manifest(repo, upstream_repo, &Reference::Digest(digest.clone()))
            .await?;
        let (blobs, children) = references(mirror, repo, &digest);
        pending.extend(children);
        for blob in blobs {
            if let BlobAnswer::Filling(reader) = mirror.blob(repo, upstream_repo, &blob).await? {
                // Read to the end: the fill is done (committed and linked)
                // or failed when its stream ends.
                let mut stream = std::pin::pin!(reader.into_stream());
                while let Some(piece) = stream.next().await {
                    piece.map_err(|e| MirrorError::Store(format!("blob {blob}: {e}")))?;
                }
            }
        }
    }
    Ok(())
}

/// The blobs and child manifests the cached manifest `digest` references.
fn references(mirror: &Mirror, repo: &RepoName, digest: &Digest) -> (Vec<Digest>, Vec<Digest>) {
    let state = mirror.registry.state.read();
    state
        .repo(repo)
        .and_then(|r| r.manifests.get(digest))
        .map(|m| (m.blobs.clone(), m.manifests.clone()))
        .unwrap_or_default()
}
