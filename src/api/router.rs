//! The whole URL table. OCI paths are parsed by `path::parse` (names have
//! slashes, so they cannot be axum route patterns); everything else is a
//! plain axum route.
//!
//! | method   | path         | what |
//! |----------|--------------|------|
//! | GET      | /healthz     | 200 while the process serves (`front`) |
//! | GET      | /readyz      | 200 once the log is replayed; 503 before, and while shutting down (`front`) |
//! | GET      | /metrics     | Prometheus text (`front`, `metrics`) |
//! | GET/POST | /auth/token  | the token endpoint (`token`), under `auth.scheme = "token"` |
//! | any      | /v2/…        | the OCI API, see [`dispatch`] |
//! | GET/POST | /, /ui/…     | the web UI (`ui`), when `ui.enabled` |
//!
//! Every `/v2/` request passes access control (`access`) before its
//! handler; `front` wraps all of it (request ids, tracing, metrics).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, HttpBody as _};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::access::{authorize, upload_admission, without_unreadable_mount};
use super::body::{Tail, TrackedBody, DRAIN_AFTER_RESPONSE_BYTES_MAX};
use super::error::{ApiError, ErrorCode};
use super::path::{self, Route};
use super::request::RequestContext;
use super::{blobs, ext, listing, manifests, mirror, referrers, token, uploads, App};
use crate::auth::Caller;
use crate::sendfile::FileRegions;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// The registry's routes, once it is ready.
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new().route("/auth/token", get(token::get).post(token::post));
    let routes = if app.ui.enabled {
        routes.merge(super::ui::routes())
    } else {
        routes
    };
    routes
        .fallback(
            |State(app): State<Arc<App>>, req: Request| async move { serve(app, req).await.1 },
        )
        .with_state(app)
}

/// Answers any request but `/auth/token`: the OCI API (see [`dispatch`]),
/// with the label of its route for metrics. `front` calls it directly
/// rather than through [`router`]: axum's route table and extractors
/// (which clone the method, URI and headers) cost about a tenth of a
/// HEAD's instructions and decide nothing here.
pub async fn serve(app: Arc<App>, req: Request) -> (&'static str, Response) {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    serve_from(app, peer, None, req).await
}

/// [`serve`] for a request whose peer is known (`front` holds it per
/// connection; `None` if it is not, which is refused), over a connection
/// that sends blob pieces with `sendfile` when it has `sendfile` regions.
pub async fn serve_from(
    app: Arc<App>,
    peer: Option<SocketAddr>,
    sendfile: Option<FileRegions>,
    req: Request,
) -> (&'static str, Response) {
    let Some(peer) = peer else {
        let refused = ApiError::internal("request without its peer address");
        return ("not_found", refused.into_response());
    };
    let (parts, body) = req.into_parts();
    let ctx = RequestContext {
        user: None,
        peer,
        sendfile,
    };
    dispatch(app, ctx, parts.method, parts.uri, parts.headers, body).await
}

fn route_label(route: &Route) -> &'static str {
    match route {
        Route::Base => "base",
        Route::Catalog => "catalog",
        Route::Tags { .. } => "tags",
        Route::Manifest { .. } | Route::ManifestInvalidReference { .. } => "manifest",
        Route::Blob { .. } => "blob",
        Route::UploadStart { .. } => "upload_start",
        Route::Upload { .. } => "upload",
        Route::Referrers { .. } => "referrers",
        Route::Extension { .. } => "extension",
    }
}

/// | method   | path                                  | handler                         |
/// |----------|---------------------------------------|---------------------------------|
/// | GET/HEAD | /v2/                                  | base                            |
/// | GET/HEAD | /v2/_catalog                          | listing::catalog                |
/// | GET/HEAD | /v2/<name>/tags/list                  | listing::tags                   |
/// | GET/HEAD | /v2/<name>/manifests/<ref>            | manifests::get                  |
/// | PUT      | /v2/<name>/manifests/<ref>            | manifests::put                  |
/// | DELETE   | /v2/<name>/manifests/<ref>            | manifests::delete               |
/// | GET/HEAD | /v2/<name>/manifests/<not tag/digest> | manifests::unnamed (404)        |
/// | PUT      | /v2/<name>/manifests/<not tag/digest> | 400                             |
/// | DELETE   | /v2/<name>/manifests/<not tag/digest> | manifests::delete_unnamed (404) |
/// | GET/HEAD | /v2/<name>/blobs/<digest>             | blobs::get                      |
/// | DELETE   | /v2/<name>/blobs/<digest>             | blobs::delete                   |
/// | POST     | /v2/<name>/blobs/uploads/             | uploads::start                  |
/// | GET/HEAD | /v2/<name>/blobs/uploads/<id>         | uploads::status                 |
/// | PATCH    | /v2/<name>/blobs/uploads/<id>         | uploads::patch                  |
/// | PUT      | /v2/<name>/blobs/uploads/<id>         | uploads::finish                 |
/// | DELETE   | /v2/<name>/blobs/uploads/<id>         | uploads::cancel                 |
/// | GET/HEAD | /v2/<name>/referrers/<digest>         | referrers::get                  |
///
/// Any other method on a known route is 405 UNSUPPORTED with `Allow`. A
/// HEAD is answered as the GET would be, without the body. What a handler
/// leaves unread of a request body is drained (bounded) before answering,
/// or the answer says `Connection: close`.
async fn dispatch(
    app: Arc<App>,
    mut ctx: RequestContext,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> (&'static str, Response) {
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
            // Boxed for the same reason as the handlers (see
            // `route_request`), and only when there is something to check.
            let authorized = if app.auth.enabled() {
                Box::pin(authorize(&app, &route, &method, query, &headers)).await
            } else {
                Ok(crate::auth::Caller::anonymous())
            };
            match authorized {
                Err(refused) => refused.into_response(),
                Ok(caller) => {
                    ctx.user = caller.user.clone();
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
    let h = response.headers_mut();
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
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
    (label, response)
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
            let message = match &app.replica {
                Some(replica) => replica.write_refusal(),
                None => "this registry serves a past state and is read-only".into(),
            };
            let mut r = ApiError::new(ErrorCode::Unsupported, message).into_response();
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
        (Route::Manifest { .. } | Route::ManifestInvalidReference { .. }, true) => {
            "GET, HEAD, PUT, DELETE"
        }
        (Route::Manifest { .. } | Route::ManifestInvalidReference { .. }, false) => {
            "GET, HEAD, PUT"
        }
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

/// The handlers that await (writes, blob reads, extensions) are boxed:
/// their futures are large (several KiB together), and inline they made
/// every request's future that large, which is copied as it is moved
/// (into its box, into its span's wrapper): a HEAD by tag, which awaits
/// nothing, paid for those copies.
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
    if !app.mirrors.is_empty() {
        // Boxed like the handlers below: a fill's future is large.
        if let Some(answer) = Box::pin(mirror::intercept(app, &route, method)).await {
            return answer;
        }
    }
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
            Box::pin(manifests::put(
                app, ctx, repo, reference, query, headers, body,
            ))
            .await
        }
        (Route::Manifest { repo, reference }, Method::DELETE) => {
            Box::pin(manifests::delete(app, ctx, repo, reference)).await
        }
        (Route::ManifestInvalidReference { repo, .. }, Method::GET | Method::HEAD) => {
            Err(manifests::unnamed(&app.state.read(), &repo))
        }
        (Route::ManifestInvalidReference { invalid, .. }, Method::PUT) => {
            Err(path::PathError::Invalid(invalid).into())
        }
        (Route::ManifestInvalidReference { repo, .. }, Method::DELETE) => {
            manifests::delete_unnamed(app, &repo)
        }
        (Route::Blob { repo, digest }, Method::GET | Method::HEAD) => {
            let sendfile = ctx.sendfile.as_ref();
            Box::pin(blobs::get(app, &repo, &digest, headers, head, sendfile)).await
        }
        (Route::Blob { repo, digest }, Method::DELETE) => {
            Box::pin(blobs::delete(app, ctx, repo, digest)).await
        }
        (Route::UploadStart { repo }, Method::POST) => {
            Box::pin(uploads::start(app, ctx, repo, query, headers, body)).await
        }
        (Route::Upload { repo, id }, Method::GET | Method::HEAD) => {
            uploads::status(app, &repo, &id)
        }
        (Route::Upload { repo, id }, Method::PATCH) => {
            Box::pin(uploads::patch(app, ctx, repo, id, headers, body)).await
        }
        (Route::Upload { repo, id }, Method::PUT) => {
            Box::pin(uploads::finish(app, ctx, repo, id, query, headers, body)).await
        }
        (Route::Upload { repo, id }, Method::DELETE) => {
            Box::pin(uploads::cancel(app, ctx, repo, id)).await
        }
        (Route::Referrers { repo, digest }, Method::GET | Method::HEAD) => {
            let link_path = format!("/v2/{repo}/referrers/{digest}");
            referrers::get(app, &app.state.read(), &repo, &digest, query, &link_path)
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
            Box::pin(ext::route(
                app, ctx, repo, &extension, &component, &module, method, query,
            ))
            .await
        }
        _ => Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported here"),
        )),
    }
}
