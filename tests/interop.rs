//! Real clients against the real server: skopeo copies a multi-layer image
//! and a multi-arch index in and back out with identical digests; the oras
//! Python client pushes an artifact, attaches referrers and discovers them.
//! The scripts live in tests/interop/. `.ci/run` installs both clients and
//! sets FERRO_REQUIRE_INTEROP=1, which turns a missing client into a failure
//! instead of a skip.
mod common;

use std::path::Path;
use std::process::Command;

fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn required() -> bool {
    std::env::var_os("FERRO_REQUIRE_INTEROP").is_some_and(|v| v == "1")
}

fn skip_or_fail(what: &str) {
    assert!(
        !required(),
        "{what} is not installed but FERRO_REQUIRE_INTEROP=1"
    );
    eprintln!("skipping: {what} is not installed");
}

fn scripts() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop"))
}

#[test]
fn skopeo_round_trip() {
    if !available("skopeo", &["--version"]) {
        return skip_or_fail("skopeo");
    }
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path(), &[]);
    let out = Command::new("bash")
        .arg(scripts().join("skopeo_roundtrip.sh"))
        .arg(&server.addr)
        .arg(work.path().join("w"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo round trip failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With `FERRO_TEST_BLOBS=s3` the round trip went through Garage: no
    // blob file on the disk. Otherwise every blob is a file there.
    let files = walk_files(&dir.path().join("blobs"));
    if common::garage::blobs_on_disk() {
        assert!(!files.is_empty(), "no blob files on disk");
    } else {
        assert!(files.is_empty(), "blob files on disk: {files:?}");
    }
}

/// The files under `dir` (none when it does not exist).
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn oras_artifact_and_referrers() {
    if !available("python3", &["-c", "import oras.provider"]) {
        return skip_or_fail("the oras Python package");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path(), &[]);
    let out = Command::new("python3")
        .arg(scripts().join("oras_referrers.py"))
        .arg(&server.addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras check failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
