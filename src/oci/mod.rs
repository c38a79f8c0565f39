//! The OCI grammar: repository names, tags, digests and references, parsed and
//! validated before anything touches the disk or the log.
//!
//! Boundary: every value of these types is valid by construction. A name is
//! never used as a file path; digests are canonical (lower-case hex), so two
//! spellings of the same content can never name two different things.

mod digest;
mod name;

pub use digest::{share_decoded, Digest, DigestAlgorithm, DigestError, Hasher};
pub use name::{NameError, Reference, ReferenceError, RepoName, Tag};
