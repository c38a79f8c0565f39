//! Manifest PUT: by tag, by digest, with `?tag=`, every supported media
//! type, artifacts with `subject`, and every way a manifest is refused.
mod common;
mod support;

use common::sha256;
use reqwest::Method;
use serde_json::json;
use support::*;

/// Pushes a config and a layer into `repo`; returns their descriptors' parts.
async fn blobs(reg: &Registry, repo: &str, seed: &str) -> ((String, usize), (String, usize)) {
    let config = format!("{{\"c\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer {seed}").into_bytes();
    (
        (reg.push_blob(repo, &config).await, config.len()),
        (reg.push_blob(repo, &layer).await, layer.len()),
    )
}

#[tokio::test]
async fn put_by_tag() {
    let reg = Registry::start(&[]);
    let ((c, cs), (l, ls)) = blobs(&reg, "r", "a").await;
    let m = image_manifest((&c, cs), &[(&l, ls)], None);
    let digest = sha256(&m);
    let r = reg
        .put_manifest("r", "latest", Some(OCI_MANIFEST), &m)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/r/manifests/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(header(&r, "oci-subject"), None, "no subject, no header");
    // The same push again is accepted and changes nothing.
    let r = reg
        .put_manifest("r", "latest", Some(OCI_MANIFEST), &m)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg.get("/v2/r/manifests/latest").await;
    assert_eq!(r.bytes().await.unwrap(), m);
}

#[tokio::test]
async fn put_by_digest_with_and_without_tags() {
    let reg = Registry::start(&[]);
    let ((c, cs), (l, ls)) = blobs(&reg, "r", "a").await;
    let m = image_manifest((&c, cs), &[(&l, ls)], None);
    let digest = sha256(&m);
    let r = reg.put_manifest("r", &digest, Some(OCI_MANIFEST), &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/r/manifests/{digest}"));
    let r = reg.get("/v2/r/tags/list").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]), "a push by digest sets no tag");

    let r = reg
        .request(
            Method::PUT,
            &format!("/v2/r/manifests/{digest}?tag=one&tag=two&tag=three&tag=two"),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut confirmed: Vec<String> = header(&r, "oci-tag")
        .expect("OCI-Tag confirms the tags")
        .split(',')
        .map(|t| t.trim().to_owned())
        .collect();
    confirmed.sort();
    assert_eq!(confirmed, ["one", "three", "two"]);
    for tag in ["one", "two", "three"] {
        let r = reg.get(&format!("/v2/r/manifests/{tag}")).await;
        assert_eq!(r.status(), 200, "{tag}");
        assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    }
    let r = reg.get("/v2/r/tags/list").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["one", "three", "two"]));

    // A bad tag among them refuses the whole push.
    let r = reg
        .request(
            Method::PUT,
            &format!("/v2/r/manifests/{digest}?tag=four&tag=-bad"),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let r = reg.get("/v2/r/manifests/four").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn too_many_tags_in_one_put() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let query = |n: usize| {
        (0..n)
            .map(|i| format!("tag=t{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let put = |n: usize| {
        reg.request(
            Method::PUT,
            &format!("/v2/r/manifests/{}?{}", img.digest, query(n)),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
    };
    let r = put(101).await.unwrap();
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let r = reg.get("/v2/r/manifests/t0").await;
    assert_eq!(r.status(), 404);
    let r = put(100).await.unwrap();
    assert_eq!(r.status(), 201);
    let confirmed: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(str::trim)
        .collect();
    assert_eq!(confirmed.len(), 100, "every tag is confirmed");
    let r = reg.get("/v2/r/manifests/t99").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn digest_in_url_must_match_the_body() {
    let reg = Registry::start(&[]);
    let ((c, cs), _) = blobs(&reg, "r", "a").await;
    let m = image_manifest((&c, cs), &[], None);
    let other = sha256(b"another body");
    let r = reg.put_manifest("r", &other, Some(OCI_MANIFEST), &m).await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    for d in [other, sha256(&m)] {
        let r = reg.get(&format!("/v2/r/manifests/{d}")).await;
        assert_eq!(r.status(), 404);
    }
    // sha512 references are verified with sha512.
    let hex512 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha512::digest(&m))
    };
    let d512 = format!("sha512:{hex512}");
    let r = reg.put_manifest("r", &d512, Some(OCI_MANIFEST), &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d512.as_str()));
    let r = reg.get(&format!("/v2/r/manifests/{d512}")).await;
    assert_eq!(r.bytes().await.unwrap(), m);
}

#[tokio::test]
async fn image_index_and_docker_manifest_list() {
    let reg = Registry::start(&[]);
    let a = reg.push_image("multi", "amd64", "a").await;
    let b = reg.push_image("multi", "arm64", "b").await;
    let index = image_index(&[(&a.digest, a.manifest.len()), (&b.digest, b.manifest.len())]);
    let r = reg
        .put_manifest("multi", "latest", Some(OCI_INDEX), &index)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg.get("/v2/multi/manifests/latest").await;
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    assert_eq!(r.bytes().await.unwrap(), index);

    // Docker schema 2: a manifest, then a list over it.
    let ((c, cs), (l, ls)) = blobs(&reg, "docker", "d").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": c, "size": cs},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": l, "size": ls}]
    }))
    .unwrap();
    let r = reg
        .put_manifest("docker", "single", Some(DOCKER_MANIFEST), &m)
        .await;
    assert_eq!(r.status(), 201);
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST, "digest": sha256(&m), "size": m.len(),
            "platform": {"architecture": "amd64", "os": "linux"}
        }]
    }))
    .unwrap();
    let r = reg
        .put_manifest("docker", "list", Some(DOCKER_LIST), &list)
        .await;
    assert_eq!(r.status(), 201);
    for (tag, mt, body) in [
        ("single", DOCKER_MANIFEST, &m),
        ("list", DOCKER_LIST, &list),
    ] {
        let r = reg.get(&format!("/v2/docker/manifests/{tag}")).await;
        assert_eq!(header(&r, "content-type"), Some(mt));
        assert_eq!(&r.bytes().await.unwrap(), body);
    }
}

#[tokio::test]
async fn missing_references_are_manifest_blob_unknown() {
    let reg = Registry::start(&[]);
    let ((c, cs), (l, ls)) = blobs(&reg, "r", "a").await;
    let missing = sha256(b"not pushed");
    for (what, m) in [
        ("config", image_manifest((&missing, 3), &[(&l, ls)], None)),
        (
            "layer",
            image_manifest((&c, cs), &[(&l, ls), (&missing, 3)], None),
        ),
    ] {
        let r = reg.put_manifest("r", "t", Some(OCI_MANIFEST), &m).await;
        let v = expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
        assert!(
            v.to_string().contains(&missing),
            "{what}: names the blob: {v}"
        );
    }
    let r = reg.get("/v2/r/manifests/t").await;
    assert_eq!(r.status(), 404, "nothing was stored");
    // An index with a child the repository does not have.
    let index = image_index(&[(&missing, 10)]);
    let r = reg.put_manifest("r", "idx", Some(OCI_INDEX), &index).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // Blobs are per repository: a blob pushed elsewhere does not count.
    let m = image_manifest((&c, cs), &[(&l, ls)], None);
    let r = reg.put_manifest("other", "t", Some(OCI_MANIFEST), &m).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // Non-distributable layers with URLs need not be in the registry.
    let foreign = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": cs},
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": missing, "size": 3, "urls": ["https://example.invalid/layer"]
        }]
    }))
    .unwrap();
    let r = reg
        .put_manifest("r", "foreign", Some(OCI_MANIFEST), &foreign)
        .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn artifact_with_subject() {
    let reg = Registry::start(&[]);
    let empty = reg.push_blob("r", b"{}").await;
    let sbom = reg.push_blob("r", b"{\"sbom\":true}").await;
    // The subject does not exist (yet): that is allowed.
    let subject = sha256(b"an image pushed later");
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/json", "digest": sbom, "size": 13}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
        "annotations": {"org.example.kind": "sbom"}
    }))
    .unwrap();
    let digest = sha256(&artifact);
    let r = reg
        .put_manifest("r", &digest, Some(OCI_MANIFEST), &artifact)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "oci-subject"), Some(subject.as_str()));
    let r = reg.get(&format!("/v2/r/manifests/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), artifact);
    // An index can have a subject too.
    let img = reg.push_image("r", "v1", "x").await;
    let mut index: serde_json::Value =
        serde_json::from_slice(&image_index(&[(&img.digest, img.manifest.len())])).unwrap();
    index["subject"] =
        json!({"mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len()});
    let index = serde_json::to_vec(&index).unwrap();
    let r = reg
        .put_manifest("r", "signed-index", Some(OCI_INDEX), &index)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "oci-subject"), Some(img.digest.as_str()));
}

#[tokio::test]
async fn invalid_manifests_are_manifest_invalid() {
    let reg = Registry::start(&[]);
    let ((c, cs), _) = blobs(&reg, "r", "a").await;
    let good = image_manifest((&c, cs), &[], None);
    let good_no_media_type = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": cs},
        "layers": []
    }))
    .unwrap();
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("not json", Some(OCI_MANIFEST), b"{not json".to_vec()),
        ("empty body", Some(OCI_MANIFEST), Vec::new()),
        ("json array", Some(OCI_MANIFEST), b"[]".to_vec()),
        (
            "unsupported type",
            Some("application/json"),
            good_no_media_type.clone(),
        ),
        (
            "schema 1",
            Some("application/vnd.docker.distribution.manifest.v1+json"),
            good_no_media_type.clone(),
        ),
        ("header vs mediaType", Some(OCI_INDEX), good.clone()),
        (
            "header vs mediaType (docker)",
            Some(DOCKER_MANIFEST),
            good.clone(),
        ),
        (
            "schemaVersion 1",
            Some(OCI_MANIFEST),
            String::from_utf8(good.clone())
                .unwrap()
                .replace("\"schemaVersion\": 2", "\"schemaVersion\": 1")
                .into_bytes(),
        ),
        (
            "no config",
            Some(OCI_MANIFEST),
            serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
            )
            .unwrap(),
        ),
        (
            "bad descriptor digest",
            Some(OCI_MANIFEST),
            String::from_utf8(good.clone())
                .unwrap()
                .replace(&c, "sha256:NOTHEX")
                .into_bytes(),
        ),
    ];
    for (what, ct, body) in cases {
        let r = reg.put_manifest("r", "bad", ct, &body).await;
        let got = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(got, 400, "{what}: {text}");
        check_error_body(&text, "MANIFEST_INVALID");
    }
    let r = reg.get("/v2/r/manifests/bad").await;
    assert_eq!(r.status(), 404);
    // Without a Content-Type the body's mediaType decides.
    let r = reg.put_manifest("r", "untyped", None, &good).await;
    assert_eq!(r.status(), 201);
    let r = reg.get("/v2/r/manifests/untyped").await;
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
}

#[tokio::test]
async fn manifest_size_limit_is_413() {
    let reg = Registry::start(&["--manifest-bytes-max", "1024"]);
    let ((c, cs), _) = blobs(&reg, "r", "a").await;
    let small = image_manifest((&c, cs), &[], None);
    assert!(small.len() <= 1024);
    let r = reg
        .put_manifest("r", "small", Some(OCI_MANIFEST), &small)
        .await;
    assert_eq!(r.status(), 201);
    let mut big: serde_json::Value = serde_json::from_slice(&small).unwrap();
    big["annotations"] = json!({"padding": "x".repeat(2000)});
    let big = serde_json::to_vec(&big).unwrap();
    let r = reg.put_manifest("r", "big", Some(OCI_MANIFEST), &big).await;
    let got = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(got, 413, "{text}");
    check_error_body(&text, "MANIFEST_INVALID");
    // Without a Content-Length (chunked), the limit holds as well.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(300).map(|c| Ok(c.to_vec())).collect();
    let r = reg
        .request(Method::PUT, "/v2/r/manifests/big")
        .header("Content-Type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = reg.get("/v2/r/manifests/big").await;
    assert_eq!(r.status(), 404);
    // The connection pool still works after a refused body.
    let r = reg.get("/v2/r/manifests/small").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn moving_a_tag_keeps_the_old_manifest() {
    let reg = Registry::start(&[]);
    let first = reg.push_image("r", "latest", "one").await;
    let second = reg.push_image("r", "latest", "two").await;
    assert_ne!(first.digest, second.digest);
    let r = reg.get("/v2/r/manifests/latest").await;
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(second.digest.as_str())
    );
    let r = reg.get(&format!("/v2/r/manifests/{}", first.digest)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), first.manifest);
}

#[tokio::test]
async fn a_manifest_body_cut_short_is_manifest_invalid() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "a").await;
    let mut c = RawConnection::open(reg.addr());
    let declared = format!("Content-Length: {}", img.manifest.len() + 100);
    c.send(&raw_request(
        reg.addr(),
        "PUT",
        "/v2/r/manifests/short",
        &[&declared, &format!("Content-Type: {OCI_MANIFEST}")],
        &img.manifest,
    ));
    c.shutdown_write();
    let r = c.read_response(false).expect("an answer to the cut body");
    assert_eq!(r.status, 400, "{}", r.text());
    check_error_body(&r.text(), "MANIFEST_INVALID");
    let r = reg.get("/v2/r/manifests/short").await;
    assert_eq!(r.status(), 404);
}
