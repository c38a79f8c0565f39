//! The whole URL table. OCI paths are parsed by `path::parse` (names have
//! slashes, so they cannot be axum route patterns); everything else is a
//! plain axum route.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::{ApiError, ErrorCode};
use super::path::{self, Route};
use super::{blobs, listing, manifests, referrers, uploads, App};
use crate::events::Actor;

/// Who is asking: recorded as the actor of the events a request causes.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub actor: Actor,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(dispatch)
        .with_state(app)
}

/// | method | path                               | handler              |
/// |--------|------------------------------------|----------------------|
/// | GET    | /v2/                               | base                 |
/// | GET    | /v2/_catalog                       | listing::catalog     |
/// | GET    | /v2/<name>/tags/list               | listing::tags        |
/// | GET/HEAD | /v2/<name>/manifests/<ref>       | manifests::get       |
/// | PUT    | /v2/<name>/manifests/<ref>         | manifests::put       |
/// | DELETE | /v2/<name>/manifests/<ref>         | manifests::delete    |
/// | GET/HEAD | /v2/<name>/blobs/<digest>        | blobs::get           |
/// | DELETE | /v2/<name>/blobs/<digest>          | blobs::delete        |
/// | POST   | /v2/<name>/blobs/uploads/          | uploads::start       |
/// | GET    | /v2/<name>/blobs/uploads/<id>      | uploads::status      |
/// | PATCH  | /v2/<name>/blobs/uploads/<id>      | uploads::patch       |
/// | PUT    | /v2/<name>/blobs/uploads/<id>      | uploads::finish      |
/// | DELETE | /v2/<name>/blobs/uploads/<id>      | uploads::cancel      |
/// | GET    | /v2/<name>/referrers/<digest>      | referrers::get       |
async fn dispatch(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = RequestContext {
        actor: Actor::anonymous(Some(peer.to_string())),
    };
    let query = uri.query().unwrap_or("");
    let result = match path::parse(uri.path()) {
        Err(path::PathError::NotFound) if !uri.path().starts_with("/v2") => {
            return (axum::http::StatusCode::NOT_FOUND, "not found").into_response()
        }
        Err(e) => Err(ApiError::from(e)),
        Ok(route) => route_request(&app, &ctx, route, &method, query, &headers, body).await,
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            if method == Method::HEAD {
                // HEAD answers carry no body; say so honestly.
                *r.body_mut() = Body::empty();
                r.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
            }
            r
        }
    };
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

async fn route_request(
    app: &Arc<App>,
    ctx: &RequestContext,
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
            if head { "" } else { "{}" },
        )
            .into_response()),
        (Route::Catalog, Method::GET) => listing::catalog(app, query),
        (Route::Tags { repo }, Method::GET) => listing::tags(app, &repo, query),
        (Route::Manifest { repo, reference }, Method::GET | Method::HEAD) => {
            manifests::get(app, &repo, &reference, head)
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
        (Route::Upload { repo, id }, Method::GET) => uploads::status(app, &repo, &id),
        (Route::Upload { repo, id }, Method::PATCH) => {
            uploads::patch(app, ctx, repo, id, headers, body).await
        }
        (Route::Upload { repo, id }, Method::PUT) => {
            uploads::finish(app, ctx, repo, id, query, headers, body).await
        }
        (Route::Upload { repo, id }, Method::DELETE) => uploads::cancel(app, ctx, repo, id).await,
        (Route::Referrers { repo, digest }, Method::GET) => {
            referrers::get(app, &repo, &digest, query)
        }
        (Route::Extension { .. }, _) => {
            Err(ApiError::new(ErrorCode::NameUnknown, "no such extension"))
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
