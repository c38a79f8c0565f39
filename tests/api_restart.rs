//! Restarts (SIGKILL + start) in the middle of things: a chunked upload
//! resumes at its last acknowledged offset, unacknowledged bytes in its
//! staging file are cut off, a staging file that lost acknowledged bytes
//! ends its session, and everything acknowledged before is still there.
mod common;
mod support;

use std::io::Write;

use common::sha256;
use reqwest::Method;
use support::*;

async fn patch(reg: &Registry, loc: &str, start: usize, bytes: &[u8]) -> reqwest::Response {
    reg.request(Method::PATCH, loc)
        .header(
            "Content-Range",
            format!("{start}-{}", start + bytes.len() - 1),
        )
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

fn upload_id(loc: &str) -> String {
    loc.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn chunked_upload_resumes_after_restart() {
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(3 * 100_000, 21);
    let loc = reg.start_upload("r").await;
    for start in [0, 100_000] {
        let r = patch(&reg, &loc, start, &blob[start..start + 100_000]).await;
        assert_eq!(r.status(), 202);
    }
    let reg = reg.restart();
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-199999"));
    // A chunk that does not continue from there is still refused.
    let r = patch(&reg, &loc, 100_000, &blob[100_000..200_000]).await;
    assert_eq!(r.status(), 416);
    let r = patch(&reg, &loc, 200_000, &blob[200_000..]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-299999"));
    let digest = sha256(&blob);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert!(r.bytes().await.unwrap() == blob, "blob intact");
}

#[tokio::test]
async fn restart_then_finish_with_the_last_chunk_in_the_put() {
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(50_000, 22);
    let loc = reg.start_upload("r").await;
    assert_eq!(patch(&reg, &loc, 0, &blob[..30_000]).await.status(), 202);
    let reg = reg.restart();
    let digest = sha256(&blob);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .body(blob[30_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert!(r.bytes().await.unwrap() == blob);
}

#[tokio::test]
async fn unacknowledged_staging_bytes_are_cut_back() {
    if !common::garage::blobs_on_disk() {
        return; // staging files are the filesystem backend's
    }
    let mut reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(20_000, 23);
    let loc = reg.start_upload("r").await;
    assert_eq!(patch(&reg, &loc, 0, &blob[..12_000]).await.status(), 202);
    let id = upload_id(&loc);
    reg.restart_with(|data| {
        // Bytes a crash left behind after the last logged chunk.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("uploads").join(&id))
            .expect("staging file exists");
        f.write_all(b"garbage that was never acknowledged").unwrap();
    });
    let staging = reg.dir.path().join("uploads").join(&id);
    assert_eq!(
        std::fs::metadata(&staging).unwrap().len(),
        12_000,
        "cut back"
    );
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-11999"));
    assert_eq!(
        patch(&reg, &loc, 12_000, &blob[12_000..]).await.status(),
        202
    );
    let digest = sha256(&blob);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert!(r.bytes().await.unwrap() == blob);
}

#[tokio::test]
async fn staging_that_lost_acknowledged_bytes_ends_the_session() {
    if !common::garage::blobs_on_disk() {
        return; // staging files are the filesystem backend's
    }
    let mut reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    assert_eq!(patch(&reg, &loc, 0, &[5u8; 1000]).await.status(), 202);
    let id = upload_id(&loc);
    reg.restart_with(|data| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(data.join("uploads").join(&id))
            .unwrap();
        f.set_len(500).unwrap();
    });
    let r = reg.get(&loc).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(!reg.dir.path().join("uploads").join(&id).exists());
}

#[tokio::test]
async fn acknowledged_state_survives_a_kill() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("lib/app", "v1", "a").await;
    let r = reg
        .put_manifest("lib/app", &img.digest, Some(OCI_MANIFEST), &img.manifest)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg
        .request(
            Method::PUT,
            &format!("/v2/lib/app/manifests/{}?tag=v2&tag=v3", img.digest),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cancelled = reg.start_upload("lib/app").await;
    assert_eq!(reg.delete(&cancelled).await.status(), 204);
    let reg = reg.restart();
    for tag in ["v1", "v2", "v3"] {
        let r = reg.get(&format!("/v2/lib/app/manifests/{tag}")).await;
        assert_eq!(r.status(), 200, "{tag}");
        assert_eq!(
            header(&r, "docker-content-digest"),
            Some(img.digest.as_str())
        );
        assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
    }
    let r = reg
        .get(&format!("/v2/lib/app/blobs/{}", img.layer_digest))
        .await;
    assert_eq!(r.bytes().await.unwrap(), img.layer);
    let r = reg.get(&cancelled).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
}
