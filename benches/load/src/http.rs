//! The load client: one HTTP/1.1 keep-alive connection per worker over
//! loopback, with `TCP_NODELAY`, reconnecting when the server closes it.
//!
//! Every worker owns its connection, so the concurrency of a workload is
//! exactly its number of connections and there is no pool lock on the hot
//! path. Requests are built in origin form with a `Host` header.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Longest wait for a connect or a whole small request; a stuck server
/// fails the run instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e| match e {}).boxed_unsync()
}

/// A fully read response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Client {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Body>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let host =
            HeaderValue::from_str(&addr.to_string()).expect("a socket address is a valid Host");
        Client {
            addr,
            host,
            sender: None,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
            .await
            .map_err(|_| format!("connect to {} timed out", self.addr))??;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            // The connection ends when the server closes it or the
            // sender is dropped; either is normal here.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `request` (origin-form URI) and returns the response head
    /// with its body still unread.
    pub async fn send(
        &mut self,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        request
            .headers_mut()
            .insert(hyper::header::HOST, self.host.clone());
        let reusable = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("connected above");
        match sender.send_request(request).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.sender = None;
                Err(e.into())
            }
        }
    }

    /// Sends a request with a small body and reads the whole response.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, &str)],
        body: Option<Bytes>,
    ) -> Result<Reply, BoxError> {
        let mut builder = Request::builder().method(method.clone()).uri(path);
        for (name, value) in headers {
            builder = builder.header(name, *value);
        }
        let request = match body {
            Some(b) => builder
                .header(hyper::header::CONTENT_LENGTH, b.len())
                .body(full(b))?,
            None => builder.body(empty())?,
        };
        let exchange = async {
            let response = self.send(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<Reply, BoxError>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}").into())
            .and_then(|r| r.map_err(|e| BoxError::from(format!("{method} {path}: {e}"))));
        if result.is_err() {
            // The connection may be mid-exchange: never reuse it.
            self.sender = None;
        }
        result
    }

    /// Forgets the connection, e.g. after a response whose body was not read.
    pub fn reset(&mut self) {
        self.sender = None;
    }
}

/// The origin-form path and query of a `Location` header value, which may
/// be absolute (`http://host/v2/...`) or already a path.
pub fn location_path(location: &str) -> String {
    if let Some(rest) = location
        .strip_prefix("http://")
        .or_else(|| location.strip_prefix("https://"))
    {
        match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        }
    } else {
        location.to_owned()
    }
}

/// `path` with `key=value` appended to its query.
pub fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_paths() {
        assert_eq!(
            location_path("http://127.0.0.1:5000/v2/a/blobs/uploads/x?s=1"),
            "/v2/a/blobs/uploads/x?s=1"
        );
        assert_eq!(
            location_path("/v2/a/blobs/uploads/x"),
            "/v2/a/blobs/uploads/x"
        );
        assert_eq!(with_query("/u/x", "digest", "d"), "/u/x?digest=d");
        assert_eq!(with_query("/u/x?s=1", "digest", "d"), "/u/x?s=1&digest=d");
    }
}
