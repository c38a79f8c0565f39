//! Garbage collection: SIGKILL in the middle of a server's run leaves a
//! consistent registry; `ferroctl gc` finishes the job offline, removes
//! the orphan files a crash leaves, and its dry run changes nothing.
mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

fn config(dir: &Path) -> String {
    let path = dir.join("ferro.toml");
    std::fs::write(
        &path,
        "[history]\nretention = \"0s\"\n\n[gc]\ngrace = \"0s\"\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn blob_status(server: &Server, repo: &str, digest: &str) -> u16 {
    client()
        .get(server.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn delete_manifest(server: &Server, repo: &str, digest: &str) {
    let r = client()
        .delete(server.url(&format!("/v2/{repo}/manifests/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

#[test]
fn sigkill_during_collection_leaves_a_consistent_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let cfg = config(tmp.path());
    let mut kept = Vec::new();
    for (round, kill_after_ms) in [5u64, 25, 80].into_iter().enumerate() {
        let server = Server::start(&dir, &["--config", &cfg]);
        kept.push(push_image(
            &server,
            "app",
            &format!("keep{round}"),
            &format!("keep{round}"),
        ));
        for i in 0..120 {
            let image = push_image(
                &server,
                "junk",
                &format!("t{i}"),
                &format!("junk{round}-{i}"),
            );
            delete_manifest(&server, "junk", &image.digest);
        }
        let url = server.url("/v2/_ferro/gc/run");
        let run =
            std::thread::spawn(move || client().post(url).send().map(|r| r.status().as_u16()));
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        server.kill();
        let _ = run.join();
        let v = ctl(&dir, &["--json", "verify", "--blobs"]).expect(0).json();
        assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    }

    // A one-shot upload's staging file, as a crash mid-upload leaves it.
    let hex = "ab".repeat(32);
    let leftover = dir
        .join("blobs/sha256/ab")
        .join(format!("{hex}.{}.staging", "0".repeat(32)));
    std::fs::write(&leftover, b"cut short").unwrap();

    // Offline: a dry run lists and changes nothing; the run deletes the
    // rest and the orphans of the crashes.
    let before = tree(&dir);
    let dry = ctl(
        &dir,
        &[
            "--json",
            "gc",
            "--dry-run",
            "--retain",
            "0s",
            "--grace",
            "0s",
        ],
    )
    .expect(0)
    .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(tree(&dir), before, "a dry run changed the data directory");
    let report = ctl(&dir, &["--json", "gc", "--retain", "0s", "--grace", "0s"])
        .expect(0)
        .json();
    assert_eq!(report["blobs_deleted"], dry["blobs_deleted"], "{report}");
    assert_eq!(
        report["orphans_removed"], dry["orphans_removed"],
        "{report}"
    );
    let v = ctl(&dir, &["--json", "verify", "--blobs"]).expect(0).json();
    assert!(v["orphans"]["blobs"].as_array().unwrap().is_empty(), "{v}");
    assert!(!leftover.exists(), "a staging leftover outlived gc");
    let again = ctl(&dir, &["--json", "gc", "--retain", "0s", "--grace", "0s"])
        .expect(0)
        .json();
    assert_eq!(again["blobs_deleted"], 0);
    assert_eq!(again["orphans_removed"], 0);

    let server = Server::start(&dir, &["--config", &cfg]);
    for image in &kept {
        assert_eq!(blob_status(&server, "app", &image.config), 200);
        assert_eq!(blob_status(&server, "app", &image.layer), 200);
        let m = client()
            .get(server.url(&format!("/v2/app/manifests/{}", image.digest)))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(m.status().as_u16(), 200);
    }
    server.stop();
}

#[test]
fn ferroctl_gc_keeps_history_by_default_and_refuses_beside_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    let image = push_image(&server, "app", "v1", "one");
    delete_manifest(&server, "app", &image.digest);
    let out = ctl(&dir, &["gc"]).expect(3);
    assert!(out.stderr.contains("LOCK"), "{}", out.stderr);
    server.stop();

    // Retention "forever": every manifest ever pushed keeps its blobs.
    let report = ctl(&dir, &["--json", "gc", "--grace", "0s"])
        .expect(0)
        .json();
    assert_eq!(report["blobs_deleted"], 0, "{report}");
    assert_eq!(report["retention"], "forever");
    let text = ctl(
        &dir,
        &["gc", "--dry-run", "--retain", "0s", "--grace", "0s"],
    )
    .expect(0)
    .stdout;
    assert!(
        text.contains(&format!("would delete {}", image.layer)),
        "{text}"
    );
    assert!(text.contains("would delete 2 of 2 blobs"), "{text}");
}

#[test]
fn ferroctl_gc_deletes_untagged_manifests_when_asked_and_logs_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    let v1 = push_image(&server, "app", "latest", "one");
    let v2 = push_image(&server, "app", "latest", "two");
    server.stop();

    let gc = ["gc", "--retain", "0s", "--grace", "0s"];
    let text = ctl(
        &dir,
        &[&gc[..], &["--dry-run", "--untagged-older-than", "0s"]].concat(),
    )
    .expect(0)
    .stdout;
    assert!(
        text.contains(&format!("would delete manifest app@{}", v1.digest)),
        "{text}"
    );
    assert!(!text.contains(&v2.digest), "{text}");
    // Off by default: nothing untagged goes.
    let report = ctl(&dir, &[&["--json"][..], &gc].concat()).expect(0).json();
    assert_eq!(report["manifests_deleted"], 0, "{report}");
    assert_eq!(report["untagged_manifests_older_than"], "off");
    let report = ctl(
        &dir,
        &[&["--json"][..], &gc, &["--untagged-older-than", "0s"]].concat(),
    )
    .expect(0)
    .json();
    assert_eq!(report["manifests_deleted"], 1, "{report}");
    assert_eq!(report["manifests"][0]["digest"], v1.digest.as_str());
    // Retention 0s: v1's blobs go in the same run.
    assert_eq!(report["blobs_deleted"], 2, "{report}");

    // Each real run left its summary on the record.
    let dump = ctl(&dir, &["dump", "--kind", "gc_completed"])
        .expect(0)
        .stdout;
    let summaries: Vec<&str> = dump.lines().filter(|l| l.contains("GcCompleted")).collect();
    assert_eq!(summaries.len(), 2, "{dump}");
    assert!(summaries[1].contains(r#""manifests_deleted":1"#), "{dump}");

    let server = Server::start(&dir, &[]);
    let status = |digest: &str| {
        client()
            .get(server.url(&format!("/v2/app/manifests/{digest}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(&v1.digest), 404);
    assert_eq!(status(&v2.digest), 200);
    assert_eq!(blob_status(&server, "app", &v2.layer), 200);
    server.stop();
}
