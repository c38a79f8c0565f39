//! `ferroctl repair` on a log the server refuses: a flipped byte in a
//! sealed segment. Repair cuts back to the last good record, keeps a copy
//! of everything it cut, and the server starts again.
mod support;

use std::fs;

use support::*;

#[test]
fn repair_cuts_back_to_the_last_good_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(
        &dir,
        &[
            "--segment-bytes-max",
            "4096",
            "--snapshot-every-records",
            "0",
        ],
    );
    let early = push_image(&server, "app", "early", "early");
    for i in 0..10 {
        push_image(&server, "app", &format!("later{i}"), &format!("later{i}"));
    }
    // No shutdown snapshot: with one, startup would not read the sealed
    // segments it covers (only `ferroctl verify` reads everything).
    server.kill();
    // A snapshot at the end, kept out of the way until the repair.
    let snap = ctl(&dir, &["--json", "snapshot"]).expect(0).json();
    let snap_path = std::path::PathBuf::from(snap["path"].as_str().unwrap());
    let parked = tmp.path().join("parked.snap");
    fs::rename(&snap_path, &parked).unwrap();
    let mut segments: Vec<_> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let damaged = &segments[1];
    let mut bytes = fs::read(damaged).unwrap();
    let flip_at = bytes.len() / 2;
    bytes[flip_at] ^= 0x40;
    fs::write(damaged, &bytes).unwrap();

    // The server refuses to start on corruption, naming the file; so do
    // ferroctl's commands that rebuild the state; verify says why.
    let mut child = std::process::Command::new(ferro_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started on a corrupt log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(damaged.to_str().unwrap()), "{stderr}");
    ctl(&dir, &["snapshot"]).expect(5);
    let v = ctl(&dir, &["--json", "verify"]).expect(5).json();
    assert!(v["log"]["corrupt"]
        .as_str()
        .unwrap()
        .contains(damaged.to_str().unwrap()));
    fs::rename(&parked, &snap_path).unwrap();

    let before = tree(&dir);
    let dry = ctl(&dir, &["--json", "repair", "--dry-run"])
        .expect(0)
        .json();
    assert_eq!(dry["cut"]["segment"], damaged.to_str().unwrap());
    assert_eq!(tree(&dir), before, "a dry run changes nothing");

    let report = ctl(&dir, &["--json", "repair"]).expect(0).json();
    let cut_offset = report["cut"]["offset"].as_u64().unwrap();
    assert!(cut_offset > 0 && cut_offset <= flip_at as u64, "{report:#}");
    assert_eq!(fs::metadata(damaged).unwrap().len(), cut_offset);
    let repair_dir = std::path::PathBuf::from(report["repair_dir"].as_str().unwrap());
    assert!(repair_dir.join("report.json").exists());
    let broken = repair_dir.join(format!(
        "{}.{cut_offset}.broken",
        damaged.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(fs::read(&broken).unwrap(), bytes[cut_offset as usize..]);
    // Every later segment was moved aside, byte for byte.
    for later in &segments[2..] {
        assert!(!later.exists());
        assert!(repair_dir.join(later.file_name().unwrap()).exists());
    }
    // Snapshots beyond the cut went too.
    assert!(!snap_path.exists());
    assert!(repair_dir.join(snap_path.file_name().unwrap()).exists());
    let last_good = report["last_good_seq"].as_u64().unwrap();
    for entry in fs::read_dir(dir.join("snapshots")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let seq: u64 = name.trim_end_matches(".snap").parse().unwrap();
        assert!(seq <= last_good, "{name} is beyond the cut");
    }
    let human = ctl(&dir, &["repair"]).expect(0);
    assert!(
        human.stdout.contains("nothing to repair"),
        "{}",
        human.stdout
    );
    ctl(&dir, &["verify"]).expect(0);

    // The server starts, with everything before the damage.
    let server = Server::start(&dir, &[]);
    let r = client()
        .get(server.url("/v2/app/manifests/early"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), early.manifest.as_slice());
    push_image(&server, "app", "after-repair", "after");
    server.stop();
    ctl(&dir, &["verify"]).expect(0);
}

#[test]
fn repair_cuts_a_torn_tail_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &["--snapshot-every-records", "0"]);
    push_image(&server, "app", "v1", "one");
    server.kill();
    let segment = dir.join("log/00000000000000000001.log");
    let mut f = fs::OpenOptions::new().append(true).open(&segment).unwrap();
    std::io::Write::write_all(&mut f, &[7u8; 20]).unwrap();
    drop(f);
    let len = fs::metadata(&segment).unwrap().len();
    let v = ctl(&dir, &["--json", "verify"]).expect(1).json();
    assert!(v["problems"].to_string().contains("torn_tail"));
    let report = ctl(&dir, &["--json", "repair"]).expect(0).json();
    assert_eq!(report["cut"]["offset"].as_u64(), Some(len - 20));
    assert_eq!(report["cut"]["bytes"].as_u64(), Some(20));
    ctl(&dir, &["verify"]).expect(0);
}
