//! ferroctl beside a running server: read-only commands work and change
//! nothing; commands that modify the directory refuse with exit code 3.
mod support;

use support::*;

#[test]
fn read_only_commands_run_beside_a_server_and_others_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    push_image(&server, "app", "v1", "live");
    // Leftovers a read-only command must not clean up.
    let leftover = dir.join("log/00000000000000000099.log.tmp");
    std::fs::write(&leftover, b"half").unwrap();
    let before = tree(&dir);

    ctl(&dir, &["verify", "--blobs"]);
    let d = ctl(&dir, &["dump"]).expect(0);
    assert!(d.stdout.lines().count() >= 3);
    ctl(&dir, &["history", "app:v1"]).expect(0);
    let r = ctl(&dir, &["--json", "replay"]).expect(0).json();
    assert_eq!(
        r["repositories"]["app"]["tags"]["v1"]
            .as_str()
            .map(|s| s.len()),
        Some(71)
    );
    assert_eq!(
        tree(&dir),
        before,
        "a read-only command changed the data directory"
    );
    assert!(leftover.exists());

    for args in [
        vec!["snapshot"],
        vec!["compact", "--retain", "0s"],
        vec!["repair"],
        vec!["replay", "--export-oci", "/nonexistent/x", "app:v1"],
    ] {
        let out = ctl(&dir, &args).expect(3);
        assert!(out.stderr.contains("LOCK"), "{args:?}: {}", out.stderr);
    }
    let out = ctl(&dir, &["--json", "snapshot"]).expect(3);
    assert_eq!(out.json()["exit_code"], 3);
    assert_eq!(tree(&dir), before);
    server.stop();
}
