//! Read replicas, end to end: a real `ferro serve` primary shipping its
//! log to an archive (`file://`, and a real Garage), and a second real
//! `ferro serve --replica-of` following that archive from its own data
//! directory; then `ferroctl promote`.
//!
//! Shown here: a replica started from an empty directory serves the
//! primary's manifests, tags, blobs (byte for byte), catalog, history and
//! as-of reads; it follows pushes, tag moves and deletes; every write to
//! it is 405 UNSUPPORTED naming the primary; it survives a primary
//! restart, an archive outage and its own restart (from its local log);
//! it never serves a record the archive does not hold; it stops at a
//! corrupt piece and serves the state before it; promoted, it takes the
//! next writer epoch, accepts pushes, ships them, and the old primary is
//! fenced.
#[path = "../../tests/common/garage.rs"]
#[allow(dead_code)] // the harness serves the server's tests too
mod garage;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use garage::Garage;
use support::*;

/// Where a test's archive lives.
enum Target {
    File(tempfile::TempDir),
    S3 {
        /// A config file with the archive's endpoint and credentials.
        config: PathBuf,
        prefix: String,
        _dir: tempfile::TempDir,
    },
}

impl Target {
    fn file() -> Target {
        Target::File(tempfile::tempdir().unwrap())
    }

    fn s3(garage: &Garage, prefix: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferro.toml");
        std::fs::write(&config, garage.archive_toml()).unwrap();
        Target::S3 {
            config,
            prefix: prefix.to_owned(),
            _dir: dir,
        }
    }

    fn dir(&self) -> PathBuf {
        match self {
            Target::File(dir) => dir.path().join("archive"),
            Target::S3 { .. } => unreachable!("a file archive"),
        }
    }

    fn url(&self) -> String {
        match self {
            Target::File(_) => format!("file://{}", self.dir().display()),
            Target::S3 { prefix, .. } => format!("s3://{}/{prefix}", garage::BUCKET),
        }
    }

    fn config_args(&self) -> Vec<String> {
        match self {
            Target::File(_) => Vec::new(),
            Target::S3 { config, .. } => vec!["--config".into(), config.display().to_string()],
        }
    }

    /// A primary shipping to this archive (every 100 ms unless `extra`
    /// says otherwise).
    fn primary(&self, data: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--archive-url".to_owned(), self.url()];
        if !extra.contains(&"--archive-ship-interval-ms") {
            args.extend(["--archive-ship-interval-ms".into(), "100".into()]);
        }
        args.extend(self.config_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Server::start(data, &args)
    }

    /// A replica of this archive polling every 50 ms, naming `primary`.
    fn replica(&self, data: &Path, primary: Option<&Server>) -> Server {
        let mut args = vec![
            "--replica-of".to_owned(),
            self.url(),
            "--replica-poll-interval-ms".into(),
            "50".into(),
        ];
        if let Some(p) = primary {
            args.extend(["--primary".to_owned(), format!("http://{}", p.addr)]);
        }
        args.extend(self.config_args());
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Server::start(data, &args)
    }
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

fn readyz(server: &Server) -> (u16, String) {
    let r = client().get(server.url("/readyz")).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the primary's archive holds everything it committed.
fn wait_shipped(primary: &Server) {
    wait_for("the archive to catch up", Duration::from_secs(30), || {
        metric(primary, "ferro_archive_lag_records") == 0.0
            && metric(primary, "ferro_archive_shipped_seq") > 0.0
    });
}

/// Waits until the replica applied everything the primary committed.
fn wait_applied(replica: &Server, primary: &Server) {
    let seq = metric(primary, "ferro_log_last_seq");
    wait_for(
        &format!("the replica to apply up to {seq}"),
        Duration::from_secs(30),
        || metric(replica, "ferro_replica_applied_seq") >= seq,
    );
}

fn get(server: &Server, path: &str) -> (u16, Vec<u8>) {
    let r = client()
        .get(server.url(path))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// The answers both servers must give alike: manifests by tag and digest,
/// layers and configs, tag lists, the catalog, histories, as-of reads.
fn assert_same_reads(primary: &Server, replica: &Server, images: &[(&str, &str, &Image)]) {
    // The feed shows the log itself: the same entries, times and actors.
    let mut paths = vec![
        "/v2/_catalog".to_owned(),
        "/v2/_ferro/events/feed?after=0&n=1000".to_owned(),
    ];
    for (repo, tag, image) in images {
        paths.extend([
            format!("/v2/{repo}/manifests/{tag}"),
            format!("/v2/{repo}/manifests/{}", image.digest),
            format!("/v2/{repo}/blobs/{}", image.layer),
            format!("/v2/{repo}/tags/list"),
            format!("/v2/{repo}/referrers/{}", image.digest),
            format!("/v2/{repo}/_ferro/history/repository"),
            format!("/v2/{repo}/_ferro/history/tag?tag={tag}"),
            format!("/v2/{repo}/_ferro/asof/tags?at=3"),
            format!("/v2/{repo}/_ferro/asof/manifest?reference={tag}&at=9999999"),
        ]);
    }
    for path in paths {
        let (ps, pb) = get(primary, &path);
        let (rs, rb) = get(replica, &path);
        assert_eq!(rs, ps, "{path}: {}", String::from_utf8_lossy(&rb));
        assert_eq!(
            rb,
            pb,
            "{path}: the replica answers otherwise\nprimary: {}\nreplica: {}",
            String::from_utf8_lossy(&pb),
            String::from_utf8_lossy(&rb)
        );
    }
}

/// Every kind of write the replica refuses, with 405 UNSUPPORTED and the
/// primary's URL.
fn assert_writes_refused(replica: &Server, primary_url: &str) {
    let c = client();
    let attempts = [
        c.post(replica.url("/v2/app/blobs/uploads/")),
        c.put(replica.url("/v2/app/manifests/v9"))
            .header("Content-Type", OCI_MANIFEST)
            .body("{}"),
        c.delete(replica.url("/v2/app/manifests/v1")),
        c.patch(replica.url("/v2/app/blobs/uploads/x")),
        c.post(replica.url("/v2/_ferro/gc/run")),
    ];
    for attempt in attempts {
        let r = attempt.send().unwrap();
        assert_eq!(r.status(), 405);
        let body = r.text().unwrap();
        assert!(body.contains("UNSUPPORTED"), "{body}");
        assert!(body.contains(primary_url), "{body}");
    }
}

#[test]
fn a_replica_serves_and_follows_the_primary() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let mut primary = target.primary(&dir.path().join("primary"), &[]);
    // Pushes from a few clients at once.
    let addr = Addr(primary.addr.clone());
    let images: Vec<(String, Image)> = std::thread::scope(|s| {
        let p = &addr;
        let handles: Vec<_> = (0..3)
            .map(|c| {
                s.spawn(move || {
                    (0..3)
                        .map(|i| {
                            let repo = format!("team{c}/app");
                            (
                                repo.clone(),
                                push_image(p, &repo, &format!("v{i}"), &format!("{c}{i}")),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    wait_shipped(&primary);

    let replica_dir = dir.path().join("replica");
    let replica = target.replica(&replica_dir, Some(&primary));
    wait_applied(&replica, &primary);
    let reads: Vec<(&str, &str, &Image)> = images
        .iter()
        .map(|(repo, image)| (repo.as_str(), "v2", image))
        .collect();
    assert_same_reads(&primary, &replica, &reads);
    let primary_url = format!("http://{}", primary.addr);
    assert_writes_refused(&replica, &primary_url);
    let (status, body) = readyz(&replica);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("replica of file://"), "{body}");
    // The web UI serves, without its write actions.
    let (status, page) = get(&replica, "/ui/");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("app"));
    assert!(metric(&replica, "ferro_replica_lag_seconds") < 5.0);
    assert!(metric(&replica, "ferro_replica_polls_total") >= 1.0);

    // It follows pushes, tag moves and deletes.
    let fresh = push_image(&primary, "app", "v1", "fresh");
    let moved = push_image(&primary, "team0/app", "v0", "moved");
    let r = client()
        .delete(primary.url(&format!("/v2/team1/app/manifests/{}", images[3].1.digest)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert_same_reads(
        &primary,
        &replica,
        &[
            ("app", "v1", &fresh),
            ("team0/app", "v0", &moved),
            ("team1/app", "v1", &images[4].1),
        ],
    );
    let (status, _) = get(
        &replica,
        &format!("/v2/team1/app/manifests/{}", images[3].1.digest),
    );
    assert_eq!(status, 404, "the delete is followed");
    assert!(metric(&replica, "ferro_replica_lag_records") == 0.0);

    // The primary restarts (on another port): the replica follows the
    // archive all the same.
    primary.stop();
    primary = target.primary(&dir.path().join("primary"), &[]);
    let after_restart = push_image(&primary, "app", "v2", "after restart");
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert_same_reads(&primary, &replica, &[("app", "v2", &after_restart)]);

    // The replica restarts from its own log, not from the archive.
    replica.stop();
    let replica = target.replica(&replica_dir, None);
    assert!(
        replica
            .startup_lines
            .iter()
            .any(|l| l.contains("resuming from its own log")),
        "{:#?}",
        replica.startup_lines
    );
    assert_same_reads(&primary, &replica, &[("app", "v2", &after_restart)]);
    let again = push_image(&primary, "app", "v3", "after the replica's restart");
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert_same_reads(&primary, &replica, &[("app", "v3", &again)]);
    assert_writes_refused(&replica, &target.url());
}

#[test]
fn a_replica_never_serves_what_the_archive_lacks() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    // Shipping only every 5 s: pushes wait in the primary's log.
    let primary = target.primary(
        &dir.path().join("primary"),
        &["--archive-ship-interval-ms", "5000"],
    );
    let first = push_image(&primary, "app", "v1", "first");
    wait_shipped(&primary);
    let replica = target.replica(&dir.path().join("replica"), Some(&primary));
    wait_applied(&replica, &primary);
    let unshipped = push_image(&primary, "app", "v2", "not shipped yet");
    std::thread::sleep(Duration::from_millis(500));
    assert!(metric(&primary, "ferro_archive_lag_records") > 0.0);
    let (status, _) = get(&replica, "/v2/app/manifests/v2");
    assert_eq!(status, 404, "a record the archive does not hold is served");
    assert!(metric(&primary, "ferro_archive_lag_records") > 0.0);
    // The primary's feed says so.
    assert!(metric(&replica, "ferro_replica_lag_records") >= 1.0);
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert_same_reads(
        &primary,
        &replica,
        &[("app", "v1", &first), ("app", "v2", &unshipped)],
    );
}

#[test]
fn a_replica_survives_an_outage_and_stops_at_a_corrupt_piece() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let primary = target.primary(&dir.path().join("primary"), &[]);
    let before = push_image(&primary, "app", "v1", "before");
    wait_shipped(&primary);
    let replica_dir = dir.path().join("replica");
    let replica = target.replica(&replica_dir, None);
    wait_applied(&replica, &primary);

    // The archive goes away: the replica says so and serves what it has.
    let away = dir.path().join("away");
    std::fs::rename(target.dir(), &away).unwrap();
    wait_for(
        "the replica to report the outage",
        Duration::from_secs(10),
        || readyz(&replica).1.contains("failing"),
    );
    assert!(metric(&replica, "ferro_replica_errors_total") >= 1.0);
    assert_same_reads(&primary, &replica, &[("app", "v1", &before)]);
    std::fs::rename(&away, target.dir()).unwrap();
    wait_for("the replica to recover", Duration::from_secs(10), || {
        !readyz(&replica).1.contains("failing")
    });
    let during = push_image(&primary, "app", "v2", "after the outage");
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert_same_reads(&primary, &replica, &[("app", "v2", &during)]);

    // A flipped byte in a new piece: the replica stops before it.
    replica.stop();
    let pieces_before = pieces(&target);
    let corrupt = push_image(&primary, "app", "v3", "to be corrupted");
    wait_shipped(&primary);
    let new_piece = pieces(&target)
        .into_iter()
        .find(|p| !pieces_before.contains(p))
        .expect("a new piece");
    let path = target.dir().join("log").join(&new_piece);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let replica = target.replica(&replica_dir, None);
    wait_for(
        "the replica to stop at the piece",
        Duration::from_secs(10),
        || metric(&replica, "ferro_replica_stalled") == 1.0,
    );
    let (status, body) = readyz(&replica);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("stopped") && body.contains(&new_piece),
        "{body}"
    );
    assert_eq!(get(&replica, "/v2/app/manifests/v3").0, 404);
    assert_eq!(get(&replica, "/v2/app/manifests/v2").1, during.manifest);
    assert_eq!(
        get(&replica, "/v2/app/tags/list").1,
        br#"{"name":"app","tags":["v1","v2"]}"#
    );
    // Mended: it goes on from the record before it.
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    wait_applied(&replica, &primary);
    assert_eq!(metric(&replica, "ferro_replica_stalled"), 0.0);
    assert_same_reads(&primary, &replica, &[("app", "v3", &corrupt)]);
}

/// The archive's piece names.
fn pieces(target: &Target) -> Vec<String> {
    std::fs::read_dir(target.dir().join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_promoted_replica_takes_over_and_fences_the_old_primary() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let primary = target.primary(&dir.path().join("primary"), &[]);
    push_image(&primary, "app", "v1", "one");
    wait_shipped(&primary);
    let replica_dir = dir.path().join("replica");
    let replica = target.replica(&replica_dir, Some(&primary));
    wait_applied(&replica, &primary);
    replica.stop();
    // Written after the replica stopped: promotion catches up to it.
    let late = push_image(&primary, "app", "v2", "late");
    wait_shipped(&primary);

    // Not a writer while it is a replica's directory.
    let refused = Command::new(ferro_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&replica_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("ferroctl promote"), "{stderr}");

    let promoted = ctl(&replica_dir, &["promote"]).expect(0);
    assert!(promoted.stdout.contains("promoted"), "{}", promoted.stdout);
    ctl(&replica_dir, &["promote"]).expect(1);
    // Promoted, it holds a writer's log: not a replica's any more.
    let refused = Command::new(ferro_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--replica-of"])
        .arg(target.url())
        .arg("--data-dir")
        .arg(&replica_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not a replica's"), "{stderr}");

    let new_primary = target.primary(&replica_dir, &[]);
    let (_, body) = get(&new_primary, "/v2/app/manifests/v2");
    assert_eq!(body, late.manifest);
    let taken_over = push_image(&new_primary, "app", "v3", "the new primary's");
    wait_shipped(&new_primary);
    assert!(metric(&new_primary, "ferro_archive_epoch") >= 2.0);
    // The old primary is fenced at its next shipment.
    push_image(&primary, "app", "v4", "the old primary's");
    wait_for(
        "the old primary to be fenced",
        Duration::from_secs(10),
        || metric(&primary, "ferro_archive_fenced") == 1.0,
    );
    // A new replica of the archive sees the new primary's pushes, not
    // the old one's after the fence.
    let second = target.replica(&dir.path().join("second"), Some(&new_primary));
    wait_applied(&second, &new_primary);
    assert_same_reads(&new_primary, &second, &[("app", "v3", &taken_over)]);
    assert_eq!(get(&second, "/v2/app/manifests/v4").0, 404);
}

#[test]
fn a_replica_follows_a_primary_on_garage() {
    if !garage::available("a_replica_follows_a_primary_on_garage") {
        return;
    }
    let garage = Garage::shared();
    let target = Target::s3(garage, "replica/");
    let dir = tempfile::tempdir().unwrap();
    let primary = target.primary(&dir.path().join("primary"), &[]);
    let one = push_image(&primary, "app", "v1", "one");
    let two = push_image(&primary, "lib/base", "v1", "two");
    wait_shipped(&primary);
    let replica = target.replica(&dir.path().join("replica"), Some(&primary));
    wait_applied(&replica, &primary);
    assert_same_reads(
        &primary,
        &replica,
        &[("app", "v1", &one), ("lib/base", "v1", &two)],
    );
    let three = push_image(&primary, "app", "v2", "three");
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert_same_reads(&primary, &replica, &[("app", "v2", &three)]);
    assert_writes_refused(&replica, &format!("http://{}", primary.addr));
}

/// The file of a blob in a data directory on the filesystem.
fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// Blobs on the filesystem: the replica brings in the bytes of what is
/// pushed (from the archive) and drops the files of what the primary's
/// garbage collection deleted.
#[test]
fn a_replica_keeps_the_blob_files_of_its_state() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        "[history]\nretention = \"0s\"\n\n[gc]\ngrace = \"0s\"\n",
    )
    .unwrap();
    let primary = target.primary(
        &dir.path().join("primary"),
        &["--config", config.to_str().unwrap()],
    );
    let old = push_image(&primary, "app", "v1", "old");
    let kept = push_image(&primary, "app", "v2", "kept");
    wait_shipped(&primary);
    let replica_dir = dir.path().join("replica");
    let replica = target.replica(&replica_dir, Some(&primary));
    wait_applied(&replica, &primary);
    let fresh = push_image(&primary, "app", "v3", "fresh");
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    for image in [&old, &kept, &fresh] {
        assert!(blob_file(&replica_dir, &image.layer).exists());
    }
    assert!(metric(&replica, "ferro_replica_blobs_fetched_total") >= 2.0);

    let r = client()
        .delete(primary.url(&format!("/v2/app/manifests/{}", old.digest)))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    std::thread::sleep(Duration::from_millis(1100));
    let r = client()
        .post(primary.url("/v2/_ferro/gc/run"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert!(!blob_file(&primary.data_dir, &old.layer).exists());
    wait_shipped(&primary);
    wait_applied(&replica, &primary);
    assert!(!blob_file(&replica_dir, &old.layer).exists());
    assert!(!blob_file(&replica_dir, &old.config).exists());
    for image in [&kept, &fresh] {
        assert!(blob_file(&replica_dir, &image.layer).exists());
    }
    assert_eq!(
        get(&replica, &format!("/v2/app/blobs/{}", old.layer)).0,
        404
    );
    assert_same_reads(
        &primary,
        &replica,
        &[("app", "v2", &kept), ("app", "v3", &fresh)],
    );
}

/// A primary with auth on answers its feed only to a replica that signs in
/// (`replica.primary_username` and `replica.primary_password`, HTTP Basic,
/// a user that may pull every repository): with them the replica learns
/// the primary's last record from the feed (`ferro_replica_lag_records`
/// is reported, and reaches 0); without, the feed refuses it and the
/// replica follows the archive alone (no such figure), still serving.
#[test]
fn a_replica_signs_in_to_a_primary_with_auth() {
    let target = Target::file();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let line =
        |user: &str, password: &str| format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap());
    std::fs::write(&users, line("follower", "f-pass") + &line("dev", "d-pass")).unwrap();
    let primary_config = dir.path().join("primary.toml");
    std::fs::write(
        &primary_config,
        format!(
            "[auth]\nscheme = \"basic\"\nhtpasswd = \"{}\"\n\n\
             [[auth.rules]]\nusers = [\"follower\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n\n\
             [[auth.rules]]\nusers = [\"dev\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n",
            users.display()
        ),
    )
    .unwrap();
    let primary_config = primary_config.display().to_string();
    let primary = target.primary(&dir.path().join("primary"), &["--config", &primary_config]);
    // Something on the record (an upload started), with the writer's
    // credentials.
    let status = client()
        .post(primary.url("/v2/app/blobs/uploads/"))
        .basic_auth("dev", Some("d-pass"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
    wait_shipped(&primary);

    let replica = |name: &str, signed_in: bool| {
        let config = dir.path().join(format!("{name}.toml"));
        let credentials = if signed_in {
            "[replica]\nprimary_username = \"follower\"\nprimary_password = \"f-pass\"\n"
        } else {
            ""
        };
        std::fs::write(&config, credentials).unwrap();
        let args = [
            "--replica-of".to_owned(),
            target.url(),
            "--replica-poll-interval-ms".into(),
            "50".into(),
            "--primary".into(),
            format!("http://{}", primary.addr),
            "--config".into(),
            config.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Server::start(&dir.path().join(name), &args)
    };
    let signed_in = replica("signed-in", true);
    wait_for(
        "the signed-in replica to hear from the feed",
        Duration::from_secs(20),
        || metric(&signed_in, "ferro_replica_lag_records") == 0.0,
    );
    let anonymous = replica("anonymous", false);
    wait_applied(&anonymous, &primary);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        metric(&anonymous, "ferro_replica_lag_records").is_nan(),
        "a replica without credentials heard from a primary with auth on"
    );
    assert_eq!(readyz(&anonymous).0, 200);
    // The refusal is logged naming what is missing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        match anonymous
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) if line.contains("replica.primary_username") => break line,
            Ok(_) => continue,
            Err(_) => panic!("no log line names the missing credentials"),
        }
    };
    assert!(said.contains("401"), "{said}");
}
