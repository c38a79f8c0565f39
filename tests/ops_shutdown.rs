//! Graceful shutdown on SIGTERM: uploads running when it arrives lose
//! nothing that was acknowledged; a request in flight finishes; a client
//! that stalls cannot hold the shutdown past the drain timeout; the exit is
//! clean and the next start finds everything.
mod auth_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth_support::*;
use reqwest::{Method, StatusCode};

/// What a client was told: chunk offsets of open uploads and finished
/// blobs.
#[derive(Default)]
struct Acknowledged {
    /// (repo, upload location, acknowledged size)
    uploads: Vec<(String, String, u64)>,
    /// (repo, digest)
    blobs: Vec<(String, String)>,
}

/// Chunked uploads in a loop until the server stops answering.
async fn uploader(base: String, worker: usize, acked: Arc<Mutex<Acknowledged>>) {
    let http = client();
    let repo = format!("load/w{worker}");
    for round in 0.. {
        let Ok(r) = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
        else {
            return;
        };
        if r.status() != StatusCode::ACCEPTED {
            return;
        }
        let location = header(&r, "location");
        let mut whole = Vec::new();
        for chunk in 0..4u8 {
            let bytes = pseudo(
                64 * 1024,
                (worker * 1000 + round * 10 + chunk as usize) as u64,
            );
            let Ok(r) = http
                .patch(format!("{base}{location}"))
                .header("Content-Type", "application/octet-stream")
                .body(bytes.clone())
                .send()
                .await
            else {
                return;
            };
            if r.status() != StatusCode::ACCEPTED {
                return;
            }
            whole.extend_from_slice(&bytes);
            let mut a = acked.lock().unwrap();
            a.uploads.retain(|(_, l, _)| *l != location);
            a.uploads
                .push((repo.clone(), location.clone(), whole.len() as u64));
        }
        let digest = sha256(&whole);
        let Ok(r) = http
            .put(format!("{base}{location}?digest={digest}"))
            .send()
            .await
        else {
            return;
        };
        if r.status() != StatusCode::CREATED {
            return;
        }
        let mut a = acked.lock().unwrap();
        a.uploads.retain(|(_, l, _)| *l != location);
        a.blobs.push((repo.clone(), digest));
    }
}

fn pseudo(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_uploads_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ferro::start(dir.path(), None, &[], &[]);
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let workers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(uploader(server.url.clone(), w, acked.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(40)));
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        server.log_text()
    );
    for w in workers {
        w.await.unwrap();
    }
    let log = server.log_text();
    assert!(log.contains("stopped accepting"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    let (uploads, blobs) = {
        let a = acked.lock().unwrap();
        (a.uploads.clone(), a.blobs.clone())
    };
    assert!(
        !blobs.is_empty() || !uploads.is_empty(),
        "the load made some progress before the signal"
    );

    let server = server.restart();
    let http = client();
    for (repo, digest) in &blobs {
        let r = send(
            &http,
            &server.url,
            Method::HEAD,
            &format!("/v2/{repo}/blobs/{digest}"),
            Cred::None,
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "acknowledged blob {repo}@{digest} is there"
        );
    }
    for (_, location, size) in &uploads {
        let r = send(&http, &server.url, Method::GET, location, Cred::None).await;
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "acknowledged upload {location}"
        );
        let range = header(&r, "range");
        let end: u64 = range.trim_start_matches("0-").parse().unwrap();
        assert!(
            end + 1 >= *size,
            "{location}: {range} but {size} bytes were acknowledged"
        );
    }
    eprintln!(
        "{} blobs and {} open uploads acknowledged, all there",
        blobs.len(),
        uploads.len()
    );
}

#[tokio::test]
async fn an_in_flight_request_finishes_and_a_stalled_one_cannot_hold_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ferro::start(
        dir.path(),
        None,
        &[
            "--shutdown-drain-timeout-secs",
            "3",
            "--body-read-timeout-ms",
            "60000",
        ],
        &[],
    );
    let http = client();
    let mut locations = Vec::new();
    for _ in 0..2 {
        let r = send(
            &http,
            &server.url,
            Method::POST,
            "/v2/app/blobs/uploads/",
            Cred::None,
        )
        .await;
        locations.push(header(&r, "location"));
    }
    let addr = server.addr.clone();
    let connect = |location: &str| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head =
            format!("PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 200000\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[5u8; 100_000]).unwrap();
        s
    };
    // Both requests are in flight, half their body sent.
    let mut finishing = connect(&locations[0]);
    let mut stalled = connect(&locations[1]);
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(server.wait_for_log("stopped accepting", Duration::from_secs(5)));
    // The first sends the rest of its body after the signal and is answered.
    finishing.write_all(&[5u8; 100_000]).unwrap();
    let mut answer = vec![0u8; 1024];
    let n = finishing.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("range: 0-199999"),
        "{answer}"
    );
    // The second never finishes: the drain timeout ends it.
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = server.log_text();
    assert!(log.contains("after the drain timeout"), "{log}");
    drop(stalled.write_all(b"late"));

    let server = server.restart();
    let r = send(&http, &server.url, Method::GET, &locations[0], Cred::None).await;
    assert_eq!(
        header(&r, "range"),
        "0-199999",
        "the finished chunk is durable"
    );
    let r = send(&http, &server.url, Method::GET, &locations[1], Cred::None).await;
    assert_eq!(
        header(&r, "range"),
        "0-0",
        "the stalled chunk was never acknowledged"
    );
}

/// A feed long-poll waiting for a commit does not hold the shutdown: it is
/// answered (with an empty page) as soon as the shutdown starts, well
/// before the drain timeout, and the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_feed_long_poll_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ferro::start(
        dir.path(),
        None,
        &["--shutdown-drain-timeout-secs", "30"],
        &[],
    );
    let url = format!("{}/v2/_ferro/events/feed?after=0&wait=60", server.url);
    let polling = tokio::spawn(async move {
        let r = client().get(url).send().await.unwrap();
        let status = r.status();
        (status, r.text().await.unwrap())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!polling.is_finished(), "the long-poll is waiting");
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(40));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the shutdown waited {:?} for the long-poll",
        started.elapsed()
    );
    let (status, body) = polling.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!server.log_text().contains("after the drain timeout"));
}
