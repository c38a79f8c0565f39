//! Restores, each a new entry in the log (so the restore itself is on the
//! record, with its actor):
//! - `POST /v2/<name>/_ferro/restore/tag?tag=T&digest=D` points `T` at `D`;
//!   `...&at=SEQ|RFC3339` instead points it where it pointed then;
//! - `POST /v2/<name>/_ferro/restore/manifest?digest=D` brings back a
//!   deleted manifest (its last pushed body, from the log).
//!
//! A manifest the repository no longer has is pushed again from the log,
//! with the same checks as any push (its blobs must still be linked).

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::manifests::digest_headers;
use super::super::request::{query_param, RequestContext};
use super::super::App;
use super::asof::state_as_of;
use crate::commands::Command;
use crate::oci::{Digest, RepoName, Tag};
use crate::projection::Manifest;
use crate::restore::{self, put_again, RestoreError};
use crate::timefmt::parse_as_of;

fn required(query: &str, key: &str) -> ApiResult<String> {
    query_param(query, key).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unsupported,
            format!("the {key} parameter is required"),
        )
        .with_status(StatusCode::BAD_REQUEST)
    })
}

pub async fn tag(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    query: &str,
) -> ApiResult<Response> {
    let tag = Tag::parse(&required(query, "tag")?)?;
    let digest = match (query_param(query, "digest"), query_param(query, "at")) {
        (Some(d), None) => Digest::parse(&d)?,
        (None, Some(at)) => {
            let at = parse_as_of(&at).map_err(|e| {
                ApiError::new(ErrorCode::Unsupported, e).with_status(StatusCode::BAD_REQUEST)
            })?;
            let past = state_as_of(app, at).await?;
            past.repo(&repo)
                .and_then(|r| r.tags.get(&tag))
                .cloned()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::ManifestUnknown,
                        format!("tag {tag} had no value then"),
                    )
                })?
        }
        _ => {
            return Err(
                ApiError::new(ErrorCode::Unsupported, "give exactly one of digest and at")
                    .with_status(StatusCode::BAD_REQUEST),
            )
        }
    };
    let present = app
        .state
        .read()
        .repo(&repo)
        .is_some_and(|r| r.manifests.contains_key(&digest));
    let command = if present {
        Command::SetTag {
            repo: repo.clone(),
            tag: tag.clone(),
            digest: digest.clone(),
        }
    } else {
        let m = find_manifest(app, &repo, &digest).await?;
        put_again(&repo, &digest, m, vec![tag])
    };
    submit(app, ctx, command, &digest).await
}

pub async fn manifest(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    query: &str,
) -> ApiResult<Response> {
    let digest = Digest::parse(&required(query, "digest")?)?;
    let m = find_manifest(app, &repo, &digest).await?;
    submit(app, ctx, put_again(&repo, &digest, m, Vec::new()), &digest).await
}

async fn submit(
    app: &Arc<App>,
    ctx: &RequestContext,
    command: Command,
    digest: &Digest,
) -> ApiResult<Response> {
    let committed = app.writer.submit(ctx.actor(), command).await?;
    let status = if committed.seq.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (
        status,
        axum::Json(json!({ "seq": committed.seq, "events": committed.events })),
    )
        .into_response();
    digest_headers(response.headers_mut(), digest);
    if let Some(seq) = committed.seq {
        response
            .headers_mut()
            .insert("Ferro-Seq", HeaderValue::from(seq));
    }
    Ok(response)
}

/// The manifest `digest` of `repo` as last pushed: from the current state,
/// or from the log.
pub(crate) async fn find_manifest(
    app: &Arc<App>,
    repo: &RepoName,
    digest: &Digest,
) -> ApiResult<Manifest> {
    let (current, upto) = {
        let s = app.state.read();
        (
            s.repo(repo).and_then(|r| r.manifests.get(digest)).cloned(),
            s.last_seq,
        )
    };
    if let Some(m) = current {
        return Ok(m);
    }
    let layout = app.layout.clone();
    let (repo, digest) = (repo.clone(), digest.clone());
    tokio::task::spawn_blocking(move || restore::manifest_from_log(&layout, &repo, &digest, upto))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            e @ RestoreError::ManifestNotInLog { .. } => {
                ApiError::new(ErrorCode::ManifestUnknown, e.to_string())
            }
            other => ApiError::internal(other),
        })
}
