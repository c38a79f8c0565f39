//! A webhook receiver for the notification tests: a small hyper server on
//! 127.0.0.1 that records what it accepts, and misbehaves on purpose for a
//! while (answers 500, hangs past the sender's timeout, drops connections)
//! before it accepts. Only 2xx answers are recorded.
#![allow(dead_code)] // each test binary uses a different part of the support

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    Accept,
    /// Answers 500 to the first `n` requests.
    Fail500(usize),
    /// Holds the first `n` requests for `hold` (past the sender's timeout).
    Hang(usize, Duration),
    /// Closes the first `n` connections without answering.
    Drop(usize),
}

/// One accepted request.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub at_system: SystemTime,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

struct Inner {
    behaviour: Behaviour,
    /// When set, `Ferro-Signature` must be the body's HMAC-SHA256 with it.
    secret: Option<String>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    bad_signatures: AtomicUsize,
    accepted: Mutex<Vec<Received>>,
}

/// Checks `Ferro-Signature: sha256=<hex>` against the body, as a receiver
/// documented in docs/notifications.md would.
pub fn signature_ok(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(hex_sig) = headers
        .get("ferro-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &sig).is_ok()
}

impl Receiver {
    pub async fn start(behaviour: Behaviour, secret: Option<&str>) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour, secret).await
    }

    pub async fn start_on(
        addr: SocketAddr,
        behaviour: Behaviour,
        secret: Option<&str>,
    ) -> Receiver {
        Self::start_with(addr, behaviour, secret, None).await
    }

    /// An https receiver (its certificate is the acceptor's).
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Receiver {
        let addr = "127.0.0.1:0".parse().unwrap();
        Self::start_with(addr, Behaviour::Accept, None, Some(acceptor)).await
    }

    async fn start_with(
        addr: SocketAddr,
        behaviour: Behaviour,
        secret: Option<&str>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            behaviour,
            secret: secret.map(str::to_owned),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            bad_signatures: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        });
        let serving = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let n = serving.connections.fetch_add(1, Ordering::SeqCst);
                if let Behaviour::Drop(first) = serving.behaviour {
                    if n < first {
                        // Read a little of the request, then hang up.
                        let mut buf = [0u8; 64];
                        let _ = stream.readable().await;
                        let _ = stream.try_read(&mut buf);
                        drop(stream);
                        continue;
                    }
                }
                let inner = serving.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(inner.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.inner.accepted.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> usize {
        self.inner.bad_signatures.load(Ordering::SeqCst)
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let n = inner.requests.fetch_add(1, Ordering::SeqCst);
    let headers = req.headers().clone();
    let body = req.into_body().collect().await?.to_bytes();
    let answer = |status: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        Ok(r)
    };
    match inner.behaviour {
        Behaviour::Fail500(first) if n < first => return answer(StatusCode::INTERNAL_SERVER_ERROR),
        Behaviour::Hang(first, hold) if n < first => {
            tokio::time::sleep(hold).await;
            // The sender gave up long ago: not an acknowledgement.
            return answer(StatusCode::OK);
        }
        _ => {}
    }
    if let Some(secret) = &inner.secret {
        if !signature_ok(secret, &headers, &body) {
            inner.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return answer(StatusCode::UNAUTHORIZED);
        }
    }
    inner.accepted.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
        at_system: SystemTime::now(),
    });
    answer(StatusCode::OK)
}
