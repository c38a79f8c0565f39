//! Power loss, simulated. The kill test (`tests/kill.rs`) cannot lose the
//! page cache, so it cannot tell whether an fsync is missing; this test
//! can. The write path runs on [`SimFs`], which remembers what an fsync
//! made durable and forgets the rest at a random crash point (a torn
//! prefix of pending writes may survive). The crash image is written to a
//! real directory and the *real* recovery (`startup::open`) runs on it.
//! Then the invariants:
//!
//! - recovery starts (it never refuses a log that only lost unsynced data;
//!   a torn tail is cut) and never panics;
//! - every entry acknowledged before the crash is in the recovered log,
//!   with the same sequence number and byte-identical events, and so is
//!   everything an earlier recovery had found;
//! - the state served (snapshot + tail) is the fold of the recovered log;
//! - every blob the state knows has its file, whose bytes hash to its
//!   digest; every file in the store matches its name;
//! - every open upload's staging file holds the bytes of its acknowledged
//!   chunks, after the server's startup reconciliation (which must not
//!   cancel any: an acknowledged chunk is never lost), under its own name
//!   only; and an upload whose closing step the power cut short finishes
//!   when the client retries it.
//!
//! The workload is the write path as the server runs it: concurrent
//! commands through the group-commit writer, segments small enough to roll
//! every few commits, snapshots by the scheduler, blob commits and chunks
//! through the blob store as the upload handlers do them, and sometimes a
//! transient ENOSPC/EIO that the writer must heal from. Each trial runs
//! several crash-recover epochs on the same data directory.
//!
//! `FERRO_POWERLOSS_TRIALS=2000 cargo test --release --test powerloss --
//! --nocapture` is the long mode (the default is 100 trials, 3 crashes each).

use ferro::storage::sim::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use ferro::blobs::{new_upload_id, BlobStore};
use ferro::commands::{Chunk, Command};
use ferro::config::{HistoryConfig, SnapshotConfig};
use ferro::datadir::Layout;
use ferro::events::{Actor, Event};
use ferro::log::recovery;
use ferro::log::{Durability, LogWriter, RecoveryMode, ReplayFrom, SubmitError, WriterOptions};
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;
use ferro::reconcile::reconcile_uploads;
use ferro::snapshot::scheduler::Scheduler;
use ferro::startup;
use ferro::storage::sim::{Fault, FaultOp, SimFs, EIO, ENOSPC};
use ferro::storage::Fs;

const SEGMENT_BYTES_MAX: u64 = 3 * 1024;
const TASKS: usize = 3;
const STEPS_PER_TASK: usize = 10;
const EPOCHS: usize = 3;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// What the test knows must survive.
#[derive(Default)]
struct Model {
    /// Entries that must be in the log: acknowledged, or found by an
    /// earlier recovery (which made them durable).
    entries: BTreeMap<u64, Vec<Event>>,
    /// Every upload's intended bytes (its acknowledged chunks are prefixes).
    uploads: BTreeMap<String, Vec<u8>>,
    /// Uploads whose closing step started: their staging file may have
    /// moved into the store before the completion was logged.
    finishing: BTreeSet<String>,
    /// Uploads whose completion was acknowledged, with its sequence number.
    completed: BTreeMap<String, u64>,
    /// Entries acknowledged, in all epochs.
    acknowledged: u64,
}

/// Where a trial's data directories live: memory when possible, so the
/// real recovery's fsyncs cost nothing.
fn temp_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn options(durability: Durability) -> WriterOptions {
    WriterOptions {
        durability,
        segment_bytes_max: SEGMENT_BYTES_MAX,
    }
}

fn snapshot_config() -> SnapshotConfig {
    SnapshotConfig {
        every_records: 0,
        every_bytes: 0,
        keep: 2,
        on_shutdown: false,
    }
}

/// What a workload task needs.
struct Ctx {
    writer: LogWriter,
    state: Arc<parking_lot::RwLock<State>>,
    store: BlobStore,
    sim: SimFs,
    scheduler: Arc<Scheduler>,
    model: Arc<Mutex<Model>>,
    /// The last sequence number an explicit sync made durable (interval
    /// durability's guarantee).
    synced_seq: Arc<Mutex<u64>>,
}

enum Outcome {
    Done,
    /// The power is gone: stop.
    Dead,
}

impl Ctx {
    /// Submits; records the entry when acknowledged. `Err(Dead)` when the
    /// power is gone; other failures (a transient fault) are `Ok(None)`.
    async fn submit(&self, command: Command) -> Result<Option<u64>, Outcome> {
        match self.writer.submit(Actor::system(), command).await {
            Ok(c) => {
                if let Some(seq) = c.seq {
                    let mut m = self.model.lock();
                    m.entries.insert(seq, c.events);
                    m.acknowledged += 1;
                }
                Ok(c.seq)
            }
            Err(SubmitError::Rejected(_)) => Ok(None),
            Err(_) if self.sim.crashed().is_some() => Err(Outcome::Dead),
            Err(_) => Ok(None),
        }
    }

    fn dead_or_skip<T>(&self, r: std::io::Result<T>) -> Result<Option<T>, Outcome> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(_) if self.sim.crashed().is_some() => Err(Outcome::Dead),
            Err(_) => Ok(None),
        }
    }

    /// `POST ?digest=` as the handler does it: stream to a staging file,
    /// fsync, commit to the store, then log the link.
    async fn monolithic(&self, repo: &RepoName, bytes: Vec<u8>) -> Result<(), Outcome> {
        let digest = Digest::sha256_of(&bytes);
        let store = self.store.clone();
        let staging = store.one_shot_staging_path(&digest, &new_upload_id());
        let d = digest.clone();
        let size = bytes.len() as u64;
        let r = tokio::task::spawn_blocking(move || {
            let mut w = store.open_one_shot_staging(&staging)?;
            w.write(&bytes)?;
            store.commit_staging(w, &d)
        })
        .await
        .unwrap();
        if self.dead_or_skip(r)?.is_none() {
            return Ok(());
        }
        self.submit(Command::LinkUploadedBlob {
            repo: repo.clone(),
            digest,
            size,
        })
        .await?;
        Ok(())
    }

    /// POST, PATCH × 2, PUT with the last bytes, as the handlers do them;
    /// sometimes left open after the first chunk.
    async fn chunked(&self, repo: &RepoName, bytes: Vec<u8>, finish: bool) -> Result<(), Outcome> {
        let id = new_upload_id();
        self.model.lock().uploads.insert(id.clone(), bytes.clone());
        let started = self
            .submit(Command::StartUpload {
                repo: repo.clone(),
                upload: id.clone(),
            })
            .await?;
        if started.is_none() {
            return Ok(());
        }
        let staging = self.store.staging_path(&id);
        let cuts = [0, bytes.len() / 3, 2 * bytes.len() / 3, bytes.len()];
        for (i, w) in cuts.windows(2).enumerate() {
            let (a, b) = (w[0] as u64, w[1] as u64);
            let chunk = bytes[w[0]..w[1]].to_vec();
            let crc32 = crc32fast::hash(&chunk);
            let store = self.store.clone();
            let path = staging.clone();
            if i < 2 {
                let r = tokio::task::spawn_blocking(move || {
                    let mut w = store.open_staging(&path, a)?;
                    w.write(&chunk)?;
                    store.make_chunk_durable(&*w.file, a)
                })
                .await
                .unwrap();
                if self.dead_or_skip(r)?.is_none() {
                    return Ok(());
                }
                let logged = self
                    .submit(Command::AppendChunk {
                        upload: id.clone(),
                        offset: a,
                        length: b - a,
                        crc32,
                    })
                    .await?;
                if logged.is_none() || (i == 0 && !finish) {
                    return Ok(());
                }
            } else {
                let digest = Digest::sha256_of(&bytes);
                let d = digest.clone();
                self.model.lock().finishing.insert(id.clone());
                let r = tokio::task::spawn_blocking(move || {
                    let mut w = store.open_staging(&path, a)?;
                    w.write(&chunk)?;
                    store.link_staging(w, &d)
                })
                .await
                .unwrap();
                if self.dead_or_skip(r)?.is_none() {
                    // As the handler does: the staging file goes back to
                    // what the log acknowledged.
                    let (store, path) = (self.store.clone(), staging.clone());
                    let r = tokio::task::spawn_blocking(move || store.restore_staging(&path, a))
                        .await
                        .unwrap();
                    self.dead_or_skip(r)?;
                    return Ok(());
                }
                let logged = self
                    .submit(Command::CompleteUpload {
                        upload: id.clone(),
                        digest,
                        size: b,
                        last_chunk: Some(Chunk {
                            offset: a,
                            length: b - a,
                            crc32,
                        }),
                    })
                    .await?;
                if let Some(seq) = logged {
                    self.model.lock().completed.insert(id.clone(), seq);
                }
                let (store, path) = (self.store.clone(), staging.clone());
                let r = tokio::task::spawn_blocking(move || match logged {
                    // The staging name goes only once the completion is
                    // logged.
                    Some(_) => store.remove_staging(&path),
                    None => store.restore_staging(&path, a),
                })
                .await
                .unwrap();
                self.dead_or_skip(r)?;
            }
        }
        Ok(())
    }

    async fn put_manifest(&self, repo: &RepoName, rng: &mut Rng) -> Result<(), Outcome> {
        let blobs: Vec<(Digest, u64)> = {
            let state = self.state.read();
            match state.repos.get(repo) {
                Some(r) => r.blobs.iter().map(|(d, s)| (d.clone(), *s)).collect(),
                None => Vec::new(),
            }
        };
        if blobs.is_empty() {
            return Ok(());
        }
        let picked: Vec<&(Digest, u64)> = (0..1 + rng.below(2))
            .map(|_| &blobs[rng.below(blobs.len() as u64) as usize])
            .collect();
        let layers: Vec<String> = picked
            .iter()
            .map(|(d, s)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#))
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","layers":[{}],"annotations":{{"n":"{}"}}}}"#,
            layers.join(","),
            rng.next()
        );
        let mut refs: Vec<Digest> = picked.iter().map(|(d, _)| d.clone()).collect();
        refs.sort();
        refs.dedup();
        self.submit(Command::PutManifest {
            repo: repo.clone(),
            digest: Digest::sha256_of(body.as_bytes()),
            media_type: MANIFEST.into(),
            body: Bytes::from(body),
            blobs: refs,
            manifests: vec![],
            subject: None,
            artifact_type: None,
            tags: vec![Tag::parse(&format!("t{}", rng.below(3))).unwrap()],
        })
        .await?;
        Ok(())
    }

    async fn delete_something(&self, repo: &RepoName, rng: &mut Rng) -> Result<(), Outcome> {
        let (tag, manifest) = {
            let state = self.state.read();
            let Some(r) = state.repos.get(repo) else {
                return Ok(());
            };
            (
                r.tags.keys().next().cloned(),
                r.manifests.keys().last().cloned(),
            )
        };
        let command = match (rng.below(2), tag, manifest) {
            (0, Some(tag), _) => Command::DeleteTag {
                repo: repo.clone(),
                tag,
            },
            (_, _, Some(digest)) => Command::DeleteManifest {
                repo: repo.clone(),
                digest,
            },
            _ => return Ok(()),
        };
        self.submit(command).await?;
        Ok(())
    }

    async fn task(self: Arc<Self>, index: usize, mut rng: Rng) -> Outcome {
        let repo = RepoName::parse(&format!("pl/r{index}")).unwrap();
        for _ in 0..STEPS_PER_TASK {
            let step = match rng.below(12) {
                0..=2 => {
                    let n = 1 + rng.below(3000) as usize;
                    self.monolithic(&repo, rng.bytes(n)).await
                }
                3..=5 => {
                    let n = 3 + rng.below(6000) as usize;
                    let finish = rng.below(3) != 0;
                    self.chunked(&repo, rng.bytes(n), finish).await
                }
                6..=8 => self.put_manifest(&repo, &mut rng).await,
                9 => self.delete_something(&repo, &mut rng).await,
                10 => {
                    // Everything applied before the request is written.
                    let seq = self.writer.tip().seq();
                    match self.writer.sync().await {
                        Ok(()) => {
                            let mut s = self.synced_seq.lock();
                            *s = (*s).max(seq);
                            Ok(())
                        }
                        Err(_) if self.sim.crashed().is_some() => Err(Outcome::Dead),
                        Err(_) => Ok(()),
                    }
                }
                _ => match self.scheduler.take("test").await {
                    Ok(_) => Ok(()),
                    Err(_) if self.sim.crashed().is_some() => Err(Outcome::Dead),
                    Err(_) => Ok(()),
                },
            };
            if let Err(outcome) = step {
                return outcome;
            }
        }
        Outcome::Done
    }
}

/// One epoch: open the data directory on a fresh simulation, run the
/// workload with a crash (and maybe a fault) scheduled, cut the power.
/// Returns the crash image and the simulation's operation count.
fn run_epoch(
    runtime: &tokio::runtime::Runtime,
    root: &Path,
    durability: Durability,
    model: &Arc<Mutex<Model>>,
    rng: &mut Rng,
    crash_at: Option<u64>,
    setup: &dyn Fn(&SimFs, &Layout),
) -> Result<(ferro::storage::sim::CrashImage, u64, u64), String> {
    let layout = Layout::new(root);
    let sim = SimFs::new(root).map_err(|e| e.to_string())?;
    setup(&sim, &layout);
    if let Some(at) = crash_at {
        sim.crash_after(at, rng.next());
    }
    if rng.below(4) == 0 {
        let ops = [
            FaultOp::Write,
            FaultOp::Sync,
            FaultOp::SyncDir,
            FaultOp::Rename,
            FaultOp::Open,
        ];
        let mut fault = Fault::always(
            ops[rng.below(ops.len() as u64) as usize],
            if rng.below(2) == 0 { ENOSPC } else { EIO },
        )
        .once();
        fault.after = rng.below(150);
        sim.add_fault(fault);
    }
    let fs: Fs = Arc::new(sim.clone());
    let store = BlobStore::new_with_fs(&layout, fs.clone());
    // Half the runs make the blob prefix directories up front, as the
    // server does at startup; the others make each on first use.
    let prepare_dirs = rng.below(2) == 0;
    // The uploads directory exists, as `DataDir::open` makes it.
    let started = ferro::fsutil::create_dir_all_durable_with(&*fs, &layout.uploads_dir())
        .and_then(|()| match prepare_dirs {
            true => store.prepare_dirs(),
            false => Ok(()),
        })
        .map_err(|e| startup::StartupError::Log(e.into()))
        .and_then(|()| {
            startup::open_with_fs(
                &layout,
                RecoveryMode::TolerateTornTail,
                options(durability),
                fs.clone(),
            )
        });
    let started = match started {
        Ok(s) => s,
        // The power may go (or a fault hit) before the writer started.
        Err(e) if sim.crashed().is_some() || sim.stats().failures > 0 => {
            let image = sim.crash_now(rng.next());
            let _ = e;
            return Ok((image, sim.stats().ops, 0));
        }
        Err(e) => return Err(format!("startup on the simulated disk failed: {e}")),
    };
    let opened = started.log;
    let synced_seq = Arc::new(Mutex::new(opened.report.last_seq));
    let scheduler = Scheduler::new_with_fs(
        layout.clone(),
        opened.state.clone(),
        opened.writer.clone(),
        snapshot_config(),
        HistoryConfig::default(),
        started.snapshot.as_ref().map(|(_, s)| *s).unwrap_or(0),
        fs.clone(),
    );
    let ctx = Arc::new(Ctx {
        writer: opened.writer.clone(),
        state: opened.state.clone(),
        store,
        sim: sim.clone(),
        scheduler,
        model: model.clone(),
        synced_seq: synced_seq.clone(),
    });
    let seeds: Vec<u64> = (0..TASKS).map(|_| rng.next()).collect();
    runtime.block_on(async {
        let tasks: Vec<_> = seeds
            .into_iter()
            .enumerate()
            .map(|(i, seed)| tokio::spawn(ctx.clone().task(i, Rng(seed))))
            .collect();
        for t in tasks {
            t.await.expect("workload task panicked");
        }
    });
    // The power goes now if it has not yet: no clean shutdown.
    let image = sim.crash_now(rng.next());
    let ops = sim.stats().ops;
    drop(ctx);
    drop(opened.writer);
    opened.writer_thread.join().expect("writer thread panicked");
    let synced = *synced_seq.lock();
    Ok((image, ops, synced))
}

/// The real recovery on `root`, and every invariant. Updates the model
/// with what recovery found (it is durable from now on).
fn recover_and_check(
    runtime: &tokio::runtime::Runtime,
    root: &Path,
    model: &Mutex<Model>,
    must_have_up_to: Option<u64>,
) -> Result<(), String> {
    let layout = Layout::new(root);
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        startup::open(
            &layout,
            RecoveryMode::TolerateTornTail,
            options(Durability::Always),
        )
    }))
    .map_err(|_| "recovery panicked".to_string())?
    .map_err(|e| format!("recovery refused to start: {e}"))?;
    // The server's own reconciliation of staging files, as it runs before
    // serving; the staging directory exists, as `DataDir::open` makes it.
    std::fs::create_dir_all(layout.uploads_dir()).map_err(|e| e.to_string())?;
    let store = BlobStore::new(&layout);
    let report = runtime
        .block_on(reconcile_uploads(
            &started.log.state,
            &store,
            &started.log.writer,
        ))
        .map_err(|e| format!("reconciling staging files failed: {e}"))?;
    let lost: Vec<&(String, u64, u64)> = {
        let m = model.lock();
        report
            .lost
            .iter()
            .filter(|(id, _, _)| {
                // Under interval durability a completion acknowledged after
                // the last sync may be dropped, and with it the upload's
                // staging name (removed once the completion was
                // acknowledged): the upload comes back cancelled.
                let dropped_completion = must_have_up_to
                    .is_some_and(|synced| m.completed.get(id).is_some_and(|seq| *seq > synced));
                !dropped_completion
            })
            .collect()
    };
    if !lost.is_empty() {
        return Err(format!(
            "startup cancelled uploads for lost acknowledged bytes (id, acknowledged, found): {:?}",
            lost
        ));
    }
    let resumed = runtime.block_on(retry_closing_steps(&started, &store, model))?;
    let served = started.log.state.read().clone();
    drop(started.log.writer);
    started
        .log
        .writer_thread
        .join()
        .map_err(|_| "writer thread panicked")?;

    // The whole log, as it is now.
    let mut log: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    let mut folded = State::default();
    recovery::recover(
        &layout.log_dir(),
        ReplayFrom::default(),
        RecoveryMode::Strict,
        &mut |seq, time, entry| {
            folded.apply(seq, time, &entry);
            log.insert(seq, entry.events);
        },
    )
    .map_err(|e| format!("the recovered log does not read back strictly: {e}"))?;
    if folded != served {
        return Err(format!(
            "the state served (snapshot + tail, at {}) is not the fold of the log (at {})",
            served.last_seq, folded.last_seq
        ));
    }
    let mut m = model.lock();
    for (seq, events) in &m.entries {
        if must_have_up_to.is_some_and(|s| *seq > s) {
            continue;
        }
        match log.get(seq) {
            None => {
                return Err(format!(
                    "acknowledged entry {seq} lost (log ends at {})",
                    folded.last_seq
                ))
            }
            Some(got) if got != events => {
                return Err(format!("acknowledged entry {seq} changed"));
            }
            Some(_) => {}
        }
    }

    // Blobs: every one the state knows is whole; every file matches.
    for (digest, size) in &served.blobs {
        let bytes = std::fs::read(store.blob_path(digest))
            .map_err(|e| format!("blob {digest} in the state has no file: {e}"))?;
        if bytes.len() as u64 != *size || Digest::sha256_of(&bytes) != *digest {
            return Err(format!("blob {digest}: file does not match"));
        }
    }
    for (name, repo) in &served.repos {
        for (digest, manifest) in &repo.manifests {
            for b in &manifest.blobs {
                if !repo.blobs.contains_key(b) || !store.blob_path(b).is_file() {
                    return Err(format!(
                        "manifest {digest} in {name} refers to missing blob {b}"
                    ));
                }
            }
        }
    }
    check_store_files(&layout.blobs_dir())?;

    // Open uploads keep their acknowledged bytes.
    for (id, upload) in &served.uploads {
        let intended = m
            .uploads
            .get(id)
            .ok_or_else(|| format!("upload {id} unknown to the test"))?;
        let bytes = std::fs::read(store.staging_path(id)).unwrap_or_default();
        let size = upload.size as usize;
        let links = std::fs::metadata(store.staging_path(id))
            .map(|meta| ferro::blobs::link_count(&meta))
            .unwrap_or(1);
        if links > 1 {
            return Err(format!(
                "upload {id}: its staging file is also a blob's name (resuming it would write to the blob)"
            ));
        }
        if bytes.len() < size || bytes[..size] != intended[..size] {
            return Err(format!(
                "upload {id}: {} acknowledged bytes, staging file has {} matching",
                size,
                bytes
                    .iter()
                    .zip(intended)
                    .take_while(|(a, b)| a == b)
                    .count()
            ));
        }
    }
    for (id, digest) in &resumed {
        if served.uploads.contains_key(id) {
            return Err(format!(
                "upload {id}: the retried closing step did not complete it"
            ));
        }
        if !served.blobs.contains_key(digest) {
            return Err(format!(
                "upload {id}: retried, but blob {digest} is not in the state"
            ));
        }
    }
    // What this recovery found is durable now; later crashes must keep it.
    m.entries = log;
    Ok(())
}

/// What a client does after the power came back: retries the closing PUT
/// of each upload whose closing step was cut short, from the offset the
/// server reports (the upload's logged size). Returns the uploads retried
/// and their digests; an upload that cannot be finished is an error.
async fn retry_closing_steps(
    started: &startup::Started,
    store: &BlobStore,
    model: &Mutex<Model>,
) -> Result<Vec<(String, Digest)>, String> {
    let open: Vec<(String, u64)> = started
        .log
        .state
        .read()
        .uploads
        .iter()
        .map(|(id, u)| (id.clone(), u.size))
        .collect();
    let mut resumed = Vec::new();
    for (id, size) in open {
        let intended = {
            let m = model.lock();
            if !m.finishing.contains(&id) {
                continue;
            }
            m.uploads.get(&id).cloned().unwrap_or_default()
        };
        if (size as usize) > intended.len() {
            return Err(format!("upload {id}: more bytes logged than it has"));
        }
        let digest = Digest::sha256_of(&intended);
        let rest = intended[size as usize..].to_vec();
        let crc32 = crc32fast::hash(&rest);
        let (s, path, d) = (store.clone(), store.staging_path(&id), digest.clone());
        tokio::task::spawn_blocking(move || {
            let mut w = s.open_staging(&path, size)?;
            w.write(&rest)?;
            s.link_staging(w, &d)
        })
        .await
        .unwrap()
        .map_err(|e| format!("upload {id}: retrying its closing step: {e}"))?;
        started
            .log
            .writer
            .submit(
                Actor::system(),
                Command::CompleteUpload {
                    upload: id.clone(),
                    digest: digest.clone(),
                    size: intended.len() as u64,
                    last_chunk: Some(Chunk {
                        offset: size,
                        length: intended.len() as u64 - size,
                        crc32,
                    }),
                },
            )
            .await
            .map_err(|e| format!("upload {id}: its retried completion was refused: {e}"))?;
        store
            .remove_staging(&store.staging_path(&id))
            .map_err(|e| format!("upload {id}: removing its staging name: {e}"))?;
        resumed.push((id, digest));
    }
    Ok(resumed)
}

fn check_store_files(dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        if path.is_dir() {
            check_store_files(&path)?;
        } else {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if ferro::blobs::staging_leftover_digest(&name).is_some() {
                // A one-shot upload's staging file cut short by the crash:
                // never named by an event, removed by garbage collection.
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            if Digest::sha256_of(&bytes).hex() != name {
                return Err(format!(
                    "store file {} does not match its name",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn trials(default: u64) -> u64 {
    std::env::var("FERRO_POWERLOSS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one trial: `EPOCHS` crash-recover rounds. Returns the first
/// invariant that failed, with enough context to reproduce.
fn trial(
    runtime: &tokio::runtime::Runtime,
    seed: u64,
    durability: Durability,
    ops_span: u64,
    setup: &dyn Fn(&SimFs, &Layout),
    stats: &mut Totals,
) -> Result<(), String> {
    let tmp = temp_root();
    let mut rng = Rng(seed);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut root: PathBuf = tmp.path().join("d0");
    std::fs::create_dir(&root).unwrap();
    for epoch in 0..EPOCHS {
        let crash_at = rng.below(ops_span);
        let (image, ops, synced) = run_epoch(
            runtime,
            &root,
            durability,
            &model,
            &mut rng,
            Some(crash_at),
            setup,
        )
        .map_err(|e| format!("seed {seed:#x} epoch {epoch}: {e}"))?;
        stats.crashes += 1;
        stats.ops += ops;
        let next = tmp.path().join(format!("d{}", epoch + 1));
        std::fs::create_dir(&next).unwrap();
        image.materialize(&next).unwrap();
        let must_have = match durability {
            Durability::Always => None,
            _ => Some(synced),
        };
        recover_and_check(runtime, &next, &model, must_have).map_err(|e| {
            format!("seed {seed:#x} epoch {epoch} (crash before op {crash_at} of {ops}): {e}")
        })?;
        let _ = std::fs::remove_dir_all(&root);
        root = next;
    }
    stats.acknowledged += model.lock().acknowledged;
    Ok(())
}

#[derive(Default, Debug)]
struct Totals {
    crashes: u64,
    ops: u64,
    acknowledged: u64,
}

/// About how many file-system operations one epoch makes, so crash points
/// spread over the whole of it.
fn calibrate(runtime: &tokio::runtime::Runtime) -> u64 {
    let tmp = temp_root();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut rng = Rng(1);
    let (_, ops, _) = run_epoch(
        runtime,
        tmp.path(),
        Durability::Always,
        &model,
        &mut rng,
        None,
        &|_, _| {},
    )
    .unwrap();
    ops.max(50)
}

#[test]
fn acknowledged_writes_survive_power_loss() {
    let runtime = runtime();
    let span = calibrate(&runtime) * 5 / 4;
    let n = trials(100);
    let mut totals = Totals::default();
    for t in 0..n {
        let seed = 0x90_0000 + t;
        if let Err(e) = trial(
            &runtime,
            seed,
            Durability::Always,
            span,
            &|_, _| {},
            &mut totals,
        ) {
            panic!("{e}");
        }
    }
    eprintln!(
        "power loss: {n} trials, {} crash points simulated over {} file-system operations, {} acknowledged entries checked",
        totals.crashes, totals.ops, totals.acknowledged
    );
    assert!(
        totals.acknowledged > n,
        "the workload got work acknowledged"
    );
}

#[test]
fn interval_durability_keeps_what_was_synced() {
    let runtime = runtime();
    let span = calibrate(&runtime) * 5 / 4;
    let n = trials(100) / 4;
    let mut totals = Totals::default();
    for t in 0..n {
        let seed = 0x1a_0000 + t;
        let durability = Durability::Interval {
            interval_ms: 60_000,
        };
        if let Err(e) = trial(&runtime, seed, durability, span, &|_, _| {}, &mut totals) {
            panic!("{e}");
        }
    }
    eprintln!("interval durability: {} crash points", totals.crashes);
}

/// Runs trials with a mutation that models a missing fsync; at least one
/// must break an invariant, or the simulation could not see the bug.
fn mutation_is_caught(name: &str, setup: &dyn Fn(&SimFs, &Layout)) {
    let runtime = runtime();
    let span = calibrate(&runtime) * 5 / 4;
    let mut totals = Totals::default();
    for t in 0..40 {
        if let Err(e) = trial(
            &runtime,
            0x3000 + t,
            Durability::Always,
            span,
            setup,
            &mut totals,
        ) {
            eprintln!("{name}: caught after {} crashes: {e}", totals.crashes + 1);
            return;
        }
    }
    panic!("{name}: 40 trials and no invariant broke; the simulation cannot see it");
}

#[test]
fn a_segment_created_without_a_directory_fsync_is_caught() {
    // Every fsync of log/ does nothing: exactly what leaving out the
    // directory fsync after creating (renaming) a segment would do.
    mutation_is_caught(
        "no fsync of log/ after a segment is created",
        &|sim, layout| {
            sim.ignore_dir_syncs(&layout.log_dir());
        },
    );
}

#[test]
fn a_staging_file_created_without_a_directory_fsync_is_caught() {
    // Without the fsync of uploads/ after the first chunk, the staging file
    // of an acknowledged chunk can vanish with the power.
    mutation_is_caught(
        "no fsync of uploads/ after the first chunk",
        &|sim, layout| {
            sim.ignore_dir_syncs(&layout.uploads_dir());
        },
    );
}

#[test]
fn a_cut_between_the_closing_link_and_its_entry_leaves_the_upload_resumable() {
    // The closing step of a chunked upload makes the blob's name durable
    // before the completion is logged. A cut right there used to leave the
    // log saying "N bytes staged" and no staging file: startup cancelled
    // the upload ("lost acknowledged bytes") and the client's retry got
    // 404. The staging name must survive until the completion is logged.
    let runtime = runtime();
    let tmp = temp_root();
    let root = tmp.path().join("before");
    std::fs::create_dir(&root).unwrap();
    let layout = Layout::new(&root);
    let sim = SimFs::new(&root).unwrap();
    let fs: Fs = Arc::new(sim.clone());
    ferro::fsutil::create_dir_all_durable_with(&*fs, &layout.uploads_dir()).unwrap();
    let store = BlobStore::new_with_fs(&layout, fs.clone());
    store.prepare_dirs().unwrap();
    let started = startup::open_with_fs(
        &layout,
        RecoveryMode::TolerateTornTail,
        options(Durability::Always),
        fs,
    )
    .unwrap();
    let writer = started.log.writer.clone();
    let repo = RepoName::parse("pl/cut").unwrap();
    let id = new_upload_id();
    let bytes: Vec<u8> = Rng(7).bytes(5000);
    let digest = Digest::sha256_of(&bytes);
    let staging = store.staging_path(&id);
    runtime.block_on(async {
        writer
            .submit(
                Actor::system(),
                Command::StartUpload {
                    repo: repo.clone(),
                    upload: id.clone(),
                },
            )
            .await
            .unwrap();
        let mut w = store.open_staging(&staging, 0).unwrap();
        w.write(&bytes[..3000]).unwrap();
        store.make_chunk_durable(&*w.file, 0).unwrap();
        writer
            .submit(
                Actor::system(),
                Command::AppendChunk {
                    upload: id.clone(),
                    offset: 0,
                    length: 3000,
                    crc32: crc32fast::hash(&bytes[..3000]),
                },
            )
            .await
            .unwrap();
        // The closing PUT with the last 2000 bytes, as the handler does it,
        // up to the point where its completion would be logged.
        let mut w = store.open_staging(&staging, 3000).unwrap();
        w.write(&bytes[3000..]).unwrap();
        store.link_staging(w, &digest).unwrap();
    });
    // The power goes: only what was made durable survives.
    sim.crash_now(1);
    let durable = sim.durable_image();
    drop(writer);
    drop(started.log.writer);
    started.log.writer_thread.join().unwrap();
    let after = tmp.path().join("after");
    std::fs::create_dir(&after).unwrap();
    durable.materialize(&after).unwrap();

    let layout = Layout::new(&after);
    let store = BlobStore::new(&layout);
    let started = startup::open(
        &layout,
        RecoveryMode::TolerateTornTail,
        options(Durability::Always),
    )
    .unwrap();
    let report = runtime
        .block_on(reconcile_uploads(
            &started.log.state,
            &store,
            &started.log.writer,
        ))
        .unwrap();
    assert!(
        report.lost.is_empty(),
        "no acknowledged byte was lost: {report:?}"
    );
    assert_eq!(report.unshared, vec![id.clone()]);
    assert_eq!(started.log.state.read().uploads[&id].size, 3000);
    let staging = store.staging_path(&id);
    assert_eq!(std::fs::read(&staging).unwrap(), &bytes[..3000]);
    // The orphan blob kept every byte: the copy did not cut it.
    assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);

    // The client's retry of the closing PUT finishes the upload.
    let model = Mutex::new(Model::default());
    {
        let mut m = model.lock();
        m.uploads.insert(id.clone(), bytes.clone());
        m.finishing.insert(id.clone());
    }
    let resumed = runtime
        .block_on(retry_closing_steps(&started, &store, &model))
        .unwrap();
    assert_eq!(resumed, vec![(id.clone(), digest.clone())]);
    let state = started.log.state.read().clone();
    assert!(!state.uploads.contains_key(&id));
    assert_eq!(state.repos[&repo].blobs[&digest], 5000);
    assert!(!staging.exists(), "the staging name goes once completed");
    assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);
}
