//! ferro: an OCI registry whose single source of truth is an append-only,
//! checksummed event log. See ARCHITECTURE.md for the map.

pub mod api;
pub mod archive;
pub mod auth;
pub mod blobs;
pub mod commands;
pub mod compaction;
pub mod config;
pub mod datadir;
pub mod events;
pub mod expiry;
pub mod feed;
pub mod fsutil;
pub mod gc;
pub mod history;
pub mod limits;
pub mod log;
pub mod logfields;
pub mod logline;
pub mod manifest;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod oci;
pub mod projection;
pub mod reconcile;
pub mod replay;
pub mod replica;
pub mod restore;
pub mod sendfile;
pub mod server;
pub mod snapshot;
pub mod startup;
pub mod storage;
pub mod timefmt;
pub mod tls;
