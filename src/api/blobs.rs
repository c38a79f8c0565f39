//! `/v2/<name>/blobs/<digest>`: GET, HEAD (with `Range`), DELETE.
//!
//! Blobs are served only from repositories they are linked into. The
//! bytes come from [`BlobStore::read_range`](crate::blobs::BlobStore):
//! small ones read in one blocking task (and whole small blobs kept in a
//! bounded cache, [`SmallBlobCache`](crate::blobs::cache::SmallBlobCache),
//! consulted only after the repository's link to the blob is checked),
//! large ones memory-mapped piece by piece (each piece faulted in on the
//! blocking pool, the next while the current one is sent,
//! [`PieceStream`]) and streamed without a copy (page cache, not the heap).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult, ErrorCode};
use super::manifests::digest_headers;
use super::ranges::{parse_range, ByteRange};
use super::request::RequestContext;
use super::App;
use crate::blobs::read::BlobRange;
use crate::blobs::stream::PieceStream;
use crate::blobs::Backend;
use crate::commands::Command;
use crate::oci::{Digest, RepoName};

fn blob_unknown() -> ApiError {
    ApiError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
}

pub async fn get(
    app: &App,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let size = app
        .state
        .read()
        .repo(repo)
        .and_then(|r| r.blobs.get(digest).copied())
        .ok_or_else(blob_unknown)?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size))
        .unwrap_or(ByteRange::Full);
    let (status, start, len) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Ok(r);
        }
    };
    if !head {
        // A whole small blob may be in memory already.
        let whole = start == 0 && len == size;
        let cached = whole.then(|| app.store.small_blobs().get(digest)).flatten();
        if let Some(bytes) = cached {
            return Ok(blob_response(
                status,
                Body::from(bytes),
                digest,
                start,
                len,
                size,
            ));
        }
        // The one place a read asks where the bytes live.
        return match app.store.backend() {
            Backend::Filesystem => file_get(app, digest, (status, start, len, size)).await,
            Backend::Object(objects) => {
                object_get(app, objects, digest, (status, start, len, size)).await
            }
        };
    }
    Ok(blob_response(
        status,
        Body::empty(),
        digest,
        start,
        len,
        size,
    ))
}

/// A GET of bytes `start..start + len` of a blob of `size` bytes on the
/// filesystem: small ones read in one blocking task (and a whole one
/// cached), large ones memory-mapped piece by piece.
async fn file_get(
    app: &App,
    digest: &Digest,
    (status, start, len, size): (StatusCode, u64, u64, u64),
) -> ApiResult<Response> {
    let whole = start == 0 && len == size;
    let store = app.store.clone();
    let d = digest.clone();
    let read = tokio::task::spawn_blocking(move || store.read_range(&d, start, len))
        .await
        .map_err(ApiError::internal)?;
    let body = match read {
        Ok(BlobRange::InMemory(bytes)) => {
            if whole {
                app.store.small_blobs().insert(digest, bytes.clone());
            }
            Body::from(bytes)
        }
        Ok(BlobRange::Mapped(range)) => {
            // Each piece is mapped and faulted in on the blocking pool (a
            // blob not in the page cache is read from the disk there, not
            // on the thread serving other connections), the next one while
            // this one is sent.
            Body::from_stream(PieceStream::new(range))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let path = app.store.blob_path(digest);
            tracing::error!(path = %path.display(), %digest, "blob in the state has no file");
            return Err(blob_unknown());
        }
        Err(e) => return Err(e.into()),
    };
    Ok(blob_response(status, body, digest, start, len, size))
}

/// A GET of bytes `start..start + len` of a blob of `size` bytes in the
/// object store: a small whole blob is read into memory (and cached), a
/// larger range streamed as the store sends it; with `redirect`, a `307`
/// to a presigned URL instead.
async fn object_get(
    app: &App,
    objects: &crate::blobs::object::ObjectBlobs,
    digest: &Digest,
    (status, start, len, size): (StatusCode, u64, u64, u64),
) -> ApiResult<Response> {
    let key = app.state.read().objects.blobs.get(digest).cloned();
    let Some(key) = key else {
        tracing::error!(%digest, "blob in the state has no object key");
        return Err(blob_unknown());
    };
    if let Some(lifetime) = objects.redirect {
        let url = objects.presigned_get(&key, lifetime).await?;
        let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
        let h = r.headers_mut();
        h.insert(header::LOCATION, header_value(&url));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        digest_headers(h, digest);
        return Ok(r);
    }
    let whole = start == 0 && len == size;
    let body = if whole && len <= crate::blobs::read::READ_IN_MEMORY_BYTES_MAX {
        let bytes = objects.read_all(&key, len).await?;
        if bytes.len() as u64 != len {
            tracing::error!(%digest, %key, "object shorter than its blob");
            return Err(ApiError::internal("stored object has the wrong size"));
        }
        app.store.small_blobs().insert(digest, bytes.clone());
        Body::from(bytes)
    } else {
        Body::from_stream(objects.read_range(&key, start, len).await?)
    };
    Ok(blob_response(status, body, digest, start, len, size))
}

/// The answer to a blob GET or HEAD: `body` is bytes `start..start + len`
/// of a blob of `size` bytes.
fn blob_response(
    status: StatusCode,
    body: Body,
    digest: &Digest,
    start: u64,
    len: u64,
    size: u64,
) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{}/{size}", start + len - 1)),
        );
    }
    digest_headers(h, digest);
    response
}

pub async fn delete(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    digest: Digest,
) -> ApiResult<Response> {
    if !app.delete_enabled {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "deletes are disabled on this registry",
        ));
    }
    app.writer
        .submit(ctx.actor(), Command::UnlinkBlob { repo, digest })
        .await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("built from validated names and numbers")
}
