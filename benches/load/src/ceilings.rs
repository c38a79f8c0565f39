//! The machine's ceilings, measured in the same run as the registries:
//! sha256 on one core, loopback TCP bandwidth, and the request rate of a
//! trivial HTTP server (nginx serving a small file) — once as wrk sees it,
//! once as this benchmark's own client sees it, which shows whether the
//! client can drive a server harder than the registries are driven — and,
//! with `--blob`, nginx serving the large blob as a file to this
//! benchmark's downloading client: what a static file server gets through
//! that client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::content::{BigBlob, Check, Verifier};
use crate::http::{BoxError, Client};
use crate::servers::{cpu_seconds, free_port, log_tail, spawn_tied, stop_child};
use crate::stats::{run_workers, Latencies, Ticket};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceilings {
    /// sha2 over a 64 MiB buffer on one core, decimal MB/s.
    pub sha256_mb_per_second: f64,
    /// One sender thread to one receiver thread over 127.0.0.1, MB/s.
    pub loopback_mb_per_second: f64,
    /// The same with the receiver hashing what it reads (sha256).
    pub loopback_hashed_mb_per_second: f64,
    /// The same with the receiver comparing what it reads with the bytes
    /// sent, byte by byte.
    pub loopback_compared_mb_per_second: f64,
    /// Median time to append 200 bytes to a file and `fdatasync` it, in
    /// the directory the servers' data goes to: what one durable log
    /// write costs on this disk at that moment.
    pub fdatasync_append_us: f64,
    /// Median time to write a 16 KiB file, `fsync` it, rename it and
    /// `fsync` its directory: what making one small blob durable costs.
    pub small_file_commit_us: f64,
    /// Writing the large blob's size to a new file in 1 MiB blocks (the
    /// server's block size) into the page cache, then `fsync`: MB/s of
    /// the writes alone, and of writes plus fsync. A durable upload can be
    /// no faster than the second.
    pub file_write_mb_per_second: f64,
    pub file_write_fsync_mb_per_second: f64,
    /// The same size written with O_DIRECT (aligned 1 MiB blocks, no page
    /// cache), then `fsync`.
    pub file_write_direct_fsync_mb_per_second: f64,
    /// nginx serving a 512-byte file, measured with wrk (GET).
    pub nginx_wrk_requests_per_second: Option<f64>,
    pub nginx_wrk_command: Option<String>,
    /// The same nginx, HEAD of the same file, measured with this client.
    pub nginx_client_head_requests_per_second: Option<f64>,
    /// nginx's CPU time (master and workers) per request in that run: the
    /// floor a server pays per request here, mostly the kernel's TCP.
    pub nginx_cpu_us_per_request: Option<f64>,
    /// nginx serving the large blob as a file (written and fsynced just
    /// before, as a registry keeps a pushed blob), downloaded and checked
    /// by this benchmark's client as a blob download is, MB/s: with
    /// nginx's defaults (`read` and `write` through 32 KiB buffers), and
    /// with `sendfile on`. `None` without `--blob`.
    pub nginx_download_mb_per_second: Option<f64>,
    pub nginx_sendfile_download_mb_per_second: Option<f64>,
    pub notes: Vec<String>,
}

pub fn sha256_rate(budget: Duration) -> f64 {
    const BUFFER_BYTES: usize = 64 * 1024 * 1024;
    const ROUNDS_MAX: usize = 32;
    let buffer: Vec<u8> = (0..BUFFER_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    std::hint::black_box(Sha256::digest(&buffer)); // warm up
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS_MAX && (rounds == 0 || started.elapsed() < budget) {
        std::hint::black_box(Sha256::digest(std::hint::black_box(&buffer)));
        rounds += 1;
    }
    (rounds * BUFFER_BYTES) as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// One sender thread to one receiver thread over 127.0.0.1, the sender
/// writing the pieces of `blob` over and over; with `check`, what is
/// received is also checked (on a third thread) by the download's own
/// [`Verifier`], as the benchmark's download does.
pub fn loopback_rate(
    budget: Duration,
    blob: &BigBlob,
    check: Option<Check>,
) -> std::io::Result<f64> {
    const CHECK_QUEUE_BUFFERS: usize = 64;
    const BUFFER_BYTES: usize = 1024 * 1024;
    const TOTAL_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let verifier = check.map(|c| Verifier::new(c, blob));
    let receiver = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        let (mut socket, _) = listener.accept()?;
        // The check, when asked for, runs on a third thread fed with the
        // buffers read (and handed back), as the benchmark's download does.
        let (to_check, queue) =
            std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(CHECK_QUEUE_BUFFERS);
        let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
        let checked = verifier.is_some();
        let checking = std::thread::spawn(move || {
            let mut verifier = verifier;
            for (buffer, n) in queue {
                if let Some(v) = &mut verifier {
                    v.update(&buffer[..n]);
                }
                let _ = give_back.send(buffer);
            }
            verifier
        });
        let mut received = 0u64;
        let mut buffer = vec![0u8; BUFFER_BYTES];
        let started = Instant::now();
        loop {
            let n = socket.read(&mut buffer)?;
            if n == 0 {
                drop(to_check);
                let verifier = checking
                    .join()
                    .map_err(|_| std::io::Error::other("the check panicked"))?;
                let elapsed = started.elapsed();
                if let Some(Verifier::Bytes {
                    first_difference: Some(at),
                    ..
                }) = verifier
                {
                    return Err(std::io::Error::other(format!("byte {at} arrived changed")));
                }
                std::hint::black_box(verifier);
                return Ok((received, elapsed));
            }
            received += n as u64;
            if checked {
                let next = returned
                    .try_recv()
                    .unwrap_or_else(|_| vec![0u8; BUFFER_BYTES]);
                let full = std::mem::replace(&mut buffer, next);
                to_check
                    .send((full, n))
                    .map_err(|_| std::io::Error::other("the check stopped"))?;
            }
        }
    });
    let mut socket = TcpStream::connect(addr)?;
    let pieces = blob.pieces(0, blob.len);
    let started = Instant::now();
    let mut sent = 0u64;
    'sending: while sent < TOTAL_BYTES_MAX {
        for piece in &pieces {
            if started.elapsed() >= budget {
                break 'sending;
            }
            socket.write_all(piece)?;
            sent += piece.len() as u64;
        }
    }
    drop(socket);
    let (received, elapsed) = receiver
        .join()
        .map_err(|_| std::io::Error::other("receiver panicked"))??;
    Ok(received as f64 / elapsed.as_secs_f64() / 1e6)
}

/// Medians of (append + fdatasync, small file commit) in microseconds.
pub fn disk_sync_us(dir: &Path, budget: Duration) -> std::io::Result<(f64, f64)> {
    use std::os::unix::fs::OpenOptionsExt;
    const ROUNDS_MAX: usize = 200;
    let tmp = tempfile::Builder::new()
        .prefix("ferro-load-disk-")
        .tempdir_in(dir)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(tmp.path().join("log"))?;
    let started = Instant::now();
    let mut appends = Vec::new();
    while appends.len() < ROUNDS_MAX && started.elapsed() < budget {
        let t = Instant::now();
        log.write_all(&[b'x'; 200])?;
        log.sync_data()?;
        appends.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let staging = tmp.path().join("staging");
    let blobs = tmp.path().join("blobs");
    std::fs::create_dir(&staging)?;
    std::fs::create_dir(&blobs)?;
    let started = Instant::now();
    let mut commits = Vec::new();
    let block = vec![b'y'; 16 * 1024];
    while commits.len() < ROUNDS_MAX && started.elapsed() < budget {
        let t = Instant::now();
        let name = commits.len().to_string();
        let mut f = std::fs::File::create(staging.join(&name))?;
        f.write_all(&block)?;
        f.sync_all()?;
        std::fs::rename(staging.join(&name), blobs.join(&name))?;
        std::fs::File::open(&blobs)?.sync_all()?;
        commits.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((median(appends), median(commits)))
}

/// (write MB/s, write + fsync MB/s) of `bytes` to a new file in `dir`.
pub fn file_write_rate(dir: &Path, bytes: u64) -> std::io::Result<(f64, f64)> {
    const BLOCK_BYTES: usize = 1024 * 1024;
    let tmp = tempfile::Builder::new()
        .prefix("ferro-load-write-")
        .tempdir_in(dir)?;
    let block: Vec<u8> = (0..BLOCK_BYTES).map(|i| (i % 251) as u8).collect();
    let mut f = std::fs::File::create(tmp.path().join("blob"))?;
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(BLOCK_BYTES as u64) as usize;
        f.write_all(&block[..n])?;
        written += n as u64;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    f.sync_all()?;
    let total_seconds = started.elapsed().as_secs_f64();
    Ok((
        bytes as f64 / write_seconds / 1e6,
        bytes as f64 / total_seconds / 1e6,
    ))
}

/// MB/s of `bytes` written with O_DIRECT to a new file in `dir`, then fsync.
pub fn file_write_direct_rate(dir: &Path, bytes: u64) -> std::io::Result<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK_BYTES: usize = 1024 * 1024;
    const ALIGN_BYTES: usize = 4096;
    let tmp = tempfile::Builder::new()
        .prefix("ferro-load-direct-")
        .tempdir_in(dir)?;
    let layout = std::alloc::Layout::from_size_align(BLOCK_BYTES, ALIGN_BYTES)
        .map_err(std::io::Error::other)?;
    // SAFETY: the layout has a non-zero size; the block is freed below.
    let block = unsafe { std::alloc::alloc_zeroed(layout) };
    if block.is_null() {
        return Err(std::io::Error::other("cannot allocate an aligned block"));
    }
    let result = (|| {
        // SAFETY: `block` points to BLOCK_BYTES initialised bytes.
        let slice = unsafe { std::slice::from_raw_parts(block, BLOCK_BYTES) };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(tmp.path().join("blob"))?;
        let started = Instant::now();
        let blocks = bytes.div_ceil(BLOCK_BYTES as u64);
        for _ in 0..blocks {
            f.write_all(slice)?;
        }
        f.sync_all()?;
        Ok(blocks as f64 * BLOCK_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6)
    })();
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(block, layout) };
    result
}

/// nginx in the foreground with its own prefix, one worker per core,
/// no access log, keep-alive connections never recycled.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(work_root: &Path) -> Result<Nginx, BoxError> {
        let dir = tempfile::Builder::new()
            .prefix("ferro-load-nginx-")
            .tempdir_in(work_root)?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("www"))?;
        std::fs::write(d.join("www/small"), vec![b'x'; 512])?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let p = d.display();
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "worker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n{user}\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
                 client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
                 uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
                 server {{ listen {addr}; root {p}/www;\n\
                 location = /big-sendfile {{ sendfile on; tcp_nopush on; }} }}\n}}\n"
            ),
        )?;
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-g")
            .arg("daemon off;");
        let child = spawn_tied(&mut command, &d.join("stderr.log"))
            .map_err(|e| format!("cannot start nginx: {e}"))?;
        let mut nginx = Nginx { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!(
                    "nginx exited ({status}): {}{}",
                    log_tail(&nginx.dir.path().join("stderr.log"), 1000),
                    log_tail(&nginx.dir.path().join("error.log"), 1000)
                )
                .into());
            }
            if Instant::now() > deadline {
                stop_child(&mut nginx.child);
                return Err("nginx did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Nginx {
    /// CPU seconds of the master and its workers.
    fn cpu_seconds(&self) -> f64 {
        let master = self.child.id();
        let mut total = cpu_seconds(&format!("/proc/{master}/stat")).unwrap_or(0.0);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return total;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                total += cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0);
            }
        }
        total
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master makes it stop its workers too.
        stop_child(&mut self.child);
    }
}

fn wrk(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
) -> Result<(f64, String), BoxError> {
    let args = [
        "-t2".to_owned(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        format!("http://{addr}/small"),
    ];
    let command = format!("wrk {}", args.join(" "));
    let out = Command::new("wrk")
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "{command}: no Requests/sec in its output:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("{command}: errors:\n{text}").into());
    }
    Ok((rate, command))
}

/// HEAD /small at `concurrency` with this benchmark's client: requests/s
/// and the requests made.
async fn client_head(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> Result<(f64, usize), BoxError> {
    let ticket = Ticket::new(usize::MAX, duration);
    let started = Instant::now();
    let per_worker = run_workers(concurrency, |_| {
        let ticket = ticket.clone();
        async move {
            let mut client = Client::new(addr);
            let mut latencies = Latencies::default();
            while ticket.take().is_some() {
                let t = Instant::now();
                let reply = client.call(Method::HEAD, "/small", &[], None).await?;
                if reply.status != StatusCode::OK {
                    return Err(format!("HEAD /small on nginx: {}", reply.status).into());
                }
                latencies.record(t);
            }
            Ok(latencies)
        }
    })
    .await?;
    let n = Latencies::merge(per_worker).len();
    Ok((n as f64 / started.elapsed().as_secs_f64(), n))
}

/// `blob` written to nginx's root as a file and fsynced, then downloaded
/// twice by this benchmark's client, checked with `check` as the blob
/// workload checks: with nginx's defaults, then with `sendfile on`. MB/s
/// of each, from the request to the last byte checked.
async fn nginx_downloads(
    nginx: &Nginx,
    blob: &BigBlob,
    check: Check,
) -> Result<(f64, f64), BoxError> {
    let www = nginx.dir.path().join("www");
    let mut file = std::fs::File::create(www.join("big"))?;
    for piece in blob.pieces(0, blob.len) {
        file.write_all(&piece)?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::hard_link(www.join("big"), www.join("big-sendfile"))?;
    let mut client = Client::new(nginx.addr);
    let plain = download_file(&mut client, "/big", blob, check).await?;
    let sendfile = download_file(&mut client, "/big-sendfile", blob, check).await?;
    Ok((plain, sendfile))
}

async fn download_file(
    client: &mut Client,
    path: &str,
    blob: &BigBlob,
    check: Check,
) -> Result<f64, BoxError> {
    let what = format!("GET {path} on nginx");
    let started = Instant::now();
    let request = hyper::Request::get(path).body(crate::http::empty())?;
    let response = client
        .send(request)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("{what}: expected 200, got {}", response.status()).into());
    }
    crate::bigblob::receive_checked(response.into_body(), blob, check, &what).await?;
    Ok(blob.len as f64 / started.elapsed().as_secs_f64() / 1e6)
}

pub async fn measure(
    work_root: &Path,
    http_duration: Duration,
    concurrency: usize,
    file_bytes: u64,
    download: Option<(&BigBlob, Check)>,
) -> Ceilings {
    let sha256_mb_per_second = sha256_rate(Duration::from_secs(2));
    let mut notes = Vec::new();
    // Sent over and over: one pattern's worth, as the large blob is made.
    let sent = BigBlob::new((BigBlob::PATTERN_BYTES_MAX / 1024 / 1024) as u64, 3);
    let mut loopback = |check: Option<Check>, what: &str| {
        loopback_rate(Duration::from_secs(2), &sent, check).unwrap_or_else(|e| {
            notes.push(format!("{what}: {e}"));
            0.0
        })
    };
    let loopback_mb_per_second = loopback(None, "loopback");
    let loopback_hashed_mb_per_second = loopback(Some(Check::Sha256), "loopback, hashed");
    let loopback_compared_mb_per_second = loopback(Some(Check::Bytes), "loopback, compared");
    let (fdatasync_append_us, small_file_commit_us) =
        disk_sync_us(work_root, Duration::from_secs(3)).unwrap_or_else(|e| {
            notes.push(format!("disk: {e}"));
            (0.0, 0.0)
        });
    let file_write_direct_fsync_mb_per_second = file_write_direct_rate(work_root, file_bytes)
        .unwrap_or_else(|e| {
            notes.push(format!("O_DIRECT write: {e}"));
            0.0
        });
    let (file_write_mb_per_second, file_write_fsync_mb_per_second) =
        file_write_rate(work_root, file_bytes).unwrap_or_else(|e| {
            notes.push(format!("file write: {e}"));
            (0.0, 0.0)
        });
    let (mut wrk_rate, mut wrk_command, mut client_rate, mut nginx_cpu) = (None, None, None, None);
    let (mut nginx_download, mut nginx_sendfile_download) = (None, None);
    match Nginx::start(work_root) {
        Ok(nginx) => {
            match wrk(nginx.addr, concurrency, http_duration) {
                Ok((rate, command)) => {
                    wrk_rate = Some(rate);
                    wrk_command = Some(command);
                }
                Err(e) => notes.push(format!("wrk: {e}")),
            }
            let cpu0 = nginx.cpu_seconds();
            match client_head(nginx.addr, concurrency, http_duration).await {
                Ok((rate, requests)) => {
                    client_rate = Some(rate);
                    nginx_cpu = Some((nginx.cpu_seconds() - cpu0) * 1e6 / requests.max(1) as f64);
                }
                Err(e) => notes.push(format!("client against nginx: {e}")),
            }
            if let Some((blob, check)) = download {
                match nginx_downloads(&nginx, blob, check).await {
                    Ok((plain, sendfile)) => {
                        nginx_download = Some(plain);
                        nginx_sendfile_download = Some(sendfile);
                    }
                    Err(e) => notes.push(format!("download from nginx: {e}")),
                }
            }
        }
        Err(e) => notes.push(format!("nginx: {e}")),
    }
    Ceilings {
        sha256_mb_per_second,
        loopback_mb_per_second,
        loopback_hashed_mb_per_second,
        loopback_compared_mb_per_second,
        fdatasync_append_us,
        small_file_commit_us,
        file_write_mb_per_second,
        file_write_fsync_mb_per_second,
        file_write_direct_fsync_mb_per_second,
        nginx_wrk_requests_per_second: wrk_rate,
        nginx_wrk_command: wrk_command,
        nginx_client_head_requests_per_second: client_rate,
        nginx_cpu_us_per_request: nginx_cpu,
        nginx_download_mb_per_second: nginx_download,
        nginx_sendfile_download_mb_per_second: nginx_sendfile_download,
        notes,
    }
}
