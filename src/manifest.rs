//! Manifest parsing and validation: what a pushed manifest body must be
//! before the registry accepts it, and what it references.
//!
//! Accepted: OCI image manifest and index, Docker schema 2 manifest and
//! manifest list (the shapes are the same, so oci-spec's types parse both).
//! Parsing never touches the state; whether the references exist in the
//! repository is the writer's check (`commands::Command::PutManifest`).

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::oci::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a manifest references and says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The media type to store and serve: the request's `Content-Type`, or
    /// the body's `mediaType` when the request had none.
    pub media_type: String,
    /// Blobs that must exist in the repository (config and layers, except
    /// non-distributable layers that name external `urls`).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (an index's children).
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    /// `artifactType`, else an image manifest's config media type.
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {content_type:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { content_type: String, body: String },
    #[error("schemaVersion must be 2, found {0}")]
    SchemaVersion(u32),
    #[error("manifest does not match its media type's schema: {0}")]
    Schema(String),
    #[error("descriptor digest {0:?} is not a supported digest")]
    Digest(String),
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

/// Parses `body` pushed with `content_type` (the header's media type,
/// parameters removed; `None` when absent).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    // JSON is UTF-8; serde_json does not check the values of fields it
    // ignores, so check the whole body before storing it.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ManifestError::Json(format!("body is not UTF-8: {e}")));
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let media_type = match (content_type, &probe.media_type) {
        (Some(ct), Some(body_mt)) if ct != body_mt => {
            return Err(ManifestError::MediaTypeMismatch {
                content_type: ct.to_owned(),
                body: body_mt.clone(),
            })
        }
        (Some(ct), _) => ct.to_owned(),
        (None, Some(body_mt)) => body_mt.clone(),
        // Neither says: the shape does (the image spec's own rule).
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => parse_image_manifest(body, media_type),
        OCI_INDEX | DOCKER_MANIFEST_LIST => parse_index(body, media_type),
        other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    }
}

fn digest_of(d: &Descriptor) -> Result<Digest, ManifestError> {
    let s = d.digest().to_string();
    Digest::parse(&s).map_err(|_| ManifestError::Digest(s))
}

fn parse_image_manifest(body: &[u8], media_type: String) -> Result<ParsedManifest, ManifestError> {
    let m: ImageManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Schema(e.to_string()))?;
    if m.schema_version() != 2 {
        return Err(ManifestError::SchemaVersion(m.schema_version()));
    }
    let mut blobs = vec![digest_of(m.config())?];
    for layer in m.layers() {
        let external = layer.urls().as_ref().is_some_and(|u| !u.is_empty());
        if !external {
            blobs.push(digest_of(layer)?);
        }
    }
    blobs.sort();
    blobs.dedup();
    let subject = m.subject().as_ref().map(digest_of).transpose()?;
    let artifact_type = m
        .artifact_type()
        .as_ref()
        .map(|t| t.to_string())
        .or_else(|| Some(m.config().media_type().to_string()));
    Ok(ParsedManifest {
        media_type,
        blobs,
        manifests: Vec::new(),
        subject,
        artifact_type,
    })
}

fn parse_index(body: &[u8], media_type: String) -> Result<ParsedManifest, ManifestError> {
    let i: ImageIndex =
        serde_json::from_slice(body).map_err(|e| ManifestError::Schema(e.to_string()))?;
    if i.schema_version() != 2 {
        return Err(ManifestError::SchemaVersion(i.schema_version()));
    }
    let mut manifests = i
        .manifests()
        .iter()
        .map(digest_of)
        .collect::<Result<Vec<_>, _>>()?;
    manifests.sort();
    manifests.dedup();
    let subject = i.subject().as_ref().map(digest_of).transpose()?;
    Ok(ParsedManifest {
        media_type,
        blobs: Vec::new(),
        manifests,
        subject,
        artifact_type: i.artifact_type().as_ref().map(|t| t.to_string()),
    })
}

/// The annotations of a stored manifest body, for the referrers API. Bodies
/// were validated when pushed, so a parse failure yields none.
pub fn annotations(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    #[derive(serde::Deserialize)]
    struct A {
        annotations: Option<serde_json::Map<String, serde_json::Value>>,
    }
    serde_json::from_slice::<A>(body).ok()?.annotations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(media_type: Option<&str>) -> Vec<u8> {
        let mt = media_type
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"{}","size":3,"urls":["https://example.invalid/x"]}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        )
        .into_bytes()
    }

    #[test]
    fn image_manifest() {
        let p = parse(&image(Some(OCI_MANIFEST)), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(
            p.blobs,
            vec![
                Digest::parse(&d('a')).unwrap(),
                Digest::parse(&d('b')).unwrap()
            ]
        );
        assert_eq!(p.subject, Some(Digest::parse(&d('e')).unwrap()));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        // No mediaType in the body: the header decides; no header either: the shape.
        assert_eq!(
            parse(&image(None), Some(OCI_MANIFEST)).unwrap().media_type,
            OCI_MANIFEST
        );
        assert_eq!(parse(&image(None), None).unwrap().media_type, OCI_MANIFEST);
    }

    #[test]
    fn rejects() {
        assert!(matches!(parse(b"{", None), Err(ManifestError::Json(_))));
        assert!(matches!(
            parse(&image(Some(OCI_MANIFEST)), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            parse(&image(None), Some("application/json")),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2}"#, Some(OCI_MANIFEST)),
            Err(ManifestError::Schema(_))
        ));
        let bad_digest = String::from_utf8(image(None))
            .unwrap()
            .replace(&d('b'), "sha256:XYZ");
        assert!(parse(bad_digest.as_bytes(), None).is_err());
        let v1 = String::from_utf8(image(None))
            .unwrap()
            .replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(matches!(
            parse(v1.as_bytes(), None),
            Err(ManifestError::SchemaVersion(1))
        ));
    }

    #[test]
    fn index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1}}]}}"#,
            d('1'),
            d('2')
        );
        let p = parse(body.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert_eq!(p.manifests.len(), 2);
        assert!(p.blobs.is_empty());
    }
}
