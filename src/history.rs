//! The life of a repository or a tag, read from the log: every push, tag
//! move and delete, with its time, its actor and the digests involved.
//!
//! [`changes`] is a pure function of one entry, so a server can build a
//! history endpoint on any record source (a live feed, a range of the log);
//! [`read`] scans the log for one query. Reading only; safe while a server
//! appends.
//!
//! Boundary: history is what the live log holds. After compaction it
//! starts at the log's first record ([`History::log_first_seq`]).

use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::events::{Actor, Entry, Event, LinkSource};
use crate::log::recovery::{self, ReadOptions, RecordView, RecoveryError, RecoveryMode};
use crate::oci::{Digest, RepoName, Tag};

/// Whose history: a repository, or one tag of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub repo: RepoName,
    pub tag: Option<Tag>,
}

impl HistoryQuery {
    /// Parses `REPO` or `REPO:TAG` (the tag is after the last colon that
    /// follows the last slash, as in image references).
    pub fn parse(s: &str) -> Result<HistoryQuery, String> {
        let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repo, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], Some(&s[slash + i + 1..])),
            None => (s, None),
        };
        let repo = RepoName::parse(repo).map_err(|e| format!("{repo:?}: {e}"))?;
        let tag = tag
            .map(|t| Tag::parse(t).map_err(|e| format!("{t:?}: {e}")))
            .transpose()?;
        Ok(HistoryQuery { repo, tag })
    }
}

/// One change in a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Change {
    /// A manifest stored (pushed) in the repository.
    ManifestPushed {
        digest: Digest,
        media_type: String,
        size: u64,
        artifact_type: Option<String>,
        subject: Option<Digest>,
    },
    /// A tag pointed at a manifest for the first time (or again after a
    /// delete).
    Tagged {
        tag: Tag,
        digest: Digest,
    },
    /// A tag moved from one manifest to another.
    TagMoved {
        tag: Tag,
        digest: Digest,
        previous: Digest,
    },
    TagDeleted {
        tag: Tag,
        digest: Digest,
    },
    ManifestDeleted {
        digest: Digest,
    },
    BlobLinked {
        digest: Digest,
        size: u64,
        source: LinkSource,
    },
    BlobUnlinked {
        digest: Digest,
    },
    ReferrerRegistered {
        subject: Digest,
        referrer: Digest,
    },
}

impl Change {
    /// A short stable name (the JSON `action`).
    pub fn action(&self) -> &'static str {
        match self {
            Change::ManifestPushed { .. } => "manifest_pushed",
            Change::Tagged { .. } => "tagged",
            Change::TagMoved { .. } => "tag_moved",
            Change::TagDeleted { .. } => "tag_deleted",
            Change::ManifestDeleted { .. } => "manifest_deleted",
            Change::BlobLinked { .. } => "blob_linked",
            Change::BlobUnlinked { .. } => "blob_unlinked",
            Change::ReferrerRegistered { .. } => "referrer_registered",
        }
    }
}

/// The changes one entry makes to what `query` names. For a tag: its
/// sets, moves and deletes, and the manifest pushes and deletes that came
/// in the same entry (a push by tag, a delete that took the tag along).
pub fn changes(query: &HistoryQuery, entry: &Entry) -> Vec<Change> {
    let in_repo = |e: &&Event| e.repo() == Some(&query.repo);
    let events: Vec<&Event> = entry.events.iter().filter(in_repo).collect();
    let Some(tag) = &query.tag else {
        return events.into_iter().filter_map(change_of).collect();
    };
    // Digests the tag pointed at, or came to point at, in this entry.
    let touched: Vec<&Digest> = events
        .iter()
        .filter_map(|e| match e {
            Event::TagSet { tag: t, digest, .. } | Event::TagDeleted { tag: t, digest, .. }
                if t == tag =>
            {
                Some(digest)
            }
            _ => None,
        })
        .collect();
    if touched.is_empty() {
        return Vec::new();
    }
    events
        .into_iter()
        .filter(|e| match e {
            Event::TagSet { tag: t, .. } | Event::TagDeleted { tag: t, .. } => t == tag,
            Event::ManifestPut { digest, .. } | Event::ManifestDeleted { digest, .. } => {
                touched.contains(&digest)
            }
            _ => false,
        })
        .filter_map(change_of)
        .collect()
}

fn change_of(event: &Event) -> Option<Change> {
    Some(match event {
        Event::ManifestPut {
            digest,
            media_type,
            body,
            artifact_type,
            subject,
            ..
        } => Change::ManifestPushed {
            digest: digest.clone(),
            media_type: media_type.clone(),
            size: body.len() as u64,
            artifact_type: artifact_type.clone(),
            subject: subject.clone(),
        },
        Event::TagSet {
            tag,
            digest,
            previous: None,
            ..
        } => Change::Tagged {
            tag: tag.clone(),
            digest: digest.clone(),
        },
        Event::TagSet {
            tag,
            digest,
            previous: Some(previous),
            ..
        } => Change::TagMoved {
            tag: tag.clone(),
            digest: digest.clone(),
            previous: previous.clone(),
        },
        Event::TagDeleted { tag, digest, .. } => Change::TagDeleted {
            tag: tag.clone(),
            digest: digest.clone(),
        },
        Event::ManifestDeleted { digest, .. } => Change::ManifestDeleted {
            digest: digest.clone(),
        },
        Event::BlobLinked {
            digest,
            size,
            source,
            ..
        } => Change::BlobLinked {
            digest: digest.clone(),
            size: *size,
            source: source.clone(),
        },
        Event::BlobUnlinked { digest, .. } => Change::BlobUnlinked {
            digest: digest.clone(),
        },
        Event::ReferrerRegistered {
            subject, referrer, ..
        } => Change::ReferrerRegistered {
            subject: subject.clone(),
            referrer: referrer.clone(),
        },
        Event::BlobDeleted { .. }
        | Event::UploadStarted { .. }
        | Event::UploadChunk { .. }
        | Event::UploadCompleted { .. }
        | Event::UploadCancelled { .. }
        | Event::GcCompleted { .. }
        | Event::NotificationCursorMoved { .. } => return None,
    })
}

/// The changes of one entry, with its record's sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryItem {
    pub seq: u64,
    pub time_unix_ns: u64,
    pub actor: Actor,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    pub items: Vec<HistoryItem>,
    /// Where the live log starts: history before it was compacted.
    pub log_first_seq: Option<u64>,
    pub log_last_seq: u64,
}

/// Scans the log in `log_dir` for `query`'s history. `on_record` sees
/// every record read (progress reporting).
pub fn read(
    log_dir: &Path,
    query: &HistoryQuery,
    on_record: &mut dyn FnMut(&RecordView<'_>),
) -> Result<History, RecoveryError> {
    let mut items = Vec::new();
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        ..ReadOptions::default()
    };
    let report = recovery::read_log(log_dir, &options, &mut |record| {
        on_record(record);
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        let found = changes(query, &entry);
        if !found.is_empty() {
            items.push(HistoryItem {
                seq: record.seq,
                time_unix_ns: record.time_unix_ns,
                actor: entry.actor,
                changes: found,
            });
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(History {
        items,
        log_first_seq: report.first_seq,
        log_last_seq: report.last_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &[u8]) -> Digest {
        Digest::sha256_of(s)
    }

    #[test]
    fn query_parsing() {
        let q = HistoryQuery::parse("library/app:v1").unwrap();
        assert_eq!(q.repo.as_str(), "library/app");
        assert_eq!(q.tag.unwrap().as_str(), "v1");
        let q = HistoryQuery::parse("localhost/app").unwrap();
        assert_eq!(q.tag, None);
        assert!(HistoryQuery::parse("App:v1").is_err());
        assert!(HistoryQuery::parse("app:-bad").is_err());
    }

    #[test]
    fn tag_history_takes_the_push_and_the_delete_along() {
        let repo = RepoName::parse("app").unwrap();
        let v1 = Tag::parse("v1").unwrap();
        let other = Tag::parse("other").unwrap();
        let push = Entry {
            actor: Actor::system(),
            events: vec![
                Event::ManifestPut {
                    repo: repo.clone(),
                    digest: d(b"m1"),
                    media_type: "t".into(),
                    body: bytes::Bytes::from_static(b"{}"),
                    blobs: vec![],
                    manifests: vec![],
                    subject: None,
                    artifact_type: None,
                },
                Event::TagSet {
                    repo: repo.clone(),
                    tag: v1.clone(),
                    digest: d(b"m1"),
                    previous: Some(d(b"m0")),
                },
                Event::TagSet {
                    repo: repo.clone(),
                    tag: other.clone(),
                    digest: d(b"m1"),
                    previous: None,
                },
            ],
        };
        let q = HistoryQuery {
            repo: repo.clone(),
            tag: Some(v1.clone()),
        };
        let found = changes(&q, &push);
        assert_eq!(
            found.iter().map(Change::action).collect::<Vec<_>>(),
            ["manifest_pushed", "tag_moved"]
        );
        let whole = HistoryQuery { repo, tag: None };
        assert_eq!(changes(&whole, &push).len(), 3);
        let unrelated = HistoryQuery {
            repo: RepoName::parse("elsewhere").unwrap(),
            tag: None,
        };
        assert!(changes(&unrelated, &push).is_empty());
    }
}
