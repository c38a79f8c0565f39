//! ferro: an OCI registry whose single source of truth is an append-only,
//! checksummed event log. See ARCHITECTURE.md for the map.

pub mod commands;
pub mod datadir;
pub mod events;
pub mod fsutil;
pub mod limits;
pub mod log;
pub mod oci;
pub mod projection;
