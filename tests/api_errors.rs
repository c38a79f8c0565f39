//! Errors: every refusal is a 4xx in the spec's JSON form with the spec's
//! code; hostile names, digests and upload ids never reach the disk; no
//! body leaks the data directory; connections survive refused requests.
mod common;
mod support;

use common::sha256;
use reqwest::Method;
use support::*;

/// Checks a raw answer: status, spec error body with `code`, an honest
/// Content-Length, and nothing about the data directory.
fn expect_raw_error(reg: &Registry, r: &RawResponse, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    check_error_body(&r.text(), code);
    assert_no_leak(reg, &r.text());
    if let Some(len) = r.header("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), r.body.len(), "{what}");
    }
}

fn assert_no_leak(reg: &Registry, text: &str) {
    let dir = reg.dir.path().to_string_lossy().into_owned();
    assert!(
        !text.contains(&dir),
        "error body leaks the data directory: {text}"
    );
    assert!(!text.contains("/tmp"), "error body leaks a path: {text}");
}

#[tokio::test]
async fn invalid_names_are_name_invalid() {
    let reg = Registry::start(&[]);
    reg.push_image("ok", "v1", "a").await;
    let d = sha256(b"x");
    let long = "a".repeat(256);
    let long_parts = format!("{}/{}", "a".repeat(128), "b".repeat(128));
    let names = [
        "..",
        "../ok",
        "ok/..",
        "ok/../ok",
        "%2e%2e",
        "%2e%2e/ok",
        "%2E%2E",
        "ok%2f..",
        "Upper",
        "ok/Upper",
        long.as_str(),
        long_parts.as_str(),
        "a//b",
        "-a",
        "a-",
        "a..b",
        "a___b",
        ".hidden",
        "a%20b",
        "_a",
    ];
    for name in names {
        let paths = [
            ("GET", format!("/v2/{name}/manifests/v1")),
            ("HEAD", format!("/v2/{name}/manifests/v1")),
            ("PUT", format!("/v2/{name}/manifests/v1")),
            ("DELETE", format!("/v2/{name}/manifests/v1")),
            ("GET", format!("/v2/{name}/blobs/{d}")),
            ("DELETE", format!("/v2/{name}/blobs/{d}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/referrers/{d}")),
        ];
        for (method, path) in paths {
            // Raw, so the path reaches the server exactly as written.
            let r = raw_once(reg.addr(), method, &path, &[], b"");
            let what = format!("{method} {path}");
            if method == "HEAD" {
                assert_eq!(r.status, 400, "{what}");
            } else {
                expect_raw_error(&reg, &r, 400, "NAME_INVALID", &what);
            }
        }
    }
    // The longest valid name is fine.
    let longest = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(longest.len(), 255);
    reg.push_blob(&longest, b"fits").await;
    // Nothing was created outside the data directory, nor any odd repo.
    let r = reg.get("/v2/_catalog").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!([longest, "ok"]));
}

#[tokio::test]
async fn malformed_digests_are_digest_invalid() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let hex = &img.layer_digest["sha256:".len()..];
    let bad = [
        format!("sha256:{}", hex.to_uppercase()),
        format!("SHA256:{hex}"),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}g", &hex[..63]),
        "sha256:".to_owned(),
        format!("sha512:{hex}"),
        format!("md5:{hex}"),
        format!(":{hex}"),
        "sha256:totallywrong".to_owned(),
        format!("sha256:{hex}%2F..%2F.."),
        format!("sha256:..%2F{}", &hex[..58]),
    ];
    for digest in &bad {
        for (method, path) in [
            ("GET", format!("/v2/r/blobs/{digest}")),
            ("DELETE", format!("/v2/r/blobs/{digest}")),
            ("PUT", format!("/v2/r/manifests/{digest}")),
            ("GET", format!("/v2/r/referrers/{digest}")),
            ("POST", format!("/v2/r/blobs/uploads/?digest={digest}")),
            (
                "POST",
                format!("/v2/r/blobs/uploads/?mount={digest}&from=r"),
            ),
        ] {
            let r = raw_once(reg.addr(), method, &path, &[], b"");
            expect_raw_error(&reg, &r, 400, "DIGEST_INVALID", &format!("{method} {path}"));
        }
        let r = raw_once(
            reg.addr(),
            "HEAD",
            &format!("/v2/r/blobs/{digest}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 400, "HEAD {digest}");
    }
    // Bare words where a digest belongs.
    for path in ["/v2/r/blobs/latest", "/v2/r/referrers/v1"] {
        let r = reg.get(path).await;
        expect_error(r, 400, "DIGEST_INVALID").await;
    }
    // Nothing above touched the real content.
    let r = reg.get(&format!("/v2/r/blobs/{}", img.layer_digest)).await;
    assert_eq!(r.bytes().await.unwrap(), img.layer);
    let r = reg.get("/v2/r/manifests/v1").await;
    assert_eq!(r.status(), 200);
}

/// A manifest reference that is neither a tag nor a digest names nothing:
/// GET, HEAD and DELETE answer 404 as for a reference that names nothing
/// (`MANIFEST_UNKNOWN`, or `NAME_UNKNOWN` for an unknown repository); a
/// PUT, which would create it, is refused as invalid (400).
#[tokio::test]
async fn invalid_manifest_references() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let hex = &img.digest["sha256:".len()..];
    let long = "t".repeat(129);
    let tags = [
        // The conformance suite's "nonexistent manifest".
        ".INVALID_MANIFEST_NAME".to_owned(),
        ".dot".to_owned(),
        "-dash".to_owned(),
        long,
        "a%2Fb".to_owned(),
        "%2e%2e".to_owned(),
        "t@g".to_owned(),
    ];
    let digests = [
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{}g", &hex[..63]),
        "sha256:totallywrong".to_owned(),
        format!("md5:{hex}"),
        format!("foo+bar:{hex}"),
    ];
    let cases = tags
        .iter()
        .map(|t| (t, "MANIFEST_INVALID"))
        .chain(digests.iter().map(|d| (d, "DIGEST_INVALID")));
    for (reference, put_code) in cases {
        let path = format!("/v2/r/manifests/{reference}");
        for method in ["GET", "DELETE"] {
            let r = raw_once(reg.addr(), method, &path, &[], b"");
            expect_raw_error(
                &reg,
                &r,
                404,
                "MANIFEST_UNKNOWN",
                &format!("{method} {path}"),
            );
        }
        let r = raw_once(reg.addr(), "HEAD", &path, &[], b"");
        assert_eq!(r.status, 404, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path}");
        let r = raw_once(
            reg.addr(),
            "PUT",
            &path,
            &[&format!("Content-Type: {OCI_MANIFEST}")],
            &img.manifest,
        );
        expect_raw_error(&reg, &r, 400, put_code, &format!("PUT {path}"));
        // In a repository that does not exist: the same 404 as any
        // reference there.
        let path = format!("/v2/nowhere/manifests/{reference}");
        for method in ["GET", "DELETE"] {
            let r = raw_once(reg.addr(), method, &path, &[], b"");
            expect_raw_error(&reg, &r, 404, "NAME_UNKNOWN", &format!("{method} {path}"));
        }
    }
    // Nothing was created or removed by any of it.
    let r = reg.get("/v2/r/tags/list").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    assert!(reg.get("/v2/nowhere/tags/list").await.status() == 404);
    let r = reg.get(&format!("/v2/r/manifests/{}", img.digest)).await;
    assert_eq!(r.status(), 200);
    // A bad name is still judged first.
    let r = raw_once(reg.addr(), "GET", "/v2/R/manifests/.x", &[], b"");
    expect_raw_error(&reg, &r, 400, "NAME_INVALID", "GET /v2/R/manifests/.x");
    let longest = "t".repeat(128);
    let r = reg
        .put_manifest("r", &longest, Some(OCI_MANIFEST), &img.manifest)
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn unknown_and_garbage_upload_ids() {
    let reg = Registry::start(&[]);
    let real = reg.start_upload("r").await;
    let real_id = real.rsplit('/').next().unwrap().to_owned();
    let d = sha256(b"x");
    let ids = [
        "0123456789abcdef0123456789abcdef".to_owned(),
        real_id.to_uppercase(),
        format!("{real_id}0"),
        real_id[1..].to_owned(),
        "not-an-id".to_owned(),
        "..".to_owned(),
        "%2e%2e".to_owned(),
        "..%2F..%2Fblobs".to_owned(),
        "x".repeat(500),
    ];
    for id in &ids {
        let path = format!("/v2/r/blobs/uploads/{id}");
        for (method, path) in [
            ("GET", path.clone()),
            ("PATCH", path.clone()),
            ("PUT", format!("{path}?digest={d}")),
            ("DELETE", path.clone()),
        ] {
            let r = raw_once(reg.addr(), method, &path, &[], b"x");
            expect_raw_error(
                &reg,
                &r,
                404,
                "BLOB_UPLOAD_UNKNOWN",
                &format!("{method} {path}"),
            );
        }
    }
    // The real session is untouched by all of that.
    let r = reg.get(&real).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-0"));
}

#[tokio::test]
async fn non_numeric_content_range_is_blob_upload_invalid() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let d = sha256(b"abc");
    for range in [
        "abc",
        "0-",
        "-5",
        "a-b",
        "5-1",
        "0-2-4",
        "bytes=x-y",
        "99999999999999999999-1",
    ] {
        for (method, path) in [
            ("PATCH", loc.clone()),
            ("PUT", with_query(&loc, &format!("digest={d}"))),
        ] {
            let r = reg
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &path)
                .header("Content-Range", range)
                .body(b"abc".to_vec())
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 400, "{method} Content-Range {range}: {text}");
            check_error_body(&text, "BLOB_UPLOAD_INVALID");
        }
    }
    let r = reg
        .request(Method::PATCH, &loc)
        .header("Content-Length", "3")
        .header("Content-Range", "0-2")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the session survived the bad requests");
}

#[tokio::test]
async fn methods_not_allowed_are_unsupported() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let loc = reg.start_upload("r").await;
    let blob = format!("/v2/r/blobs/{}", img.layer_digest);
    let referrers = format!("/v2/r/referrers/{}", img.digest);
    let cases: Vec<(&str, String)> = vec![
        ("POST", "/v2/".into()),
        ("DELETE", "/v2/".into()),
        ("POST", "/v2/_catalog".into()),
        ("DELETE", "/v2/r/tags/list".into()),
        ("PUT", "/v2/r/tags/list".into()),
        ("POST", "/v2/r/manifests/v1".into()),
        ("PATCH", "/v2/r/manifests/v1".into()),
        ("PUT", blob.clone()),
        ("POST", blob.clone()),
        ("PATCH", blob.clone()),
        ("GET", "/v2/r/blobs/uploads/".into()),
        ("PUT", "/v2/r/blobs/uploads/".into()),
        ("DELETE", "/v2/r/blobs/uploads/".into()),
        ("POST", loc.clone()),
        ("PUT", referrers.clone()),
        ("DELETE", referrers.clone()),
        ("OPTIONS", "/v2/r/manifests/v1".into()),
    ];
    for (method, path) in cases {
        let r = raw_once(reg.addr(), method, &path, &[], b"");
        let what = format!("{method} {path}");
        expect_raw_error(&reg, &r, 405, "UNSUPPORTED", &what);
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{what}: a 405 names what is allowed"));
        assert!(
            !allow.is_empty() && !allow.contains(method),
            "{what}: Allow: {allow}"
        );
    }
    // Nothing changed.
    let r = reg.get(&blob).await;
    assert_eq!(r.bytes().await.unwrap(), img.layer);
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn internal_errors_say_nothing_about_the_disk() {
    let reg = Registry::start(&[]);
    let loc = reg.start_upload("r").await;
    let r = reg
        .request(Method::PATCH, &loc)
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The staging file disappears under the running server.
    let id = loc.rsplit('/').next().unwrap();
    std::fs::remove_file(reg.dir.path().join("uploads").join(id)).unwrap();
    let d = sha256(&[1u8; 150]);
    for (method, path) in [
        (Method::PATCH, loc.clone()),
        (Method::PUT, with_query(&loc, &format!("digest={d}"))),
    ] {
        let r = reg
            .request(method.clone(), &path)
            .body(vec![1u8; 50])
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 500, "{method}: {text}");
        assert_no_leak(&reg, &text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["errors"][0]["code"].is_string(), "{text}");
        assert!(v["errors"][0]["message"].is_string(), "{text}");
    }
}

#[tokio::test]
async fn unknown_routes() {
    let reg = Registry::start(&[]);
    for path in ["/v2/r/unknown/x", "/v2/r", "/v2/r/blobs"] {
        let r = reg.get(path).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 404, "{path}: {text}");
        check_error_body(&text, "NAME_UNKNOWN");
    }
    let r = reg.get("/v3/").await;
    assert_eq!(r.status(), 404);
    let r = reg.get("/").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn connection_survives_a_post_with_an_unread_body() {
    let reg = Registry::start(&[]);
    let addr = reg.addr().to_owned();
    let digest = reg.push_blob("r", b"present").await;
    let body = vec![b'z'; 4096];
    // Requests that carry a body the server has no use for, or refuses
    // before reading it; each is followed by a GET on the same connection.
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("POST", "/v2/r/blobs/uploads/".into(), vec![]),
        (
            "POST",
            format!("/v2/r/blobs/uploads/?mount={digest}&from=r"),
            vec![],
        ),
        (
            "POST",
            format!("/v2/other/blobs/uploads/?mount={digest}"),
            vec![],
        ),
        (
            "POST",
            "/v2/r/blobs/uploads/?mount=sha256:bad".into(),
            vec![],
        ),
        ("POST", "/v2/R/blobs/uploads/".into(), vec![]),
        ("POST", "/v2/".into(), vec![]),
        ("PUT", "/v2/r/manifests/-bad-tag".into(), vec![]),
        (
            "PATCH",
            "/v2/r/blobs/uploads/0123456789abcdef0123456789abcdef".into(),
            vec![],
        ),
        ("PUT", format!("/v2/r/blobs/{digest}"), vec![]),
    ];
    for (method, path, headers) in cases {
        let mut c = RawConnection::open(&addr);
        c.send(&raw_request(&addr, method, &path, &headers, &body));
        let first = c.read_response(false).expect("an answer");
        assert!(first.status < 500, "{method} {path}: {}", first.status);
        let closing = first
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if closing {
            // Allowed: the server said it would close, so no client reuses it.
            assert!(c.is_closed(), "{method} {path}: said close but stayed open");
            continue;
        }
        c.send(&raw_request(&addr, "GET", "/v2/", &[], b""));
        let second = c
            .read_response(false)
            .unwrap_or_else(|| panic!("{method} {path}: connection dropped after the answer"));
        assert_eq!(second.status, 200, "{method} {path}: {}", second.text());
    }
}

#[tokio::test]
async fn connection_survives_an_oversized_manifest() {
    let reg = Registry::start(&["--manifest-bytes-max", "1024"]);
    let addr = reg.addr().to_owned();
    let body = vec![b' '; 64 * 1024];
    let mut c = RawConnection::open(&addr);
    c.send(&raw_request(
        &addr,
        "PUT",
        "/v2/r/manifests/big",
        &[&format!("Content-Type: {OCI_MANIFEST}")],
        &body,
    ));
    let first = c.read_response(false).expect("an answer");
    expect_raw_error(&reg, &first, 413, "MANIFEST_INVALID", "oversized manifest");
    let closing = first
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if !closing {
        c.send(&raw_request(&addr, "GET", "/v2/", &[], b""));
        let second = c
            .read_response(false)
            .expect("connection usable after a 413");
        assert_eq!(second.status, 200);
    }
}

#[tokio::test]
async fn reqwest_reuses_connections_after_refusals() {
    let reg = Registry::start(&[]);
    // A single-connection client: every request reuses the same socket
    // when the server keeps it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for i in 0..20 {
        let r = http
            .post(reg.url("/v2/r/blobs/uploads/?mount=sha256:nope"))
            .body(vec![0u8; 10_000])
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 400);
        let _ = r.bytes().await;
        let r = http
            .get(reg.url("/v2/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {i}: {e}"));
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn a_large_refused_body_closes_the_connection_cleanly() {
    let reg = Registry::start(&["--manifest-bytes-max", "1024"]);
    let addr = reg.addr().to_owned();
    let body = vec![b' '; 4 * 1024 * 1024];
    let mut c = RawConnection::open(&addr);
    let request = raw_request(
        &addr,
        "PUT",
        "/v2/r/manifests/big",
        &[&format!("Content-Type: {OCI_MANIFEST}")],
        &body,
    );
    // Send in the background: the server stops reading long before the end.
    let mut writer = c.try_clone_stream();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&request);
    });
    let r = c.read_response(false).expect("the 413 arrives");
    expect_raw_error(&reg, &r, 413, "MANIFEST_INVALID", "4 MiB manifest");
    assert_eq!(
        r.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_owned()),
        "the server says it will not read the rest"
    );
    drop(c);
    sender.join().unwrap();
    // A fresh connection is served as usual.
    assert_eq!(reg.get("/v2/").await.status(), 200);
}

#[tokio::test]
async fn no_odd_request_is_a_server_error() {
    let reg = Registry::start(&["--page-entries-max", "5"]);
    let img = reg.push_image("r", "v1", "a").await;
    let loc = reg.start_upload("r").await;
    let d = &img.digest;
    let paths = [
        "/v2/_catalog?n=&last=".to_owned(),
        "/v2/_catalog?n=5&last=%FF".into(),
        "/v2/r/tags/list?n=1&last=".into(),
        "/v2/r/tags/list?last=%00".into(),
        "/v2/r/tags/list?n=18446744073709551616".into(),
        format!("/v2/r/manifests/{d}?tag="),
        format!("/v2/r/manifests/{d}?tag=%ff"),
        format!("/v2/r/referrers/{d}?artifactType=%FF%FE"),
        "/v2/r/blobs/uploads/?digest=".into(),
        "/v2/r/blobs/uploads/?mount=".into(),
        format!("/v2/r/blobs/uploads/?mount={d}&from="),
        format!("/v2/r/blobs/uploads/?digest={d}&mount={d}"),
        format!("{loc}?digest="),
        "/v2/r/manifests/".into(),
        "/v2/r/blobs/".into(),
        "/v2/r/referrers/".into(),
        "/v2/r/tags/list/".into(),
        "/v2/%00/tags/list".into(),
        "/v2/r/manifests/%00".into(),
        "/v2/r/blobs/uploads/%00".into(),
    ];
    let header_sets: [&[&str]; 4] = [
        &[],
        &["Content-Range: bytes */*"],
        &["Range: bytes=--"],
        &["Content-Type: application/vnd.oci.image.manifest.v1+json"],
    ];
    for method in ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "FOO"] {
        for path in &paths {
            for headers in header_sets {
                let what = format!("{method} {path} {headers:?}");
                let r = raw_once(reg.addr(), method, path, headers, b"{}");
                assert!(r.status < 500, "{what}: {} {}", r.status, r.text());
                if r.status >= 400 && method != "HEAD" {
                    check_any_error_body(&r.text(), &what);
                }
            }
        }
    }
    // And the registry is none the worse for it (the sweep's DELETEs and
    // PUTs may have changed "r": check elsewhere).
    let other = reg.push_image("other", "v1", "b").await;
    let r = reg.get("/v2/other/manifests/v1").await;
    assert_eq!(r.bytes().await.unwrap(), other.manifest);
}

/// The spec's error form with any spec code.
fn check_any_error_body(text: &str, what: &str) {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let code = v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no code: {text}"));
    check_error_body(text, code);
}

#[tokio::test]
async fn expect_100_continue() {
    let reg = Registry::start(&["--manifest-bytes-max", "1024"]);
    let addr = reg.addr().to_owned();
    // Refused on its headers: the final answer comes without a 100, and the
    // connection is closed since the body was never asked for.
    let mut c = RawConnection::open(&addr);
    c.send(
        format!(
            "PUT /v2/r/manifests/big HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {OCI_MANIFEST}\r\n\
             Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = c.read_response(false).expect("an answer");
    expect_raw_error(&reg, &r, 413, "MANIFEST_INVALID", "expect-continue 413");
    assert_eq!(r.header("connection"), Some("close"));

    // Accepted: 100 Continue, then the body, then 202, and the connection
    // carries on.
    let loc = reg.start_upload("r").await;
    let mut c = RawConnection::open(&addr);
    c.send(
        format!(
            "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    );
    let interim = c.read_response(false).expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let r = c.read_response(false).expect("the final answer");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("range"), Some("0-4"));
    c.send(&raw_request(&addr, "GET", &loc, &[], b""));
    let r = c
        .read_response(false)
        .expect("the connection is still open");
    assert_eq!(r.status, 204);
}
