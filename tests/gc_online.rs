//! Garbage collection inside the live server: racing pushes never lose an
//! acknowledged image; the history retention window decides what of the
//! past survives; a dry run changes nothing.
mod common;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::*;

/// A registry whose config file sets `history.retention` and a zero
/// grace period (every unreferenced blob is fair game at once).
fn registry(retention: &str) -> (Registry, tempfile::TempDir) {
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("ferro.toml");
    std::fs::write(
        &path,
        format!("[history]\nretention = \"{retention}\"\n\n[gc]\ngrace = \"0s\"\n"),
    )
    .unwrap();
    let registry = Registry::start(&["--config", path.to_str().unwrap()]);
    (registry, config_dir)
}

async fn gc(r: &Registry, query: &str) -> Option<Value> {
    let resp = r
        .request(Method::POST, &format!("/v2/_ferro/gc/run{query}"))
        .send()
        .await
        .expect("POST gc");
    match resp.status() {
        StatusCode::OK => Some(resp.json().await.unwrap()),
        StatusCode::CONFLICT => None,
        s => panic!("gc answered {s}: {}", resp.text().await.unwrap()),
    }
}

async fn blob_bytes(r: &Registry, repo: &str, digest: &str) -> (StatusCode, Vec<u8>) {
    let resp = r.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// What one pusher had acknowledged.
struct Pushed {
    repo: String,
    digest: String,
    blobs: Vec<(String, Vec<u8>)>,
}

/// Pushes an image of a unique config, a layer shared by every pusher and
/// a unique layer. A manifest PUT may find a layer collected between its
/// upload and the PUT (grace 0): then the whole image is pushed again, as
/// a client would. Returns the acknowledged image.
async fn push_shared(r: &Registry, repo: &str, tag: &str, seed: &str) -> Option<Pushed> {
    let shared = format!("shared layer {}", seed.len() % 3).into_bytes();
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let own = format!("own layer of {seed}").into_bytes();
    for _attempt in 0..20 {
        let c = r.push_blob(repo, &config).await;
        let s = r.push_blob(repo, &shared).await;
        let o = r.push_blob(repo, &own).await;
        let manifest = image_manifest(
            (&c, config.len()),
            &[(&s, shared.len()), (&o, own.len())],
            None,
        );
        let resp = r
            .put_manifest(repo, tag, Some(OCI_MANIFEST), &manifest)
            .await;
        match resp.status() {
            StatusCode::CREATED => {
                return Some(Pushed {
                    repo: repo.to_owned(),
                    digest: common::sha256(&manifest),
                    blobs: vec![(c, config.clone()), (s, shared.clone()), (o, own.clone())],
                })
            }
            StatusCode::BAD_REQUEST => {
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN", "{body}");
            }
            s => panic!("manifest PUT answered {s}"),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_repeated_collections_keep_every_acknowledged_image() {
    let (r, _config) = registry("1s");
    let r = &r;
    let stop = AtomicU64::new(0);
    let deleted = AtomicU64::new(0);
    let runs = AtomicU64::new(0);
    let collector = async {
        while stop.load(Ordering::Acquire) == 0 {
            if let Some(report) = gc(r, "").await {
                runs.fetch_add(1, Ordering::AcqRel);
                deleted.fetch_add(report["blobs_deleted"].as_u64().unwrap(), Ordering::AcqRel);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let pushers = (0..6).map(|p| async move {
        let repo = format!("team{}/app", p % 3);
        let mut kept = Vec::new();
        for i in 0..15 {
            let tag = format!("p{p}-{i}");
            let Some(image) = push_shared(r, &repo, &tag, &format!("{p}-{i}")).await else {
                continue;
            };
            if i % 3 == 2 {
                // Garbage for the collector: delete it again.
                let resp = r
                    .delete(&format!("/v2/{repo}/manifests/{}", image.digest))
                    .await;
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
            } else {
                kept.push(image);
            }
        }
        kept
    });
    let pushing = async {
        let done = futures_util::future::join_all(pushers).await;
        // Let the deleted images leave the 1 s window, then stop.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        stop.store(1, Ordering::Release);
        done
    };
    let (done, ()) = tokio::join!(pushing, collector);
    let acknowledged: Vec<Pushed> = done.into_iter().flatten().collect();
    let last = gc(r, "").await.expect("no other run");
    deleted.fetch_add(last["blobs_deleted"].as_u64().unwrap(), Ordering::AcqRel);

    assert!(
        acknowledged.len() >= 50,
        "{} images acknowledged",
        acknowledged.len()
    );
    assert!(
        runs.load(Ordering::Acquire) >= 3,
        "the collector ran while pushing"
    );
    assert!(
        deleted.load(Ordering::Acquire) > 0,
        "the collector deleted garbage"
    );
    for image in &acknowledged {
        let m = r
            .get(&format!("/v2/{}/manifests/{}", image.repo, image.digest))
            .await;
        assert_eq!(
            m.status(),
            StatusCode::OK,
            "{} {}",
            image.repo,
            image.digest
        );
        for (digest, bytes) in &image.blobs {
            let (status, got) = blob_bytes(r, &image.repo, digest).await;
            assert_eq!(status, StatusCode::OK, "{} {digest}", image.repo);
            assert_eq!(&got, bytes);
        }
    }
}

#[tokio::test]
async fn a_manifest_deleted_inside_the_window_keeps_its_blobs_and_one_outside_loses_them() {
    let (r, _config) = registry("3s");
    let old = r.push_image("app", "old", "old").await;
    let tip = |v: &Value| v["mark_seq"].as_u64().unwrap();
    let before_delete = tip(&gc(&r, "?dry_run=true").await.unwrap());
    let resp = r.delete(&format!("/v2/app/manifests/{}", old.digest)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let kept = r.push_image("app", "kept", "kept").await;

    // Inside the window: nothing of `old` goes, and its past pulls.
    let report = gc(&r, "").await.unwrap();
    assert_eq!(report["blobs_deleted"], 0, "{report}");
    let past = r
        .get(&format!(
            "/v2/app/_ferro/asof/manifest?reference={}&at={before_delete}",
            old.digest
        ))
        .await;
    assert_eq!(past.status(), StatusCode::OK);
    assert_eq!(past.bytes().await.unwrap().to_vec(), old.manifest);
    for d in [&old.config_digest, &old.layer_digest] {
        assert_eq!(blob_bytes(&r, "app", d).await.0, StatusCode::OK);
    }

    // Outside the window: a dry run lists them and changes nothing, then
    // the run deletes exactly them.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let dry = gc(&r, "?dry_run=true").await.unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["blobs_deleted"], 2, "{dry}");
    let listed: Vec<&str> = dry["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&old.config_digest.as_str()));
    assert!(listed.contains(&old.layer_digest.as_str()));
    assert_eq!(
        dry["bytes_freed"].as_u64().unwrap(),
        (old.layer.len() + r#"{"seed":"old"}"#.len()) as u64
    );
    assert_eq!(
        blob_bytes(&r, "app", &old.layer_digest).await.0,
        StatusCode::OK
    );

    let report = gc(&r, "").await.unwrap();
    assert_eq!(report["blobs_deleted"], 2, "{report}");
    for d in [&old.config_digest, &old.layer_digest] {
        assert_eq!(blob_bytes(&r, "app", d).await.0, StatusCode::NOT_FOUND);
    }
    let (status, bytes) = blob_bytes(&r, "app", &kept.layer_digest).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, kept.layer);

    // The deletions are on the record, and survive a restart.
    let feed: Value = r
        .get("/v2/_ferro/events/feed?kind=blob_deleted")
        .await
        .json()
        .await
        .unwrap();
    let text = feed.to_string();
    assert!(text.contains(&old.layer_digest), "{text}");
    let r = r.restart();
    assert_eq!(
        blob_bytes(&r, "app", &old.layer_digest).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        blob_bytes(&r, "app", &kept.layer_digest).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn gc_answers_post_only_and_refuses_a_bad_dry_run() {
    let (r, _config) = registry("forever");
    let resp = r.get("/v2/_ferro/gc/run").await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = r
        .request(Method::POST, "/v2/_ferro/gc/run?dry_run=maybe")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let report = gc(&r, "").await.unwrap();
    assert_eq!(report["blobs_deleted"], 0);
    assert_eq!(report["retention"], "forever");
}

/// A collection while a whole blob is still arriving in one request
/// (`POST ?digest=`): its staging file sits beside the blob's final name
/// and, with grace 0, looks like a crash's leftover; the collection must
/// leave it to the upload, which then completes.
#[tokio::test]
async fn a_collection_leaves_a_one_shot_upload_in_progress_alone() {
    use std::io::{Read, Write};

    let (r, _config) = registry("0s");
    let bytes = vec![42u8; 256 * 1024];
    let digest = common::sha256(&bytes);
    let addr = r.server.addr.clone();
    let head = format!(
        "POST /v2/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    );
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&bytes[..128 * 1024]).unwrap();
    // The staging file exists once the first bytes are in.
    let blobs = r.server.data_dir.join("blobs");
    let staging_exists = || {
        walk(&blobs)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".staging"))
    };
    for _ in 0..200 {
        if staging_exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(staging_exists(), "the upload's staging file appeared");
    tokio::time::sleep(Duration::from_millis(50)).await;
    gc(&r, "").await.expect("the collection ran");
    assert!(
        staging_exists(),
        "the collection removed a staging file in use"
    );
    conn.write_all(&bytes[128 * 1024..]).unwrap();
    let mut answer = vec![0u8; 1024];
    let n = conn.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (status, got) = blob_bytes(&r, "app", &digest).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, bytes);
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
