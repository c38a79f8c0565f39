//! Push, chunked: PATCH with and without `Content-Range`, out-of-order
//! chunks (416 with the current state), the closing PUT with and without a
//! last chunk, and a multi-MiB blob in many chunks.
mod common;
mod support;

use common::sha256;
use reqwest::Method;
use support::*;

async fn patch(
    reg: &Registry,
    loc: &str,
    range: Option<(usize, usize)>,
    bytes: &[u8],
) -> reqwest::Response {
    let mut req = reg
        .request(Method::PATCH, loc)
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec());
    if let Some((start, end)) = range {
        req = req.header("Content-Range", format!("{start}-{end}"));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn chunks_with_content_range() {
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(3000, 11);
    let mut loc = reg.start_upload("r").await;
    for (start, end) in [(0, 999), (1000, 1999), (2000, 2999)] {
        let r = patch(&reg, &loc, Some((start, end)), &blob[start..=end]).await;
        assert_eq!(r.status(), 202);
        assert_eq!(header(&r, "range"), Some(format!("0-{end}").as_str()));
        assert_eq!(header(&r, "content-length"), Some("0"));
        loc = location(&r);
        let r = reg.get(&loc).await;
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "range"), Some(format!("0-{end}").as_str()));
    }
    let digest = sha256(&blob);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/r/blobs/{digest}"));
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn streamed_chunks_without_content_range() {
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(5000, 12);
    let loc = reg.start_upload("r").await;
    for (i, part) in blob.chunks(1700).enumerate() {
        let r = patch(&reg, &loc, None, part).await;
        assert_eq!(r.status(), 202);
        let end = (i * 1700 + part.len()) - 1;
        assert_eq!(header(&r, "range"), Some(format!("0-{end}").as_str()));
    }
    // A chunked transfer-encoded body (no Content-Length) streams too.
    let loc2 = reg.start_upload("r").await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        blob.chunks(999).map(|c| Ok(c.to_vec())).collect();
    let r = reg
        .request(Method::PATCH, &loc2)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-4999"));
    let digest = sha256(&blob);
    for l in [&loc, &loc2] {
        let r = reg
            .request(Method::PUT, &with_query(l, &format!("digest={digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn out_of_order_chunk_is_416_with_the_current_state() {
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(300, 13);
    let loc = reg.start_upload("r").await;
    // The first chunk must start at 0.
    let r = patch(&reg, &loc, Some((100, 199)), &blob[100..200]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), Some("0-0"));
    assert_eq!(location(&r), loc);
    check_error_body(&r.text().await.unwrap(), "BLOB_UPLOAD_INVALID");

    let r = patch(&reg, &loc, Some((0, 99)), &blob[..100]).await;
    assert_eq!(r.status(), 202);
    for (start, end) in [(0, 99), (50, 149), (101, 200), (200, 299)] {
        let r = patch(&reg, &loc, Some((start, end)), &blob[start..=end]).await;
        assert_eq!(r.status(), 416, "{start}-{end}");
        assert_eq!(header(&r, "range"), Some("0-99"), "{start}-{end}");
        assert_eq!(location(&r), loc);
        check_error_body(&r.text().await.unwrap(), "BLOB_UPLOAD_INVALID");
    }
    // Nothing of the refused chunks was kept.
    let r = reg.get(&loc).await;
    assert_eq!(header(&r, "range"), Some("0-99"));
    let r = patch(&reg, &loc, Some((100, 299)), &blob[100..]).await;
    assert_eq!(r.status(), 202);
    let digest = sha256(&blob);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn content_range_and_content_length_must_agree() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    // The range says 10 bytes, the body has 5.
    let r = patch(&reg, &loc, Some((0, 9)), b"12345").await;
    expect_error(r, 400, "SIZE_INVALID").await;
    let r = reg.get(&loc).await;
    assert_eq!(header(&r, "range"), Some("0-0"));
    // Content-Range in the RFC 9110 form is understood as well.
    let r = reg
        .request(Method::PATCH, &loc)
        .header("Content-Range", "bytes 0-4/*")
        .body(b"12345".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-4"));
}

#[tokio::test]
async fn put_with_the_final_chunk() {
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(2500, 14);
    let digest = sha256(&blob);
    // PATCH the start, PUT the rest (with a Content-Range, as the
    // conformance suite does).
    let loc = reg.start_upload("r").await;
    let r = patch(&reg, &loc, Some((0, 1499)), &blob[..1500]).await;
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .header("Content-Range", "1500-2499")
        .header("Content-Type", "application/octet-stream")
        .body(blob[1500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), blob);

    // A closing PUT whose chunk does not continue the upload is refused.
    let loc = reg.start_upload("r").await;
    let r = patch(&reg, &loc, Some((0, 1499)), &blob[..1500]).await;
    assert_eq!(r.status(), 202);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .header("Content-Range", "1000-1999")
        .body(blob[1000..2000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), Some("0-1499"));
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204, "the session survives");
    assert_eq!(header(&r, "range"), Some("0-1499"));
}

#[tokio::test]
async fn finish_with_a_sha512_digest() {
    use sha2::Digest as _;
    let reg = Registry::start(&[]);
    let blob = pseudo_random_bytes(10_000, 16);
    let digest = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&blob)));
    let loc = reg.start_upload("r").await;
    let r = patch(&reg, &loc, Some((0, 4999)), &blob[..5000]).await;
    assert_eq!(r.status(), 202);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .body(blob[5000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    let r = reg.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn empty_patch_changes_nothing() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let r = patch(&reg, &loc, None, b"abc").await;
    assert_eq!(header(&r, "range"), Some("0-2"));
    let r = patch(&reg, &loc, None, b"").await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-2"));
}

#[tokio::test]
async fn multi_mebibyte_blob_in_many_chunks() {
    let reg = Registry::start(&[]);
    let size = 6 * 1024 * 1024 + 12345;
    let blob = pseudo_random_bytes(size, 15);
    let chunk = 256 * 1024 + 7;
    let mut loc = reg.start_upload("big/blob").await;
    let mut start = 0;
    let mut chunks = 0;
    while start < size {
        let end = (start + chunk).min(size) - 1;
        let r = patch(&reg, &loc, Some((start, end)), &blob[start..=end]).await;
        assert_eq!(r.status(), 202, "chunk at {start}");
        assert_eq!(header(&r, "range"), Some(format!("0-{end}").as_str()));
        loc = location(&r);
        start = end + 1;
        chunks += 1;
    }
    assert!(chunks > 20);
    let digest = sha256(&blob);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.get(&format!("/v2/big/blob/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(size.to_string().as_str())
    );
    let got = r.bytes().await.unwrap();
    assert!(got == blob, "the blob came back different");
    // A range deep inside the streamed blob.
    let r = reg
        .get_range(
            &format!("/v2/big/blob/blobs/{digest}"),
            "bytes=5000000-5000099",
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &blob[5_000_000..5_000_100]);
}
