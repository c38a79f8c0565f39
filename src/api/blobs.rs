//! `/v2/<name>/blobs/<digest>`: GET, HEAD (with `Range`), DELETE.
//!
//! Blobs are served only from repositories they are linked into. The
//! bytes come from [`BlobStore::read_range`](crate::blobs::BlobStore):
//! small ones read in one blocking task (and whole small blobs kept in a
//! bounded cache, [`SmallBlobCache`](crate::blobs::cache::SmallBlobCache),
//! consulted only after the repository's link to the blob is checked),
//! large ones memory-mapped piece by piece (each piece faulted in on the
//! blocking pool) and streamed without a copy (page cache, not the heap).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::manifests::digest_headers;
use super::ranges::{parse_range, ByteRange};
use super::request::RequestContext;
use super::App;
use crate::blobs::read::BlobRange;
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
    let body = if head {
        Body::empty()
    } else {
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
        let store = app.store.clone();
        let d = digest.clone();
        let read = tokio::task::spawn_blocking(move || store.read_range(&d, start, len))
            .await
            .map_err(ApiError::internal)?;
        match read {
            Ok(BlobRange::InMemory(bytes)) => {
                if whole {
                    app.store.small_blobs().insert(digest, bytes.clone());
                }
                Body::from(bytes)
            }
            Ok(BlobRange::Mapped(range)) => {
                // Each piece is mapped and faulted in on the blocking pool:
                // a blob not in the page cache is read from the disk there,
                // not on the thread serving other connections.
                let range = Arc::new(range);
                let pieces = futures_util::stream::iter(0..range.piece_count()).then(move |i| {
                    let range = range.clone();
                    async move {
                        tokio::task::spawn_blocking(move || range.map_piece(i))
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    }
                });
                Body::from_stream(pieces)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = app.store.blob_path(digest);
                tracing::error!(path = %path.display(), %digest, "blob in the state has no file");
                return Err(blob_unknown());
            }
            Err(e) => return Err(e.into()),
        }
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
