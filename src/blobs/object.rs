//! Blob bytes in S3-compatible object storage (`[storage] backend = "s3"`),
//! through the `object_store` crate: the setting, the client, and the few
//! store operations the upload, read and collection paths need.
//!
//! Keys: every upload writes one object, `<prefix>blobs/<upload id>`, fixed
//! when the upload starts; the log maps each digest to the key that holds
//! its bytes (`Event::BlobObjectStored`), so completing an upload never
//! copies an object. Chunks go to the store as the parts of a multipart
//! upload, and the log records the multipart upload and every part
//! (`MultipartStarted`, `PartStored`): the store cannot list open
//! multipart uploads, the log is where ferro knows them.
//!
//! Faults: every request has a timeout and the crate's retry policy
//! (exponential backoff, idempotent requests only, bounded in count and in
//! time), both settings. A request that fails for any reason but "not
//! found" marks the store unavailable: writes are then refused at once
//! with 503 instead of each waiting out the timeout, and `/readyz` says
//! why, until a probe ([`ObjectBlobs::probe`]) succeeds again.
//!
//! Boundary: keys are built only from the configured prefix and upload
//! ids this process generated and validated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

mod metered;

/// Which store holds blob bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// Files under `<data>/blobs/` (the default).
    #[default]
    Filesystem,
    /// An S3-compatible object store (`[storage]` below).
    S3,
}

/// `[storage]`: where blob bytes live. The log, snapshots and upload
/// bookkeeping stay in the data directory either way.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The S3 endpoint, `http(s)://host:port` (empty: AWS's own, from
    /// `region`). Requests use path-style addressing.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Every key starts with this (`"registry/"`); empty: the bucket's root.
    pub prefix: String,
    /// Empty: the `AWS_ACCESS_KEY_ID` environment variable.
    pub access_key_id: String,
    /// Empty: the `AWS_SECRET_ACCESS_KEY` environment variable.
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint (loopback test servers).
    pub allow_http: bool,
    /// Upload bytes are sent to the store in parts of this size (the last
    /// one smaller); an upload holds at most two parts in memory, and
    /// stages the bytes that do not fill a part on the disk. At least
    /// [`PART_SIZE_BYTES_MIN`], the least AWS S3 accepts for every part but
    /// the last.
    pub part_size_bytes: u64,
    /// Accept a `part_size_bytes` below [`PART_SIZE_BYTES_MIN`], for stores
    /// that take parts of any size (Garage, MinIO). The tests use it, so
    /// that uploads of a few hundred KiB span several parts; on AWS S3 the
    /// completion of such an upload would fail.
    pub allow_small_parts: bool,
    /// Time allowed for one request to the store, retries not included.
    pub request_timeout_ms: u64,
    /// Retries of a failed idempotent request (timeouts, 5xx), with
    /// exponential backoff.
    pub retries_max: u64,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout_ms: u64,
    /// Blob GETs answer `307` to a presigned URL of the object instead of
    /// streaming it through the registry (HEAD and cached small blobs
    /// are still answered here).
    pub redirect: bool,
    /// Lifetime of a presigned URL under `redirect`.
    pub redirect_url_lifetime_secs: u64,
    /// Bytes of small blobs kept on the local disk
    /// (`<data>/blobcache/`, see `blobs::local_cache`) and served from
    /// there instead of the store; 0: none.
    pub local_cache_bytes_max: u64,
    /// Largest blob the local-disk cache keeps.
    pub local_cache_blob_bytes_max: u64,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("part_size_bytes", &self.part_size_bytes)
            .field("allow_small_parts", &self.allow_small_parts)
            .field("local_cache_bytes_max", &self.local_cache_bytes_max)
            .field(
                "local_cache_blob_bytes_max",
                &self.local_cache_blob_bytes_max,
            )
            .finish_non_exhaustive()
    }
}

/// Default of `storage.part_size_bytes`.
pub const PART_SIZE_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;
/// Least `storage.part_size_bytes` (S3's limit on every part but the last),
/// unless `storage.allow_small_parts`.
pub const PART_SIZE_BYTES_MIN: u64 = 5 * 1024 * 1024;
/// Largest `storage.part_size_bytes` (S3's limit on one part).
pub const PART_SIZE_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Default of `storage.local_cache_bytes_max`.
pub const LOCAL_CACHE_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Default of `storage.local_cache_blob_bytes_max`.
pub const LOCAL_CACHE_BLOB_BYTES_MAX_DEFAULT: u64 = 16 * 1024 * 1024;
/// The most parts of one multipart upload (S3's limit).
pub const PARTS_MAX: u32 = 10_000;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Filesystem,
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: false,
            part_size_bytes: PART_SIZE_BYTES_DEFAULT,
            allow_small_parts: false,
            request_timeout_ms: 30_000,
            retries_max: 3,
            retry_timeout_ms: 10_000,
            redirect: false,
            redirect_url_lifetime_secs: 300,
            local_cache_bytes_max: LOCAL_CACHE_BYTES_MAX_DEFAULT,
            local_cache_blob_bytes_max: LOCAL_CACHE_BLOB_BYTES_MAX_DEFAULT,
        }
    }
}

impl StorageConfig {
    /// Checks what the types alone cannot; only `backend = "s3"` reads the
    /// other keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend != StorageBackend::S3 {
            return Ok(());
        }
        if self.bucket.is_empty() {
            return Err("storage.bucket must be set with backend = \"s3\"".into());
        }
        let min = match self.allow_small_parts {
            true => 1,
            false => PART_SIZE_BYTES_MIN,
        };
        if !(min..=PART_SIZE_BYTES_MAX).contains(&self.part_size_bytes) {
            return Err(format!(
                "storage.part_size_bytes is {}; it must be in {min}..={PART_SIZE_BYTES_MAX} \
                 (S3 refuses parts under 5 MiB but the last; storage.allow_small_parts \
                 lifts the minimum for stores that take any size)",
                self.part_size_bytes
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err("storage.request_timeout_ms must be at least 1".into());
        }
        if self.redirect && self.redirect_url_lifetime_secs == 0 {
            return Err("storage.redirect_url_lifetime_secs must be at least 1".into());
        }
        if !self.prefix.is_empty() {
            ObjectPath::parse(self.prefix.trim_end_matches('/'))
                .map_err(|e| format!("storage.prefix is not a valid object key prefix: {e}"))?;
        }
        Ok(())
    }
}

/// An S3 client for `config`'s endpoint, bucket and credentials, with
/// its request timeout and retry policy: the one place both are set (the
/// blob store and the log archive use it). Makes no request.
pub fn s3_client(config: &StorageConfig) -> Result<AmazonS3, String> {
    s3_builder(config).build().map_err(|e| e.to_string())
}

/// The client builder [`s3_client`] builds.
fn s3_builder(config: &StorageConfig) -> AmazonS3Builder {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let key_id = match config.access_key_id.as_str() {
        "" => env("AWS_ACCESS_KEY_ID"),
        k => k.to_owned(),
    };
    let secret = match config.secret_access_key.as_str() {
        "" => env("AWS_SECRET_ACCESS_KEY"),
        s => s.to_owned(),
    };
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let mut builder = AmazonS3Builder::new()
        .with_region(&config.region)
        .with_bucket_name(&config.bucket)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_allow_http(config.allow_http)
        .with_virtual_hosted_style_request(false)
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(config.allow_http)
                .with_timeout(timeout)
                .with_connect_timeout(timeout.min(Duration::from_secs(5))),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: config.retries_max as usize,
            retry_timeout: Duration::from_millis(config.retry_timeout_ms),
        });
    if !config.endpoint.is_empty() {
        builder = builder.with_endpoint(&config.endpoint);
    }
    builder
}

/// A failed request to the object store.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object {0} not found in the store")]
    NotFound(String),
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

/// The object store holding blob bytes, shared by every clone of the
/// blob store.
pub struct ObjectBlobs {
    s3: AmazonS3,
    /// `""` or a prefix ending in `/`.
    prefix: String,
    pub part_size_bytes: u64,
    /// `Some(lifetime)` when blob GETs redirect to presigned URLs.
    pub redirect: Option<Duration>,
    description: String,
    unavailable: AtomicBool,
    unavailable_reason: Mutex<String>,
    /// Uploads of whole blobs in one request this process is sending now:
    /// their multipart uploads are open in the state with no session, as
    /// one a crash left behind would be, and a collection must not abort
    /// them.
    in_progress: Mutex<std::collections::HashSet<String>>,
    /// For the one request object_store has no call for.
    http: object_store_http::Client,
}

/// An upload registered as in progress until dropped
/// ([`ObjectBlobs::begin`]).
pub struct InProgress {
    objects: SharedObjectBlobs,
    upload: String,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.objects.in_progress.lock().remove(&self.upload);
    }
}

impl std::fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectBlobs({})", self.description)
    }
}

/// An object under the prefix, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub modified_unix_ns: u64,
}

impl ObjectBlobs {
    /// The client for `config` (`backend = "s3"`). Makes no request.
    pub fn new(config: &StorageConfig) -> Result<ObjectBlobs, String> {
        config.validate()?;
        // Only the blob store's requests are counted in the object-store
        // metrics (the log archive has its own figures).
        let s3 = s3_builder(config)
            .with_http_connector(metered::MeteredConnector)
            .build()
            .map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let prefix = match config.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(ObjectBlobs {
            s3,
            description: format!(
                "s3 bucket {:?} at {:?}, prefix {:?}",
                config.bucket, config.endpoint, prefix
            ),
            prefix,
            part_size_bytes: config.part_size_bytes,
            redirect: config
                .redirect
                .then(|| Duration::from_secs(config.redirect_url_lifetime_secs)),
            unavailable: AtomicBool::new(false),
            unavailable_reason: Mutex::new(String::new()),
            in_progress: Mutex::default(),
            http: object_store_http::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| e.to_string())?,
        })
    }

    /// Registers a one-request upload as in progress (see `in_progress`).
    pub fn begin(self: &Arc<Self>, upload: &str) -> InProgress {
        self.in_progress.lock().insert(upload.to_owned());
        InProgress {
            objects: self.clone(),
            upload: upload.to_owned(),
        }
    }

    /// Whether a one-request upload of this process is sending `upload`.
    pub fn is_in_progress(&self, upload: &str) -> bool {
        self.in_progress.lock().contains(upload)
    }

    /// Bucket, endpoint and prefix, for logs and `/readyz`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The key of the object an upload writes.
    ///
    /// # Panics (debug)
    /// If `upload` is not an upload id.
    pub fn key_for_upload(&self, upload: &str) -> String {
        debug_assert!(super::is_upload_id(upload), "upload ids are validated");
        format!("{}blobs/{upload}", self.prefix)
    }

    /// Whether `key` is one this store could have made (under the prefix).
    pub fn is_blob_key(&self, key: &str) -> bool {
        self.upload_of_key(key).is_some()
    }

    /// The upload whose object `key` is, for a key this store made.
    pub fn upload_of_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)
            .and_then(|k| k.strip_prefix("blobs/"))
            .filter(|id| super::is_upload_id(id))
    }

    /// `None` while the store answers; the last failure's reason otherwise.
    pub fn unavailable_reason(&self) -> Option<String> {
        self.unavailable
            .load(Ordering::Acquire)
            .then(|| self.unavailable_reason.lock().clone())
    }

    /// Refuses at once while the store is known to be down (writes call
    /// this first, so they do not each wait out the timeout).
    pub fn check_available(&self) -> Result<(), ObjectError> {
        match self.unavailable_reason() {
            Some(reason) => Err(ObjectError::Unavailable(reason)),
            None => Ok(()),
        }
    }

    /// One listing request under the prefix: succeeds only when endpoint,
    /// bucket and credentials are right. Updates availability.
    pub async fn probe(&self) -> Result<(), ObjectError> {
        let prefix = self.prefix_path();
        let listing = self.s3.list_with_delimiter(prefix.as_ref());
        let result = metered::operation("probe", listing).await;
        match result {
            Ok(_) => {
                if self.unavailable.swap(false, Ordering::AcqRel) {
                    tracing::info!(store = %self.description, "object store available again");
                }
                Ok(())
            }
            Err(e) => Err(self.failed(e, "")),
        }
    }

    fn prefix_path(&self) -> Option<ObjectPath> {
        match self.prefix.trim_end_matches('/') {
            "" => None,
            p => Some(ObjectPath::from(p)),
        }
    }

    /// Classifies a failure; any but "not found" marks the store down.
    fn failed(&self, e: object_store::Error, key: &str) -> ObjectError {
        if let object_store::Error::NotFound { .. } = e {
            return ObjectError::NotFound(key.to_owned());
        }
        let reason = e.to_string();
        *self.unavailable_reason.lock() = reason.clone();
        if !self.unavailable.swap(true, Ordering::AcqRel) {
            tracing::warn!(store = %self.description, error = %reason, "object store unavailable");
        }
        ObjectError::Unavailable(reason)
    }

    fn path(key: &str) -> ObjectPath {
        ObjectPath::from(key)
    }

    /// Opens a multipart upload to `key`; returns its id.
    pub async fn start_multipart(&self, key: &str) -> Result<String, ObjectError> {
        self.check_available()?;
        metered::operation(
            "start_multipart",
            self.s3.create_multipart(&Self::path(key)),
        )
        .await
        .map_err(|e| self.failed(e, key))
    }

    /// Stores part `number` (from 1) of a multipart upload; returns its
    /// ETag.
    pub async fn put_part(
        &self,
        key: &str,
        multipart: &str,
        number: u32,
        bytes: Bytes,
    ) -> Result<String, ObjectError> {
        debug_assert!((1..=PARTS_MAX).contains(&number));
        let id = multipart.to_owned();
        metered::operation(
            "put_part",
            self.s3.put_part(
                &Self::path(key),
                &id,
                number as usize - 1,
                PutPayload::from(bytes),
            ),
        )
        .await
        .map(|p| p.content_id)
        .map_err(|e| self.failed(e, key))
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub async fn complete_multipart(
        &self,
        key: &str,
        multipart: &str,
        etags: Vec<String>,
    ) -> Result<(), ObjectError> {
        let parts = etags
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        metered::operation(
            "complete_multipart",
            self.s3
                .complete_multipart(&Self::path(key), &multipart.to_owned(), parts),
        )
        .await
        .map(|_| ())
        .map_err(|e| self.failed(e, key))
    }

    /// Aborts a multipart upload; one the store no longer knows is done.
    pub async fn abort_multipart(&self, key: &str, multipart: &str) -> Result<(), ObjectError> {
        match metered::operation(
            "abort_multipart",
            self.s3
                .abort_multipart(&Self::path(key), &multipart.to_owned()),
        )
        .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(e, key)),
        }
    }

    /// Writes a whole object in one request.
    pub async fn put_object(&self, key: &str, bytes: Bytes) -> Result<(), ObjectError> {
        self.check_available()?;
        metered::operation(
            "put_object",
            self.s3.put(&Self::path(key), PutPayload::from(bytes)),
        )
        .await
        .map(|_| ())
        .map_err(|e| self.failed(e, key))
    }

    /// Bytes `start..start + len` of an object, as a stream of what the
    /// store sends (memory: the HTTP client's buffers, not the range).
    pub async fn read_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, ObjectError> {
        if len == 0 {
            return Ok(futures_util::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            ..GetOptions::default()
        };
        let result = metered::operation("get", self.s3.get_opts(&Self::path(key), options))
            .await
            .map_err(|e| self.failed(e, key))?;
        Ok(result.into_stream().map_err(std::io::Error::other).boxed())
    }

    /// A whole object read into memory, at most `len` bytes of it.
    pub async fn read_all(&self, key: &str, len: u64) -> Result<Bytes, ObjectError> {
        let mut stream = self.read_range(key, 0, len).await?;
        let mut out = Vec::with_capacity(len as usize);
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| ObjectError::Unavailable(e.to_string()))?;
            out.extend_from_slice(&piece);
        }
        Ok(Bytes::from(out))
    }

    /// The digest of an object's first `size` bytes, streamed.
    pub async fn digest_of(
        &self,
        key: &str,
        algorithm: crate::oci::DigestAlgorithm,
        size: u64,
    ) -> Result<crate::oci::Digest, ObjectError> {
        let mut stream = self.read_range(key, 0, size).await?;
        let mut hasher = algorithm.hasher();
        while let Some(piece) = stream.next().await {
            hasher.update(&piece.map_err(|e| ObjectError::Unavailable(e.to_string()))?);
        }
        Ok(hasher.finish())
    }

    /// The multipart uploads open in the store under the prefix's
    /// `blobs/`, as (key, multipart id): also those whose id never reached
    /// the log (a crash between opening one and logging it). Every page of
    /// the listing (1,000 uploads each), at most
    /// [`MULTIPART_LIST_PAGES_MAX`] of them. object_store has no call for
    /// this, so each page is a presigned `ListMultipartUploads` sent with
    /// the HTTP client object_store uses.
    pub async fn list_multipart_uploads(&self) -> Result<Vec<(String, String)>, ObjectError> {
        let mut all = Vec::new();
        let mut marker: Option<(String, Option<String>)> = None;
        for _ in 0..MULTIPART_LIST_PAGES_MAX {
            let started = std::time::Instant::now();
            let page = self.list_multipart_page(marker.as_ref()).await;
            let outcome = if page.is_ok() { "ok" } else { "error" };
            metered::record("list_multipart_uploads", outcome, started);
            let page = page?;
            all.extend(page.uploads);
            match page.next {
                // A store that hands the same marker back would loop.
                Some(next) if marker.as_ref() != Some(&next) => marker = Some(next),
                _ => return Ok(all),
            }
        }
        tracing::warn!(
            pages = MULTIPART_LIST_PAGES_MAX,
            "more open multipart uploads than one collection lists; the next sees the rest"
        );
        Ok(all)
    }

    /// One page of `ListMultipartUploads`, after `marker` (key, upload id).
    async fn list_multipart_page(
        &self,
        marker: Option<&(String, Option<String>)>,
    ) -> Result<MultipartPage, ObjectError> {
        let prefix = format!("{}blobs/", self.prefix);
        let mut query: Vec<(&str, &str)> = vec![("uploads", ""), ("prefix", &prefix)];
        if let Some((key, upload)) = marker {
            query.push(("key-marker", key));
            if let Some(upload) = upload {
                query.push(("upload-id-marker", upload));
            }
        }
        let options = object_store::signer::SignedUrlOptions::new().with_query(query);
        let url = self
            .s3
            .signed_url_opts(
                axum::http::Method::GET,
                &ObjectPath::from(""),
                Duration::from_secs(60),
                &options,
            )
            .await
            .map_err(|e| self.failed(e, &self.prefix))?;
        let unavailable = |e: object_store_http::Error| ObjectError::Unavailable(e.to_string());
        let response = self.http.get(url).send().await.map_err(unavailable)?;
        let status = response.status();
        let body = response.text().await.map_err(unavailable)?;
        if !status.is_success() {
            return Err(ObjectError::Unavailable(format!(
                "ListMultipartUploads answered {status}: {body}"
            )));
        }
        Ok(parse_multipart_uploads(&body))
    }

    /// The size of an object.
    pub async fn head(&self, key: &str) -> Result<u64, ObjectError> {
        metered::operation("head", self.s3.head(&Self::path(key)))
            .await
            .map(|m| m.size)
            .map_err(|e| self.failed(e, key))
    }

    /// Deletes an object; one already gone is deleted.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match metered::operation("delete", self.s3.delete(&Self::path(key))).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(e, key)),
        }
    }

    /// Every object under the prefix.
    pub async fn list(&self) -> Result<Vec<ListedObject>, ObjectError> {
        let prefix = self.prefix_path();
        let listing = self.s3.list(prefix.as_ref()).try_collect();
        let listed: Vec<object_store::ObjectMeta> = metered::operation("list", listing)
            .await
            .map_err(|e| self.failed(e, &self.prefix))?;
        Ok(listed
            .into_iter()
            .map(|m| ListedObject {
                key: m.location.to_string(),
                size: m.size,
                modified_unix_ns: m
                    .last_modified
                    .timestamp_nanos_opt()
                    .map_or(0, |n| n.max(0) as u64),
            })
            .collect())
    }

    /// A presigned GET URL of `key`, valid for `lifetime`.
    pub async fn presigned_get(
        &self,
        key: &str,
        lifetime: Duration,
    ) -> Result<String, ObjectError> {
        self.s3
            .signed_url(axum::http::Method::GET, &Self::path(key), lifetime)
            .await
            .map(|u| u.to_string())
            .map_err(|e| self.failed(e, key))
    }
}

/// Most pages of `ListMultipartUploads` one listing reads (1,000 uploads
/// a page): a bound on one collection's work, far above what crashes
/// leave behind.
pub const MULTIPART_LIST_PAGES_MAX: usize = 1_000;

/// One page of a `ListMultipartUploadsResult`.
#[derive(Debug, PartialEq, Eq)]
struct MultipartPage {
    /// (key, upload id) of each upload on the page.
    uploads: Vec<(String, String)>,
    /// The markers of the next page when the listing is truncated: a key,
    /// and an upload id when the store gives one (Garage does not; every
    /// key of ours has one upload, so the key alone is enough).
    next: Option<(String, Option<String>)>,
}

/// Parses one page of a `ListMultipartUploadsResult`.
fn parse_multipart_uploads(xml: &str) -> MultipartPage {
    fn element<'a>(within: &'a str, name: &str) -> Option<&'a str> {
        let start = within.find(&format!("<{name}>"))? + name.len() + 2;
        let len = within[start..].find(&format!("</{name}>"))?;
        Some(&within[start..start + len])
    }
    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    }
    let uploads = xml
        .split("<Upload>")
        .skip(1)
        .filter_map(|u| {
            let u = &u[..u.find("</Upload>")?];
            Some((
                unescape(element(u, "Key")?),
                unescape(element(u, "UploadId")?),
            ))
        })
        .collect();
    // The page's own fields come before its uploads.
    let head = &xml[..xml.find("<Upload>").unwrap_or(xml.len())];
    let tail = &xml[xml.rfind("</Upload>").unwrap_or(0)..];
    let field = |name: &str| element(head, name).or_else(|| element(tail, name));
    let truncated = field("IsTruncated").is_some_and(|t| t.trim() == "true");
    let next = match field("NextKeyMarker") {
        Some(key) if truncated && !key.is_empty() => {
            let upload = field("NextUploadIdMarker").filter(|u| !u.is_empty());
            Some((unescape(key), upload.map(unescape)))
        }
        _ => None,
    };
    MultipartPage { uploads, next }
}

/// The object store of a blob store, shared.
pub type SharedObjectBlobs = Arc<ObjectBlobs>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_multipart_listing_names_the_next_page() {
        let page = "<ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker></KeyMarker>\
            <NextKeyMarker>p/blobs/b&amp;</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>\
            <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>\
            <Upload><Key>p/blobs/a</Key><UploadId>u1</UploadId></Upload>\
            <Upload><Key>p/blobs/b&amp;</Key><UploadId>u2</UploadId></Upload>\
            </ListMultipartUploadsResult>";
        let parsed = parse_multipart_uploads(page);
        assert_eq!(
            parsed.uploads,
            vec![
                ("p/blobs/a".to_owned(), "u1".to_owned()),
                ("p/blobs/b&".to_owned(), "u2".to_owned())
            ]
        );
        assert_eq!(parsed.next, Some(("p/blobs/b&".into(), Some("u2".into()))));
        // Garage names only the next key.
        let garage = page.replace("<NextUploadIdMarker>u2</NextUploadIdMarker>", "");
        let parsed = parse_multipart_uploads(&garage);
        assert_eq!(parsed.next, Some(("p/blobs/b&".into(), None)));
        let last = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>\
            <Upload><Key>p/blobs/c</Key><UploadId>u3</UploadId></Upload>\
            </ListMultipartUploadsResult>";
        let parsed = parse_multipart_uploads(last);
        assert_eq!(parsed.uploads.len(), 1);
        assert_eq!(parsed.next, None);
    }

    #[test]
    fn keys_are_under_the_prefix() {
        let config = StorageConfig {
            backend: StorageBackend::S3,
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "b".into(),
            prefix: "/reg/one/".into(),
            allow_http: true,
            ..StorageConfig::default()
        };
        let store = ObjectBlobs::new(&config).unwrap();
        let id = super::super::new_upload_id();
        let key = store.key_for_upload(&id);
        assert_eq!(key, format!("reg/one/blobs/{id}"));
        assert!(store.is_blob_key(&key));
        assert!(!store.is_blob_key(&format!("other/blobs/{id}")));
        assert!(!store.is_blob_key("reg/one/blobs/x"));
    }

    #[test]
    fn settings_are_checked() {
        let mut c = StorageConfig::default();
        c.validate().unwrap();
        c.backend = StorageBackend::S3;
        assert!(c.validate().unwrap_err().contains("bucket"));
        c.bucket = "b".into();
        c.validate().unwrap();
        c.part_size_bytes = 0;
        assert!(c.validate().is_err());
        c.part_size_bytes = PART_SIZE_BYTES_DEFAULT;
        c.prefix = "a//b".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn multipart_listings_are_read() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult><Bucket>b</Bucket><Upload><Key>p/blobs/0123456789abcdef0123456789abcdef</Key><UploadId>a1&amp;b2</UploadId><Initiated>2026-12-07T00:00:00Z</Initiated></Upload><Upload><Key>p/blobs/x</Key><UploadId>c3</UploadId></Upload></ListMultipartUploadsResult>"#;
        assert_eq!(
            parse_multipart_uploads(xml).uploads,
            vec![
                (
                    "p/blobs/0123456789abcdef0123456789abcdef".to_owned(),
                    "a1&b2".to_owned()
                ),
                ("p/blobs/x".to_owned(), "c3".to_owned()),
            ]
        );
        let empty = parse_multipart_uploads("<ListMultipartUploadsResult/>");
        assert!(empty.uploads.is_empty() && empty.next.is_none());
    }

    #[test]
    fn the_secret_is_not_printed() {
        let c = StorageConfig {
            secret_access_key: "hunter2".into(),
            ..StorageConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
