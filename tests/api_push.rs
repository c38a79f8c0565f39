//! Push, monolithic: POST then PUT, a single POST `?digest=`, upload status
//! and cancel, and what happens when the bytes are not what was announced.
mod common;
mod support;

use std::path::Path;

use common::sha256;
use reqwest::Method;
use support::*;

fn staging_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("uploads"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn post_then_put() {
    let reg = Registry::start(&[]);
    let r = reg
        .request(Method::POST, "/v2/lib/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    assert!(loc.starts_with("/v2/lib/app/blobs/uploads/"), "{loc}");
    assert_eq!(header(&r, "range"), Some("0-0"));
    let id = loc.rsplit('/').next().unwrap();
    assert_eq!(header(&r, "docker-upload-uuid"), Some(id));

    let bytes = b"a monolithic blob".to_vec();
    let digest = sha256(&bytes);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let blob_loc = location(&r);
    assert_eq!(blob_loc, format!("/v2/lib/app/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    let r = reg.get(&blob_loc).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    // The session is over.
    let r = reg.get(&loc).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(staging_files(reg.dir.path()).is_empty());
}

#[tokio::test]
async fn single_post_with_digest() {
    let reg = Registry::start(&[]);
    let bytes = pseudo_random_bytes(200_000, 3);
    let digest = sha256(&bytes);
    let r = reg
        .request(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={digest}"),
        )
        .header("Content-Type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/r/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), bytes);
    // Pushing the same content again is fine and changes nothing.
    let again = reg.push_blob("r", &bytes).await;
    assert_eq!(again, digest);
    // The empty blob is a blob too.
    let empty = reg.push_blob("r", b"").await;
    let r = reg.get(&format!("/v2/r/blobs/{empty}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("0"));
}

#[tokio::test]
async fn single_post_digest_mismatch_stores_nothing() {
    let reg = Registry::start(&[]);
    let claimed = sha256(b"what the client meant");
    let r = reg
        .request(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={claimed}"),
        )
        .body(b"what the client sent".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = reg.head(&format!("/v2/r/blobs/{claimed}")).await;
    assert_eq!(r.status(), 404);
    let actual = sha256(b"what the client sent");
    let r = reg.head(&format!("/v2/r/blobs/{actual}")).await;
    assert_eq!(r.status(), 404);
    assert!(staging_files(reg.dir.path()).is_empty());
    let r = reg.get("/v2/_catalog").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!([]),
        "no repository was made"
    );
}

#[tokio::test]
async fn put_digest_mismatch_ends_the_session() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let r = reg
        .request(Method::PATCH, &loc)
        .body(b"first part ".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let claimed = sha256(b"first part and the rest");
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={claimed}")))
        .body(b"and not the rest".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = reg.head(&format!("/v2/r/blobs/{claimed}")).await;
    assert_eq!(r.status(), 404, "nothing stored under the claimed digest");
    let actual = sha256(b"first part and not the rest");
    let r = reg.head(&format!("/v2/r/blobs/{actual}")).await;
    assert_eq!(r.status(), 404, "nor under the real one");
    let r = reg.get(&loc).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(staging_files(reg.dir.path()).is_empty());
    assert!(
        walk_files(&reg.dir.path().join("blobs")).is_empty(),
        "no blob file"
    );
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn put_without_digest_or_with_a_bad_one() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let r = reg
        .request(Method::PUT, &loc)
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = reg
        .request(Method::PUT, &with_query(&loc, "digest=sha256:nothex"))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    // A malformed request does not end the session.
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-0"));
    let digest = sha256(b"x");
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn upload_status_and_cancel() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(location(&r), loc);
    assert_eq!(header(&r, "range"), Some("0-0"));
    let r = reg
        .request(Method::PATCH, &loc)
        .body(vec![7u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-99"));
    if common::garage::blobs_on_disk() {
        assert_eq!(staging_files(reg.dir.path()).len(), 1);
    }

    let r = reg.delete(&loc).await;
    assert_eq!(r.status(), 204);
    let r = reg.get(&loc).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg.delete(&loc).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg
        .request(Method::PATCH, &loc)
        .body(vec![7u8; 10])
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(staging_files(reg.dir.path()).is_empty());
}

#[tokio::test]
async fn sessions_belong_to_their_repository() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("mine").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let foreign = format!("/v2/theirs/blobs/uploads/{id}");
    let r = reg.get(&foreign).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg
        .request(Method::PATCH, &foreign)
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg.delete(&foreign).await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204, "still there for its owner");
}

#[tokio::test]
async fn body_shorter_than_content_length_is_refused() {
    let reg = Registry::start(&[]);
    let bytes = b"0123456789".to_vec();
    let digest = sha256(&bytes);
    // The client announces 20 bytes, sends 10, then stops sending.
    let mut c = RawConnection::open(reg.addr());
    c.send(&raw_request(
        reg.addr(),
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={digest}"),
        &["Content-Length: 20"],
        &bytes,
    ));
    c.shutdown_write();
    if let Some(r) = c.read_response(false) {
        assert!(
            (400..500).contains(&r.status),
            "a short body is a client error, got {}: {}",
            r.status,
            r.text()
        );
    }
    let r = reg.head(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 404);

    // The same on a PATCH: the chunk is not acknowledged.
    let loc = reg.start_upload("r").await;
    let mut c = RawConnection::open(reg.addr());
    c.send(&raw_request(
        reg.addr(),
        "PATCH",
        &loc,
        &["Content-Length: 20"],
        &bytes,
    ));
    c.shutdown_write();
    if let Some(r) = c.read_response(false) {
        assert!((400..500).contains(&r.status), "got {}", r.status);
    }
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-0"), "nothing acknowledged");
    // And the session goes on from there.
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn chunk_limit_is_a_clean_413() {
    let reg = Registry::start(&["--chunk-bytes-max", "1000"]);
    let big = vec![1u8; 1001];
    let digest = sha256(&big);
    let r = reg
        .request(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={digest}"),
        )
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "SIZE_INVALID").await;
    let loc = reg.start_upload("r").await;
    let r = reg
        .request(Method::PATCH, &loc)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "SIZE_INVALID").await;
    let r = reg.get(&loc).await;
    assert_eq!(header(&r, "range"), Some("0-0"));
    let r = reg.head(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 404);
    // Within the limit all is well.
    let ok = reg.push_blob("r", &big[..1000]).await;
    assert_eq!(reg.head(&format!("/v2/r/blobs/{ok}")).await.status(), 200);
}

#[tokio::test]
async fn blob_limit_counts_every_chunk() {
    let reg = Registry::start(&["--blob-bytes-max", "1000"]);
    let loc = reg.start_upload("r").await;
    let r = reg
        .request(Method::PATCH, &loc)
        .body(vec![1u8; 600])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // 600 more would make the blob 1200 bytes.
    let r = reg
        .request(Method::PATCH, &loc)
        .body(vec![1u8; 600])
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "SIZE_INVALID").await;
    let d = sha256(&[1u8; 1200]);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .body(vec![1u8; 600])
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "SIZE_INVALID").await;
    let r = reg.get(&loc).await;
    assert_eq!(header(&r, "range"), Some("0-599"));
    let d = sha256(&[1u8; 1000]);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .body(vec![1u8; 400])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "exactly at the limit");
}

#[tokio::test]
async fn empty_blob_by_post_then_put() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let d = sha256(b"");
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/r/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_content() {
    let reg = Registry::start(&[]);
    let bytes = pseudo_random_bytes(300_000, 31);
    let digest = sha256(&bytes);
    let upload = |i: usize| {
        let (reg, bytes, digest) = (&reg, &bytes, &digest);
        async move {
            let repo = format!("repo{}", i % 3);
            if i.is_multiple_of(2) {
                // Monolithic.
                let r = reg
                    .request(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    )
                    .body(bytes.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "upload {i}");
            } else {
                // Chunked, in two parts.
                let loc = reg.start_upload(&repo).await;
                let r = reg
                    .request(Method::PATCH, &loc)
                    .body(bytes[..100_000].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "upload {i}");
                let r = reg
                    .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
                    .body(bytes[100_000..].to_vec())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "upload {i}");
            }
            // Reads in between.
            let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
            assert_eq!(r.status(), 200, "read {i}");
            assert!(r.bytes().await.unwrap() == *bytes, "read {i}");
        }
    };
    futures_util::future::join_all((0..12).map(upload)).await;
    assert!(staging_files(reg.dir.path()).is_empty());
}

/// Peak resident memory of a process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn big_blobs_stream_through_bounded_memory() {
    let reg = Registry::start(&[]);
    let pid = reg.server.child.id();
    let Some(before) = peak_rss_kib(pid) else {
        eprintln!("skipping: no /proc/<pid>/status here");
        return;
    };
    // Large next to what streaming keeps resident whatever the size (a
    // download keeps up to three 4 MiB pieces of the file mapped: the one
    // being sent, the next, and the one after, mapped ahead), so only a
    // body held whole can cross the bound below.
    let size = 64 * 1024 * 1024;
    let blob = pseudo_random_bytes(size, 41);
    // One single POST and one chunked upload (two big PATCHes), then a GET.
    let digest = reg.push_blob("r", &blob).await;
    let loc = reg.start_upload("s").await;
    for part in blob.chunks(size / 2) {
        let r = reg
            .request(Method::PATCH, &loc)
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/s/blobs/{digest}")).await;
    let got = r.bytes().await.unwrap();
    assert!(got.len() == size && got == blob);
    let grown_kib = peak_rss_kib(pid).unwrap() - before;
    eprintln!("peak memory grew by {grown_kib} KiB");
    // Holding a body (or a blob) whole would grow by at least its size.
    assert!(
        grown_kib < (size as u64 / 1024) / 2,
        "the server's peak memory grew by {grown_kib} KiB for a {size}-byte blob"
    );
}
