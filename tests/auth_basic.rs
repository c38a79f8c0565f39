//! HTTP Basic against an htpasswd file, with per-repository rules: the
//! challenge a client without credentials gets, wrong passwords, rule-based
//! denials that change nothing, the catalog and event feed filtered or
//! refused, anonymous pull, mounts from unreadable repositories, and the
//! user recorded as the actor of what they did.
mod auth_support;

use auth_support::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// alice: everything everywhere; bob (group dev): pull and push on dev/*,
/// pull on app; carol: pull on app only.
fn start(anonymous_pull: bool) -> (Ferro, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        htpasswd_lines(&[("alice", "a-pass"), ("bob", "b-pass"), ("carol", "c-pass")]),
    )
    .unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[auth]
scheme = "basic"
realm = "ferro test"
htpasswd = "{}"
anonymous_pull = {anonymous_pull}

[auth.groups]
dev = ["bob"]

[[auth.rules]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]

[[auth.rules]]
groups = ["dev"]
repositories = ["dev/*"]
actions = ["pull", "push"]

[[auth.rules]]
users = ["bob", "carol"]
repositories = ["app"]
actions = ["pull"]
"#,
            htpasswd.display()
        ),
    )
    .unwrap();
    let server = Ferro::start(&dir.path().join("data"), Some(&config), &[], &[]);
    (server, dir)
}

fn htpasswd_lines(users: &[(&str, &str)]) -> String {
    htpasswd(users)
}

const ALICE: Cred = Cred::Basic("alice", "a-pass");
const BOB: Cred = Cred::Basic("bob", "b-pass");
const CAROL: Cred = Cred::Basic("carol", "c-pass");

async fn last_seq(http: &reqwest::Client, base: &str) -> u64 {
    let r = send(http, base, Method::GET, "/v2/_ferro/events/feed?n=0", ALICE).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["last_seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn anonymous_requests_get_the_basic_challenge() {
    let (server, _dir) = start(false);
    let http = client();
    for (method, path) in [
        (Method::GET, "/v2/"),
        (Method::POST, "/v2/app/blobs/uploads/"),
        (Method::GET, "/v2/app/manifests/latest"),
        (Method::GET, "/v2/_catalog"),
        (Method::GET, "/v2/_ferro/events/feed"),
    ] {
        let r = send(&http, &server.url, method.clone(), path, Cred::None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"ferro test\"");
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    let (status, _) = push_image(&http, &server.url, "app", "v1", "x", Cred::None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Health, readiness and metrics need no credentials.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = send(&http, &server.url, Method::GET, path, Cred::None).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_refused() {
    let (server, _dir) = start(false);
    let http = client();
    for cred in [
        Cred::Basic("alice", "wrong"),
        Cred::Basic("mallory", "a-pass"),
        Cred::Basic("", ""),
    ] {
        let r = send(&http, &server.url, Method::GET, "/v2/", cred).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(header(&r, "www-authenticate").starts_with("Basic "));
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    // Not Basic at all.
    let r = http
        .get(server.url("/v2/"))
        .header("Authorization", "Basic !!!not-base64")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(&http, &server.url, Method::GET, "/v2/", ALICE).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn rules_deny_with_403_and_nothing_changes() {
    let (server, _dir) = start(false);
    let http = client();
    let (status, digest) = push_image(&http, &server.url, "app", "v1", "one", ALICE).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = last_seq(&http, &server.url).await;

    // bob may pull app, not push, not delete.
    let r = send(&http, &server.url, Method::GET, "/v2/app/manifests/v1", BOB).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = push_image(&http, &server.url, "app", "v2", "two", BOB).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = push_blob(&http, &server.url, "app", b"bob's bytes", BOB).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
    let r = send(
        &http,
        &server.url,
        Method::DELETE,
        &format!("/v2/app/manifests/{digest}"),
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(error_code(r).await, "DENIED");
    let r = send(
        &http,
        &server.url,
        Method::DELETE,
        "/v2/app/manifests/v1",
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(
        &http,
        &server.url,
        Method::POST,
        "/v2/app/_ferro/restore/tag?tag=v1&at=1",
        CAROL,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // carol may not even read dev/*.
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/dev/x/tags/list",
        CAROL,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    assert_eq!(last_seq(&http, &server.url).await, before, "nothing logged");
    let r = send(&http, &server.url, Method::GET, "/v2/app/tags/list", ALICE).await;
    let tags: Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    let r = send(&http, &server.url, Method::GET, "/metrics", Cred::None).await;
    let text = r.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ferro_auth_refusals_total{reason=\"denied\"}")),
        "{text}"
    );

    // Where a rule allows, bob pushes, and the log says it was bob.
    let (status, _) = push_image(&http, &server.url, "dev/tools", "v1", "bob", BOB).await;
    assert_eq!(status, StatusCode::CREATED);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        &format!("/v2/_ferro/events/feed?after={before}"),
        ALICE,
    )
    .await;
    let feed: Value = r.json().await.unwrap();
    let entries = feed["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        assert_eq!(e["actor"]["user"], "bob", "{e}");
        assert!(e["actor"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
}

#[tokio::test]
async fn catalog_and_feed_show_only_what_the_caller_may_pull() {
    let (server, _dir) = start(false);
    let http = client();
    for repo in ["app", "dev/a", "secret/x"] {
        let (status, _) = push_image(&http, &server.url, repo, "v1", repo, ALICE).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let catalog = |cred| {
        let http = http.clone();
        let url = server.url.clone();
        async move {
            let r = send(&http, &url, Method::GET, "/v2/_catalog", cred).await;
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["repositories"].clone()
        }
    };
    assert_eq!(
        catalog(ALICE).await,
        serde_json::json!(["app", "dev/a", "secret/x"])
    );
    assert_eq!(catalog(BOB).await, serde_json::json!(["app", "dev/a"]));
    assert_eq!(catalog(CAROL).await, serde_json::json!(["app"]));
    // Pages are filtered before they are cut: n=1 still leads on.
    let r = send(&http, &server.url, Method::GET, "/v2/_catalog?n=1", BOB).await;
    assert!(header(&r, "link").contains("last=app"));

    // The registry-wide feed names every repository: only for pull on **.
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/events/feed",
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/events/feed?repo=app",
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let feed: Value = r.json().await.unwrap();
    assert!(feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["events"].as_array().unwrap())
        .all(|ev| ev.to_string().contains("\"app\"") || !ev.to_string().contains("repo")));
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/events/feed?repo=secret/x",
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/_ferro/history/repository",
        CAROL,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/secret/x/_ferro/history/repository",
        CAROL,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_mount_from_an_unreadable_repository_is_an_ordinary_upload() {
    let (server, _dir) = start(false);
    let http = client();
    let secret = push_blob(&http, &server.url, "secret/x", b"secret bytes", ALICE).await;
    assert_eq!(secret.status(), StatusCode::CREATED);
    let digest = sha256(b"secret bytes");
    for query in [
        format!("mount={digest}&from=secret/x"),
        format!("mount={digest}"),
    ] {
        let r = send(
            &http,
            &server.url,
            Method::POST,
            &format!("/v2/dev/bob/blobs/uploads/?{query}"),
            BOB,
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{query}: no mount for bob"
        );
    }
    let r = send(
        &http,
        &server.url,
        Method::HEAD,
        &format!("/v2/dev/bob/blobs/{digest}"),
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // alice may read secret/x: her mount works.
    let r = send(
        &http,
        &server.url,
        Method::POST,
        &format!("/v2/dev/bob/blobs/uploads/?mount={digest}&from=secret/x"),
        ALICE,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn anonymous_pull_lets_anyone_read_but_not_write() {
    let (server, _dir) = start(true);
    let http = client();
    let (status, digest) = push_image(&http, &server.url, "app", "v1", "pub", ALICE).await;
    assert_eq!(status, StatusCode::CREATED);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/manifests/v1",
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/tags/list",
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = push_image(&http, &server.url, "app", "v2", "anon", Cred::None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Listing the catalog and reading the feed still need credentials.
    let r = send(&http, &server.url, Method::GET, "/v2/_catalog", Cred::None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/events/feed",
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn garbage_collection_needs_delete_everywhere() {
    let (server, _dir) = start(true);
    let http = client();
    for cred in [Cred::None, BOB, CAROL] {
        let r = send(
            &http,
            &server.url,
            Method::POST,
            "/v2/_ferro/gc/run?dry_run=true",
            cred,
        )
        .await;
        let status = r.status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{status}"
        );
    }
    let r = send(
        &http,
        &server.url,
        Method::POST,
        "/v2/_ferro/gc/run?dry_run=true",
        ALICE,
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    // A _ferro endpoint this registry does not have: closed to all but
    // those who may do everything, then unknown.
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/nothing/here",
        BOB,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
