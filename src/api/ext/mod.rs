//! Extensions, under the distribution spec's extension convention:
//! `/v2/_oci/ext/discover` lists them, and ferro's own live under `_ferro`:
//!
//! | method | path                                            | what |
//! |--------|-------------------------------------------------|------|
//! | GET    | /v2/_oci/ext/discover, /v2/<name>/_oci/ext/discover | the list |
//! | GET    | /v2/_ferro/events/feed                          | the event feed (`feed`) |
//! | GET    | /v2/<name>/_ferro/history/repository            | a repository's history (`history`) |
//! | GET    | /v2/<name>/_ferro/history/tag?tag=              | a tag's history |
//! | GET    | /v2/<name>/_ferro/asof/manifest?reference=&at=  | a manifest as it was (`asof`) |
//! | GET    | /v2/<name>/_ferro/asof/tags?at=                 | the tag list as it was |
//! | GET    | /v2/<name>/_ferro/asof/referrers?digest=&at=    | referrers as they were |
//! | POST   | /v2/<name>/_ferro/restore/tag?tag=&digest=\|at= | move a tag back (`restore`) |
//! | POST   | /v2/<name>/_ferro/restore/manifest?digest=      | bring back a deleted manifest |
//! | POST   | /v2/_ferro/gc/run[?dry_run=true]                | garbage collection now (`gc`) |
//! | GET    | /v2/_ferro/notifications                        | notification endpoints (`notifications`) |
//! | POST   | /v2/_ferro/notifications?endpoint=&replay_from=\|to=end | move an endpoint's cursor |
//!
//! `at` is a sequence number or an RFC 3339 time.

pub(super) mod asof;
pub(super) mod feed;
mod gc;
mod history;
mod notifications;
pub(super) mod restore;

use std::sync::Arc;

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::request::RequestContext;
use super::App;
use crate::oci::RepoName;

pub use asof::PastStates;

/// Where the extension is documented (the discover list's `url`): served
/// by the registry itself, from `docs/ferro-extension.md`.
const DOCS_PATH: &str = "/v2/_ferro/docs/extension";
const DOCS: &str = include_str!("../../../docs/ferro-extension.md");

/// The methods an extension route answers, for `Allow`.
pub fn allowed_methods(extension: &str, component: &str) -> &'static str {
    match (extension, component) {
        ("ferro", "restore" | "gc") => "POST",
        ("ferro", "notifications") => "GET, HEAD, POST",
        _ => "GET, HEAD",
    }
}

#[allow(clippy::too_many_arguments)] // the request, taken apart once by the router
pub async fn route(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: Option<RepoName>,
    extension: &str,
    component: &str,
    module: &str,
    method: &Method,
    query: &str,
) -> ApiResult<Response> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let unsupported = || {
        ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported here"),
        )
    };
    match (extension, component, module, repo) {
        ("oci", "ext", "discover", repo) if read => Ok(discover(repo.is_some())),
        ("ferro", "docs", "extension", None) if read => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/markdown; charset=utf-8",
            )],
            DOCS,
        )
            .into_response()),
        ("ferro", "events", "feed", None) if read => feed::get(app, query).await,
        ("ferro", "history", "repository", Some(repo)) if read => {
            history::get(app, repo, None).await
        }
        ("ferro", "history", "tag", Some(repo)) if read => {
            history::get(app, repo, Some(query)).await
        }
        ("ferro", "asof", "manifest", Some(repo)) if read => {
            asof::manifest(app, &repo, query, *method == Method::HEAD).await
        }
        ("ferro", "asof", "tags", Some(repo)) if read => asof::tags(app, &repo, query).await,
        ("ferro", "asof", "referrers", Some(repo)) if read => {
            asof::referrers(app, &repo, query).await
        }
        ("ferro", "restore", "tag", Some(repo)) if *method == Method::POST => {
            restore::tag(app, ctx, repo, query).await
        }
        ("ferro", "restore", "manifest", Some(repo)) if *method == Method::POST => {
            restore::manifest(app, ctx, repo, query).await
        }
        ("ferro", "gc", "run", None) if *method == Method::POST => gc::run(app, query).await,
        ("ferro", "gc", "run", None) => Err(unsupported()),
        ("ferro", "notifications", "", None) if read => notifications::get(app).await,
        ("ferro", "notifications", "", None) if *method == Method::POST => {
            notifications::post(app, ctx, query).await
        }
        ("ferro", "notifications", "", None) => Err(unsupported()),
        ("oci", "ext", "discover", _)
        | ("ferro", "events", "feed", None)
        | ("ferro", "docs", "extension", None)
        | ("ferro", "history" | "asof" | "restore", _, Some(_)) => Err(unsupported()),
        _ => Err(ApiError::new(
            ErrorCode::ExtensionUnknown,
            "extension unknown to this registry",
        )),
    }
}

fn discover(repository_level: bool) -> Response {
    let mut endpoints = vec![];
    if repository_level {
        endpoints.extend([
            "_ferro/history/repository",
            "_ferro/history/tag",
            "_ferro/asof/manifest",
            "_ferro/asof/tags",
            "_ferro/asof/referrers",
            "_ferro/restore/tag",
            "_ferro/restore/manifest",
        ]);
    } else {
        endpoints.extend([
            "_ferro/events/feed",
            "_ferro/docs/extension",
            "_ferro/gc/run",
            "_ferro/notifications",
        ]);
    }
    axum::Json(json!({
        "extensions": [
            {
                "name": "_oci",
                "description": "Discovery of the extensions this registry serves",
                "url": "https://github.com/opencontainers/distribution-spec/blob/main/extensions/_oci.md",
                "endpoints": ["_oci/ext/discover"],
            },
            {
                "name": "_ferro",
                "description": "ferro's history: the event feed, tag and repository history, reads as of a past sequence number or time, and restores",
                "url": DOCS_PATH,
                "endpoints": endpoints,
            }
        ]
    }))
    .into_response()
}

/// Parses the `at` parameter (required where a past is read).
fn at_param(query: &str) -> ApiResult<crate::replay::AsOf> {
    let at = super::request::query_param(query, "at").ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unsupported,
            "the at parameter (a sequence number or an RFC 3339 time) is required",
        )
        .with_status(axum::http::StatusCode::BAD_REQUEST)
    })?;
    crate::timefmt::parse_as_of(&at).map_err(|e| {
        ApiError::new(ErrorCode::Unsupported, e).with_status(axum::http::StatusCode::BAD_REQUEST)
    })
}
