//! The token flow as docker, podman, containerd, skopeo and oras use it:
//! a 401 with `Bearer realm,service,scope`, a token from the built-in
//! endpoint (GET with Basic credentials, or the OAuth2 password grant by
//! POST), the token on the API; scopes cut down to what the rules allow;
//! tokens that lack a scope, are tampered with, or come from a configured
//! external issuer.
mod auth_support;

use auth_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SERVICE: &str = "ferro-test";

fn start(external: Option<&std::path::Path>) -> (Ferro, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        auth_support::htpasswd(&[("alice", "a-pass"), ("bob", "b-pass")]),
    )
    .unwrap();
    let external = match external {
        Some(key) => format!(
            "[auth.token.external]\npublic_key = \"{}\"\nissuer = \"ext-issuer\"\n",
            key.display()
        ),
        None => String::new(),
    };
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[auth]
scheme = "token"
htpasswd = "{}"
anonymous_pull = true

[[auth.rules]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]

[[auth.rules]]
users = ["bob", "ext-user"]
repositories = ["app"]
actions = ["pull"]

[auth.token]
service = "{SERVICE}"
lifetime_secs = 120
{external}"#,
            htpasswd.display()
        ),
    )
    .unwrap();
    let server = Ferro::start(&dir.path().join("data"), Some(&config), &[], &[]);
    (server, dir)
}

/// The parameters of a Bearer challenge.
fn challenge(r: &reqwest::Response) -> Vec<(String, String)> {
    let h = header(r, "www-authenticate");
    let rest = h
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not Bearer: {h}"));
    let mut out = Vec::new();
    let mut s = rest;
    while let Some(eq) = s.find('=') {
        let key = s[..eq].trim_start_matches(',').to_owned();
        let after = &s[eq + 2..]; // skip ="
        let end = after.find('"').unwrap();
        out.push((key, after[..end].to_owned()));
        s = &after[end + 1..];
    }
    out
}

fn param<'a>(c: &'a [(String, String)], key: &str) -> Option<&'a str> {
    c.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn get_token(server: &Ferro, scopes: &[&str], cred: Cred<'_>) -> reqwest::Response {
    let mut url = server.url(&format!("/auth/token?service={SERVICE}"));
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    with_cred(client().get(url), cred).send().await.unwrap()
}

async fn token(server: &Ferro, scopes: &[&str], cred: Cred<'_>) -> String {
    let r = get_token(server, scopes, cred).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 120);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_challenge_names_realm_service_and_scope() {
    let (server, _dir) = start(None);
    let http = client();
    let r = send(&http, &server.url, Method::GET, "/v2/", Cred::None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert_eq!(param(&c, "realm"), Some(server.url("/auth/token").as_str()));
    assert_eq!(param(&c, "service"), Some(SERVICE));
    assert_eq!(param(&c, "scope"), None);
    assert_eq!(error_code(r).await, "UNAUTHORIZED");

    let r = send(
        &http,
        &server.url,
        Method::POST,
        "/v2/app/blobs/uploads/",
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert_eq!(param(&c, "scope"), Some("repository:app:pull,push"));
    let r = send(
        &http,
        &server.url,
        Method::DELETE,
        "/v2/app/manifests/v1",
        Cred::None,
    )
    .await;
    assert_eq!(
        param(&challenge(&r), "scope"),
        Some("repository:app:delete")
    );
    let r = send(&http, &server.url, Method::GET, "/v2/_catalog", Cred::None).await;
    assert_eq!(param(&challenge(&r), "scope"), Some("registry:catalog:*"));
}

#[tokio::test]
async fn a_pull_token_cannot_push_and_a_push_token_can() {
    let (server, _dir) = start(None);
    let http = client();
    let r = get_token(
        &server,
        &["repository:app:pull,push"],
        Cred::Basic("alice", "nope"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let pull = token(
        &server,
        &["repository:app:pull"],
        Cred::Basic("alice", "a-pass"),
    )
    .await;
    let (status, _) = push_image(&http, &server.url, "app", "v1", "x", Cred::Bearer(&pull)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let r = push_blob(&http, &server.url, "app", b"bytes", Cred::Bearer(&pull)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&r);
    assert_eq!(param(&c, "error"), Some("insufficient_scope"));
    assert_eq!(param(&c, "scope"), Some("repository:app:pull,push"));

    let push = token(
        &server,
        &["repository:app:pull,push"],
        Cred::Basic("alice", "a-pass"),
    )
    .await;
    let (status, digest) =
        push_image(&http, &server.url, "app", "v1", "x", Cred::Bearer(&push)).await;
    assert_eq!(status, StatusCode::CREATED);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/manifests/v1",
        Cred::Bearer(&pull),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    // A token for app is no token for other.
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/other/tags/list",
        Cred::Bearer(&push),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(param(&challenge(&r), "error"), Some("insufficient_scope"));

    // The actor of the push is alice (the feed needs the catalog scope).
    let feed_token = token(
        &server,
        &["registry:catalog:*"],
        Cred::Basic("alice", "a-pass"),
    )
    .await;
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/events/feed",
        Cred::Bearer(&feed_token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let feed: Value = r.json().await.unwrap();
    let entries = feed["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["actor"]["user"] == "alice"));
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_catalog",
        Cred::Bearer(&feed_token),
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["repositories"],
        json!(["app"])
    );

    // Tampered or foreign tokens are invalid.
    let mut bad = push.clone();
    bad.pop();
    let r = send(&http, &server.url, Method::GET, "/v2/", Cred::Bearer(&bad)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(param(&challenge(&r), "error"), Some("invalid_token"));
}

#[tokio::test]
async fn scopes_are_cut_down_to_the_rules() {
    let (server, _dir) = start(None);
    let http = client();
    let alice = token(
        &server,
        &["repository:app:pull,push"],
        Cred::Basic("alice", "a-pass"),
    )
    .await;
    let (status, _) = push_image(&http, &server.url, "app", "v1", "x", Cred::Bearer(&alice)).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = header(
        &send(
            &http,
            &server.url,
            Method::GET,
            "/v2/app/manifests/v1",
            Cred::Bearer(&alice),
        )
        .await,
        "docker-content-digest",
    );
    // bob asks for push; gets pull only; his push is denied (403: no token
    // would do), and app:v1 stays where it was.
    let bob = token(
        &server,
        &["repository:app:pull,push"],
        Cred::Basic("bob", "b-pass"),
    )
    .await;
    let (status, _) = push_image(&http, &server.url, "app", "v1", "bob", Cred::Bearer(&bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/manifests/v1",
        Cred::Bearer(&bob),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), before);
    // Anonymous tokens (anonymous_pull is on): pull yes, push no.
    let anon = token(&server, &["repository:app:pull,push"], Cred::None).await;
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/app/manifests/v1",
        Cred::Bearer(&anon),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = push_blob(&http, &server.url, "app", b"anon", Cred::Bearer(&anon)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A token for another service is not issued.
    let r = client()
        .get(server.url("/auth/token?service=elsewhere&scope=repository:app:pull"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_oauth2_password_grant_by_post() {
    let (server, _dir) = start(None);
    let http = client();
    let form = |password: &str| {
        format!(
            "grant_type=password&username=alice&password={password}&service={SERVICE}\
             &client_id=containerd&scope=repository%3Aapp%3Apull%2Cpush"
        )
    };
    let r = http
        .post(server.url("/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form("a-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["scope"], "repository:app:pull,push");
    let t = v["access_token"].as_str().unwrap();
    let (status, _) = push_image(&http, &server.url, "app", "v1", "x", Cred::Bearer(t)).await;
    assert_eq!(status, StatusCode::CREATED);
    let r = http
        .post(server.url("/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .post(server.url("/auth/token"))
        .body("grant_type=refresh_token&refresh_token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn tokens_of_an_external_issuer() {
    let keys = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let public = keys.path().join("issuer.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let (server, _dir) = start(Some(&public));
    let http = client();
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let make = |iss: &str, aud: &str, exp: u64, access: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &json!({"iss": iss, "sub": "ext-user", "aud": aud, "exp": exp, "nbf": now - 5,
                    "iat": now, "jti": "1", "access": access}),
            &signing,
        )
        .unwrap()
    };
    let push_app = json!([{"type": "repository", "name": "app", "actions": ["pull", "push"]}]);
    let good = make("ext-issuer", SERVICE, now + 60, push_app.clone());
    let (status, _) = push_image(&http, &server.url, "app", "v1", "ext", Cred::Bearer(&good)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the issuer's grant is what counts"
    );
    for bad in [
        make("someone-else", SERVICE, now + 60, push_app.clone()),
        make("ext-issuer", "another-service", now + 60, push_app.clone()),
        make("ext-issuer", SERVICE, now - 3600, push_app.clone()),
    ] {
        let r = send(&http, &server.url, Method::GET, "/v2/", Cred::Bearer(&bad)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(param(&challenge(&r), "error"), Some("invalid_token"));
    }
    let pull_only = make(
        "ext-issuer",
        SERVICE,
        now + 60,
        json!([{"type": "repository", "name": "app", "actions": ["pull"]}]),
    );
    let r = push_blob(&http, &server.url, "app", b"more", Cred::Bearer(&pull_only)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(param(&challenge(&r), "error"), Some("insufficient_scope"));
}
