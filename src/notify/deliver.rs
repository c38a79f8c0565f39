//! One endpoint's delivery loop: read the entries after its cursor, post
//! them, advance the cursor on a 2xx; on failure wait (exponential backoff
//! with jitter) and post the same batch again. Nothing else waits for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::client::Client;
use super::format::{self, Batch};
use super::{now_unix_ns, Endpoint, Notifier, DELIVERIES, EVENTS_DELIVERED, FAILURES};
use crate::feed::{read_page, FeedEntry, Positions};

/// A batch stops growing past this many bytes of manifest bodies (at
/// least one entry goes): with 4 MiB manifests, `batch_max` alone would
/// allow a request of hundreds of MiB.
const BATCH_MANIFEST_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Wait after a failed log read (a segment moved by compaction meanwhile).
const LOG_READ_RETRY: Duration = Duration::from_millis(200);

pub const SIGNATURE_HEADER: &str = "ferro-signature";

pub async fn run(notifier: Arc<Notifier>, endpoint: Arc<Endpoint>, mut client: Client) {
    let name = endpoint.config.name.clone();
    let interval = notifier.cursor_write_interval;
    let mut last_write = Instant::now();
    // Where the reads stopped: the next batch reads only what is new.
    let positions = Arc::new(Positions::default());
    let mut last_read: Option<Instant> = None;
    loop {
        if notifier.stop.is_cancelled() {
            break;
        }
        // A move holds the lock from its record to its cursor write: a
        // batch is never read between the two.
        let (generation, after) = {
            let _cursor = endpoint.cursor_lock.lock().await;
            (
                endpoint.generation.load(Ordering::Acquire),
                endpoint.acked.load(Ordering::Acquire),
            )
        };
        let tip = notifier.writer.tip().clone();
        let committed = tip.next_commit();
        tokio::pin!(committed);
        committed.as_mut().enable();
        // Committed means applied: never an entry whose fsync is pending.
        let upto = notifier.state.read().last_seq;
        if upto <= after {
            endpoint.health.lock().pending_since_unix_ns = None;
            // Caught up: what is acknowledged goes to the file once the
            // write interval allows, unless more comes in first.
            let behind = endpoint.durable.load(Ordering::Acquire) < after;
            let wait = interval.saturating_sub(last_write.elapsed());
            if behind && wait.is_zero() {
                persist(&notifier, &endpoint, generation, &mut last_write).await;
                continue;
            }
            tokio::select! {
                _ = committed => {}
                _ = endpoint.moved.notified() => {}
                _ = tokio::time::sleep(wait), if behind => {}
                _ = notifier.stop.cancelled() => break,
            }
            continue;
        }
        let n = endpoint.config.batch_max;
        // Gather: right after a read, wait out the window for more
        // entries, unless a full batch is already waiting.
        if let Some(read_at) = last_read {
            let window_ends = read_at + endpoint.config.batch_window;
            if upto - after < n as u64 && Instant::now() < window_ends {
                tokio::select! {
                    _ = tokio::time::sleep_until(window_ends.into()) => {}
                    _ = endpoint.moved.notified() => {}
                    _ = notifier.stop.cancelled() => break,
                }
                continue;
            }
        }
        last_read = Some(Instant::now());
        let log_dir = notifier.layout.log_dir();
        let filter = endpoint.filter.clone();
        let read_positions = positions.clone();
        let page = tokio::task::spawn_blocking(move || {
            let page = read_page(&log_dir, after, upto, n, &filter, read_positions.get(after))?;
            if let Some(p) = page.resume {
                read_positions.put(p);
            }
            Ok::<_, crate::log::recovery::RecoveryError>(page)
        })
        .await;
        let page = match page {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %name, error = %e, "cannot read the log");
                pause(&notifier, &endpoint, LOG_READ_RETRY).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(endpoint = %name, error = %e, "log read task failed");
                pause(&notifier, &endpoint, LOG_READ_RETRY).await;
                continue;
            }
        };
        let (next, body) = match page.log_first_seq {
            // Compaction took entries the endpoint had not acknowledged
            // (`hold = "retention"`): it is told so, once.
            Some(first) if after + 1 < first => {
                let gap = Batch::Gap {
                    from_seq: after + 1,
                    to_seq: first - 1,
                    now_unix_ns: now_unix_ns(),
                };
                tracing::warn!(endpoint = %name, from_seq = after + 1, to_seq = first - 1, "entries left the log before the endpoint acknowledged them");
                let body = format::body(
                    endpoint.config.format,
                    &notifier.source,
                    &gap,
                    &|_, _| None,
                    endpoint.config.batch_max,
                );
                (first - 1, body.map(|b| (b, 1)))
            }
            _ => {
                let (entries, next) = cap_events(&page.entries, page.last_examined, n);
                if let Some(first) = entries.first() {
                    let mut h = endpoint.health.lock();
                    if h.pending_since_unix_ns.is_none() {
                        h.pending_since_unix_ns = Some(first.time_unix_ns);
                    }
                }
                let state = notifier.state.clone();
                let lookup = move |repo: &crate::oci::RepoName, digest: &crate::oci::Digest| {
                    let s = state.read();
                    let m = s.repo(repo)?.manifests.get(digest)?;
                    Some((m.media_type.clone(), m.body.len() as u64))
                };
                let events: usize = entries.iter().map(|e| e.events.len()).sum();
                let body = format::body(
                    endpoint.config.format,
                    &notifier.source,
                    &Batch::Entries(entries),
                    &lookup,
                    endpoint.config.batch_max,
                );
                (next, body.map(|b| (b, events)))
            }
        };
        match body {
            None => {
                // Nothing in this range is for the endpoint.
                {
                    let _cursor = endpoint.cursor_lock.lock().await;
                    if endpoint.generation.load(Ordering::Acquire) != generation {
                        continue;
                    }
                    endpoint.acked.store(next, Ordering::Release);
                }
                if last_write.elapsed() >= interval {
                    persist(&notifier, &endpoint, generation, &mut last_write).await;
                }
            }
            Some(((bytes, content_type), events)) => {
                let headers = request_headers(&endpoint, &bytes, content_type);
                if !send_until_acknowledged(
                    &notifier,
                    &endpoint,
                    &mut client,
                    &headers,
                    bytes,
                    generation,
                )
                .await
                {
                    continue;
                }
                {
                    let _cursor = endpoint.cursor_lock.lock().await;
                    if endpoint.generation.load(Ordering::Acquire) != generation {
                        continue;
                    }
                    endpoint.acked.store(next, Ordering::Release);
                }
                if last_write.elapsed() >= interval {
                    persist(&notifier, &endpoint, generation, &mut last_write).await;
                }
                let mut h = endpoint.health.lock();
                h.pending_since_unix_ns = None;
                h.deliveries += 1;
                h.last_delivery_unix_ns = Some(now_unix_ns());
                metrics::counter!(DELIVERIES, "endpoint" => name.clone()).increment(1);
                metrics::counter!(EVENTS_DELIVERED, "endpoint" => name.clone())
                    .increment(events as u64);
            }
        }
    }
}

/// Writes the acknowledged cursor to the file (a failure is logged: the
/// file keeps an older cursor, which only means sending again).
async fn persist(
    notifier: &Notifier,
    endpoint: &Arc<Endpoint>,
    generation: u64,
    last_write: &mut Instant,
) {
    let _cursor = endpoint.cursor_lock.lock().await;
    if endpoint.generation.load(Ordering::Acquire) != generation {
        return;
    }
    *last_write = Instant::now();
    let acked = endpoint.acked.load(Ordering::Acquire);
    if endpoint.durable.load(Ordering::Acquire) == acked {
        return;
    }
    if let Err(e) = notifier.write_cursor(endpoint, acked).await {
        tracing::warn!(endpoint = %endpoint.config.name, error = %e, "cannot write the cursor");
        drop(_cursor);
        // Not again at once, whatever the interval.
        tokio::time::sleep(LOG_READ_RETRY).await;
    }
}

/// The entries of a page up to `batch_max` events (at least one entry,
/// whole entries only) and the cursor after them.
fn cap_events(entries: &[FeedEntry], last_examined: u64, batch_max: usize) -> (&[FeedEntry], u64) {
    let mut events = 0;
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        events += e.events.len();
        bytes += e
            .events
            .iter()
            .map(|e| match e {
                crate::events::Event::ManifestPut { body, .. } => body.len(),
                _ => 0,
            })
            .sum::<usize>();
        if (events > batch_max || bytes > BATCH_MANIFEST_BYTES_MAX) && i > 0 {
            return (&entries[..i], entries[i - 1].seq);
        }
    }
    (entries, last_examined)
}

fn request_headers(endpoint: &Endpoint, body: &Bytes, content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in &endpoint.config.headers {
        // Checked when the configuration was validated.
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            headers.insert(k, v);
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("ferro/", env!("CARGO_PKG_VERSION"))),
    );
    if !endpoint.config.secret.is_empty() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, endpoint.config.secret.as_bytes());
        let tag = ring::hmac::sign(&key, body);
        if let Ok(v) = HeaderValue::from_str(&format!("sha256={}", hex::encode(tag.as_ref()))) {
            headers.insert(HeaderName::from_static(SIGNATURE_HEADER), v);
        }
    }
    headers
}

/// Posts until a 2xx (true), or until the stream is abandoned: the server
/// stops, or an operator moved the cursor (false).
async fn send_until_acknowledged(
    notifier: &Notifier,
    endpoint: &Endpoint,
    client: &mut Client,
    headers: &HeaderMap,
    body: Bytes,
    generation: u64,
) -> bool {
    let name = &endpoint.config.name;
    let mut backoff = endpoint.config.backoff_min;
    loop {
        if notifier.stop.is_cancelled() || endpoint.generation.load(Ordering::Acquire) != generation
        {
            return false;
        }
        let error = match client.post(headers, body.clone()).await {
            Ok(status) if status.is_success() => {
                let mut h = endpoint.health.lock();
                if h.failing {
                    tracing::info!(endpoint = %name, "notification endpoint recovered");
                }
                h.failing = false;
                h.failing_since_unix_ns = None;
                return true;
            }
            Ok(status) => format!("answered {status}"),
            Err(e) => e,
        };
        metrics::counter!(FAILURES, "endpoint" => name.clone()).increment(1);
        let wait = {
            let now = now_unix_ns();
            let mut h = endpoint.health.lock();
            h.failures += 1;
            h.last_error = Some(error.clone());
            h.last_error_unix_ns = Some(now);
            let since = *h.failing_since_unix_ns.get_or_insert(now);
            let failing_ns =
                u64::try_from(endpoint.config.failing_after.as_nanos()).unwrap_or(u64::MAX);
            if !h.failing && now.saturating_sub(since) >= failing_ns {
                h.failing = true;
                tracing::error!(endpoint = %name, error = %error, failing_after = ?endpoint.config.failing_after, "notification endpoint is failing; retrying at the maximum backoff");
            } else {
                tracing::debug!(endpoint = %name, error = %error, "notification delivery failed");
            }
            if h.failing {
                endpoint.config.backoff_max
            } else {
                backoff
            }
        };
        if !pause(notifier, endpoint, jitter(wait)).await {
            return false;
        }
        backoff = (backoff * 2).min(endpoint.config.backoff_max);
    }
}

/// Sleeps; false when woken by a stop or a cursor move instead.
async fn pause(notifier: &Notifier, endpoint: &Endpoint, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = endpoint.moved.notified() => false,
        _ = notifier.stop.cancelled() => false,
    }
}

/// Between half and all of `d`, at random: endpoints that failed together
/// do not retry together.
fn jitter(d: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random % span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, events: usize, body_bytes: usize) -> FeedEntry {
        let repo = crate::oci::RepoName::parse("a").unwrap();
        let put = crate::events::Event::ManifestPut {
            repo,
            digest: crate::oci::Digest::sha256_of(b"m"),
            media_type: String::new(),
            body: Bytes::from(vec![b' '; body_bytes]),
            blobs: vec![],
            manifests: vec![],
            subject: None,
            artifact_type: None,
        };
        FeedEntry {
            seq,
            time: String::new(),
            time_unix_ns: 0,
            actor: crate::events::Actor::system(),
            events: vec![put; events],
            indexes: (0..events as u32).collect(),
        }
    }

    #[test]
    fn batches_are_whole_entries_within_the_caps() {
        let entries = [entry(3, 2, 10), entry(5, 2, 10), entry(6, 2, 10)];
        let (batch, next) = cap_events(&entries, 9, 4);
        assert_eq!((batch.len(), next), (2, 5), "4 events: two entries");
        let (batch, next) = cap_events(&entries, 9, 100);
        assert_eq!(
            (batch.len(), next),
            (3, 9),
            "all: the cursor goes past skipped ones"
        );
        let (batch, next) = cap_events(&entries[..1], 9, 1);
        assert_eq!(
            (batch.len(), next),
            (1, 9),
            "an entry larger than the cap goes whole"
        );
        let big = [entry(1, 1, BATCH_MANIFEST_BYTES_MAX), entry(2, 1, 10)];
        assert_eq!(cap_events(&big, 2, 100).0.len(), 1, "bytes cap");
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j < Duration::from_millis(100),
                "{j:?}"
            );
        }
    }
}
