//! The object store's part of the state (`[storage] backend = "s3"`):
//! which object holds each blob's bytes, and the multipart uploads that
//! are open, with their stored parts, so that an upload resumes after a
//! restart and a collection can abort one a crash left open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{Event, UploadId};
use crate::oci::Digest;

/// # Invariants
/// A digest in `blobs` is in `State::blobs` (the key is removed with the
/// blob by `BlobDeleted`). An upload is in `multiparts` from its
/// `MultipartStarted` until its `BlobObjectStored` or `MultipartAborted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectIndex {
    /// Digest → the object key that holds its bytes.
    pub blobs: BTreeMap<Digest, String>,
    /// Upload id → its open multipart upload.
    pub multiparts: BTreeMap<UploadId, OpenMultipart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMultipart {
    pub key: String,
    /// The store's id of the multipart upload.
    pub multipart: String,
    /// Parts stored so far, in order (numbered from 1).
    pub parts: Vec<StoredPart>,
    pub started_unix_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPart {
    pub number: u32,
    pub length: u64,
    pub etag: String,
}

impl ObjectIndex {
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.multiparts.is_empty()
    }

    /// How many of an upload's bytes are parts of its open multipart
    /// upload (0 when it has none); the rest are in its staging file.
    pub fn parts_bytes(&self, upload: &str) -> u64 {
        self.multiparts
            .get(upload)
            .map_or(0, |m| m.parts.iter().map(|p| p.length).sum())
    }

    /// Applies one of the object store's events (others change nothing).
    pub fn apply(&mut self, time_unix_ns: u64, event: &Event) {
        match event {
            Event::MultipartStarted {
                upload,
                key,
                multipart,
            } => {
                self.multiparts.insert(
                    upload.clone(),
                    OpenMultipart {
                        key: key.clone(),
                        multipart: multipart.clone(),
                        parts: Vec::new(),
                        started_unix_ns: time_unix_ns,
                    },
                );
            }
            Event::PartStored {
                upload,
                number,
                length,
                etag,
            } => {
                if let Some(m) = self.multiparts.get_mut(upload) {
                    debug_assert_eq!(*number as usize, m.parts.len() + 1, "parts in order");
                    m.parts.push(StoredPart {
                        number: *number,
                        length: *length,
                        etag: etag.clone(),
                    });
                }
            }
            Event::BlobObjectStored {
                digest,
                upload,
                key,
            } => {
                self.blobs
                    .entry(digest.clone())
                    .or_insert_with(|| key.clone());
                self.multiparts.remove(upload);
            }
            Event::MultipartAborted { upload } => {
                self.multiparts.remove(upload);
            }
            _ => {}
        }
    }
}
