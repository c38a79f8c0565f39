//! Property tests of every parser of outside input: repository names, tags,
//! digests and references; the URL path parser; the `Range` and
//! `Content-Range` headers; manifests; log records, segment headers and
//! snapshots. The fuzz targets in `fuzz/` check the same properties with a
//! coverage-guided search; these run on every `cargo test`.
//!
//! - Values generated from the spec's grammar are accepted and print back
//!   to themselves; a mutated value is accepted exactly when a second,
//!   differently written reading of the grammar says it is valid.
//! - Generated routes parse to the right variant with the right name;
//!   accepted paths print back to themselves.
//! - Range answers lie within the blob; content ranges have start <= end.
//! - Generated manifests and indexes are accepted with the references they
//!   hold; random JSON and random bytes never panic.
//! - Random bytes never panic the record, header, payload and snapshot
//!   decoders; records of random entries round-trip, and any one flipped
//!   byte is detected.

use std::ops::ControlFlow;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

use ferro::api::path::{parse as parse_path, Route};
use ferro::api::ranges::{parse_content_range, parse_range, ByteRange};
use ferro::events::{Actor, Entry, Event};
use ferro::limits::{REPO_NAME_BYTES_MAX, TAG_BYTES_MAX};
use ferro::log::format::{
    decode_payload, encode_payload, encode_record, read_record, SegmentHeader, FORMAT_VERSION,
    RECORD_HEADER_BYTES,
};
use ferro::log::recovery::{read_log, RecordView};
use ferro::log::segment::segment_file_name;
use ferro::log::{ReadOptions, RecoveryError};
use ferro::manifest::{self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use ferro::oci::{Digest, DigestAlgorithm, Reference, RepoName, Tag};
use ferro::snapshot::format as snapshot_format;

// ---------------------------------------------------------------------------
// The grammar, read a second way: by runs of characters rather than by a
// state machine, so a shared mistake is unlikely.

/// `component = [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`: alternating runs of
/// alphanumerics and separators, starting and ending with alphanumerics.
fn component_by_runs(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let mut runs: Vec<(bool, String)> = Vec::new();
    for ch in c.chars() {
        match runs.last_mut() {
            Some((is_alnum, run)) if *is_alnum == alnum(ch) => run.push(ch),
            _ => runs.push((alnum(ch), ch.to_string())),
        }
    }
    let separator_ok = |s: &str| s == "." || s == "_" || s == "__" || s.chars().all(|c| c == '-');
    !runs.is_empty()
        && runs.first().is_some_and(|(a, _)| *a)
        && runs.last().is_some_and(|(a, _)| *a)
        && runs.iter().all(|(a, run)| *a || separator_ok(run))
}

fn name_by_grammar(s: &str) -> bool {
    !s.is_empty() && s.len() <= REPO_NAME_BYTES_MAX && s.split('/').all(component_by_runs)
}

/// `tag = [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
fn tag_by_grammar(s: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = s.chars();
    chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-')
        && s.len() <= TAG_BYTES_MAX
}

fn digest_by_grammar(s: &str) -> bool {
    let hex_of = |enc: &str, len: usize| {
        enc.len() == len && enc.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    };
    match s.split_once(':') {
        Some(("sha256", enc)) => hex_of(enc, 64),
        Some(("sha512", enc)) => hex_of(enc, 128),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Generators.

fn arb_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}"
}

/// Components that are also route keywords, so right-to-left parsing is
/// exercised.
fn arb_component_or_keyword() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => arb_component(),
        1 => prop::sample::select(vec!["manifests", "blobs", "uploads", "tags", "list", "referrers", "v2"])
            .prop_map(str::to_owned),
    ]
}

fn arb_name() -> impl Strategy<Value = String> {
    prop::collection::vec(arb_component_or_keyword(), 1..5)
        .prop_map(|c| c.join("/"))
        .prop_filter("within the length limit", |s| {
            s.len() <= REPO_NAME_BYTES_MAX
        })
}

fn arb_tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn arb_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-f0-9]{64}".prop_map(|h| format!("sha256:{h}")),
        "[a-f0-9]{128}".prop_map(|h| format!("sha512:{h}")),
    ]
}

/// Characters a mutation inserts or substitutes: the grammar's own, its
/// near misses, and what path tricks are made of.
const MUTATION_CHARS: &[char] = &[
    'a', 'z', '0', '9', 'A', 'F', 'Z', '.', '_', '-', '/', ':', '%', ' ', '+', '@', '\\', 'é', '\0',
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(prop::sample::Index, char),
    Replace(prop::sample::Index, char),
    Remove(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Upper,
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let ch = prop::sample::select(MUTATION_CHARS);
    prop_oneof![
        (any::<prop::sample::Index>(), ch.clone()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        (any::<prop::sample::Index>(), ch).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
        Just(Mutation::Upper),
    ]
}

fn mutate(s: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for m in mutations {
        match m {
            Mutation::Insert(i, c) => {
                let at = i.index(chars.len() + 1);
                chars.insert(at, *c);
            }
            Mutation::Replace(i, c) if !chars.is_empty() => {
                let at = i.index(chars.len());
                chars[at] = *c;
            }
            Mutation::Remove(i) if !chars.is_empty() => {
                let at = i.index(chars.len());
                chars.remove(at);
            }
            Mutation::Duplicate(i) if !chars.is_empty() => {
                let at = i.index(chars.len());
                let c = chars[at];
                chars.insert(at, c);
            }
            Mutation::Upper => chars.iter_mut().for_each(|c| c.make_ascii_uppercase()),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Names, tags, digests, references.

fn check_name(s: &str) -> Result<(), TestCaseError> {
    let parsed = RepoName::parse(s);
    prop_assert_eq!(parsed.is_ok(), name_by_grammar(s), "{:?}: {:?}", s, parsed);
    if let Ok(n) = parsed {
        prop_assert_eq!(n.as_str(), s);
        prop_assert_eq!(n.to_string(), s);
        prop_assert!(!s.contains("..") && !s.contains('%') && !s.contains("//"));
        prop_assert!(!s.starts_with('/') && !s.ends_with('/'));
        let json = serde_json::to_string(&n).unwrap();
        prop_assert_eq!(serde_json::from_str::<RepoName>(&json).unwrap(), n);
    }
    Ok(())
}

fn check_tag(s: &str) -> Result<(), TestCaseError> {
    let parsed = Tag::parse(s);
    prop_assert_eq!(parsed.is_ok(), tag_by_grammar(s), "{:?}: {:?}", s, parsed);
    if let Ok(t) = parsed {
        prop_assert_eq!(t.as_str(), s);
        prop_assert!(!s.contains('/') && !s.contains(':') && !s.contains('%'));
    }
    Ok(())
}

fn check_digest(s: &str) -> Result<(), TestCaseError> {
    let parsed = Digest::parse(s);
    prop_assert_eq!(
        parsed.is_ok(),
        digest_by_grammar(s),
        "{:?}: {:?}",
        s,
        parsed
    );
    if let Ok(d) = parsed {
        prop_assert_eq!(d.as_str(), s);
        let algorithm = d.algorithm();
        prop_assert_eq!(d.hex().len(), algorithm.hex_len());
        prop_assert_eq!(format!("{}:{}", algorithm.name(), d.hex()), s);
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }
    Ok(())
}

fn check_reference(s: &str) -> Result<(), TestCaseError> {
    match Reference::parse(s) {
        Ok(r) => {
            prop_assert_eq!(r.to_string(), s);
            match r {
                Reference::Tag(_) => prop_assert!(tag_by_grammar(s)),
                Reference::Digest(_) => prop_assert!(digest_by_grammar(s)),
            }
        }
        Err(_) => prop_assert!(!tag_by_grammar(s) && !digest_by_grammar(s)),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_names_are_accepted_and_mutants_follow_the_grammar(
        name in arb_name(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        prop_assert!(RepoName::parse(&name).is_ok(), "{:?}", name);
        check_name(&name)?;
        check_name(&mutate(&name, &mutations))?;
    }

    #[test]
    fn generated_tags_are_accepted_and_mutants_follow_the_grammar(
        tag in arb_tag(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        prop_assert!(Tag::parse(&tag).is_ok(), "{:?}", tag);
        check_tag(&tag)?;
        let mutant = mutate(&tag, &mutations);
        check_tag(&mutant)?;
        check_reference(&mutant)?;
    }

    #[test]
    fn generated_digests_are_accepted_and_mutants_follow_the_grammar(
        digest in arb_digest(),
        mutations in prop::collection::vec(arb_mutation(), 1..3),
    ) {
        let d = Digest::parse(&digest).unwrap();
        prop_assert_eq!(
            d.algorithm(),
            if digest.starts_with("sha256:") { DigestAlgorithm::Sha256 } else { DigestAlgorithm::Sha512 }
        );
        check_digest(&digest)?;
        check_reference(&digest)?;
        let mutant = mutate(&digest, &mutations);
        check_digest(&mutant)?;
        check_reference(&mutant)?;
    }

    #[test]
    fn any_string_follows_the_grammar(s in "\\PC{0,40}|[a-z0-9._/:%-]{0,40}") {
        check_name(&s)?;
        check_tag(&s)?;
        check_digest(&s)?;
        check_reference(&s)?;
    }
}

#[test]
fn lengths_at_the_limits() {
    let name = |len: usize| "a".repeat(len);
    assert!(RepoName::parse(&name(REPO_NAME_BYTES_MAX)).is_ok());
    assert!(RepoName::parse(&name(REPO_NAME_BYTES_MAX + 1)).is_err());
    assert!(Tag::parse(&name(TAG_BYTES_MAX)).is_ok());
    assert!(Tag::parse(&name(TAG_BYTES_MAX + 1)).is_err());
}

// ---------------------------------------------------------------------------
// URL paths.

#[derive(Debug, Clone)]
enum RouteKind {
    Tags,
    Manifest(String),
    Blob(String),
    UploadStart { trailing_slash: bool },
    Upload(String),
    Referrers(String),
    Extension(String, String, String),
}

fn arb_word() -> impl Strategy<Value = String> {
    // Never a route keyword: `/_e/tags/list` is a tags route.
    "[a-z0-9]{1,4}([._-][a-z0-9]{1,4}){0,2}"
        .prop_filter("not a keyword", |w| w != "tags" && w != "list")
}

fn arb_route_kind() -> impl Strategy<Value = RouteKind> {
    prop_oneof![
        Just(RouteKind::Tags),
        prop_oneof![arb_tag(), arb_digest()].prop_map(RouteKind::Manifest),
        arb_digest().prop_map(RouteKind::Blob),
        any::<bool>().prop_map(|trailing_slash| RouteKind::UploadStart { trailing_slash }),
        "[a-f0-9]{32}".prop_map(RouteKind::Upload),
        arb_digest().prop_map(RouteKind::Referrers),
        (arb_word(), arb_word(), arb_word()).prop_map(|(e, c, m)| RouteKind::Extension(e, c, m)),
    ]
}

fn render(name: &str, kind: &RouteKind) -> String {
    match kind {
        RouteKind::Tags => format!("/v2/{name}/tags/list"),
        RouteKind::Manifest(r) => format!("/v2/{name}/manifests/{r}"),
        RouteKind::Blob(d) => format!("/v2/{name}/blobs/{d}"),
        RouteKind::UploadStart { trailing_slash } => {
            format!(
                "/v2/{name}/blobs/uploads{}",
                if *trailing_slash { "/" } else { "" }
            )
        }
        RouteKind::Upload(id) => format!("/v2/{name}/blobs/uploads/{id}"),
        RouteKind::Referrers(d) => format!("/v2/{name}/referrers/{d}"),
        RouteKind::Extension(e, c, m) => format!("/v2/{name}/_{e}/{c}/{m}"),
    }
}

/// The spellings of a route; an accepted path must be one of them.
fn spellings(route: &Route) -> Vec<String> {
    match route {
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
        Route::Upload { repo, id } => vec![format!("/v2/{repo}/blobs/uploads/{id}")],
        Route::Referrers { repo, digest } => vec![format!("/v2/{repo}/referrers/{digest}")],
        Route::Extension {
            repo,
            extension,
            component,
            module,
        } => {
            let under = repo.as_ref().map(|r| format!("{r}/")).unwrap_or_default();
            vec![format!("/v2/{under}_{extension}/{component}/{module}")]
        }
    }
}

fn arb_path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => arb_component_or_keyword(),
        1 => prop::sample::select(vec!["", ".", "..", "%2e%2e", "_catalog", "_oci", "A", "a:b", "sha256:zz", "-x", "_x"])
            .prop_map(str::to_owned),
        1 => arb_digest(),
        1 => "\\PC{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_routes_parse_to_their_variant_and_name(name in arb_name(), kind in arb_route_kind()) {
        let path = render(&name, &kind);
        let route = parse_path(&path);
        let repo_is = |r: &RepoName| r.as_str() == name;
        let ok = match (&kind, &route) {
            (RouteKind::Tags, Ok(Route::Tags { repo })) => repo_is(repo),
            (RouteKind::Manifest(r), Ok(Route::Manifest { repo, reference })) => {
                repo_is(repo)
                    && reference.to_string() == *r
                    && matches!(reference, Reference::Digest(_)) == r.contains(':')
            }
            (RouteKind::Blob(d), Ok(Route::Blob { repo, digest })) => repo_is(repo) && digest.as_str() == d,
            (RouteKind::UploadStart { .. }, Ok(Route::UploadStart { repo })) => repo_is(repo),
            (RouteKind::Upload(i), Ok(Route::Upload { repo, id })) => repo_is(repo) && id == i,
            (RouteKind::Referrers(d), Ok(Route::Referrers { repo, digest })) => {
                repo_is(repo) && digest.as_str() == d
            }
            (
                RouteKind::Extension(e, c, m),
                Ok(Route::Extension { repo: Some(repo), extension, component, module }),
            ) => repo_is(repo) && extension == e && component == c && module == m,
            _ => false,
        };
        prop_assert!(ok, "{:?} parsed as {:?}", path, route);
        prop_assert!(spellings(route.as_ref().unwrap()).contains(&path));
    }

    #[test]
    fn any_path_parses_to_one_of_its_spellings(
        segments in prop::collection::vec(arb_path_segment(), 0..7),
        prefix in prop::sample::select(vec!["/v2/", "/v2", "/v3/", "/", ""]),
    ) {
        let path = format!("{prefix}{}", segments.join("/"));
        if let Ok(route) = parse_path(&path) {
            let spelled = spellings(&route);
            prop_assert!(spelled.contains(&path), "{:?} parsed as {:?}", path, route);
            for p in &spelled {
                prop_assert_eq!(parse_path(p), Ok(route.clone()));
            }
            if let Route::Upload { id, .. } = &route {
                prop_assert!(!id.is_empty() && !id.contains('/'));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Range and Content-Range.

fn arb_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..3,
        0u64..10_000,
        Just(u64::MAX),
        (u64::MAX - 3)..=u64::MAX,
        any::<u64>()
    ]
}

fn arb_position() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..20_000,
        Just(9_999_999_999_999_999_999u64),
        any::<u64>()
    ]
}

fn check_range_bounds(header: &str, size: u64) -> Result<ByteRange, TestCaseError> {
    let r = parse_range(header, size);
    if let ByteRange::Partial { start, end } = r {
        prop_assert!(
            start <= end && end < size,
            "{:?} of {}: {:?}",
            header,
            size,
            r
        );
    }
    Ok(r)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn ranges_lie_within_the_blob(
        start in arb_position(),
        end in arb_position(),
        size in arb_size(),
        form in 0..3u8,
        space in prop::sample::select(vec!["", " "]),
    ) {
        let (header, expected) = match form {
            0 => {
                let expected = if start > end || start.to_string().len() > 19 || end.to_string().len() > 19 {
                    ByteRange::Full
                } else if start >= size {
                    ByteRange::Unsatisfiable
                } else {
                    ByteRange::Partial { start, end: end.min(size - 1) }
                };
                (format!("{space}bytes={start}{space}-{space}{end}{space}"), expected)
            }
            1 => {
                let expected = if start.to_string().len() > 19 {
                    ByteRange::Full
                } else if start >= size {
                    ByteRange::Unsatisfiable
                } else {
                    ByteRange::Partial { start, end: size - 1 }
                };
                (format!("bytes={start}-"), expected)
            }
            _ => {
                let n = end;
                let expected = if n.to_string().len() > 19 {
                    ByteRange::Full
                } else if n == 0 || size == 0 {
                    ByteRange::Unsatisfiable
                } else {
                    ByteRange::Partial { start: size.saturating_sub(n), end: size - 1 }
                };
                (format!("bytes=-{n}"), expected)
            }
        };
        prop_assert_eq!(check_range_bounds(&header, size)?, expected, "{:?} of {}", header, size);
    }

    #[test]
    fn any_range_header_stays_within_the_blob(
        header in "\\PC{0,30}|(bytes=)?[0-9 ,-]{0,24}",
        size in arb_size(),
    ) {
        check_range_bounds(&header, size)?;
    }

    #[test]
    fn content_ranges_have_start_before_end(
        start in arb_position(),
        end in arb_position(),
        form in prop::sample::select(vec!["{s}-{e}", "bytes {s}-{e}/*", "bytes={s}-{e}", "bytes {s}-{e}/12"]),
        noise in "\\PC{0,20}|[0-9 /*-]{0,20}",
    ) {
        let header = form.replace("{s}", &start.to_string()).replace("{e}", &end.to_string());
        let fits = |n: u64| n.to_string().len() <= 19;
        let expected = (start <= end && fits(start) && fits(end)).then_some((start, end));
        prop_assert_eq!(parse_content_range(&header), expected, "{:?}", header);
        if let Some((s, e)) = parse_content_range(&noise) {
            prop_assert!(s <= e, "{:?}", noise);
        }
    }
}

// ---------------------------------------------------------------------------
// Manifests.

#[derive(Debug, Clone)]
struct Layer {
    digest: String,
    external: bool,
}

fn arb_layer() -> impl Strategy<Value = Layer> {
    (arb_digest(), prop::bool::weighted(0.2))
        .prop_map(|(digest, external)| Layer { digest, external })
}

fn descriptor(media_type: &str, digest: &str) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": 7 })
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn strings(v: &[Digest]) -> Vec<String> {
    v.iter().map(Digest::to_string).collect()
}

/// A JSON value of any shape, with the keys manifests have among others.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(json!(2)),
        "\\PC{0,10}".prop_map(Value::from),
        arb_digest().prop_map(Value::from),
        prop::sample::select(vec![
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            "application/json"
        ])
        .prop_map(Value::from),
    ];
    let key = prop::sample::select(vec![
        "schemaVersion",
        "mediaType",
        "config",
        "layers",
        "manifests",
        "subject",
        "digest",
        "size",
        "urls",
        "artifactType",
        "annotations",
        "x",
    ]);
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_image_manifests_are_accepted_with_their_references(
        config in arb_digest(),
        layers in prop::collection::vec(arb_layer(), 0..5),
        subject in prop::option::of(arb_digest()),
        artifact_type in prop::option::of(Just("application/vnd.example+json")),
        docker in any::<bool>(),
        say_media_type in 0..3u8,
    ) {
        let media_type = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        let mut m = json!({
            "schemaVersion": 2,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| {
                let mut d = descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &l.digest);
                if l.external {
                    d["urls"] = json!(["https://example.invalid/layer"]);
                }
                d
            }).collect::<Vec<_>>(),
        });
        if let Some(s) = &subject {
            m["subject"] = descriptor(OCI_MANIFEST, s);
        }
        if let Some(t) = artifact_type {
            m["artifactType"] = json!(t);
        }
        // The media type in the body, in the header, or in both.
        if say_media_type != 1 {
            m["mediaType"] = json!(media_type);
        }
        let content_type = (say_media_type != 0).then_some(media_type);
        let body = serde_json::to_vec(&m).unwrap();
        let p = manifest::parse(&body, content_type).unwrap();
        prop_assert_eq!(&p.media_type, media_type);
        let mut blobs = vec![config.clone()];
        blobs.extend(layers.iter().filter(|l| !l.external).map(|l| l.digest.clone()));
        prop_assert_eq!(strings(&p.blobs), sorted_unique(blobs));
        prop_assert!(p.manifests.is_empty());
        prop_assert_eq!(p.subject.as_ref().map(Digest::to_string), subject);
        let expected_type = artifact_type.unwrap_or("application/vnd.oci.image.config.v1+json");
        prop_assert_eq!(p.artifact_type.as_deref(), Some(expected_type));
        // A Content-Type that contradicts the body is refused.
        let other = if docker { OCI_MANIFEST } else { DOCKER_MANIFEST };
        if say_media_type != 1 {
            prop_assert!(manifest::parse(&body, Some(other)).is_err());
        }
    }

    #[test]
    fn generated_indexes_are_accepted_with_their_children(
        children in prop::collection::vec(arb_digest(), 0..6),
        subject in prop::option::of(arb_digest()),
        docker in any::<bool>(),
        say_media_type in any::<bool>(),
    ) {
        let media_type = if docker { DOCKER_MANIFEST_LIST } else { OCI_INDEX };
        let mut m = json!({
            "schemaVersion": 2,
            "manifests": children.iter().map(|d| {
                let mut c = descriptor(OCI_MANIFEST, d);
                c["platform"] = json!({ "architecture": "amd64", "os": "linux" });
                c
            }).collect::<Vec<_>>(),
        });
        if let Some(s) = &subject {
            m["subject"] = descriptor(OCI_MANIFEST, s);
        }
        if say_media_type || docker {
            m["mediaType"] = json!(media_type);
        }
        let body = serde_json::to_vec(&m).unwrap();
        let p = manifest::parse(&body, None).unwrap();
        prop_assert_eq!(&p.media_type, media_type);
        prop_assert_eq!(strings(&p.manifests), sorted_unique(children));
        prop_assert!(p.blobs.is_empty());
        prop_assert_eq!(p.subject.as_ref().map(Digest::to_string), subject);
    }

    #[test]
    fn random_json_never_panics_and_acceptance_is_consistent(
        v in arb_json(),
        content_type in prop::option::of(prop::sample::select(vec![
            OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, "application/json", "",
        ])),
    ) {
        let body = serde_json::to_vec(&v).unwrap();
        let _ = manifest::annotations(&body);
        if let Ok(p) = manifest::parse(&body, content_type) {
            prop_assert_eq!(v["schemaVersion"].as_u64(), Some(2));
            if let Some(ct) = content_type {
                prop_assert_eq!(&p.media_type, ct);
            }
            for list in [&p.blobs, &p.manifests] {
                prop_assert!(list.windows(2).all(|w| w[0] < w[1]));
            }
            prop_assert_eq!(manifest::parse(&body, Some(&p.media_type)), Ok(p));
        }
    }

    #[test]
    fn random_bytes_never_panic_the_manifest_parser(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = manifest::parse(&body, None);
        let _ = manifest::parse(&body, Some(OCI_INDEX));
        let _ = manifest::annotations(&body);
    }
}

// ---------------------------------------------------------------------------
// Records, segment headers, payloads, snapshots.

fn arb_entry() -> impl Strategy<Value = Entry> {
    let event = prop_oneof![
        (any::<u8>(), any::<u64>()).prop_map(|(c, size)| Event::BlobDeleted {
            digest: Digest::sha256_of(&[c]),
            size,
        }),
        (arb_name(), "[a-f0-9]{0,32}").prop_map(|(repo, upload)| Event::UploadStarted {
            repo: RepoName::parse(&repo).unwrap(),
            upload,
        }),
        (arb_name(), arb_tag(), any::<u8>()).prop_map(|(repo, tag, c)| Event::TagSet {
            repo: RepoName::parse(&repo).unwrap(),
            tag: Tag::parse(&tag).unwrap(),
            digest: Digest::sha256_of(&[c]),
            previous: None,
        }),
    ];
    (
        prop::option::of("\\PC{0,12}"),
        prop::collection::vec(event, 0..4),
    )
        .prop_map(|(user, events)| Entry {
            actor: Actor { user, peer: None },
            events,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_log_decoders(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(h) = SegmentHeader::decode(&bytes) {
            prop_assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }
        if let Ok(r) = read_record(&bytes) {
            prop_assert!(r.len_bytes() <= bytes.len());
        }
        if let Ok(entry) = decode_payload(&bytes) {
            let again = encode_payload(&entry).unwrap();
            prop_assert_eq!(decode_payload(&again).unwrap(), entry);
        }
        // Checksums fail on random bytes, so the snapshot decoder refuses
        // them before it decodes anything.
        prop_assert!(snapshot_format::decode(&bytes).is_err());
    }

    #[test]
    fn records_of_random_entries_round_trip_and_every_flip_is_detected(
        entry in arb_entry(),
        seq in 1u64..u64::MAX,
        time in any::<u64>(),
        prev_crc in any::<u32>(),
        flip_at in any::<prop::sample::Index>(),
        flip_mask in 1u8..=255,
    ) {
        let payload = encode_payload(&entry).unwrap();
        let mut record = Vec::new();
        let crc = encode_record(&mut record, seq, time, prev_crc, &payload);
        let r = read_record(&record).unwrap();
        prop_assert_eq!(r.header.crc, crc);
        prop_assert_eq!(r.header.seq, seq);
        prop_assert_eq!(r.header.time_unix_ns, time);
        prop_assert_eq!(r.header.prev_crc, prev_crc);
        prop_assert_eq!(decode_payload(r.payload).unwrap(), entry);
        let at = flip_at.index(record.len());
        record[at] ^= flip_mask;
        prop_assert!(read_record(&record).is_err(), "flip at {} of {} undetected", at, record.len());
    }
}

proptest! {
    // Each case writes a directory: fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_segment_of_random_bytes_after_a_valid_header_reads_to_a_prefix_or_an_error(
        entries in prop::collection::vec(arb_entry(), 0..4),
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        garbage_at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let header = SegmentHeader { version: FORMAT_VERSION, first_seq: 1, prev_crc: 0 };
        let mut bytes = header.encode().to_vec();
        let mut crc = 0;
        let mut ends = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            crc = encode_record(&mut bytes, i as u64 + 1, 0, crc, &encode_payload(entry).unwrap());
            ends.push(bytes.len());
        }
        // Random bytes over the records, from a random point on.
        let at = header.encode().len() + garbage_at.index(bytes.len() - header.encode().len() + 1);
        bytes.truncate(at);
        bytes.extend_from_slice(&garbage);
        std::fs::write(dir.path().join(segment_file_name(1)), &bytes).unwrap();

        let mut seen = Vec::new();
        let result = read_log(dir.path(), &ReadOptions::default(), &mut |r: &RecordView<'_>| {
            seen.push((r.seq, r.payload.to_vec()));
            Ok(ControlFlow::Continue(()))
        });
        match result {
            Ok(report) => {
                // The whole records before the garbage are delivered, and
                // nothing after them verifies.
                let whole = ends.iter().filter(|&&e| e <= at).count();
                prop_assert_eq!(seen.len(), whole);
                for (i, (seq, payload)) in seen.iter().enumerate().take(whole) {
                    prop_assert_eq!(*seq, i as u64 + 1);
                    prop_assert_eq!(payload, &encode_payload(&entries[i]).unwrap());
                }
                prop_assert_eq!(report.last_seq, seen.len() as u64);
                prop_assert_eq!(report.records_verified, seen.len() as u64);
            }
            Err(RecoveryError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn a_record_payload_at_the_header_size_boundary() {
    // An empty payload is a whole record of exactly the header's size.
    let mut record = Vec::new();
    encode_record(&mut record, 1, 0, 0, &[]);
    assert_eq!(record.len(), RECORD_HEADER_BYTES);
    assert_eq!(read_record(&record).unwrap().payload.len(), 0);
    assert!(read_record(&record[..RECORD_HEADER_BYTES - 1])
        .unwrap_err()
        .is_short());
}
