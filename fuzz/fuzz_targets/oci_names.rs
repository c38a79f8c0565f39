//! The OCI grammar (`ferro::oci`: repository names, tags, digests,
//! references) and the URL path parser (`ferro::api::path::parse`) on
//! arbitrary strings: never panic; accept exactly what the distribution
//! spec's regular expressions accept (within the length limits); accepted
//! values print as the input; an accepted path prints back to itself.

#![no_main]

use std::sync::OnceLock;

use ferro::api::path::{parse, Route};
use ferro::limits::{REPO_NAME_BYTES_MAX, TAG_BYTES_MAX};
use ferro::oci::{Digest, DigestAlgorithm, Reference, RepoName, Tag};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

struct Grammar {
    name: Regex,
    tag: Regex,
    digest: Regex,
}

/// The spec's own expressions, as the oracle.
fn grammar() -> &'static Grammar {
    static G: OnceLock<Grammar> = OnceLock::new();
    G.get_or_init(|| {
        let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
        Grammar {
            name: Regex::new(&format!("^{component}(?:/{component})*$")).expect("regex"),
            tag: Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("regex"),
            digest: Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").expect("regex"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let g = grammar();

    let name = RepoName::parse(s);
    assert_eq!(
        name.is_ok(),
        g.name.is_match(s) && s.len() <= REPO_NAME_BYTES_MAX,
        "name {s:?}: {name:?}"
    );
    if let Ok(n) = &name {
        assert_eq!(n.as_str(), s);
        assert_eq!(n.to_string(), s);
        assert!(!s.contains("..") && !s.contains('%') && !s.contains("//"));
        assert!(!s.starts_with('/') && !s.ends_with('/'));
        let json = serde_json::to_string(n).expect("serialize");
        assert_eq!(
            serde_json::from_str::<RepoName>(&json).expect("deserialize"),
            *n
        );
    }

    let tag = Tag::parse(s);
    assert_eq!(tag.is_ok(), g.tag.is_match(s), "tag {s:?}: {tag:?}");
    if let Ok(t) = &tag {
        assert_eq!(t.as_str(), s);
        assert!(s.len() <= TAG_BYTES_MAX);
        assert!(!s.contains('/') && !s.contains(':') && !s.contains('%'));
        assert!(!s.starts_with('.') && !s.starts_with('-'));
    }

    let digest = Digest::parse(s);
    assert_eq!(
        digest.is_ok(),
        g.digest.is_match(s),
        "digest {s:?}: {digest:?}"
    );
    if let Ok(d) = &digest {
        assert_eq!(d.as_str(), s);
        let alg: DigestAlgorithm = d.algorithm();
        assert_eq!(format!("{}:{}", alg.name(), d.hex()), s);
        assert_eq!(d.hex().len(), alg.hex_len());
        assert!(!d.hex().bytes().any(|b| b.is_ascii_uppercase()));
        let json = serde_json::to_string(d).expect("serialize");
        assert_eq!(
            serde_json::from_str::<Digest>(&json).expect("deserialize"),
            *d
        );
    }

    match Reference::parse(s) {
        Ok(r) => {
            assert_eq!(r.to_string(), s);
            match r {
                Reference::Tag(_) => assert!(tag.is_ok()),
                Reference::Digest(_) => assert!(digest.is_ok()),
            }
        }
        Err(_) => assert!(tag.is_err() && digest.is_err()),
    }

    if let Ok(route) = parse(s) {
        check_route(s, &route);
    }
    // The same string as a path under a repository, to reach the routes.
    for prefix in ["/v2/", "/v2/a/"] {
        let path = format!("{prefix}{s}");
        if let Ok(route) = parse(&path) {
            check_route(&path, &route);
        }
    }
});

/// An accepted path is one of the spellings of its route, and the route's
/// own spelling parses to it again.
fn check_route(path: &str, route: &Route) {
    let spellings: Vec<String> = match route {
        Route::Base => vec!["/v2".into(), "/v2/".into()],
        Route::Catalog => vec!["/v2/_catalog".into()],
        Route::Tags { repo } => vec![format!("/v2/{repo}/tags/list")],
        Route::Manifest { repo, reference } => vec![format!("/v2/{repo}/manifests/{reference}")],
        Route::ManifestInvalidReference {
            repo, reference, ..
        } => vec![format!("/v2/{repo}/manifests/{reference}")],
        Route::Blob { repo, digest } => vec![format!("/v2/{repo}/blobs/{digest}")],
        Route::UploadStart { repo } => vec![
            format!("/v2/{repo}/blobs/uploads/"),
            format!("/v2/{repo}/blobs/uploads"),
        ],
        Route::Upload { repo, id } => {
            assert!(!id.is_empty() && !id.contains('/'), "upload id {id:?}");
            vec![format!("/v2/{repo}/blobs/uploads/{id}")]
        }
        Route::Referrers { repo, digest } => vec![format!("/v2/{repo}/referrers/{digest}")],
        Route::Extension {
            repo,
            extension,
            component,
            module,
        } => {
            for word in [extension, component, module] {
                assert!(!word.is_empty() && !word.contains('/') && !word.contains('%'));
            }
            let under = repo.as_ref().map(|r| format!("{r}/")).unwrap_or_default();
            vec![format!("/v2/{under}_{extension}/{component}/{module}")]
        }
    };
    assert!(
        spellings.iter().any(|p| p == path),
        "{path:?} parsed as {route:?}, which is spelled {spellings:?}"
    );
    for p in &spellings {
        assert_eq!(parse(p).as_ref(), Ok(route), "{p:?}");
    }
}
