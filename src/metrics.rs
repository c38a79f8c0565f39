//! Prometheus metrics at `/metrics`.
//!
//! Request metrics go through the `metrics` facade as requests happen:
//! - `ferro_http_requests_total{route,method,status}`
//! - `ferro_http_request_duration_seconds{route,method}` (histogram)
//! - `ferro_http_request_bytes_total`, `ferro_http_response_bytes_total`
//! - `ferro_http_requests_in_flight`
//! - `ferro_auth_refusals_total{reason}`, `ferro_uploads_expired_total`
//!
//! This module is a leaf: it knows metric names and how to render them,
//! and nothing of the modules whose figures it shows. Garbage collection,
//! the log writer and the projection report plain numbers to it
//! ([`GcRun`], [`LogFigures`], [`StateFigures`]).
//!
//! Garbage collection reports each run as it ends (see [`record_gc`]):
//! - `ferro_gc_runs_total{dry_run}`
//! - `ferro_gc_last_run_timestamp_seconds`, `ferro_gc_last_duration_seconds`
//!   (of the last run, dry or not)
//! - `ferro_gc_manifests_deleted_total`, `ferro_gc_blobs_deleted_total`,
//!   `ferro_gc_bytes_freed_total`, `ferro_gc_orphans_removed_total`,
//!   `ferro_gc_orphan_bytes_freed_total` (real runs only: a dry run
//!   deletes nothing)
//!
//! The object store (`[storage] backend = "s3"`) counts as it goes
//! (`blobs::object::metered`):
//! - `ferro_object_store_requests_total{operation,outcome}` (outcome `ok`,
//!   `not_found`, `error`; an operation counts once, retries included)
//! - `ferro_object_store_request_duration_seconds{operation}` (histogram)
//! - `ferro_object_store_retries_total{operation}` (HTTP attempts after
//!   an operation's first)
//! - `ferro_object_store_sent_bytes_total`,
//!   `ferro_object_store_received_bytes_total` (request bodies sent and
//!   response bodies announced, every attempt)
//!
//! The local-disk cache of small blobs of the object-store backend
//! (`blobs::local_cache`):
//! - `ferro_blob_local_cache_hits_total`, `_misses_total` (GETs of a blob
//!   small enough to be cached that found it there, or not)
//! - `ferro_blob_local_cache_fills_total`, `_evictions_total`
//! - `ferro_blob_local_cache_bytes` (bytes of the files it holds)
//!
//! The log writer and the projection keep their own figures
//! (`WriterStats`, `LogTip`, `State::summary`); they are read at scrape
//! time (as [`LogFigures`] and [`StateFigures`]) and rendered here, so a scrape costs nothing between scrapes and
//! the figures are exact:
//! - `ferro_log_records_total`, `ferro_log_appended_bytes_total`,
//!   `ferro_log_last_seq`
//! - `ferro_log_group_commits_total`, `ferro_log_group_commit_records_max`
//!   (records per group commit: `records_total / group_commits_total` is
//!   the mean batch size)
//! - `ferro_log_fsync_seconds`, `ferro_log_group_commit_records`
//!   (histograms, recorded by the writer thread as it goes)
//! - `ferro_state_repositories`, `_manifests`, `_tags`, `_blobs`, `_uploads`
//! - `ferro_startup_replay_seconds`, `ferro_startup_snapshot_load_seconds`,
//!   `ferro_startup_seconds`, `ferro_ready`

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;

pub const REQUESTS: &str = "ferro_http_requests_total";
pub const REQUEST_SECONDS: &str = "ferro_http_request_duration_seconds";
pub const REQUEST_BYTES: &str = "ferro_http_request_bytes_total";
pub const RESPONSE_BYTES: &str = "ferro_http_response_bytes_total";
pub const IN_FLIGHT: &str = "ferro_http_requests_in_flight";
pub const AUTH_REFUSALS: &str = "ferro_auth_refusals_total";
pub const UPLOADS_EXPIRED: &str = "ferro_uploads_expired_total";
pub const LOG_FSYNC_SECONDS: &str = "ferro_log_fsync_seconds";
pub const LOG_GROUP_COMMIT_RECORDS: &str = "ferro_log_group_commit_records";
pub const OBJECT_STORE_REQUESTS: &str = "ferro_object_store_requests_total";
pub const OBJECT_STORE_REQUEST_SECONDS: &str = "ferro_object_store_request_duration_seconds";
pub const OBJECT_STORE_RETRIES: &str = "ferro_object_store_retries_total";
pub const OBJECT_STORE_BYTES_OUT: &str = "ferro_object_store_sent_bytes_total";
pub const OBJECT_STORE_BYTES_IN: &str = "ferro_object_store_received_bytes_total";
pub const LOCAL_CACHE_HITS: &str = "ferro_blob_local_cache_hits_total";
pub const LOCAL_CACHE_MISSES: &str = "ferro_blob_local_cache_misses_total";
pub const LOCAL_CACHE_FILLS: &str = "ferro_blob_local_cache_fills_total";
pub const LOCAL_CACHE_EVICTIONS: &str = "ferro_blob_local_cache_evictions_total";
pub const LOCAL_CACHE_BYTES: &str = "ferro_blob_local_cache_bytes";
pub const GC_RUNS: &str = "ferro_gc_runs_total";
pub const GC_LAST_RUN_TIMESTAMP: &str = "ferro_gc_last_run_timestamp_seconds";
pub const GC_LAST_DURATION: &str = "ferro_gc_last_duration_seconds";
pub const GC_MANIFESTS_DELETED: &str = "ferro_gc_manifests_deleted_total";
pub const GC_BLOBS_DELETED: &str = "ferro_gc_blobs_deleted_total";
pub const GC_BYTES_FREED: &str = "ferro_gc_bytes_freed_total";
pub const GC_ORPHANS_REMOVED: &str = "ferro_gc_orphans_removed_total";
pub const GC_ORPHAN_BYTES_FREED: &str = "ferro_gc_orphan_bytes_freed_total";

/// Latency buckets, in seconds: from a cached HEAD to a large upload.
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// fdatasync buckets, in seconds: from a write-back cache to a busy disk.
const FSYNC_BUCKETS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.25, 1.0,
];

/// Records per group commit.
const GROUP_COMMIT_BUCKETS: [f64; 10] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// How often histogram samples are folded into buckets without a scrape.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Figures of the startup, set once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Startup {
    pub snapshot_load: Duration,
    pub replay: Duration,
    pub total: Duration,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static STARTUP: OnceLock<Startup> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it). `None`
/// when another recorder was installed first (a library user's).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_SECONDS.into()),
                    &LATENCY_BUCKETS_SECONDS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(OBJECT_STORE_REQUEST_SECONDS.into()),
                    &LATENCY_BUCKETS_SECONDS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(LOG_FSYNC_SECONDS.into()),
                    &FSYNC_BUCKETS_SECONDS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(LOG_GROUP_COMMIT_RECORDS.into()),
                    &GROUP_COMMIT_BUCKETS,
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    describe();
                    log_histograms();
                    spawn_upkeep(h.clone());
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Histogram samples pile up in the recorder until they are folded into
/// their buckets: by a scrape, or by this upkeep, so that a registry
/// nobody scrapes does not grow without bound.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("ferro-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer a request (to the response head)"
    );
    describe_counter!(REQUEST_BYTES, Unit::Bytes, "Request body bytes read");
    describe_counter!(RESPONSE_BYTES, Unit::Bytes, "Response body bytes sent");
    describe_gauge!(IN_FLIGHT, "Requests being answered");
    describe_counter!(
        AUTH_REFUSALS,
        "Requests refused by access control, by reason"
    );
    describe_counter!(UPLOADS_EXPIRED, "Idle uploads cancelled by expiry");
    describe_histogram!(
        LOG_FSYNC_SECONDS,
        Unit::Seconds,
        "Time of each fdatasync of the log"
    );
    describe_histogram!(
        LOG_GROUP_COMMIT_RECORDS,
        "Records written by each group commit (one write, at most one fdatasync)"
    );
    describe_counter!(
        OBJECT_STORE_REQUESTS,
        "Operations on the object store, by operation and outcome (retries included)"
    );
    describe_histogram!(
        OBJECT_STORE_REQUEST_SECONDS,
        Unit::Seconds,
        "Time of each operation on the object store, retries included"
    );
    describe_counter!(
        OBJECT_STORE_RETRIES,
        "HTTP attempts to the object store after an operation's first, by operation"
    );
    describe_counter!(
        OBJECT_STORE_BYTES_OUT,
        Unit::Bytes,
        "Request body bytes sent to the object store"
    );
    describe_counter!(
        OBJECT_STORE_BYTES_IN,
        Unit::Bytes,
        "Response body bytes the object store announced"
    );
    describe_counter!(
        LOCAL_CACHE_HITS,
        "Blob GETs served from the local-disk cache of the object-store backend"
    );
    describe_counter!(
        LOCAL_CACHE_MISSES,
        "Blob GETs of a blob small enough for the local-disk cache that it did not hold"
    );
    describe_counter!(
        LOCAL_CACHE_FILLS,
        "Blobs written into the local-disk cache (from uploads and first reads)"
    );
    describe_counter!(
        LOCAL_CACHE_EVICTIONS,
        "Blobs evicted from the local-disk cache to stay under its cap"
    );
    describe_gauge!(
        LOCAL_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of the blob files in the local-disk cache"
    );
    describe_counter!(GC_RUNS, "Garbage collection runs finished, by dry_run");
    describe_gauge!(
        GC_LAST_RUN_TIMESTAMP,
        Unit::Seconds,
        "When the last garbage collection run started (Unix time)"
    );
    describe_gauge!(
        GC_LAST_DURATION,
        Unit::Seconds,
        "How long the last garbage collection run took"
    );
    describe_counter!(
        GC_MANIFESTS_DELETED,
        "Untagged manifests deleted by garbage collection"
    );
    describe_counter!(GC_BLOBS_DELETED, "Blobs deleted by garbage collection");
    describe_counter!(
        GC_BYTES_FREED,
        Unit::Bytes,
        "Bytes of the blobs deleted by garbage collection"
    );
    describe_counter!(
        GC_ORPHANS_REMOVED,
        "Blob files no event accounted for, removed by garbage collection"
    );
    describe_counter!(
        GC_ORPHAN_BYTES_FREED,
        Unit::Bytes,
        "Bytes of the orphan blob files removed"
    );
}

/// The figures of one finished garbage collection run.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcRun {
    pub dry_run: bool,
    pub started_unix_ns: u64,
    pub total_ms: u64,
    pub manifests_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub orphans_removed: u64,
    pub orphan_bytes_freed: u64,
}

/// Counts a finished garbage collection run.
pub fn record_gc(run: &GcRun) {
    let dry_run = if run.dry_run { "true" } else { "false" };
    metrics::counter!(GC_RUNS, "dry_run" => dry_run).increment(1);
    metrics::gauge!(GC_LAST_RUN_TIMESTAMP).set(run.started_unix_ns as f64 / 1e9);
    metrics::gauge!(GC_LAST_DURATION).set(run.total_ms as f64 / 1e3);
    if run.dry_run {
        return;
    }
    for (name, value) in [
        (GC_MANIFESTS_DELETED, run.manifests_deleted),
        (GC_BLOBS_DELETED, run.blobs_deleted),
        (GC_BYTES_FREED, run.bytes_freed),
        (GC_ORPHANS_REMOVED, run.orphans_removed),
        (GC_ORPHAN_BYTES_FREED, run.orphan_bytes_freed),
    ] {
        metrics::counter!(name).increment(value);
    }
}

/// One fdatasync of the log, from the writer thread (the handle is looked
/// up once).
pub fn record_log_fsync(took: Duration) {
    log_histograms().0.record(took.as_secs_f64());
}

/// One group commit of `records` records, from the writer thread.
pub fn record_group_commit(records: usize) {
    log_histograms().1.record(records as f64);
}

/// The log writer's histograms, registered by `install` so that they are
/// on the page (empty) before the first commit.
fn log_histograms() -> &'static (metrics::Histogram, metrics::Histogram) {
    static H: OnceLock<(metrics::Histogram, metrics::Histogram)> = OnceLock::new();
    H.get_or_init(|| {
        (
            metrics::histogram!(LOG_FSYNC_SECONDS),
            metrics::histogram!(LOG_GROUP_COMMIT_RECORDS),
        )
    })
}

/// The in-flight gauge, looked up once (a lookup hashes the key).
pub fn in_flight() -> &'static metrics::Gauge {
    static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!(IN_FLIGHT))
}

/// Counts and times one answered request.
///
/// The counter and histogram handles are looked up in the recorder once
/// per (route, method, status) and kept for the life of the process (the
/// keys are few: routes × methods × statuses): a lookup through the
/// `metrics` macros builds and hashes the key on every call. Each thread
/// remembers the last key it saw, so the usual request (the same kind as
/// the one before) costs a comparison rather than a hash, a lock and two
/// reference counts.
pub fn record_request(
    route: &'static str,
    method: &'static str,
    status: axum::http::StatusCode,
    elapsed: Duration,
) {
    type Key = (&'static str, &'static str, u16);
    type Handles = (metrics::Counter, metrics::Histogram);
    static HANDLES: OnceLock<RwLock<HashMap<Key, &'static Handles>>> = OnceLock::new();
    thread_local! {
        static LAST: std::cell::Cell<Option<(Key, &'static Handles)>> =
            const { std::cell::Cell::new(None) };
    }
    let key = (route, method, status.as_u16());
    let handles = match LAST.with(|last| last.get()) {
        Some((seen, handles)) if seen == key => handles,
        _ => {
            let table = HANDLES.get_or_init(Default::default);
            let known = table.read().get(&key).copied();
            let handles = known.unwrap_or_else(|| {
                *table.write().entry(key).or_insert_with(|| {
                    Box::leak(Box::new((
                        metrics::counter!(REQUESTS, "route" => route, "method" => method, "status" => status_label(status)),
                        metrics::histogram!(REQUEST_SECONDS, "route" => route, "method" => method),
                    )))
                })
            });
            LAST.with(|last| last.set(Some((key, handles))));
            handles
        }
    };
    handles.0.increment(1);
    handles.1.record(elapsed.as_secs_f64());
}

/// A status as a label, without an allocation for the usual ones.
pub fn status_label(status: axum::http::StatusCode) -> metrics::SharedString {
    let known: &'static str = match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        206 => "206",
        307 => "307",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        416 => "416",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(known)
}

pub fn set_startup(s: Startup) {
    let _ = STARTUP.set(s);
}

/// The log writer's figures at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFigures {
    /// Records appended since start (one per command).
    pub records_total: u64,
    pub appended_bytes_total: u64,
    pub last_seq: u64,
    pub group_commits_total: u64,
    /// Most records written by one group commit.
    pub group_commit_records_max: u64,
}

/// What the state holds at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateFigures {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub uploads: u64,
}

/// Everything, as Prometheus text. `live` is the writer's and the state's
/// figures once the registry is ready.
pub fn render(live: Option<(LogFigures, StateFigures)>) -> String {
    let mut out = HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default();
    fn put(out: &mut String, name: &str, kind: &str, help: &str, value: String) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    put(
        &mut out,
        "ferro_ready",
        "gauge",
        "1 once the log is replayed and requests are served",
        u8::from(live.is_some()).to_string(),
    );
    if let Some(s) = STARTUP.get() {
        put(
            &mut out,
            "ferro_startup_snapshot_load_seconds",
            "gauge",
            "Time to load the snapshot at startup",
            s.snapshot_load.as_secs_f64().to_string(),
        );
        put(
            &mut out,
            "ferro_startup_replay_seconds",
            "gauge",
            "Time to replay the log after the snapshot at startup",
            s.replay.as_secs_f64().to_string(),
        );
        put(
            &mut out,
            "ferro_startup_seconds",
            "gauge",
            "Time from start to ready",
            s.total.as_secs_f64().to_string(),
        );
    }
    let Some((log, summary)) = live else {
        return out;
    };
    put(
        &mut out,
        "ferro_log_records_total",
        "counter",
        "Log records appended since start (one per command)",
        log.records_total.to_string(),
    );
    put(
        &mut out,
        "ferro_log_appended_bytes_total",
        "counter",
        "Log bytes appended since start",
        log.appended_bytes_total.to_string(),
    );
    put(
        &mut out,
        "ferro_log_last_seq",
        "gauge",
        "Sequence number of the last committed record",
        log.last_seq.to_string(),
    );
    put(
        &mut out,
        "ferro_log_group_commits_total",
        "counter",
        "Group commits (one write and at most one fsync each)",
        log.group_commits_total.to_string(),
    );
    put(
        &mut out,
        "ferro_log_group_commit_records_max",
        "gauge",
        "Most records written by one group commit",
        log.group_commit_records_max.to_string(),
    );
    for (name, help, value) in [
        (
            "ferro_state_repositories",
            "Repositories",
            summary.repositories,
        ),
        (
            "ferro_state_manifests",
            "Manifests, all repositories",
            summary.manifests,
        ),
        ("ferro_state_tags", "Tags, all repositories", summary.tags),
        ("ferro_state_blobs", "Blobs in the store", summary.blobs),
        (
            "ferro_state_uploads",
            "Upload sessions open",
            summary.uploads,
        ),
    ] {
        put(&mut out, name, "gauge", help, value.to_string());
    }
    out
}

/// Which counter a [`Counted`] body adds to.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    In,
    Out,
}

/// A body that counts its bytes into the request or response counter as
/// they pass. Size hints pass through, so `Content-Length` is unchanged.
pub struct Counted {
    inner: Body,
    direction: Direction,
}

/// Response bodies up to this size, whole in memory, are counted when
/// the response leaves the handler rather than as they are sent.
const COUNT_AT_ONCE_BYTES_MAX: u64 = 64 * 1024;

impl Counted {
    pub fn wrap(inner: Body, direction: Direction) -> Body {
        Body::new(Counted { inner, direction })
    }

    /// Counts a response's body: small bodies of known size at once, the
    /// rest (streams, large blobs) as they are sent, so a transfer cut
    /// short counts what went out.
    pub fn wrap_response(response: axum::response::Response) -> axum::response::Response {
        match http_body::Body::size_hint(response.body()).exact() {
            Some(0) => response,
            Some(n) if n <= COUNT_AT_ONCE_BYTES_MAX => {
                counter_of(Direction::Out).increment(n);
                response
            }
            _ => response.map(|b| Counted::wrap(b, Direction::Out)),
        }
    }
}

/// The byte counter of a direction, looked up once.
fn counter_of(direction: Direction) -> &'static metrics::Counter {
    static IN: OnceLock<metrics::Counter> = OnceLock::new();
    static OUT: OnceLock<metrics::Counter> = OnceLock::new();
    match direction {
        Direction::In => IN.get_or_init(|| metrics::counter!(REQUEST_BYTES)),
        Direction::Out => OUT.get_or_init(|| metrics::counter!(RESPONSE_BYTES)),
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                counter_of(self.direction).increment(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
