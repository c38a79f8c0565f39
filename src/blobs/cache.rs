//! A bounded in-memory cache of small committed blobs (image configs,
//! small layers: the bulk of the requests of a pull), so that serving one
//! takes neither a file open nor a blocking-pool round trip.
//!
//! Filled when a whole small blob is read from its file; evicted first in,
//! first out. Correct by content addressing: the bytes under a digest
//! never change. A blob that garbage collection deleted may stay here
//! until it is evicted, but is never served from here: a GET checks the
//! projection (the repository's link to the blob) before it looks.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::limits::{Limits, SMALL_BLOB_CACHE_SHARDS};
use crate::oci::Digest;

/// Shards, each under its own lock, each holding at most its share of
/// the capacity (`limits.blob_cache_bytes_max`).
pub struct SmallBlobCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    shard_bytes_max: usize,
}

/// # Invariants
/// `order` holds the keys of `blobs` exactly once each, oldest first;
/// `bytes` is the sum of their lengths and at most the shard's share.
#[derive(Default)]
struct Shard {
    blobs: HashMap<Digest, Bytes>,
    order: VecDeque<Digest>,
    bytes: usize,
}

impl std::fmt::Debug for SmallBlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmallBlobCache({} shards)", self.shards.len())
    }
}

impl Default for SmallBlobCache {
    fn default() -> Self {
        SmallBlobCache::with_capacity(Limits::default().blob_cache_bytes_max)
    }
}

impl SmallBlobCache {
    /// A cache of at most `bytes_max` bytes of blobs.
    pub fn with_capacity(bytes_max: usize) -> SmallBlobCache {
        SmallBlobCache {
            shards: (0..SMALL_BLOB_CACHE_SHARDS)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hasher: RandomState::new(),
            shard_bytes_max: bytes_max / SMALL_BLOB_CACHE_SHARDS,
        }
    }

    fn shard(&self, digest: &Digest) -> &Mutex<Shard> {
        let i = self.hasher.hash_one(digest) as usize % self.shards.len();
        &self.shards[i]
    }

    /// The whole blob `digest`, if cached.
    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.shard(digest).lock().blobs.get(digest).cloned()
    }

    /// Keeps `bytes`, the whole blob `digest`, evicting the oldest entries
    /// to make room. A blob larger than a shard's share is not kept.
    pub fn insert(&self, digest: &Digest, bytes: Bytes) {
        if bytes.len() > self.shard_bytes_max {
            return;
        }
        let mut shard = self.shard(digest).lock();
        if shard.blobs.contains_key(digest) {
            return;
        }
        while shard.bytes + bytes.len() > self.shard_bytes_max {
            let Some(oldest) = shard.order.pop_front() else {
                break;
            };
            if let Some(b) = shard.blobs.remove(&oldest) {
                shard.bytes -= b.len();
            }
        }
        shard.bytes += bytes.len();
        shard.order.push_back(digest.clone());
        shard.blobs.insert(digest.clone(), bytes);
        debug_assert_eq!(shard.order.len(), shard.blobs.len());
        debug_assert!(shard.bytes <= self.shard_bytes_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_and_evicts_the_oldest() {
        let cache = SmallBlobCache::with_capacity(SMALL_BLOB_CACHE_SHARDS * 100);
        let digests: Vec<Digest> = (0..200u32)
            .map(|i| Digest::sha256_of(&i.to_le_bytes()))
            .collect();
        for d in &digests {
            cache.insert(d, Bytes::from(vec![7u8; 40]));
        }
        let kept: Vec<bool> = digests.iter().map(|d| cache.get(d).is_some()).collect();
        // Two entries of 40 bytes fit in each 100-byte shard.
        assert!(kept.iter().filter(|k| **k).count() <= 2 * SMALL_BLOB_CACHE_SHARDS);
        assert!(kept[199], "the newest entry is kept");
        for shard in &cache.shards {
            let s = shard.lock();
            assert!(s.bytes <= 100);
            assert_eq!(s.order.len(), s.blobs.len());
        }
        let big = Digest::sha256_of(b"big");
        cache.insert(&big, Bytes::from(vec![0u8; 101]));
        assert!(cache.get(&big).is_none(), "larger than a shard: not kept");
    }
}
