//! Starting and stopping the registry: bind the listener (plain HTTP or
//! TLS) and answer `/healthz` and `/readyz` (503) at once; then lock the
//! data directory, load the newest valid snapshot and replay the log after
//! it, reconcile upload staging files with the log, and open the gate to
//! the registry (`/readyz` 200). Snapshots and upload expiry run in the
//! background. On shutdown: stop accepting, let in-flight requests finish
//! (at most `limits.shutdown_drain_timeout_secs`), flush the writer and
//! take a last snapshot.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::front::{front, Front, Gate};
use crate::api::{App, PastStates, UploadSessions};
use crate::auth::Auth;
use crate::blobs::local_cache::LocalCache;
use crate::blobs::object::{ObjectBlobs, SharedObjectBlobs, StorageBackend};
use crate::blobs::BlobStore;
use crate::config::Config;
use crate::datadir::{DataDir, Layout};
use crate::limits::Limits;
use crate::log::{self, Durability, WriterOptions};
use crate::replay::{self, AsOf};
use crate::sendfile::{FileRegions, SendfileStream};
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
    #[error(transparent)]
    Reconcile(#[from] crate::reconcile::ReconcileError),
    #[error("{0} is not a ferro data directory (it has no log/ directory)")]
    NotADataDir(std::path::PathBuf),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error("access control: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("startup task failed: {0}")]
    Task(String),
    #[error("notifications: {0}")]
    Notifications(String),
    #[error(transparent)]
    Replica(#[from] crate::replica::ReplicaError),
}

/// What the blocking part of startup opened.
struct Opened {
    /// Holds the data directory's lock until the server stops.
    _data: DataDir,
    layout: Layout,
    started: startup::Started,
}

/// Locks the data directory, loads the newest snapshot and replays the
/// log after it (blocking: run on the blocking pool).
fn open_data(config: &Config) -> Result<Opened, ServerError> {
    let data = DataDir::open(&config.data_dir)?;
    let layout = data.layout();
    for leftover in snapshot::remove_leftover_temp_files(&layout.snapshots_dir())? {
        tracing::info!(file = %leftover.display(), "removed an unfinished snapshot file");
    }
    let started = startup::open(
        &layout,
        config.recovery,
        WriterOptions {
            durability: config.log_durability(),
            segment_bytes_max: config.limits.segment_bytes_max,
        },
    )?;
    Ok(Opened {
        _data: data,
        layout,
        started,
    })
}

/// The listening socket, bound before the log is replayed.
struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
}

impl Listener {
    async fn bind(config: &Config) -> Result<Listener, ServerError> {
        let tls = crate::tls::acceptor(&config.tls).map_err(ServerError::Tls)?;
        let tcp =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: config.listen.clone(),
                    source,
                })?;
        let local = tcp.local_addr()?;
        if tls.is_none() && !local.ip().is_loopback() {
            tracing::warn!(
                address = %local,
                "serving plain HTTP on a non-loopback address: credentials and content \
                 travel unencrypted; set tls.cert and tls.key"
            );
        }
        Ok(Listener { tcp, tls, local })
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local)
    }
}

/// Every check of a configuration before it is used: the settings' own
/// (`Config::validate`) and the `[auth]` section's, which need access
/// control's knowledge (`auth::validate_config`).
pub fn check_config(config: &Config) -> Result<(), crate::config::ConfigError> {
    config.validate()?;
    crate::auth::validate_config(&config.auth).map_err(crate::config::ConfigError::Invalid)?;
    config
        .storage
        .validate()
        .map_err(crate::config::ConfigError::Invalid)?;
    config
        .notifications
        .validate()
        .map_err(crate::config::ConfigError::Invalid)?;
    crate::mirror::config::validate(&config.mirrors)
        .map_err(crate::config::ConfigError::Invalid)?;
    // A fill writes the blob store's files; the object store's upload
    // path is not the fill's.
    if !config.mirrors.is_empty()
        && config.storage.backend != crate::blobs::object::StorageBackend::Filesystem
    {
        return Err(crate::config::ConfigError::Invalid(
            "mirrors need storage.backend = \"filesystem\"".into(),
        ));
    }
    Ok(())
}

/// Runs the registry until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    check_config(&config)?;
    let replica = config.replica.enabled();
    if !replica {
        crate::replica::refuse_writer_on_replica(&config.data_dir)?;
    }
    if config.durability == crate::config::DurabilityMode::Never {
        tracing::warn!("durability is \"never\": acknowledged writes can be lost on power failure");
    }
    let auth = Arc::new(Auth::from_config(&config.auth).map_err(ServerError::Auth)?);
    if auth.enabled() {
        tracing::info!(scheme = ?auth.scheme(), users = auth.users(), "access control on");
    }
    crate::metrics::install();
    // Metrics is a leaf: the modules with figures of their own describe
    // them once the recorder is in place.
    crate::notify::describe_metrics();
    crate::mirror::describe_metrics();
    crate::replica::follower::describe_metrics();
    let started = Instant::now();
    let listener = Listener::bind(&config).await?;
    let url = listener.url();
    let tls = listener.tls.is_some();
    let (auth_enabled, loopback) = (auth.enabled(), listener.local.ip().is_loopback());
    tracing::info!(
        address = %listener.local,
        "bound; /healthz and /readyz answer, the registry once the log is replayed"
    );
    let gate = Arc::new(Gate::default());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(serve(
        listener,
        front(
            gate.clone(),
            Duration::from_millis(config.limits.body_read_timeout_ms),
            config.access_log,
        ),
        config.limits.clone(),
        config.sendfile,
        stop.clone(),
    ));
    let mut shutdown = std::pin::pin!(shutdown);

    // A replica's data directory is checked, and on its first start
    // restored from the archive, before its log is opened.
    let followed = if replica {
        let prepared = tokio::select! {
            p = prepare_replica(&config, &gate) => p,
            _ = &mut shutdown => {
                tracing::info!("shutdown requested during startup");
                stop.cancel();
                let _ = serving.await;
                return Ok(());
            }
        };
        match prepared {
            Ok(store) => Some(store),
            Err(e) => {
                stop.cancel();
                let _ = serving.await;
                return Err(e);
            }
        }
    } else {
        None
    };

    // The replay runs on the blocking pool while the listener answers.
    let opening = tokio::task::spawn_blocking({
        let config = config.clone();
        move || open_data(&config)
    });
    let opened = tokio::select! {
        opened = opening => opened.map_err(|e| ServerError::Task(e.to_string())),
        _ = &mut shutdown => {
            tracing::info!("shutdown requested during startup");
            stop.cancel();
            let _ = serving.await;
            return Ok(());
        }
    };
    let opened = match opened.and_then(|o| o) {
        Ok(o) => o,
        Err(e) => {
            stop.cancel();
            let _ = serving.await;
            return Err(e);
        }
    };
    let Opened {
        _data,
        layout,
        started:
            startup::Started {
                log: opened,
                snapshot: loaded_snapshot,
                rejected,
                snapshot_load_ms,
                replay_ms,
            },
    } = opened;
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
    let mut store =
        BlobStore::new(&layout).with_small_blob_cache(config.limits.blob_cache_bytes_max);
    if let Some(objects) = object_store(&config)? {
        // Not ready until the store answers: a wrong endpoint, bucket or
        // credential is a clear 503 from /readyz, never a 500 on a push.
        let waited = tokio::select! {
            r = wait_for_store(&objects, &gate) => r,
            _ = &mut shutdown => Err(()),
        };
        if waited.is_err() {
            tracing::info!("shutdown requested while waiting for the object store");
            stop.cancel();
            let _ = serving.await;
            return Ok(());
        }
        store = store.with_objects(objects);
        if let Some(cache) = open_local_cache(&config, &layout, &opened.state).await {
            store = store.with_local_cache(cache);
        }
    }
    if let Err(e) = store.prepare_dirs() {
        stop.cancel();
        let _ = serving.await;
        return Err(e.into());
    }
    let writer = opened.writer.clone();
    if replica {
        // Its records come only from the archive.
        writer.follow_only(config.replica.write_refusal());
    }
    if let Durability::Interval { interval_ms } = config.log_durability() {
        log::writer::spawn_interval_sync(writer.clone(), Duration::from_millis(interval_ms));
    }
    // A replica's uploads are the primary's: nothing of them is here.
    if let Err(e) = match replica {
        false => crate::reconcile::reconcile_uploads(&opened.state, &store, &writer)
            .await
            .map(drop),
        true => Ok(()),
    } {
        stop.cancel();
        let _ = serving.await;
        return Err(e.into());
    }
    let snapshots = Scheduler::new(
        layout.clone(),
        opened.state.clone(),
        writer.clone(),
        config.snapshots.clone(),
        config.history.clone(),
        loaded_snapshot.map(|(_, seq)| seq).unwrap_or(0),
    );
    let snapshot_loop = snapshots.spawn();
    let gc_service = crate::gc::GcService::new(
        crate::gc::Collector::new(
            layout.clone(),
            opened.state.clone(),
            writer.clone(),
            store.clone(),
        ),
        &config.gc,
        config.history.retention,
    );
    if config.gc.enabled && !replica {
        crate::gc::spawn_schedule(
            gc_service.collector.clone(),
            config.gc.clone(),
            config.history.retention,
        );
    }

    // Notifications, mirrors and the archive are the primary's to run.
    let notifier = if config.notifications.endpoints.is_empty() || replica {
        None
    } else {
        match crate::notify::Notifier::start(
            &config.notifications,
            layout.clone(),
            crate::storage::real(),
            writer.clone(),
            opened.state.clone(),
            &url,
            stop.clone(),
        ) {
            Ok(n) => Some(n),
            Err(e) => {
                stop.cancel();
                let _ = serving.await;
                return Err(ServerError::Notifications(e));
            }
        }
    };

    let mirrors = crate::mirror::Mirrors::new(
        if replica { &[] } else { &config.mirrors },
        &crate::mirror::Registry {
            writer: writer.clone(),
            state: opened.state.clone(),
            store: store.clone(),
            manifest_bytes_max: config.limits.manifest_bytes_max,
        },
    )
    .map_err(|e| ServerError::Config(crate::config::ConfigError::Invalid(e)))?;
    for m in mirrors.iter() {
        tracing::info!(prefix = %m.config.prefix, upstreams = m.config.upstreams.len(), "mirror on");
    }
    let shipping = match replica {
        false => start_archive(&config, &layout, &writer, &store, &stop),
        true => Ok(None),
    };
    let archive = match shipping {
        Ok(a) => a,
        Err(e) => {
            stop.cancel();
            let _ = serving.await;
            return Err(e);
        }
    };
    // Compaction keeps what an endpoint or the archive still needs.
    {
        let notifier = notifier.clone();
        let archive = archive.clone();
        snapshots.set_log_hold(Box::new(move || {
            let holds = [
                notifier.as_ref().and_then(|n| n.log_hold()),
                archive.as_ref().and_then(|a| a.log_hold()),
            ];
            holds.into_iter().flatten().min()
        }));
    }
    // Blobs on the filesystem: the collector deletes none the archive may
    // still have to carry.
    if let Some(a) = archive.as_ref().filter(|a| a.carries_blobs()) {
        let a = a.clone();
        gc_service
            .collector
            .set_archive_hold(Arc::new(move || a.shipped().seq));
    }
    let archive_loop = archive.as_ref().map(|a| a.spawn());
    let follower = followed.map(|archive| {
        let blobs =
            matches!(store.backend(), crate::blobs::Backend::Filesystem).then(|| store.clone());
        crate::replica::Follower::new(
            archive,
            config.replica.clone(),
            writer.clone(),
            opened.state.clone(),
            blobs,
            stop.clone(),
        )
    });
    let follow_loop = follower.as_ref().map(|f| f.spawn());

    let app = Arc::new(App {
        layout: layout.clone(),
        writer: writer.clone(),
        state: opened.state.clone(),
        store,
        limits: config.limits.clone(),
        sessions: UploadSessions::default(),
        delete_enabled: config.delete_enabled,
        past: PastStates::default(),
        read_only: replica,
        auth,
        tls,
        upload_permits: Arc::new(tokio::sync::Semaphore::new(
            config.limits.uploads_concurrent_max,
        )),
        gc: Some(gc_service),
        notifier,
        archive,
        shutdown: stop.clone(),
        ui: crate::api::ui::Ui::new(&config.ui, auth_enabled, replica, loopback),
        mirrors: Arc::new(mirrors),
        feed_positions: Default::default(),
        replica: follower,
    });
    gate.open(app.clone());
    crate::metrics::set_startup(crate::metrics::Startup {
        snapshot_load: Duration::from_millis(snapshot_load_ms),
        replay: Duration::from_millis(replay_ms),
        total: started.elapsed(),
    });
    tracing::info!("listening on {url}");
    let expiry = match replica {
        false => crate::expiry::spawn(app.clone(), stop.clone()),
        true => None,
    };
    let mirror_syncs = crate::mirror::sync::spawn(&app.mirrors, &stop);

    shutdown.await;
    gate.drain();
    stop.cancel();
    if let Err(e) = serving.await {
        tracing::warn!(error = %e, "the server task ended abnormally");
    }
    if let Some(expiry) = expiry {
        let _ = expiry.await;
    }
    for task in mirror_syncs {
        let _ = task.await;
    }
    drop(app);
    if let Some(follow_loop) = follow_loop {
        let _ = follow_loop.await;
    }
    tracing::info!("draining the log writer");
    writer.sync().await?;
    if let Some(archive_loop) = archive_loop {
        let _ = archive_loop.await;
    }
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
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections until `stop`, then lets in-flight requests finish
/// for at most `limits.shutdown_drain_timeout_secs` and closes what is
/// left. HTTP/1.1 only; request heads are bounded in size
/// (`header_bytes_max`) and time (`header_read_timeout_ms`, which also
/// bounds a TLS handshake). With `sendfile`, a plain connection is a
/// [`SendfileStream`], which sends large blobs' pieces with `sendfile(2)`.
async fn serve(
    listener: Listener,
    app: Front,
    limits: Limits,
    sendfile: bool,
    stop: CancellationToken,
) {
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(header_timeout)
        .max_buf_size(limits.header_bytes_max)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        // Small responses must not wait for the peer's delayed ACK (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // With `sendfile` on, a plain connection sends large blobs with
        // sendfile(2): their pieces are registered in its regions (see
        // `sendfile`). TLS must copy the bytes through rustls.
        let sendfile = (sendfile && listener.tls.is_none() && cfg!(target_os = "linux"))
            .then(FileRegions::new);
        let service = TowerToHyperService::new(app.serving(peer, sendfile.clone()));
        let watcher = graceful.watcher();
        let mut http = http.clone();
        http.timer(HeadTimer::default());
        let tls = listener.tls.clone();
        connections.spawn(async move {
            let served = match (tls, sendfile) {
                (None, Some(regions)) => {
                    let io = TokioIo::new(SendfileStream::new(tcp, regions));
                    watcher.watch(http.serve_connection(io, service)).await
                }
                (None, None) => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
                (Some(acceptor), _) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let drain = Duration::from_secs(limits.shutdown_drain_timeout_secs);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        "stopped accepting; finishing in-flight requests"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout_secs = drain.as_secs(),
            "requests still in flight after the drain timeout; closing their connections"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
}

/// Serves the registry as it was at `at`, read-only, for unmodified
/// clients to pull the past. It reads the data directory without taking
/// its lock (a live server may be appending): the state is rebuilt once at
/// startup from snapshots and the log; blobs are read from the store as
/// long as they exist. Every write answers 405. Access control and TLS
/// apply as configured.
pub async fn run_read_only(
    config: Config,
    at: AsOf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    check_config(&config)?;
    let auth = Arc::new(Auth::from_config(&config.auth).map_err(ServerError::Auth)?);
    crate::metrics::install();
    // Metrics is a leaf: the modules with figures of their own describe
    // them once the recorder is in place.
    crate::notify::describe_metrics();
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
    let listener = Listener::bind(&config).await?;
    let url = listener.url();
    let (auth_enabled, loopback) = (auth.enabled(), listener.local.ip().is_loopback());
    let stop = CancellationToken::new();
    let app = Arc::new(App {
        layout: layout.clone(),
        writer: log::LogWriter::detached(state.last_seq, replayed.crc),
        state: Arc::new(parking_lot::RwLock::new(state)),
        store: match object_store(&config)? {
            Some(objects) => BlobStore::new(&layout).with_objects(objects),
            None => BlobStore::new(&layout),
        }
        .with_small_blob_cache(config.limits.blob_cache_bytes_max),
        limits: config.limits.clone(),
        sessions: UploadSessions::default(),
        delete_enabled: false,
        past: PastStates::default(),
        read_only: true,
        auth,
        tls: listener.tls.is_some(),
        upload_permits: Arc::new(tokio::sync::Semaphore::new(1)),
        gc: None,
        notifier: None,
        archive: None,
        shutdown: stop.clone(),
        ui: crate::api::ui::Ui::new(&config.ui, auth_enabled, true, loopback),
        mirrors: Arc::default(),
        feed_positions: Default::default(),
        replica: None,
    });
    let gate = Arc::new(Gate::default());
    gate.open(app);
    let serving = tokio::spawn(serve(
        listener,
        front(
            gate.clone(),
            Duration::from_millis(config.limits.body_read_timeout_ms),
            config.access_log,
        ),
        config.limits.clone(),
        config.sendfile,
        stop.clone(),
    ));
    tracing::info!("listening on {url}");
    shutdown.await;
    gate.drain();
    stop.cancel();
    let _ = serving.await;
    Ok(())
}

/// How often a replica's first read of the archive is tried again.
const REPLICA_PREPARE_RETRY: Duration = Duration::from_secs(2);

/// Readies a replica's data directory (`replica::prepare`), retrying
/// while the archive does not answer (saying so on `/readyz`); the
/// archive it follows.
async fn prepare_replica(
    config: &Config,
    gate: &Gate,
) -> Result<crate::archive::ArchiveStore, ServerError> {
    use crate::archive::read::ReadError;
    use crate::archive::restore::RestoreError;
    use crate::replica::{Prepared, ReplicaError};
    let archive = crate::replica::open_archive(config)
        .map_err(|e| ServerError::Config(crate::config::ConfigError::Invalid(e)))?;
    loop {
        gate.set_waiting_for(Some(format!(
            "replica: reading the archive {}",
            archive.url()
        )));
        let mut progress = |what: &str, n: u64| {
            tracing::info!(what, count = n, "restoring the replica from the archive");
        };
        match crate::replica::prepare(config, &archive, &mut progress).await {
            Ok(prepared) => {
                match &prepared {
                    Prepared::Resumed => {
                        tracing::info!(archive = %archive.url(), "replica: resuming from its own log")
                    }
                    Prepared::Empty => {
                        tracing::info!(archive = %archive.url(), "replica: the archive holds no record yet; following it from the start")
                    }
                    Prepared::Restored(r) => tracing::info!(
                        archive = %archive.url(),
                        records = r.records,
                        last_seq = r.last_seq,
                        snapshot_seq = r.snapshot_seq.unwrap_or(0),
                        blobs = r.blobs,
                        "replica: restored from the archive"
                    ),
                }
                gate.set_waiting_for(None);
                return Ok(archive);
            }
            // The archive is unreachable or an object is bad: a replica
            // waits for it, never starts from part of it.
            Err(
                e @ (ReplicaError::Store(_)
                | ReplicaError::Restore(
                    RestoreError::Store(_)
                    | RestoreError::Read(ReadError::Store(_) | ReadError::Corrupt(_)),
                )),
            ) => {
                tracing::warn!(archive = %archive.url(), error = %e, "replica: cannot read the archive; retrying");
                gate.set_waiting_for(Some(format!(
                    "replica: cannot read the archive {}: {e}",
                    archive.url()
                )));
                tokio::time::sleep(REPLICA_PREPARE_RETRY).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The archive shipper of `[archive]`, when it is on: built (no request
/// yet), its wait set on the writer under `durability = "archived"`.
fn start_archive(
    config: &Config,
    layout: &Layout,
    writer: &log::LogWriter,
    store: &BlobStore,
    stop: &CancellationToken,
) -> Result<Option<Arc<crate::archive::Shipper>>, ServerError> {
    if !config.archive.enabled() {
        return Ok(None);
    }
    let archive = crate::archive::ArchiveStore::open(&config.archive, &config.storage)
        .map_err(|e| ServerError::Config(crate::config::ConfigError::Invalid(e)))?;
    let blobs = matches!(store.backend(), crate::blobs::Backend::Filesystem).then(|| store.clone());
    let shipper = crate::archive::Shipper::new(
        archive,
        config.archive.clone(),
        layout.clone(),
        writer.clone(),
        blobs,
        config.limits.segment_bytes_max,
        stop.clone(),
    );
    if config.archive.durability == crate::archive::ArchiveDurability::Archived {
        let waiter = shipper.clone();
        writer.set_ack_wait(Arc::new(move |seq| {
            let waiter = waiter.clone();
            Box::pin(async move { waiter.wait_shipped(seq).await })
        }));
    }
    tracing::info!(archive = %shipper.url(), durability = ?config.archive.durability, "log archive on");
    Ok(Some(shipper))
}

/// The object store of `[storage]`, when blob bytes live in one.
fn object_store(config: &Config) -> Result<Option<SharedObjectBlobs>, ServerError> {
    if config.storage.backend != StorageBackend::S3 {
        return Ok(None);
    }
    let objects = ObjectBlobs::new(&config.storage)
        .map_err(|e| ServerError::Config(crate::config::ConfigError::Invalid(e)))?;
    tracing::info!(store = %objects.description(), "blobs in object storage");
    Ok(Some(Arc::new(objects)))
}

/// The local-disk cache of small blobs of the object backend, unless
/// `storage.local_cache_bytes_max` is 0. One that cannot be opened is
/// only a warning: every read then goes to the store.
async fn open_local_cache(
    config: &Config,
    layout: &Layout,
    state: &Arc<parking_lot::RwLock<crate::projection::State>>,
) -> Option<Arc<LocalCache>> {
    let (bytes_max, blob_bytes_max) = (
        config.storage.local_cache_bytes_max,
        config.storage.local_cache_blob_bytes_max,
    );
    if bytes_max == 0 {
        return None;
    }
    let (root, state) = (layout.root.clone(), state.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let state = state.read();
        LocalCache::open(&root, bytes_max, blob_bytes_max, |d| {
            state.blobs.get(d).copied()
        })
    })
    .await;
    match opened {
        Ok(Ok((cache, report))) => {
            tracing::info!(
                blobs = report.kept,
                bytes = report.kept_bytes,
                removed = report.removed,
                evicted = report.evicted,
                bytes_max,
                "local blob cache opened"
            );
            Some(Arc::new(cache))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot open the local blob cache; reads go to the object store");
            None
        }
        Err(_) => None,
    }
}

/// How often an unreachable object store is asked again.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Probes the object store until it answers, saying why not on `/readyz`
/// meanwhile; then keeps probing it in the background while it is marked
/// unavailable, so that it comes back without a restart.
async fn wait_for_store(objects: &SharedObjectBlobs, gate: &Gate) -> Result<(), ()> {
    loop {
        match objects.probe().await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(store = %objects.description(), error = %e, "the object store does not answer; not ready");
                gate.set_waiting_for(Some(format!(
                    "object store ({}) unavailable: {e}",
                    objects.description()
                )));
                tokio::time::sleep(STORE_PROBE_INTERVAL).await;
            }
        }
    }
    gate.set_waiting_for(None);
    let objects = objects.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(STORE_PROBE_INTERVAL).await;
            if objects.unavailable_reason().is_some() {
                let _ = objects.probe().await;
            }
            if Arc::strong_count(&objects) == 1 {
                break; // the server is gone
            }
        }
    });
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

/// hyper's timer for one connection, which hyper uses only for the
/// deadline of the next request head (`header_read_timeout_ms`).
///
/// hyper asks for a new sleep each time it waits for a head and drops it
/// once the head is read. With tokio's timer directly (`TokioTimer`),
/// each request boxed a new sleep, put it in the timer wheel and took it
/// out again: about 600 instructions of a HEAD's 20,000, half of which
/// this saves (callgrind, `benches/callgrind/head.py`). Here the
/// connection keeps one tokio sleep; each request's deadline is later
/// than the last, which tokio records without touching the wheel. Once
/// the head is read the sleep stays armed; if it fires, the connection's
/// task is polled once for nothing.
#[derive(Clone, Default)]
struct HeadTimer {
    sleep: Arc<parking_lot::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadDeadline {
            timer: self.clone(),
            deadline: deadline.into(),
        })
    }
}

/// One head's deadline, on its connection's sleep.
struct HeadDeadline {
    timer: HeadTimer,
    deadline: tokio::time::Instant,
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut slot = self.timer.sleep.lock();
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadDeadline {}
