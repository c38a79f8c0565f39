//! What surrounds the registry's routes: a request id (`x-request-id`,
//! taken from the request or made, echoed in the response, on every log
//! line of the request: see `logline`), an access log line,
//! request metrics, the stalled-body timeout; `/healthz`, `/readyz` and
//! `/metrics`; and the [`Gate`] that answers 503 until the registry is
//! ready.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use bytes::Bytes;
use tower::{Service, ServiceExt as _};

use super::error::{ApiError, ErrorCode};
use super::router::{self, router};
use super::stall::Stalling;
use super::App;
use crate::logline::RequestLabel;
use crate::metrics::{Counted, Direction};
use crate::sendfile::FileRegions;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Switches the server from "starting" to the registry once it is ready,
/// and to "draining" on shutdown.
#[derive(Default)]
pub struct Gate {
    ready: OnceLock<(Router, Arc<App>)>,
    draining: AtomicBool,
    /// What startup is waiting for, when it is not the log (`/readyz`).
    waiting_for: parking_lot::Mutex<Option<String>>,
}

impl Gate {
    /// From now on requests reach `app`.
    pub fn open(&self, app: Arc<App>) {
        let _ = self.ready.set((router(app.clone()), app));
    }

    /// Startup waits for something other than the log: `/readyz` says
    /// what (`None`: the log again).
    pub fn set_waiting_for(&self, what: Option<String>) {
        *self.waiting_for.lock() = what;
    }

    /// Shutting down: `/readyz` answers 503 (requests are still served).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get().is_some() && !self.draining.load(Ordering::Acquire)
    }

    fn app(&self) -> Option<&Arc<App>> {
        self.ready.get().map(|(_, app)| app)
    }
}

/// Everything the server answers, with request ids, tracing, metrics and
/// the stalled-body timeout around it. With `access_log`, one line per
/// request (status, latency) at the end of it.
///
/// One hand-written pass rather than a stack of layers and an outer
/// router: every request goes through it, and each layer cost a future,
/// an allocation or a lookup of its own (a HEAD by tag took about twice
/// the CPU of the route itself).
pub fn front(gate: Arc<Gate>, body_read_timeout: Duration, access_log: bool) -> Front {
    Front {
        shared: Arc::new(Shared {
            gate,
            body_read_timeout,
            access_log,
        }),
        peer: None,
        sendfile: None,
    }
}

/// The service [`front`] makes; cheap to clone (one per connection).
#[derive(Clone)]
pub struct Front {
    shared: Arc<Shared>,
    /// The connection's peer, when this copy serves one connection.
    /// Without it a request must carry its `ConnectInfo` extension.
    peer: Option<SocketAddr>,
    /// The connection's file regions, when it sends blob pieces with
    /// `sendfile` (plain HTTP).
    sendfile: Option<FileRegions>,
}

impl Front {
    /// The copy that serves one connection from `peer`, which sends blob
    /// pieces registered in `sendfile` with `sendfile(2)` when given.
    /// Handed over as fields rather than as request extensions: an
    /// extension costs each request a map allocation, and only the axum
    /// routes read the peer.
    pub fn serving(&self, peer: SocketAddr, sendfile: Option<FileRegions>) -> Front {
        Front {
            shared: self.shared.clone(),
            peer: Some(peer),
            sendfile,
        }
    }
}

struct Shared {
    gate: Arc<Gate>,
    body_read_timeout: Duration,
    access_log: bool,
}

impl<B> Service<axum::http::Request<B>> for Front
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let peer = self.peer;
        let sendfile = self.sendfile.clone();
        Box::pin(async move { Ok(shared.answer(req.map(Body::new), peer, sendfile).await) })
    }
}

impl Shared {
    /// Request id in, the request named on its log lines, metrics and
    /// access log after, id out.
    async fn answer(
        &self,
        req: Request,
        peer: Option<SocketAddr>,
        sendfile: Option<FileRegions>,
    ) -> Response {
        let started = Instant::now();
        // Nothing after this reads the id from the request: it is only
        // echoed in the response and written in log lines.
        let id = match req.headers().get(REQUEST_ID) {
            Some(id) => id.clone(),
            None => make_request_id(),
        };
        let method = method_label(req.method());
        let label = RequestLabel {
            id,
            method,
            uri: req.uri().clone(),
        };
        let req = if req.body().is_end_stream() {
            req
        } else {
            req.map(|b| Counted::wrap(Stalling::wrap(b, self.body_read_timeout), Direction::In))
        };
        let in_flight = crate::metrics::in_flight();
        in_flight.increment(1.0);
        // Every line written in there names the request (`logline`); the
        // label, moved into the future, is taken back for the access log
        // and the response.
        let mut routed = std::pin::pin!(label.scope(self.route(req, peer, sendfile)));
        let (route, mut response) = routed.as_mut().await;
        in_flight.decrement(1.0);
        let elapsed = started.elapsed();
        crate::metrics::record_request(route, method, response.status(), elapsed);
        let label = routed.take_value().expect("taken once, here");
        if self.access_log {
            label.in_scope(|| {
                tracing::info!(
                    status = response.status().as_u16(),
                    latency_us = elapsed.as_micros() as u64,
                    "answered"
                )
            });
        }
        response.headers_mut().insert(REQUEST_ID, label.id);
        Counted::wrap_response(response)
    }

    /// The fixed endpoints, or the registry once the gate is open, with
    /// the label of the route for metrics (the OCI dispatch names its
    /// own).
    async fn route(
        &self,
        mut req: Request,
        peer: Option<SocketAddr>,
        sendfile: Option<FileRegions>,
    ) -> (&'static str, Response) {
        let fixed = match req.uri().path() {
            "/healthz" => Some("healthz"),
            "/readyz" => Some("readyz"),
            "/metrics" => Some("metrics"),
            _ => None,
        };
        if let Some(label) = fixed {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                let r = (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "GET, HEAD")],
                )
                    .into_response();
                return (label, r);
            }
            let mut r = match label {
                "healthz" => "ok".into_response(),
                "readyz" => readyz(&self.gate),
                _ => metrics_page(&self.gate),
            };
            if req.method() == Method::HEAD {
                *r.body_mut() = Body::empty();
            }
            return (label, r);
        }
        let path = req.uri().path();
        let label = if path == "/auth/token" {
            "token"
        } else if path == "/" || path == "/ui" || path.starts_with("/ui/") {
            "ui"
        } else {
            "other"
        };
        let peer = peer.or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        });
        let r = match self.gate.ready.get() {
            // What the token endpoint and the UI do not answer goes
            // straight to the OCI dispatch (see `router::serve`), which
            // names its own route; they go through the axum router.
            Some((_, app)) if label == "other" || (label == "ui" && !app.ui.enabled) => {
                return router::serve_from(app.clone(), peer, sendfile, req).await;
            }
            // Boxed: the router's future is large, and inline it would
            // make every request's future as large (see `route_request`).
            Some((router, _)) => {
                // The axum routes read the peer as an extractor.
                if let Some(peer) = peer {
                    req.extensions_mut().insert(ConnectInfo(peer));
                }
                Box::pin(router.clone().oneshot(req)).await.into_response()
            }
            None => {
                let mut r = ApiError::new(ErrorCode::TooManyRequests, "the registry is starting")
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        };
        (label, r)
    }
}

/// Request ids for requests that bring none: a random prefix drawn once
/// per process and a counter, `<prefix>-<n>`. Unique without a system
/// call per request (a v4 UUID reads the system's random source each
/// time).
fn make_request_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let mut n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 12 hex digits, a dash and at most 20 digits, written by hand (the
    // formatting machinery cost more than the rest of this function): no
    // allocation but the header value's own.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut buf = [0u8; 12 + 1 + 20];
    buf[..12].copy_from_slice(prefix.as_bytes());
    buf[12] = b'-';
    let len = 13 + digits.len() - start;
    buf[13..len].copy_from_slice(&digits[start..]);
    HeaderValue::from_bytes(&buf[..len]).expect("hex, dash and digits")
}

fn readyz(gate: &Gate) -> Response {
    let store_down = gate.app().and_then(|app| app.store.unavailable_reason());
    if let (true, Some(reason)) = (gate.is_ready(), store_down) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("object store unavailable: {reason}"),
        )
            .into_response()
    } else if gate.is_ready() {
        if let Some(replica) = gate.app().and_then(|app| app.replica.clone()) {
            return format!("ready\n{}", replica.readiness()).into_response();
        }
        match gate
            .app()
            .and_then(|app| app.archive.as_ref().map(|a| a.readiness()))
        {
            Some((true, detail)) => format!("ready\n{detail}").into_response(),
            Some((false, detail)) => (StatusCode::SERVICE_UNAVAILABLE, detail).into_response(),
            None => "ready".into_response(),
        }
    } else if gate.app().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if let Some(what) = gate.waiting_for.lock().clone() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("starting: {what}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: replaying the log",
        )
            .into_response()
    }
}

fn metrics_page(gate: &Gate) -> Response {
    let text = match gate.app() {
        Some(app) => {
            if let Some(n) = &app.notifier {
                n.refresh_metrics();
            }
            if let Some(a) = &app.archive {
                a.refresh_metrics();
            }
            if let Some(r) = &app.replica {
                r.refresh_metrics();
            }
            let summary = app.state.read().summary();
            let state = crate::metrics::StateFigures {
                repositories: summary.repositories,
                manifests: summary.manifests,
                tags: summary.tags,
                blobs: summary.blobs,
                uploads: summary.uploads,
            };
            crate::metrics::render(Some((app.writer.metrics_figures(), state)))
        }
        None => crate::metrics::render(None),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::HeaderMap;

    async fn get(router: &Front, path: &str) -> (StatusCode, String, HeaderMap) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let r = router.clone().oneshot(request).await.expect("infallible");
        let status = r.status();
        let headers = r.headers().clone();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }

    /// Before the gate opens (the log is replaying) the process is
    /// healthy, not ready, and refuses registry requests with 503.
    #[tokio::test]
    async fn starting_answers_health_not_readiness() {
        let gate = Arc::new(Gate::default());
        let router = front(gate.clone(), Duration::from_secs(1), true);
        let (status, body, _) = get(&router, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let (status, body, _) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        let (status, body, headers) = get(&router, "/v2/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(body.contains("TOOMANYREQUESTS"), "{body}");
        assert!(headers.contains_key("x-request-id"));
        let (status, body, _) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ferro_ready 0"), "{body}");
        assert!(!gate.is_ready());
        gate.drain();
        assert!(!gate.is_ready());
    }

    /// Made ids are `<12 hex digits>-<counter>`, each new.
    #[test]
    fn made_request_ids() {
        let ids: Vec<String> = (0..3)
            .map(|_| make_request_id().to_str().expect("ascii").to_owned())
            .collect();
        for id in &ids {
            let (prefix, n) = id.split_once('-').expect("a dash");
            assert_eq!(prefix.len(), 12, "{id}");
            assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(n.parse::<u64>().is_ok(), "{id}");
            assert!(!n.starts_with('0') || n == "0", "{id}");
        }
        assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    }
}
