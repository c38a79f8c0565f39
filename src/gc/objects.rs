//! Garbage collection's part in an object store (`[storage] backend =
//! "s3"`): the leftovers that have no file on a disk to find them by.
//! Multipart uploads the log knows were left open, those open in the
//! store that the log never knew, and objects under the prefix that
//! nothing names. On the filesystem there is nothing to do here.

use super::{Collector, GcError, GcReport};
use crate::blobs::Backend;

impl Collector {
    /// The object store's leftovers: multipart uploads the log knows were
    /// left open (no session owns them: a crash between opening and
    /// completing one, or an abort that failed) are aborted, and objects
    /// under the prefix that no blob, open upload or upload in progress
    /// names, older than `cutoff_unix_ns`, deleted.
    pub(super) async fn remove_object_leftovers(
        &self,
        cutoff_unix_ns: u64,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        let objects = match self.store.backend() {
            Backend::Object(objects) => objects,
            Backend::Filesystem => return Ok(()),
        };
        let abandoned: Vec<String> = {
            let state = self.state.read();
            state
                .objects
                .multiparts
                .iter()
                .filter(|(u, m)| {
                    !state.uploads.contains_key(*u)
                        && !objects.is_in_progress(u)
                        && m.started_unix_ns <= cutoff_unix_ns
                })
                .map(|(u, _)| u.clone())
                .collect()
        };
        report.multiparts_aborted = abandoned.len() as u64;
        if !dry_run && !abandoned.is_empty() {
            crate::api::abort_multiparts(&self.writer, &self.state, objects, &abandoned).await?;
        }
        // Open in the store but unknown to the log: a crash between
        // opening one and logging it. No session, no upload in progress
        // and no open multipart upload of the state owns its key.
        match objects.list_multipart_uploads().await {
            Ok(open) => {
                for (key, multipart) in open {
                    let Some(upload) = objects.upload_of_key(&key) else {
                        continue;
                    };
                    let owned = {
                        let state = self.state.read();
                        state.uploads.contains_key(upload)
                            || state.objects.multiparts.contains_key(upload)
                            || objects.is_in_progress(upload)
                    };
                    if owned {
                        continue;
                    }
                    report.multiparts_aborted += 1;
                    if dry_run {
                        continue;
                    }
                    match objects.abort_multipart(&key, &multipart).await {
                        Ok(()) => {
                            tracing::info!(%key, "aborted a multipart upload the log never knew")
                        }
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "cannot abort a multipart upload")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the store's multipart uploads"),
        }
        let listed = match objects.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the object store; orphan objects stay");
                return Ok(());
            }
        };
        let blob_keys: std::collections::HashSet<String> =
            self.state.read().objects.blobs.values().cloned().collect();
        for o in listed {
            let Some(upload) = objects.upload_of_key(&o.key) else {
                continue; // not ours
            };
            let named = blob_keys.contains(&o.key) || o.modified_unix_ns > cutoff_unix_ns || {
                let state = self.state.read();
                // Read again: an upload may have completed since the list.
                state.uploads.contains_key(upload)
                    || state.objects.multiparts.contains_key(upload)
                    || objects.is_in_progress(upload)
                    || state.objects.blobs.values().any(|k| *k == o.key)
            };
            if named {
                continue;
            }
            if !dry_run {
                if let Err(e) = objects.delete(&o.key).await {
                    tracing::warn!(key = %o.key, error = %e, "cannot delete an orphan object");
                    continue;
                }
                tracing::info!(key = %o.key, bytes = o.size, "removed an orphan object");
            }
            report.orphans_removed += 1;
            report.orphan_bytes_freed += o.size;
        }
        Ok(())
    }
}
