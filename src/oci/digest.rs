//! Content digests (`algorithm:hex`). Only the algorithms the image spec
//! registers with a fixed encoding are accepted: `sha256` (64 lower-case hex
//! digits) and `sha512` (128). Anything else is rejected before it is used.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest is not of the form algorithm:encoded")]
    Syntax,
    #[error("digest algorithm {0:?} is not supported (sha256, sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest encoding must be {0} lower-case hex digits")]
    Encoding(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A canonical digest string such as `sha256:e3b0…`.
///
/// Shared, not copied, by `clone`: the projection holds one allocation per
/// distinct digest however many tags, manifests and indexes name it (see
/// `projection`), and a copy of the state copies no digest text.
///
/// # Invariants
/// The algorithm is `sha256` or `sha512` and the encoding is exactly that
/// algorithm's length in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Digest(Arc<str>);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        check(s)?;
        Ok(Digest(Arc::from(s)))
    }

    /// [`Digest::parse`], returning the copy decoded earlier when inside
    /// [`share_decoded`].
    fn parse_decoded(s: &str) -> Result<Digest, DigestError> {
        check(s)?;
        Ok(DECODED.with(|decoded| match decoded.borrow_mut().as_mut() {
            None => Digest(Arc::from(s)),
            Some(seen) => match seen.entry(share_key(s)) {
                Entry::Occupied(e) if &*e.get().0 == s => e.get().clone(),
                // Another digest with the same key: correct, only unshared.
                Entry::Occupied(_) => Digest(Arc::from(s)),
                Entry::Vacant(e) => e.insert(Digest(Arc::from(s))).clone(),
            },
        }))
    }
}

/// Checks the grammar of a digest string.
fn check(s: &str) -> Result<(), DigestError> {
    let (alg, enc) = s.split_once(':').ok_or(DigestError::Syntax)?;
    let algorithm = match alg {
        "sha256" => DigestAlgorithm::Sha256,
        "sha512" => DigestAlgorithm::Sha512,
        other => {
            // Still check the generic grammar so a bad string reads as
            // bad syntax rather than an unknown algorithm.
            let ok = !other.is_empty()
                && other.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'+' | b'.' | b'_' | b'-')
                });
            return Err(if ok {
                DigestError::UnsupportedAlgorithm(other.chars().take(32).collect())
            } else {
                DigestError::Syntax
            });
        }
    };
    let hex_ok = enc.len() == algorithm.hex_len()
        && enc
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(DigestError::Encoding(algorithm.hex_len()));
    }
    Ok(())
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = DigestAlgorithm::Sha256.hasher();
        h.update(bytes);
        h.finish()
    }

    /// The digest of `bytes` with this digest's algorithm.
    pub fn recompute(&self, bytes: &[u8]) -> Digest {
        let mut h = self.algorithm().hasher();
        h.update(bytes);
        h.finish()
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        if self.0.starts_with("sha256:") {
            DigestAlgorithm::Sha256
        } else {
            debug_assert!(self.0.starts_with("sha512:"));
            DigestAlgorithm::Sha512
        }
    }

    /// The lower-case hex encoding (after the colon).
    pub fn hex(&self) -> &str {
        &self.0[self.algorithm().name().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both are the one shared allocation (not only equal): what
    /// the projection's sharing of digests is tested with.
    pub fn shares_text_with(&self, other: &Digest) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Hash`, `Eq` and `Ord` are the string's, so a set of digests can be
/// searched by `&str`.
impl Borrow<str> for Digest {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a digest string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Digest, E> {
                Digest::parse_decoded(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

thread_local! {
    /// The digests deserialized so far inside [`share_decoded`] on this
    /// thread (`None` outside).
    static DECODED: RefCell<Option<HashMap<u64, Digest, foldhash::fast::RandomState>>> =
        const { RefCell::new(None) };
}

/// The key [`share_decoded`] files a digest under: 64 bits of its last 16
/// hex digits (random in any real digest), so a lookup hashes one word
/// instead of the whole string; a full comparison confirms a hit. A
/// snapshot holds hundreds of thousands of digests, and hashing whole
/// strings was a tenth of its load time.
fn share_key(checked: &str) -> u64 {
    let b = checked.as_bytes();
    let n = b.len();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    word(n - 16) ^ word(n - 8).rotate_left(29)
}

/// Runs `decode` with the digests it deserializes on this thread shared:
/// equal digests come back as one allocation, and a copy is never made
/// only to be dropped. Decoding a `State` goes through here (see
/// `projection`), so a state read from a snapshot holds each digest once,
/// as one built by `apply` does. Nested calls share the outermost scope.
pub fn share_decoded<T>(decode: impl FnOnce() -> T) -> T {
    struct Scope {
        outermost: bool,
    }
    impl Drop for Scope {
        fn drop(&mut self) {
            if self.outermost {
                DECODED.with(|decoded| *decoded.borrow_mut() = None);
            }
        }
    }
    let outermost = DECODED.with(|decoded| {
        let mut decoded = decoded.borrow_mut();
        let outermost = decoded.is_none();
        if outermost {
            *decoded = Some(HashMap::default());
        }
        outermost
    });
    let _scope = Scope { outermost };
    decode()
}

/// An incremental hasher for one of the supported algorithms. sha2 picks the
/// CPU's SHA extensions at run time when they exist.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Hasher::Sha256(_) => DigestAlgorithm::Sha256,
            Hasher::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    pub fn finish(self) -> Digest {
        let s = match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        Digest(Arc::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside `share_decoded`, equal digests are one allocation; digests
    /// that share the lookup key (the same last 16 hex digits) stay
    /// distinct and correct.
    #[test]
    fn decoded_digests_are_shared_and_key_collisions_are_not() {
        let tail = "0123456789abcdef";
        let a = format!("sha256:{}{tail}", "a".repeat(48));
        let b = format!("sha256:{}{tail}", "b".repeat(48));
        assert_eq!(share_key(&a), share_key(&b));
        let (a1, b1, a2, b2) = share_decoded(|| {
            (
                Digest::parse_decoded(&a).unwrap(),
                Digest::parse_decoded(&b).unwrap(),
                Digest::parse_decoded(&a).unwrap(),
                Digest::parse_decoded(&b).unwrap(),
            )
        });
        assert_eq!((a1.as_str(), b1.as_str()), (a.as_str(), b.as_str()));
        assert_eq!((a2.as_str(), b2.as_str()), (a.as_str(), b.as_str()));
        assert!(Arc::ptr_eq(&a1.0, &a2.0), "equal digests share");
        assert!(
            !Arc::ptr_eq(&b1.0, &b2.0),
            "a colliding digest is not shared"
        );
        // Outside the scope nothing is shared.
        let c1 = Digest::parse_decoded(&a).unwrap();
        assert!(!Arc::ptr_eq(&a1.0, &c1.0));
    }

    #[test]
    fn parse_and_canonical_form() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::sha256_of(b"").as_str(), empty);
        let d = Digest::parse(empty).unwrap();
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        // Upper-case hex is not canonical: it is rejected, never aliased.
        assert!(Digest::parse(&empty.to_uppercase()).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse("sha256").is_err());
        assert!(Digest::parse(":abc").is_err());
        assert!(matches!(
            Digest::parse("md5:abc"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        assert!(Digest::parse(&format!("sha256:{}/../x", "0".repeat(64))).is_err());
    }
}
