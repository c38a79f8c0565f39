//! What the benchmark pushes: small images with distinct random content,
//! and one large blob that is streamed, never held whole in memory.
//!
//! All content is made once per run, before any server starts, and the
//! same bytes go to every server, so each one gets the same workload.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};

pub const CONFIG_BYTES: usize = 1024;
pub const LAYER_BYTES: usize = 16 * 1024;
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// What the pull and HEAD requests accept: the type pushed, plus the
/// Docker types a real client sends along.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One small image: a 1 KiB JSON config, a 16 KiB layer and the OCI image
/// manifest that references them.
pub struct Image {
    pub config: Bytes,
    pub config_digest: String,
    pub layer: Bytes,
    pub layer_digest: String,
    pub manifest: Bytes,
    pub manifest_digest: String,
}

/// `count` images whose configs and layers are all distinct.
pub fn images(count: usize, seed: u64) -> Vec<Image> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count).map(|_| image(&mut rng)).collect()
}

fn image(rng: &mut SmallRng) -> Image {
    let mut noise = [0u8; 32];
    rng.fill_bytes(&mut noise);
    let head = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[]}},\"comment\":\"{}",
        hex::encode(noise)
    );
    let mut config = head.into_bytes();
    let tail = b"\"}";
    config.resize(CONFIG_BYTES - tail.len(), b'.');
    config.extend_from_slice(tail);
    debug_assert_eq!(config.len(), CONFIG_BYTES);

    let mut layer = vec![0u8; LAYER_BYTES];
    rng.fill_bytes(&mut layer);

    let config_digest = sha256_digest(&config);
    let layer_digest = sha256_digest(&layer);
    let manifest = format!(
        concat!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{mt}\",",
            "\"config\":{{\"mediaType\":\"{cmt}\",\"digest\":\"{cd}\",\"size\":{cs}}},",
            "\"layers\":[{{\"mediaType\":\"{lmt}\",\"digest\":\"{ld}\",\"size\":{ls}}}]}}"
        ),
        mt = MANIFEST_MEDIA_TYPE,
        cmt = CONFIG_MEDIA_TYPE,
        cd = config_digest,
        cs = CONFIG_BYTES,
        lmt = LAYER_MEDIA_TYPE,
        ld = layer_digest,
        ls = LAYER_BYTES,
    )
    .into_bytes();
    let manifest_digest = sha256_digest(&manifest);
    Image {
        config: Bytes::from(config),
        config_digest,
        layer: Bytes::from(layer),
        layer_digest,
        manifest: Bytes::from(manifest),
        manifest_digest,
    }
}

/// Size of the pieces a large body is streamed in.
pub const PIECE_BYTES: usize = 1024 * 1024;

/// A large blob made of one random pattern repeated: the client holds the
/// pattern (at most 16 MiB), never the blob.
///
/// # Invariants
/// `pattern.len()` is a multiple of `PIECE_BYTES`, and so is `len`.
#[derive(Clone)]
pub struct BigBlob {
    pattern: Bytes,
    pub len: u64,
    pub digest: String,
}

impl BigBlob {
    pub const PATTERN_BYTES_MAX: usize = 16 * 1024 * 1024;

    pub fn new(len_mib: u64, seed: u64) -> BigBlob {
        assert!(len_mib > 0, "a blob of at least 1 MiB");
        let len = len_mib * 1024 * 1024;
        let pattern_len = Self::PATTERN_BYTES_MAX.min(len as usize);
        let mut pattern = vec![0u8; pattern_len];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut pattern);
        let pattern = Bytes::from(pattern);
        let mut hasher = Sha256::new();
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(pattern_len as u64) as usize;
            hasher.update(&pattern[..n]);
            at += n as u64;
        }
        BigBlob {
            pattern,
            len,
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        }
    }

    /// The bytes `[start, end)` of the blob as pieces of at most
    /// `PIECE_BYTES`, each a zero-copy slice of the pattern.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Bytes> {
        assert!(start <= end && end <= self.len);
        let pattern_len = self.pattern.len() as u64;
        let mut pieces = Vec::new();
        let mut at = start;
        while at < end {
            let offset = at % pattern_len;
            let n = (end - at).min(pattern_len - offset).min(PIECE_BYTES as u64);
            pieces.push(self.pattern.slice(offset as usize..(offset + n) as usize));
            at += n;
        }
        pieces
    }

    /// Where `data`, read at `offset` of the blob, first differs from the
    /// blob's bytes there (`None`: nowhere). Past `len` the pattern goes
    /// on repeating, for a stream longer than the blob.
    pub fn first_difference(&self, offset: u64, data: &[u8]) -> Option<u64> {
        let pattern = &self.pattern[..];
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let from = (at % pattern.len() as u64) as usize;
            let n = rest.len().min(pattern.len() - from);
            let expected = &pattern[from..from + n];
            if rest[..n] != *expected {
                let i = rest.iter().zip(expected).position(|(a, b)| a != b);
                return Some(at + i.unwrap_or(0) as u64);
            }
            at += n as u64;
            rest = &rest[n..];
        }
        None
    }
}

/// How the client checks a downloaded blob as its bytes arrive. Both
/// check every byte; they differ in what they cost the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// sha256 of the body against the blob's digest, as a registry client
    /// verifies a pull: the client can take no more than sha256 on one
    /// core, whatever the server sends.
    Sha256,
    /// Every byte compared with the byte pushed there (the client holds
    /// the blob's pattern): a memory comparison, far cheaper than sha256,
    /// so the client's ceiling is the loopback's rather than the hash's.
    Bytes,
}

impl Check {
    /// How a report names what the client did with the bytes.
    pub fn describe(self) -> &'static str {
        match self {
            Check::Sha256 => "hashed while read",
            Check::Bytes => "compared byte by byte while read",
        }
    }
}

/// A check of a stream of a blob's bytes in progress, fed in order.
pub enum Verifier {
    Sha256 {
        hasher: Sha256,
        bytes: u64,
    },
    Bytes {
        blob: BigBlob,
        bytes: u64,
        first_difference: Option<u64>,
    },
}

impl Verifier {
    pub fn new(check: Check, blob: &BigBlob) -> Verifier {
        match check {
            Check::Sha256 => Verifier::Sha256 {
                hasher: Sha256::new(),
                bytes: 0,
            },
            Check::Bytes => Verifier::Bytes {
                blob: blob.clone(),
                bytes: 0,
                first_difference: None,
            },
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Verifier::Sha256 { hasher, bytes } => {
                hasher.update(data);
                *bytes += data.len() as u64;
            }
            Verifier::Bytes {
                blob,
                bytes,
                first_difference,
            } => {
                if first_difference.is_none() {
                    *first_difference = blob.first_difference(*bytes, data);
                }
                *bytes += data.len() as u64;
            }
        }
    }

    /// `Ok(())` if the bytes fed were exactly `blob`'s, else what was
    /// wrong.
    pub fn finish(self, blob: &BigBlob) -> Result<(), String> {
        match self {
            Verifier::Sha256 { hasher, bytes } => {
                let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                if bytes != blob.len || digest != blob.digest {
                    return Err(format!(
                        "got {bytes} bytes hashing to {digest}, expected {} bytes, {}",
                        blob.len, blob.digest
                    ));
                }
                Ok(())
            }
            Verifier::Bytes {
                bytes,
                first_difference,
                ..
            } => match first_difference {
                Some(at) => Err(format!("byte {at} differs from the byte pushed there")),
                None if bytes != blob.len => {
                    Err(format!("got {bytes} bytes, expected {}", blob.len))
                }
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_distinct_and_sized() {
        let imgs = images(3, 1);
        assert_eq!(imgs[0].config.len(), CONFIG_BYTES);
        assert_eq!(imgs[0].layer.len(), LAYER_BYTES);
        assert_ne!(imgs[0].config_digest, imgs[1].config_digest);
        assert_ne!(imgs[0].layer_digest, imgs[2].layer_digest);
        let m: serde_json::Value = serde_json::from_slice(&imgs[0].manifest).unwrap();
        assert_eq!(m["layers"][0]["digest"], imgs[0].layer_digest.as_str());
        let _: serde_json::Value = serde_json::from_slice(&imgs[0].config).unwrap();
    }

    #[test]
    fn pieces_cover_the_blob_and_match_its_digest() {
        let blob = BigBlob::new(3, 7);
        let mut h = Sha256::new();
        let mut n = 0;
        for p in blob.pieces(0, blob.len) {
            n += p.len() as u64;
            h.update(&p);
        }
        assert_eq!(n, blob.len);
        assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), blob.digest);
        let total: usize = blob
            .pieces(1024 * 1024, 2 * 1024 * 1024)
            .iter()
            .map(|p| p.len())
            .sum();
        assert_eq!(total, 1024 * 1024);
    }

    /// Both checks accept the blob and refuse a changed byte, a short
    /// body and a long one.
    #[test]
    fn verifiers_accept_the_blob_and_nothing_else() {
        let blob = BigBlob::new(3, 9);
        let feed = |check: Check, change: Option<usize>, cut: usize, extra: &[u8]| {
            let mut v = Verifier::new(check, &blob);
            let mut at = 0;
            for p in blob.pieces(0, blob.len) {
                let mut p = p.to_vec();
                if let Some(i) = change {
                    if (at..at + p.len()).contains(&i) {
                        p[i - at] ^= 1;
                    }
                }
                at += p.len();
                let keep = p
                    .len()
                    .min((blob.len as usize - cut).saturating_sub(at - p.len()));
                v.update(&p[..keep]);
            }
            v.update(extra);
            v.finish(&blob)
        };
        let changed = 2 * 1024 * 1024 + 17;
        for check in [Check::Sha256, Check::Bytes] {
            assert_eq!(feed(check, None, 0, &[]), Ok(()), "{check:?}");
            assert!(feed(check, Some(changed), 0, &[]).is_err(), "{check:?}");
            assert!(feed(check, None, 1, &[]).is_err(), "{check:?}");
            assert!(feed(check, None, 0, &[0]).is_err(), "{check:?}");
        }
        let why = feed(Check::Bytes, Some(changed), 0, &[]).unwrap_err();
        assert!(why.contains(&changed.to_string()), "{why}");
    }
}
