//! Restores, each a new entry in the log (so the restore itself is on the
//! record, with its actor):
//! - `POST /v2/<name>/_ferro/restore/tag?tag=T&digest=D` points `T` at `D`;
//!   `...&at=SEQ|RFC3339` instead points it where it pointed then;
//! - `POST /v2/<name>/_ferro/restore/manifest?digest=D` brings back a
//!   deleted manifest (its last pushed body, from the log).
//!
//! A manifest the repository no longer has is pushed again from the log,
//! with the same checks as any push (its blobs must still be linked).

use std::ops::ControlFlow;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::manifests::digest_headers;
use super::super::router::{query_param, RequestContext};
use super::super::App;
use super::asof::state_as_of;
use crate::commands::Command;
use crate::events::Event;
use crate::log::recovery::{self, ReadOptions, RecoveryMode};
use crate::oci::{Digest, RepoName, Tag};
use crate::projection::Manifest;
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

fn put_again(repo: &RepoName, digest: &Digest, m: Manifest, tags: Vec<Tag>) -> Command {
    Command::PutManifest {
        repo: repo.clone(),
        digest: digest.clone(),
        media_type: m.media_type,
        body: m.body,
        blobs: m.blobs,
        manifests: m.manifests,
        subject: m.subject,
        artifact_type: m.artifact_type,
        tags,
    }
}

async fn submit(
    app: &Arc<App>,
    ctx: &RequestContext,
    command: Command,
    digest: &Digest,
) -> ApiResult<Response> {
    let committed = app.writer.submit(ctx.actor.clone(), command).await?;
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
/// or from the log's last `ManifestPut` of it.
async fn find_manifest(app: &Arc<App>, repo: &RepoName, digest: &Digest) -> ApiResult<Manifest> {
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
    let log_dir = app.layout.log_dir();
    let (repo, digest) = (repo.clone(), digest.clone());
    let found = tokio::task::spawn_blocking(move || -> Result<Option<Manifest>, String> {
        let mut found = None;
        let options = ReadOptions {
            mode: RecoveryMode::TolerateTornTail,
            ..ReadOptions::default()
        };
        recovery::read_log(&log_dir, &options, &mut |record| {
            if record.seq > upto {
                return Ok(ControlFlow::Break(()));
            }
            let entry = record
                .decode()
                .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
            for event in entry.events {
                if let Event::ManifestPut {
                    repo: r,
                    digest: d,
                    media_type,
                    body,
                    blobs,
                    manifests,
                    subject,
                    artifact_type,
                } = event
                {
                    if r == repo && d == digest {
                        found = Some(Manifest {
                            media_type,
                            body,
                            blobs,
                            manifests,
                            subject,
                            artifact_type,
                            put_seq: record.seq,
                        });
                    }
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .map_err(|e| e.to_string())?;
        Ok(found)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    found.ok_or_else(|| {
        ApiError::new(
            ErrorCode::ManifestUnknown,
            "this repository's log holds no such manifest",
        )
    })
}
