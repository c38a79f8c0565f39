//! `ferroctl restore` on a data directory written by the real server: a
//! tag moved back to where it was, a deleted manifest brought back, each a
//! new entry on the record, visible to the server when it starts again.
mod support;

use support::*;

#[test]
fn restore_moves_a_tag_back_and_brings_a_manifest_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    let v1 = push_image(&server, "app", "prod", "v1");
    let v2 = push_image(&server, "app", "prod", "v2");
    let http = client();
    let r = http
        .delete(server.url(&format!("/v2/app/manifests/{}", v1.digest)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    server.stop();

    // While the server would hold the lock, restore refuses; here it is stopped.
    let history = ctl(&dir, &["--json", "history", "app:prod"])
        .expect(0)
        .json();
    let first_seq = history["items"][0]["seq"].as_u64().unwrap().to_string();
    let out = ctl(&dir, &["--json", "restore", "app:prod", "--at", &first_seq])
        .expect(0)
        .json();
    assert!(out["seq"].as_u64().is_some(), "{out}");
    assert_eq!(out["digest"], v1.digest.as_str());
    // Again: nothing to change, nothing logged.
    let again = ctl(
        &dir,
        &["--json", "restore", "app:prod", "--digest", &v1.digest],
    )
    .expect(0)
    .json();
    assert!(again["seq"].is_null(), "{again}");
    // An unknown manifest is not found (exit 6).
    ctl(&dir, &["restore", "app", "--manifest", &sha256(b"never")]).expect(6);

    let server = Server::start(&dir, &[]);
    let r = http
        .get(server.url("/v2/app/manifests/prod"))
        .send()
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], v1.digest.as_str());
    assert_eq!(r.bytes().unwrap().as_ref(), v1.manifest.as_slice());
    let h: serde_json::Value = serde_json::from_slice(
        &http
            .get(server.url("/v2/app/_ferro/history/tag?tag=prod"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
    .unwrap();
    let last = h["items"].as_array().unwrap().last().unwrap();
    assert!(
        last["actor"]["user"]
            .as_str()
            .unwrap()
            .ends_with("(ferroctl)"),
        "{last}"
    );
    let _ = v2;
    // A running server holds the lock: restore refuses with exit 3.
    ctl(&dir, &["restore", "app:prod", "--digest", &v1.digest]).expect(3);
    server.stop();
}
