//! Cross-repository mounts: with `from`, without `from` (the registry may
//! find the blob itself), and from a repository that lacks the blob (an
//! ordinary upload session, 202).
mod common;
mod support;

use common::sha256;
use reqwest::Method;
use support::*;

async fn mount(reg: &Registry, repo: &str, query: &str) -> reqwest::Response {
    reg.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/?{query}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn mount_from_another_repository() {
    let reg = Registry::start(&[]);
    let bytes = b"shared base layer".to_vec();
    let digest = reg.push_blob("base/image", &bytes).await;
    let r = mount(&reg, "app/one", &format!("mount={digest}&from=base/image")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/app/one/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    let r = reg.get(&format!("/v2/app/one/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    // Mounting again is harmless.
    let r = mount(&reg, "app/one", &format!("mount={digest}&from=base/image")).await;
    assert_eq!(r.status(), 201);
    // The mounted blob can be used by a manifest in the new repository.
    let config = reg.push_blob("app/one", b"{}").await;
    let m = image_manifest((&config, 2), &[(&digest, bytes.len())], None);
    let r = reg
        .put_manifest("app/one", "v1", Some(OCI_MANIFEST), &m)
        .await;
    assert_eq!(r.status(), 201);
    // Unlinking it from the source leaves the mount intact.
    assert_eq!(
        reg.delete(&format!("/v2/base/image/blobs/{digest}"))
            .await
            .status(),
        202
    );
    let r = reg.get(&format!("/v2/app/one/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn mount_without_from_when_the_registry_has_the_blob() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("somewhere", b"known bytes").await;
    let r = mount(&reg, "elsewhere", &format!("mount={digest}")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(location(&r), format!("/v2/elsewhere/blobs/{digest}"));
    let r = reg.get(&format!("/v2/elsewhere/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), b"known bytes".as_slice());
}

#[tokio::test]
async fn mount_that_cannot_be_done_opens_a_session() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("has-it", b"only here").await;
    reg.push_blob("lacks-it", b"something else").await;
    let unknown = sha256(b"nowhere at all");
    for query in [
        format!("mount={digest}&from=lacks-it"),
        format!("mount={digest}&from=no/such/repo"),
        format!("mount={unknown}&from=has-it"),
        format!("mount={unknown}"),
    ] {
        let r = mount(&reg, "target", &query).await;
        assert_eq!(r.status(), 202, "{query}");
        let loc = location(&r);
        assert!(loc.starts_with("/v2/target/blobs/uploads/"), "{loc}");
        // It is a real session: the client can upload into it.
        let r = reg.get(&loc).await;
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "range"), Some("0-0"));
    }
    let r = reg.head(&format!("/v2/target/blobs/{digest}")).await;
    assert_eq!(r.status(), 404, "nothing was mounted");
    // Upload into the session opened by a failed mount.
    let r = mount(&reg, "target", &format!("mount={unknown}&from=has-it")).await;
    let loc = location(&r);
    let r = reg
        .request(Method::PUT, &with_query(&loc, &format!("digest={unknown}")))
        .body(b"nowhere at all".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn mount_with_bad_parameters() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("src", b"bytes").await;
    let r = mount(&reg, "dst", "mount=sha256:0123").await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = mount(&reg, "dst", &format!("mount={}", digest.to_uppercase())).await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = mount(&reg, "dst", &format!("mount={digest}&from=Bad/Name")).await;
    expect_error(r, 400, "NAME_INVALID").await;
    let r = mount(&reg, "dst", &format!("mount={digest}&from=..%2Fsrc")).await;
    expect_error(r, 400, "NAME_INVALID").await;
    let r = reg.head(&format!("/v2/dst/blobs/{digest}")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_refused_mount_changes_nothing() {
    let reg = Registry::start(&[]);
    let digest = reg.push_blob("src", b"bytes").await;
    // A session-opening POST carries no data; a large body is refused, and
    // the refusal must not come after the mount was done.
    let r = reg
        .request(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={digest}&from=src"),
        )
        .body(vec![0u8; 100 * 1024])
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "SIZE_INVALID").await;
    let r = reg.head(&format!("/v2/dst/blobs/{digest}")).await;
    assert_eq!(r.status(), 404, "nothing was mounted");
}
