//! Starting and stopping the registry: lock the data directory, load the
//! newest valid snapshot and replay the log after it, reconcile upload
//! staging files with the log, snapshot in the background, serve HTTP, and
//! on shutdown drain requests, flush the writer and take a last snapshot.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;

use crate::api::{self, App, PastStates, UploadSessions};
use crate::blobs::{is_upload_id, BlobStore};
use crate::commands::Command;
use crate::config::Config;
use crate::datadir::{DataDir, Layout};
use crate::events::{Actor, CancelReason};
use crate::log::{self, Durability, WriterOptions};
use crate::projection::State;
use crate::replay::{self, AsOf};
use crate::snapshot::{self, scheduler::Scheduler};
use crate::startup;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Log(#[from] log::OpenError),
    #[error(transparent)]
    Startup(#[from] startup::StartupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("log writer: {0}")]
    Writer(#[from] log::SubmitError),
    #[error("{0} is not a ferro data directory (it has no log/ directory)")]
    NotADataDir(std::path::PathBuf),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
}

/// Runs the registry until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    if config.durability == crate::config::DurabilityMode::Never {
        tracing::warn!("durability is \"never\": acknowledged writes can be lost on power failure");
    }
    let data = DataDir::open(&config.data_dir)?;
    let layout = data.layout();
    let started = Instant::now();
    for leftover in snapshot::remove_leftover_temp_files(&layout.snapshots_dir())? {
        tracing::info!(file = %leftover.display(), "removed an unfinished snapshot file");
    }
    let startup::Started {
        log: opened,
        snapshot: loaded_snapshot,
        rejected,
        snapshot_load_ms,
        replay_ms,
    } = startup::open(
        &layout,
        config.recovery,
        WriterOptions {
            durability: config.log_durability(),
            segment_bytes_max: config.limits.segment_bytes_max,
        },
    )?;
    let summary = opened.state.read().summary();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        snapshot = %loaded_snapshot.as_ref().map(|(p, _)| p.display().to_string()).unwrap_or_else(|| "none".into()),
        snapshot_seq = loaded_snapshot.as_ref().map(|(_, seq)| *seq).unwrap_or(0),
        snapshots_rejected = rejected.len(),
        events_replayed = opened.report.entries_replayed,
        last_seq = opened.report.last_seq,
        segments = opened.report.segments.len(),
        segments_skipped = opened.report.segments_skipped,
        snapshot_load_ms,
        replay_ms,
        startup_ms = started.elapsed().as_millis() as u64,
        repositories = summary.repositories,
        manifests = summary.manifests,
        tags = summary.tags,
        "replayed the log"
    );
    let store = BlobStore::new(&layout);
    let writer = opened.writer.clone();
    if let Durability::Interval { interval_ms } = config.log_durability() {
        log::writer::spawn_interval_sync(writer.clone(), Duration::from_millis(interval_ms));
    }
    reconcile_uploads(&opened.state, &store, &writer).await?;
    let snapshots = Scheduler::new(
        layout.clone(),
        opened.state.clone(),
        writer.clone(),
        config.snapshots.clone(),
        config.history.clone(),
        loaded_snapshot.map(|(_, seq)| seq).unwrap_or(0),
    );
    let snapshot_loop = snapshots.spawn();

    let app = Arc::new(App {
        layout: layout.clone(),
        writer: writer.clone(),
        state: opened.state.clone(),
        store,
        limits: config.limits.clone(),
        sessions: UploadSessions::default(),
        delete_enabled: config.delete_enabled,
        past: PastStates::default(),
        read_only: false,
    });
    serve(app, &config.listen, shutdown).await?;
    tracing::info!("draining the log writer");
    writer.sync().await?;
    snapshots.stop();
    if let Err(e) = snapshot_loop.await {
        tracing::warn!(error = %e, "the snapshot loop ended abnormally");
    }
    if config.snapshots.on_shutdown {
        match snapshots.take("shutdown").await {
            Ok(_) => {}
            // The log is complete and durable; the next start replays more.
            Err(e) => tracing::warn!(error = %e, "shutdown snapshot failed"),
        }
    }
    drop(snapshots);
    drop(writer);
    Ok(())
}

/// Serves `app` on `listen` until `shutdown` resolves.
async fn serve(
    app: Arc<App>,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    let local = listener.local_addr()?;
    // Small responses must not wait for the peer's delayed ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    tracing::info!("listening on http://{local}");
    axum::serve(
        listener,
        api::router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

/// Serves the registry as it was at `at`, read-only, for unmodified
/// clients to pull the past. It reads the data directory without taking
/// its lock (a live server may be appending): the state is rebuilt once at
/// startup from snapshots and the log; blobs are read from the store as
/// long as they exist. Every write answers 405.
pub async fn run_read_only(
    config: Config,
    at: AsOf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let layout = Layout::new(&config.data_dir);
    if !layout.log_dir().is_dir() {
        return Err(ServerError::NotADataDir(config.data_dir.clone()));
    }
    let started = Instant::now();
    let replayed = replay::state_as_of(&layout, at, &mut |_| {})?;
    let state = replayed.state;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        at = ?at,
        seq = state.last_seq,
        time = %crate::timefmt::rfc3339(state.last_time_unix_ns),
        records_replayed = replayed.records_replayed,
        replay_ms = started.elapsed().as_millis() as u64,
        "serving the registry as it was, read-only"
    );
    let app = Arc::new(App {
        layout: layout.clone(),
        writer: log::LogWriter::detached(state.last_seq, replayed.crc),
        state: Arc::new(parking_lot::RwLock::new(state)),
        store: BlobStore::new(&layout),
        limits: config.limits.clone(),
        sessions: UploadSessions::default(),
        delete_enabled: false,
        past: PastStates::default(),
        read_only: true,
    });
    serve(app, &config.listen, shutdown).await
}

/// Makes staging files agree with the log after a restart: bytes past the
/// last logged chunk are cut off (they were never acknowledged); an upload
/// whose staging file lost acknowledged bytes is cancelled on the record;
/// staging files no upload owns are removed.
async fn reconcile_uploads(
    state: &parking_lot::RwLock<State>,
    store: &BlobStore,
    writer: &log::LogWriter,
) -> Result<(), ServerError> {
    let uploads: Vec<(String, u64)> = state
        .read()
        .uploads
        .iter()
        .map(|(id, u)| (id.clone(), u.size))
        .collect();
    let mut lost = Vec::new();
    for (id, size) in &uploads {
        let path = store.staging_path(id);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        if len > *size {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.set_len(*size)?;
            f.sync_all()?;
            tracing::info!(upload = %id, acknowledged = size, found = len, "cut an upload back to its last logged chunk");
        } else if len < *size {
            tracing::warn!(upload = %id, acknowledged = size, found = len, "upload staging file lost acknowledged bytes; cancelling it");
            lost.push(id.clone());
        }
    }
    for id in lost {
        let _ = std::fs::remove_file(store.staging_path(&id));
        writer
            .submit(
                Actor::system(),
                Command::CancelUpload {
                    upload: id,
                    reason: CancelReason::StagingLost,
                },
            )
            .await?;
    }
    let live: std::collections::HashSet<&String> = uploads.iter().map(|(id, _)| id).collect();
    for entry in std::fs::read_dir(store.uploads_dir())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(is_upload_id(&name) && live.contains(&name)) {
            tracing::info!(file = %entry.path().display(), "removing an orphan staging file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
