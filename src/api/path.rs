//! The one parser of OCI URL paths. Repository names contain slashes, so
//! routes are recognised from the right: the last one or two segments say
//! what is addressed, everything before them is the name.
//!
//! Paths are taken raw (still percent-encoded). Nothing in the spec's
//! grammar needs encoding, so a `%` anywhere makes the name or reference
//! invalid: `%2e%2e` can never become `..`.

use crate::oci::{Digest, Reference, ReferenceError, RepoName};

use super::error::{ApiError, ErrorCode};

/// What a `/v2/...` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { repo: RepoName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        repo: RepoName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob { repo: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { repo: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { repo: RepoName, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { repo: RepoName, digest: Digest },
    /// `/v2/_oci/ext/...` and `/v2/_ferro/...`: extensions, routed elsewhere.
    Extension { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not a route of the API at all (404 without a spec code).
    NotFound,
    Invalid(ApiErrorKind),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiErrorKind {
    Name(String),
    Reference(String),
    Digest(String),
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        match e {
            PathError::NotFound => ApiError::new(ErrorCode::NameUnknown, "no such route"),
            PathError::Invalid(ApiErrorKind::Name(m)) => ApiError::new(ErrorCode::NameInvalid, m),
            PathError::Invalid(ApiErrorKind::Reference(m)) => {
                ApiError::new(ErrorCode::ManifestInvalid, m)
            }
            PathError::Invalid(ApiErrorKind::Digest(m)) => {
                ApiError::new(ErrorCode::DigestInvalid, m)
            }
        }
    }
}

fn name(segments: &[&str]) -> Result<RepoName, PathError> {
    RepoName::parse(&segments.join("/"))
        .map_err(|e| PathError::Invalid(ApiErrorKind::Name(e.to_string())))
}

fn digest(s: &str) -> Result<Digest, PathError> {
    Digest::parse(s).map_err(|e| PathError::Invalid(ApiErrorKind::Digest(e.to_string())))
}

/// Parses a request path (without the query string).
pub fn parse(path: &str) -> Result<Route, PathError> {
    let rest = path.strip_prefix("/v2").ok_or(PathError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(PathError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    if rest.starts_with("_oci/") || rest.starts_with("_ferro/") {
        return Ok(Route::Extension {
            path: rest.to_owned(),
        });
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
        return Ok(Route::Tags {
            repo: name(&segments[..n - 2])?,
        });
    }
    if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        let id = segments[n - 1];
        let repo = name(&segments[..n - 3])?;
        return Ok(if id.is_empty() {
            Route::UploadStart { repo }
        } else {
            Route::Upload {
                repo,
                id: id.to_owned(),
            }
        });
    }
    if n >= 3 && segments[n - 2] == "blobs" && segments[n - 1] == "uploads" {
        return Ok(Route::UploadStart {
            repo: name(&segments[..n - 2])?,
        });
    }
    if n >= 3 {
        let last = segments[n - 1];
        let repo = || name(&segments[..n - 2]);
        match segments[n - 2] {
            "manifests" => {
                // The name is judged first, as on every other route.
                let repo = repo()?;
                // A reference with a colon is a digest and is judged as one.
                let reference = Reference::parse(last).map_err(|e| match e {
                    ReferenceError::Digest(d) => {
                        PathError::Invalid(ApiErrorKind::Digest(d.to_string()))
                    }
                    ReferenceError::Name(n) => {
                        PathError::Invalid(ApiErrorKind::Reference(n.to_string()))
                    }
                })?;
                return Ok(Route::Manifest { repo, reference });
            }
            "blobs" => {
                return Ok(Route::Blob {
                    repo: repo()?,
                    digest: digest(last)?,
                })
            }
            "referrers" => {
                return Ok(Route::Referrers {
                    repo: repo()?,
                    digest: digest(last)?,
                })
            }
            _ => {}
        }
    }
    Err(PathError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        assert!(
            matches!(parse("/v2/a/b/tags/list"), Ok(Route::Tags { repo }) if repo.as_str() == "a/b")
        );
        assert!(matches!(
            parse("/v2/a/manifests/latest"),
            Ok(Route::Manifest { .. })
        ));
        assert!(matches!(
            parse(&format!("/v2/a/blobs/{}", d())),
            Ok(Route::Blob { .. })
        ));
        assert!(matches!(
            parse("/v2/a/blobs/uploads/"),
            Ok(Route::UploadStart { .. })
        ));
        assert!(matches!(
            parse("/v2/a/blobs/uploads"),
            Ok(Route::UploadStart { .. })
        ));
        assert!(
            matches!(parse("/v2/a/blobs/uploads/abc"), Ok(Route::Upload { id, .. }) if id == "abc")
        );
        assert!(matches!(
            parse(&format!("/v2/x/referrers/{}", d())),
            Ok(Route::Referrers { .. })
        ));
        // Keywords inside a name are part of the name.
        assert!(matches!(
            parse("/v2/manifests/blobs/manifests/v1"),
            Ok(Route::Manifest { repo, .. }) if repo.as_str() == "manifests/blobs"
        ));
        assert!(matches!(
            parse("/v2/tags/list/tags/list"),
            Ok(Route::Tags { repo }) if repo.as_str() == "tags/list"
        ));
    }

    #[test]
    fn hostile_paths() {
        assert!(matches!(
            parse("/v2/../etc/manifests/x"),
            Err(PathError::Invalid(ApiErrorKind::Name(_)))
        ));
        assert!(matches!(
            parse("/v2/%2e%2e/manifests/x"),
            Err(PathError::Invalid(ApiErrorKind::Name(_)))
        ));
        assert!(matches!(
            parse("/v2/a//b/manifests/x"),
            Err(PathError::Invalid(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/sha256:zz"),
            Err(PathError::Invalid(ApiErrorKind::Digest(_)))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/-tag"),
            Err(PathError::Invalid(ApiErrorKind::Reference(_)))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/latest"),
            Err(PathError::Invalid(ApiErrorKind::Digest(_)))
        ));
        assert_eq!(parse("/v3/"), Err(PathError::NotFound));
        assert_eq!(parse("/v2/a"), Err(PathError::NotFound));
        assert_eq!(parse("/v2/a/unknown/x"), Err(PathError::NotFound));
        assert!(parse(&format!("/v2/{}/tags/list", "a".repeat(300))).is_err());
    }
}
