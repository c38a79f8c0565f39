//! Read replicas: a server that builds its state from another server's
//! archive (`[replica] of`), keeps following it, and serves every read
//! while refusing every write; and its promotion to a writer.
//!
//! - `config`: the `[replica]` settings;
//! - `marker`: `<data>/replica`, the mark of a replica's data directory;
//! - `follower`: the task that applies the archive's new pieces.
//!
//! A replica's data directory is its own: on the first start it is
//! restored from the archive (`archive::restore`: its log, the newest
//! snapshot, the blobs); afterwards it starts from its own log like any
//! server and follows from its last record. Its log is the archive's,
//! record for record, so promoting it (`ferroctl promote`: catch up to the
//! archive's end, remove the marker) leaves a server whose log holds the
//! archive's last record: started with `[archive]` on the same URL it
//! takes the next writer epoch, which fences the old primary.

pub mod config;
pub mod follower;
pub mod marker;

use std::path::PathBuf;

pub use config::ReplicaConfig;
pub use follower::Follower;

use crate::archive::restore::{RestoreError, RestoreReport};
use crate::archive::store::{ArchiveStore, StoreError};
use crate::blobs::object::StorageBackend;
use crate::config::Config;
use crate::datadir::{DataDir, Layout};
use crate::log::WriterOptions;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("{0}")]
    Refused(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Startup(#[from] crate::startup::StartupError),
    #[error(transparent)]
    Follow(#[from] follower::FollowError),
}

fn io_err(path: PathBuf) -> impl FnOnce(std::io::Error) -> ReplicaError {
    move |source| ReplicaError::Io { path, source }
}

/// What the data directory of a starting replica held.
#[derive(Debug)]
pub enum Prepared {
    /// Its own log, from an earlier run: it resumes from it.
    Resumed,
    /// Nothing: rebuilt from the archive.
    Restored(RestoreReport),
    /// Nothing, and the archive holds no record yet: it follows from the
    /// start.
    Empty,
}

/// The archive a replica configured as `config` follows.
pub fn open_archive(config: &Config) -> Result<ArchiveStore, String> {
    ArchiveStore::open(
        &config.replica.archive_settings(&config.archive),
        &config.storage,
    )
}

/// Checks a writer may run on `data_dir`: not while it is marked as a
/// replica's.
pub fn refuse_writer_on_replica(data_dir: &std::path::Path) -> Result<(), ReplicaError> {
    let layout = Layout::new(data_dir);
    match marker::read(&layout).map_err(io_err(marker::path(&layout)))? {
        None => Ok(()),
        Some(url) => Err(ReplicaError::Refused(format!(
            "{} is a read replica's data directory (of {url}): serve it with --replica-of {url}, or promote it first with `ferroctl promote --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        ))),
    }
}

/// Readies a replica's data directory before its log is opened: checks
/// (or sets) its marker, and on the first start restores it from the
/// archive. Fails, changing nothing, on a directory that is a primary's
/// or another archive's replica's.
pub async fn prepare(
    config: &Config,
    store: &ArchiveStore,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Prepared, ReplicaError> {
    let of = &config.replica.of;
    let layout = Layout::new(&config.data_dir);
    let marked = marker::read(&layout).map_err(io_err(marker::path(&layout)))?;
    let has_log = marker::has_files(&layout.log_dir());
    match &marked {
        Some(url) if url != of => {
            return Err(ReplicaError::Refused(format!(
                "{} is a replica of {url}, not of {of}: a replica follows one archive",
                config.data_dir.display()
            )))
        }
        None if has_log => {
            return Err(ReplicaError::Refused(format!(
                "{} holds a log and is not a replica's: a replica needs a data directory of its own (a new one, or one it made)",
                config.data_dir.display()
            )))
        }
        _ => {}
    }
    if marked.is_none() {
        marker::write(&layout, of).map_err(io_err(marker::path(&layout)))?;
    }
    if has_log {
        return Ok(Prepared::Resumed);
    }
    if crate::archive::read::list_pieces(store).await?.is_empty() {
        return Ok(Prepared::Empty);
    }
    let report = crate::archive::restore::restore(
        store,
        &config.data_dir,
        None,
        config.limits.segment_bytes_max,
        progress,
    )
    .await?;
    Ok(Prepared::Restored(report))
}

/// The blob store a replica brings linked blobs into: its filesystem
/// store; none when blobs live in object storage (the primary's bucket).
pub fn blob_target(config: &Config, layout: &Layout) -> Option<crate::blobs::BlobStore> {
    (config.storage.backend == StorageBackend::Filesystem)
        .then(|| crate::blobs::BlobStore::new(layout))
}

/// What a promotion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PromoteReport {
    /// The archive the replica followed, which it may now ship to.
    pub archive: String,
    /// Records applied while catching up to the archive's end.
    pub records_applied: u64,
    /// The log's last record, which is the archive's.
    pub last_seq: u64,
}

/// `ferroctl promote`: a stopped replica's data directory caught up to
/// the end of its archive, then unmarked, so that `ferro serve` runs it as
/// a writer. Fails, leaving it a replica, when the archive cannot be read
/// to its end.
pub async fn promote(config: &Config) -> Result<PromoteReport, ReplicaError> {
    let layout = Layout::new(&config.data_dir);
    let Some(url) = marker::read(&layout).map_err(io_err(marker::path(&layout)))? else {
        return Err(ReplicaError::Refused(format!(
            "{} is not a read replica's data directory (it has no replica marker)",
            config.data_dir.display()
        )));
    };
    let mut settings = config.clone();
    settings.replica.of = url.clone();
    let store = open_archive(&settings).map_err(ReplicaError::Refused)?;
    let opened = tokio::task::spawn_blocking({
        let config = config.clone();
        move || -> Result<_, ReplicaError> {
            let data = DataDir::open(&config.data_dir)?;
            let started = crate::startup::open(
                &data.layout(),
                config.recovery,
                WriterOptions {
                    durability: config.log_durability(),
                    segment_bytes_max: config.limits.segment_bytes_max,
                },
            )?;
            Ok((data, started))
        }
    })
    .await
    .map_err(|e| ReplicaError::Refused(e.to_string()))??;
    let (data, started) = opened;
    let writer = started.log.writer.clone();
    writer.follow_only("the data directory is being promoted".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let follower = Follower::new(
        store,
        settings.replica.clone(),
        writer.clone(),
        started.log.state.clone(),
        blob_target(config, &layout),
        stop,
    );
    let mut applied_piece = None;
    let mut records_applied = 0;
    loop {
        let applied = follower.poll_once(&mut applied_piece).await?;
        records_applied += applied;
        if applied == 0 {
            break;
        }
    }
    writer
        .sync()
        .await
        .map_err(|e| ReplicaError::Refused(e.to_string()))?;
    let last_seq = writer.tip().seq();
    drop(follower);
    drop(writer);
    let crate::log::OpenedLog {
        writer: last_handle,
        writer_thread,
        ..
    } = started.log;
    // The writer thread ends once its last handle is gone.
    drop(last_handle);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| ReplicaError::Refused(e.to_string()))?
        .map_err(|_| ReplicaError::Refused("the log writer panicked".into()))?;
    marker::remove(&layout).map_err(io_err(marker::path(&layout)))?;
    drop(data);
    Ok(PromoteReport {
        archive: url,
        records_applied,
        last_seq,
    })
}
