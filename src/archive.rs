//! The log shipped to object storage: a continuous archive of the log
//! (`[archive]`), restore from it, and the operator's view of it.
//!
//! - `config`: the `[archive]` settings;
//! - `store`: the object store and the archive's key names;
//! - `piece`: a run of records as one immutable object (segment format);
//! - `epoch`: one writer per archive (epoch objects, fencing);
//! - `cursor`: the shipper's local cursor file;
//! - `shipper`: the task that ships pieces, snapshots and blobs;
//! - `read`: walking the archive's pieces, verified;
//! - `restore`: a data directory rebuilt from the archive;
//! - `inspect`: `ferroctl archive status` and `verify`.
//!
//! The layout of the archive is documented in `log-format/ARCHIVE.md`.

pub mod config;
pub mod cursor;
pub mod epoch;
pub mod inspect;
pub mod pack;
pub mod piece;
pub mod read;
pub mod restore;
pub mod shipper;
pub mod store;

pub use config::{ArchiveConfig, ArchiveDurability};
pub use shipper::Shipper;
pub use store::ArchiveStore;
