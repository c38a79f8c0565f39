//! `/v2/<name>/referrers/<digest>`: the manifests in a repository whose
//! `subject` is `<digest>`, as an image index, optionally filtered by
//! `artifactType`. An unknown subject has an empty index, not a 404.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiResult;
use super::request::query_param;

use crate::manifest::{annotations, OCI_INDEX};
use crate::oci::{Digest, RepoName};
use crate::projection::State;

/// Answers a referrers query from `state` (the live state, or a past one).
pub fn get(state: &State, repo: &RepoName, subject: &Digest, query: &str) -> ApiResult<Response> {
    // An empty value filters nothing (and so is not reported as applied).
    // A media type has no spaces, so a space can only be a `+` the client
    // did not percent-encode (`+json`, `+gzip`) that form decoding turned
    // into a space: give it back.
    let filter = query_param(query, "artifactType")
        .filter(|t| !t.is_empty())
        .map(|t| t.replace(' ', "+"));
    let mut descriptors: Vec<Value> = Vec::new();
    {
        if let Some(r) = state.repo(repo) {
            for digest in r.referrers.get(subject).into_iter().flatten() {
                let Some(m) = r.manifests.get(digest) else {
                    continue;
                };
                if filter.is_some() && m.artifact_type != filter {
                    continue;
                }
                let mut d = json!({
                    "mediaType": m.media_type,
                    "digest": digest,
                    "size": m.body.len(),
                });
                if let Some(t) = &m.artifact_type {
                    d["artifactType"] = json!(t);
                }
                if let Some(a) = annotations(&m.body) {
                    d["annotations"] = Value::Object(a);
                }
                descriptors.push(d);
            }
        }
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    })
    .to_string();
    let mut response = ([(header::CONTENT_TYPE, OCI_INDEX)], body).into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
