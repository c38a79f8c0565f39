//! Benchmarks of the event log: append throughput through the real writer
//! with `Durability::Always` (group commit), replay speed of a large log
//! (recovery + projection), and the pieces replay is made of.
//!
//! ```text
//! cargo bench --bench log                 # everything (builds a 1M-event log once, ~250 MB in $TMPDIR)
//! cargo bench --bench log -- append       # one group
//! ```
//!
//! Figures are elements per second: entries (append) or events (replay).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

use ferro::commands::{Chunk, Command};
use ferro::events::{Actor, Entry, Event};
use ferro::log::format::{
    decode_payload, encode_payload, encode_record, read_record, SegmentHeader, FORMAT_VERSION,
};
use ferro::log::recovery::{self, RecoveryMode, ReplayFrom};
use ferro::log::segment::segment_file_name;
use ferro::log::{Durability, OpenedLog, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;

const REPLAY_EVENTS_MIN: u64 = 1_000_000;
const SEGMENT_BYTES_MAX: usize = 64 * 1024 * 1024;
const REPOS: usize = 100;
/// 2025-11-27T09:00:00Z
const EPOCH_UNIX_NS: u64 = 1_764_234_000_000_000_000;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn close(opened: OpenedLog) {
    let OpenedLog {
        writer,
        writer_thread,
        ..
    } = opened;
    drop(writer);
    writer_thread.join().unwrap();
}

// ---------------------------------------------------------------------------
// Append: N submitters, each submitting in a loop, every append fdatasynced.

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_always");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(1));
    let repo = RepoName::parse("bench/append").unwrap();
    for submitters in [1usize, 16, 128] {
        let tmp = tempfile::tempdir().unwrap();
        let opened = ferro::log::open(
            &tmp.path().join("log"),
            State::default(),
            0,
            RecoveryMode::Strict,
            WriterOptions {
                durability: Durability::Always,
                segment_bytes_max: SEGMENT_BYTES_MAX as u64,
            },
        )
        .unwrap();
        let next_upload = AtomicU64::new(0);
        group.bench_with_input(
            BenchmarkId::new("submitters", submitters),
            &submitters,
            |b, &submitters| {
                b.iter_custom(|iters| {
                    runtime().block_on(async {
                        let started = Instant::now();
                        let mut tasks = tokio::task::JoinSet::new();
                        for t in 0..submitters as u64 {
                            let n = iters / submitters as u64
                                + u64::from(t < iters % submitters as u64);
                            let first = next_upload.fetch_add(n, Ordering::Relaxed);
                            let writer = opened.writer.clone();
                            let repo = repo.clone();
                            tasks.spawn(async move {
                                for i in first..first + n {
                                    let committed = writer
                                        .submit(
                                            Actor::anonymous(Some("127.0.0.1:1".into())),
                                            Command::StartUpload {
                                                repo: repo.clone(),
                                                upload: format!("{i:032x}"),
                                            },
                                        )
                                        .await
                                        .unwrap();
                                    debug_assert!(committed.seq.is_some());
                                }
                            });
                        }
                        while let Some(joined) = tasks.join_next().await {
                            joined.unwrap();
                        }
                        started.elapsed()
                    })
                })
            },
        );
        let stats = opened.writer.stats();
        if stats.entries == 0 {
            // Filtered out.
            close(opened);
            continue;
        }
        eprintln!(
            "append_always/submitters/{submitters}: {} entries in {} group commits ({:.1} per commit, largest {}), {} fdatasyncs, {:.0} us per fdatasync",
            stats.entries,
            stats.batches,
            stats.entries as f64 / stats.batches.max(1) as f64,
            stats.largest_batch,
            stats.fsyncs,
            stats.fsync_total_us as f64 / stats.fsyncs.max(1) as f64,
        );
        close(opened);
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Replay: a log of 1,000,000 mixed events, built once.

struct ReplayLog {
    _dir: tempfile::TempDir,
    log_dir: std::path::PathBuf,
    events: u64,
    entries: u64,
    bytes: u64,
    last_seq: u64,
}

fn manifest_body(config: &Digest, layer: &Digest, layer_size: u64, n: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1469}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{layer_size}}}],"annotations":{{"org.opencontainers.image.created":"2025-11-27T09:00:00Z","org.opencontainers.image.revision":"{n:040x}"}}}}"#
    ))
}

/// Writes a log the way the writer would: every command planned against
/// the state so far, one entry per command, segments rolled at 64 MiB.
struct LogBuilder {
    log_dir: std::path::PathBuf,
    state: State,
    segment: Vec<u8>,
    segment_first_seq: u64,
    crc: u32,
    events: u64,
    bytes: u64,
}

impl LogBuilder {
    fn new(log_dir: std::path::PathBuf) -> LogBuilder {
        let mut segment = Vec::with_capacity(SEGMENT_BYTES_MAX + (1 << 20));
        segment.extend_from_slice(&Self::header(1, 0));
        LogBuilder {
            log_dir,
            state: State::default(),
            segment,
            segment_first_seq: 1,
            crc: 0,
            events: 0,
            bytes: 0,
        }
    }

    fn header(first_seq: u64, prev_crc: u32) -> [u8; 32] {
        SegmentHeader {
            version: FORMAT_VERSION,
            first_seq,
            prev_crc,
        }
        .encode()
    }

    fn flush(&mut self) {
        let path = self.log_dir.join(segment_file_name(self.segment_first_seq));
        std::fs::write(path, &self.segment).unwrap();
        self.segment.clear();
    }

    fn append(&mut self, actor: Actor, events: Vec<Event>) {
        let seq = self.state.last_seq + 1;
        let time_unix_ns = EPOCH_UNIX_NS + seq * 1_000_000;
        let entry = Entry { actor, events };
        let payload = encode_payload(&entry).unwrap();
        if self.segment.len() >= SEGMENT_BYTES_MAX {
            self.flush();
            self.segment_first_seq = seq;
            let header = Self::header(seq, self.crc);
            self.segment.extend_from_slice(&header);
        }
        let before = self.segment.len();
        self.crc = encode_record(&mut self.segment, seq, time_unix_ns, self.crc, &payload);
        self.bytes += (self.segment.len() - before) as u64;
        self.events += entry.events.len() as u64;
        self.state.apply(seq, time_unix_ns, &entry);
    }

    fn run(&mut self, actor: Actor, command: Command) {
        let events = command
            .plan(&self.state)
            .unwrap_or_else(|r| panic!("{r}: {command:?}"));
        assert!(!events.is_empty(), "{command:?}");
        self.append(actor, events);
    }
}

/// A mix of pushes (chunked uploads, config blobs, manifests of ~500 bytes
/// with a version tag and `latest` moved), mounts, cancelled uploads, and
/// retention deleting old tags, manifests and blobs.
fn build_replay_log() -> ReplayLog {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    std::fs::create_dir_all(&log_dir).unwrap();
    let started = Instant::now();
    let mut b = LogBuilder::new(log_dir.clone());

    let repos: Vec<RepoName> = (0..REPOS)
        .map(|r| RepoName::parse(&format!("org{}/app{r}", r % 10)).unwrap())
        .collect();
    let latest = Tag::parse("latest").unwrap();
    let ci = |n: u64| {
        Actor::anonymous(Some(format!(
            "10.0.{}.{}:{}",
            n % 7,
            n % 250,
            40000 + n % 20000
        )))
    };
    let alice = Actor {
        user: Some("alice".into()),
        peer: Some("192.0.2.10:41822".into()),
    };
    // Per repository: manifest, config and tag of its recent pushes.
    let mut history: Vec<Vec<(Digest, Digest, Tag)>> = vec![Vec::new(); REPOS];
    let mut n = 0u64;
    while b.events < REPLAY_EVENTS_MIN {
        let r = (n as usize) % REPOS;
        let cycle = n / REPOS as u64;
        let repo = repos[r].clone();
        let upload = format!("{n:032x}");
        let layer = Digest::sha256_of(format!("layer {n}").as_bytes());
        let config = Digest::sha256_of(format!("config {n}").as_bytes());
        let third = 4_000_000 + n % 1_000_000;
        b.run(
            ci(n),
            Command::StartUpload {
                repo: repo.clone(),
                upload: upload.clone(),
            },
        );
        for i in 0..2 {
            b.run(
                ci(n),
                Command::AppendChunk {
                    upload: upload.clone(),
                    offset: i * third,
                    length: third,
                    crc32: n as u32 ^ i as u32,
                },
            );
        }
        b.run(
            ci(n),
            Command::CompleteUpload {
                upload,
                digest: layer.clone(),
                size: 3 * third,
                last_chunk: Some(Chunk {
                    offset: 2 * third,
                    length: third,
                    crc32: n as u32,
                }),
            },
        );
        b.run(
            ci(n),
            Command::LinkUploadedBlob {
                repo: repo.clone(),
                digest: config.clone(),
                size: 1469,
            },
        );
        let body = manifest_body(&config, &layer, 3 * third, n);
        let manifest = Digest::sha256_of(&body);
        let version = Tag::parse(&format!("v{cycle}")).unwrap();
        b.run(
            ci(n),
            Command::PutManifest {
                repo: repo.clone(),
                digest: manifest.clone(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                body,
                blobs: vec![config.clone(), layer.clone()],
                manifests: vec![],
                subject: None,
                artifact_type: Some("application/vnd.oci.image.config.v1+json".into()),
                tags: vec![version.clone(), latest.clone()],
            },
        );
        if n.is_multiple_of(4) {
            b.run(
                alice.clone(),
                Command::MountBlob {
                    repo: repos[(r + 1) % REPOS].clone(),
                    digest: layer.clone(),
                    from: Some(repo.clone()),
                },
            );
        }
        if n.is_multiple_of(7) {
            let cancelled = format!("c{n:031x}");
            b.run(
                ci(n),
                Command::StartUpload {
                    repo: repo.clone(),
                    upload: cancelled.clone(),
                },
            );
            b.run(
                ci(n),
                Command::CancelUpload {
                    upload: cancelled,
                    reason: ferro::events::CancelReason::ClientDeleted,
                },
            );
        }
        history[r].push((manifest, config, version));
        // Retention: an old version loses its tag (half the time by itself,
        // else with its manifest), its config is unlinked and collected.
        if history[r].len() > 5 {
            let (old_manifest, old_config, old_tag) = history[r].remove(0);
            if cycle.is_multiple_of(2) {
                b.run(
                    alice.clone(),
                    Command::DeleteTag {
                        repo: repo.clone(),
                        tag: old_tag,
                    },
                );
            }
            b.run(
                alice.clone(),
                Command::DeleteManifest {
                    repo: repo.clone(),
                    digest: old_manifest,
                },
            );
            b.run(
                alice.clone(),
                Command::UnlinkBlob {
                    repo: repo.clone(),
                    digest: old_config.clone(),
                },
            );
            b.append(
                Actor::system(),
                vec![Event::BlobDeleted {
                    digest: old_config,
                    size: 1469,
                }],
            );
        }
        n += 1;
    }
    b.flush();
    eprintln!(
        "replay log: {} events in {} entries, {} segments, {:.0} MB, built in {:.1} s",
        b.events,
        b.state.last_seq,
        std::fs::read_dir(&log_dir).unwrap().count(),
        b.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    ReplayLog {
        _dir: dir,
        log_dir,
        events: b.events,
        entries: b.state.last_seq,
        bytes: b.bytes,
        last_seq: b.state.last_seq,
    }
}

static REPLAY_LOG: OnceLock<ReplayLog> = OnceLock::new();

fn replay_log() -> &'static ReplayLog {
    REPLAY_LOG.get_or_init(build_replay_log)
}

/// Entries of the replay log, decoded once (for the apply-only split).
fn replay_entries() -> &'static Vec<(u64, u64, Entry)> {
    static ENTRIES: OnceLock<Vec<(u64, u64, Entry)>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let log = replay_log();
        let mut out = Vec::with_capacity(log.entries as usize);
        recovery::recover(
            &log.log_dir,
            ReplayFrom::default(),
            RecoveryMode::Strict,
            &mut |seq, time, entry| out.push((seq, time, entry)),
        )
        .unwrap();
        out
    })
}

/// Times `routine` once per iteration, leaving out dropping what it
/// returns (a replayed state is kept, not dropped, at startup).
fn time_each<T>(iters: u64, mut routine: impl FnMut() -> T) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let started = Instant::now();
        let out = routine();
        total += started.elapsed();
        drop(black_box(out));
    }
    total
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay_1m");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    // Throughput in events. Criterion needs it before the log exists (it
    // is built on first use, so filtered runs skip it); the log holds at
    // least this many events and at most one push cycle more.
    group.throughput(Throughput::Elements(REPLAY_EVENTS_MIN));

    // What startup does: verify, decode, apply into a fresh state.
    group.bench_function("recover_and_apply", |b| {
        b.iter_custom(|iters| {
            let log = replay_log();
            assert!(log.events - REPLAY_EVENTS_MIN < 64, "{}", log.events);
            time_each(iters, || {
                let mut state = State::default();
                let report = recovery::recover(
                    &log.log_dir,
                    ReplayFrom::default(),
                    RecoveryMode::Strict,
                    &mut |seq, time, entry| state.apply(seq, time, &entry),
                )
                .unwrap();
                assert_eq!(report.last_seq, log.last_seq);
                state
            })
        })
    });
    // The split: checksums and chain only (nothing decoded) ...
    group.bench_function("verify_only", |b| {
        b.iter_custom(|iters| {
            let log = replay_log();
            time_each(iters, || {
                recovery::recover(
                    &log.log_dir,
                    ReplayFrom {
                        replay_after: log.last_seq,
                    },
                    RecoveryMode::Strict,
                    &mut |_, _, _| unreachable!("nothing after the last record"),
                )
                .unwrap()
            })
        })
    });
    // ... verify and decode, entries dropped ...
    group.bench_function("verify_and_decode", |b| {
        b.iter_custom(|iters| {
            let log = replay_log();
            time_each(iters, || {
                recovery::recover(
                    &log.log_dir,
                    ReplayFrom::default(),
                    RecoveryMode::Strict,
                    &mut |_, _, entry| drop(black_box(entry)),
                )
                .unwrap()
            })
        })
    });
    // ... and the projection alone, from decoded entries.
    group.bench_function("apply_only", |b| {
        b.iter_custom(|iters| {
            let entries = replay_entries();
            time_each(iters, || {
                let mut state = State::default();
                for (seq, time, entry) in entries {
                    state.apply(*seq, *time, entry);
                }
                state
            })
        })
    });
    group.finish();
    let Some(log) = REPLAY_LOG.get() else {
        return; // filtered out: never built
    };
    eprintln!(
        "replay_1m: the log has {} events, {} entries, {:.0} MB ({:.0} bytes per entry)",
        log.events,
        log.entries,
        log.bytes as f64 / 1e6,
        log.bytes as f64 / log.entries as f64
    );
}

// ---------------------------------------------------------------------------
// The pieces.

fn sample_manifest_entry() -> Entry {
    let config = Digest::sha256_of(b"config");
    let layer = Digest::sha256_of(b"layer");
    let body = manifest_body(&config, &layer, 12_345_678, 42);
    Entry {
        actor: Actor::anonymous(Some("10.0.0.1:40000".into())),
        events: vec![
            Event::ManifestPut {
                repo: RepoName::parse("org1/app1").unwrap(),
                digest: Digest::sha256_of(&body),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                body,
                blobs: vec![config, layer],
                manifests: vec![],
                subject: None,
                artifact_type: Some("application/vnd.oci.image.config.v1+json".into()),
            },
            Event::TagSet {
                repo: RepoName::parse("org1/app1").unwrap(),
                tag: Tag::parse("v42").unwrap(),
                digest: Digest::sha256_of(b"m"),
                previous: None,
            },
        ],
    }
}

fn pieces(c: &mut Criterion) {
    let entry = sample_manifest_entry();
    let payload = encode_payload(&entry).unwrap();
    let mut record = Vec::new();
    encode_record(&mut record, 7, EPOCH_UNIX_NS, 0x1234_5678, &payload);

    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(4096);
    group.bench_function(
        BenchmarkId::new("encode", format!("{}B", record.len())),
        |b| {
            b.iter(|| {
                out.clear();
                let payload = encode_payload(black_box(&entry)).unwrap();
                encode_record(&mut out, 7, EPOCH_UNIX_NS, 0x1234_5678, &payload)
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("decode", format!("{}B", record.len())),
        |b| {
            b.iter(|| {
                let r = read_record(black_box(&record)).unwrap();
                decode_payload(r.payload).unwrap()
            })
        },
    );
    group.finish();

    let mut group = c.benchmark_group("crc32");
    let block = vec![0xa5u8; 4096];
    group.throughput(Throughput::Bytes(block.len() as u64));
    group.bench_function("4KiB", |b| b.iter(|| crc32fast::hash(black_box(&block))));
    group.finish();

    // One entry applied to a state of 100 repositories with 50 manifests
    // and tags each.
    let mut state = State::default();
    let mut seq = 0;
    for r in 0..100 {
        let repo = RepoName::parse(&format!("org{}/app{r}", r % 10)).unwrap();
        for m in 0..50 {
            let body = Bytes::from(format!("{{\"r\":{r},\"m\":{m}}}"));
            seq += 1;
            state.apply(
                seq,
                EPOCH_UNIX_NS,
                &Entry {
                    actor: Actor::default(),
                    events: vec![
                        Event::ManifestPut {
                            repo: repo.clone(),
                            digest: Digest::sha256_of(&body),
                            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                            body: body.clone(),
                            blobs: vec![],
                            manifests: vec![],
                            subject: None,
                            artifact_type: None,
                        },
                        Event::TagSet {
                            repo: repo.clone(),
                            tag: Tag::parse(&format!("v{m}")).unwrap(),
                            digest: Digest::sha256_of(&body),
                            previous: None,
                        },
                    ],
                },
            );
        }
    }
    let mut group = c.benchmark_group("state_apply");
    group.throughput(Throughput::Elements(1));
    let tag_move = Entry {
        actor: Actor::anonymous(Some("10.0.0.1:40000".into())),
        events: vec![Event::TagSet {
            repo: RepoName::parse("org5/app55").unwrap(),
            tag: Tag::parse("latest").unwrap(),
            digest: Digest::sha256_of(b"m"),
            previous: None,
        }],
    };
    for (name, e) in [("tag_set", &tag_move), ("manifest_put_and_tag", &entry)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let seq = state.last_seq + 1;
                state.apply(seq, EPOCH_UNIX_NS, black_box(e));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pieces, append, replay);
criterion_main!(benches);
