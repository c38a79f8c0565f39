//! The web UI over plain HTTP, no browser: `/` redirects browsers only;
//! with auth off on an address other than loopback the UI is read-only
//! (no controls, writes refused) unless `ui.allow_writes_without_auth`;
//! `ui.enabled = false` takes it away; pages say how long they took
//! (`Server-Timing`) and make no session unless they carry a form.
mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::Registry;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session cookie and CSRF token of a fresh page view.
async fn session(http: &reqwest::Client, url: &str) -> (String, String) {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body = r.text().await.unwrap();
    let i = body.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &body[i + "name=\"csrf\" value=\"".len()..];
    let csrf = rest[..rest.find('"').unwrap()].to_owned();
    (cookie.split(';').next().unwrap().to_owned(), csrf)
}

#[tokio::test]
async fn root_redirects_browsers_and_pages_report_their_time() {
    let reg = Registry::start(&["--durability", "never"]);
    reg.push_image("app", "v1", "one").await;
    let http = client();
    let r = http
        .get(reg.url("/"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/");
    let r = http.get(reg.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.post(reg.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(reg.url("/ui/r/app")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let timing = r.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(timing.starts_with("render;dur="), "{timing}");
    assert!(
        r.headers().get("set-cookie").is_none(),
        "reading a page without a form makes no session"
    );
    assert!(
        r.text().await.unwrap().contains("Delete"),
        "loopback: writable"
    );
    let r = http.get(reg.url("/ui/static/ui.js")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let metrics = http
        .get(reg.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ferro_http_requests_total{route=\"ui\""),
        "UI requests counted under their own route"
    );
}

/// A server process, killed on drop (also when an assertion fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server bound on every address (reached here through loopback):
/// returns the child and `127.0.0.1:port`.
fn start_public(data_dir: &std::path::Path, extra: &[&str]) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferro"))
        .args(["serve", "--durability", "never", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferro");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines.next().expect("ferro exited").expect("a line");
        if let Some(i) = line.find("listening on http://0.0.0.0:") {
            break line[i + "listening on http://0.0.0.0:".len()..]
                .trim()
                .to_owned();
        }
    };
    // Keep reading so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), format!("127.0.0.1:{port}"))
}

async fn push_two(http: &reqwest::Client, base: &str) -> (String, String) {
    let mut digests = Vec::new();
    for seed in ["one", "two"] {
        let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let c = common::sha256(&config);
        let r = http
            .post(format!("{base}/v2/app/blobs/uploads/?digest={c}"))
            .body(config.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let m = support::image_manifest((&c, config.len()), &[], None);
        let r = http
            .put(format!("{base}/v2/app/manifests/v1"))
            .header("content-type", support::OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        digests.push(common::sha256(&m));
    }
    (digests[0].clone(), digests[1].clone())
}

#[tokio::test]
async fn without_auth_on_a_public_address_the_ui_is_read_only() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = start_public(dir.path(), &[]);
    let base = format!("http://{addr}");
    let (first, second) = push_two(&http, &base).await;
    let page = http
        .get(format!("{base}/ui/r/app/-/history?tag=v1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&first[..19]), "the history shows");
    assert!(!page.contains("Restore this version"), "no restore control");
    let (cookie, csrf) = session(&http, &format!("{base}/ui/admin")).await;
    let r = http
        .post(format!("{base}/ui/r/app/-/restore"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&tag=v1&digest={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .head(format!("{base}/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], second.as_str());
    let page = http.get(format!("{base}/ui/r/app")).send().await.unwrap();
    assert!(!page.text().await.unwrap().contains("/-/delete"));
    drop(child);

    // Allowed by the setting: the same restore goes through.
    let (child, addr) = start_public(dir.path(), &["--ui-allow-writes-without-auth"]);
    let base = format!("http://{addr}");
    let (cookie, csrf) = session(&http, &format!("{base}/ui/admin")).await;
    let r = http
        .post(format!("{base}/ui/r/app/-/restore"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&tag=v1&digest={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .head(format!("{base}/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], first.as_str());
    drop(child);
}

#[tokio::test]
async fn the_ui_can_be_turned_off() {
    let reg = Registry::start(&["--durability", "never", "--no-ui"]);
    let http = client();
    let r = http.get(reg.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
