//! Garbage collection's untagged-manifest policy in the live server: an
//! image whose tag moved on goes once it is old enough, and so does its
//! untagged signature; the children of a tagged index and a referrer of a
//! live image stay; a dry run lists and changes nothing; the blobs follow
//! once the history retention window has passed them. Every real run is
//! on the record (`GcCompleted`) and in the metrics.
mod common;
mod support;

use std::time::Duration;

use common::metrics_sample as sample;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::*;

/// The policy and the history window both at 1 s, grace 0 s.
fn registry() -> (Registry, tempfile::TempDir) {
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("ferro.toml");
    std::fs::write(
        &path,
        "[history]\nretention = \"1s\"\n\n[gc]\ngrace = \"0s\"\nuntagged_manifests_older_than = \"1s\"\n",
    )
    .unwrap();
    let registry = Registry::start(&["--config", path.to_str().unwrap()]);
    (registry, config_dir)
}

async fn gc(r: &Registry, query: &str) -> Value {
    let resp = r
        .request(Method::POST, &format!("/v2/_ferro/gc/run{query}"))
        .send()
        .await
        .expect("POST gc");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// An image manifest pushed by digest (no tag), over its own config and
/// layer; returns (digest, manifest length, layer digest).
async fn push_untagged(
    r: &Registry,
    repo: &str,
    seed: &str,
    subject: Option<(&str, usize)>,
) -> (String, usize, String) {
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer bytes of {seed}").into_bytes();
    let c = r.push_blob(repo, &config).await;
    let l = r.push_blob(repo, &layer).await;
    let manifest = image_manifest((&c, config.len()), &[(&l, layer.len())], subject);
    let digest = common::sha256(&manifest);
    let resp = r
        .put_manifest(repo, &digest, Some(OCI_MANIFEST), &manifest)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "push {seed}");
    (digest, manifest.len(), l)
}

async fn status(r: &Registry, path: &str) -> StatusCode {
    r.get(path).await.status()
}

fn listed(report: &Value) -> Vec<String> {
    let mut v: Vec<String> = report["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["repo"], "app");
            m["digest"].as_str().unwrap().to_owned()
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn untagged_manifests_past_the_age_go_and_what_live_images_need_stays() {
    let (r, _config) = registry();
    let v1 = r.push_image("app", "latest", "v1").await;
    let (sig1, _, _) = push_untagged(
        &r,
        "app",
        "sig of v1",
        Some((&v1.digest, v1.manifest.len())),
    )
    .await;
    let v2 = r.push_image("app", "latest", "v2").await;
    let (sig2, _, _) = push_untagged(
        &r,
        "app",
        "sig of v2",
        Some((&v2.digest, v2.manifest.len())),
    )
    .await;
    let (amd, amd_len, _) = push_untagged(&r, "app", "amd64", None).await;
    let (arm, arm_len, _) = push_untagged(&r, "app", "arm64", None).await;
    let index = image_index(&[(&amd, amd_len), (&arm, arm_len)]);
    let index_digest = common::sha256(&index);
    let resp = r
        .put_manifest("app", "multi", Some(OCI_INDEX), &index)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metrics_before = r.get("/metrics").await.text().await.unwrap();
    // Untagged too, but younger than the age.
    let (fresh, _, _) = push_untagged(&r, "app", "fresh", None).await;

    // A dry run lists v1 and its signature, and deletes nothing.
    let dry = gc(&r, "?dry_run=true").await;
    assert_eq!(dry["untagged_manifests_older_than"], "1s");
    let mut want = vec![v1.digest.clone(), sig1.clone()];
    want.sort();
    assert_eq!(listed(&dry), want, "{dry}");
    assert_eq!(dry["manifests_deleted"], 2);
    // (Tagged now, so that its age no longer matters below.)
    let body = r
        .get(&format!("/v2/app/manifests/{fresh}"))
        .await
        .bytes()
        .await
        .unwrap();
    let resp = r
        .put_manifest("app", "fresh", Some(OCI_MANIFEST), &body)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v1_path = format!("/v2/app/manifests/{}", v1.digest);
    assert_eq!(status(&r, &v1_path).await, StatusCode::OK);

    // The run deletes exactly them.
    let report = gc(&r, "").await;
    assert_eq!(listed(&report), want, "{report}");
    assert_eq!(report["manifests_deleted"], 2);
    assert_eq!(status(&r, &v1_path).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status(&r, &format!("/v2/app/manifests/{sig1}")).await,
        StatusCode::NOT_FOUND
    );
    for kept in [&v2.digest, &sig2, &amd, &arm, &index_digest] {
        assert_eq!(
            status(&r, &format!("/v2/app/manifests/{kept}")).await,
            StatusCode::OK,
            "{kept}"
        );
    }
    let latest: Vec<u8> = r
        .get("/v2/app/manifests/latest")
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert_eq!(latest, v2.manifest);
    let referrers: Value = r
        .get(&format!("/v2/app/referrers/{}", v2.digest))
        .await
        .json()
        .await
        .unwrap();
    assert!(referrers.to_string().contains(&sig2), "{referrers}");

    // v1 was live a moment ago, inside the 1 s window: its blobs stay...
    let v1_layer = format!("/v2/app/blobs/{}", v1.layer_digest);
    assert_eq!(status(&r, &v1_layer).await, StatusCode::OK);
    // ...until the window has passed it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let report = gc(&r, "").await;
    assert_eq!(report["manifests_deleted"], 0, "{report}");
    assert_eq!(status(&r, &v1_layer).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status(&r, &format!("/v2/app/blobs/{}", v1.config_digest)).await,
        StatusCode::NOT_FOUND
    );
    for kept in [&v2.layer_digest, &v2.config_digest] {
        assert_eq!(
            status(&r, &format!("/v2/app/blobs/{kept}")).await,
            StatusCode::OK
        );
    }

    // On the record: the deletions, and one summary per real run.
    let feed: Value = r
        .get("/v2/_ferro/events/feed?kind=manifest_deleted&kind=gc_completed")
        .await
        .json()
        .await
        .unwrap();
    let entries = feed["entries"].as_array().unwrap();
    let summaries: Vec<&Value> = entries
        .iter()
        .flat_map(|e| e["events"].as_array().unwrap())
        .filter_map(|e| e.get("GcCompleted"))
        .collect();
    assert_eq!(summaries.len(), 2, "{feed}");
    assert_eq!(summaries[0]["manifests_deleted"], 2);
    assert_eq!(summaries[1]["manifests_deleted"], 0);
    assert_eq!(summaries[1]["blobs_deleted"], report["blobs_deleted"]);
    assert!(report["blobs_deleted"].as_u64().unwrap() >= 4, "{report}");
    assert!(feed.to_string().contains(&v1.digest));
    for e in entries {
        assert_eq!(e["actor"]["user"], "ferro", "{e}");
    }

    // In the metrics: two real runs and two dry ones since `before`.
    let metrics = r.get("/metrics").await.text().await.unwrap();
    let delta = |name: &str, labels: &[&str]| {
        sample(&metrics, name, labels).unwrap_or(0.0)
            - sample(&metrics_before, name, labels).unwrap_or(0.0)
    };
    assert_eq!(delta("ferro_gc_runs_total", &["dry_run=\"false\""]), 2.0);
    assert_eq!(delta("ferro_gc_runs_total", &["dry_run=\"true\""]), 1.0);
    assert_eq!(delta("ferro_gc_manifests_deleted_total", &[]), 2.0);
    assert_eq!(
        delta("ferro_gc_blobs_deleted_total", &[]),
        report["blobs_deleted"].as_f64().unwrap()
    );
    assert_eq!(
        delta("ferro_gc_bytes_freed_total", &[]),
        report["bytes_freed"].as_f64().unwrap()
    );
    assert!(sample(&metrics, "ferro_gc_orphans_removed_total", &[]).is_some());
    let started_s = report["started_unix_ns"].as_f64().unwrap() / 1e9;
    let last = sample(&metrics, "ferro_gc_last_run_timestamp_seconds", &[]).unwrap();
    assert!((last - started_s).abs() < 1.0, "{last} vs {started_s}");
    assert!(sample(&metrics, "ferro_gc_last_duration_seconds", &[]).is_some());

    // And it all survives a restart.
    let r = r.restart();
    assert_eq!(status(&r, &v1_path).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status(&r, &format!("/v2/app/manifests/{index_digest}")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_policy_is_off_by_default() {
    let r = Registry::start(&[]);
    let v1 = r.push_image("app", "latest", "v1").await;
    r.push_image("app", "latest", "v2").await;
    let report = gc(&r, "").await;
    assert_eq!(report["untagged_manifests_older_than"], "off");
    assert_eq!(report["manifests_deleted"], 0);
    assert_eq!(
        status(&r, &format!("/v2/app/manifests/{}", v1.digest)).await,
        StatusCode::OK
    );
}
