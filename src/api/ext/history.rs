//! `GET /v2/<name>/_ferro/history/repository` and
//! `GET /v2/<name>/_ferro/history/tag?tag=<tag>`: every push, tag move and
//! delete of a repository or a tag, in order, with time, actor and digests.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::request::query_param;
use super::super::App;
use crate::history::{self, HistoryQuery};
use crate::oci::{RepoName, Tag};
use crate::timefmt::rfc3339;

/// `tag_query` is the query string for a tag's history, `None` for the
/// repository's.
pub async fn get(app: &Arc<App>, repo: RepoName, tag_query: Option<&str>) -> ApiResult<Response> {
    let tag = match tag_query {
        None => None,
        Some(q) => {
            let t = query_param(q, "tag").ok_or_else(|| {
                ApiError::new(ErrorCode::Unsupported, "the tag parameter is required")
                    .with_status(StatusCode::BAD_REQUEST)
            })?;
            Some(Tag::parse(&t)?)
        }
    };
    let upto = app.state.read().last_seq;
    let query = HistoryQuery {
        repo: repo.clone(),
        tag: tag.clone(),
    };
    let log_dir = app.layout.log_dir();
    let history = tokio::task::spawn_blocking(move || history::read(&log_dir, &query, &mut |_| {}))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let items: Vec<_> = history
        .items
        .into_iter()
        .filter(|i| i.seq <= upto)
        .map(|i| {
            json!({
                "seq": i.seq,
                "time": rfc3339(i.time_unix_ns),
                "time_unix_ns": i.time_unix_ns,
                "actor": i.actor,
                "changes": i.changes,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "repository": repo,
        "tag": tag,
        "items": items,
        "log_first_seq": history.log_first_seq,
        "last_seq": upto,
    }))
    .into_response())
}
