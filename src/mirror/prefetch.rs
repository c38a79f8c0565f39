//! Pre-fetching an image into a running server's mirror (`ferroctl mirror
//! sync`): the image is pulled through the server like a client would
//! pull it (the manifest, an index's children, every blob they
//! reference), so the server fills what it lacks through its own mirror,
//! on the record, and the bytes read here are thrown away.

use object_store_http as http;
use serde::Serialize;

use super::client::{error_chain, MANIFEST_ACCEPT};
use crate::oci::{Digest, Reference, RepoName};

/// What one pre-fetch pulled.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PrefetchReport {
    pub manifests: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// The digest the reference resolved to.
    pub digest: String,
}

/// Most manifests followed from one index (children of children
/// included): a bound on what a hostile index can ask for.
pub const MANIFESTS_MAX: u64 = 1024;

/// Pulls `repo:reference` and everything it references through the server
/// at `server` (`http://127.0.0.1:5000`), with Basic `credentials` if any.
/// `on_blob` is told each blob's size as it is pulled.
pub async fn prefetch(
    server: &str,
    repo: &RepoName,
    reference: &Reference,
    credentials: Option<(&str, &str)>,
    on_blob: &mut dyn FnMut(u64),
) -> Result<PrefetchReport, String> {
    let http = http::Client::builder()
        .build()
        .map_err(|e| error_chain(&e))?;
    let base = server.trim_end_matches('/');
    let get = |path: String| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some((u, p)) = credentials {
            r = r.basic_auth(u, Some(p));
        }
        r
    };
    let mut report = PrefetchReport::default();
    let mut pending = vec![reference.to_string()];
    let mut seen_blobs = std::collections::HashSet::new();
    while let Some(reference) = pending.pop() {
        report.manifests += 1;
        if report.manifests > MANIFESTS_MAX {
            return Err(format!("more than {MANIFESTS_MAX} manifests"));
        }
        let answer = get(format!("/v2/{repo}/manifests/{reference}"))
            .header(http::header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = answer.status();
        let media_type = answer
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = answer.bytes().await.map_err(|e| error_chain(&e))?;
        if !status.is_success() {
            return Err(format!(
                "manifest {repo}:{reference}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        if report.digest.is_empty() {
            report.digest = Digest::sha256_of(&body).to_string();
        }
        let parsed = crate::manifest::parse(&body, media_type.as_deref())
            .map_err(|e| format!("manifest {repo}:{reference}: {e}"))?;
        pending.extend(parsed.manifests.iter().map(|d| d.to_string()));
        for blob in parsed.blobs {
            if !seen_blobs.insert(blob.clone()) {
                continue;
            }
            let mut answer = get(format!("/v2/{repo}/blobs/{blob}"))
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            if !answer.status().is_success() {
                return Err(format!("blob {blob}: {}", answer.status()));
            }
            let mut hasher = blob.algorithm().hasher();
            let mut size = 0u64;
            while let Some(chunk) = answer.chunk().await.map_err(|e| error_chain(&e))? {
                hasher.update(&chunk);
                size += chunk.len() as u64;
            }
            if hasher.finish() != blob {
                return Err(format!("blob {blob}: the bytes have another digest"));
            }
            on_blob(size);
            report.blobs += 1;
            report.blob_bytes += size;
        }
    }
    Ok(report)
}
