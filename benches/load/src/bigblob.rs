//! One large blob up and down: a monolithic upload (POST, then one PUT
//! whose body is streamed), a chunked upload (PATCH after PATCH), and a
//! download checked while it is read (`content::Check`). The server's peak RSS is taken around
//! each transfer: VmHWM after resetting it, and VmRSS sampled meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};

use crate::content::{BigBlob, Check, Verifier};
use crate::http::{with_query, Body, BoxError, Client, Reply};
use crate::ops;
use crate::servers::{proc_stats, reset_peak_rss};
use crate::stats::{Spent, Window};
use crate::workloads::Outcome;

/// Longest one transfer may take before the run fails.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
const RSS_SAMPLE_PERIOD: Duration = Duration::from_millis(10);
const REPO: &str = "bench/big";
/// Frames queued between the download and its checking thread.
const CHECK_QUEUE_FRAMES: usize = 256;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Transfer {
    pub bytes: u64,
    /// Decimal megabytes (10^6 bytes) per second.
    pub mb_per_second: f64,
    pub peak_rss_bytes: u64,
    /// The server's RSS when the transfer started: the peak less this is
    /// what the transfer itself added (the rest is the registry's state
    /// and caches from the workloads before).
    pub rss_before_bytes: u64,
    /// For uploads: time from the last body byte handed to the connection
    /// to the response, summed over the requests (the server's flush,
    /// fsync, rename and log write after the body arrived).
    pub server_tail_seconds: f64,
    pub spent: Spent,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BlobResults {
    pub chunk_bytes: u64,
    pub upload_monolithic: Outcome<Transfer>,
    pub upload_chunked: Outcome<Transfer>,
    /// The blob pushed last, downloaded as soon as its upload is done:
    /// what a user who pushes an image and then pulls it meets, while the
    /// server may still be writing the blob back to the disk.
    pub download_after_upload: Outcome<Transfer>,
    pub download: Outcome<Transfer>,
}

/// Uploads `mono` in one PUT and `chunked` in `chunk_bytes` PATCHes, then
/// downloads the one pushed last right away, then the other (or the
/// monolithic one alone when the chunked upload was refused).
pub async fn run(
    client: &mut Client,
    pid: u32,
    mono: &BigBlob,
    chunked: &BigBlob,
    chunk_bytes: u64,
    check: Check,
) -> Result<BlobResults, BoxError> {
    eprintln!("ferro-load:   monolithic upload");
    let upload_monolithic = measured(pid, mono.len, upload_monolithic(client, mono)).await?;
    eprintln!("ferro-load:   chunked upload");
    let upload_chunked = measured(
        pid,
        chunked.len,
        upload_chunked(client, chunked, chunk_bytes),
    )
    .await?;
    // Right after the uploads, with nothing in between: the blob pushed
    // last first.
    let download_after_upload = match &upload_chunked {
        Outcome::Done(_) => {
            eprintln!("ferro-load:   download of the blob just pushed");
            measured(pid, chunked.len, download(client, chunked, check)).await?
        }
        Outcome::Unable(why) => Outcome::Unable(why.clone()),
    };
    let source = match (&upload_monolithic, &upload_chunked) {
        (Outcome::Done(_), _) => Some(mono),
        (_, Outcome::Done(_)) => Some(chunked),
        _ => None,
    };
    let download = match source {
        Some(blob) => {
            eprintln!("ferro-load:   download");
            measured(pid, blob.len, download(client, blob, check)).await?
        }
        None => Outcome::Unable("nothing uploaded to download".into()),
    };
    Ok(BlobResults {
        chunk_bytes,
        upload_monolithic,
        upload_chunked,
        download_after_upload,
        download,
    })
}

/// Runs `transfer` with the server's peak RSS and CPU time measured.
async fn measured(
    pid: u32,
    bytes: u64,
    transfer: impl std::future::Future<Output = Result<Outcome<Duration>, BoxError>>,
) -> Result<Outcome<Transfer>, BoxError> {
    let rss_before_bytes = proc_stats(pid).map_or(0, |s| s.rss_bytes);
    let hwm_reset = reset_peak_rss(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            // Bounded by the transfer's own timeout: `stop` is always set.
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = proc_stats(pid) {
                    peak = peak.max(s.rss_bytes);
                }
                std::thread::sleep(RSS_SAMPLE_PERIOD);
            }
            peak
        })
    };
    let window = Window::open(pid);
    let outcome = tokio::time::timeout(TRANSFER_TIMEOUT, transfer).await;
    let spent = window.close();
    stop.store(true, Ordering::Relaxed);
    let sampled_peak = sampler.join().unwrap_or(0);
    let outcome = outcome
        .map_err(|_| format!("a {bytes}-byte transfer took over {TRANSFER_TIMEOUT:?}"))??;
    let hwm = if hwm_reset {
        proc_stats(pid).map_or(0, |s| s.hwm_bytes)
    } else {
        0
    };
    Ok(match outcome {
        Outcome::Done(tail) => Outcome::Done(Transfer {
            bytes,
            mb_per_second: bytes as f64 / spent.seconds / 1e6,
            peak_rss_bytes: hwm.max(sampled_peak),
            rss_before_bytes,
            server_tail_seconds: tail.as_secs_f64(),
            spent,
        }),
        Outcome::Unable(why) => Outcome::Unable(why),
    })
}

/// A body of `pieces`; `ended` is set when the last one is handed over.
fn streamed(pieces: Vec<Bytes>, ended: Arc<Mutex<Option<Instant>>>) -> Body {
    let last = pieces.len().saturating_sub(1);
    StreamBody::new(stream::iter(pieces.into_iter().enumerate().map(
        move |(i, b)| {
            if i == last {
                *ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            Ok::<_, BoxError>(Frame::data(b))
        },
    )))
    .boxed_unsync()
}

/// Sends a request with a streamed body; a server that answers with an
/// error status or drops the connection has refused it. Also returns the
/// time from the end of the body to the response head.
async fn send_streamed(
    client: &mut Client,
    method: Method,
    path: &str,
    headers: &[(hyper::header::HeaderName, String)],
    pieces: Vec<Bytes>,
) -> Result<Result<(Reply, Duration), String>, BoxError> {
    let mut builder = Request::builder().method(method.clone()).uri(path);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let ended = Arc::new(Mutex::new(None));
    let request = builder.body(streamed(pieces, ended.clone()))?;
    let response = match client.send(request).await {
        Ok(r) => r,
        Err(e) => {
            client.reset();
            return Ok(Err(format!("refused (connection dropped: {e})")));
        }
    };
    let answered = Instant::now();
    let tail = ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map_or(Duration::ZERO, |t| answered.saturating_duration_since(t));
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            client.reset();
            return Ok(Err(format!("refused (connection dropped: {e})")));
        }
    };
    Ok(Ok((
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        tail,
    )))
}

fn refused(reply: &Reply) -> String {
    // The server may not have read the rest of our body: start afresh.
    format!("refused ({})", reply.status)
}

async fn upload_monolithic(
    client: &mut Client,
    blob: &BigBlob,
) -> Result<Outcome<Duration>, BoxError> {
    let location = ops::start_upload(client, REPO).await?;
    let path = with_query(&location, "digest", &blob.digest);
    let headers = [
        (CONTENT_LENGTH, blob.len.to_string()),
        (CONTENT_TYPE, "application/octet-stream".to_owned()),
    ];
    let (reply, tail) = match send_streamed(
        client,
        Method::PUT,
        &path,
        &headers,
        blob.pieces(0, blob.len),
    )
    .await?
    {
        Ok(r) => r,
        Err(why) => return Ok(Outcome::Unable(why)),
    };
    if reply.status != StatusCode::CREATED
        && (reply.status.is_client_error() || reply.status.is_server_error())
    {
        client.reset();
        return Ok(Outcome::Unable(refused(&reply)));
    }
    let what = format!("PUT {}-byte blob (monolithic)", blob.len);
    ops::expect_status(&reply, StatusCode::CREATED, &what)?;
    ops::expect_digest_header(&reply, &blob.digest, &what)?;
    Ok(Outcome::Done(tail))
}

async fn upload_chunked(
    client: &mut Client,
    blob: &BigBlob,
    chunk_bytes: u64,
) -> Result<Outcome<Duration>, BoxError> {
    let mut location = ops::start_upload(client, REPO).await?;
    let mut start = 0u64;
    let mut tails = Duration::ZERO;
    while start < blob.len {
        let end = (start + chunk_bytes).min(blob.len);
        let headers = [
            (CONTENT_LENGTH, (end - start).to_string()),
            (CONTENT_RANGE, format!("{start}-{}", end - 1)),
            (CONTENT_TYPE, "application/octet-stream".to_owned()),
        ];
        let (reply, tail) = match send_streamed(
            client,
            Method::PATCH,
            &location,
            &headers,
            blob.pieces(start, end),
        )
        .await?
        {
            Ok(r) => r,
            Err(why) => return Ok(Outcome::Unable(why)),
        };
        if reply.status.is_client_error() || reply.status.is_server_error() {
            client.reset();
            return Ok(Outcome::Unable(format!(
                "{} at offset {start}",
                refused(&reply)
            )));
        }
        let what = format!(
            "PATCH bytes {start}-{} of a {}-byte blob",
            end - 1,
            blob.len
        );
        ops::expect_status(&reply, StatusCode::ACCEPTED, &what)?;
        let range = reply.header("range").unwrap_or("");
        if range != format!("0-{}", end - 1) {
            return Err(format!("{what}: Range {range:?}, expected \"0-{}\"", end - 1).into());
        }
        location = ops::location(&reply, &what)?;
        tails += tail;
        start = end;
    }
    let path = with_query(&location, "digest", &blob.digest);
    let closing = Instant::now();
    let reply = client
        .call(Method::PUT, &path, &[], Some(Bytes::new()))
        .await?;
    tails += closing.elapsed();
    let what = format!("PUT closing the chunked upload of {}", blob.digest);
    if reply.status.is_client_error() || reply.status.is_server_error() {
        return Ok(Outcome::Unable(refused(&reply)));
    }
    ops::expect_status(&reply, StatusCode::CREATED, &what)?;
    ops::expect_digest_header(&reply, &blob.digest, &what)?;
    // The blob is there, whole: its HEAD says so.
    let path = format!("/v2/{REPO}/blobs/{}", blob.digest);
    let reply = client.call(Method::HEAD, &path, &[], None).await?;
    let what = format!("HEAD {path}");
    ops::expect_status(&reply, StatusCode::OK, &what)?;
    ops::expect_digest_header(&reply, &blob.digest, &what)?;
    if reply.header("content-length") != Some(blob.len.to_string().as_str()) {
        return Err(format!(
            "{what}: Content-Length {:?}, expected {}",
            reply.header("content-length"),
            blob.len
        )
        .into());
    }
    Ok(Outcome::Done(tails))
}

/// Reads `body`, `blob`'s bytes, checking them with `check` as they
/// arrive: the download's receiving end, also used for the ceiling of a
/// static file server (`ceilings`).
pub async fn receive_checked(
    mut body: Incoming,
    blob: &BigBlob,
    check: Check,
    what: &str,
) -> Result<(), BoxError> {
    // The check runs on its own thread, fed as frames arrive, so receiving
    // and checking overlap instead of taking turns on one core.
    let (frames, mut to_check) = tokio::sync::mpsc::channel::<Bytes>(CHECK_QUEUE_FRAMES);
    let mut verifier = Verifier::new(check, blob);
    let checking = std::thread::spawn(move || {
        while let Some(data) = to_check.blocking_recv() {
            verifier.update(&data);
        }
        verifier
    });
    let mut received = 0u64;
    let started = Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{what}: body cut after {received} bytes: {e}"))?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            frames
                .send(data)
                .await
                .map_err(|_| format!("{what}: the checking thread stopped"))?;
        }
        if started.elapsed() > TRANSFER_TIMEOUT {
            return Err(format!("{what}: slower than {TRANSFER_TIMEOUT:?}").into());
        }
    }
    drop(frames);
    checking
        .join()
        .map_err(|_| format!("{what}: the checking thread panicked"))?
        .finish(blob)
        .map_err(|why| format!("{what}: {why}"))?;
    Ok(())
}

async fn download(
    client: &mut Client,
    blob: &BigBlob,
    check: Check,
) -> Result<Outcome<Duration>, BoxError> {
    let path = format!("/v2/{REPO}/blobs/{}", blob.digest);
    let what = format!("GET {path}");
    let request = Request::get(&path).body(crate::http::empty())?;
    let response = client
        .send(request)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = response.status();
    let digest_header = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != StatusCode::OK {
        return Err(format!("{what}: expected 200, got {status}").into());
    }
    if digest_header.as_deref() != Some(blob.digest.as_str()) {
        return Err(format!(
            "{what}: Docker-Content-Digest {digest_header:?}, expected {}",
            blob.digest
        )
        .into());
    }
    receive_checked(response.into_body(), blob, check, &what).await?;
    Ok(Outcome::Done(Duration::ZERO))
}
