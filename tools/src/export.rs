//! Writing one image of a (past) state as an OCI image layout: `oci-layout`,
//! `index.json` naming the image by its tag, and `blobs/<alg>/<hex>` for the
//! manifest, the child manifests of an index (recursively), and every blob
//! they reference. Manifest bodies come from the state (the log keeps them
//! byte for byte); blob bytes from the store, hashed while copied. Blobs
//! the store no longer has are reported, not invented.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ferro::blobs::{BlobStore, IO_BUFFER_BYTES};
use ferro::datadir::Layout;
use ferro::oci::{Digest, RepoName, Tag};
use ferro::projection::State;
use serde::Serialize;

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::Out;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Serialize)]
pub struct Missing {
    pub digest: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    /// Digests written under `blobs/`.
    pub written: Vec<String>,
    pub bytes: u64,
    pub missing: Vec<Missing>,
}

pub fn write_layout(
    layout: &Layout,
    state: &State,
    repo: &RepoName,
    tag: &Tag,
    dir: &Path,
    out: &Out,
) -> CtlResult<ExportReport> {
    let reference = format!("{repo}:{tag}");
    let r = state.repo(repo).ok_or_else(|| {
        CtlError::new(
            Exit::NotFound,
            format!("repository {repo} did not exist at that point"),
        )
    })?;
    let root = r.tags.get(tag).ok_or_else(|| {
        CtlError::new(
            Exit::NotFound,
            format!("{reference} did not exist at that point"),
        )
    })?;
    let root_manifest = r.manifests.get(root).ok_or_else(|| {
        CtlError::failure(format!(
            "{reference} points at {root}, which the state does not hold"
        ))
    })?;
    prepare_dir(dir)?;
    let store = BlobStore::new(layout);
    let mut report = ExportReport {
        dir: dir.to_owned(),
        reference: reference.clone(),
        digest: root.to_string(),
        media_type: root_manifest.media_type.clone(),
        written: Vec::new(),
        bytes: 0,
        missing: Vec::new(),
    };

    // Manifests first (from the state), collecting the blobs they need.
    let mut pending = vec![root.clone()];
    let mut seen_manifests = BTreeSet::new();
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut seen_blobs = BTreeSet::new();
    while let Some(digest) = pending.pop() {
        if !seen_manifests.insert(digest.clone()) {
            continue;
        }
        let Some(m) = r.manifests.get(&digest) else {
            report.missing.push(Missing {
                digest: digest.to_string(),
                reason: "child manifest not in the repository at that point".into(),
            });
            continue;
        };
        write_file(&blob_path(dir, &digest), &m.body)?;
        report.written.push(digest.to_string());
        report.bytes += m.body.len() as u64;
        pending.extend(m.manifests.iter().cloned());
        for b in &m.blobs {
            if seen_blobs.insert(b.clone()) {
                let size = r.blobs.get(b).or_else(|| state.blobs.get(b)).copied();
                blobs.push((b.clone(), size.unwrap_or(0)));
            }
        }
    }

    let bar = out.bytes_bar(blobs.iter().map(|(_, s)| s).sum(), "exporting");
    for (digest, _) in &blobs {
        match copy_verified(
            &store.blob_path(digest),
            &blob_path(dir, digest),
            digest,
            &bar,
        ) {
            Ok(n) => {
                report.written.push(digest.to_string());
                report.bytes += n;
            }
            Err(reason) => report.missing.push(Missing {
                digest: digest.to_string(),
                reason,
            }),
        }
    }
    bar.finish_and_clear();

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": root_manifest.media_type,
            "digest": root.to_string(),
            "size": root_manifest.body.len(),
            "annotations": { REF_NAME_ANNOTATION: tag.to_string() },
        }],
    });
    let index = serde_json::to_vec_pretty(&index).map_err(CtlError::failure)?;
    write_file(&dir.join("index.json"), &index)?;
    write_file(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(report)
}

fn prepare_dir(dir: &Path) -> CtlResult<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CtlError::new(
                    Exit::Usage,
                    format!(
                        "{} is not empty; export into an empty or new directory",
                        dir.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CtlError::failure(format!("{}: {e}", dir.display()))),
    }
    fs::create_dir_all(dir).map_err(|e| CtlError::failure(format!("{}: {e}", dir.display())))
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().name())
        .join(digest.hex())
}

fn write_file(path: &Path, bytes: &[u8]) -> CtlResult<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut f =
        File::create(path).map_err(|e| CtlError::failure(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Copies a blob, hashing it on the way; a mismatch removes the copy.
fn copy_verified(
    from: &Path,
    to: &Path,
    digest: &Digest,
    bar: &indicatif::ProgressBar,
) -> Result<u64, String> {
    let mut src = match File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("the blob store no longer has it".into())
        }
        Err(e) => return Err(format!("cannot read {}: {e}", from.display())),
    };
    let mut copy = || -> std::io::Result<(u64, Digest)> {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut dst = File::create(to)?;
        let mut hasher = digest.algorithm().hasher();
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n])?;
            total += n as u64;
            bar.inc(n as u64);
        }
        dst.sync_all()?;
        Ok((total, hasher.finish()))
    };
    match copy() {
        Ok((n, actual)) if actual == *digest => Ok(n),
        Ok((_, actual)) => {
            let _ = fs::remove_file(to);
            Err(format!("the stored bytes hash to {actual}"))
        }
        Err(e) => {
            let _ = fs::remove_file(to);
            Err(format!("copy failed: {e}"))
        }
    }
}
