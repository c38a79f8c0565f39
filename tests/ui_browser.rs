//! The web UI in a real headless Chromium, against the real server with
//! auth off on loopback: images pushed through the API (an index with two
//! platforms, a signature referring to it, an annotation carrying a
//! `<script>`), then every page opened and what it shows asserted; a tag
//! moved twice and restored to its first version by clicking Restore and
//! confirming, checked through the registry API; the live event list
//! picking up a push; a `<script>` in an annotation shown as text, never
//! run. With `FERRO_UI_SCREENSHOTS=docs/screenshots` each page is saved.
mod browser;
mod common;
mod support;

use std::time::Duration;

use browser::Browser;
use common::sha256;
use serde_json::{json, Value};
use support::{image_manifest, Registry, OCI_INDEX, OCI_MANIFEST};

const XSS: &str = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">";
const SIGNATURE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Pushes a one-layer image by digest (no tag); returns (digest, size).
async fn push_untagged(reg: &Registry, repo: &str, seed: &str) -> (String, usize) {
    let config = format!("{{\"architecture\":\"{seed}\",\"os\":\"linux\"}}").into_bytes();
    let layer = format!("the layer of {seed}").repeat(40).into_bytes();
    let c = reg.push_blob(repo, &config).await;
    let l = reg.push_blob(repo, &layer).await;
    let m = image_manifest((&c, config.len()), &[(&l, layer.len())], None);
    let digest = sha256(&m);
    let r = reg
        .put_manifest(repo, &digest, Some(OCI_MANIFEST), &m)
        .await;
    assert_eq!(r.status(), 201);
    (digest, m.len())
}

struct Pushed {
    index: String,
    signature: String,
    stable_v1: String,
    stable_v3: String,
    /// The sequence number right after `web:stable` was first set.
    after_v1_seq: u64,
}

async fn push_everything(reg: &Registry) -> Pushed {
    let amd64 = push_untagged(reg, "library/app", "amd64").await;
    let arm64 = push_untagged(reg, "library/app", "arm64").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd64.0, "size": amd64.1,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64.0, "size": arm64.1,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
        "annotations": {"org.example.note": XSS},
    }))
    .unwrap();
    let index_digest = sha256(&index);
    let r = reg
        .put_manifest("library/app", "latest", Some(OCI_INDEX), &index)
        .await;
    assert_eq!(r.status(), 201);
    // A signature: an artifact whose subject is the index.
    let empty = reg.push_blob("library/app", b"{}").await;
    let bundle = reg.push_blob("library/app", b"a signature bundle").await;
    let signature = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": SIGNATURE_TYPE, "digest": bundle, "size": 18}],
        "subject": {"mediaType": OCI_INDEX, "digest": index_digest, "size": index.len()},
    }))
    .unwrap();
    let sig_digest = sha256(&signature);
    let r = reg
        .put_manifest("library/app", &sig_digest, Some(OCI_MANIFEST), &signature)
        .await;
    assert_eq!(r.status(), 201);
    // web:stable set, then moved twice.
    let v1 = reg.push_image("web", "stable", "v1").await;
    let after_v1_seq = feed_last_seq(reg).await;
    reg.push_image("web", "stable", "v2").await;
    let v3 = reg.push_image("web", "stable", "v3").await;
    Pushed {
        index: index_digest,
        signature: sig_digest,
        stable_v1: v1.digest,
        stable_v3: v3.digest,
        after_v1_seq,
    }
}

async fn feed_last_seq(reg: &Registry) -> u64 {
    let v: Value = reg
        .get("/v2/_ferro/events/feed?n=0")
        .await
        .json()
        .await
        .unwrap();
    v["last_seq"].as_u64().expect("last_seq")
}

async fn tag_history_len(reg: &Registry, repo: &str, tag: &str) -> usize {
    let v: Value = reg
        .get(&format!("/v2/{repo}/_ferro/history/tag?tag={tag}"))
        .await
        .json()
        .await
        .unwrap();
    v["items"].as_array().expect("items").len()
}

async fn tag_digest(reg: &Registry, repo: &str, tag: &str) -> String {
    let r = reg.head(&format!("/v2/{repo}/manifests/{tag}")).await;
    assert_eq!(r.status(), 200);
    support::header(&r, "docker-content-digest")
        .expect("digest header")
        .to_owned()
}

fn short(d: &str) -> &str {
    &d[..7 + 12]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_registry_and_restore_works_by_click() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let reg = Registry::start(&["--durability", "never"]);
    let p = push_everything(&reg).await;
    let base = reg.url("");

    // `/` sends a browser to the UI.
    b.goto(&base).await;
    assert_eq!(b.path().await, "/ui/");

    // Overview: counts and the latest events.
    let stats = b.texts(".stat").await.join(" | ");
    assert!(
        stats.contains("2\nrepositories") || stats.contains("2 repositories"),
        "{stats}"
    );
    let events = b.text("#events").await;
    assert!(
        events.contains("library/app") && events.contains("web"),
        "{events}"
    );
    b.screenshot("overview").await;

    // Live: a push shows up without reloading.
    reg.push_image("live/new", "1", "live").await;
    b.wait_until(
        "the live event list to show the push",
        "return document.getElementById('events').textContent.includes('live/new')",
    )
    .await;

    // Repositories: all three, then a search.
    b.goto(&reg.url("/ui/repositories")).await;
    let rows = b.texts("#repositories tbody tr td:first-child").await;
    assert_eq!(rows, vec!["library/app", "live/new", "web"]);
    b.screenshot("repositories").await;
    b.goto(&reg.url("/ui/repositories?q=web&sort=push")).await;
    let rows = b.texts("#repositories tbody tr td:first-child").await;
    assert_eq!(rows, vec!["web"]);

    // Repository: the index's platforms, its referrer, pull commands.
    b.goto(&reg.url("/ui/r/library/app")).await;
    let latest = b.text("#tags tr[data-tag='latest']").await;
    assert!(latest.contains(short(&p.index)), "{latest}");
    assert!(
        latest.contains("linux/amd64") && latest.contains("linux/arm64/v8"),
        "{latest}"
    );
    let referrers = b.text("#referrers").await;
    assert!(referrers.contains(SIGNATURE_TYPE), "{referrers}");
    assert!(referrers.contains(short(&p.signature)), "{referrers}");
    let pull = b.text(".pull").await;
    let addr = reg.addr();
    assert!(
        pull.contains(&format!("docker pull {addr}/library/app:latest")),
        "{pull}"
    );
    assert!(pull.contains(&format!(
        "podman pull --tls-verify=false {addr}/library/app:latest"
    )));
    assert!(pull.contains("skopeo copy") && pull.contains("oras pull --plain-http"));
    b.screenshot("repository").await;
    b.client.set_window_size(390, 844).await.expect("resize");
    b.screenshot("repository-phone").await;
    b.client.set_window_size(1280, 900).await.expect("resize");

    // Manifest: the index's platforms with links, annotations as text.
    b.goto(&reg.url(&format!("/ui/r/library/app/-/manifest/{}", p.index)))
        .await;
    let platforms = b.text("#platforms").await;
    assert!(platforms.contains("linux/amd64") && platforms.contains("linux/arm64/v8"));
    let annotations = b.text("#annotations").await;
    assert!(annotations.contains(XSS), "shown as text: {annotations}");
    let untouched = b.eval("return typeof window.__xss === 'undefined'").await;
    assert_eq!(untouched, json!(true), "the annotation's script ran");
    let referrers = b.text("#manifest-referrers").await;
    assert!(referrers.contains(SIGNATURE_TYPE));
    b.screenshot("manifest").await;
    // A child, through its link.
    b.click_to("#platforms a").await;
    assert!(b.text("#layers").await.contains("Layers (1"));

    // History of web:stable: three changes; restore the first version.
    let before = tag_history_len(&reg, "web", "stable").await;
    assert_eq!(before, 3);
    b.goto(&reg.url("/ui/r/web/-/history?tag=stable")).await;
    assert_eq!(b.texts("#timeline > li").await.len(), 3);
    b.screenshot("history").await;
    b.click_to("#timeline li.c-tagged a.restore").await;
    let confirm = b.text(".confirm").await;
    assert!(confirm.contains(short(&p.stable_v1)) && confirm.contains(short(&p.stable_v3)));
    b.screenshot("restore-confirm").await;
    b.click_to("#confirm").await;
    assert!(b.path().await.contains("restored=1"));
    assert!(b.exists(".banner.ok").await);
    assert_eq!(tag_digest(&reg, "web", "stable").await, p.stable_v1);
    assert_eq!(tag_history_len(&reg, "web", "stable").await, before + 1);
    assert_eq!(b.texts("#timeline > li").await.len(), 4);
    assert!(
        b.exists("#timeline > li:first-child .k-restore").await,
        "the newest entry reads as a restore"
    );

    // What changed between two versions.
    b.goto(&reg.url("/ui/r/web/-/history?tag=stable")).await;
    b.click_to("#timeline li.c-tag_moved a.small").await;
    let diff = b.text("#diff").await;
    assert!(diff.contains("Config: changed"), "{diff}");
    assert!(diff.contains("1 layers added, 1 removed"), "{diff}");
    b.screenshot("diff").await;

    // As of: the past, marked, with web:stable at v1 and no later repos.
    b.goto(&reg.url(&format!("/ui/asof?at={}", p.after_v1_seq)))
        .await;
    assert!(b.text(".past-banner").await.contains("The past"));
    let rows = b.texts("#repositories tbody tr td:first-child").await;
    assert_eq!(rows, vec!["library/app", "web"]);
    b.screenshot("asof").await;
    b.click_to("#repositories a[href^='/ui/r/web']").await;
    assert!(b.exists(".past-banner").await);
    let stable = b.text("#tags tr[data-tag='stable']").await;
    assert!(stable.contains(short(&p.stable_v1)), "{stable}");
    assert!(!b.exists("#tags a.danger").await, "no delete in the past");

    // Administration: a dry run reports, changes nothing.
    b.goto(&reg.url("/ui/admin")).await;
    b.click_to("#gc-dry-run").await;
    let report = b.text("#gc-report").await;
    assert!(
        report.contains("dry run") && report.contains("true"),
        "{report}"
    );
    b.screenshot("admin").await;

    // Delete a tag, confirmed.
    b.goto(&reg.url("/ui/r/live/new")).await;
    b.click_to("#tags tr[data-tag='1'] a.danger").await;
    b.click_to("#confirm").await;
    assert_eq!(reg.head("/v2/live/new/manifests/1").await.status(), 404);

    b.close().await;

    // The same pages in the dark, when pictures are wanted.
    if browser::screenshots_wanted() {
        let dark = Browser::start_with(&[
            "--force-dark-mode",
            "--blink-settings=preferredColorScheme=0",
        ])
        .await
        .expect("a browser");
        dark.goto(&reg.url("/ui/r/web/-/history?tag=stable")).await;
        let background = dark
            .eval("return getComputedStyle(document.body).backgroundColor")
            .await;
        assert_eq!(background, json!("rgb(18, 21, 27)"), "dark by preference");
        dark.screenshot("history-dark").await;
        dark.goto(&reg.url("/ui/")).await;
        dark.screenshot("overview-dark").await;
        dark.close().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
