//! Compaction keeps the state byte for byte, keeps every record the
//! retention asks for, and leaves a startable log at every step.
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferro::commands::Command;
use ferro::compaction::{self, CompactOptions, CompactedSegments, Retention};
use ferro::datadir::Layout;
use ferro::events::Actor;
use ferro::log::recovery::{self, ReadOptions, RecoveryMode};
use ferro::log::segment::list_segments;
use ferro::log::{Durability, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::replay::{self, AsOf, ReplayError};
use ferro::snapshot::{self, format::encode_state};
use ferro::startup;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn options() -> WriterOptions {
    WriterOptions {
        durability: Durability::Never,
        segment_bytes_max: 4096,
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Opens the directory as the server does, pushes `images` images (a blob
/// link and a tagged manifest each), snapshots the end, and closes.
fn write_images(rt: &tokio::runtime::Runtime, layout: &Layout, from: usize, images: usize) {
    let started = startup::open(layout, RecoveryMode::Strict, options()).unwrap();
    let writer = started.log.writer.clone();
    rt.block_on(async {
        let repo = RepoName::parse("app").unwrap();
        for i in from..from + images {
            let blob = Digest::sha256_of(format!("blob {i}").as_bytes());
            writer
                .submit(
                    Actor::system(),
                    Command::LinkUploadedBlob {
                        repo: repo.clone(),
                        digest: blob.clone(),
                        size: 10,
                    },
                )
                .await
                .unwrap();
            let body = format!(r#"{{"schemaVersion":2,"n":{i},"layers":["{blob}"]}}"#);
            writer
                .submit(
                    Actor::system(),
                    Command::PutManifest {
                        repo: repo.clone(),
                        digest: Digest::sha256_of(body.as_bytes()),
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        body: Bytes::from(body),
                        blobs: vec![blob],
                        manifests: vec![],
                        subject: None,
                        artifact_type: None,
                        tags: vec![Tag::parse(&format!("t{}", i % 7)).unwrap()],
                    },
                )
                .await
                .unwrap();
        }
    });
    {
        let state = started.log.state.read();
        let tip = writer.tip();
        assert_eq!(tip.seq(), state.last_seq);
        snapshot::write(&layout.snapshots_dir(), &state, tip.crc()).unwrap();
    }
    drop(writer);
    let ferro::log::OpenedLog {
        writer,
        writer_thread,
        ..
    } = started.log;
    drop(writer);
    writer_thread.join().unwrap();
}

/// The state startup rebuilds, serialized.
fn startup_state(layout: &Layout) -> Vec<u8> {
    let started = startup::open(layout, RecoveryMode::Strict, options()).unwrap();
    assert!(started.rejected.is_empty(), "{:?}", started.rejected);
    let bytes = encode_state(&started.log.state.read()).unwrap();
    let ferro::log::OpenedLog {
        writer,
        writer_thread,
        ..
    } = started.log;
    drop(writer);
    writer_thread.join().unwrap();
    bytes
}

fn compact(layout: &Layout, retention: Retention) -> compaction::CompactionReport {
    compaction::compact(
        layout,
        &CompactOptions {
            retention,
            now_unix_ns: now_unix_ns(),
            compacted_segments: CompactedSegments::Archive,
            snapshots_keep: 1,
            keep_after_seq: None,
        },
    )
    .unwrap()
}

/// (seq, time) of every record in `log_dir`.
fn records(log_dir: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    recovery::read_log(
        log_dir,
        &ReadOptions {
            mode: RecoveryMode::Strict,
            ..ReadOptions::default()
        },
        &mut |r| {
            out.push((r.seq, r.time_unix_ns));
            Ok(ControlFlow::Continue(()))
        },
    )
    .unwrap();
    out
}

#[test]
fn compaction_keeps_the_state_byte_for_byte_and_can_go_on() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path());
    write_images(&rt, &layout, 0, 60);
    let before = startup_state(&layout);
    let segments_before = list_segments(&layout.log_dir()).unwrap().len();
    assert!(segments_before > 5);

    // Forever, and a retention longer than the log's age: nothing moves.
    assert!(compact(&layout, Retention::Forever).moved.is_empty());
    let kept = compact(&layout, Retention::For(Duration::from_secs(3600)));
    assert!(kept.moved.is_empty(), "{:?}", kept.plan);
    assert!(
        kept.plan.limited_by.contains("retention"),
        "{}",
        kept.plan.limited_by
    );

    let report = compact(&layout, Retention::For(Duration::ZERO));
    assert_eq!(report.moved.len(), segments_before - 1);
    let horizon = report.plan.horizon_seq;
    assert!(
        report.written_snapshot.is_some(),
        "a base snapshot at {horizon}"
    );
    assert_eq!(startup_state(&layout), before);
    let live = list_segments(&layout.log_dir()).unwrap();
    assert_eq!(live[0].0, horizon + 1);

    // States within the kept history can be rebuilt; older ones cannot.
    let at = replay::state_as_of(&layout, AsOf::Seq(horizon), &mut |_| {}).unwrap();
    assert_eq!(at.state.last_seq, horizon);
    assert!(matches!(
        replay::state_as_of(&layout, AsOf::Seq(horizon - 1), &mut |_| {}),
        Err(ReplayError::Compacted { earliest, .. }) if earliest == horizon
    ));

    // More writes, another snapshot, compaction again: the base moves on
    // and the old base is pruned.
    write_images(&rt, &layout, 60, 60);
    let before = startup_state(&layout);
    let again = compact(&layout, Retention::For(Duration::ZERO));
    assert!(!again.moved.is_empty());
    assert!(again.plan.horizon_seq > horizon);
    assert_eq!(startup_state(&layout), before);
    let snapshots: Vec<u64> = snapshot::list(&layout.snapshots_dir())
        .unwrap()
        .iter()
        .map(|f| f.seq)
        .collect();
    assert!(snapshots.contains(&again.plan.horizon_seq), "{snapshots:?}");
    assert!(
        !snapshots.contains(&horizon),
        "the old base is pruned: {snapshots:?}"
    );

    // Archive + live log are still the whole chain.
    let whole = tmp.path().join("whole");
    std::fs::create_dir(&whole).unwrap();
    for dir in [tmp.path().join("archive/log"), layout.log_dir()] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), whole.join(entry.file_name())).unwrap();
        }
    }
    let all = records(&whole);
    assert_eq!(all.len() as u64, all.last().unwrap().0);
}

#[test]
fn nothing_the_retention_keeps_leaves_the_log() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path());
    write_images(&rt, &layout, 0, 40);
    std::thread::sleep(Duration::from_millis(30));
    let horizon_time = now_unix_ns();
    std::thread::sleep(Duration::from_millis(30));
    write_images(&rt, &layout, 40, 40);
    let all = records(&layout.log_dir());
    let first_kept = all.iter().find(|(_, t)| *t >= horizon_time).unwrap().0;
    let before = startup_state(&layout);

    let retention = Duration::from_nanos(now_unix_ns() - horizon_time);
    let report = compact(&layout, Retention::For(retention));
    assert!(!report.moved.is_empty(), "{:?}", report.plan);
    let live = records(&layout.log_dir());
    assert!(
        live[0].0 <= first_kept,
        "record {first_kept} is within the retention but the log starts at {}",
        live[0].0
    );
    for (seq, time) in records(&tmp.path().join("archive/log")) {
        assert!(time < horizon_time, "record {seq} left the log too early");
    }
    assert_eq!(startup_state(&layout), before);
}

#[test]
fn a_crash_in_the_middle_of_compaction_leaves_a_startable_log() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let original = Layout::new(tmp.path().join("original"));
    write_images(&rt, &original, 0, 40);
    let before = startup_state(&original);
    // Compact a copy to learn what compaction does.
    let copy = Layout::new(tmp.path().join("copy"));
    copy_tree(&original.root, &copy.root);
    let report = compact(&copy, Retention::For(Duration::ZERO));
    assert!(report.moved.len() >= 2);
    let base = report.base_snapshot.unwrap();

    // On the original, stop after the base snapshot and the first move:
    // compaction's own order (snapshot first, segments oldest first).
    std::fs::copy(
        &base,
        original.snapshots_dir().join(base.file_name().unwrap()),
    )
    .unwrap();
    let first = &report.moved[0].0;
    let first_original = original.log_dir().join(first.file_name().unwrap());
    std::fs::remove_file(&first_original).unwrap();
    assert_eq!(startup_state(&original), before);
    // Compaction run again finishes the job.
    let rest = compact(&original, Retention::For(Duration::ZERO));
    assert_eq!(rest.moved.len(), report.moved.len() - 1);
    assert_eq!(startup_state(&original), before);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
