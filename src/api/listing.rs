//! `/v2/<name>/tags/list` and `/v2/_catalog`: lexically sorted pages with
//! `n`/`last` and an RFC 5988 `Link` header to the next page.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::request::query_param;
use super::App;
use crate::oci::RepoName;
use crate::projection::State;

/// The page size asked for, bounded by the configured maximum. Without `n`
/// a page is the maximum.
pub(super) fn page_size(app: &App, query: &str) -> ApiResult<usize> {
    let max = app.limits.page_entries_max;
    match query_param(query, "n") {
        None => Ok(max),
        Some(n) => n.parse::<usize>().map(|n| n.min(max)).map_err(|_| {
            ApiError::new(ErrorCode::Unsupported, "n must be a non-negative integer")
                .with_status(axum::http::StatusCode::BAD_REQUEST)
        }),
    }
}

/// Takes up to `n` items after `last`; says whether more follow.
fn page<'a>(
    items: impl Iterator<Item = &'a str>,
    last: Option<&str>,
    n: usize,
) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(n.min(1024));
    let mut more = false;
    for item in items.filter(|i| last.is_none_or(|l| *i > l)) {
        if out.len() == n {
            more = true;
            break;
        }
        out.push(item.to_owned());
    }
    (out, more)
}

/// Adds `Link: <path?n=N&last=L>; rel="next"` when `more` entries follow
/// `last`.
pub(super) fn with_link(
    mut response: Response,
    path: &str,
    n: usize,
    last: Option<&String>,
    more: bool,
) -> Response {
    if let (true, Some(last)) = (more, last) {
        let encoded: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        let sep = if path.contains('?') { '&' } else { '?' };
        let link = format!("<{path}{sep}n={n}&last={encoded}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    response
}

/// Answers a tag list from `state` (the live state, or a past one);
/// `link_path` is where the next page is (path and fixed query).
pub fn tags(
    app: &App,
    state: &State,
    repo: &RepoName,
    query: &str,
    link_path: &str,
) -> ApiResult<Response> {
    let n = page_size(app, query)?;
    let last = query_param(query, "last");
    let (tags, more) = {
        let r = state.repo(repo).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NameUnknown,
                "repository name not known to registry",
            )
        })?;
        page(r.tags.keys().map(|t| t.as_str()), last.as_deref(), n)
    };
    let response = axum::Json(json!({ "name": repo.as_str(), "tags": tags })).into_response();
    Ok(with_link(response, link_path, n, tags.last(), more))
}

/// Answers the catalog: the repositories `visible` lets the caller see
/// (access control filters it to what they may pull).
pub fn catalog(app: &App, query: &str, visible: &dyn Fn(&str) -> bool) -> ApiResult<Response> {
    let n = page_size(app, query)?;
    let last = query_param(query, "last");
    let (repos, more) = {
        let state = app.state.read();
        page(
            state
                .repos
                .keys()
                .map(|r| r.as_str())
                .filter(|r| visible(r)),
            last.as_deref(),
            n,
        )
    };
    let response = axum::Json(json!({ "repositories": repos })).into_response();
    Ok(with_link(response, "/v2/_catalog", n, repos.last(), more))
}
