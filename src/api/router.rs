//! The whole URL table. OCI paths are parsed by `path::parse` (names have
//! slashes, so they cannot be axum route patterns); everything else is a
//! plain axum route.
//!
//! | method   | path         | what |
//! |----------|--------------|------|
//! | GET      | /healthz     | 200 while the process serves |
//! | GET      | /readyz      | 200 once the log is replayed; 503 before, and while shutting down |
//! | GET      | /metrics     | Prometheus text (`metrics`) |
//! | GET/POST | /auth/token  | the token endpoint (`token`), under `auth.scheme = "token"` |
//! | any      | /v2/…        | the OCI API, see [`dispatch`] |
//!
//! Around all of it ([`front`]): a request id (`x-request-id`, taken from
//! the request or made, echoed in the response, in every log line of the
//! request), a tracing span and access log line, request metrics, and the
//! stalled-body timeout. Until the registry is ready ([`Gate`]) only the
//! first three routes answer; the rest is 503.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody as _};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt as _;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use super::body::{Tail, TrackedBody, DRAIN_AFTER_RESPONSE_BYTES_MAX};
use super::error::{ApiError, ErrorCode};
use super::path::{self, Route};
use super::stall::Stalling;
use super::{blobs, ext, listing, manifests, referrers, token, uploads, App};
use crate::auth::{Action, Caller, Need, Refusal};
use crate::events::Actor;
use crate::metrics::{Counted, Direction};

/// Who is asking: recorded as the actor of the events a request causes.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub actor: Actor,
}

/// The label of a request's route in metrics, set by the handler that
/// answered it.
#[derive(Debug, Clone, Copy)]
struct RouteLabel(&'static str);

/// The registry's routes, once it is ready.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/auth/token", get(token::get).post(token::post))
        .fallback(dispatch)
        .with_state(app)
}

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

fn route_label(route: &Route) -> &'static str {
    match route {
        Route::Base => "base",
        Route::Catalog => "catalog",
        Route::Tags { .. } => "tags",
        Route::Manifest { .. } => "manifest",
        Route::Blob { .. } => "blob",
        Route::UploadStart { .. } => "upload_start",
        Route::Upload { .. } => "upload",
        Route::Referrers { .. } => "referrers",
        Route::Extension { .. } => "extension",
    }
}

/// What a route needs of its caller (see `auth`). Reads need pull, writes
/// push, deletes delete; the catalog and the registry-wide event feed
/// their own; `/v2/` and extension discovery only an authenticated caller.
fn need(route: &Route, method: &Method, query: &str) -> Need {
    let on = |repo: &str, action: Action| Need::Repository {
        repo: repo.to_owned(),
        actions: vec![action],
    };
    let by_method = |repo: &str| match *method {
        Method::GET | Method::HEAD => on(repo, Action::Pull),
        Method::DELETE => on(repo, Action::Delete),
        _ => on(repo, Action::Push),
    };
    match route {
        Route::Base => Need::Authenticated,
        Route::Catalog => Need::Catalog,
        Route::Tags { repo } | Route::Referrers { repo, .. } => on(repo.as_str(), Action::Pull),
        Route::Manifest { repo, .. } | Route::Blob { repo, .. } => by_method(repo.as_str()),
        Route::UploadStart { repo } | Route::Upload { repo, .. } => on(repo.as_str(), Action::Push),
        Route::Extension {
            repo,
            extension,
            component,
            ..
        } => match (extension.as_str(), repo, component.as_str()) {
            ("ferro", Some(repo), "restore") => on(repo.as_str(), Action::Push),
            ("ferro", Some(repo), "history" | "asof") => on(repo.as_str(), Action::Pull),
            ("ferro", None, "events") => match query_param(query, "repo") {
                Some(repo) => on(&repo, Action::Pull),
                None => Need::Everything,
            },
            _ => Need::Authenticated,
        },
    }
}

/// `<scheme>://<host>` of the request, for the token realm.
fn origin(app: &App, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if app.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// The 401 or 403 for a refusal.
fn refuse(app: &App, need: &Need, refusal: Refusal, headers: &HeaderMap) -> ApiError {
    let reason = match refusal {
        Refusal::Unauthenticated => "unauthenticated",
        Refusal::BadCredentials => "bad_credentials",
        Refusal::InvalidToken => "invalid_token",
        Refusal::InsufficientScope => "insufficient_scope",
        Refusal::Denied => "denied",
    };
    metrics::counter!(crate::metrics::AUTH_REFUSALS, "reason" => reason).increment(1);
    let detail = match need {
        Need::Repository { repo, actions } => serde_json::Value::Array(
            actions
                .iter()
                .map(|a| serde_json::json!({"Type": "repository", "Name": repo, "Action": a.as_str()}))
                .collect(),
        ),
        Need::Catalog | Need::Everything => {
            serde_json::json!([{"Type": "registry", "Name": "catalog", "Action": "*"}])
        }
        Need::Authenticated => serde_json::Value::Null,
    };
    if refusal == Refusal::Denied {
        return ApiError::new(ErrorCode::Denied, refusal.message()).with_detail(detail);
    }
    let challenge = app.auth.challenge(need, refusal, &origin(app, headers));
    ApiError::new(ErrorCode::Unauthorized, refusal.message())
        .with_detail(detail)
        .with_header(header::WWW_AUTHENTICATE, &challenge)
}

/// Who the caller is and whether they may: the caller, or the refusal.
async fn authorize(
    app: &App,
    route: &Route,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let need = need(route, method, query);
    if !app.auth.enabled() {
        return Ok(Caller::anonymous());
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = app
        .auth
        .identify(authorization)
        .await
        .map_err(|r| refuse(app, &need, r, headers))?;
    app.auth
        .check(&caller, &need)
        .map_err(|r| refuse(app, &need, r, headers))?;
    Ok(caller)
}

/// A cross-repository mount reads the source: without pull there (or,
/// for a mount without `from`, on every repository), the mount part of
/// the query is dropped and the request opens an ordinary upload session,
/// as the spec allows.
fn without_unreadable_mount(app: &App, caller: &Caller, query: &str) -> Option<String> {
    if !app.auth.enabled() || query_param(query, "mount").is_none() {
        return None;
    }
    let readable = match query_param(query, "from") {
        Some(from) => app.auth.permits(caller, &from, Action::Pull),
        None => app.auth.pulls_everywhere(caller),
    };
    if readable {
        return None;
    }
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            query_pairs(query)
                .into_iter()
                .filter(|(k, _)| k != "mount" && k != "from"),
        )
        .finish();
    Some(kept)
}

/// Upload limits: requests carrying bytes take a permit (429 when none is
/// left); a POST that opens a session is refused when too many are open.
fn upload_admission(
    app: &App,
    route: &Route,
    method: &Method,
    query: &str,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    let too_many = |what: String| ApiError::new(ErrorCode::TooManyRequests, what);
    let carries_bytes = match (route, method) {
        (Route::UploadStart { .. }, &Method::POST) => query_param(query, "digest").is_some(),
        (Route::Upload { .. }, &Method::PATCH | &Method::PUT) => true,
        _ => false,
    };
    if carries_bytes {
        return match app.upload_permits.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(too_many(format!(
                "more than {} uploads at once; retry later",
                app.limits.uploads_concurrent_max
            ))),
        };
    }
    // A mount may fall back to opening a session, so it counts too.
    let opens_session = matches!((route, method), (Route::UploadStart { .. }, &Method::POST))
        && query_param(query, "digest").is_none();
    if opens_session && app.state.read().uploads.len() >= app.limits.upload_sessions_max {
        return Err(too_many(format!(
            "{} upload sessions are open; finish or cancel some",
            app.limits.upload_sessions_max
        )));
    }
    Ok(None)
}

/// | method   | path                               | handler              |
/// |----------|------------------------------------|----------------------|
/// | GET/HEAD | /v2/                               | base                 |
/// | GET/HEAD | /v2/_catalog                       | listing::catalog     |
/// | GET/HEAD | /v2/<name>/tags/list               | listing::tags        |
/// | GET/HEAD | /v2/<name>/manifests/<ref>         | manifests::get       |
/// | PUT      | /v2/<name>/manifests/<ref>         | manifests::put       |
/// | DELETE   | /v2/<name>/manifests/<ref>         | manifests::delete    |
/// | GET/HEAD | /v2/<name>/blobs/<digest>          | blobs::get           |
/// | DELETE   | /v2/<name>/blobs/<digest>          | blobs::delete        |
/// | POST     | /v2/<name>/blobs/uploads/          | uploads::start       |
/// | GET/HEAD | /v2/<name>/blobs/uploads/<id>      | uploads::status      |
/// | PATCH    | /v2/<name>/blobs/uploads/<id>      | uploads::patch       |
/// | PUT      | /v2/<name>/blobs/uploads/<id>      | uploads::finish      |
/// | DELETE   | /v2/<name>/blobs/uploads/<id>      | uploads::cancel      |
/// | GET/HEAD | /v2/<name>/referrers/<digest>      | referrers::get       |
///
/// Any other method on a known route is 405 UNSUPPORTED with `Allow`. A
/// HEAD is answered as the GET would be, without the body. What a handler
/// leaves unread of a request body is drained (bounded) before answering,
/// or the answer says `Connection: close`.
async fn dispatch(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut ctx = RequestContext {
        actor: Actor::anonymous(Some(peer.to_string())),
    };
    let query = uri.query().unwrap_or("");
    let mut label = "not_found";
    // Only a body that has bytes to come needs watching (GET and HEAD
    // requests skip this).
    let (body, tail) = if body.is_end_stream() {
        (body, None)
    } else {
        let (body, tail) = TrackedBody::wrap(body);
        (body, Some(tail))
    };
    let mut response = match path::parse(uri.path()) {
        Err(path::PathError::NotFound) if !uri.path().starts_with("/v2") => {
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
        Ok(route) => {
            label = route_label(&route);
            match authorize(&app, &route, &method, query, &headers).await {
                Err(refused) => refused.into_response(),
                Ok(caller) => {
                    ctx.actor.user = caller.user.clone();
                    let rewritten = without_unreadable_mount(&app, &caller, query);
                    let query = rewritten.as_deref().unwrap_or(query);
                    serve_route(&app, &ctx, &caller, route, &method, query, &headers, body).await
                }
            }
        }
    };
    if method == Method::HEAD {
        strip_body(&mut response);
    }
    response.extensions_mut().insert(RouteLabel(label));
    let h = response.headers_mut();
    h.insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Some(tail) = tail {
        let expects_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if tail
            .finish(expects_continue, DRAIN_AFTER_RESPONSE_BYTES_MAX)
            .await
            == Tail::Abandoned
        {
            // The rest of the body is still on the wire: this connection
            // cannot carry another request, and the client must know.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// A parsed, authorized request: read-only refusal, upload limits, then
/// the handler.
#[allow(clippy::too_many_arguments)] // the request, taken apart once
async fn serve_route(
    app: &Arc<App>,
    ctx: &RequestContext,
    caller: &Caller,
    route: Route,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    match route {
        _ if app.read_only && !matches!(*method, Method::GET | Method::HEAD) => {
            let mut r = ApiError::new(
                ErrorCode::Unsupported,
                "this registry serves a past state and is read-only",
            )
            .into_response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        route => {
            let allow = allowed_methods(&route, app.delete_enabled);
            let _permit = match upload_admission(app, &route, method, query) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let mut r = route_request(app, ctx, caller, route, method, query, headers, body)
                .await
                .unwrap_or_else(IntoResponse::into_response);
            if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            r
        }
    }
}

/// The methods a route answers, for the `Allow` header of a 405.
fn allowed_methods(route: &Route, delete_enabled: bool) -> &'static str {
    match (route, delete_enabled) {
        (Route::Base | Route::Catalog | Route::Tags { .. } | Route::Referrers { .. }, _) => {
            "GET, HEAD"
        }
        (Route::Manifest { .. }, true) => "GET, HEAD, PUT, DELETE",
        (Route::Manifest { .. }, false) => "GET, HEAD, PUT",
        (Route::Blob { .. }, true) => "GET, HEAD, DELETE",
        (Route::Blob { .. }, false) => "GET, HEAD",
        (Route::UploadStart { .. }, _) => "POST",
        (Route::Upload { .. }, _) => "GET, HEAD, PATCH, PUT, DELETE",
        (
            Route::Extension {
                extension,
                component,
                ..
            },
            _,
        ) => ext::allowed_methods(extension, component),
    }
}

/// A HEAD answer is the GET answer without its body: same status, same
/// headers, `Content-Length` included (RFC 9110, 9.3.2).
fn strip_body(response: &mut Response) {
    use axum::http::header::CONTENT_LENGTH;
    let exact = response.body().size_hint().exact();
    if let (false, Some(len)) = (response.headers().contains_key(CONTENT_LENGTH), exact) {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    *response.body_mut() = Body::empty();
}

#[allow(clippy::too_many_arguments)] // the request, taken apart once
async fn route_request(
    app: &Arc<App>,
    ctx: &RequestContext,
    caller: &Caller,
    route: Route,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let head = *method == Method::HEAD;
    match (route, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()),
        (Route::Catalog, Method::GET | Method::HEAD) => {
            listing::catalog(app, query, &|repo| app.auth.lists(caller, repo))
        }
        (Route::Tags { repo }, Method::GET | Method::HEAD) => listing::tags(
            app,
            &app.state.read(),
            &repo,
            query,
            &format!("/v2/{repo}/tags/list"),
        ),
        (Route::Manifest { repo, reference }, Method::GET | Method::HEAD) => {
            manifests::get(&app.state.read(), &repo, &reference, head)
        }
        (Route::Manifest { repo, reference }, Method::PUT) => {
            manifests::put(app, ctx, repo, reference, query, headers, body).await
        }
        (Route::Manifest { repo, reference }, Method::DELETE) => {
            manifests::delete(app, ctx, repo, reference).await
        }
        (Route::Blob { repo, digest }, Method::GET | Method::HEAD) => {
            blobs::get(app, &repo, &digest, headers, head).await
        }
        (Route::Blob { repo, digest }, Method::DELETE) => {
            blobs::delete(app, ctx, repo, digest).await
        }
        (Route::UploadStart { repo }, Method::POST) => {
            uploads::start(app, ctx, repo, query, headers, body).await
        }
        (Route::Upload { repo, id }, Method::GET | Method::HEAD) => {
            uploads::status(app, &repo, &id)
        }
        (Route::Upload { repo, id }, Method::PATCH) => {
            uploads::patch(app, ctx, repo, id, headers, body).await
        }
        (Route::Upload { repo, id }, Method::PUT) => {
            uploads::finish(app, ctx, repo, id, query, headers, body).await
        }
        (Route::Upload { repo, id }, Method::DELETE) => uploads::cancel(app, ctx, repo, id).await,
        (Route::Referrers { repo, digest }, Method::GET | Method::HEAD) => {
            referrers::get(&app.state.read(), &repo, &digest, query)
        }
        (
            Route::Extension {
                repo,
                extension,
                component,
                module,
            },
            _,
        ) => {
            ext::route(
                app, ctx, repo, &extension, &component, &module, method, query,
            )
            .await
        }
        _ => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported here"),
        )),
    }
}

/// Query parameters in order, percent-decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn needs_by_route() {
        let repo = || crate::oci::RepoName::parse("a/b").expect("valid");
        let pull = Need::Repository {
            repo: "a/b".into(),
            actions: vec![Action::Pull],
        };
        let tags = Route::Tags { repo: repo() };
        assert_eq!(need(&tags, &Method::GET, ""), pull);
        assert_eq!(need(&Route::Base, &Method::GET, ""), Need::Authenticated);
        assert_eq!(need(&Route::Catalog, &Method::GET, ""), Need::Catalog);
        let upload = Route::UploadStart { repo: repo() };
        assert!(matches!(
            need(&upload, &Method::POST, ""),
            Need::Repository { actions, .. } if actions == [Action::Push]
        ));
        let feed = |query: &str| {
            need(
                &Route::Extension {
                    repo: None,
                    extension: "ferro".into(),
                    component: "events".into(),
                    module: "feed".into(),
                },
                &Method::GET,
                query,
            )
        };
        assert_eq!(feed(""), Need::Everything);
        assert_eq!(feed("repo=a/b"), pull);
    }
}
