//! `/v2/<name>/blobs/<digest>`: GET, HEAD (with `Range`), DELETE.
//!
//! Blobs are served only from repositories they are linked into. The
//! bytes come from [`BlobStore::read_range`](crate::blobs::BlobStore):
//! small ones read in one blocking task (and whole small blobs kept in a
//! bounded cache, [`SmallBlobCache`](crate::blobs::cache::SmallBlobCache),
//! consulted only after the repository's link to the blob is checked),
//! large ones memory-mapped piece by piece (each piece mapped on the
//! blocking pool, the next while the current one is sent,
//! [`PieceStream`]) and streamed without a copy (page cache, not the heap):
//! with `sendfile = true`, on a plain HTTP connection with `sendfile`
//! from the file ([`crate::sendfile`]), otherwise from the map, faulted
//! in on the blocking pool.
//! On the object backend, blobs in the local-disk cache
//! ([`LocalCache`](crate::blobs::local_cache::LocalCache)) are read the
//! same way; the others come from the store, and a small one read whole
//! is kept there for the next reads.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::manifests::digest_headers;
use super::ranges::{parse_range, ByteRange};
use super::request::RequestContext;
use super::App;
use crate::blobs::read::{read_file_range, BlobRange};
use crate::blobs::stream::PieceStream;
use crate::blobs::{Backend, FillSource};
use crate::commands::Command;
use crate::oci::{Digest, RepoName};
use crate::sendfile::FileRegions;

fn blob_unknown() -> ApiError {
    ApiError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
}

/// A blob GET or HEAD; `sendfile`: the connection's regions when it
/// sends a large blob's pieces with `sendfile`.
pub async fn get(
    app: &App,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
    sendfile: Option<&FileRegions>,
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
            Backend::Filesystem => {
                file_get(app, digest, (status, start, len, size), sendfile).await
            }
            Backend::Object(objects) => {
                object_get(app, objects, digest, (status, start, len, size), sendfile).await
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
    sendfile: Option<&FileRegions>,
) -> ApiResult<Response> {
    let path = app.store.blob_path(digest);
    match read_file(path.clone(), start, len).await? {
        Ok(range) => {
            let body = range_body(app, digest, start == 0 && len == size, range, sendfile);
            Ok(blob_response(status, body, digest, start, len, size))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!(path = %path.display(), %digest, "blob in the state has no file");
            Err(blob_unknown())
        }
        Err(e) => Err(e.into()),
    }
}

/// Bytes `start..start + len` of the blob file at `path`, read (or
/// mapped) on the blocking pool.
async fn read_file(
    path: std::path::PathBuf,
    start: u64,
    len: u64,
) -> ApiResult<std::io::Result<BlobRange>> {
    tokio::task::spawn_blocking(move || read_file_range(&path, start, len))
        .await
        .map_err(ApiError::internal)
}

/// The body of a range read from a blob file; a whole small blob is
/// kept in the in-memory cache.
fn range_body(
    app: &App,
    digest: &Digest,
    whole: bool,
    range: BlobRange,
    sendfile: Option<&FileRegions>,
) -> Body {
    match range {
        BlobRange::InMemory(bytes) => {
            if whole {
                app.store.small_blobs().insert(digest, bytes.clone());
            }
            Body::from(bytes)
        }
        // Each piece is mapped on the blocking pool, the next one while
        // this one is sent. Without `sendfile` its pages are faulted in
        // there (a blob not in the page cache is read from the disk
        // there, not on the thread serving other connections); with it
        // they are only read ahead, and the connection sends them from
        // the page cache.
        BlobRange::Mapped(range) => Body::from_stream(PieceStream::new(range, sendfile.cloned())),
    }
}

/// A GET of bytes `start..start + len` of a blob of `size` bytes in the
/// object store: from the local-disk cache when it has the blob, as on
/// the filesystem; otherwise a small whole blob is read into memory (and
/// cached), a larger range streamed as the store sends it, and a whole
/// blob small enough for the local-disk cache kept there once all its
/// bytes have come; with `redirect`, a `307` to a presigned URL instead.
async fn object_get(
    app: &App,
    objects: &crate::blobs::object::ObjectBlobs,
    digest: &Digest,
    (status, start, len, size): (StatusCode, u64, u64, u64),
    sendfile: Option<&FileRegions>,
) -> ApiResult<Response> {
    let whole = start == 0 && len == size;
    let cache = app.store.local_cache();
    if let Some(cache) = cache.filter(|c| c.lookup(digest, size).is_some()) {
        let (c, d) = (cache.clone(), digest.clone());
        let read = tokio::task::spawn_blocking(move || c.read(&d, (start, len, size)))
            .await
            .map_err(ApiError::internal)?;
        match read {
            Ok(range) => {
                let body = range_body(app, digest, whole, range, sendfile);
                return Ok(blob_response(status, body, digest, start, len, size));
            }
            // Evicted since the lookup, or removed by hand: the store has it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => cache.forget(digest),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot serve a locally cached blob; asking the store");
                cache.forget(digest);
            }
        }
    }
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
    let fill = cache
        .filter(|c| whole && c.fits(size))
        .and_then(|c| c.begin_fill(digest, size));
    let body = if whole && len <= crate::blobs::read::READ_IN_MEMORY_BYTES_MAX {
        let bytes = objects.read_all(&key, len).await?;
        if bytes.len() as u64 != len {
            tracing::error!(%digest, %key, "object shorter than its blob");
            return Err(ApiError::internal("stored object has the wrong size"));
        }
        app.store.small_blobs().insert(digest, bytes.clone());
        if let Some(permit) = fill {
            let source = FillSource::Bytes(vec![bytes.clone()]);
            app.store
                .spawn_local_fill(&app.state, digest.clone(), source, Some(permit));
        }
        Body::from(bytes)
    } else {
        let stream = objects.read_range(&key, start, len).await?;
        match fill {
            Some(permit) => {
                let (store, state, d) = (app.store.clone(), app.state.clone(), digest.clone());
                let keep = move |pieces: Vec<Bytes>| {
                    store.spawn_local_fill(&state, d, FillSource::Bytes(pieces), Some(permit));
                };
                Body::from_stream(KeepingStream::new(stream, len, Box::new(keep)))
            }
            None => Body::from_stream(stream),
        }
    };
    Ok(blob_response(status, body, digest, start, len, size))
}

/// What a [`KeepingStream`] does with every piece of a body that came
/// whole.
type Keep = Box<dyn FnOnce(Vec<Bytes>) + Send>;

/// A body streamed from the store to the client that also keeps its
/// pieces (shared, not copied), and hands them to `keep` as soon as all
/// `len` bytes have come (the server stops polling a body once it has
/// sent its `Content-Length`, so the stream's end may never be seen). A
/// client gone early or an error drops them; the fill checks their
/// digest before it keeps anything.
struct KeepingStream {
    inner: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>,
    pieces: Vec<Bytes>,
    received: u64,
    len: u64,
    keep: Option<Keep>,
}

impl KeepingStream {
    fn new(
        inner: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>,
        len: u64,
        keep: Keep,
    ) -> KeepingStream {
        KeepingStream {
            inner,
            pieces: Vec::new(),
            received: 0,
            len,
            keep: Some(keep),
        }
    }
}

impl futures_util::Stream for KeepingStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(piece))) if this.keep.is_some() => {
                this.received += piece.len() as u64;
                this.pieces.push(piece.clone());
                if this.received == this.len {
                    if let Some(keep) = this.keep.take() {
                        keep(std::mem::take(&mut this.pieces));
                    }
                } else if this.received > this.len {
                    this.keep = None;
                    this.pieces = Vec::new();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                this.keep = None;
                this.pieces = Vec::new();
            }
            _ => {}
        }
        polled
    }
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
