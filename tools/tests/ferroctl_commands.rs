//! Every ferroctl command on a data directory produced by the real server:
//! images pushed over HTTP (monolithic blob POSTs, manifest PUTs), a tag
//! moved, an index, a delete; then the server stopped and ferroctl run.
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

struct Story {
    a: Image,
    b: Image,
    c: Image,
    index: String,
}

/// app:v1 -> A, then app:v1 -> B (a move) and app:stable -> A, app:multi
/// -> index(A, B); other/repo:latest -> C, then C deleted.
fn populate(dir: &Path, extra: &[&str]) -> Story {
    let server = Server::start(dir, extra);
    let a = push_image(&server, "app", "v1", "a");
    let b = push_image(&server, "app", "v1", "b");
    put_manifest(&server, "app", "stable", OCI_MANIFEST, &a.manifest);
    let index = push_index(&server, "app", "multi", &[&a, &b]);
    let c = push_image(&server, "other/repo", "latest", "c");
    let r = client()
        .delete(server.url(&format!("/v2/other/repo/manifests/{}", c.digest)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    server.stop();
    Story { a, b, c, index }
}

fn dump_lines(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["dump"];
    full.extend_from_slice(args);
    let out = ctl(dir, &full).expect(0);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn kinds(line: &Value) -> Vec<String> {
    line["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_object().unwrap().keys().next().unwrap().clone())
        .collect()
}

#[test]
fn verify_dump_history_replay_snapshot_on_a_served_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let story = populate(&dir, &[]);

    // verify: clean, with and without hashing.
    let v = ctl(&dir, &["--json", "verify"]).expect(0).json();
    assert_eq!(v["problems"], Value::Array(vec![]), "{v:#}");
    let records = v["log"]["records"].as_u64().unwrap();
    assert!(records >= 10, "{v:#}");
    assert_eq!(
        v["state"]["repositories"], 2,
        "other/repo keeps its blobs: {v:#}"
    );
    assert_eq!(
        v["snapshots"][0]["status"], "ok",
        "the shutdown snapshot: {v:#}"
    );
    let v = ctl(&dir, &["--json", "verify", "--blobs"]).expect(0).json();
    assert_eq!(v["blobs"]["hashed"], true);
    assert_eq!(v["blobs"]["present"], v["blobs"]["referenced"]);
    let human = ctl(&dir, &["verify"]).expect(0);
    assert!(
        human.stdout.contains("problems        none"),
        "{}",
        human.stdout
    );

    // dump: every record once, in order, with RFC 3339 times.
    let all = dump_lines(&dir, &[]);
    assert_eq!(all.len() as u64, records);
    for (i, line) in all.iter().enumerate() {
        assert_eq!(line["seq"].as_u64(), Some(i as u64 + 1));
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert!(line["actor"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    let tag_sets = dump_lines(&dir, &["--kind", "tag_set"]);
    assert!(tag_sets.len() >= 5);
    assert!(tag_sets
        .iter()
        .all(|l| kinds(l).iter().all(|k| k == "TagSet")));
    let other = dump_lines(&dir, &["--repo", "other/repo"]);
    let other_kinds: Vec<String> = other.iter().flat_map(kinds).collect();
    assert!(
        other_kinds.contains(&"ManifestDeleted".to_string()),
        "{other_kinds:?}"
    );
    assert!(other_kinds.contains(&"BlobLinked".to_string()));
    assert!(other.iter().all(|l| l.to_string().contains("other/repo")));
    let range = dump_lines(&dir, &["--from-seq", "3", "--to-seq", "4"]);
    assert_eq!(
        range
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    let since = all[5]["time"].as_str().unwrap();
    let until = all[7]["time"].as_str().unwrap();
    let window = dump_lines(&dir, &["--since", since, "--until", until]);
    assert!(window
        .iter()
        .all(|l| (6..=8).contains(&l["seq"].as_u64().unwrap())));
    assert!(!window.is_empty());
    ctl(&dir, &["dump", "--kind", "nonsense"]).expect(2);

    // history of a tag: pushed + tagged, then pushed + moved.
    let h = ctl(&dir, &["--json", "history", "app:v1"]).expect(0).json();
    let actions: Vec<&str> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["changes"].as_array().unwrap())
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["manifest_pushed", "tagged", "manifest_pushed", "tag_moved"]
    );
    let moved = &h["items"][1]["changes"][1];
    assert_eq!(moved["digest"], story.b.digest.as_str());
    assert_eq!(moved["previous"], story.a.digest.as_str());
    let human = ctl(&dir, &["history", "app:v1"]).expect(0);
    assert!(human.stdout.contains("moved"), "{}", human.stdout);
    let h = ctl(&dir, &["--json", "history", "other/repo"])
        .expect(0)
        .json();
    assert!(h.to_string().contains("manifest_deleted"));
    assert!(h.to_string().contains(&story.c.digest));
    ctl(&dir, &["history", "nowhere:v1"]).expect(6);

    // replay: app:v1 was A right after its first push.
    let first_push_seq = h_seq_of(&dir, "app:v1", 0);
    let r = ctl(
        &dir,
        &["--json", "replay", "--at", &first_push_seq.to_string()],
    )
    .expect(0)
    .json();
    assert_eq!(r["seq"].as_u64(), Some(first_push_seq));
    assert_eq!(
        r["repositories"]["app"]["tags"]["v1"],
        story.a.digest.as_str()
    );
    let time = all[first_push_seq as usize - 1]["time"].as_str().unwrap();
    let r = ctl(&dir, &["--json", "replay", "--at", time])
        .expect(0)
        .json();
    assert_eq!(
        r["seq"].as_u64(),
        Some(first_push_seq),
        "as of the record's time"
    );
    let r = ctl(&dir, &["--json", "replay"]).expect(0).json();
    assert_eq!(
        r["repositories"]["app"]["tags"]["v1"],
        story.b.digest.as_str()
    );
    assert_eq!(
        r["repositories"]["app"]["tags"]["multi"],
        story.index.as_str()
    );
    assert_eq!(
        r["repositories"]["other/repo"]["tags"],
        serde_json::json!({})
    );
    assert_eq!(r["repositories"]["other/repo"]["manifests"], 0);
    let human = ctl(&dir, &["replay", "--at", "2"]).expect(0);
    assert!(
        human.stdout.contains("state as of sequence 2"),
        "{}",
        human.stdout
    );
    ctl(&dir, &["replay", "--at", "999999"]).expect(6);
    ctl(&dir, &["replay", "--at", "yesterday"]).expect(2);

    // replay --export-oci: the index, its children and all their blobs.
    let layout = tmp.path().join("multi");
    let r = ctl(
        &dir,
        &[
            "--json",
            "replay",
            "--export-oci",
            layout.to_str().unwrap(),
            "app:multi",
        ],
    )
    .expect(0)
    .json();
    assert_eq!(r["export"]["missing"], Value::Array(vec![]));
    for digest in [
        &story.index,
        &story.a.digest,
        &story.b.digest,
        &story.a.layer,
        &story.b.config,
    ] {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(&sha256(&bytes), digest);
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], story.index.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "multi"
    );
    assert!(layout.join("oci-layout").exists());
    skopeo_accepts(&layout, "multi");
    // C, deleted since, exported as it was before the delete.
    let c_seq = h_seq_of(&dir, "other/repo:latest", 0);
    let old = tmp.path().join("old");
    ctl(
        &dir,
        &[
            "replay",
            "--at",
            &c_seq.to_string(),
            "--export-oci",
            old.to_str().unwrap(),
            "other/repo:latest",
        ],
    )
    .expect(0);
    assert!(old
        .join("blobs/sha256")
        .join(story.c.digest.strip_prefix("sha256:").unwrap())
        .exists());
    // Not empty: refused.
    ctl(
        &dir,
        &["replay", "--export-oci", old.to_str().unwrap(), "app:v1"],
    )
    .expect(2);
    // Gone at the end.
    let gone = tmp.path().join("gone");
    ctl(
        &dir,
        &[
            "replay",
            "--export-oci",
            gone.to_str().unwrap(),
            "other/repo:latest",
        ],
    )
    .expect(6);

    // snapshot: written, verified, and the next start uses it.
    let s = ctl(&dir, &["--json", "snapshot"]).expect(0).json();
    assert_eq!(s["seq"].as_u64(), Some(records));
    assert!(Path::new(s["path"].as_str().unwrap()).exists());
    let v = ctl(&dir, &["--json", "verify"]).expect(0).json();
    assert!(v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "ok"));
    let server = Server::start(&dir, &[]);
    assert!(
        server
            .startup_lines
            .iter()
            .any(|l| l.contains(&format!("snapshot_seq={records}"))),
        "{:?}",
        server.startup_lines
    );
    let r = client()
        .get(server.url("/v2/app/manifests/multi"))
        .header("Accept", OCI_INDEX)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
}

/// The sequence number of the `n`th history item of `target`.
fn h_seq_of(dir: &Path, target: &str, n: usize) -> u64 {
    let h = ctl(dir, &["--json", "history", target]).expect(0).json();
    h["items"][n]["seq"].as_u64().unwrap()
}

fn skopeo_accepts(layout: &Path, tag: &str) {
    let available = Command::new("skopeo").arg("--version").output().is_ok();
    if !available {
        assert!(
            std::env::var_os("FERRO_REQUIRE_INTEROP").is_none_or(|v| v != "1"),
            "skopeo is not installed but FERRO_REQUIRE_INTEROP=1"
        );
        eprintln!("skipping the skopeo check: skopeo is not installed");
        return;
    }
    let copy = layout.with_file_name("skopeo-copy");
    let out = Command::new("skopeo")
        .args(["copy", "--all"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("oci:{}:{tag}", copy.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo refused the exported layout:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compact_moves_old_segments_out_and_keeps_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Small segments, so there is something to compact.
    let server = Server::start(&dir, &["--segment-bytes-max", "4096"]);
    for i in 0..12 {
        push_image(&server, "app", &format!("v{}", i % 3), &format!("img{i}"));
    }
    server.stop();
    let segments_before = std::fs::read_dir(dir.join("log")).unwrap().count();
    assert!(segments_before >= 4, "{segments_before} segments");
    let before = ctl(&dir, &["--json", "replay"]).expect(0).json();

    // Retention forever: nothing leaves.
    let c = ctl(&dir, &["--json", "compact"]).expect(0).json();
    assert_eq!(c["report"]["moved"], Value::Array(vec![]));
    assert_eq!(c["state_identical"], true);

    let c = ctl(&dir, &["--json", "compact", "--retain", "0s"])
        .expect(0)
        .json();
    assert_eq!(c["state_identical"], true, "{c:#}");
    let moved = c["report"]["moved"].as_array().unwrap().len();
    assert_eq!(
        moved,
        segments_before - 1,
        "all but the active segment: {c:#}"
    );
    assert_eq!(
        std::fs::read_dir(dir.join("archive/log")).unwrap().count(),
        moved
    );
    let after = ctl(&dir, &["--json", "replay"]).expect(0).json();
    assert_eq!(after["repositories"], before["repositories"]);
    assert_eq!(after["seq"], before["seq"]);

    // The compacted directory verifies, replays, and serves.
    let v = ctl(&dir, &["--json", "verify", "--blobs"]).expect(0).json();
    assert!(v["log"]["first_seq"].as_u64().unwrap() > 1, "{v:#}");
    assert!(v.to_string().contains("ok_base"), "{v:#}");
    ctl(&dir, &["replay", "--at", "1"]).expect(6);
    // Its whole history left the live log with the segments.
    let h = ctl(&dir, &["history", "app:v0"]).expect(6);
    assert!(h.stderr.contains("compacted"), "{}", h.stderr);
    let server = Server::start(&dir, &[]);
    for tag in ["v0", "v1", "v2"] {
        let r = client()
            .get(server.url(&format!("/v2/app/manifests/{tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let digest = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(before["repositories"]["app"]["tags"][tag], digest.as_str());
    }
    push_image(&server, "app", "after", "after-compaction");
    server.stop();
    ctl(&dir, &["verify"]).expect(0);
}

#[test]
fn problems_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    ctl(&tmp.path().join("missing"), &["verify"]).expect(4);
    ctl(&tmp.path().join("missing"), &["snapshot"]).expect(4);
    ctl(tmp.path(), &["no-such-command"]).expect(2);
    let help = ctl(tmp.path(), &["--help"]).expect(0);
    assert!(help.stdout.contains("Exit codes:"), "{}", help.stdout);

    let dir = tmp.path().join("data");
    let story = populate(&dir, &[]);
    // An orphan blob file is listed but is no problem.
    let orphan = dir.join("blobs/sha256/00/00deadbeef");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();
    let v = ctl(&dir, &["--json", "verify"]).expect(0).json();
    assert_eq!(v["orphans"]["blobs"][0], orphan.to_str().unwrap());

    // A blob whose bytes changed: found by --blobs only.
    let hex = story.b.layer.strip_prefix("sha256:").unwrap();
    let layer_path = dir.join("blobs/sha256").join(&hex[..2]).join(hex);
    let mut bytes = std::fs::read(&layer_path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&layer_path, &bytes).unwrap();
    ctl(&dir, &["verify"]).expect(0);
    let v = ctl(&dir, &["--json", "verify", "--blobs"]).expect(1).json();
    assert!(v["problems"].to_string().contains(&story.b.layer), "{v:#}");

    // A missing blob: found without hashing; an export reports it.
    std::fs::remove_file(&layer_path).unwrap();
    let v = ctl(&dir, &["--json", "verify"]).expect(1).json();
    assert_eq!(v["blobs"]["issues"][0]["detail"], "missing");
    let out = tmp.path().join("export");
    let r = ctl(
        &dir,
        &[
            "--json",
            "replay",
            "--export-oci",
            out.to_str().unwrap(),
            "app:v1",
        ],
    )
    .expect(1)
    .json();
    assert_eq!(r["export"]["missing"][0]["digest"], story.b.layer.as_str());
}
