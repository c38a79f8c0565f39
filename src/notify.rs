//! Notifications: events sent to HTTP endpoints from the log, at least
//! once and in log order, each endpoint at its own pace.
//!
//! The log is the queue. Each enabled endpoint has one task
//! (`deliver::run`) that reads committed entries after the endpoint's
//! cursor with the event feed's reader (`feed::read_page`), waits on the
//! writer's commit wake-up when it has caught up, posts a batch and
//! advances its cursor (`cursor`, a small durable file) only after a 2xx.
//! Nothing is queued in memory: a slow or dead endpoint only falls behind
//! in the log, and the writer never waits for it. Compaction keeps
//! entries an enabled endpoint has not acknowledged
//! ([`Notifier::log_hold`]) unless `notifications.hold = "retention"`.
//!
//! - `config`: the settings and the compiled filters;
//! - `cursor`: the cursor file (magic, version, checksum);
//! - `format`: distribution and CloudEvents bodies;
//! - `client`: the HTTP/1.1 client (plain or rustls);
//! - `deliver`: the per-endpoint loop, backoff and the failing state.
//!
//! Invariant: an endpoint's durable cursor only moves forward, except by
//! an operator's move, which is itself an event on the record.

pub mod client;
pub mod config;
pub mod cursor;
mod deliver;
pub mod format;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::commands::Command;
use crate::datadir::Layout;
use crate::events::Actor;
use crate::log::{LogWriter, SubmitError};
use crate::projection::State;
use crate::storage::Fs;
use crate::timefmt::rfc3339;
use config::{EndpointConfig, EndpointFilter, LogHold, NotificationsConfig, Start};
use cursor::Cursor;

pub const DELIVERIES: &str = "ferro_notifications_deliveries_total";
pub const EVENTS_DELIVERED: &str = "ferro_notifications_events_delivered_total";
pub const FAILURES: &str = "ferro_notifications_failures_total";
pub const LAG_ENTRIES: &str = "ferro_notifications_lag_entries";
pub const LAG_SECONDS: &str = "ferro_notifications_lag_seconds";
pub const FAILING: &str = "ferro_notifications_failing";
pub const CURSOR: &str = "ferro_notifications_cursor";

pub(crate) fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One endpoint: its settings, cursor and health.
pub struct Endpoint {
    pub config: EndpointConfig,
    filter: EndpointFilter,
    /// The last entry acknowledged or skipped by the filter (may be ahead
    /// of the file: skipped entries are written down lazily).
    acked: AtomicU64,
    /// What the cursor file holds: what compaction must keep after.
    durable: AtomicU64,
    /// Bumped by an operator's move: a batch read before it is dropped.
    generation: AtomicU64,
    moved: Notify,
    /// Serialises cursor file writes (a delivery's and a move's).
    cursor_lock: tokio::sync::Mutex<()>,
    health: Mutex<Health>,
}

#[derive(Debug, Default, Clone)]
struct Health {
    last_error: Option<String>,
    last_error_unix_ns: Option<u64>,
    /// Since when every attempt failed (the first failure after a success).
    failing_since_unix_ns: Option<u64>,
    /// Marked failing: failed for longer than `failing_after`.
    failing: bool,
    /// Commit time of the oldest matching entry not yet acknowledged.
    pending_since_unix_ns: Option<u64>,
    last_delivery_unix_ns: Option<u64>,
    deliveries: u64,
    failures: u64,
}

/// An endpoint's state, as `GET /v2/_ferro/notifications` shows it.
#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub url: String,
    pub enabled: bool,
    pub format: config::Format,
    /// The last entry acknowledged (or passed over by the filters).
    pub cursor: u64,
    /// What the cursor file holds.
    pub durable_cursor: u64,
    pub lag_entries: u64,
    pub lag_seconds: f64,
    pub deliveries: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_delivery_at: Option<String>,
    pub failing: bool,
    pub failing_since: Option<String>,
}

/// Where an operator moves a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveTo {
    /// Send again from this sequence number.
    ReplayFrom(u64),
    /// Skip everything committed so far.
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no notification endpoint is named {0:?}")]
    UnknownEndpoint(String),
    #[error("sequence number {asked} is past the log's end ({last_seq})")]
    PastEnd { asked: u64, last_seq: u64 },
    #[error(transparent)]
    Writer(#[from] SubmitError),
    #[error("{0}")]
    Cursor(String),
}

/// The running notification endpoints.
pub struct Notifier {
    endpoints: Vec<Arc<Endpoint>>,
    layout: Layout,
    fs: Fs,
    writer: LogWriter,
    state: Arc<RwLock<State>>,
    source: String,
    hold: LogHold,
    cursor_write_interval: std::time::Duration,
    stop: CancellationToken,
}

impl Notifier {
    /// Reads (or creates) every endpoint's cursor and starts one task per
    /// enabled endpoint. Blocking file I/O: call from the blocking pool or
    /// at startup. `default_source`: the server's URL.
    pub fn start(
        config: &NotificationsConfig,
        layout: Layout,
        fs: Fs,
        writer: LogWriter,
        state: Arc<RwLock<State>>,
        default_source: &str,
        stop: CancellationToken,
    ) -> Result<Arc<Notifier>, String> {
        let dir = layout.notifications_dir();
        let last_seq = state.read().last_seq;
        let mut endpoints = Vec::new();
        for e in &config.endpoints {
            let filter = EndpointFilter::new(e)?;
            let acked = match cursor::read(&dir, &e.name) {
                // A cursor past the log's end (records acknowledged under
                // `durability = "interval"` that a power loss took back):
                // the numbers after the end are written again, and must
                // be sent.
                Ok(Some(c)) if c.acked_seq > last_seq => {
                    tracing::warn!(endpoint = %e.name, cursor = c.acked_seq, last_seq, "the cursor is past the log's end; delivery resumes at the end");
                    last_seq
                }
                Ok(Some(c)) => c.acked_seq,
                Ok(None) => {
                    let acked = match e.start {
                        Start::End => last_seq,
                        Start::Beginning => 0,
                        Start::Seq(n) => n.saturating_sub(1),
                    };
                    // Written now: "end" means the end when first seen.
                    cursor::write(
                        &*fs,
                        &dir,
                        &e.name,
                        Cursor {
                            acked_seq: acked,
                            written_unix_ns: now_unix_ns(),
                        },
                    )
                    .map_err(|err| err.to_string())?;
                    tracing::info!(endpoint = %e.name, cursor = acked, "new notification endpoint");
                    acked
                }
                Err(err) => {
                    // Sending again is safe, skipping is not.
                    tracing::error!(endpoint = %e.name, error = %err, "unreadable cursor file: the endpoint starts again from the log's beginning");
                    0
                }
            };
            endpoints.push(Arc::new(Endpoint {
                config: e.clone(),
                filter,
                acked: AtomicU64::new(acked),
                durable: AtomicU64::new(acked),
                generation: AtomicU64::new(0),
                moved: Notify::new(),
                cursor_lock: tokio::sync::Mutex::new(()),
                health: Mutex::new(Health::default()),
            }));
        }
        let source = if config.source.is_empty() {
            default_source.trim_end_matches('/').to_owned()
        } else {
            config.source.trim_end_matches('/').to_owned()
        };
        let notifier = Arc::new(Notifier {
            endpoints,
            layout,
            fs,
            writer,
            state,
            source,
            hold: config.hold,
            cursor_write_interval: config.cursor_write_interval,
            stop,
        });
        for e in notifier.endpoints.iter().filter(|e| e.config.enabled) {
            let client = client::Client::new(
                client::Target::parse(&e.config.url)?,
                &e.config.ca,
                e.config.timeout,
            )?;
            tokio::spawn(deliver::run(notifier.clone(), e.clone(), client));
        }
        Ok(notifier)
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The last sequence number compaction may remove (every enabled
    /// endpoint's durable cursor), or `None` when nothing is held.
    pub fn log_hold(&self) -> Option<u64> {
        if self.hold == LogHold::Retention {
            return None;
        }
        self.endpoints
            .iter()
            .filter(|e| e.config.enabled)
            .map(|e| e.durable.load(Ordering::Acquire))
            .min()
    }

    pub fn status(&self) -> Vec<EndpointStatus> {
        let last_seq = self.writer.tip().seq();
        let now = now_unix_ns();
        self.endpoints
            .iter()
            .map(|e| {
                let h = e.health.lock().clone();
                let cursor = e.acked.load(Ordering::Acquire);
                EndpointStatus {
                    name: e.config.name.clone(),
                    url: e.config.url.clone(),
                    enabled: e.config.enabled,
                    format: e.config.format,
                    cursor,
                    durable_cursor: e.durable.load(Ordering::Acquire),
                    lag_entries: last_seq.saturating_sub(cursor),
                    lag_seconds: lag_seconds(&h, now),
                    deliveries: h.deliveries,
                    failures: h.failures,
                    last_error: h.last_error,
                    last_error_at: h.last_error_unix_ns.map(rfc3339),
                    last_delivery_at: h.last_delivery_unix_ns.map(rfc3339),
                    failing: h.failing,
                    failing_since: h.failing_since_unix_ns.map(rfc3339),
                }
            })
            .collect()
    }

    /// Sets the per-endpoint gauges (before `/metrics` renders).
    pub fn refresh_metrics(&self) {
        let last_seq = self.writer.tip().seq();
        let now = now_unix_ns();
        for e in &self.endpoints {
            let name = e.config.name.clone();
            let cursor = e.acked.load(Ordering::Acquire);
            let h = e.health.lock().clone();
            metrics::gauge!(LAG_ENTRIES, "endpoint" => name.clone())
                .set(last_seq.saturating_sub(cursor) as f64);
            metrics::gauge!(LAG_SECONDS, "endpoint" => name.clone()).set(lag_seconds(&h, now));
            metrics::gauge!(CURSOR, "endpoint" => name.clone()).set(cursor as f64);
            metrics::gauge!(FAILING, "endpoint" => name).set(f64::from(u8::from(h.failing)));
        }
    }

    /// Moves an endpoint's cursor: the move goes on the record first, then
    /// into the cursor file; a batch in flight is dropped. Returns the
    /// event's fields (`from_seq`, `to_seq`).
    pub async fn move_cursor(
        &self,
        actor: Actor,
        name: &str,
        to: MoveTo,
    ) -> Result<(u64, u64), MoveError> {
        let e = self
            .endpoints
            .iter()
            .find(|e| e.config.name == name)
            .ok_or_else(|| MoveError::UnknownEndpoint(name.to_owned()))?
            .clone();
        let _cursor = e.cursor_lock.lock().await;
        let last_seq = self.writer.tip().seq();
        let to_seq = match to {
            MoveTo::End => last_seq,
            MoveTo::ReplayFrom(n) if n > last_seq + 1 => {
                return Err(MoveError::PastEnd { asked: n, last_seq })
            }
            MoveTo::ReplayFrom(n) => n.saturating_sub(1),
        };
        let from_seq = e.acked.load(Ordering::Acquire);
        self.writer
            .submit(
                actor,
                Command::RecordCursorMove {
                    endpoint: name.to_owned(),
                    from_seq,
                    to_seq,
                },
            )
            .await?;
        e.generation.fetch_add(1, Ordering::AcqRel);
        self.write_cursor(&e, to_seq)
            .await
            .map_err(MoveError::Cursor)?;
        e.acked.store(to_seq, Ordering::Release);
        e.health.lock().pending_since_unix_ns = None;
        e.moved.notify_one();
        tracing::info!(
            endpoint = name,
            from_seq,
            to_seq,
            "notification cursor moved"
        );
        Ok((from_seq, to_seq))
    }

    /// Writes the cursor file (on the blocking pool); the caller holds
    /// `cursor_lock`.
    async fn write_cursor(&self, e: &Arc<Endpoint>, acked_seq: u64) -> Result<(), String> {
        let fs = self.fs.clone();
        let dir = self.layout.notifications_dir();
        let name = e.config.name.clone();
        tokio::task::spawn_blocking(move || {
            cursor::write(
                &*fs,
                &dir,
                &name,
                Cursor {
                    acked_seq,
                    written_unix_ns: now_unix_ns(),
                },
            )
        })
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| err.to_string())?;
        e.durable.store(acked_seq, Ordering::Release);
        Ok(())
    }
}

fn lag_seconds(h: &Health, now_unix_ns: u64) -> f64 {
    h.pending_since_unix_ns
        .map_or(0.0, |t| now_unix_ns.saturating_sub(t) as f64 / 1e9)
}

/// Registers the metrics' descriptions.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(DELIVERIES, "Requests an endpoint answered 2xx");
    describe_counter!(EVENTS_DELIVERED, "Events in requests answered 2xx");
    describe_counter!(FAILURES, "Requests that failed (no answer, or not 2xx)");
    describe_gauge!(LAG_ENTRIES, "Log entries after the endpoint's cursor");
    describe_gauge!(
        LAG_SECONDS,
        "Age of the oldest matching entry the endpoint has not acknowledged"
    );
    describe_gauge!(
        FAILING,
        "1 while the endpoint has failed for longer than failing_after"
    );
    describe_gauge!(CURSOR, "The last entry the endpoint acknowledged");
}
