//! `/v2/<name>/referrers/<digest>`: the manifests in a repository whose
//! `subject` is `<digest>`, as an image index, optionally filtered by
//! `artifactType`. An unknown subject has an empty index, not a 404.
//!
//! Paginated like the tag list: referrers come in the order of their
//! digests (a stable order: a referrer's place never changes), at most
//! `n` (bounded by `limits.page_entries_max`, which is also the page
//! without `n`) per answer; when more follow, a `Link: <…?n=N&last=D>;
//! rel="next"` header points at them, `last` being the last digest of
//! this page (the next page is the referrers after it). The filter is
//! applied before paging and carried in the link, so every page is
//! filtered and says so (`OCI-Filters-Applied`).

use std::ops::Bound;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiResult;
use super::listing::{page_size, with_link};
use super::request::query_param;
use super::App;

use crate::manifest::{annotations, OCI_INDEX};
use crate::oci::{Digest, RepoName};
use crate::projection::State;

/// Answers a referrers query from `state` (the live state, or a past
/// one); `link_path` is where the next page is (path and fixed query,
/// without the filter, which is added here).
pub fn get(
    app: &App,
    state: &State,
    repo: &RepoName,
    subject: &Digest,
    query: &str,
    link_path: &str,
) -> ApiResult<Response> {
    // An empty value filters nothing (and so is not reported as applied).
    // A media type has no spaces, so a space can only be a `+` the client
    // did not percent-encode (`+json`, `+gzip`) that form decoding turned
    // into a space: give it back.
    let filter = query_param(query, "artifactType")
        .filter(|t| !t.is_empty())
        .map(|t| t.replace(' ', "+"));
    let n = page_size(app, query)?;
    let last = query_param(query, "last");
    let mut descriptors: Vec<Value> = Vec::with_capacity(n.min(1024));
    let mut last_listed: Option<String> = None;
    let mut more = false;
    let r = state.repo(repo);
    if let (Some(r), Some(set)) = (r, r.and_then(|r| r.referrers.get(subject))) {
        let after = match &last {
            Some(l) => Bound::Excluded(l.as_str()),
            None => Bound::Unbounded,
        };
        for digest in set.range::<str, _>((after, Bound::Unbounded)) {
            let Some(m) = r.manifests.get(digest) else {
                continue;
            };
            if filter.is_some() && m.artifact_type != filter {
                continue;
            }
            if descriptors.len() == n {
                more = true;
                break;
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
            last_listed = Some(digest.to_string());
        }
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    })
    .to_string();
    let mut response = ([(header::CONTENT_TYPE, OCI_INDEX)], body).into_response();
    let link_path = match &filter {
        Some(t) => {
            let sep = if link_path.contains('?') { '&' } else { '?' };
            let encoded: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
            format!("{link_path}{sep}artifactType={encoded}")
        }
        None => link_path.to_owned(),
    };
    if filter.is_some() {
        response.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(with_link(
        response,
        &link_path,
        n,
        last_listed.as_ref(),
        more,
    ))
}
