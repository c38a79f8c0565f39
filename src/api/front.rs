//! What surrounds the registry's routes: a request id (`x-request-id`,
//! taken from the request or made, echoed in the response, in the span of
//! every log line of the request), a tracing span and access log line,
//! request metrics, the stalled-body timeout; `/healthz`, `/readyz` and
//! `/metrics`; and the [`Gate`] that answers 503 until the registry is
//! ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt as _;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use super::error::{ApiError, ErrorCode};
use super::router::router;
use super::stall::Stalling;
use super::App;
use crate::metrics::{Counted, Direction};

/// The label of a request's route in metrics, set by the handler that
/// answered it.
#[derive(Debug, Clone, Copy)]
pub(super) struct RouteLabel(pub(super) &'static str);

/// Switches the server from "starting" to the registry once it is ready,
/// and to "draining" on shutdown.
#[derive(Default)]
pub struct Gate {
    ready: OnceLock<(Router, Arc<App>)>,
    draining: AtomicBool,
}

impl Gate {
    /// From now on requests reach `app`.
    pub fn open(&self, app: Arc<App>) {
        let _ = self.ready.set((router(app.clone()), app));
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
pub fn front(gate: Arc<Gate>, body_read_timeout: Duration, access_log: bool) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .fallback(forward)
        .with_state(gate)
        .layer(middleware::from_fn_with_state(body_read_timeout, observe))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        id = %id,
                        method = %req.method(),
                        path = %req.uri().path(),
                    )
                })
                .on_request(())
                .on_failure(())
                .on_response(move |r: &Response, latency: Duration, _: &tracing::Span| {
                    if access_log {
                        tracing::info!(
                            status = r.status().as_u16(),
                            latency_us = latency.as_micros() as u64,
                            "answered"
                        );
                    }
                }),
        )
        .layer(SetRequestIdLayer::new(request_id, SequentialRequestId))
}

/// Request ids for requests that bring none: a random prefix drawn once
/// per process and a counter, `<prefix>-<n>`. Unique without a system
/// call per request (a v4 UUID reads the system's random source each
/// time).
#[derive(Clone, Copy)]
struct SequentialRequestId;

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        static PREFIX: OnceLock<String> = OnceLock::new();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let prefix =
            PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{prefix}-{n}"))
            .ok()
            .map(RequestId::new)
    }
}

async fn readyz(State(gate): State<Arc<Gate>>) -> Response {
    if gate.is_ready() {
        "ready".into_response()
    } else if gate.app().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: replaying the log",
        )
            .into_response()
    }
}

async fn metrics_page(State(gate): State<Arc<Gate>>) -> Response {
    let text = match gate.app() {
        Some(app) => {
            let summary = app.state.read().summary();
            crate::metrics::render(Some((&app.writer, summary)))
        }
        None => crate::metrics::render(None),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn forward(State(gate): State<Arc<Gate>>, req: Request) -> Response {
    match gate.ready.get() {
        Some((router, _)) => router.clone().oneshot(req).await.into_response(),
        None => {
            let mut r = ApiError::new(ErrorCode::TooManyRequests, "the registry is starting")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// Counts and times every request, counts body bytes both ways, and fails
/// request bodies that stall.
async fn observe(State(body_read_timeout): State<Duration>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let fixed = match req.uri().path() {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/auth/token" => "token",
        _ => "other",
    };
    let req = if req.body().is_end_stream() {
        req
    } else {
        req.map(|b| Counted::wrap(Stalling::wrap(b, body_read_timeout), Direction::In))
    };
    let in_flight = crate::metrics::in_flight();
    in_flight.increment(1.0);
    let response = next.run(req).await;
    in_flight.decrement(1.0);
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0)
        .unwrap_or(fixed);
    metrics::counter!(
        crate::metrics::REQUESTS,
        "route" => route,
        "method" => method,
        "status" => crate::metrics::status_label(response.status()),
    )
    .increment(1);
    metrics::histogram!(crate::metrics::REQUEST_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response.map(|b| Counted::wrap(b, Direction::Out))
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

    async fn get(router: &Router, path: &str) -> (StatusCode, String, HeaderMap) {
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
}
