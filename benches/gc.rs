//! Garbage collection of 100,000 blobs: time and peak memory.
//!
//! ```text
//! cargo bench --bench gc
//! cargo bench --bench gc -- --blobs 10000      # smaller, quicker
//! ```
//!
//! The data set: `--blobs` small blob files in the store, each linked into
//! one of 100 repositories through the log writer (as uploads would), and
//! 1,000 manifests referencing the first 10% of them (ten blobs each). So
//! 90% of the blobs are unreferenced. Retention 0 and grace 0: everything
//! unreferenced goes.
//!
//! Each measured phase runs in a child process of its own (this binary
//! again, with `--collect`), so its peak resident memory (`VmHWM`) is the
//! collection's alone, startup replay of the log included (what
//! `ferroctl gc` costs):
//! - `dry_run`: recovery + mark + the listing (nothing changes);
//! - `collect`: recovery + mark + sweep (log the deletions in batches,
//!   fdatasync each, unlink the files) + orphan scan.
//!
//! A plain `main` rather than criterion: one collection changes the data
//! set, so it cannot be repeated on it, and the interesting figure besides
//! time is peak memory.

use std::path::Path;
use std::process::Command as Process;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferro::blobs::BlobStore;
use ferro::commands::Command;
use ferro::compaction::Retention;
use ferro::datadir::Layout;
use ferro::events::Actor;
use ferro::gc::{self, GcOptions};
use ferro::log::{Durability, RecoveryMode, WriterOptions};
use ferro::oci::{Digest, RepoName};

const REPOS: usize = 100;
const BLOBS_PER_MANIFEST: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--collect") {
        collect(Path::new(&args[i + 1]), args[i + 2] == "dry");
        return;
    }
    let blobs = args
        .iter()
        .position(|a| a == "--blobs")
        .map(|i| args[i + 1].parse().expect("--blobs N"))
        .unwrap_or(100_000usize);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let started = Instant::now();
    build(tmp.path(), blobs);
    println!(
        "gc bench: {blobs} blobs ({} referenced by {} manifests) built in {:.1} s",
        blobs / 10,
        blobs / 10 / BLOBS_PER_MANIFEST,
        started.elapsed().as_secs_f64()
    );
    for mode in ["dry", "run"] {
        let out = Process::new(std::env::current_exe().expect("own path"))
            .arg("--collect")
            .arg(tmp.path())
            .arg(mode)
            .output()
            .expect("run the collection");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn build(dir: &Path, blobs: usize) {
    let layout = Layout::new(dir);
    let started = ferro::startup::open(
        &layout,
        RecoveryMode::TolerateTornTail,
        WriterOptions {
            durability: Durability::Never,
            segment_bytes_max: ferro::limits::Limits::default().segment_bytes_max,
        },
    )
    .expect("open the data directory");
    let store = BlobStore::new(&layout);
    let writer = started.log.writer.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let digests: Vec<Digest> = (0..blobs)
        .map(|i| Digest::sha256_of(format!("blob {i}").as_bytes()))
        .collect();
    let digests = Arc::new(digests);
    runtime.block_on(async {
        for chunk in (0..blobs).collect::<Vec<_>>().chunks(1000) {
            let mut tasks = Vec::new();
            for &i in chunk {
                let (writer, store, digests) = (writer.clone(), store.clone(), digests.clone());
                tasks.push(tokio::spawn(async move {
                    let bytes = format!("blob {i}");
                    let path = store.blob_path(&digests[i]);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, &bytes).unwrap();
                    writer
                        .submit(
                            Actor::system(),
                            Command::LinkUploadedBlob {
                                repo: repo(i),
                                digest: digests[i].clone(),
                                size: bytes.len() as u64,
                            },
                        )
                        .await
                        .expect("link");
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        // Manifests over the first 10%, each in the repository of its blobs.
        let referenced = blobs / 10;
        for m in 0..referenced / BLOBS_PER_MANIFEST {
            let first = m * BLOBS_PER_MANIFEST;
            let r = repo(first);
            let mut refs = Vec::new();
            for i in first..first + BLOBS_PER_MANIFEST {
                if repo(i) != r {
                    writer
                        .submit(
                            Actor::system(),
                            Command::MountBlob {
                                repo: r.clone(),
                                digest: digests[i].clone(),
                                from: None,
                            },
                        )
                        .await
                        .expect("mount");
                }
                refs.push(digests[i].clone());
            }
            let body = Bytes::from(format!("{{\"manifest\":{m}}}"));
            writer
                .submit(
                    Actor::system(),
                    Command::PutManifest {
                        repo: r,
                        digest: Digest::sha256_of(&body),
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        body,
                        blobs: refs,
                        manifests: vec![],
                        subject: None,
                        artifact_type: None,
                        tags: vec![],
                    },
                )
                .await
                .expect("manifest");
        }
        writer.sync().await.expect("sync");
    });
    drop(writer);
    drop(started.log.writer);
    started.log.writer_thread.join().expect("writer thread");
}

fn repo(i: usize) -> RepoName {
    RepoName::parse(&format!("bench/r{}", i % REPOS)).unwrap()
}

fn collect(dir: &Path, dry_run: bool) {
    let options = GcOptions {
        retention: Retention::For(Duration::ZERO),
        grace: Duration::ZERO,
        untagged_older_than: None,
        dry_run,
    };
    let started = Instant::now();
    let report = gc::run_offline(&Layout::new(dir), RecoveryMode::TolerateTornTail, &options)
        .expect("collection");
    let wall = started.elapsed();
    println!(
        "{:8} {:>7} blobs examined, {:>7} deleted ({} bytes), {} kept; \
         wall {:>6.0} ms (mark {} ms, sweep {} ms, recovery {:.0} ms); peak RSS {} MiB",
        if dry_run { "dry_run" } else { "collect" },
        report.blobs_examined,
        report.blobs_deleted,
        report.bytes_freed,
        report.blobs_examined - report.blobs_deleted,
        wall.as_secs_f64() * 1000.0,
        report.mark_ms,
        report.sweep_ms,
        wall.as_secs_f64() * 1000.0 - report.total_ms as f64,
        peak_rss_kib() / 1024
    );
}

/// This process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
