//! `GET /v2/_ferro/events/feed`: the log's entries after a cursor, in
//! order, as JSON — so a client can follow the registry with no gap and no
//! duplicate across reconnects.
//!
//! Parameters: `after` (a sequence number; default 0), `n` (entries per
//! page; default 100, at most `page_entries_max`), `repo` (only events
//! naming that repository, with the upload events of the same entries),
//! `kind` (repeatable: only those event kinds), `wait` (seconds, at most
//! 60: when nothing is past the cursor, wait that long for a commit).
//!
//! The answer's `next` is the cursor for the next call: the last sequence
//! number examined, whether it matched the filter or not. Only committed
//! entries are served (never one whose fsync is still pending).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::request::query_pairs;
use super::super::App;
use crate::events::Event;
use crate::feed::{read_page, RepoKindFilter};
use crate::oci::RepoName;

const FEED_ENTRIES_DEFAULT: usize = 100;
const FEED_WAIT_SECONDS_MAX: u64 = 60;

struct FeedQuery {
    after: u64,
    n: usize,
    repo: Option<RepoName>,
    kinds: Vec<String>,
    wait: Duration,
}

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::BAD_REQUEST)
}

fn parse_query(app: &App, query: &str) -> ApiResult<FeedQuery> {
    let mut q = FeedQuery {
        after: 0,
        n: FEED_ENTRIES_DEFAULT.min(app.limits.page_entries_max),
        repo: None,
        kinds: Vec::new(),
        wait: Duration::ZERO,
    };
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "after" => {
                q.after = v
                    .parse()
                    .map_err(|_| bad(format!("after={v:?} is not a sequence number")))?
            }
            "n" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| bad(format!("n={v:?} is not a number")))?;
                q.n = n.min(app.limits.page_entries_max);
            }
            "repo" => q.repo = Some(RepoName::parse(&v)?),
            "kind" => {
                if !Event::KINDS.contains(&v.as_str()) {
                    return Err(bad(format!(
                        "unknown event kind {v:?}; one of {}",
                        Event::KINDS.join(", ")
                    )));
                }
                q.kinds.push(v);
            }
            "wait" => {
                let s: u64 = v
                    .parse()
                    .map_err(|_| bad(format!("wait={v:?} is not a number of seconds")))?;
                q.wait = Duration::from_secs(s.min(FEED_WAIT_SECONDS_MAX));
            }
            _ => {}
        }
    }
    Ok(q)
}

pub async fn get(app: &Arc<App>, query: &str) -> ApiResult<Response> {
    let q = parse_query(app, query)?;
    let tip = app.writer.tip();
    if !q.wait.is_zero() && tip.seq() <= q.after {
        let notified = tip.next_commit();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if tip.seq() <= q.after {
            // A shutdown ends the wait: the page is whatever is committed.
            tokio::select! {
                _ = tokio::time::timeout(q.wait, notified) => {}
                _ = app.shutdown.cancelled() => {}
            }
        }
    }
    // Committed means applied: the state's last sequence number.
    let upto = app.state.read().last_seq;
    let log_dir = app.layout.log_dir();
    let (after, n, repo, kinds) = (q.after, q.n, q.repo.clone(), q.kinds.clone());
    let positions = app.feed_positions.clone();
    let read = tokio::task::spawn_blocking(move || {
        let filter = RepoKindFilter {
            repo: repo.as_ref(),
            kinds: &kinds,
        };
        let page = read_page(&log_dir, after, upto, n, &filter, positions.get(after))?;
        if let Some(p) = page.resume {
            positions.put(p);
        }
        Ok::<_, crate::log::recovery::RecoveryError>(page)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if let Some(first) = read.log_first_seq {
        if q.after + 1 < first && q.after < upto {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!(
                    "entries {}..{} were compacted away; the log now starts at {first}",
                    q.after + 1,
                    first - 1
                ),
            )
            .with_status(StatusCode::GONE)
            .with_detail(json!({ "log_first_seq": first })));
        }
    }
    let next = read.last_examined.max(q.after);
    let full = q.n > 0 && read.entries.len() == q.n;
    let mut response = axum::Json(json!({
        "entries": read.entries,
        "next": next,
        "last_seq": upto,
    }))
    .into_response();
    if full || next < upto {
        let mut link = format!("/v2/_ferro/events/feed?after={next}&n={}", q.n);
        if let Some(r) = &q.repo {
            link.push_str(&format!("&repo={r}"));
        }
        for k in &q.kinds {
            link.push_str(&format!("&kind={k}"));
        }
        if let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(response)
}
