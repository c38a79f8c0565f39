//! The shipper: one task beside the log writer that copies committed
//! records into the archive as pieces, and never holds the writer up.
//!
//! It wakes on the writer's commit notification, reads the records after
//! the shipped point from the local log (the same verified reader as
//! recovery), and ships them as one piece when one of these holds:
//! `durability = "archived"` (at once: the writers waiting for the
//! archive share that piece), `ship_max_bytes` are waiting, or the last
//! shipment is `ship_interval_ms` old. Right before each piece put it
//! checks the writer epoch; after it, it moves the shipped point (waking
//! archived writers) and writes the local cursor. Failures are retried with
//! backoff; the records wait in the local log, which compaction does not
//! cut past the shipped point ([`Shipper::log_hold`]).
//!
//! Also shipped: the newest local snapshot the archive covers (looked for
//! when the shipper has caught up, and every few seconds under a load it
//! never catches up with), and with
//! blobs on the filesystem every blob a shipped record links, before the
//! piece that links it (so the archive never names a blob it lacks): the
//! small ones together in packs (`pack.rs`), one request per shipment
//! rather than one per pushed config blob; the others several at a time:
//! one after another, a store's per-request latency times the blobs of a
//! shipment was most of its time.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::{ArchiveConfig, ArchiveDurability};
use super::cursor::{self, ShipCursor};
use super::epoch::{self, Epoch, EpochError, FenceError};
use super::pack::{self, PackBuilder};
use super::piece::{self, PieceBuilder};
use super::store::{
    self, blob_name, parse_numbered, piece_name, snapshot_name, ArchiveStore, StoreError, LOG_DIR,
    PIECE_SUFFIX, SNAPSHOTS_DIR, SNAPSHOT_SUFFIX,
};
use crate::blobs::BlobStore;
use crate::datadir::Layout;
use crate::events::Event;
use crate::log::format::SegmentHeader;
use crate::log::recovery::{self, ReadOptions, RecoveryMode, ResumeAt};
use crate::log::LogWriter;
use crate::oci::Digest;

pub const SHIPPED_SEQ: &str = "ferro_archive_shipped_seq";
pub const LAG_RECORDS: &str = "ferro_archive_lag_records";
pub const LAG_BYTES: &str = "ferro_archive_lag_bytes";
pub const LAG_SECONDS: &str = "ferro_archive_lag_seconds";
pub const SHIPMENTS: &str = "ferro_archive_shipments_total";
pub const SHIPPED_BYTES: &str = "ferro_archive_shipped_bytes_total";
pub const ERRORS: &str = "ferro_archive_errors_total";
pub const FENCED: &str = "ferro_archive_fenced";
pub const EPOCH: &str = "ferro_archive_epoch";

/// Longest wait between two attempts while the store fails.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How often a shipper that never catches up looks for a new snapshot.
const SNAPSHOT_LOOK_EVERY: Duration = Duration::from_secs(5);
/// Digests of blobs this process shipped that it remembers, to skip
/// them in later shipments (about 12 MiB at the cap).
const UPLOADED_REMEMBERED_MAX: usize = 100_000;
/// How many small blobs of one shipment are uploaded at the same time:
/// on a store with a few milliseconds per request (Garage fsyncs each
/// object) one after another is what made a shipment slow.
const BLOB_UPLOADS_AT_ONCE: usize = 8;
/// Blobs from this size on are uploaded one at a time: each is buffered
/// (`put_file`: up to 10 MiB, then parts in flight), so this bounds the
/// memory a shipment holds at about `BLOB_UPLOADS_AT_ONCE` times this.
const BLOB_LARGE_BYTES: u64 = 8 << 20;
/// How long a graceful shutdown waits for the last records to ship.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The last record known to be in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shipped {
    pub seq: u64,
    pub crc: u32,
    /// First sequence number of the piece holding `seq`.
    pub piece_first_seq: u64,
}

/// What `/readyz`, `/metrics` and `ferroctl archive status` show.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The writer epoch this server holds, once taken.
    pub epoch: Option<u64>,
    /// Why shipping stopped for good (another writer, a diverging archive).
    pub fenced: Option<String>,
    /// The last failure, while shipping is failing.
    pub last_error: Option<String>,
    pub errors_total: u64,
    pub shipments_total: u64,
    pub shipped_bytes_total: u64,
    /// Since when records have been waiting (none waiting: `None`).
    pub waiting_since: Option<Instant>,
}

/// The archive shipper of one server.
pub struct Shipper {
    store: ArchiveStore,
    config: ArchiveConfig,
    layout: Layout,
    writer: LogWriter,
    /// Blob bytes to ship, when they live on the filesystem.
    blobs: Option<BlobStore>,
    /// Pieces are cut at this size (the log's segment size).
    piece_bytes_max: u64,
    shipped: watch::Sender<Shipped>,
    /// The writer's appended-bytes count when `shipped` was last current.
    shipped_appended_bytes: AtomicU64,
    health: Mutex<Health>,
    stop: CancellationToken,
    writer_id: [u8; 16],
}

/// Requests a shipment made for its blobs.
#[derive(Debug, Default, Clone, Copy)]
struct BlobsSent {
    /// Packs put, and the small blobs in them.
    packs: usize,
    packed: usize,
    /// Blobs of their own looked up in the archive first (not already
    /// uploaded by this process).
    heads: usize,
    /// Of those, the ones the archive lacked and that were put.
    puts: usize,
}

/// Why a shipment did not happen.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error(transparent)]
    Fenced(#[from] FenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Local(String),
}

impl From<EpochError> for ShipError {
    fn from(e: EpochError) -> ShipError {
        match e {
            EpochError::Fenced(f) => ShipError::Fenced(f),
            EpochError::Store(s) => ShipError::Store(s),
        }
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Shipper {
    /// A shipper for `writer`'s log; nothing runs until [`Shipper::spawn`].
    pub fn new(
        store: ArchiveStore,
        config: ArchiveConfig,
        layout: Layout,
        writer: LogWriter,
        blobs: Option<BlobStore>,
        piece_bytes_max: u64,
        stop: CancellationToken,
    ) -> Arc<Shipper> {
        // Until the archive is read: what the cursor says, else nothing
        // shipped (compaction keeps everything meanwhile).
        let hint = cursor::read(&shipping_dir(&layout)).ok().flatten();
        let shipped = hint.map_or(Shipped::default(), |c| Shipped {
            seq: c.shipped_seq,
            crc: c.shipped_crc,
            piece_first_seq: c.piece_first_seq,
        });
        let (tx, _) = watch::channel(shipped);
        Arc::new(Shipper {
            store,
            config,
            layout,
            writer,
            blobs,
            piece_bytes_max: piece_bytes_max.max(1),
            shipped: tx,
            shipped_appended_bytes: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            stop,
            writer_id: *uuid::Uuid::new_v4().as_bytes(),
        })
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// Whether the archive carries blob bytes (blobs on the filesystem).
    pub fn carries_blobs(&self) -> bool {
        self.blobs.is_some()
    }

    pub fn durability(&self) -> ArchiveDurability {
        self.config.durability
    }

    /// The last sequence number compaction may remove: everything after
    /// it is not in the archive yet.
    pub fn log_hold(&self) -> Option<u64> {
        Some(self.shipped.borrow().seq)
    }

    pub fn shipped(&self) -> Shipped {
        *self.shipped.borrow()
    }

    pub fn health(&self) -> Health {
        self.health.lock().clone()
    }

    /// Records committed but not in the archive.
    pub fn lag_records(&self) -> u64 {
        self.writer.tip().seq().saturating_sub(self.shipped().seq)
    }

    /// Record bytes appended since the archive was last current.
    pub fn lag_bytes(&self) -> u64 {
        if self.lag_records() == 0 {
            return 0;
        }
        self.writer
            .tip()
            .appended_bytes()
            .saturating_sub(self.shipped_appended_bytes.load(Ordering::Acquire))
    }

    /// How long the oldest unshipped record has waited (about).
    pub fn lag_seconds(&self) -> f64 {
        if self.lag_records() == 0 {
            return 0.0;
        }
        self.health
            .lock()
            .waiting_since
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Waits until record `seq` is in the archive (`durability =
    /// "archived"`), at most `ack_timeout_ms`.
    pub async fn wait_shipped(&self, seq: u64) -> Result<(), String> {
        let mut rx = self.shipped.subscribe();
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| s.seq >= seq).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the archive shipper stopped".into()),
            Err(_) => {
                let h = self.health();
                let why = h
                    .fenced
                    .or(h.last_error)
                    .unwrap_or_else(|| "shipping is behind".into());
                Err(format!(
                    "record {seq} is durable locally but not in the archive after {} ms: {why}",
                    self.config.ack_timeout_ms
                ))
            }
        }
    }

    /// Sets the `ferro_archive_*` gauges and counters (the metrics page
    /// calls this before rendering).
    pub fn refresh_metrics(&self) {
        let h = self.health();
        metrics::gauge!(SHIPPED_SEQ).set(self.shipped().seq as f64);
        metrics::gauge!(LAG_RECORDS).set(self.lag_records() as f64);
        metrics::gauge!(LAG_BYTES).set(self.lag_bytes() as f64);
        metrics::gauge!(LAG_SECONDS).set(self.lag_seconds());
        metrics::gauge!(FENCED).set(f64::from(u8::from(h.fenced.is_some())));
        metrics::gauge!(EPOCH).set(h.epoch.unwrap_or(0) as f64);
        metrics::counter!(SHIPMENTS).absolute(h.shipments_total);
        metrics::counter!(SHIPPED_BYTES).absolute(h.shipped_bytes_total);
        metrics::counter!(ERRORS).absolute(h.errors_total);
    }

    /// One line for `/readyz`, and whether writes can be acknowledged
    /// (fenced, or failing under `durability = "archived"`: not ready).
    pub fn readiness(&self) -> (bool, String) {
        let h = self.health();
        let shipped = self.shipped().seq;
        let lag = format!(
            "shipped to {shipped}, lag {} records, {} bytes, {:.1} s",
            self.lag_records(),
            self.lag_bytes(),
            self.lag_seconds()
        );
        if let Some(why) = h.fenced {
            return (false, format!("archive {}: stopped: {why}", self.url()));
        }
        match h.last_error {
            Some(e) => (
                self.config.durability == ArchiveDurability::Local,
                format!("archive {}: failing ({lag}): {e}", self.url()),
            ),
            None => (true, format!("archive {}: {lag}", self.url())),
        }
    }

    /// Starts the shipping loop.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run().await })
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let epoch = loop {
            match self.start().await {
                Ok(epoch) => break epoch,
                Err(ShipError::Fenced(f)) => return self.fence(f).await,
                Err(e) => {
                    self.failed(&e);
                    if self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        };
        backoff = BACKOFF_MIN;
        let interval = Duration::from_millis(self.config.ship_interval_ms);
        let archived = self.config.durability == ArchiveDurability::Archived;
        let mut last_ship = Instant::now() - interval;
        let mut snapshot_seq = self.archived_snapshot_seq().await.unwrap_or(0);
        // Under a steady load the loop never idles: snapshots are also
        // looked for between shipments, at most this often.
        let mut snapshot_looked = Instant::now();
        let mut uploaded = HashSet::new();
        // Where the last read stopped: the next starts there instead of
        // verifying the active segment again from its start.
        let mut resume = None;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let tip = self.writer.tip().clone();
            let commit = tip.next_commit();
            tokio::pin!(commit);
            commit.as_mut().enable();
            let tip_seq = tip.seq();
            let shipped = self.shipped().seq;
            if tip_seq > shipped {
                self.health
                    .lock()
                    .waiting_since
                    .get_or_insert_with(Instant::now);
                let due = archived
                    || self.lag_bytes() >= self.config.ship_max_bytes
                    || last_ship.elapsed() >= interval;
                if !due {
                    let wait = interval.saturating_sub(last_ship.elapsed());
                    tokio::select! {
                        _ = commit => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => break,
                    }
                    continue;
                }
                match self
                    .ship_once(&epoch, tip_seq, &mut uploaded, &mut resume)
                    .await
                {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        last_ship = Instant::now();
                        if snapshot_looked.elapsed() >= SNAPSHOT_LOOK_EVERY {
                            snapshot_looked = Instant::now();
                            match self.ship_snapshot(snapshot_seq).await {
                                Ok(Some(seq)) => snapshot_seq = seq,
                                Ok(None) => {}
                                Err(ShipError::Fenced(f)) => return self.fence(f).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "could not ship a snapshot to the archive")
                                }
                            }
                        }
                    }
                    Err(ShipError::Fenced(f)) => return self.fence(f).await,
                    Err(e) => {
                        self.failed(&e);
                        if self.pause(&mut backoff).await {
                            break;
                        }
                    }
                }
                continue;
            }
            self.health.lock().waiting_since = None;
            match self.ship_snapshot(snapshot_seq).await {
                Ok(Some(seq)) => snapshot_seq = seq,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not ship a snapshot to the archive"),
            }
            tokio::select! {
                _ = commit => {}
                // Snapshots are written without a commit: look again.
                _ = tokio::time::sleep(interval.max(Duration::from_secs(1))) => {}
                _ = self.stop.cancelled() => break,
            }
        }
        // Shutting down: what was committed goes out, within a bound.
        let flush = async {
            while self.writer.tip().seq() > self.shipped().seq {
                let tip_seq = self.writer.tip().seq();
                self.ship_once(&epoch, tip_seq, &mut uploaded, &mut resume)
                    .await?;
            }
            Ok::<(), ShipError>(())
        };
        match tokio::time::timeout(SHUTDOWN_FLUSH, flush).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the last records were not shipped before shutdown")
            }
            Err(_) => tracing::warn!(
                "the last records were not shipped before shutdown: the store is slow"
            ),
        }
    }

    /// Sleeps the backoff (doubling it); `true` when stopped meanwhile.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        let d = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.cancelled() => true,
        }
    }

    fn failed(&self, e: &ShipError) {
        let mut h = self.health.lock();
        h.errors_total += 1;
        let message = e.to_string();
        if h.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(archive = %self.url(), error = %message, "shipping to the archive failed; retrying");
        }
        h.last_error = Some(message);
    }

    /// Stops shipping for good, loudly, and parks until shutdown.
    async fn fence(&self, f: FenceError) {
        tracing::error!(archive = %self.url(), error = %f, "stopped shipping to the archive");
        {
            let mut h = self.health.lock();
            h.fenced = Some(f.to_string());
            h.errors_total += 1;
        }
        self.stop.cancelled().await
    }

    /// Finds the archive's last record, checks the local log continues
    /// it, and takes the writer epoch.
    async fn start(&self) -> Result<Epoch, ShipError> {
        let hint = cursor::read(&shipping_dir(&self.layout)).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring a damaged shipping cursor");
            None
        });
        let before = archive_tip(&self.store, hint.map(|c| c.piece_first_seq)).await?;
        // Refuse before taking an epoch: a server whose log is not the
        // archive's history must not fence the one whose log is.
        if let Some(tip) = before {
            self.check_continues(tip).await?;
        }
        let epoch = epoch::take(
            &self.store,
            self.writer_id,
            before.map_or(0, |t| t.seq),
            now_unix_ns(),
        )
        .await?;
        // A writer we just fenced may have landed a piece meanwhile.
        let after = archive_tip(&self.store, before.map(|t| t.piece_first_seq)).await?;
        let shipped = match after {
            Some(tip) => {
                if Some(tip) != before {
                    self.check_continues(tip).await?;
                }
                tip
            }
            None => self.log_start().await?,
        };
        tracing::info!(
            archive = %self.url(),
            epoch = epoch.epoch,
            shipped_seq = shipped.seq,
            log_seq = self.writer.tip().seq(),
            "shipping the log to the archive"
        );
        self.shipped.send_replace(shipped);
        self.health.lock().epoch = Some(epoch.epoch);
        Ok(epoch)
    }

    /// The local log must hold the archive's last record, with the same
    /// checksum: otherwise this directory is not the archive's history.
    async fn check_continues(&self, tip: Shipped) -> Result<(), ShipError> {
        let local_seq = self.writer.tip().seq();
        if tip.seq > local_seq {
            return Err(FenceError::Refused(format!(
                "the archive holds records up to {} but this log ends at {local_seq}: another server writes to it, or this data directory is older than the archive (restore it with ferroctl restore-from, or use another archive)",
                tip.seq
            ))
            .into());
        }
        let local_crc = if tip.seq == local_seq {
            Some(self.writer.tip().crc())
        } else {
            let log_dir = self.layout.log_dir();
            let at = tip.seq;
            tokio::task::spawn_blocking(move || {
                let options = ReadOptions {
                    mode: RecoveryMode::TolerateTornTail,
                    replay_after: at,
                    skip_covered_segments: true,
                };
                recovery::read_log(&log_dir, &options, &mut |_| Ok(ControlFlow::Break(())))
                    .map(|r| r.crc_at_replay_after)
            })
            .await
            .map_err(|e| ShipError::Local(e.to_string()))?
            .map_err(|e| ShipError::Local(e.to_string()))?
        };
        match local_crc {
            Some(crc) if crc == tip.crc => Ok(()),
            Some(crc) => Err(FenceError::Refused(format!(
                "record {} is {:#010x} in the archive but {crc:#010x} in this log: they are different histories; this server does not ship to that archive",
                tip.seq, tip.crc
            ))
            .into()),
            None => Err(FenceError::Refused(format!(
                "this log no longer holds record {} (the archive's last): records between would be missing",
                tip.seq
            ))
            .into()),
        }
    }

    /// For an empty archive: the point before the local log's first record.
    async fn log_start(&self) -> Result<Shipped, ShipError> {
        let log_dir = self.layout.log_dir();
        tokio::task::spawn_blocking(move || {
            let segments = crate::log::segment::list_segments(&log_dir)
                .map_err(|e| ShipError::Local(e.to_string()))?;
            let Some((first_seq, path)) = segments.first() else {
                return Ok(Shipped::default());
            };
            let mut header = [0u8; crate::log::format::SEGMENT_HEADER_BYTES];
            let mut file =
                std::fs::File::open(path).map_err(|e| ShipError::Local(e.to_string()))?;
            std::io::Read::read_exact(&mut file, &mut header)
                .map_err(|e| ShipError::Local(format!("{}: {e}", path.display())))?;
            let header = SegmentHeader::decode(&header)
                .map_err(|e| ShipError::Local(format!("{}: {e}", path.display())))?;
            Ok(Shipped {
                seq: first_seq - 1,
                crc: header.prev_crc,
                piece_first_seq: 0,
            })
        })
        .await
        .map_err(|e| ShipError::Local(e.to_string()))?
    }

    /// Ships the records after the shipped point, up to `upto`, as one
    /// piece (cut at a segment's end and at `piece_bytes_max`).
    async fn ship_once(
        &self,
        epoch: &Epoch,
        upto: u64,
        uploaded: &mut HashSet<Digest>,
        resume: &mut Option<ResumeAt>,
    ) -> Result<(), ShipError> {
        let started = Instant::now();
        let shipped = self.shipped();
        let appended_before = self.writer.tip().appended_bytes();
        let log_dir = self.layout.log_dir();
        let cap = self.piece_bytes_max;
        let want_blobs = self.blobs.is_some();
        // A position is only good for the records after the shipped point.
        let from = resume.filter(|r| r.seq == shipped.seq);
        let (piece, blobs, after) = tokio::task::spawn_blocking(move || {
            read_piece(&log_dir, shipped, from, upto, cap, want_blobs)
        })
        .await
        .map_err(|e| ShipError::Local(e.to_string()))??;
        if piece.records() == 0 {
            return Ok(());
        }
        let read = started.elapsed();
        let blob_count = blobs.len();
        let sent = match &self.blobs {
            Some(store) => {
                self.ship_blobs(store, piece.first_seq, blobs, uploaded)
                    .await?
            }
            None => BlobsSent::default(),
        };
        let blobbed = started.elapsed();
        // The epoch is checked after the blobs (content-addressed, harmless
        // from a fenced writer) and right before the piece, so that the
        // window between the check and the put is one request wide.
        epoch::check(&self.store, epoch).await?;
        let checked = started.elapsed();
        let name = piece.name();
        let next = Shipped {
            seq: piece.last_seq,
            crc: piece.last_crc,
            piece_first_seq: piece.first_seq,
        };
        let len = piece.len_bytes() as u64;
        match self
            .store
            .put_new(&name, Bytes::from(piece.into_bytes()))
            .await
        {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(FenceError::Refused(format!(
                    "{name} already exists in the archive: another server writes to it"
                ))
                .into())
            }
            Err(e) => return Err(e.into()),
        }
        let put = started.elapsed();
        if next.seq >= upto {
            self.shipped_appended_bytes
                .store(appended_before, Ordering::Release);
        }
        self.shipped.send_replace(next);
        *resume = after;
        {
            let mut h = self.health.lock();
            h.shipments_total += 1;
            h.shipped_bytes_total += len;
            if h.last_error.take().is_some() {
                tracing::info!(archive = %self.url(), "shipping to the archive works again");
            }
            h.waiting_since = (next.seq < self.writer.tip().seq()).then(Instant::now);
        }
        let cursor = ShipCursor {
            shipped_seq: next.seq,
            shipped_crc: next.crc,
            piece_first_seq: next.piece_first_seq,
            epoch: epoch.epoch,
            written_unix_ns: now_unix_ns(),
        };
        let dir = shipping_dir(&self.layout);
        let written = tokio::task::spawn_blocking(move || {
            cursor::write(&*crate::storage::real(), &dir, &cursor)
        })
        .await;
        if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
            // Only a hint: the next start reads the archive.
            tracing::warn!(error = %e, "could not write the shipping cursor");
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            records = next.seq - shipped.seq,
            bytes = len,
            blobs = blob_count,
            packs = sent.packs,
            packed = sent.packed,
            heads = sent.heads,
            puts = sent.puts,
            read_ms = ms(read),
            blobs_ms = ms(blobbed - read),
            epoch_check_ms = ms(checked - blobbed),
            piece_ms = ms(put - checked),
            cursor_ms = ms(started.elapsed() - put),
            "shipped a piece"
        );
        Ok(())
    }

    /// Puts the blobs `linked` names that the archive lacks: those under
    /// [`pack::PACK_BLOB_BYTES_MAX`] together in packs (no lookup first: a
    /// blob a record links is almost always new to the archive, and one
    /// pack is one request however many small blobs a shipment has), the
    /// others each as an object of its own after a `HEAD`,
    /// [`BLOB_UPLOADS_AT_ONCE`] at a time, those from [`BLOB_LARGE_BYTES`]
    /// one by one. Returns only once every one is in the archive (or gone
    /// from disk), since the piece linking them follows.
    async fn ship_blobs(
        &self,
        store: &BlobStore,
        first_seq: u64,
        linked: Vec<Digest>,
        uploaded: &mut HashSet<Digest>,
    ) -> Result<BlobsSent, ShipError> {
        let mut sent = BlobsSent::default();
        // Only a saving of requests: forgetting is safe (a blob is put
        // again, same bytes, or found by its HEAD), growing without bound
        // is not.
        if uploaded.len() >= UPLOADED_REMEMBERED_MAX {
            uploaded.clear();
        }
        let mut wanted = HashSet::new();
        let mut small = Vec::new();
        let mut single = Vec::new();
        let mut large = Vec::new();
        for digest in linked {
            if uploaded.contains(&digest) || !wanted.insert(digest.clone()) {
                continue;
            }
            let path = store.blob_path(&digest);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.len() >= BLOB_LARGE_BYTES => large.push((digest, path)),
                Ok(meta) if meta.len() >= pack::PACK_BLOB_BYTES_MAX => single.push((digest, path)),
                Ok(_) => small.push((digest, path)),
                Err(_) => gone(&digest),
            }
        }
        if !small.is_empty() {
            let packs = tokio::task::spawn_blocking(move || read_packs(small))
                .await
                .map_err(|e| ShipError::Local(e.to_string()))??;
            for (bytes, digests) in packs {
                let name = store::new_pack_name(first_seq);
                self.store.put_new(&name, Bytes::from(bytes)).await?;
                sent.packs += 1;
                sent.packed += digests.len();
                uploaded.extend(digests);
            }
        }
        let mut puts = futures_util::stream::iter(single)
            .map(|(digest, path)| self.ship_blob(digest, path))
            .buffer_unordered(BLOB_UPLOADS_AT_ONCE);
        let mut failed = None;
        while let Some(done) = puts.next().await {
            match done {
                Ok((digest, put)) => {
                    sent.heads += 1;
                    sent.puts += usize::from(put);
                    uploaded.insert(digest);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(puts);
        if let Some(e) = failed {
            return Err(e.into());
        }
        for (digest, path) in large {
            let (digest, put) = self.ship_blob(digest, path).await?;
            sent.heads += 1;
            sent.puts += usize::from(put);
            uploaded.insert(digest);
        }
        debug_assert!(wanted
            .iter()
            .all(|d| uploaded.contains(d) || !store.blob_path(d).exists()));
        Ok(sent)
    }

    /// Puts one blob as an object of its own, unless a `HEAD` finds it
    /// there: whether it was put.
    async fn ship_blob(&self, digest: Digest, path: PathBuf) -> Result<(Digest, bool), StoreError> {
        let name = blob_name(&digest);
        if self.store.exists(&name).await? {
            return Ok((digest, false));
        }
        // Content-addressed: putting a blob the archive has rewrites the
        // same bytes.
        self.store.put_file(&name, &path).await?;
        Ok((digest, true))
    }

    /// The newest snapshot already in the archive.
    async fn archived_snapshot_seq(&self) -> Result<u64, StoreError> {
        let listed = self.store.list(SNAPSHOTS_DIR, None).await?;
        Ok(listed
            .iter()
            .filter_map(|l| parse_numbered(&l.name, SNAPSHOTS_DIR, SNAPSHOT_SUFFIX))
            .max()
            .unwrap_or(0))
    }

    /// Ships the newest local snapshot newer than `after` whose records
    /// are all in the archive; returns its sequence number.
    async fn ship_snapshot(&self, after: u64) -> Result<Option<u64>, ShipError> {
        let shipped = self.shipped().seq;
        let dir = self.layout.snapshots_dir();
        let files = crate::snapshot::list(&dir).map_err(|e| ShipError::Local(e.to_string()))?;
        let Some(file) = files
            .iter()
            .filter(|f| f.seq > after && f.seq <= shipped)
            .max_by_key(|f| f.seq)
        else {
            return Ok(None);
        };
        let path = file.path.clone();
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| ShipError::Local(format!("{}: {e}", path.display())))?;
        if let Err(e) = crate::snapshot::format::check(&bytes) {
            return Err(ShipError::Local(format!("{}: {e}", path.display())));
        }
        match self
            .store
            .put_new(&snapshot_name(file.seq), Bytes::from(bytes))
            .await
        {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(seq = file.seq, "shipped a snapshot to the archive");
        Ok(Some(file.seq))
    }
}

/// `<data>/shipping/`: the shipper's cursor.
pub fn shipping_dir(layout: &Layout) -> PathBuf {
    layout.root.join("shipping")
}

/// A blob a shipped record links is no longer on disk.
fn gone(digest: &Digest) {
    // Deleted since (a later record says so): nothing to carry; a restore
    // to before that point lacks it.
    tracing::warn!(digest = %digest, "a shipped record links a blob no longer on disk");
}

/// A pack's bytes and the blobs in it.
type PackBytes = (Vec<u8>, Vec<Digest>);

/// Reads small blobs into packs of at most about [`pack::PACK_BYTES_MAX`]
/// each (blocking): the packs' bytes and the blobs in each. A blob gone
/// from disk meanwhile is left out.
fn read_packs(blobs: Vec<(Digest, PathBuf)>) -> Result<Vec<PackBytes>, ShipError> {
    let mut packs = Vec::new();
    let mut builder = PackBuilder::new();
    let mut digests = Vec::new();
    for (digest, path) in blobs {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                gone(&digest);
                continue;
            }
            Err(e) => return Err(ShipError::Local(format!("{}: {e}", path.display()))),
        };
        if builder.count() > 0 && builder.len_bytes() + bytes.len() > pack::PACK_BYTES_MAX {
            packs.push((
                std::mem::take(&mut builder).finish(),
                std::mem::take(&mut digests),
            ));
        }
        builder.push(&digest, &bytes);
        digests.push(digest);
    }
    if builder.count() > 0 {
        packs.push((builder.finish(), digests));
    }
    Ok(packs)
}

/// Reads the records after `shipped` up to `upto` from the local log into
/// one piece, and the blobs they link (when `want_blobs`).
fn read_piece(
    log_dir: &std::path::Path,
    shipped: Shipped,
    resume: Option<ResumeAt>,
    upto: u64,
    cap: u64,
    want_blobs: bool,
) -> Result<(PieceBuilder, Vec<Digest>, Option<ResumeAt>), ShipError> {
    let mut piece = PieceBuilder::new(shipped.seq + 1, shipped.crc);
    let mut blobs = Vec::new();
    let mut after = None;
    let mut segment = None;
    let mut broken = None;
    let options = ReadOptions {
        mode: RecoveryMode::TolerateTornTail,
        replay_after: shipped.seq,
        skip_covered_segments: true,
    };
    recovery::read_log_resuming(log_dir, &options, resume, &mut |record| {
        if record.seq > upto {
            return Ok(ControlFlow::Break(()));
        }
        // A piece never spans two segments: a sealed segment shipped from
        // its start is one object.
        if *segment.get_or_insert(record.segment_index) != record.segment_index
            || (piece.records() > 0 && piece.len_bytes() as u64 >= cap)
        {
            return Ok(ControlFlow::Break(()));
        }
        if record.seq != piece.last_seq + 1 {
            broken = Some(format!(
                "the local log no longer holds records {}..{} (the archive ends at {}): they cannot be shipped",
                piece.last_seq + 1,
                record.seq - 1,
                shipped.seq
            ));
            return Ok(ControlFlow::Break(()));
        }
        if !piece.push(record.seq, record.time_unix_ns, record.crc, record.payload) {
            broken = Some(format!(
                "record {} of the local log does not continue the archive (checksum chain differs)",
                record.seq
            ));
            return Ok(ControlFlow::Break(()));
        }
        after = Some(ResumeAt::after(record));
        if want_blobs {
            let entry = record
                .decode()
                .map_err(|e| format!("record {} checksum is valid but {e}", record.seq))?;
            for event in &entry.events {
                if let Event::BlobLinked { digest, .. } = event {
                    blobs.push(digest.clone());
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    })
    .map_err(|e| ShipError::Local(e.to_string()))?;
    if let Some(reason) = broken {
        return Err(FenceError::Refused(reason).into());
    }
    Ok((piece, blobs, after))
}

/// The archive's last record: the last piece, read back and verified.
/// `hint`: a piece known to exist (the cursor's); only pieces from it on
/// are listed. A hint the archive lacks falls back to a full listing.
pub async fn archive_tip(
    store: &ArchiveStore,
    hint: Option<u64>,
) -> Result<Option<Shipped>, StoreError> {
    let listed = match hint {
        Some(first) if first > 0 => {
            let mut after = store.list(LOG_DIR, Some(&piece_name(first))).await?;
            if after.is_empty() {
                if store.exists(&piece_name(first)).await? {
                    after.push(super::store::Listed {
                        name: piece_name(first),
                        size: 0,
                    });
                } else {
                    after = store.list(LOG_DIR, None).await?;
                }
            }
            after
        }
        _ => store.list(LOG_DIR, None).await?,
    };
    let Some((first_seq, name)) = listed
        .iter()
        .filter_map(|l| parse_numbered(&l.name, LOG_DIR, PIECE_SUFFIX).map(|s| (s, &l.name)))
        .max_by_key(|(s, _)| *s)
    else {
        return Ok(None);
    };
    let bytes = store.get(name).await?;
    let (seq, crc) = piece::verify(name, first_seq, &bytes, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .map_err(|e| StoreError::Failed {
        key: name.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(Shipped {
        seq,
        crc,
        piece_first_seq: first_seq,
    }))
}
