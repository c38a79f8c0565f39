//! Single registry operations, each verified: the status, the
//! `Docker-Content-Digest` header, and the sha256 of every body read.
//! A failed check is an `Err` naming the request and what was wrong.

use std::time::Instant;

use bytes::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use hyper::{Method, StatusCode};

use crate::content::{sha256_digest, Image, MANIFEST_ACCEPT, MANIFEST_MEDIA_TYPE};
use crate::http::{location_path, with_query, BoxError, Client, Reply};
use crate::stats::Latencies;

pub fn expect_status(reply: &Reply, expected: StatusCode, what: &str) -> Result<(), BoxError> {
    if reply.status == expected {
        return Ok(());
    }
    let body = String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]).into_owned();
    Err(format!("{what}: expected {expected}, got {} {body}", reply.status).into())
}

/// The `Docker-Content-Digest` header must be present and equal `digest`.
pub fn expect_digest_header(reply: &Reply, digest: &str, what: &str) -> Result<(), BoxError> {
    match reply.header("docker-content-digest") {
        Some(d) if d == digest => Ok(()),
        Some(d) => Err(format!("{what}: Docker-Content-Digest {d}, expected {digest}").into()),
        None => Err(format!("{what}: no Docker-Content-Digest header").into()),
    }
}

pub fn expect_body_digest(reply: &Reply, digest: &str, what: &str) -> Result<(), BoxError> {
    let actual = sha256_digest(&reply.body);
    if actual == digest {
        Ok(())
    } else {
        Err(format!(
            "{what}: body of {} bytes hashes to {actual}, expected {digest}",
            reply.body.len()
        )
        .into())
    }
}

/// Opens an upload session; returns the path of its `Location`.
pub async fn start_upload(client: &mut Client, repo: &str) -> Result<String, BoxError> {
    let what = format!("POST /v2/{repo}/blobs/uploads/");
    let reply = client
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Some(Bytes::new()),
        )
        .await?;
    expect_status(&reply, StatusCode::ACCEPTED, &what)?;
    let location = reply
        .header("location")
        .ok_or_else(|| format!("{what}: 202 without Location"))?;
    Ok(location_path(location))
}

/// POST, then PUT with the whole body and `?digest=`: the monolithic
/// upload clients use for small blobs. Returns the number of requests.
pub async fn upload_blob(
    client: &mut Client,
    repo: &str,
    bytes: &Bytes,
    digest: &str,
) -> Result<u32, BoxError> {
    upload_blob_timed(client, repo, bytes, digest, &mut PushSteps::default()).await
}

/// Latencies of each kind of request a push makes, to see which one a
/// push waits on.
#[derive(Default)]
pub struct PushSteps {
    pub post: Latencies,
    pub put_blob: Latencies,
    pub put_manifest: Latencies,
}

async fn upload_blob_timed(
    client: &mut Client,
    repo: &str,
    bytes: &Bytes,
    digest: &str,
    steps: &mut PushSteps,
) -> Result<u32, BoxError> {
    let t = Instant::now();
    let location = start_upload(client, repo).await?;
    steps.post.record(t);
    let path = with_query(&location, "digest", digest);
    let t = Instant::now();
    let reply = client
        .call(
            Method::PUT,
            &path,
            &[(CONTENT_TYPE, "application/octet-stream")],
            Some(bytes.clone()),
        )
        .await?;
    steps.put_blob.record(t);
    let what = format!("PUT blob {digest} to {repo}");
    expect_status(&reply, StatusCode::CREATED, &what)?;
    expect_digest_header(&reply, digest, &what)?;
    Ok(2)
}

pub async fn put_manifest(
    client: &mut Client,
    repo: &str,
    reference: &str,
    image: &Image,
) -> Result<u32, BoxError> {
    let reply = client
        .call(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[(CONTENT_TYPE, MANIFEST_MEDIA_TYPE)],
            Some(image.manifest.clone()),
        )
        .await?;
    let what = format!("PUT /v2/{repo}/manifests/{reference}");
    expect_status(&reply, StatusCode::CREATED, &what)?;
    expect_digest_header(&reply, &image.manifest_digest, &what)?;
    Ok(1)
}

/// Config, layer, then the manifest under `tag`: five requests.
pub async fn push_image(
    client: &mut Client,
    repo: &str,
    tag: &str,
    image: &Image,
    steps: &mut PushSteps,
) -> Result<u32, BoxError> {
    let mut requests =
        upload_blob_timed(client, repo, &image.config, &image.config_digest, steps).await?;
    requests += upload_blob_timed(client, repo, &image.layer, &image.layer_digest, steps).await?;
    let t = Instant::now();
    requests += put_manifest(client, repo, tag, image).await?;
    steps.put_manifest.record(t);
    Ok(requests)
}

pub async fn get_manifest(
    client: &mut Client,
    repo: &str,
    tag: &str,
    image: &Image,
) -> Result<(), BoxError> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let reply = client
        .call(Method::GET, &path, &[(ACCEPT, MANIFEST_ACCEPT)], None)
        .await?;
    let what = format!("GET {path}");
    expect_status(&reply, StatusCode::OK, &what)?;
    expect_digest_header(&reply, &image.manifest_digest, &what)?;
    expect_body_digest(&reply, &image.manifest_digest, &what)
}

pub async fn get_blob(client: &mut Client, repo: &str, digest: &str) -> Result<(), BoxError> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let reply = client.call(Method::GET, &path, &[], None).await?;
    let what = format!("GET {path}");
    expect_status(&reply, StatusCode::OK, &what)?;
    expect_digest_header(&reply, digest, &what)?;
    expect_body_digest(&reply, digest, &what)
}

pub async fn head_manifest(
    client: &mut Client,
    repo: &str,
    tag: &str,
    image: &Image,
) -> Result<(), BoxError> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let reply = client
        .call(Method::HEAD, &path, &[(ACCEPT, MANIFEST_ACCEPT)], None)
        .await?;
    let what = format!("HEAD {path}");
    expect_status(&reply, StatusCode::OK, &what)?;
    expect_digest_header(&reply, &image.manifest_digest, &what)?;
    let length = reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if length != Some(image.manifest.len()) {
        return Err(format!(
            "{what}: Content-Length {length:?}, expected {}",
            image.manifest.len()
        )
        .into());
    }
    Ok(())
}

/// Follows a `Link: <url>; rel="next"` header to its origin-form path.
pub fn next_link(reply: &Reply) -> Option<String> {
    let link = reply.header("link")?;
    let start = link.find('<')? + 1;
    let end = start + link[start..].find('>')?;
    if !link[end..].contains("rel=\"next\"") && !link[end..].contains("rel=next") {
        return None;
    }
    Some(location_path(&link[start..end]))
}

/// The `Location` of a reply, as a path; an error when it is missing.
pub fn location(reply: &Reply, what: &str) -> Result<String, BoxError> {
    reply
        .headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(location_path)
        .ok_or_else(|| format!("{what}: no Location header").into())
}
