//! Startup time on a large log, with and without a snapshot.
//!
//! ```text
//! cargo bench --bench startup
//! FERRO_BENCH_STARTUP_RECORDS=100000 cargo bench --bench startup   # smaller, quicker
//! ```
//!
//! The data set (built once, kept under the target directory) is a log of
//! 1,000,000 records written the way the server writes them: commands
//! planned against the state, one entry per record, segments rolled at the
//! default 64 MiB. The mix is a CI pushing images to 100 repositories: per
//! image, two layers by chunked upload (start, one chunk, complete + link:
//! three records each), a config by a single `POST ?digest=` (one record)
//! and the manifest with its tag (one record, two events); tags move among
//! ten per repository. 1,000,000 records hold 1,375,000 events and leave
//! 125,000 manifests and 375,000 blobs in the state (a 194 MB snapshot, a
//! 294 MB log).
//!
//! Measured, each on its own copy of the data directory (the log shared):
//! - `full_replay`: no snapshot, every record replayed;
//! - `snapshot_tail_100k`: a snapshot 100,000 records before the end (the
//!   most the default `every_records` leaves to replay) plus that tail;
//! - `snapshot_at_end`: a snapshot at the last record (after a clean
//!   shutdown), nothing to replay;
//!
//! for `library` (`ferro::startup::open`, what `ferro serve` calls) and for
//! `binary` (the real `ferro serve`, from spawn until it logs that it
//! listens, snapshots disabled so the data set does not change).

#[allow(dead_code)] // the other benchmarks use the rest of it
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ferro::commands::{Chunk, Command};
use ferro::datadir::Layout;
use ferro::events::{Actor, Entry};
use ferro::limits::Limits;
use ferro::log::format::{encode_payload, encode_record};
use ferro::log::recovery::RecoveryMode;
use ferro::log::segment::create_segment;
use ferro::log::{Durability, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;
use ferro::snapshot;

const DEFAULT_RECORDS: u64 = 1_000_000;
const TAIL_RECORDS: u64 = 100_000;
const REPOSITORIES: u64 = 100;
const TAGS_PER_REPOSITORY: u64 = 10;
/// 2025-11-27T09:00:00Z; records are a millisecond apart.
const EPOCH_UNIX_NS: u64 = 1_764_234_000_000_000_000;
/// Bumped when the data set changes, so a stale one is rebuilt.
const DATA_SET_VERSION: u32 = 1;

fn records() -> u64 {
    std::env::var("FERRO_BENCH_STARTUP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RECORDS)
}

/// Builds the commands of the data set, in order, one per record.
struct Workload {
    image: u64,
    pending: std::collections::VecDeque<Command>,
}

impl Workload {
    fn next(&mut self) -> Command {
        if self.pending.is_empty() {
            self.queue_image();
        }
        self.pending.pop_front().expect("an image queues commands")
    }

    fn queue_image(&mut self) {
        let i = self.image;
        self.image += 1;
        let repo = RepoName::parse(&format!("team{}/service{}", i % 10, i % REPOSITORIES))
            .expect("a valid name");
        let mut layers = Vec::new();
        for l in 0..2u64 {
            let upload = format!("{:032x}", i * 2 + l);
            let digest = Digest::sha256_of(format!("layer {i} {l}").as_bytes());
            let size = 1_000_000 + i * 7 + l;
            self.pending.push_back(Command::StartUpload {
                repo: repo.clone(),
                upload: upload.clone(),
            });
            self.pending.push_back(Command::AppendChunk {
                upload: upload.clone(),
                offset: 0,
                length: size,
                crc32: (i as u32).wrapping_mul(2_654_435_761),
            });
            self.pending.push_back(Command::CompleteUpload {
                upload,
                digest: digest.clone(),
                size,
                last_chunk: Some(Chunk {
                    offset: size,
                    length: 0,
                    crc32: 0,
                }),
            });
            layers.push((digest, size));
        }
        let config_body = support::image_config(i);
        let config = Digest::sha256_of(config_body.as_bytes());
        self.pending.push_back(Command::LinkUploadedBlob {
            repo: repo.clone(),
            digest: config.clone(),
            size: config_body.len() as u64,
        });
        let body = support::image_manifest(i, (&config, config_body.len()), &layers);
        let mut blobs = vec![config];
        blobs.extend(layers.into_iter().map(|(d, _)| d));
        self.pending.push_back(Command::PutManifest {
            repo,
            digest: Digest::sha256_of(body.as_bytes()),
            media_type: support::OCI_MANIFEST.into(),
            body: Bytes::from(body),
            blobs,
            manifests: vec![],
            subject: None,
            artifact_type: Some("application/vnd.oci.image.config.v1+json".into()),
            tags: vec![Tag::parse(&format!(
                "build-{}",
                (i / REPOSITORIES) % TAGS_PER_REPOSITORY
            ))
            .expect("a valid tag")],
        });
    }
}

struct DataSet {
    full: PathBuf,
    snapshot_tail: PathBuf,
    snapshot_end: PathBuf,
}

fn data_set() -> DataSet {
    let records = records();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("startup-{records}"));
    let set = DataSet {
        full: root.join("full"),
        snapshot_tail: root.join("snapshot-tail"),
        snapshot_end: root.join("snapshot-end"),
    };
    let marker = root.join("COMPLETE");
    let want = format!("{DATA_SET_VERSION}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return set;
    }
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "building the startup data set ({records} records) in {}",
        root.display()
    );
    let started = std::time::Instant::now();
    let full = Layout::new(&set.full);
    std::fs::create_dir_all(full.log_dir()).unwrap();
    let segment_bytes_max = Limits::default().segment_bytes_max;
    let mut state = State::default();
    let mut workload = Workload {
        image: 0,
        pending: Default::default(),
    };
    let actor = Actor {
        user: Some("ci".into()),
        peer: Some("10.1.2.3:40000".into()),
    };
    let (_, mut segment) = create_segment(&full.log_dir(), 1, 0).unwrap();
    let mut segment_len = ferro::log::format::SEGMENT_HEADER_BYTES as u64;
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut crc = 0u32;
    let tail_seq = records.saturating_sub(TAIL_RECORDS);
    for seq in 1..=records {
        let command = workload.next();
        let events = command.plan(&state).expect("the workload is valid");
        let entry = Entry {
            actor: actor.clone(),
            events,
        };
        let time = EPOCH_UNIX_NS + seq * 1_000_000;
        let payload = encode_payload(&entry).unwrap();
        let before = buffer.len();
        crc = encode_record(&mut buffer, seq, time, crc, &payload);
        segment_len += (buffer.len() - before) as u64;
        state.apply(seq, time, &entry);
        if seq == tail_seq {
            snapshot::write(
                &Layout::new(&set.snapshot_tail).snapshots_dir(),
                &state,
                crc,
            )
            .unwrap();
        }
        if buffer.len() > (1 << 20) {
            segment.write_all(&buffer).unwrap();
            buffer.clear();
        }
        if segment_len >= segment_bytes_max && seq < records {
            segment.write_all(&buffer).unwrap();
            buffer.clear();
            segment.sync_all().unwrap();
            segment = create_segment(&full.log_dir(), seq + 1, crc).unwrap().1;
            segment_len = ferro::log::format::SEGMENT_HEADER_BYTES as u64;
        }
    }
    segment.write_all(&buffer).unwrap();
    segment.sync_all().unwrap();
    snapshot::write(&Layout::new(&set.snapshot_end).snapshots_dir(), &state, crc).unwrap();
    for dir in [&set.full, &set.snapshot_tail, &set.snapshot_end] {
        std::fs::create_dir_all(dir.join("snapshots")).unwrap();
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::create_dir_all(dir.join("uploads")).unwrap();
    }
    // The log is shared: startup only reads it and opens its last segment
    // for appending, and nothing is appended here.
    for dir in [&set.snapshot_tail, &set.snapshot_end] {
        std::os::unix::fs::symlink(full.log_dir(), dir.join("log")).unwrap();
    }
    let summary = state.summary();
    eprintln!(
        "built in {:.1} s: {} records, {} manifests, {} blobs, {} tags",
        started.elapsed().as_secs_f64(),
        records,
        summary.manifests,
        summary.blobs,
        summary.tags
    );
    std::fs::write(&marker, want).unwrap();
    set
}

fn open_and_close(dir: &Path) -> u64 {
    let started = ferro::startup::open(
        &Layout::new(dir),
        RecoveryMode::TolerateTornTail,
        WriterOptions {
            durability: Durability::Never,
            segment_bytes_max: Limits::default().segment_bytes_max,
        },
    )
    .expect("startup");
    let seq = started.log.state.read().last_seq;
    let ferro::log::OpenedLog {
        writer,
        writer_thread,
        ..
    } = started.log;
    drop(writer);
    writer_thread.join().unwrap();
    seq
}

/// Spawns `ferro serve` and waits for it to listen; kills it.
fn serve_until_listening(dir: &Path) {
    let (mut child, _) = support::spawn_ferro(dir);
    // SIGKILL: no shutdown snapshot, the data set stays as it is.
    child.kill().unwrap();
    child.wait().unwrap();
}

fn startup(c: &mut Criterion) {
    let set = data_set();
    let records = records();
    let cases = [
        ("full_replay", &set.full),
        ("snapshot_tail_100k", &set.snapshot_tail),
        ("snapshot_at_end", &set.snapshot_end),
    ];
    let mut group = c.benchmark_group(format!("startup_{records}_records/library"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, dir) in cases {
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(open_and_close(dir), records))
        });
    }
    group.finish();
    let mut group = c.benchmark_group(format!("startup_{records}_records/binary"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, dir) in cases {
        group.bench_function(name, |b| b.iter(|| serve_until_listening(dir)));
    }
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
