//! Content discovery: tag lists and the catalog (sorted, `n`/`last`, `Link`
//! to the next page), and referrers (an image index, `artifactType`
//! filtering, paginated the same way, never a 404).
mod common;
mod support;

use common::sha256;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

/// Tags a manifest under many names with one PUT by digest.
async fn tag_many(reg: &Registry, repo: &str, tags: &[&str]) {
    let img = reg.push_image(repo, "base", repo).await;
    let query: Vec<String> = tags.iter().map(|t| format!("tag={t}")).collect();
    let r = reg
        .request(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{}?{}", img.digest, query.join("&")),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(img.manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// The URL of a `Link: <url>; rel="next"` header, if any.
fn next_link(r: &reqwest::Response) -> Option<String> {
    let link = header(r, "link")?;
    assert!(link.contains("rel=\"next\""), "{link}");
    let start = link.find('<').expect("<") + 1;
    let end = link.find('>').expect(">");
    Some(link[start..end].to_owned())
}

/// Follows `Link` headers from `first` to the end; returns every page's
/// entries under `key`.
async fn follow(reg: &Registry, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(url) = next {
        assert!(pages.len() < 100, "pagination does not end");
        let r = reg.get(&url).await;
        assert_eq!(r.status(), 200, "{url}");
        next = next_link(&r);
        let v: Value = r.json().await.unwrap();
        let entries: Vec<String> = v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is not an array: {v}"))
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        pages.push(entries);
    }
    pages
}

#[tokio::test]
async fn tags_are_sorted_and_paginated() {
    let reg = Registry::start(&[]);
    let tags = [
        "v10", "v2", "latest", "A", "b", "v1", "Z_last", "0.1", "v1.0",
    ];
    tag_many(&reg, "r", &tags).await;
    let mut expected: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    expected.push("base".into());
    expected.sort();

    let r = reg.get("/v2/r/tags/list").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(next_link(&r).is_none(), "everything fits: no Link");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], "r");
    assert_eq!(v["tags"], json!(expected));

    // n=3: three tags and a Link; following it gives every tag once.
    let r = reg.get("/v2/r/tags/list?n=3").await;
    let link = next_link(&r).expect("a Link when more tags follow");
    assert!(link.starts_with("/v2/r/tags/list?"), "{link}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(expected[..3]));
    let pages = follow(&reg, "/v2/r/tags/list?n=3", "tags").await;
    assert_eq!(pages.len(), 4);
    assert!(pages.iter().all(|p| p.len() <= 3 && !p.is_empty()));
    assert_eq!(pages.concat(), expected);

    // last= starts after the given tag (which need not exist).
    let r = reg
        .get(&format!("/v2/r/tags/list?n=2&last={}", expected[4]))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(expected[5..7]));
    let r = reg.get("/v2/r/tags/list?last=v1.5").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["v10", "v2"]));
    let r = reg.get("/v2/r/tags/list?last=zzz").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));

    // n=0: an empty list and no Link.
    let r = reg.get("/v2/r/tags/list?n=0").await;
    assert_eq!(r.status(), 200);
    assert!(next_link(&r).is_none(), "n=0 must not have a Link");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));

    // n larger than the list: all of it, no Link.
    let r = reg.get("/v2/r/tags/list?n=1000").await;
    assert!(next_link(&r).is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(expected));
    // The last full page has no Link when nothing follows it.
    let r = reg
        .get(&format!("/v2/r/tags/list?n=2&last={}", expected[7]))
        .await;
    assert!(next_link(&r).is_none());
}

#[tokio::test]
async fn server_page_limit_still_reaches_every_tag() {
    let reg = Registry::start(&["--page-entries-max", "3"]);
    let tags: Vec<String> = (0..10).map(|i| format!("t{i:02}")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(|s| s.as_str()).collect();
    tag_many(&reg, "r", &tag_refs).await;
    let mut expected = tags.clone();
    expected.push("base".into());
    expected.sort();
    // Without n, and with an n above the limit: pages of 3, linked.
    for first in ["/v2/r/tags/list", "/v2/r/tags/list?n=50"] {
        let pages = follow(&reg, first, "tags").await;
        assert!(pages.iter().all(|p| p.len() <= 3), "{first}: {pages:?}");
        assert_eq!(pages.concat(), expected, "{first}");
    }
}

#[tokio::test]
async fn tags_of_unknown_or_empty_repositories() {
    let reg = Registry::start(&[]);
    let r = reg.get("/v2/nobody/tags/list").await;
    expect_error(r, 404, "NAME_UNKNOWN").await;
    // A repository with blobs but no tags lists no tags.
    reg.push_blob("blobs-only", b"x").await;
    let r = reg.get("/v2/blobs-only/tags/list").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name": "blobs-only", "tags": []}));
    for bad in ["n=-1", "n=abc"] {
        let r = reg.get(&format!("/v2/blobs-only/tags/list?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
        check_error_body(&r.text().await.unwrap(), "UNSUPPORTED");
    }
}

#[tokio::test]
async fn catalog_is_sorted_and_paginated() {
    let reg = Registry::start(&[]);
    let r = reg.get("/v2/_catalog").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"repositories": []}));
    let repos = [
        "zeta",
        "alpha/one",
        "alpha",
        "mid/dle/deep",
        "b-c",
        "alpha-2",
    ];
    for repo in repos {
        reg.push_blob(repo, repo.as_bytes()).await;
    }
    let mut expected: Vec<String> = repos.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let r = reg.get("/v2/_catalog").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(expected));
    let pages = follow(&reg, "/v2/_catalog?n=4", "repositories").await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages.concat(), expected);
    // A page that ends on a name with a slash: `last` is encoded in the Link.
    let pages = follow(&reg, "/v2/_catalog?n=3", "repositories").await;
    assert_eq!(pages[0].last().map(String::as_str), Some("alpha/one"));
    assert_eq!(pages.concat(), expected);
    let r = reg.get("/v2/_catalog?n=0").await;
    assert!(next_link(&r).is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!([]));
    let r = reg.get("/v2/_catalog?n=2&last=alpha-2").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(expected[2..4]));
}

#[tokio::test]
async fn catalog_with_a_small_page_limit() {
    let reg = Registry::start(&["--page-entries-max", "3"]);
    let mut expected: Vec<String> = (0..7).map(|i| format!("repo{i}")).collect();
    for repo in &expected {
        reg.push_blob(repo, b"x").await;
    }
    expected.sort();
    let pages = follow(&reg, "/v2/_catalog", "repositories").await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat(), expected);
}

/// Pushes an artifact manifest with `subject` into `repo`; returns its
/// digest and size.
async fn push_referrer(
    reg: &Registry,
    repo: &str,
    subject: &str,
    artifact_type: Option<&str>,
    config_type: &str,
    note: &str,
) -> (String, usize) {
    let config = reg.push_blob(repo, b"{}").await;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 10},
        "annotations": {"org.example.note": note}
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    let body = serde_json::to_vec(&m).unwrap();
    let digest = sha256(&body);
    let r = reg
        .put_manifest(repo, &digest, Some(OCI_MANIFEST), &body)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "oci-subject"), Some(subject));
    (digest, body.len())
}

#[tokio::test]
async fn referrers_list_and_filter() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "subject").await;
    let sbom = "application/vnd.example.sbom.v1";
    let sig = "application/vnd.example.signature.v1";
    let (a, a_size) = push_referrer(
        &reg,
        "r",
        &img.digest,
        Some(sbom),
        "application/vnd.oci.empty.v1+json",
        "a",
    )
    .await;
    let (b, _) = push_referrer(
        &reg,
        "r",
        &img.digest,
        Some(sig),
        "application/vnd.oci.empty.v1+json",
        "b",
    )
    .await;
    // No artifactType: the config's media type stands in for it.
    let (c, _) = push_referrer(&reg, "r", &img.digest, None, sbom, "c").await;
    // A referrer of something else does not show up.
    push_referrer(
        &reg,
        "r",
        &a,
        Some(sig),
        "application/vnd.oci.empty.v1+json",
        "d",
    )
    .await;

    let r = reg.get(&format!("/v2/r/referrers/{}", img.digest)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    assert_eq!(header(&r, "oci-filters-applied"), None);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let manifests = v["manifests"].as_array().unwrap();
    let mut digests: Vec<&str> = manifests
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    digests.sort();
    let mut want = vec![a.as_str(), b.as_str(), c.as_str()];
    want.sort();
    assert_eq!(digests, want);
    for m in manifests {
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        let d = m["digest"].as_str().unwrap();
        let expected_type = if d == b { sig } else { sbom };
        assert_eq!(m["artifactType"], expected_type, "{m}");
        let note = if d == a {
            "a"
        } else if d == b {
            "b"
        } else {
            "c"
        };
        assert_eq!(m["annotations"], json!({"org.example.note": note}));
        if d == a {
            assert_eq!(m["size"], a_size);
        }
    }

    let r = reg
        .get(&format!(
            "/v2/r/referrers/{}?artifactType={sbom}",
            img.digest
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    let v: Value = r.json().await.unwrap();
    let mut digests: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    digests.sort();
    let mut want = vec![a.as_str(), c.as_str()];
    want.sort();
    assert_eq!(digests, want);

    // A `+` in the filter, percent-encoded or not, is a `+`.
    let json_type = "application/vnd.example.sbom.v1+json";
    let (e, _) = push_referrer(
        &reg,
        "r",
        &img.digest,
        Some(json_type),
        "application/vnd.oci.empty.v1+json",
        "e",
    )
    .await;
    for filter in [
        "application/vnd.example.sbom.v1+json",
        "application/vnd.example.sbom.v1%2Bjson",
    ] {
        let r = reg
            .get(&format!(
                "/v2/r/referrers/{}?artifactType={filter}",
                img.digest
            ))
            .await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "{filter}");
        assert_eq!(v["manifests"][0]["digest"], e.as_str(), "{filter}");
    }
    assert_eq!(
        reg.delete(&format!("/v2/r/manifests/{e}")).await.status(),
        202
    );

    // Deleting a referrer takes it off the list.
    assert_eq!(
        reg.delete(&format!("/v2/r/manifests/{b}")).await.status(),
        202
    );
    let r = reg.get(&format!("/v2/r/referrers/{}", img.digest)).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
}

/// Follows `Link` headers from a referrers query to the end; returns each
/// page's referrer digests, checking every page is an index and, when
/// `filtered`, says so.
async fn follow_referrers(reg: &Registry, first: &str, filtered: bool) -> Vec<Vec<String>> {
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut links = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(url) = next {
        assert!(pages.len() < 100, "pagination does not end");
        let r = reg.get(&url).await;
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(header(&r, "content-type"), Some(OCI_INDEX), "{url}");
        let applied = header(&r, "oci-filters-applied");
        assert_eq!(applied, filtered.then_some("artifactType"), "{url}");
        next = next_link(&r);
        links.push(next.is_some());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["mediaType"], OCI_INDEX);
        pages.push(
            v["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["digest"].as_str().unwrap().to_owned())
                .collect(),
        );
    }
    // A `Link` on every page but the last.
    assert!(links[..links.len() - 1].iter().all(|l| *l), "{links:?}");
    pages
}

#[tokio::test]
async fn referrers_are_paginated() {
    let reg = Registry::start(&["--page-entries-max", "3"]);
    let img = reg.push_image("r", "v1", "subject").await;
    let sbom = "application/vnd.example.sbom.v1+json";
    let sig = "application/vnd.example.signature.v1";
    let mut all = Vec::new();
    let mut sboms = Vec::new();
    for i in 0..7 {
        let t = if i % 2 == 0 { sbom } else { sig };
        let (d, _) =
            push_referrer(&reg, "r", &img.digest, Some(t), OCI_CONFIG, &i.to_string()).await;
        all.push(d.clone());
        if t == sbom {
            sboms.push(d);
        }
    }
    all.sort();
    sboms.sort();

    // 7 referrers, 3 a page: three pages, `Link` on the first two only,
    // every referrer exactly once, in digest order.
    let pages = follow_referrers(&reg, &format!("/v2/r/referrers/{}", img.digest), false).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), all);
    let r = reg.get(&format!("/v2/r/referrers/{}", img.digest)).await;
    let link = header(&r, "link").unwrap().to_owned();
    assert_eq!(
        link,
        format!(
            "</v2/r/referrers/{}?n=3&last={}>; rel=\"next\"",
            img.digest,
            all[2].replace(':', "%3A")
        )
    );

    // `n` below the limit is honoured; above it, the limit wins.
    let pages = follow_referrers(&reg, &format!("/v2/r/referrers/{}?n=2", img.digest), false).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 1]);
    assert_eq!(pages.concat(), all);
    let pages =
        follow_referrers(&reg, &format!("/v2/r/referrers/{}?n=50", img.digest), false).await;
    assert_eq!(pages.concat(), all);
    assert_eq!(pages.len(), 3);
    let r = reg
        .get(&format!("/v2/r/referrers/{}?n=x", img.digest))
        .await;
    assert_eq!(r.status(), 400);

    // The filter applies before paging and travels in the link (its `+`
    // encoded): four matches are two pages, each filtered.
    let first = format!("/v2/r/referrers/{}?artifactType={sbom}", img.digest);
    let pages = follow_referrers(&reg, &first, true).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1]);
    assert_eq!(pages.concat(), sboms);
    let r = reg.get(&first).await;
    assert!(header(&r, "link")
        .unwrap()
        .contains("artifactType=application%2Fvnd.example.sbom.v1%2Bjson"));

    // A cursor past the end: an empty last page, no link.
    let r = reg
        .get(&format!("/v2/r/referrers/{}?last={}", img.digest, all[6]))
        .await;
    assert_eq!(header(&r, "link"), None);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));

    // The past is read the same way (the as-of endpoint shares the handler).
    let first = format!(
        "/v2/r/_ferro/asof/referrers?digest={}&at=2100-01-01T00:00:00Z",
        img.digest
    );
    let pages = follow_referrers(&reg, &first, false).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), all);
    let pages = follow_referrers(&reg, &format!("{first}&artifactType={sbom}"), true).await;
    assert_eq!(pages.concat(), sboms);
}

#[tokio::test]
async fn referrers_are_never_404() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "x").await;
    let unknown = sha256(b"no such subject");
    for path in [
        format!("/v2/r/referrers/{unknown}"),
        format!("/v2/r/referrers/{}", img.digest),
        format!("/v2/no/such/repo/referrers/{unknown}"),
        format!("/v2/r/referrers/{unknown}?artifactType=application/x"),
    ] {
        let r = reg.get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["manifests"], json!([]), "{path}");
    }
    // Referrers live in the repository they were pushed to.
    push_referrer(
        &reg,
        "r",
        &img.digest,
        Some("application/x"),
        OCI_CONFIG,
        "n",
    )
    .await;
    let r = reg
        .get(&format!("/v2/elsewhere/referrers/{}", img.digest))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
    // A malformed digest is a bad request.
    let r = reg.get("/v2/r/referrers/sha256:abc").await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = reg.get("/v2/r/referrers/latest").await;
    expect_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn head_works_wherever_get_does() {
    let reg = Registry::start(&[]);
    let img = reg.push_image("r", "v1", "x").await;
    let loc = reg.start_upload("r").await;
    for path in [
        "/v2/".to_owned(),
        "/v2/_catalog".to_owned(),
        "/v2/r/tags/list".to_owned(),
        format!("/v2/r/manifests/{}", img.digest),
        format!("/v2/r/blobs/{}", img.layer_digest),
        format!("/v2/r/referrers/{}", img.digest),
        loc,
    ] {
        let get = reg.get(&path).await;
        let get_status = get.status();
        let get_len = header(&get, "content-length").map(str::to_owned);
        let get_type = header(&get, "content-type").map(str::to_owned);
        let head = reg.head(&path).await;
        assert_eq!(head.status(), get_status, "HEAD {path}");
        assert_eq!(
            header(&head, "content-type").map(str::to_owned),
            get_type,
            "HEAD {path}"
        );
        if let Some(len) = get_len {
            assert_eq!(
                header(&head, "content-length"),
                Some(len.as_str()),
                "HEAD {path}"
            );
        }
        assert!(head.bytes().await.unwrap().is_empty());
    }
}
