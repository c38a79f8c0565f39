//! The log writer: the single owner of the active segment.
//!
//! Handlers submit a [`Command`] and await the outcome. The writer thread
//! takes every waiting command (group commit), plans each against the
//! current state, appends the resulting entries in one write, makes them
//! durable with one `fdatasync` (per [`Durability`]), applies them to the
//! state in sequence order, and only then answers.
//!
//! Invariant: the state readers see holds only entries that are durable
//! under the configured durability; nothing is acknowledged before that.
//! Boundary: a failed write is cut back off the segment; a failed fsync
//! (or a failed segment roll) poisons the writer. The kernel may have
//! dropped the dirty pages after a failed fsync, so no later fsync can
//! vouch for them: a poisoned writer refuses every command until it has
//! healed (see [`Worker::heal`]): stray segments removed, the active
//! segment re-read and verified, cut back to what an fsync made durable,
//! the acknowledged but unsynced records written again and fsynced, and a
//! fresh segment started. Healing is retried at every batch until it works.
//!
//! All file changes go through the [`FileSystem`] seam.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use super::format::{
    encode_payload, encode_record, read_record, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use super::segment::{create_segment_with, parse_segment_file_name, remove_segments_after};
use crate::commands::{Command, Key, Rejection};
use crate::events::{Actor, Entry, Event};
use crate::limits::{GROUP_COMMIT_COMMANDS_MAX, WRITER_QUEUE_COMMANDS_MAX};
use crate::projection::State;
use crate::storage::{FileHandle, Fs, OpenMode};

/// When an appended entry counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Durability {
    /// Acknowledge after `fdatasync` of the batch: nothing acknowledged is
    /// lost on power failure. The default.
    #[default]
    Always,
    /// Acknowledge after `write`; `fdatasync` every `interval_ms`. Survives a
    /// process crash; power loss may drop the last interval.
    Interval { interval_ms: u64 },
    /// Never fsync (tests and benchmarks only). Survives a process crash,
    /// not power loss.
    Never,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub durability: Durability,
    pub segment_bytes_max: u64,
}

/// The outcome of a command that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The entry's sequence number; `None` when the command changed nothing.
    pub seq: Option<u64>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the log could not be written: {0}")]
    Storage(String),
    #[error("the log writer has stopped")]
    Stopped,
    /// Durable locally, but a further acknowledgement condition (the
    /// archive, under `archive.durability = "archived"`) was not met.
    #[error("{0}")]
    NotReplicated(String),
    /// The log follows another server's (a read replica): it takes
    /// records only from there, never a command.
    #[error("{0}")]
    Follower(String),
}

/// A record of another server's log, verified (its checksum, and its
/// chain to the record before it), to be appended as it is: same
/// sequence number, time and checksum, so the two logs stay one history.
#[derive(Debug, Clone)]
pub struct FollowedRecord {
    pub seq: u64,
    pub time_unix_ns: u64,
    pub crc: u32,
    pub prev_crc: u32,
    /// The record's bytes as on disk (header and payload).
    pub bytes: bytes::Bytes,
    /// Its payload, decoded.
    pub entry: Entry,
}

/// What a command waits for after its entry is durable and applied,
/// before it is acknowledged (the archive's `durability = "archived"`):
/// given the entry's sequence number.
pub type AckWait = Arc<
    dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Statistics the writer keeps for metrics and tests.
#[derive(Debug, Clone, Default)]
pub struct WriterStats {
    pub batches: u64,
    pub entries: u64,
    pub fsyncs: u64,
    pub fsync_total_us: u64,
    pub largest_batch: u64,
    /// Writes, fsyncs and segment creations that failed.
    pub storage_failures: u64,
    /// Times the writer healed after being poisoned.
    pub heals: u64,
    /// Why the writer refuses commands, while it does (see the module doc).
    pub poisoned: Option<String>,
}

enum Submission {
    Command {
        actor: Actor,
        command: Box<Command>,
        reply: oneshot::Sender<Result<Committed, SubmitError>>,
    },
    /// Make everything written so far durable (interval ticks, shutdown).
    Sync {
        reply: Option<oneshot::Sender<Result<(), SubmitError>>>,
    },
    /// Append records of the followed log as they are (a read replica).
    Follow {
        records: Vec<FollowedRecord>,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
}

/// The handle request handlers use. Cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Submission>,
    stats: Arc<Mutex<WriterStats>>,
    tip: Arc<LogTip>,
    /// Set once, shared by every clone (see [`AckWait`]).
    ack_wait: Arc<std::sync::OnceLock<AckWait>>,
    /// Set once when the log follows another server's: why commands are
    /// refused (see [`LogWriter::follow_only`]).
    follow_only: Arc<std::sync::OnceLock<String>>,
}

/// The last record applied to the state: its sequence number and checksum.
///
/// # Invariants
/// The writer updates the tip only while it holds the state's write lock,
/// in the same section that applies the records. So whoever holds the
/// state's read lock sees the tip of exactly that state: `seq()` equals
/// `State::last_seq`, and `crc()` is the checksum of that record, which a
/// snapshot of the state must carry for the log to continue after it.
#[derive(Debug, Default)]
pub struct LogTip {
    seq: AtomicU64,
    crc: AtomicU32,
    /// Record bytes appended since the writer started.
    appended_bytes: AtomicU64,
    changed: Notify,
    /// Wakes every task waiting for a commit (event feed long-polls).
    committed: Notify,
}

impl LogTip {
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn crc(&self) -> u32 {
        self.crc.load(Ordering::Acquire)
    }

    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Acquire)
    }

    /// Resolves after the next commit (or at once if one happened since the
    /// last call): a single waiter, such as the snapshot scheduler.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Resolves after the next commit. To not miss a commit between
    /// reading `seq()` and waiting, call `enable()` on the returned future
    /// (pinned) before reading `seq()`.
    pub fn next_commit(&self) -> tokio::sync::futures::Notified<'_> {
        self.committed.notified()
    }

    /// Wakes the waiter of [`LogTip::changed`] without a commit.
    pub fn wake(&self) {
        self.changed.notify_one();
    }

    /// Called with the state's write lock held (see the invariant).
    fn publish(&self, seq: u64, crc: u32, appended_bytes: u64) {
        self.seq.store(seq, Ordering::Release);
        self.crc.store(crc, Ordering::Release);
        self.appended_bytes
            .fetch_add(appended_bytes, Ordering::AcqRel);
        self.committed.notify_waiters();
    }
}

/// Where the writer resumes: the tail of the recovered log.
pub struct WriterStart {
    /// Every change to the log's files goes through it.
    pub fs: Fs,
    pub log_dir: PathBuf,
    /// The last segment, opened for append, with its length (its valid
    /// records end there), if any.
    pub active: Option<(PathBuf, Box<dyn FileHandle>, u64)>,
    pub last_seq: u64,
    pub last_crc: u32,
    pub last_time_unix_ns: u64,
}

impl LogWriter {
    /// Starts the writer thread. `state` must be the state of the log up to
    /// `start.last_seq`.
    pub fn start(
        start: WriterStart,
        state: Arc<RwLock<State>>,
        options: WriterOptions,
    ) -> std::io::Result<(LogWriter, JoinHandle<()>)> {
        assert_eq!(state.read().last_seq, start.last_seq, "state and log agree");
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_COMMANDS_MAX);
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let tip = Arc::new(LogTip::default());
        {
            let _state = state.read();
            tip.publish(start.last_seq, start.last_crc, 0);
        }
        let (path, file, len) = match start.active {
            Some((path, file, len)) => {
                // What recovery read may be only in the page cache (a
                // process crash under interval durability): make it durable
                // before anything is served or appended after it.
                file.sync_data()?;
                (path, file, len)
            }
            None => {
                let (p, f) = create_segment_with(
                    &*start.fs,
                    &start.log_dir,
                    start.last_seq + 1,
                    start.last_crc,
                )?;
                (p, f, SEGMENT_HEADER_BYTES as u64)
            }
        };
        let segment_first_seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_file_name)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is not a segment file name", path.display()),
                )
            })?;
        let mut worker = Worker {
            fs: start.fs,
            log_dir: start.log_dir,
            segment_path: path,
            segment: file,
            segment_first_seq,
            segment_len: len,
            synced_len: len,
            heal_tail: None,
            next_seq: start.last_seq + 1,
            last_crc: start.last_crc,
            last_time_unix_ns: start.last_time_unix_ns,
            dirty: false,
            poisoned: None,
            state,
            options,
            stats: stats.clone(),
            tip: tip.clone(),
            buffer: Vec::with_capacity(1 << 16),
        };
        let handle = std::thread::Builder::new()
            .name("ferro-log-writer".into())
            .spawn(move || worker.run(rx))?;
        Ok((
            LogWriter {
                tx,
                stats,
                tip,
                ack_wait: Arc::default(),
                follow_only: Arc::default(),
            },
            handle,
        ))
    }

    /// A handle with no writer behind it, for a server that only reads:
    /// every submission fails with [`SubmitError::Stopped`]. Its tip is
    /// fixed at `seq`.
    pub fn detached(seq: u64, crc: u32) -> LogWriter {
        let (tx, _) = mpsc::channel(1);
        let tip = Arc::new(LogTip::default());
        tip.publish(seq, crc, 0);
        LogWriter {
            tx,
            stats: Arc::new(Mutex::new(WriterStats::default())),
            tip,
            ack_wait: Arc::default(),
            follow_only: Arc::default(),
        }
    }

    /// Submits a command and waits until it is durable and applied (or
    /// rejected).
    pub async fn submit(&self, actor: Actor, command: Command) -> Result<Committed, SubmitError> {
        if let Some(why) = self.follow_only.get() {
            return Err(SubmitError::Follower(why.clone()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Submission::Command {
                actor,
                command: Box::new(command),
                reply,
            })
            .await
            .map_err(|_| SubmitError::Stopped)?;
        let committed = rx.await.map_err(|_| SubmitError::Stopped)??;
        if let (Some(wait), Some(seq)) = (self.ack_wait.get(), committed.seq) {
            wait(seq).await.map_err(SubmitError::NotReplicated)?;
        }
        Ok(committed)
    }

    /// Makes every later acknowledgement wait for `wait` too (set once:
    /// a second call is ignored and returns `false`).
    pub fn set_ack_wait(&self, wait: AckWait) -> bool {
        self.ack_wait.set(wait).is_ok()
    }

    /// Makes this log a follower of another server's: from now on every
    /// command is refused with `why` (set once, shared by every clone), and
    /// records enter only through [`LogWriter::append_followed`]. So a
    /// read replica's log never holds a record its primary did not write.
    pub fn follow_only(&self, why: String) {
        let _ = self.follow_only.set(why);
    }

    /// Appends records of the followed log as they are, makes them durable
    /// (one fdatasync per segment written, unless durability is `never`),
    /// then applies them to the state, in order. The first must follow the
    /// log's last record (sequence number and chain): otherwise nothing is
    /// written.
    pub async fn append_followed(&self, records: Vec<FollowedRecord>) -> Result<(), SubmitError> {
        if records.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Submission::Follow { records, reply })
            .await
            .map_err(|_| SubmitError::Stopped)?;
        rx.await.map_err(|_| SubmitError::Stopped)?
    }

    /// Makes everything written so far durable.
    pub async fn sync(&self) -> Result<(), SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Submission::Sync { reply: Some(reply) })
            .await
            .map_err(|_| SubmitError::Stopped)?;
        rx.await.map_err(|_| SubmitError::Stopped)?
    }

    /// Asks for an fsync without waiting for it (interval durability).
    pub fn request_sync(&self) {
        let _ = self.tx.try_send(Submission::Sync { reply: None });
    }

    pub fn stats(&self) -> WriterStats {
        self.stats.lock().clone()
    }

    /// Why the writer refuses commands right now, if it does: a write or
    /// fsync failed and healing has not succeeded yet. For readiness checks.
    pub fn poisoned(&self) -> Option<String> {
        self.stats.lock().poisoned.clone()
    }

    /// The last record applied to the state (see [`LogTip`]).
    pub fn tip(&self) -> &Arc<LogTip> {
        &self.tip
    }

    /// The figures the metrics page shows, read now.
    pub fn metrics_figures(&self) -> crate::metrics::LogFigures {
        let stats = self.stats();
        crate::metrics::LogFigures {
            records_total: stats.entries,
            appended_bytes_total: self.tip.appended_bytes(),
            last_seq: self.tip.seq(),
            group_commits_total: stats.batches,
            group_commit_records_max: stats.largest_batch,
        }
    }
}

struct Planned {
    entry: Entry,
    reply: oneshot::Sender<Result<Committed, SubmitError>>,
}

struct Worker {
    fs: Fs,
    log_dir: PathBuf,
    segment_path: PathBuf,
    segment: Box<dyn FileHandle>,
    /// First sequence number of the active segment (from its name).
    segment_first_seq: u64,
    /// Length of the active segment up to its last applied record.
    segment_len: u64,
    /// How much of the active segment an fsync made durable.
    synced_len: u64,
    /// While poisoned: the active segment's bytes `[synced_len,
    /// segment_len)`, once re-read and verified, kept until healing is done
    /// (a failed attempt may already have cut them off the file).
    heal_tail: Option<Vec<u8>>,
    next_seq: u64,
    last_crc: u32,
    last_time_unix_ns: u64,
    /// Bytes written since the last fsync.
    dirty: bool,
    poisoned: Option<String>,
    state: Arc<RwLock<State>>,
    options: WriterOptions,
    stats: Arc<Mutex<WriterStats>>,
    tip: Arc<LogTip>,
    buffer: Vec<u8>,
}

impl Worker {
    fn run(&mut self, mut rx: mpsc::Receiver<Submission>) {
        let mut batch = Vec::with_capacity(GROUP_COMMIT_COMMANDS_MAX);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < GROUP_COMMIT_COMMANDS_MAX {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
        // Every handle is gone: make the tail durable before exiting.
        if self.dirty && self.poisoned.is_none() {
            let _ = self.fsync_to(self.segment_len);
        }
    }

    fn process(&mut self, batch: &mut Vec<Submission>) {
        if self.poisoned.is_some() {
            self.heal();
        }
        let mut planned: Vec<Planned> = Vec::new();
        let mut keys: Vec<Key> = Vec::new();
        let mut syncs = Vec::new();
        for submission in batch.drain(..) {
            match submission {
                Submission::Sync { reply } => syncs.push(reply),
                Submission::Follow { records, reply } => {
                    // In order with the commands before it (there are
                    // none on a follower, but the order must hold).
                    self.commit(&mut planned);
                    keys.clear();
                    let _ = reply.send(self.append_followed(records));
                }
                Submission::Command {
                    actor,
                    command,
                    reply,
                } => {
                    if let Some(reason) = &self.poisoned {
                        let _ = reply.send(Err(SubmitError::Storage(reason.clone())));
                        continue;
                    }
                    let mut command_keys = command.keys(&self.state.read());
                    if command_keys.iter().any(|k| keys.contains(k)) {
                        // It depends on a command in this batch: commit
                        // those first so it is planned against their effect.
                        self.commit(&mut planned);
                        keys.clear();
                        // Its keys can depend on that effect too (the tags
                        // of a manifest, the repository of an upload).
                        command_keys = command.keys(&self.state.read());
                    }
                    let plan = command.plan(&self.state.read());
                    match plan {
                        Err(rejection) => {
                            let _ = reply.send(Err(SubmitError::Rejected(rejection)));
                        }
                        Ok(events) if events.is_empty() => {
                            let _ = reply.send(Ok(Committed { seq: None, events }));
                        }
                        Ok(events) => {
                            keys.extend(command_keys);
                            planned.push(Planned {
                                entry: Entry { actor, events },
                                reply,
                            });
                        }
                    }
                }
            }
        }
        self.commit(&mut planned);
        if !syncs.is_empty() {
            let result = if let Some(reason) = &self.poisoned {
                Err(SubmitError::Storage(reason.clone()))
            } else if self.dirty {
                self.fsync_to(self.segment_len)
                    .map_err(SubmitError::Storage)
            } else {
                Ok(())
            };
            for reply in syncs.into_iter().flatten() {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// Appends, makes durable, applies and answers `planned`.
    fn commit(&mut self, planned: &mut Vec<Planned>) {
        if planned.is_empty() {
            return;
        }
        if let Some(reason) = &self.poisoned {
            let reason = reason.clone();
            for p in planned.drain(..) {
                let _ = p.reply.send(Err(SubmitError::Storage(reason.clone())));
            }
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Commit times never go backwards, so "as of time T" is well defined.
        let time_unix_ns = now.max(self.last_time_unix_ns);
        self.buffer.clear();
        let mut crc = self.last_crc;
        let mut encoded = Vec::with_capacity(planned.len());
        for (i, p) in planned.iter().enumerate() {
            match encode_payload(&p.entry) {
                Ok(payload) => {
                    crc = encode_record(
                        &mut self.buffer,
                        self.next_seq + i as u64,
                        time_unix_ns,
                        crc,
                        &payload,
                    );
                    encoded.push(true);
                }
                Err(e) => {
                    // Only an entry over the record limit can fail; handlers
                    // bound bodies well below it, so this is a bug guard.
                    tracing::error!(error = %e, "entry cannot be encoded");
                    encoded.push(false);
                }
            }
        }
        if encoded.iter().any(|ok| !ok) {
            // Re-encode without the failed ones so sequence numbers stay dense.
            let mut kept = Vec::new();
            for (p, ok) in planned.drain(..).zip(encoded) {
                if ok {
                    kept.push(p);
                } else {
                    let _ = p.reply.send(Err(SubmitError::Storage(
                        "entry exceeds the record size limit".into(),
                    )));
                }
            }
            *planned = kept;
            return self.commit(planned);
        }
        let written_len = match self.write_buffer() {
            Ok(len) => len,
            Err(reason) => {
                for p in planned.drain(..) {
                    let _ = p.reply.send(Err(SubmitError::Storage(reason.clone())));
                }
                return;
            }
        };
        self.dirty = true;
        if self.options.durability == Durability::Always {
            if let Err(reason) = self.fsync_to(written_len) {
                for p in planned.drain(..) {
                    let _ = p.reply.send(Err(SubmitError::Storage(reason.clone())));
                }
                return;
            }
        }
        self.segment_len = written_len;
        self.last_crc = crc;
        self.last_time_unix_ns = time_unix_ns;
        let first_seq = self.next_seq;
        self.next_seq += planned.len() as u64;
        {
            let mut state = self.state.write();
            for (i, p) in planned.iter().enumerate() {
                state.apply(first_seq + i as u64, time_unix_ns, &p.entry);
            }
            self.tip
                .publish(state.last_seq, crc, self.buffer.len() as u64);
        }
        self.tip.wake();
        {
            let mut s = self.stats.lock();
            s.batches += 1;
            s.entries += planned.len() as u64;
            s.largest_batch = s.largest_batch.max(planned.len() as u64);
        }
        crate::metrics::record_group_commit(planned.len());
        for (i, p) in planned.drain(..).enumerate() {
            let _ = p.reply.send(Ok(Committed {
                seq: Some(first_seq + i as u64),
                events: p.entry.events,
            }));
        }
        if self.segment_len >= self.options.segment_bytes_max {
            self.roll();
        }
    }

    /// Appends the buffered records to the active segment; returns the
    /// segment's length with them. A failed write is cut back off, so the
    /// segment still ends on a record (the writer is poisoned when even
    /// that fails).
    fn write_buffer(&mut self) -> Result<u64, String> {
        let written_len = self.segment_len + self.buffer.len() as u64;
        if let Err(e) = self.segment.write_all(&self.buffer) {
            let reason = format!("write to {} failed: {e}", self.segment_path.display());
            tracing::error!("{reason}");
            self.stats.lock().storage_failures += 1;
            if let Err(e2) = self.segment.set_len(self.segment_len) {
                self.poison(format!("{reason}; truncating back also failed: {e2}"));
            }
            return Err(reason);
        }
        Ok(written_len)
    }

    /// Appends followed records as they are: checked to continue the log,
    /// written in runs that fill the active segment (rolling between
    /// runs), each run made durable, applied and published before the next.
    fn append_followed(&mut self, records: Vec<FollowedRecord>) -> Result<(), SubmitError> {
        if let Some(reason) = &self.poisoned {
            return Err(SubmitError::Storage(reason.clone()));
        }
        let mut expected = (self.next_seq, self.last_crc);
        for r in &records {
            if r.seq != expected.0 || r.prev_crc != expected.1 {
                return Err(SubmitError::Storage(format!(
                    "followed record {} (previous checksum {:#010x}) does not continue this log, which expects record {} after checksum {:#010x}",
                    r.seq, r.prev_crc, expected.0, expected.1
                )));
            }
            debug_assert!(r.bytes.len() >= super::format::RECORD_HEADER_BYTES);
            expected = (r.seq + 1, r.crc);
        }
        let mut at = 0;
        while at < records.len() {
            let run_start = at;
            self.buffer.clear();
            while at < records.len()
                && (at == run_start
                    || self.segment_len + (self.buffer.len() + records[at].bytes.len()) as u64
                        <= self.options.segment_bytes_max)
            {
                self.buffer.extend_from_slice(&records[at].bytes);
                at += 1;
            }
            let run = &records[run_start..at];
            let written_len = self.write_buffer().map_err(SubmitError::Storage)?;
            self.dirty = true;
            if self.options.durability != Durability::Never {
                self.fsync_to(written_len).map_err(SubmitError::Storage)?;
            }
            let last = run.last().expect("a run holds at least one record");
            self.segment_len = written_len;
            self.last_crc = last.crc;
            self.last_time_unix_ns = self.last_time_unix_ns.max(last.time_unix_ns);
            self.next_seq = last.seq + 1;
            {
                let mut state = self.state.write();
                for r in run {
                    state.apply(r.seq, r.time_unix_ns, &r.entry);
                }
                debug_assert_eq!(state.last_seq, last.seq, "the state follows the log");
                self.tip
                    .publish(state.last_seq, last.crc, self.buffer.len() as u64);
            }
            self.tip.wake();
            {
                let mut s = self.stats.lock();
                s.batches += 1;
                s.entries += run.len() as u64;
                s.largest_batch = s.largest_batch.max(run.len() as u64);
            }
            if self.segment_len >= self.options.segment_bytes_max {
                self.roll();
                if let Some(reason) = &self.poisoned {
                    return Err(SubmitError::Storage(reason.clone()));
                }
            }
        }
        Ok(())
    }

    /// fdatasync of the active segment, whose first `len` bytes are then
    /// durable. A failure poisons the writer.
    fn fsync_to(&mut self, len: u64) -> Result<(), String> {
        let started = Instant::now();
        match self.segment.sync_data() {
            Ok(()) => {
                self.dirty = false;
                self.synced_len = len;
                let took = started.elapsed();
                let mut s = self.stats.lock();
                s.fsyncs += 1;
                s.fsync_total_us += took.as_micros() as u64;
                drop(s);
                crate::metrics::record_log_fsync(took);
                Ok(())
            }
            Err(e) => {
                let reason = format!("fdatasync of {} failed: {e}", self.segment_path.display());
                self.stats.lock().storage_failures += 1;
                self.poison(reason.clone());
                Err(reason)
            }
        }
    }

    fn poison(&mut self, reason: String) {
        tracing::error!(reason = %reason, "log writer poisoned: refusing writes until the log is healed");
        self.stats.lock().poisoned = Some(reason.clone());
        self.poisoned = Some(reason);
    }

    /// Seals the active segment and starts the next one.
    fn roll(&mut self) {
        if self.dirty && self.fsync_to(self.segment_len).is_err() {
            return;
        }
        if let Err(e) = self.start_segment() {
            // A half-created segment may be in the directory; appending to
            // the active one would put a gap before it. Heal first.
            self.stats.lock().storage_failures += 1;
            self.poison(format!(
                "could not create log segment {}: {e}",
                super::segment::segment_file_name(self.next_seq)
            ));
        }
    }

    /// Creates the segment that starts at `next_seq` and makes it active.
    fn start_segment(&mut self) -> std::io::Result<()> {
        let (path, file) =
            create_segment_with(&*self.fs, &self.log_dir, self.next_seq, self.last_crc)?;
        tracing::info!(segment = %path.display(), "rolled to a new log segment");
        self.segment_len = SEGMENT_HEADER_BYTES as u64;
        self.synced_len = self.segment_len;
        self.segment_first_seq = self.next_seq;
        self.segment_path = path;
        self.segment = file;
        self.dirty = false;
        Ok(())
    }

    /// Tries to leave the poisoned state soundly; on failure the writer
    /// stays poisoned, with the reason extended, and the next batch tries
    /// again.
    ///
    /// 1. Segments after the active one (a roll that failed half-way) are
    ///    removed and the directory fsynced.
    /// 2. The active segment is re-read and verified up to `segment_len`:
    ///    header, checksums, sequence and chain must end exactly at the
    ///    writer's last record. Its bytes past `synced_len` (acknowledged
    ///    under interval durability but never fsynced) are kept.
    /// 3. The segment is truncated to `synced_len`, which an fsync made
    ///    durable before the failure; the kept bytes are written again
    ///    (fresh dirty pages, which the next fsync really writes) and the
    ///    file is fsynced. Whatever the failed batch left is cut off.
    /// 4. A new segment starts, unless the active one holds no record.
    ///
    /// When step 2 fails (the page cache lost acknowledged, unsynced
    /// records), healing cannot succeed: restart, and recovery keeps what
    /// is durable.
    fn heal(&mut self) {
        let Some(reason) = self.poisoned.clone() else {
            return;
        };
        let cause = reason
            .split_once("; healing failed")
            .map(|(c, _)| c.to_owned())
            .unwrap_or(reason);
        match self.try_heal() {
            Ok(()) => {
                tracing::warn!(
                    cause = %cause,
                    segment = %self.segment_path.display(),
                    last_seq = self.next_seq - 1,
                    "log writer healed: the durable log was verified and writes resume"
                );
                self.poisoned = None;
                self.heal_tail = None;
                let mut s = self.stats.lock();
                s.poisoned = None;
                s.heals += 1;
            }
            Err(e) => {
                let reason = format!(
                    "{cause}; healing failed: {e}; writes are refused until it succeeds (retried at every write; a restart recovers from what is durable)"
                );
                tracing::error!(reason = %reason, "log writer still poisoned");
                self.stats.lock().poisoned = Some(reason.clone());
                self.poisoned = Some(reason);
            }
        }
    }

    fn try_heal(&mut self) -> Result<(), String> {
        let path = self.segment_path.clone();
        remove_segments_after(&*self.fs, &self.log_dir, self.segment_first_seq)
            .map_err(|e| format!("cleaning up {}: {e}", self.log_dir.display()))?;
        let tail = match self.heal_tail.take() {
            Some(t) => t,
            None => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("re-reading {}: {e}", path.display()))?;
                self.verify_active(&bytes)
                    .map_err(|e| format!("{} does not verify: {e}", path.display()))?;
                bytes[self.synced_len as usize..self.segment_len as usize].to_vec()
            }
        };
        let result = (|| -> std::io::Result<()> {
            let file = self.fs.open(&path, OpenMode::Existing)?;
            file.set_len(self.synced_len)?;
            file.seek(self.synced_len)?;
            file.write_all(&tail)?;
            file.sync_all()
        })();
        if let Err(e) = result {
            self.heal_tail = Some(tail);
            return Err(format!("rewriting {}: {e}", path.display()));
        }
        self.synced_len = self.segment_len;
        self.dirty = false;
        if self.segment_first_seq < self.next_seq {
            self.start_segment()
                .map_err(|e| format!("starting a new segment: {e}"))?;
        } else {
            self.segment = self
                .fs
                .open(&path, OpenMode::Append)
                .map_err(|e| format!("reopening {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Checks that `bytes` (the active segment as read back) hold a valid
    /// header and records chained up to exactly `segment_len`, ending at
    /// the writer's last record.
    fn verify_active(&self, bytes: &[u8]) -> Result<(), String> {
        let end = self.segment_len as usize;
        if bytes.len() < end {
            return Err(format!(
                "it has {} bytes, the writer wrote {end}",
                bytes.len()
            ));
        }
        let header = SegmentHeader::decode(bytes).map_err(|e| format!("bad header: {e}"))?;
        if header.first_seq != self.segment_first_seq {
            return Err(format!(
                "header says first sequence {}, expected {}",
                header.first_seq, self.segment_first_seq
            ));
        }
        let (mut seq, mut crc) = (header.first_seq - 1, header.prev_crc);
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset < end {
            let record = read_record(&bytes[offset..end])
                .map_err(|e| format!("bad record at offset {offset}: {e}"))?;
            let h = record.header;
            if h.seq != seq + 1 || h.prev_crc != crc {
                return Err(format!(
                    "record at offset {offset} does not continue the chain"
                ));
            }
            seq = h.seq;
            crc = h.crc;
            offset += record.len_bytes();
        }
        if offset != end || seq + 1 != self.next_seq || crc != self.last_crc {
            return Err(format!(
                "records end at offset {offset} with sequence {seq}, the writer is at {end} with {}",
                self.next_seq - 1
            ));
        }
        Ok(())
    }
}

/// Interval durability: ask the writer for an fsync every `interval`.
pub fn spawn_interval_sync(writer: LogWriter, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if writer.tx.is_closed() {
                break;
            }
            writer.request_sync();
        }
    });
}
