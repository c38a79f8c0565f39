//! Garbage collection: deletes blobs that no retained manifest references,
//! and, when the policy is set, untagged manifests older than an age.
//!
//! A run first applies the untagged-manifest policy
//! (`gc.untagged_manifests_older_than`, off by default; see
//! [`mark_untagged`]): in each repository, the manifests put at or before
//! `now - age` that neither a tag nor a younger manifest reaches (as a
//! child of an index, as the subject of a referrer, or as a referrer of a
//! reached manifest) go through [`Command::CollectManifests`], whose
//! `plan` re-checks them against the current state. Then the blobs, in
//! two phases.
//!
//! - **Mark**, on a copy of the state at `mark_seq`, reading only. A blob
//!   is kept when a retained manifest references it, or when it was linked
//!   (uploaded or mounted) within the grace period. Retained manifests are
//!   those live at the mark, those live at the start of the history
//!   retention window, and every manifest put after that start (so time
//!   travel inside the window keeps working; with retention `forever`,
//!   every manifest ever pushed). Children of an index and referrers of a
//!   manifest are manifests too, so they are in that set whenever they
//!   were live at any time the set covers.
//! - **Sweep**, through the log writer: the unreferenced blobs go in
//!   batches as [`Command::CollectBlobs`], whose `plan` re-checks each blob
//!   against the current state (a live manifest references it, or it was
//!   linked or referenced after `mark_seq`: kept) and logs `BlobUnlinked`
//!   for every repository still linking it, then `BlobDeleted`. A file is
//!   removed only once its deletion is durable, with the digest's lock held
//!   (see `blobs::DigestLocks`), so an upload of the same bytes cannot
//!   commit its file in between and log a link to a file about to vanish.
//!
//! A manifest deleted by the policy is still in the history: while its
//! put or its life is inside the retention window it is retained like any
//! other, so its blobs go only once the window has passed it.
//!
//! A real run ends with `Event::GcCompleted` on the record (its figures),
//! and every run updates the `ferro_gc_*` metrics.
//!
//! Crash safety: a crash leaves either the blob (nothing logged), or a
//! logged deletion and a file without an event, an orphan. Each run also
//! removes orphan files (not in the state, unmodified for the grace
//! period), each re-checked under its digest's lock.
//!
//! Boundary: the collector never writes the log itself; it submits
//! commands like any request handler.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::blobs::{staging_leftover_digest, BlobStore};
use crate::commands::{Collectable, Command, GcRun};
use crate::compaction::Retention;
use crate::datadir::Layout;
use crate::events::{Actor, Event};
use crate::log::recovery::{self, ReadOptions, RecoveryMode};
use crate::log::{LogWriter, SubmitError};
use crate::oci::{Digest, RepoName};
use crate::projection::State;
use crate::replay::{self, AsOf, ReplayError};

mod objects;
mod untagged;
pub use untagged::{mark_untagged, UntaggedMarked};

/// Blobs per `CollectBlobs` command: one log record each, small enough
/// that a batch's lock stripes are held only briefly.
pub const COLLECT_BATCH_BLOBS_MAX: usize = 512;
/// Most blobs a report lists by name (the counts cover all of them).
pub const REPORT_LISTED_BLOBS_MAX: usize = 10_000;
/// Manifests per `CollectManifests` command (one log record each).
pub const COLLECT_BATCH_MANIFESTS_MAX: usize = 512;
/// Most manifests a report lists by name (the counts cover all of them).
pub const REPORT_LISTED_MANIFESTS_MAX: usize = 10_000;

/// The `[gc]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Run on a schedule every `interval`; when false, only on demand
    /// (`POST /v2/_ferro/gc/run`, `ferroctl gc`).
    pub enabled: bool,
    /// Time between scheduled runs, e.g. `"6h"`.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Blobs uploaded or mounted this recently are kept even when no
    /// manifest references them yet (a push in progress), e.g. `"1h"`.
    #[serde(with = "duration_text")]
    pub grace: Duration,
    /// Delete untagged manifests put at least this long ago, e.g. `"30d"`
    /// (see [`mark_untagged`] for what counts as untagged); `"off"` (the
    /// default) keeps every manifest.
    #[serde(with = "optional_duration_text")]
    pub untagged_manifests_older_than: Option<Duration>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: false,
            interval: Duration::from_secs(6 * 3600),
            grace: Duration::from_secs(3600),
            untagged_manifests_older_than: None,
        }
    }
}

/// Durations as text (`"1h"`, `"90s"`), as in the rest of the config.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(serde::de::Error::custom)
    }
}

/// An optional duration: `"off"` for none (TOML has no null).
mod optional_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            None => s.serialize_str(super::OFF),
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_optional_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// How an unset optional duration is spelled.
const OFF: &str = "off";

/// `"off"` (or `"none"`, or empty) for none, else a duration as
/// [`parse_duration`] reads it.
pub fn parse_optional_duration(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "" | OFF | "none" => Ok(None),
        _ => parse_duration(s).map(Some),
    }
}

fn optional_duration_label(d: Option<Duration>) -> String {
    match d {
        None => OFF.to_owned(),
        Some(d) => humantime::format_duration(d).to_string(),
    }
}

/// The collector as the server holds it, with its settings.
#[derive(Clone)]
pub struct GcService {
    pub collector: Arc<Collector>,
    pub grace: Duration,
    pub retention: Retention,
    pub untagged_older_than: Option<Duration>,
}

impl GcService {
    pub fn new(collector: Collector, config: &GcConfig, retention: Retention) -> GcService {
        GcService {
            collector: Arc::new(collector),
            grace: config.grace,
            retention,
            untagged_older_than: config.untagged_manifests_older_than,
        }
    }

    pub fn options(&self, dry_run: bool) -> GcOptions {
        GcOptions {
            retention: self.retention,
            grace: self.grace,
            untagged_older_than: self.untagged_older_than,
            dry_run,
        }
    }
}

/// A duration as the config and `ferroctl gc` spell it: `0s`, `90s`,
/// `30m`, `1h`, `7d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 30m, 1h or 7d: {e}"))
}

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub retention: Retention,
    pub grace: Duration,
    /// Delete untagged manifests put at least this long ago (`None`: keep
    /// them all).
    pub untagged_older_than: Option<Duration>,
    /// Only report what would go.
    pub dry_run: bool,
}

/// A blob deleted (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// A manifest deleted by the untagged policy (or, in a dry run, that would
/// be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectedManifest {
    pub repo: RepoName,
    pub digest: Digest,
}

/// The outcome of one run: logged, returned by the endpoint and by
/// `ferroctl gc`, and kept as the last report for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub started_unix_ns: u64,
    /// The state the mark phase ran on.
    pub mark_seq: u64,
    pub retention: String,
    pub grace_s: u64,
    /// The untagged-manifest policy: `"off"` or its age.
    pub untagged_manifests_older_than: String,
    /// Untagged manifests the policy found, deleted (in a dry run: that
    /// would be).
    pub manifests_deleted: u64,
    /// Found by the policy but tagged, put again or referenced before
    /// their deletion was planned: kept.
    pub manifests_kept_by_recheck: u64,
    /// Manifests whose blobs were kept (live, or in the retention window).
    pub manifests_retained: u64,
    /// Blobs in the store at the mark.
    pub blobs_examined: u64,
    /// Blobs the mark found unreferenced.
    pub blobs_unreferenced: u64,
    /// Of those, deleted (in a dry run: that would be).
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    /// Unreferenced at the mark but used again before the sweep: kept.
    pub blobs_kept_by_recheck: u64,
    /// Unreferenced, but not deleted this run: the log archive had not
    /// shipped the records up to the mark yet (see [`Collector::set_archive_hold`]).
    pub blobs_held_for_archive: u64,
    /// Files in the store that no event accounts for, removed (in a dry
    /// run: that would be).
    pub orphans_removed: u64,
    pub orphan_bytes_freed: u64,
    /// Multipart uploads left open in the object store (by a crash, or an
    /// abort that failed) that the run aborted.
    pub multiparts_aborted: u64,
    /// Log records the mark phase read.
    pub records_scanned: u64,
    pub mark_ms: u64,
    pub sweep_ms: u64,
    pub total_ms: u64,
    /// The blobs deleted (or that would be), at most
    /// [`REPORT_LISTED_BLOBS_MAX`].
    pub blobs: Vec<CollectedBlob>,
    pub blobs_listed_truncated: bool,
    /// The manifests deleted (or that would be), at most
    /// [`REPORT_LISTED_MANIFESTS_MAX`].
    pub manifests: Vec<CollectedManifest>,
    pub manifests_listed_truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("a collection is already running")]
    Busy,
    #[error("cannot read the history: {0}")]
    Replay(#[from] ReplayError),
    #[error("cannot read the log: {0}")]
    Log(#[from] recovery::RecoveryError),
    #[error("the log writer refused the deletions: {0}")]
    Submit(#[from] SubmitError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the mark phase stopped: {0}")]
    Task(String),
}

/// The collector of one registry: shared by the schedule, the endpoint
/// and the offline tool. One run at a time.
pub struct Collector {
    layout: Layout,
    state: Arc<RwLock<State>>,
    writer: LogWriter,
    store: BlobStore,
    running: tokio::sync::Mutex<()>,
    last_report: Mutex<Option<GcReport>>,
    archive_hold: Mutex<Option<ArchiveHold>>,
}

/// The last sequence number in the log archive (`archive::Shipper`).
pub type ArchiveHold = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How long a run waits for the archive to ship up to its mark before it
/// leaves the unreferenced blobs for a later run.
const ARCHIVE_WAIT: Duration = Duration::from_secs(10);

impl Collector {
    pub fn new(
        layout: Layout,
        state: Arc<RwLock<State>>,
        writer: LogWriter,
        store: BlobStore,
    ) -> Collector {
        Collector {
            layout,
            state,
            writer,
            store,
            running: tokio::sync::Mutex::new(()),
            last_report: Mutex::new(None),
            archive_hold: Mutex::new(None),
        }
    }

    /// Blobs are deleted only once the log archive holds every record up
    /// to the mark: with blobs on the filesystem the archive carries each
    /// linked blob, read from its file when the record linking it ships;
    /// deleting the file first (the store down for longer than the grace
    /// period) would leave a record in the archive naming bytes it never
    /// got, which a restore to before the deletion lacks and a replica
    /// stops at.
    pub fn set_archive_hold(&self, hold: ArchiveHold) {
        *self.archive_hold.lock() = Some(hold);
    }

    /// Waits, up to [`ARCHIVE_WAIT`], for the archive to hold record
    /// `seq`; `false` if it does not (no archive: `true`).
    async fn archive_holds(&self, seq: u64) -> bool {
        let Some(hold) = self.archive_hold.lock().clone() else {
            return true;
        };
        let deadline = Instant::now() + ARCHIVE_WAIT;
        while hold() < seq {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The report of the last completed run (for metrics).
    pub fn last_report(&self) -> Option<GcReport> {
        self.last_report.lock().clone()
    }

    /// Runs now, or fails with [`GcError::Busy`] if a run is under way.
    pub async fn run(&self, options: &GcOptions) -> Result<GcReport, GcError> {
        let _running = self.running.try_lock().map_err(|_| GcError::Busy)?;
        let started = Instant::now();
        let started_unix_ns = unix_ns(SystemTime::now());
        let mut report = GcReport {
            dry_run: options.dry_run,
            started_unix_ns,
            retention: options.retention.to_string(),
            grace_s: options.grace.as_secs(),
            untagged_manifests_older_than: optional_duration_label(options.untagged_older_than),
            ..GcReport::default()
        };
        if let Some(age) = options.untagged_older_than {
            let cutoff_unix_ns = started_unix_ns.saturating_sub(age.as_nanos() as u64);
            self.collect_manifests(cutoff_unix_ns, options.dry_run, &mut report)
                .await?;
        }
        // The blob mark runs on the state after those deletions, which it
        // reads as history like any other (the retention window).
        let mark_started = Instant::now();
        let now_unix_ns = unix_ns(SystemTime::now());
        let mark_state = self.state.read().clone();
        let layout = self.layout.clone();
        let mark_options = options.clone();
        let marked = tokio::task::spawn_blocking(move || {
            mark(&layout, &mark_state, &mark_options, now_unix_ns)
        })
        .await
        .map_err(|e| GcError::Task(e.to_string()))??;
        report.mark_seq = marked.mark_seq;
        report.manifests_retained = marked.manifests_retained;
        report.blobs_examined = marked.blobs_examined;
        report.blobs_unreferenced = marked.unreferenced.len() as u64;
        report.records_scanned = marked.records_scanned;
        report.mark_ms = mark_started.elapsed().as_millis() as u64;
        let sweep_started = Instant::now();
        if options.dry_run {
            for (c, size) in &marked.unreferenced {
                report.note_deleted(&c.digest, *size);
            }
        } else if self.archive_holds(marked.mark_seq).await {
            self.sweep(&marked, &mut report).await?;
        } else {
            report.blobs_held_for_archive = marked.unreferenced.len() as u64;
            tracing::warn!(
                mark_seq = marked.mark_seq,
                blobs = report.blobs_held_for_archive,
                "unreferenced blobs kept: the log archive has not shipped the records up to the mark yet; a later run deletes them"
            );
        }
        let grace_cutoff_unix_ns = now_unix_ns.saturating_sub(options.grace.as_nanos() as u64);
        self.remove_orphans(grace_cutoff_unix_ns, options.dry_run, &mut report)
            .await?;
        self.remove_object_leftovers(grace_cutoff_unix_ns, options.dry_run, &mut report)
            .await?;
        report.sweep_ms = sweep_started.elapsed().as_millis() as u64;
        report.total_ms = started.elapsed().as_millis() as u64;
        if !options.dry_run {
            self.record(&report).await;
        }
        tracing::info!(
            dry_run = report.dry_run,
            mark_seq = report.mark_seq,
            retention = %report.retention,
            grace_s = report.grace_s,
            untagged_manifests_older_than = %report.untagged_manifests_older_than,
            manifests_deleted = report.manifests_deleted,
            manifests_kept_by_recheck = report.manifests_kept_by_recheck,
            manifests_retained = report.manifests_retained,
            blobs_examined = report.blobs_examined,
            blobs_unreferenced = report.blobs_unreferenced,
            blobs_deleted = report.blobs_deleted,
            bytes_freed = report.bytes_freed,
            blobs_kept_by_recheck = report.blobs_kept_by_recheck,
            blobs_held_for_archive = report.blobs_held_for_archive,
            orphans_removed = report.orphans_removed,
            orphan_bytes_freed = report.orphan_bytes_freed,
            mark_ms = report.mark_ms,
            sweep_ms = report.sweep_ms,
            total_ms = report.total_ms,
            "garbage collection finished"
        );
        crate::metrics::record_gc(&report.metrics_figures());
        *self.last_report.lock() = Some(report.clone());
        Ok(report)
    }

    /// Puts the run's figures on the record. The deletions are logged
    /// already; a summary that cannot be logged (the writer stopping) is
    /// only a warning.
    async fn record(&self, report: &GcReport) {
        let run = GcRun {
            mark_seq: report.mark_seq,
            manifests_deleted: report.manifests_deleted,
            blobs_deleted: report.blobs_deleted,
            bytes_freed: report.bytes_freed,
            orphans_removed: report.orphans_removed,
            orphan_bytes_freed: report.orphan_bytes_freed,
            duration_ms: report.total_ms,
        };
        if let Err(e) = self
            .writer
            .submit(Actor::system(), Command::RecordGcRun(run))
            .await
        {
            tracing::warn!(error = %e, "cannot log the garbage collection's summary");
        }
    }

    async fn sweep(&self, marked: &Marked, report: &mut GcReport) -> Result<(), GcError> {
        for batch in marked.unreferenced.chunks(COLLECT_BATCH_BLOBS_MAX) {
            let blobs: Vec<Collectable> = batch.iter().map(|(c, _)| c.clone()).collect();
            let guard = self
                .store
                .locks()
                .lock(blobs.iter().map(|c| &c.digest))
                .await;
            // Their objects' keys, read before the deletions remove them
            // from the state (under the locks, no upload changes them).
            let keys = self
                .store
                .object_keys(&self.state.read(), blobs.iter().map(|c| &c.digest));
            let committed = self
                .writer
                .submit(
                    Actor::system(),
                    Command::CollectBlobs {
                        mark_seq: marked.mark_seq,
                        blobs,
                    },
                )
                .await?;
            // Durable (the writer answered): now the files may go.
            let deleted: Vec<(Digest, u64)> = committed
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::BlobDeleted { digest, size } => Some((digest.clone(), *size)),
                    _ => None,
                })
                .collect();
            let digests: Vec<Digest> = deleted.iter().map(|(d, _)| d.clone()).collect();
            self.store.remove_collected(&digests, &keys).await?;
            drop(guard);
            report.blobs_kept_by_recheck += (batch.len() - deleted.len()) as u64;
            for (d, size) in &deleted {
                report.note_deleted(d, *size);
            }
        }
        Ok(())
    }

    /// Removes files of the store that no event accounts for and that were
    /// not modified since `cutoff_unix_ns`.
    async fn remove_orphans(
        &self,
        cutoff_unix_ns: u64,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        let dir = self.store.blobs_dir().to_owned();
        let files = tokio::task::spawn_blocking(move || list_blob_files(&dir))
            .await
            .map_err(|e| GcError::Task(e.to_string()))??;
        let candidates: Vec<BlobFile> = {
            let state = self.state.read();
            files
                .into_iter()
                .filter(|f| f.leftover || !state.blobs.contains_key(&f.digest))
                .filter(|f| f.modified_unix_ns <= cutoff_unix_ns)
                // A one-shot upload writing it now (with a short grace,
                // its file can look old enough).
                .filter(|f| !(f.leftover && self.store.is_one_shot_in_progress(&f.path)))
                .collect()
        };
        for f in candidates {
            if dry_run {
                report.orphans_removed += 1;
                report.orphan_bytes_freed += f.size;
                continue;
            }
            // An upload may be between committing this file and logging
            // its link: under the lock, the state is final for it.
            let _guard = self.store.locks().lock([&f.digest]).await;
            if !f.leftover && self.state.read().blobs.contains_key(&f.digest) {
                continue;
            }
            let path = f.path.clone();
            let removed = tokio::task::spawn_blocking(move || crate::blobs::remove_files(&[path]))
                .await
                .map_err(|e| GcError::Task(e.to_string()))?;
            match removed {
                Ok(()) => {
                    tracing::info!(file = %f.path.display(), bytes = f.size, "removed an orphan blob file");
                    report.orphans_removed += 1;
                    report.orphan_bytes_freed += f.size;
                }
                Err(e) => {
                    tracing::warn!(file = %f.path.display(), error = %e, "cannot remove an orphan blob file")
                }
            }
        }
        Ok(())
    }
}

impl GcReport {
    /// What the metrics count of this run.
    fn metrics_figures(&self) -> crate::metrics::GcRun {
        crate::metrics::GcRun {
            dry_run: self.dry_run,
            started_unix_ns: self.started_unix_ns,
            total_ms: self.total_ms,
            manifests_deleted: self.manifests_deleted,
            blobs_deleted: self.blobs_deleted,
            bytes_freed: self.bytes_freed,
            orphans_removed: self.orphans_removed,
            orphan_bytes_freed: self.orphan_bytes_freed,
        }
    }

    fn note_manifest_deleted(&mut self, repo: &RepoName, digest: &Digest) {
        self.manifests_deleted += 1;
        if self.manifests.len() < REPORT_LISTED_MANIFESTS_MAX {
            self.manifests.push(CollectedManifest {
                repo: repo.clone(),
                digest: digest.clone(),
            });
        } else {
            self.manifests_listed_truncated = true;
        }
    }

    fn note_deleted(&mut self, digest: &Digest, size: u64) {
        self.blobs_deleted += 1;
        self.bytes_freed += size;
        if self.blobs.len() < REPORT_LISTED_BLOBS_MAX {
            self.blobs.push(CollectedBlob {
                digest: digest.clone(),
                size,
            });
        } else {
            self.blobs_listed_truncated = true;
        }
    }
}

/// What the mark phase found.
pub struct Marked {
    pub mark_seq: u64,
    pub manifests_retained: u64,
    pub blobs_examined: u64,
    pub records_scanned: u64,
    /// Blobs no retained manifest references, with their sizes, in digest
    /// order.
    pub unreferenced: Vec<(Collectable, u64)>,
}

/// The mark phase on `state` (the registry at its `last_seq`), reading
/// history from `layout`'s log and snapshots.
pub fn mark(
    layout: &Layout,
    state: &State,
    options: &GcOptions,
    now_unix_ns: u64,
) -> Result<Marked, GcError> {
    let mark_seq = state.last_seq;
    let window_start_unix_ns = match options.retention {
        Retention::Forever => 0,
        Retention::For(d) => now_unix_ns.saturating_sub(d.as_nanos() as u64),
    };
    let grace_cutoff_unix_ns = now_unix_ns.saturating_sub(options.grace.as_nanos() as u64);
    // One scan covers both the window and the grace period; starting at
    // the earlier of the two only keeps more.
    let scan_from_unix_ns = window_start_unix_ns.min(grace_cutoff_unix_ns);

    let mut retained: HashSet<Digest> = HashSet::new();
    let mut referenced: HashSet<Digest> = HashSet::new();
    let mut keep_manifests = |s: &State, retained: &mut HashSet<Digest>| {
        for r in s.repos.values() {
            for (d, m) in &r.manifests {
                retained.insert(d.clone());
                referenced.extend(m.blobs.iter().cloned());
            }
        }
    };
    keep_manifests(state, &mut retained);

    let mut records_scanned = 0;
    let mut recent_links: Vec<Digest> = Vec::new();
    let mut window_puts: Vec<(Digest, Vec<Digest>)> = Vec::new();
    if mark_seq > 0 && scan_from_unix_ns < state.last_time_unix_ns {
        let base =
            match replay::state_as_of(layout, AsOf::TimeUnixNs(scan_from_unix_ns), &mut |_| {}) {
                Ok(b) => b,
                // History older than the log holds is gone: start where it can.
                Err(ReplayError::Compacted { earliest, .. }) => {
                    replay::state_as_of(layout, AsOf::Seq(earliest), &mut |_| {})?
                }
                Err(e) => return Err(e.into()),
            };
        keep_manifests(&base.state, &mut retained);
        let options = ReadOptions {
            mode: RecoveryMode::TolerateTornTail,
            replay_after: base.state.last_seq,
            skip_covered_segments: true,
        };
        recovery::read_log(&layout.log_dir(), &options, &mut |record| {
            if record.seq > mark_seq {
                return Ok(ControlFlow::Break(()));
            }
            records_scanned += 1;
            let entry = record
                .decode()
                .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
            for event in entry.events {
                match event {
                    Event::ManifestPut { digest, blobs, .. } => window_puts.push((digest, blobs)),
                    Event::BlobLinked { digest, .. }
                        if record.time_unix_ns >= grace_cutoff_unix_ns =>
                    {
                        recent_links.push(digest)
                    }
                    _ => {}
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
    }
    for (digest, blobs) in window_puts {
        retained.insert(digest);
        referenced.extend(blobs);
    }
    referenced.extend(recent_links);

    let mut linked_in: HashMap<&Digest, Vec<RepoName>> = HashMap::new();
    for (name, r) in &state.repos {
        for d in r.blobs.keys() {
            if !referenced.contains(d) {
                linked_in.entry(d).or_default().push(name.clone());
            }
        }
    }
    let unreferenced = state
        .blobs
        .iter()
        .filter(|(d, _)| !referenced.contains(*d))
        .map(|(d, size)| {
            (
                Collectable {
                    digest: d.clone(),
                    linked_in: linked_in.remove(d).unwrap_or_default(),
                },
                *size,
            )
        })
        .collect();
    Ok(Marked {
        mark_seq,
        manifests_retained: retained.len() as u64,
        blobs_examined: state.blobs.len() as u64,
        records_scanned,
        unreferenced,
    })
}

/// A file under `blobs/`.
struct BlobFile {
    path: PathBuf,
    digest: Digest,
    size: u64,
    modified_unix_ns: u64,
    /// A one-shot staging file left behind by a crash
    /// (`<hex>.<upload id>.staging`), not the blob itself.
    leftover: bool,
}

/// Every file of the store whose path spells a digest
/// (`<alg>/<2 hex>/<hex>`), and one-shot staging files
/// (`<alg>/<2 hex>/<hex>.<upload id>.staging`); anything else is left
/// alone.
fn list_blob_files(blobs_dir: &Path) -> std::io::Result<Vec<BlobFile>> {
    let mut files = Vec::new();
    let algorithms = match std::fs::read_dir(blobs_dir) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for alg in algorithms {
        let alg = alg?;
        if !alg.file_type()?.is_dir() {
            continue;
        }
        let alg_name = alg.file_name().to_string_lossy().into_owned();
        for prefix in std::fs::read_dir(alg.path())? {
            let prefix = prefix?;
            if !prefix.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(prefix.path())? {
                let file = file?;
                // A staging file renamed into place (or removed) since the
                // listing: nothing to look at.
                let meta = match file.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if !meta.is_file() {
                    continue;
                }
                let name = file.file_name().to_string_lossy().into_owned();
                let leftover = staging_leftover_digest(&name);
                let hex = leftover.unwrap_or(&name);
                let Ok(digest) = Digest::parse(&format!("{alg_name}:{hex}")) else {
                    continue;
                };
                if !hex.starts_with(&*prefix.file_name().to_string_lossy()) {
                    continue;
                }
                files.push(BlobFile {
                    path: file.path(),
                    digest,
                    size: meta.len(),
                    modified_unix_ns: meta.modified().map(unix_ns).unwrap_or(u64::MAX),
                    leftover: leftover.is_some(),
                });
            }
        }
    }
    Ok(files)
}

/// Removes `paths`; one already gone is no error (a run interrupted after
/// removing it).
fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs the scheduled collections every `config.interval` until the
/// writer stops.
pub fn spawn_schedule(
    collector: Arc<Collector>,
    config: GcConfig,
    retention: Retention,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: wait one interval
        loop {
            tick.tick().await;
            let options = GcOptions {
                retention,
                grace: config.grace,
                untagged_older_than: config.untagged_manifests_older_than,
                dry_run: false,
            };
            match collector.run(&options).await {
                Ok(_) | Err(GcError::Busy) => {}
                Err(GcError::Submit(SubmitError::Stopped)) => break,
                Err(e) => tracing::warn!(error = %e, "scheduled garbage collection failed"),
            }
        }
    })
}

/// Runs one collection on a stopped registry's data directory (the
/// caller holds its lock): recovers the state as the server would, runs,
/// and makes the log durable before returning. `ferroctl gc` uses it.
pub fn run_offline(
    layout: &Layout,
    recovery_mode: RecoveryMode,
    options: &GcOptions,
) -> Result<GcReport, GcError> {
    let started = crate::startup::open(
        layout,
        recovery_mode,
        crate::log::WriterOptions {
            durability: crate::log::Durability::Always,
            segment_bytes_max: crate::limits::Limits::default().segment_bytes_max,
        },
    )
    .map_err(|e| GcError::Task(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opened = started.log;
    let collector = Collector::new(
        layout.clone(),
        opened.state.clone(),
        opened.writer.clone(),
        BlobStore::new(layout),
    );
    let report = runtime.block_on(collector.run(options));
    let synced = runtime.block_on(opened.writer.sync());
    drop(collector);
    drop(opened.writer);
    let _ = opened.writer_thread.join();
    let report = report?;
    synced?;
    Ok(report)
}
