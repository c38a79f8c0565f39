//! The follower: the task of a read replica that keeps its log and state
//! up with the archive it follows.
//!
//! Every `poll_interval_ms` (sooner when the primary's feed says it
//! committed) it lists the archive's pieces after the one holding its
//! last record, downloads and verifies each new one (checksums, sequence
//! continuity, and the chain to its own last record: `archive::piece`),
//! brings in the blobs its records link (blobs on the filesystem: from
//! the archive's `blobs/`, each hashed before it is kept), and only then
//! appends the records as they are to its local log, durably, and applies
//! them to the state (`LogWriter::append_followed`).
//!
//! Invariant: the replica's log is a prefix of the archive's, record for
//! record (same sequence numbers, times and checksums): it never holds,
//! and so never serves, a record the archive does not have, and it can be
//! promoted to ship to that archive.
//! Boundary: a piece that does not verify, a hole between pieces, or a
//! blob the archive lacks stops the follower at the record before: it
//! keeps serving what it has, says why (log line, `/readyz`,
//! `ferro_replica_stalled`), and tries again, never skipping.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _};
use parking_lot::{Mutex, RwLock};
use sha2::Digest as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::ReplicaConfig;
use crate::archive::pack;
use crate::archive::piece::{self, PieceError};
use crate::archive::read::{self, PieceInfo};
use crate::archive::store::{
    blob_name, parse_pack_name, piece_name, ArchiveStore, StoreError, LOG_DIR, PACKS_DIR,
};
use crate::blobs::BlobStore;
use crate::events::Event;
use crate::log::{FollowedRecord, LogWriter, SubmitError};
use crate::oci::Digest;
use crate::projection::State;

pub const APPLIED_SEQ: &str = "ferro_replica_applied_seq";
pub const LAG_SECONDS: &str = "ferro_replica_lag_seconds";
pub const LAG_RECORDS: &str = "ferro_replica_lag_records";
pub const POLLS: &str = "ferro_replica_polls_total";
pub const ERRORS: &str = "ferro_replica_errors_total";
pub const RECORDS: &str = "ferro_replica_records_applied_total";
pub const PIECES: &str = "ferro_replica_pieces_applied_total";
pub const BLOBS: &str = "ferro_replica_blobs_fetched_total";
pub const STALLED: &str = "ferro_replica_stalled";

/// Registers the metrics' descriptions.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        APPLIED_SEQ,
        "The last record of the archive this replica applied"
    );
    describe_gauge!(
        LAG_SECONDS,
        "Seconds since the archive last held nothing this replica had not applied"
    );
    describe_gauge!(
        LAG_RECORDS,
        "Records the primary committed that this replica has not applied (with replica.primary)"
    );
    describe_gauge!(
        STALLED,
        "1 while following is stopped at a piece it cannot use"
    );
    describe_counter!(POLLS, "Listings of the archive");
    describe_counter!(ERRORS, "Polls that failed");
    describe_counter!(RECORDS, "Records applied from the archive");
    describe_counter!(PIECES, "Pieces applied from the archive");
    describe_counter!(BLOBS, "Blobs brought in from the archive");
}

/// Pieces downloaded ahead of the one being applied.
const PREFETCH_PIECES: usize = 4;
/// How many of a piece's blobs are fetched at the same time: on a store
/// with a few milliseconds per request, one after another is most of a
/// piece's apply time under a push load. Each fetch streams into its own
/// staging file, so memory does not grow with it.
const BLOB_FETCHES_AT_ONCE: usize = 8;
/// Longest wait between two attempts while the archive fails.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one long-poll of the primary's feed waits for a commit.
const FEED_WAIT_SECS: u64 = 25;
/// A feed answer this old no longer says where the primary is.
const FEED_FRESH: Duration = Duration::from_secs(30);
/// With the primary's feed answering, the archive is still listed this
/// often while nothing is known to be pending (a missed hint costs at
/// most this).
const HINTED_IDLE_POLL: Duration = Duration::from_secs(2);

/// What `/readyz`, `/metrics` and the logs show.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The last failure, while polling fails.
    pub last_error: Option<String>,
    /// Why following is stopped at a piece it cannot use (it retries).
    pub stalled: Option<String>,
    pub polls_total: u64,
    pub errors_total: u64,
    pub pieces_total: u64,
    pub records_total: u64,
    pub blobs_total: u64,
    /// When the last poll that applied everything the archive listed
    /// started: the archive had nothing newer then.
    pub caught_up_at: Option<Instant>,
    /// The primary's last committed sequence number, from its feed, and
    /// when that was heard.
    pub primary_seq: Option<(u64, Instant)>,
}

/// Why a poll did not bring the replica up to the archive.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The archive did not answer as it should (an outage): retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A piece that does not verify: following stops before it.
    #[error("corrupt archive object {0}")]
    Corrupt(#[from] PieceError),
    /// Records missing between the replica and the archive, or a record
    /// whose checksum differs: following stops.
    #[error("{0}")]
    Hole(String),
    /// The local log or blob store failed.
    #[error("{0}")]
    Local(String),
}

impl FollowError {
    /// Whether following is stopped at a piece (not a passing failure).
    fn stalls(&self) -> bool {
        matches!(self, FollowError::Corrupt(_) | FollowError::Hole(_))
    }
}

/// The last piece applied, its first and last sequence numbers: kept
/// between polls so that a poll lists only from it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedPiece {
    first_seq: u64,
    last_seq: u64,
}

/// The follower of one read replica.
pub struct Follower {
    store: ArchiveStore,
    config: ReplicaConfig,
    writer: LogWriter,
    /// Where linked blobs are brought in, and where the files of blobs
    /// the primary collected are removed, when blobs live on the
    /// filesystem (in object storage the primary's bucket is shared).
    blobs: Option<BlobStore>,
    /// The state the writer applies to: a collected blob's file goes
    /// only once the state no longer holds the blob.
    state: Arc<RwLock<State>>,
    health: Mutex<Health>,
    /// Woken by the primary's feed.
    hint: Notify,
    stop: CancellationToken,
    /// Where the small blobs of the archive's packs are.
    packs: tokio::sync::Mutex<PackIndex>,
}

/// The blobs of the archive's packs not fetched yet, as far as listed.
#[derive(Debug, Default)]
struct PackIndex {
    /// The last pack listed: the next listing starts after it.
    listed_to: Option<String>,
    /// Each blob's pack and byte range in it; removed once fetched.
    blobs: std::collections::HashMap<Digest, (String, std::ops::Range<u64>)>,
}

/// Blobs the pack index holds at most (about 150 MiB): past it, the
/// index starts over from a full listing when next needed.
const PACK_INDEX_MAX: usize = 1_000_000;

impl Follower {
    /// A follower of `store` appending to `writer` (which must refuse
    /// commands: `LogWriter::follow_only`); nothing runs until
    /// [`Follower::spawn`].
    pub fn new(
        store: ArchiveStore,
        config: ReplicaConfig,
        writer: LogWriter,
        state: Arc<RwLock<State>>,
        blobs: Option<BlobStore>,
        stop: CancellationToken,
    ) -> Arc<Follower> {
        Arc::new(Follower {
            store,
            config,
            writer,
            blobs,
            state,
            health: Mutex::new(Health::default()),
            hint: Notify::new(),
            stop,
            packs: Default::default(),
        })
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    pub fn health(&self) -> Health {
        self.health.lock().clone()
    }

    /// The last record applied.
    pub fn applied_seq(&self) -> u64 {
        self.writer.tip().seq()
    }

    /// How far behind the archive the replica may be, in seconds: since
    /// the archive last had nothing the replica has not applied (0 while
    /// the primary's feed says the replica has everything it committed).
    pub fn lag_seconds(&self) -> f64 {
        let h = self.health.lock();
        if let Some((seq, at)) = h.primary_seq {
            if at.elapsed() < FEED_FRESH && self.applied_seq() >= seq {
                return 0.0;
            }
        }
        h.caught_up_at
            .map_or(f64::NAN, |t| t.elapsed().as_secs_f64())
    }

    /// Records the primary committed that the replica has not applied
    /// (known only with `replica.primary`, from its feed).
    pub fn lag_records(&self) -> Option<u64> {
        let h = self.health.lock();
        h.primary_seq
            .filter(|(_, at)| at.elapsed() < FEED_FRESH)
            .map(|(seq, _)| seq.saturating_sub(self.applied_seq()))
    }

    /// What a refused write says.
    pub fn write_refusal(&self) -> String {
        self.config.write_refusal()
    }

    /// Sets the `ferro_replica_*` figures (the metrics page calls this).
    pub fn refresh_metrics(&self) {
        let h = self.health();
        metrics::gauge!(APPLIED_SEQ).set(self.applied_seq() as f64);
        metrics::gauge!(LAG_SECONDS).set(self.lag_seconds());
        if let Some(records) = self.lag_records() {
            metrics::gauge!(LAG_RECORDS).set(records as f64);
        }
        metrics::gauge!(STALLED).set(f64::from(u8::from(h.stalled.is_some())));
        metrics::counter!(POLLS).absolute(h.polls_total);
        metrics::counter!(ERRORS).absolute(h.errors_total);
        metrics::counter!(RECORDS).absolute(h.records_total);
        metrics::counter!(PIECES).absolute(h.pieces_total);
        metrics::counter!(BLOBS).absolute(h.blobs_total);
    }

    /// The `/readyz` line. A replica stays ready while it fails or is
    /// stalled: it serves a consistent past state, and says so here.
    pub fn readiness(&self) -> String {
        let h = self.health();
        let lag = self.lag_seconds();
        let lag = if lag.is_nan() {
            "not caught up yet".to_owned()
        } else {
            format!("lag {lag:.1} s")
        };
        let mut line = format!(
            "replica of {}: applied to {}, {lag}",
            self.url(),
            self.applied_seq()
        );
        if let Some(records) = self.lag_records() {
            line.push_str(&format!(", {records} records behind the primary"));
        }
        if let Some(why) = h.stalled {
            line.push_str(&format!("; stopped: {why}"));
        } else if let Some(e) = h.last_error {
            line.push_str(&format!("; failing: {e}"));
        }
        line
    }

    /// Starts following (and, with `replica.primary`, the feed's
    /// long-poll).
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        if !self.config.primary.is_empty() {
            let this = self.clone();
            tokio::spawn(async move { this.watch_primary().await });
        }
        let this = self.clone();
        tokio::spawn(async move { this.run().await })
    }

    async fn run(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        let mut applied_piece = None;
        let mut backoff = interval;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let wait = match self.poll_once(&mut applied_piece).await {
                Ok(_) => {
                    backoff = interval;
                    self.next_wait(interval)
                }
                Err(e) => {
                    self.failed(&e);
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX.max(interval));
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.hint.notified() => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// How long to wait before the next listing: the poll interval, or
    /// longer while the primary's feed answers and says nothing is new.
    fn next_wait(&self, interval: Duration) -> Duration {
        let h = self.health.lock();
        match h.primary_seq {
            Some((seq, at)) if at.elapsed() < FEED_FRESH && self.applied_seq() >= seq => {
                HINTED_IDLE_POLL.max(interval)
            }
            _ => interval,
        }
    }

    fn failed(&self, e: &FollowError) {
        let message = e.to_string();
        let mut h = self.health.lock();
        h.errors_total += 1;
        let stalled = e.stalls();
        let known = if stalled {
            h.stalled.as_deref()
        } else {
            h.last_error.as_deref()
        };
        if known != Some(message.as_str()) {
            if stalled {
                tracing::error!(archive = %self.url(), applied_seq = self.applied_seq(), error = %message, "replica stopped at a piece it cannot use; serving what it has, retrying");
            } else {
                tracing::warn!(archive = %self.url(), error = %message, "following the archive failed; retrying");
            }
        }
        if stalled {
            h.stalled = Some(message);
            h.last_error = None;
        } else {
            h.last_error = Some(message);
        }
    }

    /// Lists the archive once and applies every new piece. Returns the
    /// records applied.
    pub async fn poll_once(
        &self,
        applied_piece: &mut Option<AppliedPiece>,
    ) -> Result<u64, FollowError> {
        let started = Instant::now();
        self.health.lock().polls_total += 1;
        let tip = self.writer.tip().clone();
        let (last_seq, last_crc) = (tip.seq(), tip.crc());
        // Only the pieces from the one holding the last record on (a full
        // listing the first time, or when nothing is applied yet).
        let known = applied_piece.filter(|p| p.last_seq == last_seq);
        let listed = match known {
            Some(p) => {
                self.store
                    .list(LOG_DIR, Some(&piece_name(p.first_seq - 1)))
                    .await?
            }
            None => self.store.list(LOG_DIR, None).await?,
        };
        let pieces: Vec<PieceInfo> = read::pieces_of(listed);
        let holding = pieces.iter().rev().find(|p| p.first_seq <= last_seq);
        if last_seq > 0 && holding.is_none() {
            // An archive that no longer lists what the replica has is
            // unavailable or not this one: never "nothing new".
            return Err(match pieces.first() {
                Some(p) if known.is_none() => FollowError::Hole(format!(
                    "the archive's log starts at sequence {} but this replica ends at {last_seq}: it is not this replica's archive",
                    p.first_seq
                )),
                _ => FollowError::Store(StoreError::Failed {
                    key: piece_name(known.map_or(1, |p| p.first_seq)),
                    reason: format!(
                        "the archive no longer lists the piece holding record {last_seq}, which this replica applied"
                    ),
                }),
            });
        }
        let mut to_read: Vec<PieceInfo> = Vec::new();
        if let Some(h) = holding {
            // Not known to end at the last record (the first poll): read
            // it again, which also checks that record's checksum.
            if known.is_none() {
                to_read.push(h.clone());
            }
        }
        to_read.extend(pieces.iter().filter(|p| p.first_seq > last_seq).cloned());
        let mut applied = 0;
        let mut at = (last_seq, last_crc);
        let store = &self.store;
        let mut fetches = stream::iter(to_read)
            .map(|p| async move {
                let bytes: Result<Bytes, StoreError> = store.get(&p.name).await;
                (p, bytes)
            })
            .buffered(PREFETCH_PIECES);
        while let Some((p, bytes)) = fetches.next().await {
            if self.stop.is_cancelled() {
                // Stopping: not caught up, whatever was listed.
                return Ok(applied);
            }
            let bytes = bytes?;
            let (records, piece_last) = decode_piece(&p, &bytes, at)?;
            if !records.is_empty() {
                let (mut linked, mut collected) = (Vec::new(), Vec::new());
                for event in records.iter().flat_map(|r| r.entry.events.iter()) {
                    match event {
                        Event::BlobLinked { digest, .. } => linked.push(digest.clone()),
                        Event::BlobDeleted { digest, .. } => collected.push(digest.clone()),
                        _ => {}
                    }
                }
                self.fetch_blobs(&linked).await?;
                let count = records.len() as u64;
                let last = records.last().map(|r| (r.seq, r.crc)).expect("not empty");
                self.writer
                    .append_followed(records)
                    .await
                    .map_err(|e| match e {
                        SubmitError::Stopped => FollowError::Local("the log writer stopped".into()),
                        e => FollowError::Local(e.to_string()),
                    })?;
                self.remove_collected(collected).await?;
                at = last;
                applied += count;
                let mut h = self.health.lock();
                h.pieces_total += 1;
                h.records_total += count;
            }
            *applied_piece = Some(AppliedPiece {
                first_seq: p.first_seq,
                last_seq: piece_last,
            });
        }
        let mut h = self.health.lock();
        if h.stalled.take().is_some() || h.last_error.take().is_some() {
            tracing::info!(archive = %self.url(), applied_seq = at.0, "following the archive works again");
        }
        h.caught_up_at = Some(started);
        Ok(applied)
    }

    /// Brings every blob in `digests` the store lacks from the archive,
    /// each checked against its digest before it is kept,
    /// [`BLOB_FETCHES_AT_ONCE`] at a time. Returns once all are kept: the
    /// records linking them are appended after.
    async fn fetch_blobs(&self, digests: &[Digest]) -> Result<(), FollowError> {
        let Some(blobs) = &self.blobs else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::new();
        let mut missing = Vec::new();
        for digest in digests {
            if !seen.insert(digest) {
                continue;
            }
            if tokio::fs::try_exists(blobs.blob_path(digest))
                .await
                .unwrap_or(false)
            {
                continue;
            }
            missing.push(digest.clone());
        }
        if !missing.is_empty() {
            self.list_packs(&missing).await?;
        }
        // Blobs in packs: one read per pack, of the span that holds the
        // ones wanted (a shipment's small blobs are one pack: one request
        // instead of one per blob). The others one by one.
        let mut spans: std::collections::BTreeMap<String, Vec<(Digest, std::ops::Range<u64>)>> =
            Default::default();
        let mut alone = Vec::new();
        {
            let index = self.packs.lock().await;
            for digest in missing {
                match index.blobs.get(&digest) {
                    Some((pack, range)) => spans
                        .entry(pack.clone())
                        .or_default()
                        .push((digest, range.clone())),
                    None => alone.push(digest),
                }
            }
        }
        let mut packed = Vec::new();
        for (pack, wanted) in spans {
            let start = wanted.iter().map(|(_, r)| r.start).min().unwrap_or(0);
            let end = wanted.iter().map(|(_, r)| r.end).max().unwrap_or(0);
            let span = self.store.get_range(&pack, start..end).await?;
            for (digest, r) in wanted {
                let bytes = span.slice((r.start - start) as usize..(r.end - start) as usize);
                packed.push((digest, Some((pack.clone(), bytes))));
            }
        }
        let all = packed
            .into_iter()
            .chain(alone.into_iter().map(|d| (d, None)));
        let mut fetches = stream::iter(all)
            .map(|(digest, read)| async move { self.fetch_blob(blobs, &digest, read).await })
            .buffer_unordered(BLOB_FETCHES_AT_ONCE);
        // A failure lets the others finish: a fetch dropped halfway would
        // leave its staging file behind.
        let mut failed = None;
        while let Some(fetched) = fetches.next().await {
            match fetched {
                Ok(()) => self.health.lock().blobs_total += 1,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Removes the files of blobs the primary collected, once applied:
    /// those the state no longer holds (a later record may link the same
    /// bytes again).
    async fn remove_collected(&self, mut digests: Vec<Digest>) -> Result<(), FollowError> {
        let Some(blobs) = &self.blobs else {
            return Ok(());
        };
        {
            let state = self.state.read();
            digests.retain(|d| !state.blobs.contains_key(d));
        }
        if digests.is_empty() {
            return Ok(());
        }
        blobs
            .remove_collected(&digests, &Default::default())
            .await
            .map_err(|e| FollowError::Local(format!("removing collected blobs: {e}")))
    }

    /// Reads the index of every pack listed after the last one read, when
    /// one of `missing` is not in the index yet.
    async fn list_packs(&self, missing: &[Digest]) -> Result<(), FollowError> {
        let mut index = self.packs.lock().await;
        if missing.iter().all(|d| index.blobs.contains_key(d)) {
            return Ok(());
        }
        if index.blobs.len() >= PACK_INDEX_MAX {
            *index = PackIndex::default();
        }
        let listed = self
            .store
            .list(PACKS_DIR, index.listed_to.as_deref())
            .await?;
        for l in listed {
            if parse_pack_name(&l.name).is_none() {
                continue;
            }
            let head = self
                .store
                .get_range(&l.name, 0..pack::HEAD_BYTES as u64)
                .await?;
            let corrupt = |e: pack::PackError| {
                FollowError::Hole(format!("corrupt archive object {}: {e}", l.name))
            };
            let end = pack::index_end(&head).map_err(corrupt)?;
            let bytes = self.store.get_range(&l.name, 0..end).await?;
            for e in pack::read_index(&bytes).map_err(corrupt)? {
                index.blobs.insert(e.digest, (l.name.clone(), e.range));
            }
            index.listed_to = Some(l.name);
        }
        Ok(())
    }

    /// Keeps blob `digest`: the bytes `read` from a pack (and the pack's
    /// name), or else its object of its own, streamed; hashed either way.
    async fn fetch_blob(
        &self,
        blobs: &BlobStore,
        digest: &Digest,
        read: Option<(String, Bytes)>,
    ) -> Result<(), FollowError> {
        let (name, mut chunks) = match read {
            Some((pack, bytes)) => {
                let chunk = Ok::<_, StoreError>(bytes);
                (pack, stream::once(async move { chunk }).boxed())
            }
            None => {
                let name = blob_name(digest);
                match self.store.get_stream(&name).await {
                    Ok(c) => (name, c),
                    Err(StoreError::NotFound(_)) => {
                        return Err(FollowError::Hole(format!(
                            "a record links blob {digest}, which the archive does not carry ({name}, nor a pack): blobs on the filesystem need the primary's blobs on its filesystem too"
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let staging = blobs.one_shot_staging_path(digest, &crate::blobs::new_upload_id());
        let local = |e: std::io::Error| {
            FollowError::Local(format!("storing blob {digest} from the archive: {e}"))
        };
        let mut writer = blobs.open_one_shot_staging(&staging).map_err(local)?;
        let mut hasher = sha2::Sha256::new();
        let written = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                writer.write(&chunk).map_err(local)?;
            }
            Ok::<(), FollowError>(())
        }
        .await;
        let actual = hex::encode(hasher.finalize());
        let checked = written.and_then(|()| {
            if digest.algorithm() != crate::oci::DigestAlgorithm::Sha256 || actual != digest.hex() {
                Err(FollowError::Hole(format!(
                    "corrupt archive object {name}: its bytes hash to sha256:{actual}"
                )))
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            let path = writer.path.clone();
            drop(writer);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        blobs.commit_staging(writer, digest).map_err(local)?;
        self.packs.lock().await.blobs.remove(digest);
        Ok(())
    }

    /// Long-polls the primary's event feed and wakes the follower when it
    /// commits: a hint only (records still come from the archive); a
    /// primary that does not answer just leaves the follower polling.
    async fn watch_primary(self: Arc<Self>) {
        let base = self.config.primary.trim_end_matches('/').to_owned();
        let client = match object_store_http::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(FEED_WAIT_SECS + 10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(primary = %base, error = %e, "cannot watch the primary's feed; polling the archive alone");
                return;
            }
        };
        let mut after = 0u64;
        let mut failing = false;
        loop {
            let url =
                format!("{base}/v2/_ferro/events/feed?after={after}&n=1&wait={FEED_WAIT_SECS}");
            let mut request = client.get(&url);
            if !self.config.primary_username.is_empty() {
                request = request.basic_auth(
                    &self.config.primary_username,
                    Some(&self.config.primary_password),
                );
            }
            let answer = tokio::select! {
                a = feed_last_seq(request, &url) => a,
                _ = self.stop.cancelled() => return,
            };
            match answer {
                Ok(seq) => {
                    if failing {
                        tracing::info!(primary = %base, "the primary's feed answers again");
                        failing = false;
                    }
                    self.health.lock().primary_seq = Some((seq, Instant::now()));
                    if seq > self.applied_seq() {
                        self.hint.notify_one();
                    }
                    after = seq;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(primary = %base, error = %e, "the primary's feed does not answer; polling the archive alone");
                        failing = true;
                    }
                    self.health.lock().primary_seq = None;
                    tokio::select! {
                        _ = tokio::time::sleep(BACKOFF_MAX) => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// One long-poll of the feed: the primary's last committed sequence
/// number.
async fn feed_last_seq(
    request: object_store_http::RequestBuilder,
    url: &str,
) -> Result<u64, String> {
    let answer = request
        .send()
        .await
        .map_err(|e| crate::mirror::client::error_chain(&e))?;
    let status = answer.status();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(format!(
            "{url}: {status}: the primary has auth on; give the replica a user that may pull every repository (replica.primary_username, replica.primary_password)"
        ));
    }
    if !status.is_success() {
        return Err(format!("{url}: {status}"));
    }
    let body = answer
        .bytes()
        .await
        .map_err(|e| crate::mirror::client::error_chain(&e))?;
    let page: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not a feed page: {e}"))?;
    page.get("last_seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("{url}: the page has no last_seq"))
}

/// Verifies piece `p` (chained to `at`, the replica's last record, when
/// it starts after it) and returns its records after `at`, decoded, with
/// the piece's last sequence number. A piece holding `at` must hold it
/// with the same checksum.
fn decode_piece(
    p: &PieceInfo,
    bytes: &Bytes,
    at: (u64, u32),
) -> Result<(Vec<FollowedRecord>, u64), FollowError> {
    let chained = p.first_seq > at.0;
    if chained && p.first_seq != at.0 + 1 {
        return Err(FollowError::Hole(format!(
            "{} starts at sequence {} but this replica ends at {}: records {}..{} are not in the archive",
            p.name,
            p.first_seq,
            at.0,
            at.0 + 1,
            p.first_seq - 1
        )));
    }
    let mut records = Vec::new();
    let mut problem = None;
    let (last_seq, _) = piece::verify(
        &p.name,
        p.first_seq,
        bytes,
        chained.then_some(at),
        &mut |r| {
            if r.seq < at.0 {
                return ControlFlow::Continue(());
            }
            if r.seq == at.0 {
                if r.crc != at.1 {
                    problem = Some(format!(
                        "record {} is {:#010x} in {} but {:#010x} in this replica's log: they are different histories",
                        r.seq, r.crc, p.name, at.1
                    ));
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            }
            match crate::log::format::decode_payload(r.payload) {
                Ok(entry) => {
                    records.push(FollowedRecord {
                        seq: r.seq,
                        time_unix_ns: r.time_unix_ns,
                        crc: r.crc,
                        prev_crc: r.prev_crc,
                        bytes: bytes.slice_ref(r.bytes),
                        entry,
                    });
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    problem = Some(format!(
                        "record {} in {} has a valid checksum but {e}",
                        r.seq, p.name
                    ));
                    ControlFlow::Break(())
                }
            }
        },
    )?;
    if let Some(why) = problem {
        return Err(FollowError::Hole(why));
    }
    if last_seq < at.0 {
        return Err(FollowError::Hole(format!(
            "{} ends at sequence {last_seq}, before this replica's last record {}, and no piece follows it",
            p.name, at.0
        )));
    }
    Ok((records, last_seq))
}
