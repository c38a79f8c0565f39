//! The web UI with auth on, in a real headless Chromium: the login page;
//! a user whose rules let them pull one namespace sees only it (the list,
//! the overview, a direct link elsewhere answers 404), is shown no restore
//! control, and a restore POSTed anyway with their session and CSRF token
//! is refused by the server and changes nothing; a wrong password is
//! refused; logout ends the session. Over plain HTTP: a form without the
//! session's CSRF token is refused.
mod auth_support;
mod browser;

use auth_support::{htpasswd, push_image, Cred, Ferro};
use browser::Browser;
use serde_json::json;

const ADMIN: Cred = Cred::Basic("admin", "admin-pw");

fn start() -> (Ferro, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    std::fs::write(
        &users,
        htpasswd(&[("admin", "admin-pw"), ("dev", "dev-pw")]),
    )
    .unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            r#"
durability = "never"
[auth]
scheme = "basic"
htpasswd = "{}"

[[auth.rules]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]

[[auth.rules]]
users = ["dev"]
repositories = ["team/**"]
actions = ["pull"]
"#,
            users.display()
        ),
    )
    .unwrap();
    let server = Ferro::start(&dir.path().join("data"), Some(&config), &[], &[]);
    (server, dir)
}

async fn tag_digest(server: &Ferro, repo: &str, tag: &str) -> String {
    let http = auth_support::client();
    let r = auth_support::send(
        &http,
        &server.url,
        reqwest::Method::HEAD,
        &format!("/v2/{repo}/manifests/{tag}"),
        ADMIN,
    )
    .await;
    assert_eq!(r.status(), 200);
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn log_in(b: &Browser, server: &Ferro, user: &str, password: &str) {
    b.goto(&server.url("/ui/repositories")).await;
    assert!(
        b.path().await.starts_with("/ui/login"),
        "sent to the login page"
    );
    b.fill("#user", user).await;
    b.fill("#password", password).await;
    b.click_to("#login").await;
    // Wait for the answer to the form (the page changes).
    b.wait_until(
        "the login's answer",
        "return document.readyState === 'complete' && \
         (!location.pathname.startsWith('/ui/login') || !!document.querySelector('.login .banner'))",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_one_namespace_sees_only_it_and_cannot_restore() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let (server, _dir) = start();
    let http = auth_support::client();
    let (s, v1) = push_image(&http, &server.url, "team/api", "v1", "one", ADMIN).await;
    assert_eq!(s, 201);
    let (s, _) = push_image(&http, &server.url, "team/api", "v1", "two", ADMIN).await;
    assert_eq!(s, 201);
    let (s, _) = push_image(&http, &server.url, "other/secret", "v1", "s", ADMIN).await;
    assert_eq!(s, 201);
    let moved = tag_digest(&server, "team/api", "v1").await;
    assert_ne!(moved, v1);

    // A wrong password is refused.
    log_in(&b, &server, "dev", "wrong").await;
    assert!(b
        .text(".login")
        .await
        .contains("Wrong user name or password"));
    b.screenshot("login").await;

    // dev sees team/api only.
    log_in(&b, &server, "dev", "dev-pw").await;
    assert_eq!(b.path().await, "/ui/repositories");
    let rows = b.texts("#repositories tbody tr td:first-child").await;
    assert_eq!(rows, vec!["team/api"]);
    assert!(!b.exists("header nav a[href='/ui/admin']").await);
    b.goto(&server.url("/ui/")).await;
    let events = b.text("#events").await;
    assert!(
        events.contains("team/api") && !events.contains("other/secret"),
        "{events}"
    );
    b.goto(&server.url("/ui/r/other/secret")).await;
    assert!(b.text("main").await.contains("404"));
    b.goto(&server.url("/ui/repositories?q=secret")).await;
    assert!(b.texts("#repositories tbody tr").await.is_empty());
    b.goto(&server.url("/ui/admin")).await;
    assert!(b.text("main").await.contains("403"));

    // No restore control, and the server refuses one all the same.
    b.goto(&server.url("/ui/r/team/api/-/history?tag=v1")).await;
    assert_eq!(b.texts("#timeline > li").await.len(), 2);
    assert!(!b.exists("a.restore").await);
    let status = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch('/ui/r/team/api/-/restore', {method: 'POST',
               body: new URLSearchParams({csrf, tag: 'v1', digest: arguments[0]})})
               .then(r => done(r.status));",
            vec![json!(v1)],
        )
        .await
        .expect("fetch");
    assert_eq!(status, json!(403));
    assert_eq!(tag_digest(&server, "team/api", "v1").await, moved);
    b.goto(&server.url(&format!("/ui/r/team/api/-/restore?tag=v1&digest={v1}")))
        .await;
    assert!(b.text("main").await.contains("403"));

    // Logout ends the session.
    b.goto(&server.url("/ui/")).await;
    b.click_to("form.user button").await;
    assert!(b.path().await.starts_with("/ui/login"));
    b.goto(&server.url("/ui/repositories")).await;
    assert!(b.path().await.starts_with("/ui/login"));

    // admin may restore: the control shows, and the click works.
    log_in(&b, &server, "admin", "admin-pw").await;
    b.goto(&server.url("/ui/r/team/api/-/history?tag=v1")).await;
    b.click_to("a.restore").await;
    b.click_to("#confirm").await;
    assert_eq!(tag_digest(&server, "team/api", "v1").await, v1);
    b.goto(&server.url("/ui/r/team/api/-/history?tag=v1")).await;
    let newest = b.text("#timeline > li:first-child").await;
    assert!(newest.contains("admin"), "the restore's actor: {newest}");
    b.close().await;
}

#[tokio::test]
async fn a_form_without_the_session_token_is_refused() {
    let (server, _dir) = start();
    let http = auth_support::client();
    // A fresh session (the login page sets it), then a login without its
    // token.
    let r = http.get(server.url("/ui/login")).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains("Secure"), "plain HTTP");
    let session = cookie.split(';').next().unwrap().to_owned();
    let r = http
        .post(server.url("/ui/login"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=admin&password=admin-pw&csrf=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Pages need a login; the API is as it was.
    let r = http.get(server.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login?next=%2Fui%2F");
    let r = http.get(server.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
