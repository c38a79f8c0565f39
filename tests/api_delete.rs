//! Content management: deleting manifests (and the tags on them), tags
//! alone, and blobs; unknown things are 404 with the right code.
mod common;
mod support;

use common::sha256;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn delete_manifest_by_digest() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let other = reg.push_image("r", "keep", "b").await;
    let r = reg
        .request(
            reqwest::Method::PUT,
            &format!("/v2/r/manifests/{}?tag=v1-alias", img.digest),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let r = reg.delete(&format!("/v2/r/manifests/{}", img.digest)).await;
    assert_eq!(r.status(), 202);
    let r = reg.get(&format!("/v2/r/manifests/{}", img.digest)).await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    for tag in ["v1", "v1-alias"] {
        let r = reg.get(&format!("/v2/r/manifests/{tag}")).await;
        expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
    let r = reg.get("/v2/r/tags/list").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["keep"]));
    // Other manifests and the blobs are untouched.
    let r = reg.get(&format!("/v2/r/manifests/{}", other.digest)).await;
    assert_eq!(r.status(), 200);
    let r = reg.get(&format!("/v2/r/blobs/{}", img.layer_digest)).await;
    assert_eq!(r.status(), 200);
    // A second delete finds nothing.
    let r = reg.delete(&format!("/v2/r/manifests/{}", img.digest)).await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    // And it can be pushed again.
    let r = reg
        .put_manifest("r", "v1", Some(OCI_MANIFEST), &img.manifest)
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn delete_tag_keeps_the_manifest() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let r = reg.delete("/v2/r/manifests/v1").await;
    assert_eq!(r.status(), 202);
    let r = reg.get("/v2/r/manifests/v1").await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.get(&format!("/v2/r/manifests/{}", img.digest)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = reg.delete("/v2/r/manifests/v1").await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.delete("/v2/r/manifests/never-existed").await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn delete_blob() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("r", b"to be deleted").await;
    reg.push_blob("s", b"to be deleted").await;
    // Read first, so the blob is in the small-blob cache when it goes.
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), &b"to be deleted"[..]);
    let r = reg.delete(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 202);
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    let r = reg.head(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 404);
    let r = reg.delete(&format!("/v2/r/blobs/{digest}")).await;
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    // Only this repository's link went away.
    let r = reg.get(&format!("/v2/s/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    let r = reg
        .delete(&format!("/v2/nobody/blobs/{}", sha256(b"?")))
        .await;
    assert_eq!(r.status(), 404);
    check_error_body(&r.text().await.unwrap(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn delete_in_unknown_repository() {
    let reg = Registry::start(&[]);
    let d = sha256(b"nothing");
    let r = reg.delete(&format!("/v2/nobody/manifests/{d}")).await;
    expect_error(r, 404, "NAME_UNKNOWN").await;
    let r = reg.delete("/v2/nobody/manifests/latest").await;
    expect_error(r, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn deleting_everything_removes_the_repository() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("gone", "v1", "a").await;
    reg.push_image("stays", "v1", "b").await;
    assert_eq!(
        reg.delete(&format!("/v2/gone/manifests/{}", img.digest))
            .await
            .status(),
        202
    );
    for d in [&img.config_digest, &img.layer_digest] {
        assert_eq!(
            reg.delete(&format!("/v2/gone/blobs/{d}")).await.status(),
            202
        );
    }
    let r = reg.get("/v2/_catalog").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["stays"]));
    let r = reg.get("/v2/gone/tags/list").await;
    expect_error(r, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn uppercase_digest_never_reaches_the_blob() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let upper = format!(
        "sha256:{}",
        img.layer_digest["sha256:".len()..].to_uppercase()
    );
    let all_upper = img.layer_digest.to_uppercase();
    for d in [&upper, &all_upper] {
        let r = reg.delete(&format!("/v2/r/blobs/{d}")).await;
        expect_error(r, 400, "DIGEST_INVALID").await;
        let r = reg.get(&format!("/v2/r/blobs/{d}")).await;
        expect_error(r, 400, "DIGEST_INVALID").await;
        let r = reg.head(&format!("/v2/r/blobs/{d}")).await;
        assert_eq!(r.status(), 400);
    }
    let upper_manifest = format!("sha256:{}", img.digest["sha256:".len()..].to_uppercase());
    // Not a digest, so it names no manifest (see api_errors).
    let r = reg
        .delete(&format!("/v2/r/manifests/{upper_manifest}"))
        .await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.get(&format!("/v2/r/manifests/{upper_manifest}")).await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    // Everything is still there, bytes and all.
    let r = reg.get(&format!("/v2/r/blobs/{}", img.layer_digest)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.layer);
    let r = reg.get(&format!("/v2/r/manifests/{}", img.digest)).await;
    assert_eq!(r.status(), 200);
    let hex = &img.layer_digest["sha256:".len()..];
    let file = reg
        .dir
        .path()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    assert!(file.exists(), "the blob file is still there");
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(&config, "delete_enabled = false\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let reg = Registry::start(&["--config", &config]);
    let img = reg.push_image("r", "v1", "a").await;
    for (path, allow) in [
        (format!("/v2/r/manifests/{}", img.digest), "GET, HEAD, PUT"),
        ("/v2/r/manifests/v1".to_owned(), "GET, HEAD, PUT"),
        (format!("/v2/r/blobs/{}", img.layer_digest), "GET, HEAD"),
    ] {
        let r = reg.delete(&path).await;
        assert_eq!(header(&r, "allow"), Some(allow), "{path}");
        expect_error(r, 405, "UNSUPPORTED").await;
        let r = reg.get(&path).await;
        assert_eq!(r.status(), 200, "{path} is still there");
    } // A reference that names nothing is refused the same way.
    let r = reg.delete("/v2/r/manifests/.INVALID_MANIFEST_NAME").await;
    assert_eq!(header(&r, "allow"), Some("GET, HEAD, PUT"));
    expect_error(r, 405, "UNSUPPORTED").await;
}
