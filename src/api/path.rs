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
    /// `/v2/<name>/manifests/<reference>` where the reference is neither a
    /// tag nor a digest: it names no manifest and never can (so reads and
    /// deletes answer "unknown", a PUT "invalid"; see `manifests`).
    /// `reference` is the raw path segment, `invalid` why it was refused.
    ManifestInvalidReference {
        repo: RepoName,
        reference: String,
        invalid: ApiErrorKind,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob { repo: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { repo: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { repo: RepoName, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { repo: RepoName, digest: Digest },
    /// An extension endpoint (`_<extension>/<component>/<module>`), at the
    /// registry level (`/v2/_oci/ext/discover`) or under a repository
    /// (`/v2/<name>/_ferro/history/tag`).
    Extension {
        repo: Option<RepoName>,
        extension: String,
        component: String,
        module: String,
    },
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

/// The last segments of a path, read from the right (names have slashes,
/// so only the last few say what is addressed), without collecting the
/// segments: a request's path is split once, into a fixed array.
struct Segments<'a> {
    rest: &'a str,
    /// `last[0]` is the last segment, `last[1]` the one before it, and so
    /// on; `""` past the first segment.
    last: [&'a str; 4],
    /// How many segments `rest` has, counted up to 5 (5: more than 4).
    n: usize,
}

impl<'a> Segments<'a> {
    fn of(rest: &'a str) -> Self {
        let mut last = [""; 4];
        let mut found = 0;
        let mut end = rest.len();
        // Byte by byte from the right: paths are short, and a slash is
        // one byte of ASCII, so every cut is on a character boundary.
        for (i, b) in rest.bytes().enumerate().rev() {
            if b == b'/' {
                last[found] = &rest[i + 1..end];
                end = i;
                found += 1;
                if found == last.len() {
                    // At least one more segment (maybe empty) before it.
                    return Segments { rest, last, n: 5 };
                }
            }
        }
        last[found] = &rest[..end];
        Segments {
            rest,
            last,
            n: found + 1,
        }
    }

    /// The `i`-th segment from the end (0: the last).
    fn back(&self, i: usize) -> &'a str {
        self.last[i]
    }

    /// `rest` without its last `k` segments and their slashes: the name
    /// in front of a route's keywords.
    fn before(&self, k: usize) -> &'a str {
        debug_assert!(k < self.n && k <= self.last.len());
        let cut: usize = self.last[..k].iter().map(|s| s.len() + 1).sum();
        &self.rest[..self.rest.len() - cut]
    }
}

fn name(s: &str) -> Result<RepoName, PathError> {
    RepoName::parse(s).map_err(|e| PathError::Invalid(ApiErrorKind::Name(e.to_string())))
}

fn digest(s: &str) -> Result<Digest, PathError> {
    Digest::parse(s).map_err(|e| PathError::Invalid(ApiErrorKind::Digest(e.to_string())))
}

/// `_<extension>/<component>/<module>`, each `[a-z0-9]+([._-][a-z0-9]+)*`
/// (the extension spec's grammar), under an optional repository name.
fn extension(name_part: Option<&str>, ext: &[&str]) -> Result<Route, PathError> {
    let repo = match name_part {
        None => None,
        Some(n) => Some(name(n)?),
    };
    let word = |s: &str| {
        let b = s.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && alnum(b[0])
            && alnum(b[b.len() - 1])
            && b.iter()
                .all(|&c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
            && !b.windows(2).any(|w| !alnum(w[0]) && !alnum(w[1]))
    };
    match ext {
        [e, c, m] if word(&e[1..]) && word(c) && word(m) => Ok(Route::Extension {
            repo,
            extension: e[1..].to_owned(),
            component: (*c).to_owned(),
            module: (*m).to_owned(),
        }),
        // The one `_ferro` endpoint with no module.
        ["_ferro", "notifications"] => Ok(Route::Extension {
            repo,
            extension: "ferro".into(),
            component: "notifications".into(),
            module: String::new(),
        }),
        _ => Err(PathError::NotFound),
    }
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
    let s = Segments::of(rest);
    let n = s.n;
    if n >= 3 && s.back(1) == "tags" && s.back(0) == "list" {
        return Ok(Route::Tags {
            repo: name(s.before(2))?,
        });
    }
    if n >= 4 && s.back(2) == "blobs" && s.back(1) == "uploads" {
        let id = s.back(0);
        let repo = name(s.before(3))?;
        return Ok(if id.is_empty() {
            Route::UploadStart { repo }
        } else {
            Route::Upload {
                repo,
                id: id.to_owned(),
            }
        });
    }
    if n >= 3 && s.back(1) == "blobs" && s.back(0) == "uploads" {
        return Ok(Route::UploadStart {
            repo: name(s.before(2))?,
        });
    }
    if n >= 3 {
        let last = s.back(0);
        let repo = || name(s.before(2));
        match s.back(1) {
            "manifests" => {
                // The name is judged first, as on every other route.
                let repo = repo()?;
                // A reference with a colon is a digest and is judged as one.
                return Ok(match Reference::parse(last) {
                    Ok(reference) => Route::Manifest { repo, reference },
                    Err(e) => Route::ManifestInvalidReference {
                        repo,
                        reference: last.to_owned(),
                        invalid: match e {
                            ReferenceError::Digest(d) => ApiErrorKind::Digest(d.to_string()),
                            ReferenceError::Name(n) => ApiErrorKind::Reference(n.to_string()),
                        },
                    },
                });
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
    // No component of a repository name starts with `_`, so a path that
    // is none of the above and whose third segment from the end does is an
    // extension's. (Checked last: `/v2/_a/manifests/x` is a manifest route
    // with an invalid name, not an extension.)
    if n >= 3 && s.back(2).starts_with('_') {
        let name_part = (n > 3).then(|| s.before(3));
        return extension(name_part, &[s.back(2), s.back(1), s.back(0)]);
    }
    if n == 2 && s.back(1) == "_ferro" && s.back(0) == "notifications" {
        return extension(None, &[s.back(1), s.back(0)]);
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

    /// Names of any depth are cut at the right place, whatever the route.
    #[test]
    fn deep_names() {
        assert!(matches!(
            parse("/v2/a/b/c/d/e/manifests/v1"),
            Ok(Route::Manifest { repo, .. }) if repo.as_str() == "a/b/c/d/e"
        ));
        assert!(matches!(
            parse("/v2/a/b/c/blobs/uploads/x"),
            Ok(Route::Upload { repo, id }) if repo.as_str() == "a/b/c" && id == "x"
        ));
        assert!(matches!(
            parse("/v2/a/b/c/d/blobs/uploads/"),
            Ok(Route::UploadStart { repo }) if repo.as_str() == "a/b/c/d"
        ));
        assert!(matches!(
            parse("/v2/a/b/c/d/tags/list"),
            Ok(Route::Tags { repo }) if repo.as_str() == "a/b/c/d"
        ));
        assert!(matches!(
            parse("/v2/a/b/c/d/_ferro/history/tag"),
            Ok(Route::Extension { repo: Some(r), .. }) if r.as_str() == "a/b/c/d"
        ));
        assert!(matches!(
            parse(&format!("/v2/a/b/c/d/e/f/blobs/{}", d())),
            Ok(Route::Blob { repo, .. }) if repo.as_str() == "a/b/c/d/e/f"
        ));
        assert_eq!(
            parse("/v2/x/_ferro/notifications"),
            Err(PathError::NotFound)
        );
    }

    #[test]
    fn extensions() {
        assert!(matches!(
            parse("/v2/_oci/ext/discover"),
            Ok(Route::Extension { repo: None, extension, component, module })
                if extension == "oci" && component == "ext" && module == "discover"
        ));
        assert!(matches!(
            parse("/v2/a/b/_ferro/history/tag"),
            Ok(Route::Extension { repo: Some(r), extension, .. }) if r.as_str() == "a/b" && extension == "ferro"
        ));
        // A tag may start with `_`: still a manifest route.
        assert!(matches!(
            parse("/v2/a/manifests/_x"),
            Ok(Route::Manifest { .. })
        ));
        assert_eq!(parse("/v2/_ferro/Events/feed"), Err(PathError::NotFound));
        assert_eq!(parse("/v2/_ferro/events"), Err(PathError::NotFound));
        assert!(matches!(
            parse("/v2/_ferro/notifications"),
            Ok(Route::Extension { repo: None, component, module, .. })
                if component == "notifications" && module.is_empty()
        ));
        assert_eq!(
            parse("/v2/a/_ferro/notifications"),
            Err(PathError::NotFound)
        );
        assert!(matches!(
            parse("/v2/A/_ferro/history/tag"),
            Err(PathError::Invalid(_))
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
        // A manifest reference outside the grammar is still a manifest
        // route (it names nothing); the name is judged first.
        assert!(matches!(
            parse("/v2/a/manifests/sha256:zz"),
            Ok(Route::ManifestInvalidReference { invalid: ApiErrorKind::Digest(_), reference, .. })
                if reference == "sha256:zz"
        ));
        assert!(matches!(
            parse("/v2/a/manifests/-tag"),
            Ok(Route::ManifestInvalidReference {
                invalid: ApiErrorKind::Reference(_),
                ..
            })
        ));
        assert!(matches!(
            parse("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            Ok(Route::ManifestInvalidReference { .. })
        ));
        assert!(matches!(
            parse("/v2/A/manifests/-tag"),
            Err(PathError::Invalid(ApiErrorKind::Name(_)))
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
