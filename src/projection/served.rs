//! What a read of a stored manifest answers besides its body: the header
//! values of a GET or HEAD, built on the first read and kept with the
//! manifest, so that every read after clones them (a reference count
//! each) instead of formatting, validating and allocating four values.
//! The values, not a whole header map: a cloned map is sized to what it
//! holds, and grows (allocates again) as the router adds its own headers.
//!
//! Derived data, not state: never in a snapshot (the field is skipped),
//! invisible to equality, rebuilt after a restart by the first read.

use std::fmt;
use std::sync::OnceLock;

use axum::http::HeaderValue;

/// The header values of a manifest's GET and HEAD answers.
#[derive(Clone)]
pub struct ManifestHeaders {
    pub content_length: HeaderValue,
    /// Absent when the stored media type is not a valid header value.
    pub content_type: Option<HeaderValue>,
    pub docker_content_digest: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
}

/// A manifest's [`ManifestHeaders`], once some read has built them.
/// Boxed: a manifest never read pays a pointer and the cell's state (16
/// bytes), not the four values.
#[derive(Clone, Default)]
pub struct HeadersCell(OnceLock<Box<ManifestHeaders>>);

impl HeadersCell {
    /// The headers, built by `build` on the first call. Two first reads
    /// at once may both build them; one result is kept, and both are the
    /// same (built from the manifest, which never changes).
    pub fn get_or_init(&self, build: impl FnOnce() -> ManifestHeaders) -> &ManifestHeaders {
        self.0.get_or_init(|| Box::new(build()))
    }
}

/// Built from the manifest's own fields, so any two manifests equal in
/// those have equal headers: the cell never makes two states differ.
impl PartialEq for HeadersCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeadersCell {}

impl fmt::Debug for HeadersCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The same for a built and an empty cell, like equality.
        f.write_str("HeadersCell")
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use bytes::Bytes;

    use super::*;
    use crate::log::format::PAYLOAD_CONFIG;
    use crate::projection::Manifest;

    fn manifest() -> Manifest {
        Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: Bytes::from_static(b"{}"),
            blobs: Vec::new(),
            manifests: Vec::new(),
            subject: None,
            artifact_type: None,
            put_seq: 7,
            headers: HeadersCell::default(),
        }
    }

    /// Built headers change neither equality nor the snapshot's bytes,
    /// and a decoded manifest starts with an empty cell.
    #[test]
    fn built_headers_are_not_state() {
        let empty = manifest();
        let read = manifest();
        let built = read.headers.get_or_init(|| ManifestHeaders {
            content_length: HeaderValue::from(2usize),
            content_type: None,
            docker_content_digest: None,
            etag: None,
        });
        assert_eq!(built.content_length, "2");
        assert!(read.headers.0.get().is_some());
        assert_eq!(empty, read);
        let bytes = |m: &Manifest| bincode::serde::encode_to_vec(m, PAYLOAD_CONFIG).unwrap();
        assert_eq!(bytes(&empty), bytes(&read));
        let (decoded, _): (Manifest, usize) =
            bincode::serde::decode_from_slice(&bytes(&read), PAYLOAD_CONFIG).unwrap();
        assert!(decoded.headers.0.get().is_none());
        assert_eq!(decoded, empty);
        // A second build is never run: the first result is kept.
        let again = read.headers.get_or_init(|| unreachable!("built once"));
        assert_eq!(again.content_length, "2");
    }
}
