//! The events: every mutation of the registry, as it is written to the log.
//!
//! A log record holds one [`Entry`]: the actor and the events of one command,
//! applied together or not at all (a manifest put by tag is a `ManifestPut`
//! and a `TagSet` in one entry). Sequence number and time live in the record
//! header (see `log::format`).
//!
//! # Compatibility
//! Entries are encoded with bincode (see `log-format/FORMAT.md`), where an
//! enum variant is written as its index. New variants are only ever added at
//! the end of [`Event`]; existing variants never change shape. A change that
//! cannot follow that rule bumps the log format version.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::{Digest, RepoName, Tag};

/// Who caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Actor {
    /// The authenticated user, or `None` for an anonymous request.
    pub user: Option<String>,
    /// The peer address of the request (`ip:port`), or `None` for changes
    /// made by the registry itself or by an operator tool.
    pub peer: Option<String>,
}

impl Actor {
    pub fn anonymous(peer: Option<String>) -> Actor {
        Actor { user: None, peer }
    }

    pub fn system() -> Actor {
        Actor {
            user: Some("ferro".to_owned()),
            peer: None,
        }
    }

    pub fn display_name(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }
}

/// One record's contents: the events of one command, by one actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub actor: Actor,
    pub events: Vec<Event>,
}

/// An upload session's identifier (a UUID in its simple form).
pub type UploadId = String;

/// How a blob came to be linked into a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkSource {
    /// The bytes were uploaded; `upload` is the session, when there was one
    /// (a single `POST ?digest=` has none).
    Upload { upload: Option<UploadId> },
    /// Mounted from another repository (`from`), or from the registry's
    /// blob store when the client named no repository.
    Mount { from: Option<RepoName> },
}

/// Every mutation of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A manifest stored in a repository, body and all.
    ManifestPut {
        repo: RepoName,
        digest: Digest,
        /// The media type it was pushed with (the request's `Content-Type`).
        media_type: String,
        #[serde(with = "bytes_serde")]
        body: Bytes,
        /// Blobs it references (config and layers), for validation and GC.
        blobs: Vec<Digest>,
        /// Manifests it references (children of an index).
        manifests: Vec<Digest>,
        subject: Option<Digest>,
        /// `artifactType`, or the config media type of an image manifest
        /// with none: what the referrers API reports.
        artifact_type: Option<String>,
    },
    /// A tag pointed at a manifest. `previous` is what it pointed at before,
    /// so a move reads as a move.
    TagSet {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
        previous: Option<Digest>,
    },
    TagDeleted {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    /// A manifest removed from a repository. Tags pointing at it are removed
    /// by `TagDeleted` events in the same entry.
    ManifestDeleted {
        repo: RepoName,
        digest: Digest,
    },
    /// A blob linked into a repository.
    BlobLinked {
        repo: RepoName,
        digest: Digest,
        size: u64,
        source: LinkSource,
    },
    /// A blob unlinked from one repository (`DELETE /v2/<name>/blobs/<d>`).
    /// The bytes stay until garbage collection deletes them.
    BlobUnlinked {
        repo: RepoName,
        digest: Digest,
    },
    /// A blob's bytes deleted from the store (garbage collection). Logged
    /// only once no repository links the blob: the collector's entry
    /// unlinks it everywhere first.
    BlobDeleted {
        digest: Digest,
        size: u64,
    },
    UploadStarted {
        repo: RepoName,
        upload: UploadId,
    },
    /// Bytes `[offset, offset + length)` of an upload are durable in its
    /// staging file. `crc32` is the CRC-32 of those bytes.
    UploadChunk {
        upload: UploadId,
        offset: u64,
        length: u64,
        crc32: u32,
    },
    /// An upload finished: its bytes are the blob `digest`, now in the store.
    UploadCompleted {
        upload: UploadId,
        digest: Digest,
        size: u64,
    },
    UploadCancelled {
        upload: UploadId,
        reason: CancelReason,
    },
    /// `referrer` (a manifest in `repo`) has `subject` as its subject.
    ReferrerRegistered {
        repo: RepoName,
        subject: Digest,
        referrer: Digest,
    },
    /// A garbage collection run finished (dry runs are not logged): what
    /// it did, for the record. It changes nothing in the state; the
    /// deletions themselves are the `ManifestDeleted`, `BlobUnlinked` and
    /// `BlobDeleted` events logged before it.
    GcCompleted {
        /// The sequence number the run's blob mark phase read the state at.
        mark_seq: u64,
        /// Untagged manifests deleted by the age policy.
        manifests_deleted: u64,
        blobs_deleted: u64,
        /// Bytes of those blobs.
        bytes_freed: u64,
        /// Files in the store that no event accounted for, removed.
        orphans_removed: u64,
        orphan_bytes_freed: u64,
        /// Wall time of the whole run.
        duration_ms: u64,
    },
    /// An operator moved a notification endpoint's cursor
    /// (`POST /v2/_ferro/notifications`): from then on the endpoint is
    /// sent the entries after `to_seq`. It changes nothing in the state.
    NotificationCursorMoved {
        /// The endpoint's `name` in the configuration.
        endpoint: String,
        /// The cursor before the move: the last entry it had acknowledged.
        from_seq: u64,
        /// The cursor after the move.
        to_seq: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// The client sent `DELETE` on the upload.
    ClientDeleted,
    /// The uploaded bytes did not match the digest the client named.
    DigestMismatch,
    /// The upload was idle for longer than the expiry setting.
    Expired,
    /// The staging file was found shorter than the log says at recovery.
    StagingLost,
}

impl Event {
    /// A short stable name, used in filters and in the JSON dumps.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ManifestPut { .. } => "manifest_put",
            Event::TagSet { .. } => "tag_set",
            Event::TagDeleted { .. } => "tag_deleted",
            Event::ManifestDeleted { .. } => "manifest_deleted",
            Event::BlobLinked { .. } => "blob_linked",
            Event::BlobUnlinked { .. } => "blob_unlinked",
            Event::BlobDeleted { .. } => "blob_deleted",
            Event::UploadStarted { .. } => "upload_started",
            Event::UploadChunk { .. } => "upload_chunk",
            Event::UploadCompleted { .. } => "upload_completed",
            Event::UploadCancelled { .. } => "upload_cancelled",
            Event::ReferrerRegistered { .. } => "referrer_registered",
            Event::GcCompleted { .. } => "gc_completed",
            Event::NotificationCursorMoved { .. } => "notification_cursor_moved",
        }
    }

    pub const KINDS: [&'static str; 14] = [
        "manifest_put",
        "tag_set",
        "tag_deleted",
        "manifest_deleted",
        "blob_linked",
        "blob_unlinked",
        "blob_deleted",
        "upload_started",
        "upload_chunk",
        "upload_completed",
        "upload_cancelled",
        "referrer_registered",
        "gc_completed",
        "notification_cursor_moved",
    ];

    /// The repository the event concerns, when it concerns one.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Event::ManifestPut { repo, .. }
            | Event::TagSet { repo, .. }
            | Event::TagDeleted { repo, .. }
            | Event::ManifestDeleted { repo, .. }
            | Event::BlobLinked { repo, .. }
            | Event::BlobUnlinked { repo, .. }
            | Event::UploadStarted { repo, .. }
            | Event::ReferrerRegistered { repo, .. } => Some(repo),
            Event::BlobDeleted { .. }
            | Event::UploadChunk { .. }
            | Event::UploadCompleted { .. }
            | Event::UploadCancelled { .. }
            | Event::GcCompleted { .. }
            | Event::NotificationCursorMoved { .. } => None,
        }
    }
}

/// `Bytes` as a byte string: bincode writes a length and the bytes; JSON (and
/// other human-readable formats) get a UTF-8 string when the bytes are UTF-8,
/// which manifest bodies always are, so dumps stay readable.
pub(crate) mod bytes_serde {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(text) if s.is_human_readable() => s.serialize_str(text),
            _ => s.serialize_bytes(b),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v.as_bytes()))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Bytes::from(v))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}
