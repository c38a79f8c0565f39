//! `/v2/<name>/blobs/<digest>`: GET, HEAD (with `Range`), DELETE.
//!
//! Blobs are served only from repositories they are linked into, and
//! streamed from disk: never more than one buffer of a blob in memory.

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::manifests::digest_headers;
use super::ranges::{parse_range, ByteRange};
use super::router::RequestContext;
use super::App;
use crate::commands::Command;
use crate::oci::{Digest, RepoName};

/// Blobs up to this size are read in one go and sent as one buffer.
const SMALL_BLOB_BYTES: u64 = 64 * 1024;
const STREAM_BUFFER_BYTES: usize = 256 * 1024;

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
    let path = app.store.blob_path(digest);
    let body = if head {
        Body::empty()
    } else {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(path = %path.display(), %digest, "blob in the state has no file");
                return Err(blob_unknown());
            }
            Err(e) => return Err(e.into()),
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start)).await?;
        }
        if len <= SMALL_BLOB_BYTES {
            let mut buf = vec![0u8; len as usize];
            file.read_exact(&mut buf).await?;
            Body::from(buf)
        } else {
            Body::from_stream(ReaderStream::with_capacity(
                file.take(len),
                STREAM_BUFFER_BYTES,
            ))
        }
    };
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
    Ok(response)
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
