//! Snapshots through the real server: restarting from a snapshot plus the
//! log after it gives the state a full replay gives; a damaged snapshot is
//! reported and skipped; the server compacts by itself without changing
//! the state.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{client, sha256, TestServer};
use ferro::datadir::Layout;
use ferro::log::recovery::{self, RecoveryMode, ReplayFrom};
use ferro::projection::State;
use ferro::replay::{self, AsOf, Base};
use ferro::snapshot::{self, format::encode_state};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Starts `ferro serve` and returns the lines it logged before listening
/// (startup: which snapshot, which were rejected).
fn start_keeping_startup_log(data_dir: &Path, extra: &[&str]) -> (TestServer, Vec<String>) {
    let mut server = TestServer::start(data_dir, extra);
    let startup = std::mem::take(&mut server.startup_log);
    (server, startup)
}

struct Pushed {
    tag: String,
    digest: String,
}

/// A config and a layer unique to `seed`, a manifest, tagged `tag`.
async fn push_image(server: &TestServer, repo: &str, tag: &str, seed: &str) -> Pushed {
    let http = client();
    let config = format!(r#"{{"os":"linux","seed":"{seed}"}}"#);
    let layer = format!("layer of {seed}").repeat(16);
    let mut digests = Vec::new();
    for blob in [config.as_bytes(), layer.as_bytes()] {
        let digest = sha256(blob);
        let r = http
            .post(server.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .header("Content-Type", "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        digests.push(digest);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        digests[0],
        config.len(),
        digests[1],
        layer.len()
    );
    let r = http
        .put(server.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    Pushed {
        tag: tag.to_owned(),
        digest: sha256(manifest.as_bytes()),
    }
}

/// Every tag still resolves to the digest last pushed under it.
async fn assert_serves(server: &TestServer, repo: &str, pushed: &[Pushed]) {
    let http = client();
    let mut latest = std::collections::BTreeMap::new();
    for p in pushed {
        latest.insert(p.tag.clone(), p.digest.clone());
    }
    for (tag, digest) in latest {
        let r = http
            .get(server.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{repo}:{tag}");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    }
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    snapshot::list(&Layout::new(dir).snapshots_dir())
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of a full replay of the whole log, no snapshot involved.
fn full_replay(log_dir: &Path) -> State {
    let mut state = State::default();
    recovery::recover(
        log_dir,
        ReplayFrom::default(),
        RecoveryMode::TolerateTornTail,
        &mut |seq, time, entry| state.apply(seq, time, &entry),
    )
    .unwrap();
    state
}

fn startup_line<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

#[tokio::test]
async fn restart_from_a_snapshot_and_the_tail_equals_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--snapshot-every-records", "5"]);
    let mut pushed = Vec::new();
    for i in 0..4 {
        pushed.push(push_image(&server, "app", &format!("t{}", i % 3), &format!("a{i}")).await);
    }
    wait_for("a snapshot", || !snapshot_files(dir.path()).is_empty()).await;
    for i in 4..7 {
        pushed.push(push_image(&server, "app", &format!("t{}", i % 3), &format!("a{i}")).await);
    }
    // SIGKILL: no shutdown snapshot, so the records after the last
    // snapshot must come from the log.
    let mut server = server;
    server.kill();
    drop(server);
    let layout = Layout::new(dir.path());
    let newest = snapshot::list(&layout.snapshots_dir())
        .unwrap()
        .pop()
        .unwrap();
    let full = full_replay(&layout.log_dir());
    assert!(newest.seq < full.last_seq, "records after the snapshot");

    let (server, startup) =
        start_keeping_startup_log(dir.path(), &["--snapshot-every-records", "0"]);
    let line = startup_line(&startup, "replayed the log");
    assert!(
        line.contains(&format!("snapshot_seq={}", newest.seq)),
        "{line}"
    );
    assert!(
        line.contains(&format!("events_replayed={}", full.last_seq - newest.seq)),
        "{line}"
    );
    assert_serves(&server, "app", &pushed).await;
    pushed.push(push_image(&server, "app", "t0", "after-restart").await);
    let mut server = server;
    server.kill();

    // Snapshot + tail, as startup does it, against a replay of everything.
    let full = full_replay(&layout.log_dir());
    let from_snapshot = replay::state_as_of(&layout, AsOf::End, &mut |_| {}).unwrap();
    assert!(matches!(from_snapshot.base, Base::Snapshot { .. }));
    assert_eq!(
        encode_state(&from_snapshot.state).unwrap(),
        encode_state(&full).unwrap()
    );
    let server = TestServer::start(dir.path(), &[]);
    assert_serves(&server, "app", &pushed).await;
}

#[tokio::test]
async fn a_damaged_newest_snapshot_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--snapshot-every-records", "3"]);
    let mut pushed = Vec::new();
    for i in 0..5 {
        pushed.push(push_image(&server, "app", &format!("v{}", i % 2), &format!("b{i}")).await);
    }
    wait_for("two snapshots", || snapshot_files(dir.path()).len() >= 2).await;
    let mut server = server;
    assert!(server.terminate().success());
    drop(server);
    let files = snapshot::list(&Layout::new(dir.path()).snapshots_dir()).unwrap();
    let (older, newest) = (&files[files.len() - 2], &files[files.len() - 1]);

    // A flipped payload byte: the checksum fails, the older one is used.
    let mut bytes = std::fs::read(&newest.path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x20;
    std::fs::write(&newest.path, &bytes).unwrap();
    let (server, startup) =
        start_keeping_startup_log(dir.path(), &["--snapshot-every-records", "0"]);
    let warn = startup_line(&startup, "snapshot rejected");
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains(&newest.path.display().to_string()), "{warn}");
    assert!(warn.contains("checksum mismatch"), "{warn}");
    let line = startup_line(&startup, "replayed the log");
    assert!(
        line.contains(&format!("snapshot_seq={}", older.seq)),
        "{line}"
    );
    assert!(line.contains("snapshots_rejected=1"), "{line}");
    assert_serves(&server, "app", &pushed).await;
    let mut server = server;
    server.kill();
    drop(server);

    // Every snapshot damaged in a different way: a full replay.
    std::fs::write(&newest.path, b"FERROSNP but far too short").unwrap();
    let mut older_bytes = std::fs::read(&older.path).unwrap();
    older_bytes[9] ^= 0xff; // the version field, under the header checksum
    std::fs::write(&older.path, &older_bytes).unwrap();
    let (server, startup) =
        start_keeping_startup_log(dir.path(), &["--snapshot-every-records", "0"]);
    let rejected: Vec<&String> = startup
        .iter()
        .filter(|l| l.contains("snapshot rejected"))
        .collect();
    assert_eq!(rejected.len(), 2, "{startup:?}");
    let line = startup_line(&startup, "replayed the log");
    assert!(line.contains("snapshot=none"), "{line}");
    assert_serves(&server, "app", &pushed).await;
}

#[tokio::test]
async fn a_snapshot_of_another_history_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--snapshot-every-records", "0"]);
    let pushed = vec![push_image(&server, "app", "v1", "c0").await];
    let mut server = server;
    server.kill();
    drop(server);
    // A well-formed snapshot at the log's end that does not chain to it.
    let layout = Layout::new(dir.path());
    let state = full_replay(&layout.log_dir());
    let written = snapshot::write(&layout.snapshots_dir(), &state, 0x1234_5678).unwrap();
    // And one ahead of the log.
    let mut ahead = state.clone();
    ahead.last_seq += 10;
    snapshot::write(&layout.snapshots_dir(), &ahead, 1).unwrap();
    let (server, startup) =
        start_keeping_startup_log(dir.path(), &["--snapshot-every-records", "0"]);
    let rejected: Vec<&String> = startup
        .iter()
        .filter(|l| l.contains("snapshot rejected"))
        .collect();
    assert_eq!(rejected.len(), 2, "{startup:?}");
    assert!(
        rejected[0].contains("before the snapshot"),
        "{}",
        rejected[0]
    );
    assert!(rejected[1].contains(&written.path.display().to_string()));
    assert!(
        rejected[1].contains("not the same history"),
        "{}",
        rejected[1]
    );
    assert!(startup_line(&startup, "replayed the log").contains("snapshot=none"));
    assert_serves(&server, "app", &pushed).await;
}

#[tokio::test]
async fn the_server_compacts_by_itself_and_the_state_does_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--segment-bytes-max",
        "4096",
        "--snapshot-every-records",
        "10",
        "--history-retention",
        "0s",
    ];
    let server = TestServer::start(dir.path(), &args);
    let mut pushed = Vec::new();
    for i in 0..12 {
        pushed.push(push_image(&server, "app", &format!("t{}", i % 4), &format!("c{i}")).await);
    }
    let archive = dir.path().join("archive/log");
    wait_for("compaction", || {
        std::fs::read_dir(&archive).is_ok_and(|d| d.count() >= 2)
    })
    .await;
    let mut server = server;
    assert!(server.terminate().success());
    drop(server);

    let layout = Layout::new(dir.path());
    let segments = ferro::log::segment::list_segments(&layout.log_dir()).unwrap();
    assert!(
        segments[0].0 > 1,
        "the live log starts after a base snapshot"
    );
    // The archived segments and the live ones are still one whole log: a
    // full replay of both gives the state the compacted directory gives.
    let whole = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&archive)
        .unwrap()
        .chain(std::fs::read_dir(layout.log_dir()).unwrap())
    {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), whole.path().join(entry.file_name())).unwrap();
    }
    let full = full_replay(whole.path());
    let compacted = replay::state_as_of(&layout, AsOf::End, &mut |_| {}).unwrap();
    assert_eq!(
        encode_state(&compacted.state).unwrap(),
        encode_state(&full).unwrap()
    );
    let server = TestServer::start(dir.path(), &[]);
    assert_serves(&server, "app", &pushed).await;
}
