//! `ferroctl mirror sync`: pre-fetches an image into a running server's
//! mirror, by pulling it (and everything it references) through the
//! server, which fills what it lacks from the upstream, on the record.

use ferro::mirror::prefetch::prefetch;
use ferro::oci::{Reference, RepoName};

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::{say, Out};

#[derive(clap::Subcommand)]
pub enum MirrorCommand {
    /// Pull PREFIX/REPO[:TAG] (or @DIGEST) through a running server's
    /// mirror so that it is cached: manifests, an index's children, every
    /// blob.
    Sync(SyncArgs),
}

#[derive(clap::Args)]
pub struct SyncArgs {
    /// The image under a mirror's prefix: `hub/library/alpine:3.20`,
    /// `hub/library/alpine@sha256:…`; no tag: `latest`.
    pub image: String,
    /// The running server.
    #[arg(long, env = "FERRO_SERVER", default_value = "http://127.0.0.1:5000")]
    pub server: String,
    /// `user:password` for the server (Basic).
    #[arg(long, env = "FERRO_CREDENTIALS")]
    pub credentials: Option<String>,
}

/// `name:tag`, `name@digest` or `name` (`latest`).
fn split_image(image: &str) -> Result<(RepoName, Reference), String> {
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_owned()),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_owned()),
            _ => (image, "latest".to_owned()),
        },
    };
    let repo = RepoName::parse(name).map_err(|e| format!("{name:?}: {e}"))?;
    let reference = Reference::parse(&reference).map_err(|e| format!("{reference:?}: {e}"))?;
    Ok((repo, reference))
}

pub fn run(command: &MirrorCommand, out: &Out) -> CtlResult<Exit> {
    let MirrorCommand::Sync(args) = command;
    let (repo, reference) = split_image(&args.image).map_err(|e| CtlError::new(Exit::Usage, e))?;
    let credentials = args
        .credentials
        .as_deref()
        .map(|c| c.split_once(':').unwrap_or((c, "")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::failure)?;
    let bar = out.spinner("pulling");
    let report = runtime
        .block_on(prefetch(
            &args.server,
            &repo,
            &reference,
            credentials,
            &mut |bytes| bar.inc(bytes),
        ))
        .map_err(|e| CtlError::new(Exit::Failure, e))?;
    bar.finish_and_clear();
    if out.json {
        out.json(&report)?;
    } else {
        say!(
            "{repo}: {} cached ({} manifests, {} blobs, {} bytes)",
            report.digest,
            report.manifests,
            report.blobs,
            report.blob_bytes
        );
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_name_and_reference() {
        let (r, t) = split_image("hub/library/alpine:3.20").unwrap();
        assert_eq!(
            (r.as_str(), t.to_string().as_str()),
            ("hub/library/alpine", "3.20")
        );
        let (_, t) = split_image("hub/app").unwrap();
        assert_eq!(t.to_string(), "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let (_, t) = split_image(&format!("hub/app@{d}")).unwrap();
        assert_eq!(t.to_string(), d);
        assert!(split_image("Hub/app").is_err());
    }
}
