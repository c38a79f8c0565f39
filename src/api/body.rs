//! Request bodies: read whole (small, bounded) or streamed to a staging
//! file in large blocks, hashed and written in parallel, never holding
//! more than three blocks in memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream, HttpBody as _};
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;

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
/// `hasher`, refusing more than `limit` bytes. Each block is hashed and
/// written by two blocking tasks at once, so a block costs the slower of
/// the two rather than their sum, and the next block is read from the
/// connection meanwhile: at most three blocks are in memory (one being
/// read, one being hashed, one being written).
pub async fn stream_to_staging(
    body: Body,
    writer: StagingWriter,
    hasher: Hasher,
    limit: u64,
) -> Result<Streamed, ApiError> {
    let mut stream = body.into_data_stream();
    let mut pipe = Pipeline::new(writer, hasher);
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
                        let _ = pipe.finish().await;
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
        let block = buf.split().freeze();
        buf.reserve(IO_BUFFER_BYTES);
        pipe.push(block).await?;
    }
    pipe.finish().await
}

/// The two chains of blocking tasks behind [`stream_to_staging`]: block N
/// is hashed while it (or block N - 1) is written.
///
/// # Invariants
/// Between calls both stages are present; a stage is missing only after
/// a failed [`Pipeline::push`], which settles the other one first.
struct Pipeline {
    hashing: Option<Stage<Hasher>>,
    writing: Option<Stage<std::io::Result<StagingWriter>>>,
}

/// A value that is either here or being worked on by a blocking task.
enum Stage<T> {
    Ready(T),
    Busy(tokio::task::JoinHandle<T>),
}

impl<T: Send + 'static> Stage<T> {
    async fn wait(self) -> Result<T, ApiError> {
        match self {
            Stage::Ready(v) => Ok(v),
            Stage::Busy(task) => task.await.map_err(ApiError::internal),
        }
    }
}

fn stage_missing() -> ApiError {
    ApiError::internal("an upload stage failed before")
}

impl Pipeline {
    fn new(writer: StagingWriter, hasher: Hasher) -> Pipeline {
        Pipeline {
            hashing: Some(Stage::Ready(hasher)),
            writing: Some(Stage::Ready(Ok(writer))),
        }
    }

    /// Waits for the previous block's hash and starts this block's; then
    /// waits for the previous block's write and starts this block's. On an
    /// error nothing is left running.
    async fn push(&mut self, block: Bytes) -> Result<(), ApiError> {
        let mut hasher = match self.take_hasher().await {
            Ok(h) => h,
            Err(e) => {
                let _ = self.take_writer().await;
                return Err(e);
            }
        };
        let hashed = block.clone();
        self.hashing = Some(Stage::Busy(tokio::task::spawn_blocking(move || {
            hasher.update(&hashed);
            hasher
        })));
        let mut writer = match self.take_writer().await {
            Ok(w) => w,
            Err(e) => {
                let _ = self.take_hasher().await;
                return Err(e);
            }
        };
        self.writing = Some(Stage::Busy(tokio::task::spawn_blocking(move || {
            writer.write(&block)?;
            Ok(writer)
        })));
        Ok(())
    }

    /// Waits for both chains and returns what they produced.
    async fn finish(mut self) -> Result<Streamed, ApiError> {
        let hasher = self.take_hasher().await;
        let writer = self.take_writer().await;
        Ok(Streamed {
            writer: writer?,
            hasher: hasher?,
        })
    }

    async fn take_hasher(&mut self) -> Result<Hasher, ApiError> {
        self.hashing.take().ok_or_else(stage_missing)?.wait().await
    }

    async fn take_writer(&mut self) -> Result<StagingWriter, ApiError> {
        Ok(self
            .writing
            .take()
            .ok_or_else(stage_missing)?
            .wait()
            .await??)
    }
}

/// How much of a request body the server reads and discards after the
/// handler is done with it, so the connection can serve the next request
/// (Go's net/http does the same with 256 KiB). A longer tail closes the
/// connection, with `Connection: close` said out loud.
pub const DRAIN_AFTER_RESPONSE_BYTES_MAX: u64 = 256 * 1024;

/// A request body that stays reachable after the handler drops it, so
/// the router can drain what the handler left unread.
pub struct TrackedBody {
    slot: Arc<Mutex<Slot>>,
}

struct Slot {
    /// `None` once the body ended (or failed): nothing left to drain.
    body: Option<BodyDataStream>,
    /// Whether anyone asked for data (a client sending `Expect:
    /// 100-continue` only sends the body after that).
    polled: bool,
}

/// The router's handle on a [`TrackedBody`].
pub struct BodyTail {
    slot: Arc<Mutex<Slot>>,
}

/// What [`BodyTail::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The body was read to its end: the connection can be reused.
    Consumed,
    /// Too much was left, or it could not be read: close the connection.
    Abandoned,
}

impl TrackedBody {
    /// Wraps `body`; the handler gets the first half as a [`Body`].
    pub fn wrap(body: Body) -> (Body, BodyTail) {
        let slot = Arc::new(Mutex::new(Slot {
            body: Some(body.into_data_stream()),
            polled: false,
        }));
        let tracked = TrackedBody { slot: slot.clone() };
        (Body::from_stream(tracked), BodyTail { slot })
    }
}

impl futures_util::Stream for TrackedBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut slot = self.slot.lock();
        slot.polled = true;
        let Some(body) = slot.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = body.poll_next_unpin(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            slot.body = None;
        }
        polled
    }
}

impl BodyTail {
    /// Reads and discards what the handler left of the body, up to
    /// `limit` bytes. A body nobody asked for while the client waits for
    /// `100 Continue` is not solicited now: it is abandoned.
    pub async fn finish(self, expects_continue: bool, limit: u64) -> Tail {
        let mut body = {
            let mut slot = self.slot.lock();
            if expects_continue && !slot.polled && slot.body.is_some() {
                return Tail::Abandoned;
            }
            match slot.body.take() {
                None => return Tail::Consumed,
                Some(b) => b,
            }
        };
        if body.is_end_stream() {
            return Tail::Consumed;
        }
        let mut seen = 0u64;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => seen += c.len() as u64,
                Err(_) => return Tail::Abandoned,
            }
            if seen > limit {
                return Tail::Abandoned;
            }
        }
        Tail::Consumed
    }
}
