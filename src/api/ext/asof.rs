//! Reads as of a point in the past: `GET /v2/<name>/_ferro/asof/manifest`,
//! `.../asof/tags` and `.../asof/referrers`, each with `at=SEQ|RFC3339`.
//! They answer exactly as the live endpoints do, from the state rebuilt at
//! that point (snapshot + replay, see `replay`), so a past manifest comes
//! back with its exact bytes, media type and digest.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use parking_lot::Mutex;

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::request::query_param;
use super::super::{listing, manifests, referrers, App};
use super::at_param;
use crate::oci::{Digest, Reference, RepoName};
use crate::projection::State;
use crate::replay::{self, AsOf, ReplayError};

/// How many rebuilt past states are kept for reuse.
const PAST_STATES_CACHED_MAX: usize = 4;

/// Recently rebuilt past states, newest last, keyed by the point asked for.
#[derive(Default)]
pub struct PastStates {
    cache: Mutex<Vec<(AsOf, Arc<State>)>>,
}

impl PastStates {
    fn get(&self, at: AsOf) -> Option<Arc<State>> {
        let mut cache = self.cache.lock();
        let i = cache.iter().position(|(a, _)| *a == at)?;
        let hit = cache.remove(i);
        let state = hit.1.clone();
        cache.push(hit);
        Some(state)
    }

    fn put(&self, at: AsOf, state: Arc<State>) {
        let mut cache = self.cache.lock();
        cache.retain(|(a, _)| *a != at);
        if cache.len() == PAST_STATES_CACHED_MAX {
            cache.remove(0);
        }
        cache.push((at, state));
    }
}

/// The state as of `at`: rebuilt (or reused), never ahead of what is
/// committed now.
pub async fn state_as_of(app: &Arc<App>, at: AsOf) -> ApiResult<Arc<State>> {
    let (last_seq, last_time) = {
        let s = app.state.read();
        (s.last_seq, s.last_time_unix_ns)
    };
    let at = match at {
        AsOf::Seq(n) if n > last_seq => {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("sequence {n} is past the last committed entry ({last_seq})"),
            )
            .with_status(StatusCode::NOT_FOUND))
        }
        // A time at or after the last commit is now: pin it to that entry so
        // the answer cannot include a commit made while it is rebuilt.
        AsOf::TimeUnixNs(t) if t >= last_time => AsOf::Seq(last_seq),
        other => other,
    };
    if let Some(s) = app.past.get(at) {
        return Ok(s);
    }
    let layout = app.layout.clone();
    let replayed =
        tokio::task::spawn_blocking(move || replay::state_as_of(&layout, at, &mut |_| {}))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                ReplayError::Compacted { .. } => {
                    ApiError::new(ErrorCode::Unsupported, e.to_string())
                        .with_status(StatusCode::GONE)
                }
                other => ApiError::internal(other),
            })?;
    let state = Arc::new(replayed.state);
    app.past.put(at, state.clone());
    Ok(state)
}

pub async fn manifest(
    app: &Arc<App>,
    repo: &RepoName,
    query: &str,
    head: bool,
) -> ApiResult<Response> {
    let reference = query_param(query, "reference").ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unsupported,
            "the reference parameter (a tag or digest) is required",
        )
        .with_status(StatusCode::BAD_REQUEST)
    })?;
    let reference = Reference::parse(&reference).map_err(|e| match e {
        crate::oci::ReferenceError::Digest(d) => ApiError::from(d),
        crate::oci::ReferenceError::Name(n) => ApiError::from(n),
    })?;
    let state = state_as_of(app, at_param(query)?).await?;
    manifests::get(&state, repo, &reference, head)
}

pub async fn tags(app: &Arc<App>, repo: &RepoName, query: &str) -> ApiResult<Response> {
    let at = query_param(query, "at").unwrap_or_default();
    let state = state_as_of(app, at_param(query)?).await?;
    let at: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
    let link_path = format!("/v2/{repo}/_ferro/asof/tags?at={at}");
    listing::tags(app, &state, repo, query, &link_path)
}

pub async fn referrers(app: &Arc<App>, repo: &RepoName, query: &str) -> ApiResult<Response> {
    let digest = query_param(query, "digest").ok_or_else(|| {
        ApiError::new(ErrorCode::Unsupported, "the digest parameter is required")
            .with_status(StatusCode::BAD_REQUEST)
    })?;
    let digest = Digest::parse(&digest)?;
    let at = query_param(query, "at").unwrap_or_default();
    let state = state_as_of(app, at_param(query)?).await?;
    let at: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
    let link_path = format!("/v2/{repo}/_ferro/asof/referrers?digest={digest}&at={at}");
    referrers::get(app, &state, repo, &digest, query, &link_path)
}
