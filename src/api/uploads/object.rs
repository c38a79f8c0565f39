//! The upload paths when blob bytes live in an object store (`[storage]
//! backend = "s3"`). The protocol around them (sessions, bounds, ranges,
//! answers) is the parent module's; only where the bytes go differs.
//!
//! A chunk's bytes go to the store as they arrive, as parts of
//! `part_size_bytes` of the upload's multipart upload (at most two parts
//! in memory: one being filled, one being sent), hashed on the way. What
//! is left at the end of a chunk, less than a part, is the upload's tail:
//! it is written to the session's staging file at its place in the upload
//! (the bytes before it, in parts, are a hole there) and fsynced, so every
//! part but the last is a whole part, as AWS S3 requires (≥ 5 MiB), however
//! small the client's chunks. The chunk is acknowledged once the store has
//! every part, the disk has the tail, and the log has the parts with the
//! chunk (`AppendParts`, or `AppendChunk` when no part was filled). The
//! next chunk that fills a part reads the tail back and sends it first;
//! the closing request sends the tail and its own bytes as the last part.
//! The multipart upload is opened, and logged, with the first part, at the
//! upload's own key, so completing it is the blob: no copy. A whole blob
//! of at most a part is one PutObject; once its completion is logged it
//! is kept in the local-disk cache (`blobs::local_cache`), when there is
//! one: its staging file moved there when it holds every byte, or the
//! bytes, in memory already, written there.
//!
//! Tail writes go only past the acknowledged size, so a crash before the
//! chunk is logged leaves the acknowledged tail intact; startup cuts the
//! file back to the logged size (`reconcile`).
//!
//! After a restart the running hash of a session is gone and the parts
//! cannot be read back before the upload is complete: the closing request
//! completes it and then hashes the object, deleting it (and storing
//! nothing) when it does not match.

use std::collections::VecDeque;

use axum::body::{Body, BodyDataStream};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use super::*;
use crate::blobs::object::{ObjectBlobs, SharedObjectBlobs, PARTS_MAX};
use crate::blobs::FillSource;
use crate::projection::StoredPart;

/// What streaming a body into parts produced.
struct Sent {
    /// Bytes streamed: the body's and those passed in before it.
    length: u64,
    /// The parts sent, in order.
    parts: Vec<StoredPart>,
    /// The bytes left over, less than a part (only when asked to keep
    /// them).
    tail: BytesMut,
}

/// The running checksums of a body.
struct Sums {
    /// `None` when the bytes before this body were not hashed here (an
    /// upload resumed after a restart).
    hasher: Option<Hasher>,
    crc: crc32fast::Hasher,
}

impl Sums {
    fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = self.hasher.as_mut() {
            h.update(bytes);
        }
        self.crc.update(bytes);
    }
}

fn read_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUploadInvalid,
        format!("reading the request body failed: {e}"),
    )
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("request body exceeds the limit of {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Reads up to `want` bytes of `stream`; says whether the body ended.
async fn read_up_to(
    stream: &mut BodyDataStream,
    want: usize,
    sums: &mut Sums,
    limit: u64,
) -> ApiResult<(BytesMut, bool)> {
    let mut buf = BytesMut::new();
    while buf.len() < want {
        match stream.next().await {
            None => return Ok((buf, true)),
            Some(Err(e)) => return Err(read_failed(e)),
            Some(Ok(c)) => {
                if (buf.len() + c.len()) as u64 > limit {
                    return Err(too_large(limit));
                }
                sums.update(&c);
                buf.extend_from_slice(&c);
            }
        }
    }
    Ok((buf, false))
}

/// A part being sent.
type PartInFlight = (
    u32,
    u64,
    tokio::task::JoinHandle<Result<String, crate::blobs::object::ObjectError>>,
);

/// Waits for the oldest part in flight and records it.
async fn settle(
    inflight: &mut VecDeque<PartInFlight>,
    parts: &mut Vec<StoredPart>,
) -> ApiResult<()> {
    if let Some((number, length, task)) = inflight.pop_front() {
        let etag = task.await.map_err(ApiError::internal)??;
        parts.push(StoredPart {
            number,
            length,
            etag,
        });
    }
    Ok(())
}

/// Streams `buf` and then the rest of `stream` into parts numbered from
/// `first` of a multipart upload, at most two parts in memory (one sent
/// while the next is read). `buf` was summed before (or is a tail read
/// back from the disk). With `keep_tail`, the bytes left at the end that
/// do not fill a part are returned instead of sent (a chunk that is not
/// the last); otherwise they are the last part. `limit` bounds what is
/// streamed, `buf` included. On an error, every part in flight is waited
/// for before returning, so a retry of the same part numbers cannot race
/// with it.
#[allow(clippy::too_many_arguments)]
async fn send_parts(
    objects: &SharedObjectBlobs,
    key: &str,
    multipart: &str,
    first: u32,
    mut buf: BytesMut,
    stream: &mut BodyDataStream,
    sums: &mut Sums,
    limit: u64,
    keep_tail: bool,
) -> ApiResult<Sent> {
    let part_bytes = objects.part_size_bytes as usize;
    let mut total = buf.len() as u64;
    let mut inflight: VecDeque<PartInFlight> = VecDeque::new();
    let mut parts = Vec::new();
    let mut number = first;
    let mut ended = false;
    let result: ApiResult<()> = async {
        while !ended || !buf.is_empty() {
            if !ended && buf.len() < part_bytes {
                match stream.next().await {
                    None => ended = true,
                    Some(Err(e)) => return Err(read_failed(e)),
                    Some(Ok(c)) => {
                        if total + c.len() as u64 > limit {
                            return Err(too_large(limit));
                        }
                        total += c.len() as u64;
                        sums.update(&c);
                        buf.extend_from_slice(&c);
                    }
                }
                continue;
            }
            if keep_tail && buf.len() < part_bytes {
                break; // ended, less than a part left: the tail
            }
            let bytes: Bytes = buf.split_to(buf.len().min(part_bytes)).freeze();
            if number > PARTS_MAX {
                return Err(ApiError::new(
                    ErrorCode::SizeInvalid,
                    format!("an upload is stored in at most {PARTS_MAX} parts"),
                ));
            }
            // One part in flight while the next one fills: two in memory.
            if !inflight.is_empty() {
                settle(&mut inflight, &mut parts).await?;
            }
            let (o, k, m) = (objects.clone(), key.to_owned(), multipart.to_owned());
            let length = bytes.len() as u64;
            let task = tokio::spawn(async move { o.put_part(&k, &m, number, bytes).await });
            inflight.push_back((number, length, task));
            number += 1;
        }
        while !inflight.is_empty() {
            settle(&mut inflight, &mut parts).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        for (_, _, task) in inflight {
            let _ = task.await;
        }
        return Err(e);
    }
    debug_assert!(
        !keep_tail || buf.len() < part_bytes,
        "only a partial part is kept"
    );
    debug_assert!(keep_tail || buf.is_empty(), "everything was sent");
    Ok(Sent {
        length: total,
        parts,
        tail: buf,
    })
}

/// The staged tail of upload `id`: bytes `from..to` of the upload, in its
/// staging file (less than a part).
async fn read_tail(app: &App, id: &str, from: u64, to: u64) -> ApiResult<BytesMut> {
    if to == from {
        return Ok(BytesMut::new());
    }
    let path = app.store.staging_path(id);
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::{Read as _, Seek as _};
        let mut f = std::fs::File::open(&path)?;
        f.seek(std::io::SeekFrom::Start(from))?;
        let mut buf = vec![0u8; (to - from) as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(BytesMut::from(&bytes[..]))
}

/// Writes `tail`, bytes `at..` of upload `id`, to its staging file (which
/// holds `offset` acknowledged bytes) and fsyncs it: see
/// `BlobStore::write_tail`.
async fn write_tail(app: &App, id: &str, offset: u64, at: u64, tail: Bytes) -> ApiResult<()> {
    let store = app.store.clone();
    let path = app.store.staging_path(id);
    tokio::task::spawn_blocking(move || store.write_tail(&path, offset, at, &tail))
        .await
        .map_err(ApiError::internal)??;
    Ok(())
}

/// The open multipart upload of `upload`: its key, id and next part
/// number; opened (and logged) now when it has none.
async fn open_multipart(
    app: &Arc<App>,
    ctx: &RequestContext,
    objects: &ObjectBlobs,
    upload: &str,
) -> ApiResult<(String, String, u32)> {
    let open = app.state.read().objects.multiparts.get(upload).cloned();
    if let Some(m) = open {
        return Ok((m.key, m.multipart, m.parts.len() as u32 + 1));
    }
    let key = objects.key_for_upload(upload);
    let multipart = objects.start_multipart(&key).await?;
    app.writer
        .submit(
            ctx.actor(),
            Command::StartMultipart {
                upload: upload.to_owned(),
                key: key.clone(),
                multipart: multipart.clone(),
            },
        )
        .await?;
    Ok((key, multipart, 1))
}

/// `PATCH`: the body's bytes, after the staged tail, as new whole parts;
/// what is left staged on the disk; all of it logged with the chunk.
pub(super) async fn patch(
    app: &Arc<App>,
    ctx: &RequestContext,
    objects: &SharedObjectBlobs,
    (repo, id, offset): (&RepoName, &str, u64),
    bounds: ChunkBounds,
    session: &mut crate::api::UploadSession,
    body: Body,
) -> ApiResult<Response> {
    objects.check_available()?;
    let hasher = match session.hasher.take() {
        _ if offset == 0 => Some(DigestAlgorithm::Sha256.hasher()),
        Some(h) if session.hashed_bytes == offset => Some(h),
        _ => None,
    };
    let mut sums = Sums {
        hasher,
        crc: crc32fast::Hasher::new(),
    };
    let part_bytes = objects.part_size_bytes;
    let in_parts = app.state.read().objects.parts_bytes(id);
    // The tail is under a part, unless part_size_bytes was lowered since
    // it was staged: then the next part simply starts with it.
    debug_assert!(in_parts <= offset, "parts hold only acknowledged bytes");
    let staged = offset.saturating_sub(in_parts);
    let mut stream = body.into_data_stream();
    // Read until the tail and the body fill a part, or the body ends.
    let want = part_bytes.saturating_sub(staged).max(1) as usize;
    let (first, ended) = read_up_to(&mut stream, want, &mut sums, bounds.limit).await?;
    if ended {
        let length = first.len() as u64;
        bounds.check_received(length)?;
        if length > 0 {
            // No part filled: the bytes join the tail on the disk.
            write_tail(app, id, offset, offset, first.freeze()).await?;
            let command = Command::AppendChunk {
                upload: id.to_owned(),
                offset,
                length,
                crc32: sums.crc.clone().finalize(),
            };
            if let Err(e) = app.writer.submit(ctx.actor(), command).await {
                // Not acknowledged: the file goes back to the logged size.
                cut_back(app, id, offset).await;
                return Err(e.into());
            }
        }
        session.hasher = sums.hasher;
        session.hashed_bytes = offset + length;
        return Ok(session_response(
            StatusCode::ACCEPTED,
            repo,
            id,
            offset + length,
        ));
    }
    // A part is full: the staged tail goes first.
    let mut buf = read_tail(app, id, in_parts, offset).await?;
    buf.extend_from_slice(&first);
    let (key, multipart, next) = open_multipart(app, ctx, objects, id).await?;
    let sent = send_parts(
        objects,
        &key,
        &multipart,
        next,
        buf,
        &mut stream,
        &mut sums,
        bounds.limit + staged,
        true,
    )
    .await?;
    let length = sent.length - staged;
    bounds.check_received(length)?;
    let sent_bytes: u64 = sent.parts.iter().map(|p| p.length).sum();
    write_tail(app, id, offset, in_parts + sent_bytes, sent.tail.freeze()).await?;
    let command = Command::AppendParts {
        upload: id.to_owned(),
        offset,
        length,
        crc32: sums.crc.clone().finalize(),
        parts: sent.parts,
    };
    if let Err(e) = app.writer.submit(ctx.actor(), command).await {
        cut_back(app, id, offset).await;
        return Err(e.into());
    }
    session.hasher = sums.hasher;
    session.hashed_bytes = offset + length;
    Ok(session_response(
        StatusCode::ACCEPTED,
        repo,
        id,
        offset + length,
    ))
}

/// Cuts a staging file back to the `offset` bytes the log acknowledged
/// (a failure is harmless: the next write, or startup, cuts it).
async fn cut_back(app: &App, id: &str, offset: u64) {
    let path = app.store.staging_path(id);
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(offset))
    })
    .await;
}

/// Where the bytes of a closing request went.
struct Stored {
    key: String,
    /// `Some` when they went to a multipart upload, now complete.
    multipart: Option<String>,
    /// Parts sent by this request (not yet logged).
    parts: Vec<StoredPart>,
    length: u64,
    crc32: u32,
    /// The whole blob, when it went to the store in one request (no
    /// multipart upload): its bytes were all in memory.
    whole: Option<Bytes>,
}

/// Why a closing request stored nothing.
enum NotStored {
    /// The bytes do not hash to the digest; nothing is in the store (a
    /// multipart upload was aborted, an object completed for a resumed
    /// upload deleted), the multipart upload, if any, is given back.
    Mismatch(ApiError, Option<String>),
    Failed(ApiError),
}

impl From<ApiError> for NotStored {
    fn from(e: ApiError) -> NotStored {
        NotStored::Failed(e)
    }
}

impl From<crate::blobs::object::ObjectError> for NotStored {
    fn from(e: crate::blobs::object::ObjectError) -> NotStored {
        NotStored::Failed(e.into())
    }
}

/// Receives the last bytes of `upload` (whose first bytes are already
/// stored as its open multipart upload's parts, if any, and `tail`, read
/// back from its staging file), checks them against `digest` and makes
/// them the object at the upload's key.
#[allow(clippy::too_many_arguments)]
async fn store_closing(
    app: &Arc<App>,
    ctx: &RequestContext,
    objects: &SharedObjectBlobs,
    upload: &str,
    digest: &Digest,
    hasher: Option<Hasher>,
    tail: BytesMut,
    bounds: ChunkBounds,
    body: Body,
) -> Result<Stored, NotStored> {
    objects.check_available()?;
    let mut sums = Sums {
        hasher,
        crc: crc32fast::Hasher::new(),
    };
    let mut stream = body.into_data_stream();
    let open = app.state.read().objects.multiparts.get(upload).cloned();
    let part_bytes = objects.part_size_bytes as usize;
    let staged = tail.len() as u64;
    let limit = bounds.limit + staged;
    let (key, multipart, earlier, sent) = match open {
        None => {
            let want = part_bytes.saturating_sub(tail.len()).max(1);
            let (first, ended) = read_up_to(&mut stream, want, &mut sums, bounds.limit).await?;
            let mut buf = tail;
            buf.extend_from_slice(&first);
            if ended {
                // The whole blob is here: one request, no multipart upload.
                let length = first.len() as u64;
                bounds.check_received(length)?;
                let computed = match sums.hasher.take() {
                    Some(h) => h.finish(),
                    // Resumed after a restart: every byte is in `buf`.
                    None => {
                        let mut h = digest.algorithm().hasher();
                        h.update(&buf);
                        h.finish()
                    }
                };
                if let Err(e) = check_digest(computed, digest) {
                    return Err(NotStored::Mismatch(e, None));
                }
                let key = objects.key_for_upload(upload);
                let whole = buf.freeze();
                objects.put_object(&key, whole.clone()).await?;
                return Ok(Stored {
                    key,
                    multipart: None,
                    parts: Vec::new(),
                    length,
                    crc32: sums.crc.finalize(),
                    whole: Some(whole),
                });
            }
            let (key, multipart, next) = open_multipart(app, ctx, objects, upload).await?;
            let sent = send_parts(
                objects,
                &key,
                &multipart,
                next,
                buf,
                &mut stream,
                &mut sums,
                limit,
                false,
            )
            .await?;
            (key, multipart, Vec::new(), sent)
        }
        Some(m) => {
            let next = m.parts.len() as u32 + 1;
            let sent = send_parts(
                objects,
                &m.key,
                &m.multipart,
                next,
                tail,
                &mut stream,
                &mut sums,
                limit,
                false,
            )
            .await?;
            (m.key, m.multipart, m.parts, sent)
        }
    };
    let length = sent.length - staged;
    bounds.check_received(length)?;
    let verified = match sums.hasher.take() {
        Some(h) => {
            if let Err(e) = check_digest(h.finish(), digest) {
                objects.abort_multipart(&key, &multipart).await?;
                return Err(NotStored::Mismatch(e, Some(multipart)));
            }
            true
        }
        None => false,
    };
    let etags = earlier
        .iter()
        .chain(&sent.parts)
        .map(|p| p.etag.clone())
        .collect();
    objects.complete_multipart(&key, &multipart, etags).await?;
    if !verified {
        // Resumed after a restart: hash what the store now holds.
        let computed = hash_object(objects, &key, digest).await?;
        if let Err(e) = check_digest(computed, digest) {
            objects.delete(&key).await?;
            return Err(NotStored::Mismatch(e, Some(multipart)));
        }
    }
    Ok(Stored {
        key,
        multipart: Some(multipart),
        parts: sent.parts,
        length,
        crc32: sums.crc.finalize(),
        whole: None,
    })
}

/// The digest of a stored object's bytes.
async fn hash_object(
    objects: &ObjectBlobs,
    key: &str,
    digest: &Digest,
) -> Result<Digest, NotStored> {
    let size = objects.head(key).await?;
    Ok(objects.digest_of(key, digest.algorithm(), size).await?)
}

/// After a blob's object is on the record: when the digest already had
/// an object, this upload's is a second copy, deleted now that the log
/// says which one holds the blob.
async fn drop_duplicate(app: &App, objects: &ObjectBlobs, digest: &Digest, key: &str) {
    let kept = app.state.read().objects.blobs.get(digest).cloned();
    if kept.as_deref() != Some(key) {
        if let Err(e) = objects.delete(key).await {
            tracing::warn!(%key, error = %e, "cannot delete a second copy of a blob; verify lists it");
        }
    }
}

/// `PUT …/uploads/<id>?digest=`: the last bytes, completion, the link.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish(
    app: &Arc<App>,
    ctx: &RequestContext,
    objects: &SharedObjectBlobs,
    (repo, id, offset): (&RepoName, &str, u64),
    digest: &Digest,
    bounds: ChunkBounds,
    session: &mut crate::api::UploadSession,
    body: Body,
) -> ApiResult<Response> {
    let hasher = match session.hasher.take() {
        _ if offset == 0 => Some(digest.algorithm().hasher()),
        Some(h) if session.hashed_bytes == offset && h.algorithm() == digest.algorithm() => Some(h),
        _ => None,
    };
    let in_parts = app.state.read().objects.parts_bytes(id);
    let tail = read_tail(app, id, in_parts, offset).await?;
    let closing = store_closing(app, ctx, objects, id, digest, hasher, tail, bounds, body);
    let stored = match closing.await {
        Ok(s) => s,
        Err(NotStored::Failed(e)) => return Err(e),
        Err(NotStored::Mismatch(e, multipart)) => {
            // The bytes are not what the client meant: the session ends
            // and nothing is stored (as on the filesystem).
            app.writer
                .submit(
                    ctx.actor(),
                    Command::CancelUpload {
                        upload: id.to_owned(),
                        reason: CancelReason::DigestMismatch,
                    },
                )
                .await?;
            if multipart.is_some() {
                app.writer
                    .submit(
                        ctx.actor(),
                        Command::AbortMultiparts {
                            uploads: vec![id.to_owned()],
                        },
                    )
                    .await?;
            }
            super::file::remove_staging(&app.store.staging_path(id)).await;
            app.sessions.remove(id);
            return Err(e);
        }
    };
    let _guard = app.store.locks().lock([digest]).await;
    let command = Command::CompleteObjectUpload {
        upload: id.to_owned(),
        digest: digest.clone(),
        size: offset + stored.length,
        last_chunk: Some(Chunk {
            offset,
            length: stored.length,
            crc32: stored.crc32,
        }),
        parts: stored.parts,
        key: stored.key.clone(),
    };
    app.writer.submit(ctx.actor(), command).await?;
    drop(_guard);
    // Completed on the record: the staged tail is in the object now, and
    // no longer needed but as the local cache's copy of a small blob.
    let staging = app.store.staging_path(id);
    let size = offset + stored.length;
    match (stored.whole, app.store.local_cache()) {
        // Every byte was staged by earlier chunks: the staging file is
        // the whole blob, moved into the cache.
        (Some(_), Some(cache)) if stored.length == 0 && size > 0 && cache.fits(size) => {
            let source = FillSource::File(staging);
            app.store
                .spawn_local_fill(&app.state, digest.clone(), source, None);
        }
        (Some(whole), Some(cache)) if cache.fits(size) => {
            super::file::remove_staging(&staging).await;
            let source = FillSource::Bytes(vec![whole]);
            app.store
                .spawn_local_fill(&app.state, digest.clone(), source, None);
        }
        _ => super::file::remove_staging(&staging).await,
    }
    drop_duplicate(app, objects, digest, &stored.key).await;
    let _ = stored.multipart;
    app.sessions.remove(id);
    Ok(blob_created(repo, digest))
}

/// `POST ?digest=`: a whole blob in one request, under a generated upload
/// id that no session has.
pub(super) async fn monolithic(
    app: &Arc<App>,
    ctx: &RequestContext,
    objects: &SharedObjectBlobs,
    repo: &RepoName,
    digest: &Digest,
    bounds: ChunkBounds,
    body: Body,
) -> ApiResult<Response> {
    let upload = new_upload_id();
    // Its multipart upload, if it needs one, is open in the state with no
    // session: a collection leaves it alone while this runs.
    let _in_progress = objects.begin(&upload);
    let hasher = Some(digest.algorithm().hasher());
    let tail = BytesMut::new();
    let closing = store_closing(
        app, ctx, objects, &upload, digest, hasher, tail, bounds, body,
    );
    let stored = match closing.await {
        Ok(s) => s,
        Err(NotStored::Failed(e)) => return Err(e),
        Err(NotStored::Mismatch(e, multipart)) => {
            if multipart.is_some() {
                app.writer
                    .submit(
                        ctx.actor(),
                        Command::AbortMultiparts {
                            uploads: vec![upload.clone()],
                        },
                    )
                    .await?;
            }
            return Err(e);
        }
    };
    let _guard = app.store.locks().lock([digest]).await;
    app.writer
        .submit(
            ctx.actor(),
            Command::LinkUploadedObject {
                repo: repo.clone(),
                digest: digest.clone(),
                size: stored.length,
                upload,
                key: stored.key.clone(),
            },
        )
        .await?;
    drop(_guard);
    if let (Some(whole), Some(cache)) = (stored.whole, app.store.local_cache()) {
        if cache.fits(stored.length) {
            let source = FillSource::Bytes(vec![whole]);
            app.store
                .spawn_local_fill(&app.state, digest.clone(), source, None);
        }
    }
    drop_duplicate(app, objects, digest, &stored.key).await;
    Ok(blob_created(repo, digest))
}

/// Aborts the open multipart uploads of `uploads` in the store, then logs
/// that they are gone. One the store cannot abort now stays open in the
/// state, for a later collection to retry.
pub async fn abort_multiparts(
    writer: &crate::log::LogWriter,
    state: &parking_lot::RwLock<crate::projection::State>,
    objects: &ObjectBlobs,
    uploads: &[String],
) -> Result<usize, crate::log::SubmitError> {
    let open: Vec<(String, String, String)> = {
        let state = state.read();
        uploads
            .iter()
            .filter_map(|u| {
                state
                    .objects
                    .multiparts
                    .get(u)
                    .map(|m| (u.clone(), m.key.clone(), m.multipart.clone()))
            })
            .collect()
    };
    let mut aborted = Vec::new();
    for (upload, key, multipart) in open {
        match objects.abort_multipart(&key, &multipart).await {
            Ok(()) => {
                // An upload completed by the store just before a crash
                // left an object behind that no blob names.
                let named = state.read().objects.blobs.values().any(|k| *k == key);
                if !named {
                    if let Err(e) = objects.delete(&key).await {
                        tracing::warn!(%key, error = %e, "cannot delete an abandoned upload's object");
                    }
                }
                aborted.push(upload);
            }
            Err(e) => {
                tracing::warn!(%upload, error = %e, "cannot abort a multipart upload; a collection will retry");
            }
        }
    }
    let n = aborted.len();
    if n > 0 {
        writer
            .submit(
                crate::events::Actor::system(),
                Command::AbortMultiparts { uploads: aborted },
            )
            .await?;
    }
    Ok(n)
}
