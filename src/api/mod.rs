//! The HTTP surface: the OCI Distribution API on top of the log writer,
//! the projection and the blob store.
//!
//! - `router`: the whole URL table and the dispatch from a parsed path;
//! - `request`: what handlers ask of a request besides its path (who
//!   made it, its query parameters), shared by the router and handlers;
//! - `front`: request ids, tracing, metrics and the readiness gate around
//!   it; `access`: access control and upload admission per request;
//! - `path`: the one parser of OCI paths; `ranges`: Range/Content-Range;
//! - `error`: the one error type and its spec JSON form;
//! - `body`: bounded reading and streaming of request bodies;
//! - one file per resource: `manifests`, `blobs`, `uploads`, `listing`
//!   (tags and catalog), `referrers`; `token` the built-in token endpoint;
//! - `stall`: request bodies that stop arriving;
//! - `ui`: the web UI at `/ui/`, pages over the same readers;
//! - `mirror`: pulls under a mirror's prefix fetched from its upstreams,
//!   pushes there refused unless allowed.
//!
//! Boundary: handlers never write the log themselves; they build a
//! `Command` and submit it to the writer. Reads take the projection's read
//! lock for a lookup and release it before any I/O.

mod access;
pub mod body;
pub mod error;
pub mod front;
pub mod path;
pub mod ranges;
mod request;
pub mod router;
pub mod stall;

mod blobs;
mod ext;
mod listing;
mod manifests;
mod mirror;
mod referrers;
mod token;
pub mod ui;
mod uploads;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::auth::Auth;
use crate::blobs::BlobStore;
use crate::datadir::Layout;
use crate::limits::Limits;
use crate::log::LogWriter;
use crate::oci::Hasher;
use crate::projection::State;

pub use ext::PastStates;
pub use router::router;
pub use uploads::{abort_multiparts, release as release_upload};

/// Everything a handler needs, shared by all requests.
pub struct App {
    /// The data directory's paths: history and time travel read the log.
    pub layout: Layout,
    pub writer: LogWriter,
    pub state: Arc<RwLock<State>>,
    pub store: BlobStore,
    pub limits: Limits,
    pub sessions: UploadSessions,
    /// Whether DELETE of manifests, tags and blobs is allowed (405 if not).
    pub delete_enabled: bool,
    /// Past states rebuilt for reads "as of" a point, kept for reuse.
    pub past: PastStates,
    /// Serving a past state: every write answers 405.
    pub read_only: bool,
    /// Access control (disabled by default).
    pub auth: Arc<Auth>,
    /// Whether clients reach this server over TLS (for the token realm).
    pub tls: bool,
    /// One permit per upload request carrying bytes
    /// (`limits.uploads_concurrent_max`).
    pub upload_permits: Arc<tokio::sync::Semaphore>,
    /// Garbage collection (absent when serving a past state). Its
    /// `collector.last_report()` is the last run's report, for metrics.
    pub gc: Option<crate::gc::GcService>,
    /// The notification endpoints (absent when none is configured, and
    /// when serving a past state).
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// The log's archive shipper (absent when `[archive]` is off, and
    /// when serving a past state).
    pub archive: Option<Arc<crate::archive::Shipper>>,
    /// The follower of a read replica (`[replica]`): its state comes from
    /// another server's archive and every write answers 405 naming the
    /// primary (`read_only` is set too).
    pub replica: Option<Arc<crate::replica::Follower>>,
    /// Cancelled when the server starts shutting down: requests that wait
    /// on purpose (the feed's long-poll) end early instead of holding the
    /// graceful drain.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The web UI's settings, sessions and timeline.
    pub ui: ui::Ui,
    /// Pull-through caches of other registries (`[[mirrors]]`).
    pub mirrors: Arc<crate::mirror::Mirrors>,
    /// Where the feed's recent pages ended, so a follower's next page
    /// reads only what is new.
    pub feed_positions: Arc<crate::feed::Positions>,
}

/// In-memory companions of upload sessions: a lock that serialises
/// requests on one upload, and the running hash of its bytes. Not durable:
/// after a restart the hash is recomputed from the staging file.
#[derive(Default)]
pub struct UploadSessions {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadSession>>>>,
}

#[derive(Default)]
pub struct UploadSession {
    /// Hash of the first `hashed_bytes` bytes of the upload, if known.
    pub hasher: Option<Hasher>,
    pub hashed_bytes: u64,
}

impl UploadSessions {
    pub fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<UploadSession>> {
        self.map.lock().entry(id.to_owned()).or_default().clone()
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }
}
