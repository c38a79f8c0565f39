//! Restores: bringing a tag or a manifest back to a past value, as a new
//! command for the writer (so the restore itself is on the record). Shared
//! by the HTTP endpoints (`api::ext::restore`) and `ferroctl restore`.
//!
//! Reading only: these functions find the past value in the log; the caller
//! submits the command they return.

use std::ops::ControlFlow;

use crate::commands::Command;
use crate::datadir::Layout;
use crate::events::Event;
use crate::log::recovery::{self, ReadOptions, RecoveryError, RecoveryMode};
use crate::oci::{Digest, RepoName, Tag};
use crate::projection::{Manifest, State};
use crate::replay::{self, AsOf, ReplayError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("tag {tag} of {repo} had no value at that point")]
    TagHadNoValue { repo: RepoName, tag: Tag },
    #[error("the log holds no manifest {digest} for {repo}")]
    ManifestNotInLog { repo: RepoName, digest: Digest },
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Log(#[from] RecoveryError),
}

/// What `tag` of `repo` pointed at, as of `at`.
pub fn tag_value_at(
    layout: &Layout,
    repo: &RepoName,
    tag: &Tag,
    at: AsOf,
) -> Result<Digest, RestoreError> {
    let past = replay::state_as_of(layout, at, &mut |_| {})?;
    past.state
        .repo(repo)
        .and_then(|r| r.tags.get(tag))
        .cloned()
        .ok_or_else(|| RestoreError::TagHadNoValue {
            repo: repo.clone(),
            tag: tag.clone(),
        })
}

/// The manifest `digest` of `repo` as last pushed, from the log's records
/// up to `upto` (the caller's committed sequence number).
pub fn manifest_from_log(
    layout: &Layout,
    repo: &RepoName,
    digest: &Digest,
    upto: u64,
) -> Result<Manifest, RestoreError> {
    let mut found = None;
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        ..ReadOptions::default()
    };
    recovery::read_log(&layout.log_dir(), &options, &mut |record| {
        if record.seq > upto {
            return Ok(ControlFlow::Break(()));
        }
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        for event in entry.events {
            if let Event::ManifestPut {
                repo: r,
                digest: d,
                media_type,
                body,
                blobs,
                manifests,
                subject,
                artifact_type,
            } = event
            {
                if r == *repo && d == *digest {
                    found = Some(Manifest {
                        media_type,
                        body,
                        blobs,
                        manifests,
                        subject,
                        artifact_type,
                        put_seq: record.seq,
                        headers: Default::default(),
                    });
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    found.ok_or_else(|| RestoreError::ManifestNotInLog {
        repo: repo.clone(),
        digest: digest.clone(),
    })
}

/// The command that puts manifest `m` back into `repo` (a no-op for the
/// writer if it is there already) and points `tags` at it.
pub fn put_again(repo: &RepoName, digest: &Digest, m: Manifest, tags: Vec<Tag>) -> Command {
    Command::PutManifest {
        repo: repo.clone(),
        digest: digest.clone(),
        media_type: m.media_type,
        body: m.body,
        blobs: m.blobs,
        manifests: m.manifests,
        subject: m.subject,
        artifact_type: m.artifact_type,
        tags,
    }
}

/// The command that points `tag` at `digest`: a plain tag move when the
/// repository has the manifest, else the manifest is pushed again from the
/// log with the tag. `current` is the state now.
pub fn restore_tag(
    layout: &Layout,
    current: &State,
    repo: &RepoName,
    tag: &Tag,
    digest: &Digest,
) -> Result<Command, RestoreError> {
    if current
        .repo(repo)
        .is_some_and(|r| r.manifests.contains_key(digest))
    {
        return Ok(Command::SetTag {
            repo: repo.clone(),
            tag: tag.clone(),
            digest: digest.clone(),
        });
    }
    let m = manifest_from_log(layout, repo, digest, current.last_seq)?;
    Ok(put_again(repo, digest, m, vec![tag.clone()]))
}
