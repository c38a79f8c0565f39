//! `/v2/<name>/manifests/<reference>`: GET, HEAD, PUT, DELETE.
//!
//! A reference that is neither a tag nor a digest (`.x`, `-x`, 129
//! characters, `sha256:` with bad hex, an unknown algorithm) names no
//! manifest and never can: GET, HEAD and DELETE answer it as they answer a
//! well-formed reference that names nothing, 404 `MANIFEST_UNKNOWN` (or
//! `NAME_UNKNOWN` for an unknown repository), which is what the spec's
//! pull section and its conformance suite ask for. Only a PUT, which would
//! create it, is told the reference is invalid (400).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::body::read_limited;
use super::error::{ApiError, ApiResult, ErrorCode};
use super::request::{query_pairs, RequestContext};
use super::App;
use crate::commands::Command;
use crate::manifest;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::projection::served::ManifestHeaders;
use crate::projection::State;

/// Answers a manifest GET/HEAD from `state` (the live state, or a past one).
pub fn get(
    state: &State,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> ApiResult<Response> {
    let response = {
        let r = state.repo(repo).ok_or_else(repo_unknown)?;
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(t) => r.tags.get(t).ok_or_else(manifest_unknown)?,
        };
        let m = r.manifests.get(digest).ok_or_else(manifest_unknown)?;
        let mut response = if head {
            Body::empty().into_response()
        } else {
            Body::from(m.body.clone()).into_response()
        };
        let built = m.headers.get_or_init(|| ManifestHeaders {
            content_length: HeaderValue::from(m.body.len()),
            content_type: HeaderValue::from_str(&m.media_type).ok(),
            docker_content_digest: digest_value(digest),
            etag: etag_value(digest),
        });
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, built.content_length.clone());
        if let Some(v) = &built.content_type {
            h.insert(header::CONTENT_TYPE, v.clone());
        }
        if let Some(v) = &built.docker_content_digest {
            h.insert(CONTENT_DIGEST, v.clone());
        }
        if let Some(v) = &built.etag {
            h.insert(header::ETAG, v.clone());
        }
        response
    };
    Ok(response)
}

/// The answer to a GET or HEAD of a reference that is neither a tag nor a
/// digest, from `state`: the same 404 as a reference that names nothing.
pub fn unnamed(state: &State, repo: &RepoName) -> ApiError {
    match state.repo(repo) {
        None => repo_unknown(),
        Some(_) => manifest_unknown(),
    }
}

fn repo_unknown() -> ApiError {
    ApiError::new(
        ErrorCode::NameUnknown,
        "repository name not known to registry",
    )
}

fn manifest_unknown() -> ApiError {
    ApiError::new(ErrorCode::ManifestUnknown, "manifest unknown")
}

const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

pub fn digest_headers(h: &mut HeaderMap, digest: &Digest) {
    if let Some(v) = digest_value(digest) {
        h.insert(CONTENT_DIGEST, v);
    }
    if let Some(v) = etag_value(digest) {
        h.insert(header::ETAG, v);
    }
}

/// `Docker-Content-Digest`: the digest itself.
fn digest_value(digest: &Digest) -> Option<HeaderValue> {
    HeaderValue::from_str(digest.as_str()).ok()
}

/// `ETag`: `"<digest>"`, built on the stack (the longest digest is
/// sha512's).
fn etag_value(digest: &Digest) -> Option<HeaderValue> {
    let mut etag = [b'"'; 2 + 7 + 128];
    let d = digest.as_str().as_bytes();
    if d.len() + 2 > etag.len() {
        return None;
    }
    etag[1..1 + d.len()].copy_from_slice(d);
    HeaderValue::from_bytes(&etag[..d.len() + 2]).ok()
}

/// The media type of a `Content-Type` header, parameters removed.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mt = v.split(';').next().unwrap_or("").trim();
    (!mt.is_empty()).then(|| mt.to_owned())
}

pub async fn put(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    reference: Reference,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let limit = app.limits.manifest_bytes_max;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(manifest_too_large(limit));
        }
    }
    let body = read_limited(body, limit).await.map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            manifest_too_large(limit)
        } else {
            // A body that could not be read is a manifest that was not sent.
            ApiError::new(ErrorCode::ManifestInvalid, e.message)
        }
    })?;
    let parsed = manifest::parse(&body, content_type(headers).as_deref())?;
    let (digest, mut tags) = match reference {
        Reference::Digest(d) => {
            let computed = d.recompute(&body);
            if computed != d {
                return Err(ApiError::new(
                    ErrorCode::DigestInvalid,
                    format!("manifest body has digest {computed}, not {d}"),
                ));
            }
            (d, Vec::new())
        }
        Reference::Tag(t) => (Digest::sha256_of(&body), vec![t]),
    };
    for (k, v) in query_pairs(query) {
        if k == "tag" {
            tags.push(Tag::parse(&v)?);
        }
    }
    tags.sort();
    tags.dedup();
    if tags.len() > app.limits.tags_per_put_max {
        return Err(ApiError::new(
            ErrorCode::ManifestInvalid,
            format!(
                "at most {} tags per manifest PUT",
                app.limits.tags_per_put_max
            ),
        ));
    }
    let subject = parsed.subject.clone();
    let command = Command::PutManifest {
        repo: repo.clone(),
        digest: digest.clone(),
        media_type: parsed.media_type,
        body,
        blobs: parsed.blobs,
        manifests: parsed.manifests,
        subject: parsed.subject,
        artifact_type: parsed.artifact_type,
        tags: tags.clone(),
    };
    app.writer.submit(ctx.actor(), command).await?;
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{repo}/manifests/{digest}")) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    digest_headers(h, &digest);
    if let Some(s) = subject {
        if let Ok(v) = HeaderValue::from_str(s.as_str()) {
            h.insert("OCI-Subject", v);
        }
    }
    // One header for all tags: a header per tag would put a 100-tag push
    // over the header count clients accept (hyper's is 100).
    if !tags.is_empty() {
        let joined = tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&joined) {
            h.insert("OCI-Tag", v);
        }
    }
    Ok(response)
}

fn manifest_too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestInvalid,
        format!("manifest exceeds the limit of {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

pub async fn delete(
    app: &Arc<App>,
    ctx: &RequestContext,
    repo: RepoName,
    reference: Reference,
) -> ApiResult<Response> {
    may_delete(app, &repo)?;
    let command = match reference {
        Reference::Digest(digest) => Command::DeleteManifest { repo, digest },
        Reference::Tag(tag) => Command::DeleteTag { repo, tag },
    };
    app.writer.submit(ctx.actor(), command).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

/// A DELETE of a reference that is neither a tag nor a digest: refused as
/// any delete is when deletes are off, else the same 404 as a reference
/// that names nothing (there is nothing to delete).
pub fn delete_unnamed(app: &App, repo: &RepoName) -> ApiResult<Response> {
    may_delete(app, repo)?;
    Err(manifest_unknown())
}

/// What every manifest DELETE checks first: deletes are on, and the
/// repository exists.
fn may_delete(app: &App, repo: &RepoName) -> ApiResult<()> {
    if !app.delete_enabled {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "deletes are disabled on this registry",
        ));
    }
    if app.state.read().repo(repo).is_none() {
        return Err(repo_unknown());
    }
    Ok(())
}
