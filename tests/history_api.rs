//! History, time travel, restore and the event feed over HTTP, against the
//! real server: push v1 and v2 as app:latest, delete the tag; the tag's
//! history has the three changes in order; reads as of the first return v1
//! exactly; a read-only server at that point lets skopeo pull v1; a
//! restore brings v1 back as a fourth entry; the feed, resumed from any
//! cursor, returns each entry exactly once.
mod common;
mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{sha256, TestServer};
use serde_json::Value;
use support::{Image, Registry};

async fn json(r: reqwest::Response) -> Value {
    assert!(r.status().is_success(), "status {}", r.status());
    r.json().await.expect("json body")
}

struct Story {
    reg: Registry,
    v1: Image,
    v2: Image,
    history: Value,
}

/// v1 as app:latest, v2 as app:latest, then the tag deleted.
async fn story() -> Story {
    let reg = Registry::start(&[]);
    let v1 = reg.push_image("app", "latest", "v1").await;
    let v2 = reg.push_image("app", "latest", "v2").await;
    assert_eq!(reg.delete("/v2/app/manifests/latest").await.status(), 202);
    let history = json(reg.get("/v2/app/_ferro/history/tag?tag=latest").await).await;
    Story {
        reg,
        v1,
        v2,
        history,
    }
}

fn actions(item: &Value) -> Vec<String> {
    item["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap().to_owned())
        .collect()
}

fn change<'a>(item: &'a Value, action: &str) -> &'a Value {
    item["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {item}"))
}

#[tokio::test]
async fn tag_history_has_every_change_in_order() {
    let s = story().await;
    let items = s.history["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{}", s.history);
    let seqs: Vec<u64> = items.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(change(&items[0], "tagged")["digest"], s.v1.digest.as_str());
    let moved = change(&items[1], "tag_moved");
    assert_eq!(moved["digest"], s.v2.digest.as_str());
    assert_eq!(moved["previous"], s.v1.digest.as_str());
    assert_eq!(
        change(&items[2], "tag_deleted")["digest"],
        s.v2.digest.as_str()
    );
    for item in items {
        assert!(item["time"].as_str().unwrap().ends_with('Z'));
        assert!(item["actor"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(item["actor"]["user"].is_null(), "anonymous");
    }
    // The repository's history has the blob links too, and the same tag changes.
    let repo = json(s.reg.get("/v2/app/_ferro/history/repository").await).await;
    let all: Vec<String> = repo["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(actions)
        .collect();
    for a in [
        "blob_linked",
        "manifest_pushed",
        "tagged",
        "tag_moved",
        "tag_deleted",
    ] {
        assert!(all.iter().any(|x| x == a), "{a} missing from {all:?}");
    }
}

#[tokio::test]
async fn reads_as_of_a_past_point_return_the_past_exactly() {
    let s = story().await;
    let first = &s.history["items"][0];
    let seq = first["seq"].as_u64().unwrap();
    let time = first["time"].as_str().unwrap().to_owned();
    for at in [seq.to_string(), time.clone()] {
        let at_q: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
        let r = s
            .reg
            .get(&format!(
                "/v2/app/_ferro/asof/manifest?reference=latest&at={at_q}"
            ))
            .await;
        assert_eq!(r.status(), 200, "as of {at}");
        assert_eq!(r.headers()["docker-content-digest"], s.v1.digest.as_str());
        assert_eq!(r.headers()["content-type"], support::OCI_MANIFEST);
        assert_eq!(r.bytes().await.unwrap().as_ref(), s.v1.manifest.as_slice());
        let tags = json(
            s.reg
                .get(&format!("/v2/app/_ferro/asof/tags?at={at_q}"))
                .await,
        )
        .await;
        assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    }
    // As of the second entry, latest is v2; now it is gone.
    let second = s.history["items"][1]["seq"].as_u64().unwrap();
    let r = s
        .reg
        .get(&format!(
            "/v2/app/_ferro/asof/manifest?reference=latest&at={second}"
        ))
        .await;
    assert_eq!(r.headers()["docker-content-digest"], s.v2.digest.as_str());
    assert_eq!(s.reg.get("/v2/app/manifests/latest").await.status(), 404);
    // v1 by digest, as of then, and before anything existed.
    let r = s
        .reg
        .get(&format!(
            "/v2/app/_ferro/asof/manifest?reference={}&at={seq}",
            s.v1.digest
        ))
        .await;
    assert_eq!(r.status(), 200);
    let r = s
        .reg
        .get("/v2/app/_ferro/asof/manifest?reference=latest&at=0")
        .await;
    assert_eq!(r.status(), 404);
    // Bad points in time are the client's error.
    for bad in ["yesterday", "99999999"] {
        let r = s
            .reg
            .get(&format!("/v2/app/_ferro/asof/tags?at={bad}"))
            .await;
        assert!(r.status().is_client_error(), "{bad}: {}", r.status());
        support::check_error_body(&r.text().await.unwrap(), "UNSUPPORTED");
    }
}

#[tokio::test]
async fn restore_is_a_new_entry_on_the_record() {
    let s = story().await;
    let seq1 = s.history["items"][0]["seq"].as_u64().unwrap();
    let r = s
        .reg
        .request(
            reqwest::Method::POST,
            &format!("/v2/app/_ferro/restore/tag?tag=latest&at={seq1}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], s.v1.digest.as_str());
    let r = s.reg.get("/v2/app/manifests/latest").await;
    assert_eq!(r.headers()["docker-content-digest"], s.v1.digest.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), s.v1.manifest.as_slice());
    let h = json(s.reg.get("/v2/app/_ferro/history/tag?tag=latest").await).await;
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(change(&items[3], "tagged")["digest"], s.v1.digest.as_str());
    // Restoring again changes nothing and logs nothing.
    let r = s
        .reg
        .request(
            reqwest::Method::POST,
            &format!(
                "/v2/app/_ferro/restore/tag?tag=latest&digest={}",
                s.v1.digest
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A deleted manifest comes back from the log, with its exact bytes.
    assert_eq!(
        s.reg
            .delete(&format!("/v2/app/manifests/{}", s.v2.digest))
            .await
            .status(),
        202
    );
    assert_eq!(
        s.reg
            .get(&format!("/v2/app/manifests/{}", s.v2.digest))
            .await
            .status(),
        404
    );
    let r = s
        .reg
        .request(
            reqwest::Method::POST,
            &format!("/v2/app/_ferro/restore/manifest?digest={}", s.v2.digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .reg
        .get(&format!("/v2/app/manifests/{}", s.v2.digest))
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), s.v2.manifest.as_slice());
    // Nothing to restore from.
    let never = sha256(b"never pushed");
    let r = s
        .reg
        .request(
            reqwest::Method::POST,
            &format!("/v2/app/_ferro/restore/manifest?digest={never}"),
        )
        .send()
        .await
        .unwrap();
    support::expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    // Restores are writes: GET is not one.
    let r = s.reg.get("/v2/app/_ferro/restore/tag?tag=latest").await;
    assert_eq!(r.status(), 405);
}

async fn feed_page(reg: &Registry, after: u64, n: usize) -> Value {
    json(
        reg.get(&format!("/v2/_ferro/events/feed?after={after}&n={n}"))
            .await,
    )
    .await
}

#[tokio::test]
async fn feed_resumed_from_any_cursor_returns_each_entry_once() {
    let s = story().await;
    let all = feed_page(&s.reg, 0, 1000).await;
    let last = all["last_seq"].as_u64().unwrap();
    let seqs: Vec<u64> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every entry, in order"
    );
    assert_eq!(all["next"], last);
    for cursor in 0..=last {
        let mut seen = Vec::new();
        let mut after = cursor;
        let mut pages = 0;
        loop {
            let page = feed_page(&s.reg, after, 2).await;
            for e in page["entries"].as_array().unwrap() {
                seen.push(e["seq"].as_u64().unwrap());
            }
            let next = page["next"].as_u64().unwrap();
            assert!(next >= after);
            if next == after {
                break;
            }
            after = next;
            pages += 1;
            assert!(pages < 100);
        }
        assert_eq!(
            seen,
            ((cursor + 1)..=last).collect::<Vec<_>>(),
            "from cursor {cursor}"
        );
    }
    // Filters: only tag events of this repository.
    let tags = json(
        s.reg
            .get("/v2/_ferro/events/feed?repo=app&kind=tag_set&kind=tag_deleted")
            .await,
    )
    .await;
    let kinds: BTreeSet<String> = tags["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ev| ev.as_object().unwrap().keys().next().unwrap().clone())
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["TagSet".to_owned(), "TagDeleted".to_owned()])
    );
    let r = s.reg.get("/v2/_ferro/events/feed?kind=nonsense").await;
    support::expect_error(r, 400, "UNSUPPORTED").await;
}

#[tokio::test]
async fn feed_long_poll_wakes_on_a_commit() {
    let reg = Registry::start(&[]);
    reg.push_image("app", "v1", "a").await;
    let last = feed_page(&reg, 0, 100).await["last_seq"].as_u64().unwrap();
    let url = reg.url(&format!("/v2/_ferro/events/feed?after={last}&wait=20"));
    let http = reg.http.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        http.get(url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    reg.push_image("app", "v2", "b").await;
    let page = poll.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the commit, not the timeout"
    );
    let first = &page["entries"][0];
    assert_eq!(first["seq"].as_u64().unwrap(), last + 1);
    // With nothing new, a short wait returns an empty page at the cursor.
    let now = feed_page(&reg, 0, 1000).await["last_seq"].as_u64().unwrap();
    let r = json(
        reg.get(&format!("/v2/_ferro/events/feed?after={now}&wait=1"))
            .await,
    )
    .await;
    assert_eq!(r["entries"], serde_json::json!([]));
    assert_eq!(r["next"], now);
}

#[tokio::test]
async fn discover_lists_the_extensions() {
    let reg = Registry::start(&[]);
    let d = json(reg.get("/v2/_oci/ext/discover").await).await;
    let names: Vec<&str> = d["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["_oci", "_ferro"]);
    assert!(d["extensions"][1]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "_ferro/events/feed"));
    let d = json(reg.get("/v2/app/_oci/ext/discover").await).await;
    assert!(d["extensions"][1]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "_ferro/history/tag"));
    let r = reg.get("/v2/_nope/x/y").await;
    support::expect_error(r, 404, "EXTENSION_UNKNOWN").await;
}

fn skopeo_available() -> bool {
    Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn a_read_only_server_lets_real_clients_pull_the_past() {
    let s = story().await;
    let seq1 = s.history["items"][0]["seq"].as_u64().unwrap().to_string();
    let past = TestServer::start(s.reg.dir.path(), &["--read-only", "--at", &seq1]);
    let http = common::client();
    let r = http
        .get(past.url("/v2/app/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], s.v1.digest.as_str());
    let r = http
        .get(past.url(&format!("/v2/app/blobs/{}", s.v1.layer_digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), s.v1.layer.as_slice());
    let r = http
        .put(past.url("/v2/app/manifests/other"))
        .header("Content-Type", support::OCI_MANIFEST)
        .body(s.v1.manifest.clone())
        .send()
        .await
        .unwrap();
    support::expect_error(r, 405, "UNSUPPORTED").await;
    // The live server goes on taking writes meanwhile.
    s.reg.push_image("app", "later", "v3").await;
    if !skopeo_available() {
        assert!(
            std::env::var_os("FERRO_REQUIRE_INTEROP").is_none(),
            "skopeo is required"
        );
        eprintln!("skipping the skopeo part: skopeo is not installed");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let status = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{}/app:latest", past.addr))
        .arg(format!("oci:{}:v1", layout.display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy from the past");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], s.v1.digest.as_str());
    let _ = s.v2;
}
