//! Request bodies that stall: a client that stops sending mid-body must
//! not hold a connection, and the upload session its request locked,
//! forever. [`Stalling::wrap`] fails the body when no bytes arrived for
//! `limits.body_read_timeout_ms`; the handler then ends as for any broken
//! body (the chunk is not acknowledged, the staging file is cut back, the
//! session lock is released).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

pub struct Stalling {
    inner: Body,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Stalling {
    pub fn wrap(inner: Body, timeout: Duration) -> Body {
        Body::new(Stalling {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        })
    }
}

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let timeout = self.timeout;
                    Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no request body bytes for {} ms", timeout.as_millis()),
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_stalled_body_fails() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let body = Stalling::wrap(Body::from_stream(stream), Duration::from_millis(100));
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        let mut s = body.into_data_stream();
        assert_eq!(s.next().await.unwrap().unwrap(), "abc");
        // Nothing more comes: after the timeout the body fails.
        let e = s.next().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("no request body bytes"), "{e}");
        drop(tx);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
