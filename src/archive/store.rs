//! The archive's object store and its key names: the only module that
//! talks to it. An `s3://` URL gets the same client as the blob store
//! (`blobs::object::s3_client`: timeout and retry policy in one place), a
//! `file://` URL object_store's local file system, which enforces
//! create-if-absent (`PutMode::Create`) like AWS S3, MinIO and R2 do.
//!
//! Keys, under the URL's prefix (see `log-format/ARCHIVE.md`):
//!
//! ```text
//! log/<first seq, 20 digits>.log        pieces of the log (segment format)
//! snapshots/<seq, 20 digits>.snap       snapshot files, as written locally
//! epochs/<epoch, 20 digits>.epoch       writer epochs
//! blobs/<algorithm>/<hex>               blob bytes of 1 MiB or more (blobs on the filesystem only)
//! packs/<first seq>-<16 hex>.pack       smaller blobs, a shipment's together (`pack.rs`)
//! ```
//!
//! Every object is immutable once written: a name is never reused for
//! other bytes, so a listing and a read never race with a rewrite.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::config::{ArchiveConfig, ArchiveLocation};
use crate::blobs::object::StorageConfig;

pub const LOG_DIR: &str = "log";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const EPOCHS_DIR: &str = "epochs";
pub const BLOBS_DIR: &str = "blobs";
pub const PACKS_DIR: &str = "packs";
pub const PACK_SUFFIX: &str = ".pack";
pub const PIECE_SUFFIX: &str = ".log";
pub const SNAPSHOT_SUFFIX: &str = ".snap";
pub const EPOCH_SUFFIX: &str = ".epoch";

/// A failed request to the archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} is not in the archive")]
    NotFound(String),
    /// A create-if-absent put found the name taken.
    #[error("{0} already exists in the archive")]
    AlreadyExists(String),
    #[error("archive request for {key} failed: {reason}")]
    Failed { key: String, reason: String },
}

/// One object as a listing shows it, its key relative to the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

/// The archive: a store and the prefix every key starts with.
#[derive(Clone)]
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    /// `""` or ending in `/`.
    prefix: String,
    url: String,
    /// Whether the store enforces `PutMode::Create` (the local file system
    /// does; Garage 2.5.0 overwrites, and for S3 we cannot know).
    pub enforces_create: bool,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveStore({})", self.url)
    }
}

impl ArchiveStore {
    /// The store `config.url` names; S3 settings left empty come from
    /// `storage`. Makes no request (a `file://` directory is created).
    pub fn open(config: &ArchiveConfig, storage: &StorageConfig) -> Result<ArchiveStore, String> {
        match ArchiveLocation::parse(&config.url)? {
            ArchiveLocation::S3 { bucket, prefix } => {
                let settings = config.s3_settings(storage, &bucket);
                let s3 = crate::blobs::object::s3_client(&settings)?;
                Ok(ArchiveStore {
                    store: Arc::new(s3),
                    prefix,
                    url: config.url.clone(),
                    enforces_create: false,
                })
            }
            ArchiveLocation::File { path } => {
                std::fs::create_dir_all(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                let fs = LocalFileSystem::new_with_prefix(&path).map_err(|e| e.to_string())?;
                Ok(ArchiveStore {
                    store: Arc::new(fs),
                    prefix: String::new(),
                    url: config.url.clone(),
                    enforces_create: true,
                })
            }
        }
    }

    /// The URL, for logs and messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.prefix))
    }

    fn failed(&self, name: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(name.to_owned()),
            object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists(name.to_owned()),
            e => StoreError::Failed {
                key: name.to_owned(),
                reason: e.to_string(),
            },
        }
    }

    /// Writes `name` only if it does not exist, where the store enforces
    /// that; elsewhere a plain put (see `enforces_create`).
    pub async fn put_new(&self, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&self.path(name), PutPayload::from(bytes), options)
            .await
            .map(|_| ())
            .map_err(|e| self.failed(name, e))
    }

    /// Streams a local file into `name` (blob bytes: any size).
    pub async fn put_file(&self, name: &str, file: &std::path::Path) -> Result<(), StoreError> {
        let path = self.path(name);
        let mut source = tokio::fs::File::open(file)
            .await
            .map_err(|e| StoreError::Failed {
                key: name.to_owned(),
                reason: format!("cannot read {}: {e}", file.display()),
            })?;
        let mut sink = object_store::buffered::BufWriter::new(self.store.clone(), path);
        let copied = tokio::io::copy(&mut source, &mut sink).await;
        let closed = match copied {
            Ok(_) => tokio::io::AsyncWriteExt::shutdown(&mut sink).await,
            Err(e) => {
                let _ = sink.abort().await;
                Err(e)
            }
        };
        closed.map_err(|e| StoreError::Failed {
            key: name.to_owned(),
            reason: e.to_string(),
        })
    }

    pub async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let got = self
            .store
            .get(&self.path(name))
            .await
            .map_err(|e| self.failed(name, e))?;
        got.bytes().await.map_err(|e| self.failed(name, e))
    }

    /// Reads `name` as a stream of chunks (blob bytes: any size).
    pub async fn get_stream(
        &self,
        name: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, StoreError>>, StoreError>
    {
        use futures_util::StreamExt as _;
        let got = self
            .store
            .get(&self.path(name))
            .await
            .map_err(|e| self.failed(name, e))?;
        let key = name.to_owned();
        Ok(got
            .into_stream()
            .map_err(move |e| StoreError::Failed {
                key: key.clone(),
                reason: e.to_string(),
            })
            .boxed())
    }

    /// Streams `name` chunk by chunk into `each` (blob bytes: any size,
    /// never held whole). Returns the number of bytes read.
    pub async fn get_each(
        &self,
        name: &str,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let mut chunks = self.get_stream(name).await?;
        let mut total = 0u64;
        while let Some(chunk) = chunks.try_next().await? {
            each(&chunk).map_err(|e| StoreError::Failed {
                key: name.to_owned(),
                reason: e.to_string(),
            })?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }

    /// Bytes `range` of `name` (a pack's index, or one blob of it).
    pub async fn get_range(
        &self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.store
            .get_range(&self.path(name), range)
            .await
            .map_err(|e| self.failed(name, e))
    }

    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match self.store.head(&self.path(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(name, e)),
        }
    }

    /// Every object under `dir/`, sorted by name; names after `after`
    /// (a full name under `dir/`) only, when given.
    pub async fn list(&self, dir: &str, after: Option<&str>) -> Result<Vec<Listed>, StoreError> {
        let under = self.path(dir);
        let stream = match after {
            Some(after) => self.store.list_with_offset(Some(&under), &self.path(after)),
            None => self.store.list(Some(&under)),
        };
        let metas: Vec<object_store::ObjectMeta> = stream
            .try_collect()
            .await
            .map_err(|e| self.failed(dir, e))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let key = m.location.to_string();
                let name = key.strip_prefix(&self.prefix)?.to_owned();
                Some(Listed { name, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// `log/<first_seq>.log`.
pub fn piece_name(first_seq: u64) -> String {
    format!("{LOG_DIR}/{first_seq:020}{PIECE_SUFFIX}")
}

/// `snapshots/<seq>.snap`.
pub fn snapshot_name(seq: u64) -> String {
    format!("{SNAPSHOTS_DIR}/{seq:020}{SNAPSHOT_SUFFIX}")
}

/// `packs/<first_seq>-<16 random hex>.pack`: a new name for every pack,
/// so that a retried shipment never writes over an earlier pack.
pub fn new_pack_name(first_seq: u64) -> String {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    format!("{PACKS_DIR}/{first_seq:020}-{random:016x}{PACK_SUFFIX}")
}

/// The first sequence number in a pack's name, for a name of that form.
pub fn parse_pack_name(name: &str) -> Option<u64> {
    let stem = name
        .strip_prefix(PACKS_DIR)?
        .strip_prefix('/')?
        .strip_suffix(PACK_SUFFIX)?;
    let (digits, random) = stem.split_once('-')?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if digits.len() != 20
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || random.len() != 16
        || !random.bytes().all(lower_hex)
    {
        return None;
    }
    digits.parse().ok()
}

/// `epochs/<epoch>.epoch`.
pub fn epoch_name(epoch: u64) -> String {
    format!("{EPOCHS_DIR}/{epoch:020}{EPOCH_SUFFIX}")
}

/// `blobs/<algorithm>/<hex>`.
pub fn blob_name(digest: &crate::oci::Digest) -> String {
    format!("{BLOBS_DIR}/{}/{}", digest.algorithm().name(), digest.hex())
}

/// The number in `<dir>/<20 digits><suffix>`, for a name of that form.
pub fn parse_numbered(name: &str, dir: &str, suffix: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(dir)?
        .strip_prefix('/')?
        .strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(piece_name(42), "log/00000000000000000042.log");
        assert_eq!(
            parse_numbered(&piece_name(42), LOG_DIR, PIECE_SUFFIX),
            Some(42)
        );
        assert_eq!(
            parse_numbered(&epoch_name(u64::MAX), EPOCHS_DIR, EPOCH_SUFFIX),
            Some(u64::MAX)
        );
        assert_eq!(parse_numbered("log/42.log", LOG_DIR, PIECE_SUFFIX), None);
        let pack = new_pack_name(42);
        assert_eq!(parse_pack_name(&pack), Some(42));
        assert_ne!(new_pack_name(42), pack);
        assert_eq!(
            parse_pack_name("packs/00000000000000000042-00000000000000ag.pack"),
            None
        );
        assert_eq!(parse_pack_name("packs/00000000000000000042.pack"), None);
        assert_eq!(
            parse_numbered("log/0000000000000000004x.log", LOG_DIR, PIECE_SUFFIX),
            None
        );
    }

    #[tokio::test]
    async fn the_file_store_refuses_a_second_create() {
        let dir = tempfile::tempdir().unwrap();
        let config = ArchiveConfig {
            url: format!("file://{}", dir.path().display()),
            ..ArchiveConfig::default()
        };
        let store = ArchiveStore::open(&config, &StorageConfig::default()).unwrap();
        store
            .put_new("epochs/a", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let second = store.put_new("epochs/a", Bytes::from_static(b"two")).await;
        assert!(matches!(second, Err(StoreError::AlreadyExists(_))));
        assert_eq!(&store.get("epochs/a").await.unwrap()[..], b"one");
        let mut streamed = Vec::new();
        let n = store
            .get_each("epochs/a", |chunk| {
                streamed.extend_from_slice(chunk);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!((n, &streamed[..]), (3, &b"one"[..]));
        let listed = store.list(EPOCHS_DIR, None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "epochs/a");
    }
}
