//! Request bodies: read whole (small, bounded) or streamed to a staging
//! file in large blocks, hashing as they go, never holding more than two
//! blocks in memory.

use axum::body::Body;
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::error::{ApiError, ErrorCode};
use crate::blobs::{StagingWriter, IO_BUFFER_BYTES};
use crate::oci::Hasher;

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("request body exceeds the limit of {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn read_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUploadInvalid,
        format!("reading the request body failed: {e}"),
    )
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_failed)?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and discards a body that carries nothing we use, so the
/// connection stays usable; bounded so it cannot be abused.
pub async fn drain(body: Body, limit: u64) -> Result<(), ApiError> {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        seen += chunk.map_err(read_failed)?.len() as u64;
        if seen > limit {
            return Err(too_large(limit));
        }
    }
    Ok(())
}

/// What streaming a body to a staging file produced.
pub struct Streamed {
    pub writer: StagingWriter,
    pub hasher: Hasher,
}

/// Streams `body` into `writer` (at its current position), updating
/// `hasher`, refusing more than `limit` bytes. Writing and hashing run on
/// the blocking pool, one block at a time, while the next block is read.
pub async fn stream_to_staging(
    body: Body,
    writer: StagingWriter,
    hasher: Hasher,
    limit: u64,
) -> Result<Streamed, ApiError> {
    let mut stream = body.into_data_stream();
    let mut state = Some((writer, hasher));
    let mut pending: Option<tokio::task::JoinHandle<std::io::Result<(StagingWriter, Hasher)>>> =
        None;
    let mut buf = BytesMut::with_capacity(IO_BUFFER_BYTES);
    let mut total = 0u64;
    let mut ended = false;
    while !ended {
        match stream.next().await {
            Some(chunk) => {
                let checked = match chunk {
                    Err(e) => Err(read_failed(e)),
                    Ok(c) if total + c.len() as u64 > limit => Err(too_large(limit)),
                    Ok(c) => Ok(c),
                };
                let chunk = match checked {
                    Ok(c) => c,
                    Err(error) => {
                        // Let an in-flight write finish, so the caller's
                        // clean-up of the staging file cannot race with it.
                        if let Some(p) = pending.take() {
                            let _ = p.await;
                        }
                        return Err(error);
                    }
                };
                total += chunk.len() as u64;
                buf.extend_from_slice(&chunk);
                if buf.len() < IO_BUFFER_BYTES {
                    continue;
                }
            }
            None => ended = true,
        }
        if buf.is_empty() {
            continue;
        }
        let (mut w, mut h) = match pending.take() {
            Some(p) => p.await.map_err(ApiError::internal)??,
            None => state.take().expect("writer is either pending or here"),
        };
        let block = buf.split().freeze();
        pending = Some(tokio::task::spawn_blocking(move || {
            h.update(&block);
            w.write(&block)?;
            Ok((w, h))
        }));
    }
    let (writer, hasher) = match pending.take() {
        Some(p) => p.await.map_err(ApiError::internal)??,
        None => state.take().expect("writer is either pending or here"),
    };
    Ok(Streamed { writer, hasher })
}
