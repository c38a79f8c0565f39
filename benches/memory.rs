//! Resident memory of the real server holding many tags and manifests.
//!
//! ```text
//! cargo bench --bench memory
//! cargo bench --bench memory -- --manifests 1000 --repos 10   # smaller, quicker
//! ```
//!
//! The target (issue #9): 1,000,000 tags over 100,000 manifests held in
//! under 1 GiB RSS. The data set is a log written the way the server
//! writes it (commands planned against the state, one entry per record,
//! segments rolled at the default size): `--manifests` image manifests
//! (default 100,000; a config and two layers each, every digest distinct,
//! ~570-byte bodies) spread over `--repos` repositories (default 1,000),
//! each blob linked by a single `POST ?digest=` and each manifest then
//! pushed once per tag, `--tags-per-manifest` tags (default 10). So the
//! default log holds 1,300,000 records: 300,000 blob links, 100,000
//! manifest puts carrying a tag and 900,000 re-puts carrying one more.
//!
//! Then the real `ferro serve` (this build's binary) runs on it, on a
//! loopback port, and `/proc/<pid>/status` is read once `/readyz`
//! answers 200:
//! - `empty`: a fresh data directory, the baseline;
//! - `log`: the log alone, every record replayed (threshold snapshots
//!   off, so nothing but the replay runs); it is then stopped with
//!   SIGTERM and writes its shutdown snapshot; the run's peak (`VmHWM`,
//!   replay included) is read until it exits;
//! - `snapshot`: restarted on that snapshot, nothing left to replay.
//!
//! Each run checks that tags resolve (`HEAD /v2/<repo>/manifests/<tag>`
//! answers 200 with the manifest's digest). Bytes per tag and per manifest
//! are the whole difference from the empty server divided by the count:
//! each figure carries the other's cost too.

#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferro::commands::Command;
use ferro::datadir::Layout;
use ferro::events::{Actor, Entry};
use ferro::limits::Limits;
use ferro::log::format::{encode_payload, encode_record, SEGMENT_HEADER_BYTES};
use ferro::log::segment::create_segment;
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;

/// 2025-11-27T09:00:00Z; records are a millisecond apart.
const EPOCH_UNIX_NS: u64 = 1_764_234_000_000_000_000;
use support::OCI_MANIFEST as MEDIA_TYPE;
const READY_TIMEOUT: Duration = Duration::from_secs(600);

struct Sizes {
    manifests: u64,
    repos: u64,
    tags_per_manifest: u64,
}

fn main() {
    let sizes = Sizes {
        manifests: support::arg("--manifests", 100_000),
        repos: support::arg("--repos", 1_000),
        tags_per_manifest: support::arg("--tags-per-manifest", 10),
    };
    assert!(sizes.manifests > 0 && sizes.repos > 0 && sizes.tags_per_manifest > 0);
    let tags = sizes.manifests * sizes.tags_per_manifest;
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("memory-{}", sizes.manifests));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    let empty = root.join("empty");

    let started = Instant::now();
    let built = build(&data, &sizes);
    println!(
        "memory bench: {} manifests, {tags} tags, {} repositories, {} blobs; \
         {} records, {:.0} MB of log, built in {:.1} s",
        sizes.manifests,
        sizes.repos,
        built.blobs,
        built.records,
        built.log_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let mut server = Server::start(&empty);
    let baseline = server.measure();
    server.stop();
    println!(
        "empty     ready in {:>7.0} ms; RSS {:>7.1} MiB, peak {:>7.1} MiB",
        baseline.ready_ms,
        mib(baseline.rss_kib),
        mib(baseline.hwm_kib)
    );

    let mut server = Server::start(&data);
    let from_log = server.measure();
    server.check_tags(&built.samples);
    let shutdown_hwm_kib = server.stop();
    report("log", &from_log, &baseline, &sizes);
    let snapshot_bytes: Vec<u64> = std::fs::read_dir(Layout::new(&data).snapshots_dir())
        .expect("the snapshots directory")
        .map(|f| {
            f.expect("a directory entry")
                .metadata()
                .expect("metadata")
                .len()
        })
        .collect();
    assert_eq!(snapshot_bytes.len(), 1, "the shutdown snapshot was written");
    println!(
        "          then SIGTERM: a {:.0} MB shutdown snapshot; the run's peak {:.1} MiB",
        snapshot_bytes[0] as f64 / 1e6,
        mib(shutdown_hwm_kib)
    );

    let mut server = Server::start(&data);
    let from_snapshot = server.measure();
    server.check_tags(&built.samples);
    server.kill();
    report("snapshot", &from_snapshot, &baseline, &sizes);

    let _ = std::fs::remove_dir_all(&root);
}

fn report(name: &str, m: &Measured, baseline: &Measured, sizes: &Sizes) {
    let tags = sizes.manifests * sizes.tags_per_manifest;
    let above_bytes = m.rss_kib.saturating_sub(baseline.rss_kib) * 1024;
    println!(
        "{name:9} ready in {:>7.0} ms; RSS {:>7.1} MiB, peak {:>7.1} MiB; \
         {:.0} bytes per tag, {:.0} bytes per manifest (RSS above empty)",
        m.ready_ms,
        mib(m.rss_kib),
        mib(m.hwm_kib),
        above_bytes as f64 / tags as f64,
        above_bytes as f64 / sizes.manifests as f64
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Built {
    records: u64,
    blobs: u64,
    log_bytes: u64,
    /// (repository, tag, digest) to resolve over HTTP.
    samples: Vec<(String, String, String)>,
}

struct Image {
    repo: RepoName,
    blobs: Vec<(Digest, u64)>,
    digest: Digest,
    body: Bytes,
}

fn repo_of(i: u64, sizes: &Sizes) -> RepoName {
    let r = i % sizes.repos;
    RepoName::parse(&format!("team{}/service-{r}", r % 10)).expect("a valid name")
}

/// Tag `k` of image `i`: the image's number within its repository, in a
/// release-like spelling (`v1.42.3`).
fn tag_of(i: u64, k: u64, sizes: &Sizes) -> Tag {
    Tag::parse(&format!("v1.{}.{k}", i / sizes.repos)).expect("a valid tag")
}

fn image(i: u64, sizes: &Sizes) -> Image {
    let repo = repo_of(i, sizes);
    let config_body = support::image_config(i);
    let config = Digest::sha256_of(config_body.as_bytes());
    let layers: Vec<(Digest, u64)> = (0..2u64)
        .map(|l| {
            (
                Digest::sha256_of(format!("layer {i} {l}").as_bytes()),
                1_000_000 + i * 7 + l,
            )
        })
        .collect();
    let body = support::image_manifest(i, (&config, config_body.len()), &layers);
    let mut blobs = vec![(config, config_body.len() as u64)];
    blobs.extend(layers);
    Image {
        repo,
        blobs,
        digest: Digest::sha256_of(body.as_bytes()),
        body: Bytes::from(body),
    }
}

/// The commands of image `i`, in order: link its blobs, then push the
/// manifest once per tag.
fn commands(i: u64, sizes: &Sizes) -> Vec<Command> {
    let img = image(i, sizes);
    let mut out: Vec<Command> = img
        .blobs
        .iter()
        .map(|(digest, size)| Command::LinkUploadedBlob {
            repo: img.repo.clone(),
            digest: digest.clone(),
            size: *size,
        })
        .collect();
    for k in 0..sizes.tags_per_manifest {
        out.push(Command::PutManifest {
            repo: img.repo.clone(),
            digest: img.digest.clone(),
            media_type: MEDIA_TYPE.into(),
            body: img.body.clone(),
            blobs: img.blobs.iter().map(|(d, _)| d.clone()).collect(),
            manifests: vec![],
            subject: None,
            artifact_type: Some("application/vnd.oci.image.config.v1+json".into()),
            tags: vec![tag_of(i, k, sizes)],
        });
    }
    out
}

/// Writes the data set's log into `dir` (a new data directory).
fn build(dir: &Path, sizes: &Sizes) -> Built {
    let layout = Layout::new(dir);
    std::fs::create_dir_all(layout.log_dir()).expect("log directory");
    let segment_bytes_max = Limits::default().segment_bytes_max;
    let actor = Actor {
        user: Some("ci".into()),
        peer: Some("10.1.2.3:40000".into()),
    };
    let mut state = State::default();
    let (_, mut segment) = create_segment(&layout.log_dir(), 1, 0).expect("first segment");
    let mut segment_len = SEGMENT_HEADER_BYTES as u64;
    let mut log_bytes = segment_len;
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut crc = 0u32;
    let mut seq = 0u64;
    for i in 0..sizes.manifests {
        for command in commands(i, sizes) {
            seq += 1;
            let events = command.plan(&state).expect("the workload is valid");
            let entry = Entry {
                actor: actor.clone(),
                events,
            };
            let time = EPOCH_UNIX_NS + seq * 1_000_000;
            let payload = encode_payload(&entry).expect("encodable");
            let before = buffer.len();
            crc = encode_record(&mut buffer, seq, time, crc, &payload);
            segment_len += (buffer.len() - before) as u64;
            log_bytes += (buffer.len() - before) as u64;
            state.apply(seq, time, &entry);
            if buffer.len() > (1 << 20) {
                segment.write_all(&buffer).expect("write the log");
                buffer.clear();
            }
            if segment_len >= segment_bytes_max {
                segment.write_all(&buffer).expect("write the log");
                buffer.clear();
                segment.sync_all().expect("sync the log");
                segment = create_segment(&layout.log_dir(), seq + 1, crc)
                    .expect("next segment")
                    .1;
                segment_len = SEGMENT_HEADER_BYTES as u64;
                log_bytes += segment_len;
            }
        }
    }
    segment.write_all(&buffer).expect("write the log");
    segment.sync_all().expect("sync the log");
    let summary = state.summary();
    assert_eq!(summary.manifests, sizes.manifests);
    assert_eq!(summary.tags, sizes.manifests * sizes.tags_per_manifest);
    // First, middle and last image; first and last tag of each.
    let mut samples = Vec::new();
    for i in [0, sizes.manifests / 2, sizes.manifests - 1] {
        let img = image(i, sizes);
        for k in [0, sizes.tags_per_manifest - 1] {
            samples.push((
                img.repo.to_string(),
                tag_of(i, k, sizes).to_string(),
                img.digest.to_string(),
            ));
        }
    }
    Built {
        records: seq,
        blobs: summary.blobs,
        log_bytes,
        samples,
    }
}

struct Measured {
    ready_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

struct Server {
    child: Child,
    addr: SocketAddr,
    started: Instant,
}

impl Server {
    /// Spawns `ferro serve` on `dir` with threshold snapshots off (the
    /// shutdown snapshot stays on) and waits until it listens.
    fn start(dir: &Path) -> Server {
        let started = Instant::now();
        let (child, addr) = support::spawn_ferro(dir);
        Server {
            child,
            addr,
            started,
        }
    }

    /// Waits for `/readyz` 200, then reads the resident set.
    fn measure(&mut self) -> Measured {
        loop {
            if let Some((200, _)) = self.request("GET", "/readyz") {
                break;
            }
            assert!(
                self.started.elapsed() < READY_TIMEOUT,
                "not ready in {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let ready_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (rss_kib, hwm_kib) = status_kib(self.child.id()).expect("/proc status");
        Measured {
            ready_ms,
            rss_kib,
            hwm_kib,
        }
    }

    fn check_tags(&self, samples: &[(String, String, String)]) {
        for (repo, tag, digest) in samples {
            let (status, head) = self
                .request("HEAD", &format!("/v2/{repo}/manifests/{tag}"))
                .expect("an answer");
            assert_eq!(status, 200, "HEAD {repo}:{tag}");
            let served = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("docker-content-digest")
                        .then(|| value.trim().to_owned())
                })
                .expect("Docker-Content-Digest");
            assert_eq!(&served, digest, "{repo}:{tag}");
        }
    }

    /// One request on a fresh connection: the status and the response head.
    fn request(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: {MEDIA_TYPE}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        let head = text.split("\r\n\r\n").next()?.to_owned();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, head))
    }

    /// SIGTERM, then the peak resident set seen until it exits (its
    /// shutdown snapshot included).
    fn stop(mut self) -> u64 {
        let pid = self.child.id();
        let signalled = Process::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(signalled.success());
        let mut hwm_kib = 0;
        loop {
            if let Some((_, hwm)) = status_kib(pid) {
                hwm_kib = hwm_kib.max(hwm);
            }
            if let Some(status) = self.child.try_wait().expect("wait for ferro") {
                assert!(status.success(), "ferro exited with {status}");
                return hwm_kib;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(mut self) {
        self.child.kill().expect("kill ferro");
        self.child.wait().expect("wait for ferro");
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn status_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
