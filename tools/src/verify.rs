//! `ferroctl verify`: every record's checksum, sequence continuity and the
//! checksum chain; every snapshot's checksums and that it equals the state
//! replayed from the log at its sequence number; every blob the state
//! references (present, right size, and with `--blobs` the right digest);
//! orphan blob and upload files. Read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ferro::blobs::object::{ObjectBlobs, ObjectError, StorageBackend};
use ferro::blobs::BlobStore;
use ferro::datadir::Layout;
use ferro::log::format::SegmentHeader;
use ferro::log::recovery::{self, ReadOptions, RecoveryError, RecoveryMode, TornTail};
use ferro::log::segment::list_segments;
use ferro::oci::Digest;
use ferro::projection::{State, StateSummary};
use ferro::snapshot::{self, SnapshotFile};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{read_only_layout, say, LogProgress, Out};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Also hash every blob and compare with its digest (reads all blob
    /// bytes).
    #[arg(long)]
    pub blobs: bool,
    /// The server's config file: with `[storage] backend = "s3"` the
    /// blobs are checked in the object store (HEAD on each, size match;
    /// with --blobs their bytes hashed), and objects under the prefix that
    /// no event names are listed. `FERRO_STORAGE__*` and the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables apply.
    /// Under its `[[mirrors]]` prefixes, manifests may reference blobs not
    /// fetched yet.
    #[arg(long, env = "FERRO_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct LogCheck {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub torn_tail: Option<TornTail>,
    pub corrupt: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotCheck {
    pub path: PathBuf,
    pub seq: u64,
    /// `ok`: checksums verify and the state equals the replayed one;
    /// `ok_base`: the log starts after it, so it is the replay's base;
    /// `not_compared`: checksums verify, but the log no longer holds its
    /// history; `bad`, `mismatch`, `ahead_of_log`: problems.
    pub status: &'static str,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BlobIssue {
    pub digest: String,
    pub path: PathBuf,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct BlobCheck {
    pub referenced: u64,
    pub present: u64,
    pub bytes: u64,
    pub hashed: bool,
    pub issues: Vec<BlobIssue>,
}

#[derive(Debug, Default, Serialize)]
pub struct Orphans {
    /// Blob files no event names (harmless: an interrupted upload).
    pub blobs: Vec<PathBuf>,
    /// Upload staging files no upload in progress owns.
    pub uploads: Vec<PathBuf>,
    /// Unfinished `.tmp` files and `.broken` tails kept aside.
    pub leftovers: Vec<PathBuf>,
    /// Objects under the store's prefix no event names.
    pub objects: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub data_dir: PathBuf,
    pub log: LogCheck,
    pub snapshots: Vec<SnapshotCheck>,
    pub state: Option<StateSummary>,
    pub blobs: BlobCheck,
    pub orphans: Orphans,
    pub problems: Vec<Problem>,
}

pub fn run(data_dir: &Path, args: &VerifyArgs, out: &Out) -> CtlResult<Exit> {
    let layout = read_only_layout(data_dir)?;
    let mut report = VerifyReport {
        data_dir: data_dir.to_owned(),
        log: LogCheck::default(),
        snapshots: Vec::new(),
        state: None,
        blobs: BlobCheck::default(),
        orphans: Orphans::default(),
        problems: Vec::new(),
    };
    let state = check_log_and_snapshots(&layout, out, &mut report)?;
    if let Some(state) = &state {
        report.state = Some(state.summary());
        let config = settings(args.config.as_deref())?;
        check_state(state, &mirror_prefixes(&config), &mut report);
        match object_store(&config)? {
            Some(objects) => check_objects(&objects, state, args.blobs, out, &mut report)?,
            None => {
                check_blobs(&layout, state, args.blobs, out, &mut report)?;
                find_orphans(&layout, state, &mut report)?;
            }
        }
    }
    find_leftovers(&layout, &mut report)?;
    let exit = if report.log.corrupt.is_some() {
        Exit::Corrupt
    } else if report.problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Problems
    };
    if out.json {
        out.json(&report)?;
    } else {
        print_human(&report);
    }
    Ok(exit)
}

/// Reads the whole log, verifying every record (and decoding every
/// payload), replays it onto the empty state or, when the log was
/// compacted, onto its base snapshot, and compares every snapshot with the
/// replayed state at its sequence number. Returns the final state, or
/// `None` when the log is corrupt.
fn check_log_and_snapshots(
    layout: &Layout,
    out: &Out,
    report: &mut VerifyReport,
) -> CtlResult<Option<State>> {
    let log_dir = layout.log_dir();
    let segments = list_segments(&log_dir)?;
    report.log.segments = segments.len();
    report.log.bytes = segments
        .iter()
        .map(|(_, p)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let log_first_seq = segments.first().map(|(seq, _)| *seq);
    let files = snapshot::list(&layout.snapshots_dir())?;

    // Every snapshot's own checksums first.
    let mut valid: BTreeMap<u64, SnapshotFile> = BTreeMap::new();
    for file in &files {
        match snapshot::check(file) {
            Ok(_) => {
                valid.insert(file.seq, file.clone());
            }
            // Pruned by a running server since the listing: not a problem.
            Err(snapshot::SnapshotError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                report.problems.push(Problem {
                    kind: "snapshot_bad",
                    message: format!("{}: {}", file.path.display(), e.reason()),
                });
                report.snapshots.push(SnapshotCheck {
                    path: file.path.clone(),
                    seq: file.seq,
                    status: "bad",
                    detail: Some(e.reason()),
                });
            }
        }
    }

    // The replay's base: the empty state, or after compaction the oldest
    // valid snapshot the log continues.
    let mut state = State::default();
    let mut base: Option<(u64, u32)> = None;
    if let Some(first) = log_first_seq.filter(|&f| f > 1) {
        let candidate = valid.range(first - 1..).next().map(|(_, f)| f.clone());
        match candidate.map(|f| (snapshot::load(&f), f)) {
            Some((Ok(loaded), file)) => {
                base = Some((loaded.header.seq, loaded.header.chain_crc));
                state = loaded.state;
                valid.remove(&file.seq);
                report.snapshots.push(SnapshotCheck {
                    path: file.path,
                    seq: file.seq,
                    status: "ok_base",
                    detail: Some(format!(
                        "the log starts at sequence {first}; this snapshot is the base the log is replayed onto"
                    )),
                });
            }
            Some((Err(e), file)) => {
                valid.remove(&file.seq);
                report.problems.push(Problem {
                    kind: "snapshot_bad",
                    message: e.to_string(),
                });
                report.problems.push(Problem {
                    kind: "no_base",
                    message: format!("the log starts at sequence {first} and its base snapshot does not decode: the state cannot be rebuilt"),
                });
            }
            None => report.problems.push(Problem {
                kind: "no_base",
                message: format!(
                    "the log starts at sequence {first} (compacted) but no valid snapshot at or after sequence {} exists: the state cannot be rebuilt",
                    first - 1
                ),
            }),
        }
    }
    let replayable = log_first_seq.is_none_or(|f| f <= 1) || base.is_some();
    let base_seq = base.map(|(seq, _)| seq).unwrap_or(0);
    if let (Some((seq, crc)), Some((first, path))) = (base, segments.first()) {
        if seq + 1 == *first {
            check_base_against_header(path, seq, crc, report)?;
        }
    }

    let progress = LogProgress::new(out, layout, "verifying");
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: 0,
        skip_covered_segments: false,
    };
    let mut checks: Vec<SnapshotCheck> = Vec::new();
    let mut base_problem: Option<String> = None;
    let result = recovery::read_log(&log_dir, &options, &mut |record| {
        progress.record(record);
        let entry = record
            .decode()
            .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
        if record.seq == base_seq && base.is_some_and(|(_, crc)| crc != record.crc) {
            base_problem = Some(format!(
                "the base snapshot carries checksum {:#010x} but the log's record {} has {:#010x}",
                base.map(|(_, c)| c).unwrap_or(0),
                record.seq,
                record.crc
            ));
        }
        if replayable && record.seq > base_seq {
            state.apply(record.seq, record.time_unix_ns, &entry);
            if let Some(file) = valid.remove(&record.seq) {
                checks.push(compare_snapshot(&file, &state, record.crc));
            }
        }
        Ok(ControlFlow::Continue(()))
    });
    progress.bar.finish_and_clear();
    if let Some(p) = base_problem {
        report.problems.push(Problem {
            kind: "snapshot_mismatch",
            message: p,
        });
    }
    for check in &checks {
        if !check.status.starts_with("ok") {
            report.problems.push(Problem {
                kind: "snapshot_mismatch",
                message: format!(
                    "{}: {}",
                    check.path.display(),
                    check.detail.clone().unwrap_or_default()
                ),
            });
        }
    }
    report.snapshots.extend(checks);
    let recovered = match result {
        Ok(r) => r,
        Err(e @ RecoveryError::Io { .. }) => return Err(CtlError::failure(e)),
        Err(e) => {
            report.log.corrupt = Some(e.to_string());
            report.problems.push(Problem {
                kind: "log_corrupt",
                message: e.to_string(),
            });
            return Ok(None);
        }
    };
    report.log.records = recovered.records_verified;
    report.log.first_seq = recovered.first_seq;
    report.log.last_seq = recovered.last_seq;
    if let Some(torn) = &recovered.torn_tail {
        report.problems.push(Problem {
            kind: "torn_tail",
            message: format!(
                "{} has a torn tail at offset {} ({}); the server cuts it at its next start (if it is running, this may be a write in progress)",
                torn.path.display(),
                torn.offset,
                torn.reason
            ),
        });
        report.log.torn_tail = Some(torn.clone());
    }
    // Snapshots the replay never reached.
    for (seq, file) in valid {
        let (status, detail) = if seq > recovered.last_seq {
            report.problems.push(Problem {
                kind: "snapshot_ahead",
                message: format!(
                    "{} is at sequence {seq} but the log ends at {}",
                    file.path.display(),
                    recovered.last_seq
                ),
            });
            (
                "ahead_of_log",
                Some(format!("the log ends at {}", recovered.last_seq)),
            )
        } else {
            (
                "not_compared",
                Some("checksums verify; the log no longer holds the history before it".into()),
            )
        };
        report.snapshots.push(SnapshotCheck {
            path: file.path,
            seq,
            status,
            detail,
        });
    }
    report.snapshots.sort_by_key(|s| s.seq);
    Ok(replayable.then_some(state))
}

fn check_base_against_header(
    segment: &Path,
    seq: u64,
    crc: u32,
    report: &mut VerifyReport,
) -> CtlResult<()> {
    let mut head = [0u8; ferro::log::format::SEGMENT_HEADER_BYTES];
    let mut f = fs::File::open(segment)?;
    if f.read_exact(&mut head).is_err() {
        return Ok(()); // reported by the log read
    }
    if let Ok(h) = SegmentHeader::decode(&head) {
        if h.prev_crc != crc {
            report.problems.push(Problem {
                kind: "snapshot_mismatch",
                message: format!(
                    "the base snapshot at sequence {seq} carries checksum {crc:#010x} but {} chains to {:#010x}",
                    segment.display(),
                    h.prev_crc
                ),
            });
        }
    }
    Ok(())
}

fn compare_snapshot(file: &SnapshotFile, state: &State, record_crc: u32) -> SnapshotCheck {
    let check = |status, detail: Option<String>| SnapshotCheck {
        path: file.path.clone(),
        seq: file.seq,
        status,
        detail,
    };
    let loaded = match snapshot::load(file) {
        Ok(l) => l,
        Err(e) => return check("bad", Some(e.reason())),
    };
    if loaded.header.chain_crc != record_crc {
        return check(
            "mismatch",
            Some(format!(
                "it carries checksum {:#010x} but the log's record {} has {record_crc:#010x}",
                loaded.header.chain_crc, file.seq
            )),
        );
    }
    let same = match (
        snapshot::format::encode_state(&loaded.state),
        snapshot::format::encode_state(state),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        check("ok", None)
    } else {
        check(
            "mismatch",
            Some("its state differs from the state replayed from the log".into()),
        )
    }
}

/// The server's settings as `--config` and the `FERRO_*` variables give
/// them (the defaults without `--config`), read once per run.
pub fn settings(config_file: Option<&Path>) -> CtlResult<ferro::config::Config> {
    let mut config = match config_file {
        Some(path) => ferro::config::Config::load(path)
            .map_err(|e| CtlError::new(Exit::Usage, e.to_string()))?,
        None => ferro::config::Config::default(),
    };
    config
        .apply_env(std::env::vars())
        .map_err(|e| CtlError::new(Exit::Usage, e.to_string()))?;
    Ok(config)
}

/// The prefixes of the config's `[[mirrors]]`: a mirror fetches the blobs
/// and child manifests of a manifest only when they are pulled, so under
/// them a reference not yet in the repository is not a problem.
fn mirror_prefixes(config: &ferro::config::Config) -> Vec<String> {
    config.mirrors.iter().map(|m| m.prefix.clone()).collect()
}

/// The projection's own invariants, as a second opinion on the replay.
fn check_state(state: &State, mirror_prefixes: &[String], report: &mut VerifyReport) {
    for (name, repo) in &state.repos {
        for (digest, size) in &repo.blobs {
            if state.blobs.get(digest) != Some(size) {
                report.problems.push(Problem {
                    kind: "state_inconsistent",
                    message: format!("{name} links blob {digest} ({size} bytes) that the store does not list with that size"),
                });
            }
        }
        for (tag, digest) in &repo.tags {
            if !repo.manifests.contains_key(digest) {
                report.problems.push(Problem {
                    kind: "state_inconsistent",
                    message: format!(
                        "{name}:{tag} points at {digest}, which the repository does not have"
                    ),
                });
            }
        }
        let mirrored = mirror_prefixes
            .iter()
            .any(|p| name.as_str().starts_with(p.as_str()));
        for (digest, m) in repo.manifests.iter().filter(|_| !mirrored) {
            let missing_blobs = m.blobs.iter().filter(|b| !repo.blobs.contains_key(*b));
            let missing_children = m
                .manifests
                .iter()
                .filter(|c| !repo.manifests.contains_key(*c));
            for missing in missing_blobs.chain(missing_children) {
                report.problems.push(Problem {
                    kind: "state_inconsistent",
                    message: format!(
                        "{name}@{digest} references {missing}, which the repository no longer has"
                    ),
                });
            }
        }
    }
}

fn check_blobs(
    layout: &Layout,
    state: &State,
    hash: bool,
    out: &Out,
    report: &mut VerifyReport,
) -> CtlResult<()> {
    let store = BlobStore::new(layout);
    let total: u64 = state.blobs.values().sum();
    let bar = out.bytes_bar(
        if hash {
            total
        } else {
            state.blobs.len() as u64
        },
        "blobs",
    );
    report.blobs.referenced = state.blobs.len() as u64;
    report.blobs.hashed = hash;
    for (digest, &size) in &state.blobs {
        let path = store.blob_path(digest);
        let issue = |detail: String| BlobIssue {
            digest: digest.to_string(),
            path: path.clone(),
            detail,
        };
        match fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.blobs.issues.push(issue("missing".into()));
            }
            Err(e) => report.blobs.issues.push(issue(format!("cannot read: {e}"))),
            Ok(m) if m.len() != size => report
                .blobs
                .issues
                .push(issue(format!("{} bytes, the log says {size}", m.len()))),
            Ok(_) => {
                report.blobs.present += 1;
                report.blobs.bytes += size;
                if hash {
                    match hash_file(&path, digest, &bar) {
                        Ok(actual) if actual == *digest => {}
                        Ok(actual) => report
                            .blobs
                            .issues
                            .push(issue(format!("its bytes hash to {actual}"))),
                        Err(e) => report.blobs.issues.push(issue(format!("cannot read: {e}"))),
                    }
                }
            }
        }
        if !hash {
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    for issue in &report.blobs.issues {
        report.problems.push(Problem {
            kind: "blob",
            message: format!(
                "{} ({}): {}",
                issue.digest,
                issue.path.display(),
                issue.detail
            ),
        });
    }
    Ok(())
}

/// The object store of `--config`, when blobs live in one.
fn object_store(config: &ferro::config::Config) -> CtlResult<Option<ObjectBlobs>> {
    if config.storage.backend != StorageBackend::S3 {
        return Ok(None);
    }
    ObjectBlobs::new(&config.storage)
        .map(Some)
        .map_err(|e| CtlError::new(Exit::Usage, e))
}

/// [`check_blobs`] and the orphan listing, for blobs in an object store.
fn check_objects(
    objects: &ObjectBlobs,
    state: &State,
    hash: bool,
    out: &Out,
    report: &mut VerifyReport,
) -> CtlResult<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::new(Exit::Failure, format!("cannot start a runtime: {e}")))?;
    let bar = out.bytes_bar(state.blobs.len() as u64, "objects");
    report.blobs.referenced = state.blobs.len() as u64;
    report.blobs.hashed = hash;
    for (digest, &size) in &state.blobs {
        let key = state.objects.blobs.get(digest);
        let issue = |detail: String| BlobIssue {
            digest: digest.to_string(),
            path: PathBuf::from(key.map_or("", |k| k.as_str())),
            detail,
        };
        bar.inc(1);
        let Some(key) = key else {
            report
                .blobs
                .issues
                .push(issue("no object key in the log".into()));
            continue;
        };
        match runtime.block_on(objects.head(key)) {
            Err(ObjectError::NotFound(_)) => report.blobs.issues.push(issue("missing".into())),
            Err(e) => report.blobs.issues.push(issue(format!("cannot read: {e}"))),
            Ok(len) if len != size => report
                .blobs
                .issues
                .push(issue(format!("{len} bytes, the log says {size}"))),
            Ok(_) => {
                report.blobs.present += 1;
                report.blobs.bytes += size;
                if hash {
                    match runtime.block_on(objects.digest_of(key, digest.algorithm(), size)) {
                        Ok(actual) if actual == *digest => {}
                        Ok(actual) => report
                            .blobs
                            .issues
                            .push(issue(format!("its bytes hash to {actual}"))),
                        Err(e) => report.blobs.issues.push(issue(format!("cannot read: {e}"))),
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    for issue in &report.blobs.issues {
        report.problems.push(Problem {
            kind: "blob",
            message: format!(
                "{} (object {}): {}",
                issue.digest,
                issue.path.display(),
                issue.detail
            ),
        });
    }
    let named: BTreeSet<&str> = state
        .objects
        .blobs
        .values()
        .map(|k| k.as_str())
        .chain(state.objects.multiparts.values().map(|m| m.key.as_str()))
        .collect();
    match runtime.block_on(objects.list()) {
        Ok(listed) => report.orphans.objects.extend(
            listed
                .into_iter()
                .filter(|o| !named.contains(o.key.as_str()))
                .map(|o| PathBuf::from(o.key)),
        ),
        Err(e) => report.problems.push(Problem {
            kind: "object_store",
            message: format!("cannot list the object store: {e}"),
        }),
    }
    Ok(())
}

fn hash_file(
    path: &Path,
    digest: &Digest,
    bar: &indicatif::ProgressBar,
) -> std::io::Result<Digest> {
    let mut f = fs::File::open(path)?;
    let mut hasher = digest.algorithm().hasher();
    let mut buf = vec![0u8; ferro::blobs::IO_BUFFER_BYTES];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(hasher.finish())
}

fn find_orphans(layout: &Layout, state: &State, report: &mut VerifyReport) -> CtlResult<()> {
    let known: BTreeSet<String> = state.blobs.keys().map(|d| d.to_string()).collect();
    let blobs_dir = layout.blobs_dir();
    for alg_entry in read_dir_or_empty(&blobs_dir)? {
        let alg = alg_entry.file_name().to_string_lossy().into_owned();
        for prefix_entry in read_dir_or_empty(&alg_entry.path())? {
            for blob in read_dir_or_empty(&prefix_entry.path())? {
                let hex = blob.file_name().to_string_lossy().into_owned();
                if !known.contains(&format!("{alg}:{hex}")) {
                    report.orphans.blobs.push(blob.path());
                }
            }
        }
    }
    let uploads_dir = layout.uploads_dir();
    for entry in read_dir_or_empty(&uploads_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        match state.uploads.get(&name) {
            None => report.orphans.uploads.push(entry.path()),
            Some(upload) => {
                let len = entry.metadata()?.len();
                if len < upload.size {
                    report.problems.push(Problem {
                        kind: "upload_short",
                        message: format!(
                            "{} has {len} bytes but the log acknowledged {}; the server cancels the upload at its next start",
                            entry.path().display(),
                            upload.size
                        ),
                    });
                }
            }
        }
    }
    for id in state.uploads.keys() {
        if !uploads_dir.join(id).exists() && state.uploads[id].size > 0 {
            report.problems.push(Problem {
                kind: "upload_short",
                message: format!(
                    "upload {id} has no staging file but the log acknowledged {} bytes",
                    state.uploads[id].size
                ),
            });
        }
    }
    Ok(())
}

fn find_leftovers(layout: &Layout, report: &mut VerifyReport) -> CtlResult<()> {
    for dir in [layout.log_dir(), layout.snapshots_dir()] {
        for entry in read_dir_or_empty(&dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.ends_with(".broken") {
                report.orphans.leftovers.push(entry.path());
            }
        }
    }
    Ok(())
}

fn read_dir_or_empty(dir: &Path) -> std::io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn print_human(r: &VerifyReport) {
    say!("data directory  {}", r.data_dir.display());
    match &r.log.corrupt {
        Some(reason) => say!("log             CORRUPT: {reason}"),
        None => say!(
            "log             {} segment(s), {} record(s){}, {} bytes: checksums, sequence numbers and chain verify",
            r.log.segments,
            r.log.records,
            match r.log.first_seq {
                Some(first) if r.log.records > 0 => format!(" (seq {first}..{})", r.log.last_seq),
                _ => String::new(),
            },
            r.log.bytes
        ),
    }
    if r.snapshots.is_empty() {
        say!("snapshots       none");
    }
    for (i, s) in r.snapshots.iter().enumerate() {
        say!(
            "{}{}  seq {}  {}{}",
            if i == 0 {
                "snapshots       "
            } else {
                "                "
            },
            s.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            s.seq,
            s.status,
            s.detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    if let Some(s) = &r.state {
        say!(
            "state           {} repositories, {} tags, {} manifests, {} blobs, {} uploads in progress",
            s.repositories, s.tags, s.manifests, s.blobs, s.uploads
        );
        say!(
            "blobs           {} referenced, {} present with the right size{}",
            r.blobs.referenced,
            r.blobs.present,
            if r.blobs.hashed {
                "; digests checked"
            } else {
                " (add --blobs to check digests)"
            }
        );
    }
    say!(
        "orphans         {} blob file(s), {} upload file(s), {} leftover(s), {} object(s)",
        r.orphans.blobs.len(),
        r.orphans.uploads.len(),
        r.orphans.leftovers.len(),
        r.orphans.objects.len()
    );
    let orphans: Vec<&PathBuf> = r
        .orphans
        .blobs
        .iter()
        .chain(&r.orphans.uploads)
        .chain(&r.orphans.leftovers)
        .chain(&r.orphans.objects)
        .collect();
    for p in orphans.iter().take(HUMAN_LIST_MAX) {
        say!("                  {}", p.display());
    }
    more(orphans.len());
    if r.problems.is_empty() {
        say!("problems        none");
    } else {
        say!("problems        {}", r.problems.len());
        for p in r.problems.iter().take(HUMAN_LIST_MAX) {
            say!("  [{}] {}", p.kind, p.message);
        }
        more(r.problems.len());
    }
}

/// Longest list the text output prints; `--json` has them all.
const HUMAN_LIST_MAX: usize = 50;

fn more(len: usize) {
    if len > HUMAN_LIST_MAX {
        say!(
            "  … and {} more (--json lists them all)",
            len - HUMAN_LIST_MAX
        );
    }
}
