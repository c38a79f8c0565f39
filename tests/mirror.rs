//! Pull-through mirroring against real upstreams on loopback: a second
//! ferro with token auth, Debian's docker-registry (distribution 2.8, with
//! Basic), and a fault proxy in front of a real ferro for the faults a
//! real registry cannot be made to produce (429, 500, a slow body). skopeo
//! pulls through the mirror; digests are compared with the upstream's.
mod auth_support;
mod mirror_support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use auth_support::{available, skip_or_fail, Ferro};
use mirror_support::*;

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo")
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// skopeo copies `image` from the mirror into a directory; the manifest's
/// digest as skopeo wrote it.
fn skopeo_pull(mirror: &Ferro, image: &str, out: &std::path::Path) -> String {
    let _ = std::fs::remove_dir_all(out);
    let src = format!("docker://{}/{image}", mirror.addr);
    let dest = format!("dir:{}", out.display());
    ok(
        &skopeo(&["copy", "-q", "--src-tls-verify=false", &src, &dest]),
        "skopeo copy through the mirror",
    );
    sha256(&std::fs::read(out.join("manifest.json")).unwrap())
}

fn anonymous_upstream(dir: &std::path::Path) -> Ferro {
    Ferro::start(&dir.join("upstream"), None, &[], &[])
}

fn start_mirror(dir: &std::path::Path, config: &std::path::Path) -> Ferro {
    Ferro::start(&dir.join("mirror"), Some(config), &[], &[])
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

async fn manifest_digest(url: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, digest)
}

async fn metric(server: &Ferro, name: &str) -> f64 {
    let text = get(&server.url("/metrics")).await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_through_a_token_upstream_and_the_cache_outlives_it() {
    if !available("skopeo", &["--version"]) {
        return skip_or_fail("skopeo");
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, auth_support::htpasswd(&[("alice", "a-pass")])).unwrap();
    let upstream_config = dir.path().join("upstream.toml");
    std::fs::write(
        &upstream_config,
        format!(
            "[auth]\nscheme = \"token\"\nhtpasswd = \"{}\"\n[auth.token]\nservice = \"upstream\"\nlifetime_secs = 60\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let mut upstream = Ferro::start(
        &dir.path().join("upstream"),
        Some(&upstream_config),
        &[],
        &[],
    );
    let layers = [layer(300_000, 1), layer(5_000, 2)];
    let digest = push_image(
        &upstream.url,
        "team/app",
        "v1",
        &[&layers[0], &layers[1]],
        Some(("alice", "a-pass")),
    )
    .await;
    // The upstream really asks for the token flow.
    let r = get(&upstream.url("/v2/team/app/manifests/v1")).await;
    assert_eq!(r.status(), 401);
    assert!(auth_support::header(&r, "www-authenticate").starts_with("Bearer realm="));

    let config = mirror_config(
        dir.path(),
        &upstream.url,
        "tag_ttl = \"1s\"",
        "username = \"alice\"\npassword = \"a-pass\"",
    );
    let mirror = start_mirror(dir.path(), &config);
    let out = dir.path().join("pulled");
    assert_eq!(skopeo_pull(&mirror, "hub/team/app:v1", &out), digest);
    for l in &layers {
        assert_eq!(
            std::fs::read(out.join(sha256(l).trim_start_matches("sha256:"))).unwrap(),
            *l
        );
    }

    // On the record, with the upstream as actor: the feed shows the fill.
    let feed: serde_json::Value = get(&mirror.url("/v2/_ferro/events/feed?repo=hub/team/app"))
        .await
        .json()
        .await
        .unwrap();
    let text = feed.to_string();
    assert!(text.contains(&format!("mirror:{}", upstream.url)), "{text}");
    assert!(text.contains(&digest), "{text}");

    // The upstream stopped: past tag_ttl the cached image still pulls.
    upstream.terminate(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(skopeo_pull(&mirror, "hub/team/app:v1", &out), digest);
    assert!(metric(&mirror, "ferro_mirror_stale_served_total").await >= 1.0);
    // Something never cached fails with a spec error naming the upstream.
    let r = get(&mirror.url("/v2/hub/team/app/manifests/v2")).await;
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&upstream.url) && message.contains("did not answer"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_through_debians_docker_registry_with_identical_digests() {
    if !DockerRegistry::available() {
        assert!(
            std::env::var_os("FERRO_REQUIRE_DOCKER_REGISTRY").is_none(),
            "{DOCKER_REGISTRY} is not installed but FERRO_REQUIRE_DOCKER_REGISTRY is set"
        );
        eprintln!("skipping: {DOCKER_REGISTRY} is not installed");
        return;
    }
    if !available("skopeo", &["--version"]) {
        return skip_or_fail("skopeo");
    }
    let dir = tempfile::tempdir().unwrap();
    let upstream = DockerRegistry::start("bob", "b-pass");
    let layers = [layer(200_000, 3), layer(100, 4)];
    let digest = push_image(
        &upstream.url,
        "library/alpine",
        "3.20",
        &[&layers[0], &layers[1]],
        Some(("bob", "b-pass")),
    )
    .await;
    let config = mirror_config(
        dir.path(),
        &upstream.url,
        "",
        "username = \"bob\"\npassword = \"b-pass\"",
    );
    let mirror = start_mirror(dir.path(), &config);
    let out = dir.path().join("pulled");
    assert_eq!(
        skopeo_pull(&mirror, "hub/library/alpine:3.20", &out),
        digest
    );
    let (status, by_digest) =
        manifest_digest(&mirror.url(&format!("/v2/hub/library/alpine/manifests/{digest}"))).await;
    assert_eq!((status, by_digest), (200, digest.clone()));
    // Wrong credentials: the upstream's 401 is named, nothing cached.
    let bad = mirror_config(
        dir.path(),
        &upstream.url,
        "",
        "username = \"bob\"\npassword = \"nope\"",
    );
    let other = Ferro::start(&dir.path().join("mirror2"), Some(&bad), &[], &[]);
    let r = get(&other.url("/v2/hub/library/alpine/manifests/3.20")).await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("answered 401"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_429_and_500_serve_the_cache_and_are_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let digest = push_image(&upstream.url, "app", "v1", &[&layer(1000, 5)], None).await;
    let proxy = Proxy::start(&upstream.url).await;
    let config = mirror_config(dir.path(), &proxy.url, "tag_ttl = \"200ms\"", "");
    let mirror = start_mirror(dir.path(), &config);
    let tag_url = mirror.url("/v2/hub/app/manifests/v1");
    assert_eq!(manifest_digest(&tag_url).await, (200, digest.clone()));
    for fault in [429, 500] {
        proxy.fault(fault);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            manifest_digest(&tag_url).await,
            (200, digest.clone()),
            "{fault}"
        );
        // Never cached: the upstream's answer is named.
        let r = get(&mirror.url("/v2/hub/app/manifests/v9")).await;
        let expected = if fault == 429 { 429 } else { 502 };
        assert_eq!(r.status(), expected);
        let body = r.text().await.unwrap();
        assert!(body.contains(&format!("answered {fault}")), "{body}");
    }
    assert!(metric(&mirror, "ferro_mirror_stale_served_total").await >= 2.0);
    // The errors were not cached: once the upstream is back, v9 is found
    // when it exists.
    proxy.fault(0);
    let v9 = push_image(&upstream.url, "app", "v9", &[&layer(10, 6)], None).await;
    assert_eq!(
        manifest_digest(&mirror.url("/v2/hub/app/manifests/v9")).await,
        (200, v9)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_moved_upstream_is_seen_after_tag_ttl_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let first = push_image(&upstream.url, "app", "latest", &[&layer(10, 7)], None).await;
    let config = mirror_config(dir.path(), &upstream.url, "tag_ttl = \"2s\"", "");
    let mirror = start_mirror(dir.path(), &config);
    let url = mirror.url("/v2/hub/app/manifests/latest");
    assert_eq!(manifest_digest(&url).await, (200, first.clone()));
    let second = push_image(&upstream.url, "app", "latest", &[&layer(10, 8)], None).await;
    assert_ne!(first, second);
    assert_eq!(
        manifest_digest(&url).await,
        (200, first.clone()),
        "within tag_ttl"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        manifest_digest(&url).await,
        (200, second.clone()),
        "after tag_ttl"
    );
    // The move is on the record: the tag's history has both.
    let history = get(&mirror.url("/v2/hub/app/_ferro/history/tag?tag=latest"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        history.contains(&first) && history.contains(&second),
        "{history}"
    );
}

/// The layer of the single-flight test: 32 MiB, or
/// `FERRO_MIRROR_LAYER_MIB` (256 in the opt-in variant).
fn large_layer_bytes() -> usize {
    std::env::var("FERRO_MIRROR_LAYER_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(32)
        << 20
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_an_uncached_layer_fetch_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let big = layer(large_layer_bytes(), 9);
    let big_digest = sha256(&big);
    push_image(&upstream.url, "app", "big", &[&big], None).await;
    let proxy = Proxy::start(&upstream.url).await;
    // Held back so that both pulls arrive while the fill is in flight.
    proxy.state.blob_delay_ms.store(500, Ordering::SeqCst);
    let config = mirror_config(dir.path(), &proxy.url, "", "");
    let mirror = start_mirror(dir.path(), &config);
    assert_eq!(
        get(&mirror.url("/v2/hub/app/manifests/big")).await.status(),
        200
    );
    let url = mirror.url(&format!("/v2/hub/app/blobs/{big_digest}"));
    let pull = |url: String| async move {
        let r = get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            large_layer_bytes().to_string()
        );
        sha256(&r.bytes().await.unwrap())
    };
    let (a, b) = tokio::join!(pull(url.clone()), pull(url.clone()));
    assert_eq!((a, b), (big_digest.clone(), big_digest.clone()));
    assert_eq!(proxy.blob_gets(), 1, "one upstream fetch for two pulls");
    // Now cached: served without the upstream.
    proxy.fault(500);
    assert_eq!(pull(url).await, big_digest);
    assert_eq!(proxy.blob_gets(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_the_middle_of_a_fill_leaves_nothing_half_cached() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let big = layer(16 << 20, 10);
    let big_digest = sha256(&big);
    push_image(&upstream.url, "app", "v1", &[&big], None).await;
    let proxy = Proxy::start(&upstream.url).await;
    proxy.state.throttle.store(true, Ordering::SeqCst);
    let config = mirror_config(dir.path(), &proxy.url, "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[gc]\ngrace = \"0s\"\n")).unwrap();
    let mut mirror = start_mirror(dir.path(), &config);
    assert_eq!(
        get(&mirror.url("/v2/hub/app/manifests/v1")).await.status(),
        200
    );
    let url = mirror.url(&format!("/v2/hub/app/blobs/{big_digest}"));
    let mut r = get(&url).await;
    assert_eq!(r.status(), 200);
    // The client gets bytes before the layer is whole.
    let mut received = 0;
    while received < 1 << 20 {
        received += r.chunk().await.unwrap().expect("bytes while filling").len();
    }
    let _ = mirror.child.kill();
    let _ = mirror.child.wait();
    drop(r);
    // After the restart, with the upstream failing, the blob is not served.
    proxy.fault(500);
    proxy.state.throttle.store(false, Ordering::SeqCst);
    let mirror = mirror.restart();
    let url = mirror.url(&format!("/v2/hub/app/blobs/{big_digest}"));
    let r = get(&url).await;
    assert_eq!(r.status(), 502, "a half-filled blob must not be served");
    // What the kill left is a staging file no event names, never the
    // blob; garbage collection removes it.
    let hex = big_digest.trim_start_matches("sha256:");
    let files = walk(&mirror.data_dir.join("blobs"));
    assert!(!files.iter().any(|p| p.ends_with(hex)), "{files:?}");
    let r = reqwest::Client::new()
        .post(mirror.url("/v2/_ferro/gc/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let staging: Vec<_> = walk(&mirror.data_dir.join("blobs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".staging"))
        .collect();
    assert!(
        staging.is_empty(),
        "staging files left after GC: {staging:?}"
    );
    // The next pull completes, whole and verified.
    proxy.fault(0);
    let r = get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), big_digest);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_under_a_small_cap_never_leaves_a_manifest_without_its_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let shared = layer(40_000, 11);
    let mut images = Vec::new();
    for i in 0..4u64 {
        let own = layer(60_000, 20 + i);
        let tag = format!("v{i}");
        let digest = push_image(&upstream.url, "app", &tag, &[&shared, &own], None).await;
        images.push((tag, digest, vec![shared.clone(), own]));
    }
    let proxy = Proxy::start(&upstream.url).await;
    // Room for about two images.
    let config = mirror_config(
        dir.path(),
        &proxy.url,
        "max_bytes = 250000\ntag_ttl = \"1h\"",
        "",
    );
    let mirror = start_mirror(dir.path(), &config);
    // A pushed image beside the mirror shares a layer with the mirrored ones.
    push_image(&mirror.url, "local/app", "v1", &[&shared], None).await;
    for (tag, digest, layers) in &images {
        assert_eq!(
            manifest_digest(&mirror.url(&format!("/v2/hub/app/manifests/{tag}"))).await,
            (200, digest.clone())
        );
        for l in layers {
            let r = get(&mirror.url(&format!("/v2/hub/app/blobs/{}", sha256(l)))).await;
            assert_eq!(sha256(&r.bytes().await.unwrap()), sha256(l));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(metric(&mirror, "ferro_mirror_evictions_total").await >= 1.0);
    // With the upstream gone, every manifest still cached has every blob.
    proxy.fault(500);
    let mut cached = 0;
    for (tag, digest, layers) in &images {
        let (status, _) =
            manifest_digest(&mirror.url(&format!("/v2/hub/app/manifests/{digest}"))).await;
        if status != 200 {
            continue;
        }
        cached += 1;
        for l in layers {
            let r = get(&mirror.url(&format!("/v2/hub/app/blobs/{}", sha256(l)))).await;
            assert_eq!(r.status(), 200, "{tag} is cached but a blob of it is not");
        }
    }
    assert!((1..images.len()).contains(&cached), "{cached} cached");
    // The most recently pulled image stayed; the pushed one is whole.
    let last = &images[images.len() - 1];
    assert_eq!(
        manifest_digest(&mirror.url(&format!("/v2/hub/app/manifests/{}", last.1)))
            .await
            .0,
        200
    );
    let r = get(&mirror.url(&format!("/v2/local/app/blobs/{}", sha256(&shared)))).await;
    assert_eq!(r.status(), 200);
    // The evictions are deletes on the record.
    let feed = get(&mirror.url("/v2/_ferro/events/feed?repo=hub/app"))
        .await
        .text()
        .await
        .unwrap();
    assert!(feed.contains("mirror-eviction:hub/"), "{feed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_under_a_mirror_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let config = mirror_config(dir.path(), &upstream.url, "", "");
    let mirror = start_mirror(dir.path(), &config);
    let http = reqwest::Client::new();
    let r = http
        .post(mirror.url("/v2/hub/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.text().await.unwrap().contains("UNSUPPORTED"));
    let r = http
        .put(mirror.url("/v2/hub/app/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Outside the prefix, and with allow_push, pushes work.
    push_image(&mirror.url, "other/app", "v1", &[b"x"], None).await;
    let config = mirror_config(dir.path(), &upstream.url, "allow_push = true", "");
    let allowed = Ferro::start(&dir.path().join("mirror2"), Some(&config), &[], &[]);
    push_image(&allowed.url, "hub/mine", "v1", &[b"y"], None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_caches_an_image_before_anyone_pulls_it() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = anonymous_upstream(dir.path());
    let layers = [layer(70_000, 30), layer(80_000, 31)];
    let digest = push_image(&upstream.url, "app", "v1", &[&layers[0], &layers[1]], None).await;
    let proxy = Proxy::start(&upstream.url).await;
    let config = mirror_config(dir.path(), &proxy.url, "", "");
    let mirror = start_mirror(dir.path(), &config);
    // What `ferroctl mirror sync hub/app:v1` runs.
    let repo = ferro::oci::RepoName::parse("hub/app").unwrap();
    let reference = ferro::oci::Reference::parse("v1").unwrap();
    let mut sizes = Vec::new();
    let report =
        ferro::mirror::prefetch::prefetch(&mirror.url, &repo, &reference, None, &mut |n| {
            sizes.push(n)
        })
        .await
        .unwrap();
    assert_eq!(report.digest, digest);
    assert_eq!((report.manifests, report.blobs), (1, 3));
    assert_eq!(proxy.blob_gets(), 3);
    // Cached: served with the upstream failing.
    proxy.fault(500);
    for l in &layers {
        let r = get(&mirror.url(&format!("/v2/hub/app/blobs/{}", sha256(l)))).await;
        assert_eq!(sha256(&r.bytes().await.unwrap()), sha256(l));
    }
}

/// The mirror's tags under `repo`, read from its own state (the tag list
/// is never forwarded upstream, so polling it pulls nothing).
async fn mirror_tags(mirror: &Ferro, repo: &str) -> Vec<String> {
    let r = get(&mirror.url(&format!("/v2/{repo}/tags/list"))).await;
    if r.status() != 200 {
        return Vec::new();
    }
    let body: serde_json::Value = r.json().await.unwrap();
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

async fn wait_for_tags(mirror: &Ferro, repo: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tags = mirror_tags(mirror, repo).await;
        if tags == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule did not bring {want:?} (has {tags:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_keeps_the_matching_tags_cached_without_a_pull() {
    let dir = tempfile::tempdir().unwrap();
    // The token flow, and tag lists of two per page: the schedule must
    // sign in and follow `Link` to see `3.20` and later.
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, auth_support::htpasswd(&[("alice", "a-pass")])).unwrap();
    let upstream_config = dir.path().join("upstream.toml");
    std::fs::write(
        &upstream_config,
        format!(
            "[limits]\npage_entries_max = 2\n[auth]\nscheme = \"token\"\nhtpasswd = \"{}\"\n[auth.token]\nservice = \"upstream\"\nlifetime_secs = 60\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let alice = Some(("alice", "a-pass"));
    let mut upstream = Ferro::start(
        &dir.path().join("upstream"),
        Some(&upstream_config),
        &[],
        &[],
    );
    let mut pushed = std::collections::HashMap::new();
    for (i, tag) in ["3.18", "3.19", "3.20", "latest"].into_iter().enumerate() {
        let l = layer(20_000 + i, 10 + i as u64);
        let digest = push_image(&upstream.url, "library/alpine", tag, &[&l], alice).await;
        pushed.insert(tag, (digest, l));
    }
    let r = reqwest::Client::new()
        .get(upstream.url("/v2/library/alpine/tags/list"))
        .basic_auth("alice", Some("a-pass"))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().contains_key("link"),
        "the upstream pages its tag list"
    );
    let r = get(&upstream.url("/v2/library/alpine/tags/list")).await;
    assert_eq!(r.status(), 401, "the upstream asks for a token");
    let config = mirror_config(
        dir.path(),
        &upstream.url,
        "tag_ttl = \"1h\"\nsync_interval = \"1s\"\nsync = [{ repository = \"library/alpine\", semver = \">=3.19\" }]",
        "username = \"alice\"\npassword = \"a-pass\"",
    );
    let mirror = start_mirror(dir.path(), &config);
    // Without any client pull, the schedule caches exactly the matching
    // tags: `3.18` is out of range and `latest` is not a version.
    wait_for_tags(&mirror, "hub/library/alpine", &["3.19", "3.20"]).await;
    // A tag pushed upstream later is there after the next interval.
    let l = layer(30_000, 99);
    let digest = push_image(&upstream.url, "library/alpine", "3.21", &[&l], alice).await;
    pushed.insert("3.21", (digest, l));
    wait_for_tags(&mirror, "hub/library/alpine", &["3.19", "3.20", "3.21"]).await;
    // The tag is committed before its blobs arrive: the run that put it
    // there is over once the run count passes what it is now.
    let runs = metric(&mirror, "ferro_mirror_sync_runs_total").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&mirror, "ferro_mirror_sync_runs_total").await <= runs {
        assert!(std::time::Instant::now() < deadline, "no run ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&mirror, "ferro_mirror_sync_tags_synced_total").await >= 3.0);
    assert!(metric(&mirror, "ferro_mirror_sync_runs_total").await >= 2.0);
    assert!(metric(&mirror, "ferro_mirror_sync_last_success_timestamp_seconds").await > 0.0);

    // The upstream stopped: the synced tags pull whole (manifest and
    // blob), the others do not.
    upstream.terminate(Duration::from_secs(30));
    for tag in ["3.19", "3.20", "3.21"] {
        let (digest, l) = &pushed[tag];
        let (status, got) =
            manifest_digest(&mirror.url(&format!("/v2/hub/library/alpine/manifests/{tag}"))).await;
        assert_eq!((status, &got), (200, digest), "{tag}");
        let r = get(&mirror.url(&format!("/v2/hub/library/alpine/blobs/{}", sha256(l)))).await;
        assert_eq!(r.status(), 200, "{tag}'s layer");
        assert_eq!(r.bytes().await.unwrap().as_ref(), l.as_slice());
    }
    for tag in ["3.18", "latest"] {
        let (status, _) =
            manifest_digest(&mirror.url(&format!("/v2/hub/library/alpine/manifests/{tag}"))).await;
        assert_ne!(status, 200, "{tag} was never synced");
        let (_, l) = &pushed[tag];
        let r = get(&mirror.url(&format!("/v2/hub/library/alpine/blobs/{}", sha256(l)))).await;
        assert_ne!(r.status(), 200, "{tag}'s layer was never synced");
    }
    // A run against the stopped upstream is counted as a failure, and
    // retried: the task keeps going.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&mirror, "ferro_mirror_sync_failures_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no sync failure counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
