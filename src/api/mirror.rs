//! Requests under a mirror's prefix (see `mirror`), before their usual
//! handler: a manifest or blob pull makes the mirror fetch what the state
//! lacks (then the usual handler answers from the state, or a blob being
//! fetched is streamed from its fill); a push is refused with `405
//! UNSUPPORTED` unless the mirror has `allow_push`. Failures name the
//! upstream's answer in the spec's error form.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorCode};
use super::manifests::digest_headers;
use super::path::Route;
use super::App;
use crate::mirror::fill::BlobAnswer;
use crate::mirror::MirrorError;

/// The answer to a request under a mirror, or `None` to let the usual
/// handler answer it (from a state the mirror has brought up to date).
pub(super) async fn intercept(
    app: &Arc<App>,
    route: &Route,
    method: &Method,
) -> Option<Result<Response, ApiError>> {
    let repo = match route {
        Route::Manifest { repo, .. }
        | Route::Blob { repo, .. }
        | Route::UploadStart { repo }
        | Route::Upload { repo, .. } => repo,
        _ => return None,
    };
    let (mirror, upstream_repo) = app.mirrors.find(repo)?;
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        _ if !read && *method != Method::DELETE && !mirror.config.allow_push => {
            Some(Err(ApiError::new(
                ErrorCode::Unsupported,
                format!(
                    "{repo} is under the mirror {:?}, which does not take pushes",
                    mirror.config.prefix
                ),
            )))
        }
        Route::Manifest { reference, .. } if read => {
            match mirror.manifest(repo, &upstream_repo, reference).await {
                Ok(()) => None,
                Err(e) => Some(Err(error(e, ErrorCode::ManifestUnknown))),
            }
        }
        Route::Blob { digest, .. } if read => {
            match mirror.blob(repo, &upstream_repo, digest).await {
                Ok(BlobAnswer::Cached) => None,
                Ok(BlobAnswer::Filling(reader)) => {
                    let size = reader.size;
                    let body = if *method == Method::HEAD {
                        Body::empty()
                    } else {
                        Body::from_stream(reader.into_stream())
                    };
                    let mut r = (StatusCode::OK, body).into_response();
                    let h = r.headers_mut();
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    digest_headers(h, digest);
                    Some(Ok(r))
                }
                Err(e) => Some(Err(error(e, ErrorCode::BlobUnknown))),
            }
        }
        _ => None,
    }
}

/// The spec error for a pull the mirror could not serve: `unknown` (404)
/// when the upstreams have no such content; when none answered usably,
/// 429 `TOOMANYREQUESTS` for an upstream's 429, else 502 (504 for no
/// answer) with `unknown`'s code, the message naming the upstream's
/// answer.
fn error(e: MirrorError, unknown: ErrorCode) -> ApiError {
    match e {
        MirrorError::NotFound => {
            ApiError::new(unknown, format!("{} upstream", unknown_what(unknown)))
        }
        MirrorError::Upstream(u) => {
            let detail = serde_json::json!({"upstream_status": u.status()});
            let message = u.to_string();
            match u.status() {
                Some(429) => ApiError::new(ErrorCode::TooManyRequests, message),
                Some(_) => ApiError::new(unknown, message).with_status(StatusCode::BAD_GATEWAY),
                None if matches!(u, crate::mirror::client::UpstreamError::Unreachable { .. }) => {
                    ApiError::new(unknown, message).with_status(StatusCode::GATEWAY_TIMEOUT)
                }
                None => ApiError::new(unknown, message).with_status(StatusCode::BAD_GATEWAY),
            }
            .with_detail(detail)
        }
        MirrorError::Store(reason) => ApiError::internal(reason),
        MirrorError::Log(e) => e.into(),
    }
}

fn unknown_what(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BlobUnknown => "blob unknown",
        _ => "manifest unknown",
    }
}
