//! `/v2/<name>/blobs/uploads/...`: starting (and mounting), chunked PATCH,
//! status, the closing PUT, and cancel.
//!
//! Order of a chunk: its bytes made durable where the backend keeps them,
//! then the chunk event logged; only then is it acknowledged. After a
//! crash a staging file is cut back to the last logged chunk (see
//! `reconcile`), so the offset a client is told is always one the log
//! vouches for.
//!
//! The handlers here own the protocol (sessions, bounds, ranges, answers)
//! and never ask where blob bytes live: [`Receiver`] is the one place the
//! blob store's backend is looked at on the way in, and hands the bytes to
//! `file` (the filesystem) or `object` (an S3-compatible store).

mod file;
mod object;

pub use object::abort_multiparts;

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
use crate::blobs::object::SharedObjectBlobs;
use crate::blobs::{is_upload_id, new_upload_id, Backend, BlobStore, DigestGuard};
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
    Receiver::of(app)
        .monolithic(app, ctx, &repo, &digest, bounds, body)
        .await
}

/// Where an upload's bytes go: the blob store's backend, chosen once per
/// request. Each variant's paths live in their own module and take the
/// same arguments.
#[derive(Clone, Copy)]
enum Receiver<'a> {
    Files,
    Objects(&'a SharedObjectBlobs),
}

impl<'a> Receiver<'a> {
    fn of(app: &'a App) -> Receiver<'a> {
        match app.store.backend() {
            Backend::Filesystem => Receiver::Files,
            Backend::Object(objects) => Receiver::Objects(objects),
        }
    }

    /// A whole blob in one request (`POST ?digest=`).
    async fn monolithic(
        self,
        app: &Arc<App>,
        ctx: &RequestContext,
        repo: &RepoName,
        digest: &Digest,
        bounds: ChunkBounds,
        body: Body,
    ) -> ApiResult<Response> {
        match self {
            Receiver::Files => file::monolithic(app, ctx, repo, digest, bounds, body).await,
            Receiver::Objects(o) => {
                object::monolithic(app, ctx, o, repo, digest, bounds, body).await
            }
        }
    }

    /// A chunk of a session (`PATCH`), after its `offset` bytes.
    async fn patch(
        self,
        app: &Arc<App>,
        ctx: &RequestContext,
        at: (&RepoName, &str, u64),
        bounds: ChunkBounds,
        session: &mut super::UploadSession,
        body: Body,
    ) -> ApiResult<Response> {
        match self {
            Receiver::Files => file::patch(app, ctx, at, bounds, session, body).await,
            Receiver::Objects(o) => object::patch(app, ctx, o, at, bounds, session, body).await,
        }
    }

    /// The closing request of a session (`PUT ?digest=`).
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        self,
        app: &Arc<App>,
        ctx: &RequestContext,
        at: (&RepoName, &str, u64),
        digest: &Digest,
        bounds: ChunkBounds,
        session: &mut super::UploadSession,
        body: Body,
    ) -> ApiResult<Response> {
        match self {
            Receiver::Files => file::finish(app, ctx, at, digest, bounds, session, body).await,
            Receiver::Objects(o) => {
                object::finish(app, ctx, o, at, digest, bounds, session, body).await
            }
        }
    }
}

/// Frees what a session whose end (cancel, expiry) is already logged held:
/// its staging file and, in an object store, its multipart upload.
pub async fn release(app: &App, id: &str) -> Result<(), SubmitError> {
    file::remove_staging(&app.store.staging_path(id)).await;
    if let Receiver::Objects(objects) = Receiver::of(app) {
        abort_multiparts(&app.writer, &app.state, objects, &[id.to_owned()]).await?;
    }
    Ok(())
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
    let at = (&repo, id.as_str(), offset);
    Receiver::of(app)
        .patch(app, ctx, at, bounds, &mut session, body)
        .await
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
    let at = (&repo, id.as_str(), offset);
    Receiver::of(app)
        .finish(app, ctx, at, &digest, bounds, &mut session, body)
        .await
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
    release(app, &id).await?;
    drop(_session);
    app.sessions.remove(&id);
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}
