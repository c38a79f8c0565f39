//! Idle upload expiry: a background task cancels, on the record, uploads
//! whose last acknowledged chunk is older than
//! `limits.upload_idle_expiry_secs` (`CancelUpload { reason: Expired }`),
//! then removes their staging files.
//!
//! An upload a request is working on right now (its session lock is
//! held) is never expired under it: the task only takes sessions it can
//! lock without waiting, and checks the upload again once it holds the
//! lock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::api::App;
use crate::commands::Command;
use crate::events::{Actor, CancelReason};
use crate::log::SubmitError;

/// How often the task looks: a quarter of the expiry, between 1 s and 60 s.
pub fn check_interval(expiry: Duration) -> Duration {
    (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Cancels every upload idle for longer than `expiry` at `now_unix_ns`;
/// returns how many.
pub async fn expire_idle(
    app: &App,
    expiry: Duration,
    now_unix_ns: u64,
) -> Result<usize, SubmitError> {
    let cutoff = now_unix_ns.saturating_sub(expiry.as_nanos() as u64);
    let idle: Vec<String> = app
        .state
        .read()
        .uploads
        .iter()
        .filter(|(_, u)| u.updated_unix_ns < cutoff)
        .map(|(id, _)| id.clone())
        .collect();
    let mut expired = 0;
    for id in idle {
        let session = app.sessions.get(&id);
        let Ok(_held) = session.try_lock() else {
            continue; // a request is using it: not idle
        };
        let still_idle = app
            .state
            .read()
            .uploads
            .get(&id)
            .is_some_and(|u| u.updated_unix_ns < cutoff);
        if !still_idle {
            continue;
        }
        let command = Command::CancelUpload {
            upload: id.clone(),
            reason: CancelReason::Expired,
        };
        match app.writer.submit(Actor::system(), command).await {
            Ok(_) => {}
            Err(SubmitError::Rejected(_)) => continue, // gone meanwhile
            Err(e) => return Err(e),
        }
        crate::api::release_upload(app, &id).await?;
        drop(_held);
        app.sessions.remove(&id);
        metrics::counter!(crate::metrics::UPLOADS_EXPIRED).increment(1);
        tracing::info!(upload = %id, "cancelled an idle upload");
        expired += 1;
    }
    Ok(expired)
}

/// Runs [`expire_idle`] periodically until `stop`.
pub fn spawn(app: Arc<App>, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let secs = app.limits.upload_idle_expiry_secs;
    if secs == 0 {
        return None;
    }
    let expiry = Duration::from_secs(secs);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(check_interval(expiry));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = expire_idle(&app, expiry, now_unix_ns()).await {
                tracing::warn!(error = %e, "upload expiry stopped");
                break;
            }
        }
    }))
}
