//! The upload paths when blob bytes live on the filesystem (`[storage]
//! backend = "filesystem"`, the default). The protocol around them
//! (sessions, bounds, ranges, answers) is the parent module's; only where
//! the bytes go differs.
//!
//! A chunk's bytes are streamed to the session's staging file, fsynced,
//! and only then logged (`AppendChunk`); the closing request links the
//! staging file into the store, logs the completion, and only then drops
//! the staging name (`BlobStore::link_staging`). A whole blob in one
//! request goes to a one-shot staging file beside its final name and is
//! renamed into place. These steps and their order are what the power-loss
//! tests (`tests/powerloss*.rs`) check.

use std::path::PathBuf;

use super::*;

/// `POST ?digest=`: a whole blob in one request.
pub(super) async fn monolithic(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: &RepoName,
    digest: &Digest,
    bounds: ChunkBounds,
    body: Body,
) -> ApiResult<Response> {
    let (repo, digest) = (repo.clone(), digest.clone());
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

/// `PATCH`: the body's bytes appended to the session's staging file,
/// fsynced, then logged with the chunk.
pub(super) async fn patch(
    app: &Arc<App>,
    ctx: &RequestContext,
    (repo, id, offset): (&RepoName, &str, u64),
    bounds: ChunkBounds,
    session: &mut crate::api::UploadSession,
    body: Body,
) -> ApiResult<Response> {
    let (repo, id) = (repo.clone(), id.to_owned());
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

/// `PUT …/uploads/<id>?digest=`: the last bytes, the link into the store,
/// the completion.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish(
    app: &Arc<App>,
    ctx: &RequestContext,
    (repo, id, offset): (&RepoName, &str, u64),
    digest: &Digest,
    bounds: ChunkBounds,
    session: &mut crate::api::UploadSession,
    body: Body,
) -> ApiResult<Response> {
    let (repo, id) = (repo.clone(), id.to_owned());
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
    let one_shot = app.store.one_shot_staging_path(digest, &id);
    let target = match offset {
        0 => Staging::OneShot(&one_shot),
        _ => Staging::Session(&staging, offset),
    };
    let (size, last_chunk, _guard) =
        match receive_and_commit(app, target, hasher, digest, body, bounds).await {
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
    app.sessions.remove(&id);
    Ok(blob_created(&repo, digest))
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

pub(super) async fn remove_staging(staging: &std::path::Path) {
    let path = staging.to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
}
