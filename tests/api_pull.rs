//! Pull: the base endpoint, manifests and blobs by GET and HEAD, `Range`
//! on blobs, and blobs visible only in the repositories they are linked to.
mod common;
mod support;

use common::sha256;
use support::*;

#[tokio::test]
async fn base_endpoint_get_and_head() {
    let reg = Registry::start(&[]);
    for path in ["/v2/", "/v2"] {
        let r = reg.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let r = reg.head(path).await;
        assert_eq!(r.status(), 200, "HEAD {path}");
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }
    // Every answer under /v2 says which API it speaks, errors included.
    let r = reg.get("/v2/nothing/here/manifests/latest").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
}

#[tokio::test]
async fn manifest_by_tag_and_digest() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("lib/app", "v1", "a").await;
    let len = img.manifest.len().to_string();
    for reference in ["v1", img.digest.as_str()] {
        let path = format!("/v2/lib/app/manifests/{reference}");
        let r = reg.get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(&r, "docker-content-digest"),
            Some(img.digest.as_str())
        );
        assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(header(&r, "content-length"), Some(len.as_str()));
        assert_eq!(r.bytes().await.unwrap(), img.manifest, "exact bytes");

        let r = reg.head(&path).await;
        assert_eq!(r.status(), 200, "HEAD {path}");
        assert_eq!(
            header(&r, "docker-content-digest"),
            Some(img.digest.as_str())
        );
        assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(header(&r, "content-length"), Some(len.as_str()));
        assert!(r.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn manifest_content_type_is_what_was_pushed() {
    let reg = Registry::start(&[]);
    let config = reg.push_blob("r", b"{}").await;
    // No mediaType field: the Content-Type of the push is all there is.
    for (tag, media_type, config_type) in [
        ("oci", OCI_MANIFEST, OCI_CONFIG),
        ("docker", DOCKER_MANIFEST, DOCKER_CONFIG),
    ] {
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": config_type, "digest": config, "size": 2},
            "layers": []
        }))
        .unwrap();
        let r = reg.put_manifest("r", tag, Some(media_type), &body).await;
        assert_eq!(r.status(), 201, "{tag}");
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = reg
                .request(method.clone(), &format!("/v2/r/manifests/{tag}"))
                .header("Accept", "*/*")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                header(&r, "content-type"),
                Some(media_type),
                "{method} {tag}"
            );
        }
        let r = reg.get(&format!("/v2/r/manifests/{}", sha256(&body))).await;
        assert_eq!(header(&r, "content-type"), Some(media_type));
        assert_eq!(r.bytes().await.unwrap(), body);
    }
    // Parameters on the pushed Content-Type are not part of the media type.
    let body = image_manifest((&config, 2), &[], None);
    let r = reg
        .put_manifest(
            "r",
            "params",
            Some(&format!("{OCI_MANIFEST}; charset=utf-8")),
            &body,
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = reg.get("/v2/r/manifests/params").await;
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
}

#[tokio::test]
async fn unknown_manifests_are_404() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let missing = sha256(b"never pushed");
    let r = reg.get("/v2/r/manifests/v2").await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.get(&format!("/v2/r/manifests/{missing}")).await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    // A blob digest is not a manifest.
    let r = reg
        .get(&format!("/v2/r/manifests/{}", img.layer_digest))
        .await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.get("/v2/other/manifests/v1").await;
    expect_error(r, 404, "NAME_UNKNOWN").await;
    // A manifest lives only in the repository it was pushed to.
    reg.push_image("s", "v1", "b").await;
    let r = reg.get(&format!("/v2/s/manifests/{}", img.digest)).await;
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = reg.head("/v2/r/manifests/v2").await;
    assert_eq!(r.status(), 404);
    assert!(r.bytes().await.unwrap().is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn blob_get_and_head() {
    blob_get_and_head_with(&[]).await;
}

/// The same with the small-blob cache switched off: every GET reads the
/// file.
#[tokio::test]
async fn blob_get_and_head_without_the_cache() {
    blob_get_and_head_with(&["--blob-cache-bytes-max", "0"]).await;
}

async fn blob_get_and_head_with(args: &[&str]) {
    let reg = Registry::start(args);
    // One small blob (sent in one buffer) and one big (streamed).
    for (i, size) in [10usize, 300 * 1024].into_iter().enumerate() {
        let bytes = pseudo_random_bytes(size, i as u64 + 1);
        let digest = reg.push_blob("r", &bytes).await;
        let path = format!("/v2/r/blobs/{digest}");
        let r = reg.get(&path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
        assert_eq!(
            header(&r, "content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(r.bytes().await.unwrap(), bytes);
        // Again: from the cache when it is on.
        let r = reg.get(&path).await;
        assert_eq!(r.bytes().await.unwrap(), bytes);
        let r = reg.head(&path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
        assert_eq!(
            header(&r, "content-length"),
            Some(size.to_string().as_str())
        );
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let missing = sha256(b"missing");
    let r = reg.get(&format!("/v2/r/blobs/{missing}")).await;
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    let r = reg.head(&format!("/v2/r/blobs/{missing}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn blobs_are_visible_only_where_linked() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("team-a/app", b"private layer").await;
    reg.push_blob("team-b/app", b"something else").await;
    for repo in ["team-b/app", "team-c/unknown"] {
        let r = reg.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        expect_error(r, 404, "BLOB_UNKNOWN").await;
        let r = reg.head(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 404, "{repo}");
    }
    let r = reg.get(&format!("/v2/team-a/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn blob_ranges() {
    let reg = Registry::start(&[]);
    let bytes = pseudo_random_bytes(1000, 7);
    let digest = reg.push_blob("r", &bytes).await;
    let path = format!("/v2/r/blobs/{digest}");
    let cases: &[(&str, usize, usize)] = &[
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=990-", 990, 999),
        ("bytes=-10", 990, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=900-5000", 900, 999),
        ("bytes=999-999", 999, 999),
    ];
    for &(range, start, end) in cases {
        let r = reg.get_range(&path, range).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {start}-{end}/1000").as_str()),
            "{range}"
        );
        let len = end - start + 1;
        assert_eq!(header(&r, "content-length"), Some(len.to_string().as_str()));
        assert_eq!(r.bytes().await.unwrap(), &bytes[start..=end], "{range}");
    }
    // HEAD with a range describes the part without sending it.
    let r = reg
        .request(reqwest::Method::HEAD, &path)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 10-19/1000"));
    assert_eq!(header(&r, "content-length"), Some("10"));
    // Ranges that a server must ignore are answered with the whole blob.
    for ignored in ["bytes=5-1", "items=0-1", "bytes=a-b"] {
        let r = reg.get_range(&path, ignored).await;
        assert_eq!(r.status(), 200, "{ignored}");
        assert_eq!(r.bytes().await.unwrap(), bytes);
    }
}

/// Blobs above the in-memory size are served from memory maps, a few
/// MiB at a time: whole, and ranges inside one piece and across pieces.
#[tokio::test]
async fn large_blob_ranges() {
    let reg = Registry::start(&[]);
    let size = 9 * 1024 * 1024 + 123;
    let bytes = pseudo_random_bytes(size, 11);
    let digest = reg.push_blob("r", &bytes).await;
    let path = format!("/v2/r/blobs/{digest}");
    let r = reg.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(size.to_string().as_str())
    );
    assert!(r.bytes().await.unwrap() == bytes, "the whole blob");
    let piece = 4 * 1024 * 1024;
    let cases: &[(usize, usize)] = &[
        (1, 70_000),
        (piece - 100, piece + 100_000),
        (100, size - 1),
        (size - 70_000, size - 1),
    ];
    for &(start, end) in cases {
        let r = reg.get_range(&path, &format!("bytes={start}-{end}")).await;
        assert_eq!(r.status(), 206, "{start}-{end}");
        assert!(
            r.bytes().await.unwrap() == bytes[start..=end],
            "{start}-{end}"
        );
    }
}

#[tokio::test]
async fn unsatisfiable_range_is_416_with_honest_length() {
    let reg = Registry::start(&[]);
    let bytes = pseudo_random_bytes(1000, 9);
    let digest = reg.push_blob("r", &bytes).await;
    let path = format!("/v2/r/blobs/{digest}");
    for range in ["bytes=1000-", "bytes=1000-2000", "bytes=-0"] {
        // Raw, so the Content-Length is compared with the bytes really sent.
        let mut c = RawConnection::open(reg.addr());
        let header_line = format!("Range: {range}");
        c.send(&raw_request(reg.addr(), "GET", &path, &[&header_line], b""));
        let r = c.read_response(false).expect("an answer");
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{range}");
        let declared: usize = r
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        assert_eq!(declared, r.body.len(), "{range}");
        // The connection is still in a sane state: a second request works.
        c.send(&raw_request(reg.addr(), "GET", &path, &[], b""));
        let r = c.read_response(false).expect("a second answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, bytes);
    }
}

#[tokio::test]
async fn small_reads_do_not_wait_for_delayed_acks() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("r", b"tiny").await;
    let path = format!("/v2/r/blobs/{digest}");
    // Warm the connection, then time sequential requests on it. Nagle's
    // algorithm meeting a delayed ACK costs ~40 ms per request.
    reg.get(&path).await;
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = std::time::Instant::now();
        let r = reg.get(&path).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"tiny");
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    assert!(
        median < std::time::Duration::from_millis(20),
        "median small GET took {median:?}"
    );
}
