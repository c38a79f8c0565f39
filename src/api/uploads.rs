//! `/v2/<name>/blobs/uploads/...`: starting (and mounting), chunked PATCH,
//! status, the closing PUT, and cancel.
//!
//! Order of a chunk: bytes streamed to the staging file, fsynced, then the
//! chunk event logged; only then is it acknowledged. After a crash the
//! staging file is cut back to the last logged chunk (see `server`), so the
//! offset a client is told is always one the log vouches for.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::blobs::header_value;
use super::body::{drain, read_limited, stream_to_staging};
use super::error::{ApiError, ApiResult, ErrorCode};
use super::manifests::digest_headers;
use super::ranges::parse_content_range;
use super::request::{query_param, RequestContext};
use super::App;
use crate::blobs::{is_upload_id, new_upload_id, BlobStore, DigestGuard};
use crate::commands::{Chunk, Command, Rejection};
use crate::events::CancelReason;
use crate::log::SubmitError;
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepoName};

/// A POST that opens a session carries no data; more than this is refused.
const EMPTY_BODY_BYTES_MAX: u64 = 64 * 1024;

fn upload_unknown() -> ApiError {
    ApiError::new(
        ErrorCode::BlobUploadUnknown,
        "blob upload unknown to registry",
    )
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>`; `0-0` for an empty upload, as distribution does
/// and clients expect.
fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session_response(status: StatusCode, repo: &RepoName, id: &str, size: u64) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, header_value(&upload_location(repo, id)));
    h.insert(header::RANGE, header_value(&range_header(size)));
    h.insert("Docker-Upload-UUID", header_value(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{repo}/blobs/{digest}")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    digest_headers(h, digest);
    r
}

/// `POST /v2/<name>/blobs/uploads/` with `?mount=&from=`, `?digest=` or
/// nothing.
pub async fn start(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let monolithic_digest = query_param(query, "digest");
    // Without ?digest= the POST carries no data: read (bounded) and drop the
    // body before anything changes, so a refusal cannot follow a success.
    let body = match monolithic_digest {
        Some(_) => body,
        None => {
            drain(body, EMPTY_BODY_BYTES_MAX).await?;
            Body::empty()
        }
    };
    if let Some(mount) = query_param(query, "mount") {
        let digest = Digest::parse(&mount)?;
        let from = query_param(query, "from")
            .map(|f| RepoName::parse(&f))
            .transpose()?;
        let command = Command::MountBlob {
            repo: repo.clone(),
            digest: digest.clone(),
            from,
        };
        match app.writer.submit(ctx.actor(), command).await {
            Ok(_) => return Ok(blob_created(&repo, &digest)),
            // Cannot mount: open an ordinary session instead (the spec's 202).
            Err(SubmitError::Rejected(Rejection::MountSourceMissing)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(d) = monolithic_digest {
        let digest = Digest::parse(&d)?;
        return monolithic(app, ctx, repo, digest, headers, body).await;
    }
    let id = new_upload_id();
    app.writer
        .submit(
            ctx.actor(),
            Command::StartUpload {
                repo: repo.clone(),
                upload: id.clone(),
            },
        )
        .await?;
    Ok(session_response(StatusCode::ACCEPTED, &repo, &id, 0))
}

/// A whole blob in one `POST ?digest=`.
async fn monolithic(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    digest: Digest,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bounds = ChunkBounds {
        limit: chunk_limit(app, 0),
        expected: content_length(headers)?,
    };
    bounds.check_announced()?;
    let staging = app.store.one_shot_staging_path(&digest, &new_upload_id());
    let result = receive_and_commit(
        app,
        Staging::OneShot(&staging),
        digest.algorithm().hasher(),
        &digest,
        body,
        bounds,
    )
    .await;
    let (size, _, _guard) = match result {
        Ok(r) => r,
        Err(e) => {
            remove_staging(&staging).await;
            return Err(e);
        }
    };
    app.writer
        .submit(
            ctx.actor(),
            Command::LinkUploadedBlob {
                repo: repo.clone(),
                digest: digest.clone(),
                size,
            },
        )
        .await?;
    Ok(blob_created(&repo, &digest))
}

/// How long a request body may be, and how long it said it is.
#[derive(Debug, Clone, Copy)]
struct ChunkBounds {
    limit: u64,
    expected: Option<u64>,
}

impl ChunkBounds {
    /// Refuses a body whose announced length is over the limit, before a
    /// byte of it is read.
    fn check_announced(self) -> ApiResult<()> {
        match self.expected {
            Some(l) if l > self.limit => Err(ApiError::new(
                ErrorCode::SizeInvalid,
                format!("chunk exceeds the limit of {} bytes", self.limit),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)),
            _ => Ok(()),
        }
    }

    /// Refuses a body that was not as long as announced (possible when it
    /// came without `Content-Length` but with a `Content-Range`).
    fn check_received(self, length: u64) -> ApiResult<()> {
        match self.expected {
            Some(l) if l != length => Err(ApiError::new(
                ErrorCode::SizeInvalid,
                format!("received {length} bytes, the request announced {l}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Where the bytes of a closing request go.
#[derive(Debug, Clone, Copy)]
enum Staging<'a> {
    /// A new file beside the blob's final name, for a whole blob in one
    /// request (`BlobStore::one_shot_staging_path`).
    OneShot(&'a std::path::Path),
    /// The session's staging file, after the `offset` bytes it holds.
    Session(&'a std::path::Path, u64),
}

/// Streams `body` to `staging` after its first `offset` bytes (whose hash is
/// `hasher`), checks length and digest, fsyncs and commits the file to the
/// store: a one-shot file is renamed into it; a session's file is linked
/// into it and keeps its staging name until the caller has logged the
/// completion (`BlobStore::link_staging`). Returns the blob's size, the last chunk (the bytes of this
/// body) and the digest's lock, taken before the commit: the caller holds
/// it until the link is logged, so garbage collection cannot delete the
/// file in between.
async fn receive_and_commit(
    app: &Arc<App>,
    staging: Staging<'_>,
    hasher: Hasher,
    digest: &Digest,
    body: Body,
    bounds: ChunkBounds,
) -> ApiResult<(u64, Chunk, DigestGuard)> {
    if let (Staging::OneShot(path), Some(expected)) = (staging, bounds.expected) {
        if expected <= SMALL_ONE_SHOT_BYTES_MAX {
            return receive_small_and_commit(app, path, hasher, digest, body, bounds).await;
        }
    }
    let store = app.store.clone();
    let (path, offset) = match staging {
        Staging::OneShot(p) => (p.to_owned(), 0),
        Staging::Session(p, offset) => (p.to_owned(), offset),
    };
    let one_shot = matches!(staging, Staging::OneShot(_));
    let writer = tokio::task::spawn_blocking(move || match one_shot {
        true => store.open_one_shot_staging(&path),
        false => store.open_staging(&path, offset),
    })
    .await
    .map_err(ApiError::internal)??;
    let streamed = stream_to_staging(body, writer, hasher, bounds.limit).await?;
    let length = streamed.writer.written;
    bounds.check_received(length)?;
    check_digest(streamed.hasher.finish(), digest)?;
    let store = app.store.clone();
    let d = digest.clone();
    let crc32 = streamed.writer.crc.clone().finalize();
    let guard = app.store.locks().lock([digest]).await;
    tokio::task::spawn_blocking(move || match one_shot {
        true => store.commit_staging(streamed.writer, &d),
        false => store.link_staging(streamed.writer, &d),
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((
        offset + length,
        Chunk {
            offset,
            length,
            crc32,
        },
        guard,
    ))
}

/// Whole blobs in one request up to this size (configs, small layers:
/// most blobs of most images) are read into memory and hashed there, then
/// written, fsynced and committed by one blocking task: a streamed upload
/// takes four trips through the blocking pool (open, hash, write,
/// commit), and at this size the thread switches cost more than the I/O.
const SMALL_ONE_SHOT_BYTES_MAX: u64 = 64 * 1024;

/// [`receive_and_commit`] for a one-shot body announced at most
/// [`SMALL_ONE_SHOT_BYTES_MAX`] long. The same file operations in the
/// same order; a body whose digest does not match never reaches the disk.
async fn receive_small_and_commit(
    app: &Arc<App>,
    path: &std::path::Path,
    mut hasher: Hasher,
    digest: &Digest,
    body: Body,
    bounds: ChunkBounds,
) -> ApiResult<(u64, Chunk, DigestGuard)> {
    let bytes = read_limited(body, bounds.limit.min(SMALL_ONE_SHOT_BYTES_MAX)).await?;
    let length = bytes.len() as u64;
    bounds.check_received(length)?;
    hasher.update(&bytes);
    check_digest(hasher.finish(), digest)?;
    let store = app.store.clone();
    let (path, d) = (path.to_owned(), digest.clone());
    let guard = app.store.locks().lock([digest]).await;
    let crc32 = tokio::task::spawn_blocking(move || -> std::io::Result<u32> {
        let mut writer = store.open_one_shot_staging(&path)?;
        writer.write(&bytes)?;
        let crc32 = writer.crc.clone().finalize();
        store.commit_staging(writer, &d)?;
        Ok(crc32)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((
        length,
        Chunk {
            offset: 0,
            length,
            crc32,
        },
        guard,
    ))
}

/// DIGEST_INVALID unless the bytes received hash to the digest asked for.
fn check_digest(computed: Digest, digest: &Digest) -> ApiResult<()> {
    if computed == *digest {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::DigestInvalid,
        format!("uploaded content has digest {computed}, not {digest}"),
    ))
}

/// Looks up an upload of `repo`, or answers BLOB_UPLOAD_UNKNOWN.
fn upload_size(app: &App, repo: &RepoName, id: &str) -> ApiResult<u64> {
    if !is_upload_id(id) {
        return Err(upload_unknown());
    }
    let state = app.state.read();
    match state.uploads.get(id) {
        Some(u) if u.repo == *repo => Ok(u.size),
        _ => Err(upload_unknown()),
    }
}

pub fn status(app: &App, repo: &RepoName, id: &str) -> ApiResult<Response> {
    let size = upload_size(app, repo, id)?;
    Ok(session_response(StatusCode::NO_CONTENT, repo, id, size))
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::new(ErrorCode::SizeInvalid, "Content-Length is not a number")),
    }
}

/// The most bytes one request may add to an upload that has `offset`.
fn chunk_limit(app: &App, offset: u64) -> u64 {
    app.limits
        .chunk_bytes_max
        .min(app.limits.blob_bytes_max.saturating_sub(offset))
}

/// The length a chunk request announces (`Content-Length`, and
/// `Content-Range` when present, which must agree with it and must start
/// where the upload ends: otherwise 416 with the upload's current state).
fn chunk_length(
    headers: &HeaderMap,
    repo: &RepoName,
    id: &str,
    offset: u64,
) -> ApiResult<Option<u64>> {
    let declared = content_length(headers)?;
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(declared);
    };
    let (start, end) = v
        .to_str()
        .ok()
        .and_then(parse_content_range)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BlobUploadInvalid,
                "Content-Range must be <start>-<end>",
            )
        })?;
    if start != offset {
        return Err(ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("chunk starts at {start}, the upload has {offset} bytes"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(header::RANGE, &range_header(offset))
        .with_header(header::LOCATION, &upload_location(repo, id))
        .with_header("Docker-Upload-UUID".try_into().expect("valid"), id));
    }
    let len = end - start + 1;
    if declared.is_some_and(|d| d != len) {
        return Err(ApiError::new(
            ErrorCode::SizeInvalid,
            "Content-Length does not match Content-Range",
        ));
    }
    Ok(Some(len))
}

pub async fn patch(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    id: String,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    upload_size(app, &repo, &id)?;
    let session = app.sessions.get(&id);
    let mut session = session.lock().await;
    // Re-read under the session lock: another request may have moved it.
    let offset = upload_size(app, &repo, &id)?;
    let bounds = ChunkBounds {
        limit: chunk_limit(app, offset),
        expected: chunk_length(headers, &repo, &id, offset)?,
    };
    bounds.check_announced()?;
    let staging = app.store.staging_path(&id);
    let hasher = match session.hasher.take() {
        Some(h) if session.hashed_bytes == offset => h,
        _ => {
            DigestAlgorithm::Sha256
                .hasher_for_prefix(&staging, offset)
                .await?
        }
    };
    let path = staging.clone();
    let store = app.store.clone();
    let writer = tokio::task::spawn_blocking(move || store.open_staging(&path, offset))
        .await
        .map_err(ApiError::internal)??;
    let streamed = match stream_to_staging(body, writer, hasher, bounds.limit).await {
        Ok(s) => s,
        Err(e) => {
            cut_back(&staging, offset).await;
            return Err(e);
        }
    };
    let length = streamed.writer.written;
    if let Err(e) = bounds.check_received(length) {
        cut_back(&staging, offset).await;
        return Err(e);
    }
    let crc32 = streamed.writer.crc.clone().finalize();
    let file = streamed.writer.file;
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.make_chunk_durable(&*file, offset))
        .await
        .map_err(ApiError::internal)??;
    if length > 0 {
        let command = Command::AppendChunk {
            upload: id.clone(),
            offset,
            length,
            crc32,
        };
        if let Err(e) = app.writer.submit(ctx.actor(), command).await {
            cut_back(&staging, offset).await;
            return Err(e.into());
        }
    }
    session.hasher = Some(streamed.hasher);
    session.hashed_bytes = offset + length;
    Ok(session_response(
        StatusCode::ACCEPTED,
        &repo,
        &id,
        offset + length,
    ))
}

/// Cuts a staging file back to what the log acknowledged.
async fn cut_back(staging: &std::path::Path, offset: u64) {
    let path = staging.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(offset))
    })
    .await;
}

impl DigestAlgorithm {
    /// The hash of the first `len` bytes of a staging file, computed off the
    /// async threads.
    async fn hasher_for_prefix(self, path: &std::path::Path, len: u64) -> ApiResult<Hasher> {
        if len == 0 {
            return Ok(self.hasher());
        }
        let path: PathBuf = path.to_owned();
        tokio::task::spawn_blocking(move || BlobStore::hash_file_prefix(&path, len, self))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: the last chunk (optional)
/// and completion.
pub async fn finish(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    id: String,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    upload_size(app, &repo, &id)?;
    let digest = query_param(query, "digest").ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required",
        )
    })?;
    let digest = Digest::parse(&digest)?;
    let session = app.sessions.get(&id);
    let mut session = session.lock().await;
    let offset = upload_size(app, &repo, &id)?;
    let bounds = ChunkBounds {
        limit: chunk_limit(app, offset),
        expected: chunk_length(headers, &repo, &id, offset)?,
    };
    bounds.check_announced()?;
    let staging = app.store.staging_path(&id);
    let hasher = match session.hasher.take() {
        Some(h) if session.hashed_bytes == offset && h.algorithm() == digest.algorithm() => h,
        _ => {
            digest
                .algorithm()
                .hasher_for_prefix(&staging, offset)
                .await?
        }
    };
    // A session with no bytes yet gets the whole blob in this request:
    // it goes to a one-shot staging file, as a `POST ?digest=` does.
    let one_shot = app.store.one_shot_staging_path(&digest, &id);
    let target = match offset {
        0 => Staging::OneShot(&one_shot),
        _ => Staging::Session(&staging, offset),
    };
    let (size, last_chunk, _guard) =
        match receive_and_commit(app, target, hasher, &digest, body, bounds).await {
            Ok(r) => r,
            Err(e) if e.code == Some(ErrorCode::DigestInvalid) => {
                // The bytes are not what the client meant: the session ends and
                // nothing is stored (distribution does the same).
                app.writer
                    .submit(
                        ctx.actor(),
                        Command::CancelUpload {
                            upload: id.clone(),
                            reason: CancelReason::DigestMismatch,
                        },
                    )
                    .await?;
                if offset == 0 {
                    remove_staging(&one_shot).await;
                }
                remove_staging(&staging).await;
                app.sessions.remove(&id);
                return Err(e);
            }
            Err(e) if offset == 0 => {
                remove_staging(&one_shot).await;
                return Err(e);
            }
            Err(e) => {
                restore_staging(app, &staging, offset).await;
                return Err(e);
            }
        };
    let command = Command::CompleteUpload {
        upload: id.clone(),
        digest: digest.clone(),
        size,
        last_chunk: Some(last_chunk),
    };
    if let Err(e) = app.writer.submit(ctx.actor(), command).await {
        // Not completed: the upload goes on from its logged size, in a file
        // of its own (the blob keeps the linked one).
        if offset > 0 {
            restore_staging(app, &staging, offset).await;
        }
        return Err(e.into());
    }
    // Completed on the record: the staging name (the session's file, now
    // also the blob's, or one an empty PATCH made) is no longer needed.
    if offset > 0 || staging.exists() {
        remove_staging(&staging).await;
    }
    drop(session);
    app.sessions.remove(&id);
    Ok(blob_created(&repo, &digest))
}

/// Brings a session's staging file back to the `offset` bytes the log
/// acknowledged after a closing step that did not complete
/// (`BlobStore::restore_staging`). A failure is logged: the next request
/// on the session, or startup, does it again.
async fn restore_staging(app: &Arc<App>, staging: &std::path::Path, offset: u64) {
    let store = app.store.clone();
    let path = staging.to_owned();
    let result = tokio::task::spawn_blocking(move || store.restore_staging(&path, offset)).await;
    if let Ok(Err(e)) = result {
        tracing::warn!(file = %staging.display(), error = %e, "cannot bring an upload's staging file back to its logged size");
    }
}

async fn remove_staging(staging: &std::path::Path) {
    let path = staging.to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
}

pub async fn cancel(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    id: String,
) -> ApiResult<Response> {
    upload_size(app, &repo, &id)?;
    let session = app.sessions.get(&id);
    let _session = session.lock().await;
    upload_size(app, &repo, &id)?;
    app.writer
        .submit(
            ctx.actor(),
            Command::CancelUpload {
                upload: id.clone(),
                reason: CancelReason::ClientDeleted,
            },
        )
        .await?;
    remove_staging(&app.store.staging_path(&id)).await;
    drop(_session);
    app.sessions.remove(&id);
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}
