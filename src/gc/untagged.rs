//! Garbage collection's untagged-manifest policy
//! (`gc.untagged_manifests_older_than`): the mark, on a copy of the state,
//! and the deletions through `Command::CollectManifests`, repository by
//! repository, referencing manifests first.

use super::{Collector, GcError, GcReport, COLLECT_BATCH_MANIFESTS_MAX};
use crate::commands::Command;
use crate::datadir::Layout;
use crate::events::{Actor, Event};
use crate::oci::{Digest, RepoName};
use crate::projection::State;
use crate::replay::{self, AsOf, ReplayError};

impl Collector {
    /// The untagged-manifest policy: finds, on a copy of the state, the
    /// manifests put at or before `cutoff_unix_ns` that nothing reaches,
    /// and deletes them repository by repository, referencing manifests
    /// first (see `Repo::referencing_first`).
    pub(super) async fn collect_manifests(
        &self,
        cutoff_unix_ns: u64,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        let state = self.state.read().clone();
        let layout = self.layout.clone();
        let found =
            tokio::task::spawn_blocking(move || mark_untagged(&layout, &state, cutoff_unix_ns))
                .await
                .map_err(|e| GcError::Task(e.to_string()))??;
        for (repo, digests) in found.manifests {
            if dry_run {
                for d in &digests {
                    report.note_manifest_deleted(&repo, d);
                }
                continue;
            }
            for batch in digests.chunks(COLLECT_BATCH_MANIFESTS_MAX) {
                let committed = self
                    .writer
                    .submit(
                        Actor::system(),
                        Command::CollectManifests {
                            repo: repo.clone(),
                            put_seq_max: found.put_seq_max,
                            digests: batch.to_vec(),
                        },
                    )
                    .await?;
                let mut deleted = 0;
                for e in &committed.events {
                    if let Event::ManifestDeleted { repo, digest } = e {
                        deleted += 1;
                        report.note_manifest_deleted(repo, digest);
                    }
                }
                report.manifests_kept_by_recheck += (batch.len() - deleted) as u64;
            }
        }
        Ok(())
    }
}

/// What the untagged-manifest policy found.
pub struct UntaggedMarked {
    /// The last record committed at or before the cutoff: a manifest put
    /// by it or earlier is old enough.
    pub put_seq_max: u64,
    /// Per repository, the manifests to delete, referencing ones first.
    pub manifests: Vec<(RepoName, Vec<Digest>)>,
}

/// The mark of the untagged-manifest policy on `state`: in each
/// repository, the manifests put at or before `cutoff_unix_ns` that are
/// not reachable (`Repo::reachable_manifests`) from a tag or from a
/// manifest put after the cutoff.
///
/// A manifest's age is that of its `ManifestPut` record (`put_seq`),
/// found through the log: when the log no longer holds the records around
/// the cutoff (compacted history), no manifest is old enough, which only
/// keeps more.
pub fn mark_untagged(
    layout: &Layout,
    state: &State,
    cutoff_unix_ns: u64,
) -> Result<UntaggedMarked, GcError> {
    let put_seq_max = if state.last_seq == 0 {
        0
    } else if cutoff_unix_ns >= state.last_time_unix_ns {
        state.last_seq
    } else {
        match replay::state_as_of(layout, AsOf::TimeUnixNs(cutoff_unix_ns), &mut |_| {}) {
            Ok(b) => b.state.last_seq.min(state.last_seq),
            Err(ReplayError::Compacted { .. }) => 0,
            Err(e) => return Err(e.into()),
        }
    };
    let mut manifests = Vec::new();
    if put_seq_max > 0 {
        for (name, r) in &state.repos {
            let reached = r.reachable_manifests(|_, m| m.put_seq > put_seq_max);
            let unreached: std::collections::BTreeSet<Digest> = r
                .manifests
                .keys()
                .filter(|d| !reached.contains(d))
                .cloned()
                .collect();
            if !unreached.is_empty() {
                manifests.push((name.clone(), r.referencing_first(&unreached)));
            }
        }
    }
    Ok(UntaggedMarked {
        put_seq_max,
        manifests,
    })
}
