//! The log archive, end to end: a real `ferro serve` shipping its log to
//! an archive (`file://`, object_store's local file system, which
//! enforces create-if-absent; and a real Garage, which does not), then
//! `ferroctl restore-from`, `archive status` and `archive verify` on it.
//!
//! Shown here: losing the machine (SIGKILL, data directory deleted,
//! restore, serve) loses no acknowledged write under `durability =
//! "archived"`, and only a bounded tail by default; a restore `--at` a
//! sequence number or a time equals the live server's as-of reads; a
//! flipped byte in an archived object is named by restore and by verify;
//! a second primary is refused, and a newer one fences the older.
#[path = "../../tests/common/garage.rs"]
#[allow(dead_code)] // the harness serves the server's tests too
mod garage;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garage::Garage;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use support::*;

/// Where a test's archive lives.
enum Target {
    File(tempfile::TempDir),
    S3 {
        endpoint: String,
        prefix: String,
        /// A config file with the archive's credentials.
        config: PathBuf,
        _dir: tempfile::TempDir,
    },
}

impl Target {
    fn file() -> Target {
        Target::File(tempfile::tempdir().unwrap())
    }

    fn s3(prefix: &str) -> Target {
        Target::s3_on(Garage::shared(), prefix)
    }

    fn s3_on(garage: &Garage, prefix: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferro.toml");
        std::fs::write(&config, garage.archive_toml()).unwrap();
        Target::S3 {
            endpoint: garage.endpoint(),
            prefix: prefix.to_owned(),
            config,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        match self {
            Target::File(dir) => format!("file://{}", dir.path().join("archive").display()),
            Target::S3 { prefix, .. } => format!("s3://{}/{prefix}", garage::BUCKET),
        }
    }

    /// `ferro serve` flags shipping to this archive.
    fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["--archive-url".to_owned(), self.url()];
        if let Target::S3 { config, .. } = self {
            args.extend(["--config".to_owned(), config.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Runs `ferroctl <command> <url> [args]` against this archive.
    fn ctl(&self, data_dir: &Path, command: &[&str], extra: &[&str]) -> Ctl {
        let mut cmd = Command::new(FERROCTL);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(command)
            .arg(self.url())
            .args(extra)
            .env_remove("FERRO_DATA_DIR");
        if let Target::S3 { endpoint, .. } = self {
            cmd.args(["--endpoint", endpoint, "--region", garage::REGION])
                .arg("--allow-http")
                .envs(garage::credentials_env());
        }
        let output = cmd.output().expect("run ferroctl");
        Ctl {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Flips one byte of the archived object `name` (relative to the
    /// archive's root).
    fn flip_byte(&self, name: &str, at: usize) {
        match self {
            Target::File(dir) => {
                let path = dir.path().join("archive").join(name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[at] ^= 0x01;
                std::fs::write(&path, bytes).unwrap();
            }
            Target::S3 {
                endpoint, prefix, ..
            } => {
                let rt = runtime();
                let s3 = s3_client(endpoint);
                let key = object_store::path::Path::from(format!("{prefix}{name}"));
                let mut bytes = rt
                    .block_on(async { s3.get(&key).await.unwrap().bytes().await.unwrap() })
                    .to_vec();
                bytes[at] ^= 0x01;
                rt.block_on(s3.put(&key, bytes.into())).unwrap();
            }
        }
    }
}

fn s3_client(endpoint: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_region(garage::REGION)
        .with_bucket_name(garage::BUCKET)
        .with_access_key_id(garage::KEY_ID)
        .with_secret_access_key(garage::SECRET)
        .with_allow_http(true)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start(data: &Path, target: &Target, extra: &[&str]) -> Server {
    let args = target.serve_args(extra);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Server::start(data, &args)
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits until the server's archive holds everything it committed.
fn wait_shipped(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = metric(server, "ferro_archive_lag_records");
        let shipped = metric(server, "ferro_archive_shipped_seq");
        if lag == 0.0 && shipped > 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive never caught up (lag {lag})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn readyz(server: &Server) -> (u16, String) {
    let r = client().get(server.url("/readyz")).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// An acknowledged push: what must be there after a restore.
#[derive(Clone)]
struct Acked {
    repo: String,
    tag: String,
    image_digest: String,
    manifest: Vec<u8>,
    layer: String,
    at: Instant,
}

/// Pushes from `clients` threads until `stop`, recording every push the
/// server acknowledged.
fn push_load(server: &Server, clients: usize, per_client: usize, pause: Duration) -> Vec<Acked> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let server = &Addr(server.addr.clone());
    std::thread::scope(|s| {
        for c in 0..clients {
            let acked = acked.clone();
            s.spawn(move || {
                for i in 0..per_client {
                    let repo = format!("team{c}/app");
                    let tag = format!("v{i}");
                    let image = push_image(server, &repo, &tag, &format!("{c}-{i}"));
                    acked.lock().unwrap().push(Acked {
                        repo,
                        tag,
                        image_digest: image.digest,
                        manifest: image.manifest,
                        layer: image.layer,
                        at: Instant::now(),
                    });
                    std::thread::sleep(pause);
                }
            });
        }
    });
    let out = acked.lock().unwrap().clone();
    out
}

/// Whether `server` serves this push byte for byte.
fn present(server: &Server, a: &Acked) -> bool {
    let r = client()
        .get(server.url(&format!("/v2/{}/manifests/{}", a.repo, a.tag)))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    if r.status() != 200 {
        return false;
    }
    assert_eq!(
        r.headers()["docker-content-digest"],
        a.image_digest.as_str()
    );
    assert_eq!(r.bytes().unwrap().as_ref(), a.manifest.as_slice());
    let r = client()
        .get(server.url(&format!("/v2/{}/blobs/{}", a.repo, a.layer)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "layer of {}:{}", a.repo, a.tag);
    assert_eq!(sha256(&r.bytes().unwrap()), a.layer);
    true
}

/// Lose the machine: pushes from several clients, SIGKILL, data
/// directory deleted, restore from the archive, serve.
fn lose_the_machine(target: &Target, archived: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mode = if archived { "archived" } else { "local" };
    let server = start(
        &data,
        target,
        &[
            "--archive-durability",
            mode,
            "--archive-ship-interval-ms",
            "200",
        ],
    );
    // Spread over about 1.5 s: several shipments happen meanwhile.
    let acked = push_load(&server, 4, 10, Duration::from_millis(150));
    let killed_at = Instant::now();
    server.kill();
    std::fs::remove_dir_all(&data).unwrap();

    let restored = dir.path().join("restored");
    let r = target
        .ctl(&restored, &["--json", "restore-from"], &[])
        .expect(0)
        .json();
    eprintln!("restore: {r}");
    let server = Server::start(&restored, &[]);
    let mut lost = Vec::new();
    for a in &acked {
        if !present(&server, a) {
            lost.push(a.clone());
        }
    }
    if archived {
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged pushes lost under durability = \"archived\"",
            lost.len(),
            acked.len()
        );
    } else {
        // Every push acknowledged well before the kill is there; what is
        // missing is the tail shipping had not reached.
        // (200 ms of shipping interval, plus slack for this busy machine.)
        for a in &lost {
            let before_kill = killed_at.duration_since(a.at);
            assert!(
                before_kill < Duration::from_secs(2),
                "a push acknowledged {before_kill:?} before the kill is lost"
            );
        }
        assert!(lost.len() < acked.len(), "nothing was shipped");
        eprintln!(
            "default durability: {} of {} acknowledged pushes lost with the machine (the unshipped tail)",
            lost.len(),
            acked.len()
        );
    }
    assert!(r["records"].as_u64().unwrap() >= acked.len() as u64 - lost.len() as u64);
}

#[test]
fn archived_durability_loses_nothing_with_the_machine() {
    lose_the_machine(&Target::file(), true);
}

#[test]
fn default_durability_loses_at_most_the_unshipped_tail() {
    lose_the_machine(&Target::file(), false);
}

#[test]
fn archived_durability_on_garage_loses_nothing_with_the_machine() {
    if !garage::available("archived_durability_on_garage") {
        return;
    }
    lose_the_machine(&Target::s3("lose-archived/"), true);
}

#[test]
fn default_durability_on_garage_loses_at_most_the_unshipped_tail() {
    if !garage::available("default_durability_on_garage") {
        return;
    }
    lose_the_machine(&Target::s3("lose-default/"), false);
}

/// `--at` a sequence number and a time gives what the live server's
/// as-of reads gave for that point.
fn restore_to_a_point(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, target, &["--archive-ship-interval-ms", "100"]);
    let v1 = push_image(&server, "app", "latest", "one");
    std::thread::sleep(Duration::from_millis(20));
    let v2 = push_image(&server, "app", "latest", "two");
    push_image(&server, "app", "other", "three");
    let history: serde_json::Value = client()
        .get(server.url("/v2/app/_ferro/history/tag?tag=latest"))
        .send()
        .unwrap()
        .text()
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
        .unwrap();
    let first = &history["items"][0];
    let seq = first["seq"].as_u64().unwrap().to_string();
    let time = first["time"].as_str().unwrap().to_owned();
    wait_shipped(&server);
    for at in [seq, time.clone()] {
        let q: String = form_urlencoded(&at);
        let live = client()
            .get(server.url(&format!(
                "/v2/app/_ferro/asof/manifest?reference=latest&at={q}"
            )))
            .send()
            .unwrap();
        assert_eq!(live.status(), 200);
        let live_digest = live.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(live_digest, v1.digest);
        let live_tags: serde_json::Value = client()
            .get(server.url(&format!("/v2/app/_ferro/asof/tags?at={q}")))
            .send()
            .unwrap()
            .text()
            .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
            .unwrap();

        let restored = dir.path().join(format!("restored-{}", at.len()));
        target
            .ctl(&restored, &["restore-from"], &["--at", &at])
            .expect(0);
        let past = Server::start(&restored, &[]);
        let r = client()
            .get(past.url("/v2/app/manifests/latest"))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(r.headers()["docker-content-digest"], live_digest.as_str());
        assert_eq!(r.bytes().unwrap().as_ref(), v1.manifest.as_slice());
        let tags: serde_json::Value = client()
            .get(past.url("/v2/app/tags/list"))
            .send()
            .unwrap()
            .text()
            .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
            .unwrap();
        assert_eq!(tags["tags"], live_tags["tags"], "as of {at}");
        past.stop();
    }
    // And to the end: v2.
    let restored = dir.path().join("restored-end");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let now = Server::start(&restored, &[]);
    let r = client()
        .get(now.url("/v2/app/manifests/latest"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], v2.digest.as_str());
}

fn form_urlencoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn restore_at_a_point_equals_the_live_as_of_reads() {
    restore_to_a_point(&Target::file());
}

#[test]
fn restore_at_a_point_from_garage_equals_the_live_as_of_reads() {
    if !garage::available("restore_at_a_point_from_garage") {
        return;
    }
    restore_to_a_point(&Target::s3("point/"));
}

/// A flipped byte in an archived piece: verify names it, restore refuses
/// and leaves no log.
fn flipped_byte(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, target, &["--archive-ship-interval-ms", "50"]);
    for i in 0..3 {
        push_image(&server, "app", &format!("v{i}"), &format!("flip{i}"));
        wait_shipped(&server);
    }
    server.stop();
    let v = target
        .ctl(&data, &["--json", "archive", "verify"], &[])
        .expect(0)
        .json();
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    let pieces = v["pieces"].as_u64().unwrap();
    assert!(pieces >= 3, "{v}");
    let status = target
        .ctl(&data, &["--json", "archive", "status"], &[])
        .expect(0)
        .json();
    assert_eq!(status["epoch"]["epoch"], 1, "{status}");
    assert_eq!(status["last_seq"], v["last_seq"], "{status}");
    // The second piece, a byte inside its first record's payload.
    let second = second_piece(target);
    target.flip_byte(&second, 32 + 32 + 3);
    let v = target
        .ctl(&data, &["--json", "archive", "verify"], &[])
        .expect(1)
        .json();
    let problems = v["problems"].to_string();
    assert!(problems.contains(&second), "{v}");
    let restored = dir.path().join("restored");
    let r = target.ctl(&restored, &["restore-from"], &[]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains(&second), "{}", r.stderr);
    let left = std::fs::read_dir(restored.join("log"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "a log with a hole was left");
}

/// The name of the archive's second piece.
fn second_piece(target: &Target) -> String {
    let mut names: Vec<String> = match target {
        Target::File(dir) => std::fs::read_dir(dir.path().join("archive/log"))
            .unwrap()
            .map(|e| format!("log/{}", e.unwrap().file_name().to_string_lossy()))
            .collect(),
        Target::S3 {
            endpoint, prefix, ..
        } => {
            use futures_util::TryStreamExt as _;
            let s3 = s3_client(endpoint);
            let under = object_store::path::Path::from(format!("{prefix}log"));
            let listed: Vec<object_store::ObjectMeta> = runtime()
                .block_on(s3.list(Some(&under)).try_collect())
                .unwrap();
            listed
                .into_iter()
                .map(|m| {
                    m.location
                        .to_string()
                        .strip_prefix(prefix.as_str())
                        .unwrap()
                        .to_owned()
                })
                .collect()
        }
    };
    names.sort();
    names[1].clone()
}

#[test]
fn a_flipped_byte_is_named_by_verify_and_restore() {
    flipped_byte(&Target::file());
}

#[test]
fn a_flipped_byte_on_garage_is_named_by_verify_and_restore() {
    if !garage::available("a_flipped_byte_on_garage") {
        return;
    }
    flipped_byte(&Target::s3("flip/"));
}

/// A blob in a pack: its digest, the pack's name, its bytes in the pack.
type Packed = (String, String, std::ops::Range<u64>);

/// The blobs a `file://` archive carries: those in packs (with the pack
/// and the byte range of each) and those of their own.
fn archived_blobs(archive: &Path) -> (Vec<Packed>, Vec<String>) {
    let mut packed = Vec::new();
    if let Ok(dir) = std::fs::read_dir(archive.join("packs")) {
        for e in dir {
            let e = e.unwrap();
            let name = format!("packs/{}", e.file_name().to_string_lossy());
            let bytes = std::fs::read(e.path()).unwrap();
            for entry in ferro::archive::pack::read_index(&bytes).unwrap() {
                packed.push((entry.digest.to_string(), name.clone(), entry.range));
            }
        }
    }
    let own = std::fs::read_dir(archive.join("blobs/sha256"))
        .map(|d| {
            d.map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    (packed, own)
}

/// A flipped byte in an archived blob (blobs on the filesystem), in a
/// pack and in a blob object of its own: verify names the object, restore
/// refuses and leaves neither a log nor the blob.
#[test]
fn a_flipped_byte_in_an_archived_blob_is_named_by_verify_and_restore() {
    for own_object in [false, true] {
        let target = Target::file();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server = start(&data, &target, &["--archive-ship-interval-ms", "50"]);
        push_image(&server, "app", "v1", "blob-flip");
        // A layer of 2 MiB: an object of its own.
        let big: Vec<u8> = (0..2 << 20).map(|i| (i * 11 % 249) as u8).collect();
        let big_digest = push_blob(&server, "app", &big);
        wait_shipped(&server);
        server.stop();
        let Target::File(archive) = &target else {
            unreachable!()
        };
        let (packed, own) = archived_blobs(&archive.path().join("archive"));
        assert_eq!(
            own,
            vec![big_digest.clone()],
            "only the large blob is an object"
        );
        assert!(
            !packed.is_empty() && packed.iter().all(|(d, _, _)| *d != big_digest),
            "{packed:?}"
        );
        let (digest, name, offset) = if own_object {
            let hex = big_digest.strip_prefix("sha256:").unwrap().to_owned();
            (
                big_digest.clone(),
                format!("blobs/sha256/{hex}"),
                big.len() / 2,
            )
        } else {
            let (d, pack, range) = packed.last().unwrap().clone();
            (d, pack, (range.start + range.end) as usize / 2)
        };
        target.flip_byte(&name, offset);
        let v = target
            .ctl(&data, &["--json", "archive", "verify"], &[])
            .expect(1)
            .json();
        assert!(v["problems"].to_string().contains(&name), "{v}");
        let restored = dir.path().join("restored");
        let r = target.ctl(&restored, &["restore-from"], &[]);
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(r.stderr.contains(&name), "{}", r.stderr);
        let left = std::fs::read_dir(restored.join("log"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "a log naming a corrupt blob was left");
        let hex = digest.strip_prefix("sha256:").unwrap();
        let restored_blob = restored.join("blobs/sha256").join(&hex[..2]).join(hex);
        assert!(!restored_blob.exists(), "the corrupt blob was kept");
    }
}

/// Blobs of every size the shipper treats apart (in a pack under 1 MiB,
/// objects of their own looked up first above, one at a time from 8 MiB),
/// many in one piece and one linked twice, all reach the archive before
/// the piece that links them: the archive verifies, and a restore serves
/// them.
#[test]
fn blobs_of_every_size_reach_the_archive_before_their_piece() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A long interval: the blobs below go out in one shipment, at stop.
    let server = start(&data, &target, &["--archive-ship-interval-ms", "60000"]);
    let mut layers: Vec<Vec<u8>> = (0..24)
        .map(|i| format!("small layer {i} ").repeat(40).into_bytes())
        .collect();
    layers.push((0..100 << 10).map(|i| (i * 7 % 251) as u8).collect());
    layers.push((0..9 << 20).map(|i| (i * 13 % 253) as u8).collect());
    layers.push((0..3 << 20).map(|i| (i * 17 % 241) as u8).collect());
    let config = br#"{"architecture":"amd64","os":"linux","seed":"sizes"}"#;
    let config_digest = push_blob(&server, "sizes", config);
    let digests: Vec<String> = layers
        .iter()
        .map(|l| push_blob(&server, "sizes", l))
        .collect();
    // The 100 KiB layer again, in another repository.
    assert_eq!(push_blob(&server, "again", &layers[24]), digests[24]);
    let entries: Vec<String> = layers
        .iter()
        .zip(&digests)
        .map(|(l, d)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        entries.join(",")
    );
    put_manifest(&server, "sizes", "v1", OCI_MANIFEST, manifest.as_bytes());
    // A graceful stop ships what was committed.
    server.stop();
    let Target::File(archive) = &target else {
        unreachable!()
    };
    let (packed, own) = archived_blobs(&archive.path().join("archive"));
    for (d, l) in digests
        .iter()
        .zip(&layers)
        .chain([(&config_digest, &config.to_vec())])
    {
        let in_pack = packed.iter().any(|(p, _, _)| p == d);
        let alone = own.contains(d);
        assert_eq!(
            (in_pack, alone),
            (l.len() < 1 << 20, l.len() >= 1 << 20),
            "{d} ({} bytes): in a pack {in_pack}, an object {alone}",
            l.len()
        );
    }
    // A shipment's small blobs go out in one pack, not one object each
    // (the first commit ships at once, the rest at the stop).
    let packs: std::collections::HashSet<&String> = packed.iter().map(|(_, p, _)| p).collect();
    assert!(
        packs.len() <= 2,
        "{} small blobs in {packs:?}",
        packed.len()
    );
    target
        .ctl(&data, &["--json", "archive", "verify"], &[])
        .expect(0);
    let restored = dir.path().join("restored");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let server = Server::start(&restored, &[]);
    for (l, d) in layers.iter().zip(&digests) {
        let r = client()
            .get(server.url(&format!("/v2/sizes/blobs/{d}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{d}");
        assert!(r.bytes().unwrap().as_ref() == l.as_slice(), "{d} differs");
    }
    let r = client()
        .get(server.url(&format!("/v2/again/blobs/{}", digests[24])))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A second primary with another history is refused (and does not fence
/// the first); a newer primary with the same history fences the older.
fn second_primary(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    let a_data = dir.path().join("a");
    let a = start(&a_data, target, &["--archive-ship-interval-ms", "50"]);
    push_image(&a, "app", "v1", "a1");
    wait_shipped(&a);

    // Another history: refused, loudly, and the first goes on shipping.
    let b = start(&dir.path().join("b"), target, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = readyz(&b);
        if status == 503 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopped"), "{body}");
    assert_eq!(metric(&b, "ferro_archive_fenced"), 1.0);
    push_image(&a, "app", "v2", "a2");
    wait_shipped(&a);
    assert_eq!(metric(&a, "ferro_archive_fenced"), 0.0);
    drop(b);

    // The same history restored elsewhere and started: it takes the next
    // epoch, and the old primary stops shipping at its next shipment.
    let c_data = dir.path().join("c");
    target.ctl(&c_data, &["restore-from"], &[]).expect(0);
    let c = start(&c_data, target, &["--archive-ship-interval-ms", "50"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c, "ferro_archive_epoch") != 2.0 {
        assert!(Instant::now() < deadline, "the new primary took no epoch");
        std::thread::sleep(Duration::from_millis(50));
    }
    push_image(&a, "app", "v3", "a3");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&a, "ferro_archive_fenced") != 1.0 {
        assert!(Instant::now() < deadline, "the old primary was not fenced");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = readyz(&a);
    assert_eq!(status, 503);
    assert!(body.contains("epoch 2"), "{body}");
    // The new primary ships; the archive holds its history, not a3.
    push_image(&c, "app", "v4", "c4");
    wait_shipped(&c);
    drop(a);
    drop(c);
    let restored = dir.path().join("restored");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let r = Server::start(&restored, &[]);
    let tags: serde_json::Value = client()
        .get(r.url("/v2/app/tags/list"))
        .send()
        .unwrap()
        .text()
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap())
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2", "v4"]));
}

#[test]
fn a_second_primary_is_refused_or_fenced_on_a_conditional_store() {
    second_primary(&Target::file());
}

#[test]
fn a_second_primary_is_refused_or_fenced_on_garage() {
    if !garage::available("a_second_primary_on_garage") {
        return;
    }
    second_primary(&Target::s3("fence/"));
}

/// What makes the two paths differ: Garage 2.5.0 answers a conditional
/// put (`If-None-Match: *`) on an existing key by overwriting it, while
/// the file store refuses. Measured here, so a Garage that starts
/// enforcing it shows up.
#[test]
fn garage_overwrites_a_create_if_absent_put() {
    if !garage::available("garage_overwrites_a_create_if_absent_put") {
        return;
    }
    let rt = runtime();
    let s3 = Garage::shared().client();
    let key = object_store::path::Path::from("conditional/epochs/x");
    let create = object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    };
    rt.block_on(s3.put_opts(&key, b"one".to_vec().into(), create.clone()))
        .unwrap();
    let second = rt.block_on(s3.put_opts(&key, b"two".to_vec().into(), create));
    let now = rt
        .block_on(async { s3.get(&key).await.unwrap().bytes().await.unwrap() })
        .to_vec();
    eprintln!(
        "second create-if-absent put: {:?}; object now {:?}",
        second.is_ok(),
        String::from_utf8_lossy(&now)
    );
    assert!(second.is_ok(), "Garage now refuses: {second:?}");
    assert_eq!(now, b"two", "Garage kept the first object");
}

/// A server in `dir/data` shipping every 100 ms to `target` (a Garage the
/// test stops), with `extra` appended to its config.
fn start_on_a_store_that_stops(target: &Target, dir: &Path, extra: &str) -> Server {
    // The archive takes [storage]'s timeouts: short ones, so that a
    // refused connection is an error soon.
    let config = dir.join("stoppable.toml");
    let Target::S3 { config: base, .. } = target else {
        unreachable!()
    };
    let mut text = std::fs::read_to_string(base).unwrap();
    text.push_str(
        "\n[storage]\nrequest_timeout_ms = 2000\nretries_max = 1\nretry_timeout_ms = 500\n\n",
    );
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    Server::start(
        &dir.join("data"),
        &[
            "--archive-url",
            &target.url(),
            "--config",
            config.to_str().unwrap(),
            "--archive-ship-interval-ms",
            "100",
        ],
    )
}

/// The store down in the middle of pushes: shipping fails (lag and the
/// error on /metrics and /readyz), writes go on in the default mode, and
/// once the store is back the archive catches up from the local log.
#[test]
fn shipping_catches_up_after_a_store_outage() {
    if !garage::available("shipping_catches_up_after_a_store_outage") {
        return;
    }
    let mut g = Garage::start();
    let target = Target::s3_on(&g, "outage/");
    let dir = tempfile::tempdir().unwrap();
    let server = start_on_a_store_that_stops(&target, dir.path(), "");
    let a1 = push_image(&server, "app", "a1", "before");
    wait_shipped(&server);

    g.stop();
    let a2 = push_image(&server, "app", "a2", "during");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server, "ferro_archive_errors_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no shipping error while the store is down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&server, "ferro_archive_lag_records") >= 3.0);
    let (status, body) = readyz(&server);
    assert_eq!(status, 200, "default durability: still ready: {body}");
    assert!(body.contains("failing"), "{body}");
    let a3 = push_image(&server, "app", "a3", "during too");

    g.resume();
    wait_shipped(&server);
    let (_, body) = readyz(&server);
    assert!(!body.contains("failing"), "{body}");
    server.kill();

    let restored = dir.path().join("restored");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let r = Server::start(&restored, &[]);
    for (tag, image) in [("a1", &a1), ("a2", &a2), ("a3", &a3)] {
        let got = client()
            .get(r.url(&format!("/v2/app/manifests/{tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(got.status(), 200, "{tag}");
        assert_eq!(got.bytes().unwrap().as_ref(), image.manifest.as_slice());
    }
}

/// Garbage collection deletes no blob the archive may still have to carry:
/// with the store down, a blob uploaded and left unreferenced survives a
/// run with no grace period (held for the archive, said in the report);
/// once the store is back the archive gets it, a restore brings it back,
/// and the next run deletes it.
#[test]
fn garbage_collection_waits_for_the_archive() {
    if !garage::available("garbage_collection_waits_for_the_archive") {
        return;
    }
    let mut g = Garage::start();
    let target = Target::s3_on(&g, "gchold/");
    let dir = tempfile::tempdir().unwrap();
    let server = start_on_a_store_that_stops(&target, dir.path(), "[gc]\ngrace = \"0s\"\n");
    push_image(&server, "app", "v1", "kept");
    wait_shipped(&server);

    g.stop();
    let orphan = b"uploaded while the archive is down, never referenced".to_vec();
    let digest = push_blob(&server, "app", &orphan);
    let gc = || -> serde_json::Value {
        let r = client()
            .post(server.url("/v2/_ferro/gc/run"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str(&r.text().unwrap()).unwrap()
    };
    let held = gc();
    assert_eq!(held["blobs_deleted"], 0, "{held}");
    assert_eq!(held["blobs_held_for_archive"], 1, "{held}");
    let blob = |expect: u16| {
        let r = client()
            .get(server.url(&format!("/v2/app/blobs/{digest}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), expect, "{digest}");
    };
    blob(200);

    g.resume();
    wait_shipped(&server);
    let swept = gc();
    assert_eq!(swept["blobs_deleted"], 1, "{swept}");
    assert_eq!(swept["blobs_held_for_archive"], 0, "{swept}");
    blob(404);
    server.kill();

    // The archive carried it: a restore writes it back (restore brings
    // every archived blob; the state says it was deleted since).
    let restored = dir.path().join("restored");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let file = restored.join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(std::fs::read(&file).unwrap(), orphan);
}

/// A graceful shutdown ships what was committed since the last shipment,
/// however long the interval.
#[test]
fn a_graceful_shutdown_ships_the_tail() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, &target, &["--archive-ship-interval-ms", "600000"]);
    let first = push_image(&server, "app", "first", "one");
    let second = push_image(&server, "app", "second", "two");
    assert!(metric(&server, "ferro_archive_lag_records") > 0.0);
    server.stop();
    let restored = dir.path().join("restored");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let r = Server::start(&restored, &[]);
    for (tag, image) in [("first", &first), ("second", &second)] {
        let got = client()
            .get(r.url(&format!("/v2/app/manifests/{tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(got.status(), 200, "{tag}");
        assert_eq!(got.bytes().unwrap().as_ref(), image.manifest.as_slice());
    }
}

/// Compaction does not take out of the live log what the archive lacks:
/// with the store down, a retention of one second and small segments,
/// the records written meanwhile are still shipped once it is back.
#[test]
fn compaction_keeps_what_is_not_shipped() {
    if !garage::available("compaction_keeps_what_is_not_shipped") {
        return;
    }
    let mut g = Garage::start();
    let target = Target::s3_on(&g, "hold/");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(
        &data,
        &target,
        &[
            "--archive-ship-interval-ms",
            "100",
            "--segment-bytes-max",
            "4096",
            "--snapshot-every-records",
            "10",
            "--history-retention",
            "1s",
        ],
    );
    let first = push_image(&server, "app", "first", "before");
    wait_shipped(&server);
    g.stop();
    let mut during = Vec::new();
    for i in 0..12 {
        during.push(push_image(
            &server,
            "app",
            &format!("d{i}"),
            &format!("during {i}"),
        ));
    }
    // Past the retention, with snapshots (and compaction) after the pushes.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..4 {
        push_image(&server, "app", &format!("e{i}"), &format!("later {i}"));
    }
    g.resume();
    wait_shipped(&server);
    assert_eq!(metric(&server, "ferro_archive_fenced"), 0.0);
    server.stop();
    let restored = dir.path().join("restored");
    target.ctl(&restored, &["restore-from"], &[]).expect(0);
    let r = Server::start(&restored, &[]);
    for (i, image) in std::iter::once(&first).chain(during.iter()).enumerate() {
        let tag = if i == 0 {
            "first".to_owned()
        } else {
            format!("d{}", i - 1)
        };
        let got = client()
            .get(r.url(&format!("/v2/app/manifests/{tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(got.status(), 200, "{tag}");
        assert_eq!(got.bytes().unwrap().as_ref(), image.manifest.as_slice());
    }
}
