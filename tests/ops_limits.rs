//! Limits and timeouts against the real server: an over-long request head
//! (431), a client that stalls in its head (connection closed) or mid-body
//! (the chunk fails, the upload session is free again), too many uploads
//! at once or too many sessions open (429 TOOMANYREQUESTS), and idle
//! uploads cancelled on the record with their staging files removed.
mod auth_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use auth_support::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads until the peer closes or the head of an answer is in; returns
/// what came.
fn read_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if out.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn start_upload(http: &reqwest::Client, server: &Ferro, repo: &str) -> String {
    let r = send(
        http,
        &server.url,
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/"),
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    header(&r, "location")
}

/// A PATCH that announces `announced` bytes, sends `sent` of them, and
/// then says nothing more.
fn stalled_patch(addr: &str, location: &str, announced: usize, sent: usize) -> TcpStream {
    let mut s = connect(addr);
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![b'x'; sent]).unwrap();
    s
}

#[tokio::test]
async fn an_over_long_request_head_is_431() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--header-bytes-max", "16384"], &[]);
    let addr = server.addr.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = connect(&addr);
        let filler = "a".repeat(20_000);
        let _ = s.write_all(
            format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n").as_bytes(),
        );
        read_answer(&mut s)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A head under the limit is fine.
    let r = client()
        .get(server.url("/v2/"))
        .header("X-Filler", "a".repeat(8000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_stalling_in_its_head_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--header-read-timeout-ms", "300"], &[]);
    let addr = server.addr.clone();
    let waited = tokio::task::spawn_blocking(move || {
        let mut s = connect(&addr);
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        let answer = read_answer(&mut s);
        (started.elapsed(), answer)
    })
    .await
    .unwrap();
    assert!(
        waited.0 < Duration::from_secs(5),
        "closed after {:?}",
        waited.0
    );
    assert!(!waited.1.starts_with("HTTP/1.1 2"), "{}", waited.1);
}

/// The head deadline is the connection's, renewed for each request: a
/// connection that keeps asking is never cut, however long it lives, and
/// one that stalls in a later head is cut as in its first.
#[tokio::test]
async fn the_head_deadline_holds_for_every_request_of_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--header-read-timeout-ms", "300"], &[]);
    let addr = server.addr.clone();
    let (answers, waited, last) = tokio::task::spawn_blocking(move || {
        let mut s = connect(&addr);
        let mut answers = Vec::new();
        // Ten requests 100 ms apart: a second in all, over three deadlines.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            answers.push(read_answer(&mut s));
        }
        // Then a head that never ends.
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        let last = read_answer(&mut s);
        (answers, started.elapsed(), last)
    })
    .await
    .unwrap();
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    assert!(!last.starts_with("HTTP/1.1 2"), "{last}");
}

#[tokio::test]
async fn a_body_that_stalls_fails_and_frees_the_upload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--body-read-timeout-ms", "500"], &[]);
    let http = client();
    let location = start_upload(&http, &server, "app").await;
    let (addr, loc) = (server.addr.clone(), location.clone());
    let (elapsed, answer) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut s = stalled_patch(&addr, &loc, 100, 10);
        (started.elapsed(), read_answer(&mut s))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BLOB_UPLOAD_INVALID"), "{answer}");
    assert!(elapsed < Duration::from_secs(5));
    // The session is not held: a complete chunk goes through, from 0.
    let r = http
        .patch(server.url(&location))
        .header("Content-Type", "application/octet-stream")
        .body(b"0123456789".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-9");
}

#[tokio::test]
async fn too_many_uploads_at_once_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--uploads-concurrent-max", "1"], &[]);
    let http = client();
    let first = start_upload(&http, &server, "app").await;
    let second = start_upload(&http, &server, "app").await;
    let (addr, loc) = (server.addr.clone(), first.clone());
    let held = tokio::task::spawn_blocking(move || stalled_patch(&addr, &loc, 1000, 10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http
        .patch(server.url(&second))
        .header("Content-Type", "application/octet-stream")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    let r = push_blob(&http, &server.url, "app", b"monolithic", Cred::None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Reads are not limited.
    let r = send(&http, &server.url, Method::GET, "/v2/", Cred::None).await;
    assert_eq!(r.status(), StatusCode::OK);
    drop(held); // the first client goes away: its permit is back
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .patch(server.url(&second))
            .header("Content-Type", "application/octet-stream")
            .body(b"abc".to_vec())
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "the permit never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn too_many_open_sessions_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--upload-sessions-max", "2"], &[]);
    let http = client();
    let first = start_upload(&http, &server, "app").await;
    start_upload(&http, &server, "app").await;
    let r = send(
        &http,
        &server.url,
        Method::POST,
        "/v2/app/blobs/uploads/",
        Cred::None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // A one-shot push opens no session: still fine.
    let r = push_blob(&http, &server.url, "app", b"one shot", Cred::None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = send(&http, &server.url, Method::DELETE, &first, Cred::None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    start_upload(&http, &server, "app").await;
}

#[tokio::test]
async fn idle_uploads_expire_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ferro::start(dir.path(), None, &["--upload-idle-expiry-secs", "1"], &[]);
    let http = client();
    let location = start_upload(&http, &server, "app").await;
    let id = location.rsplit('/').next().unwrap().to_owned();
    let r = http
        .patch(server.url(&location))
        .header("Content-Type", "application/octet-stream")
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let staging = dir.path().join("uploads").join(&id);
    assert!(staging.exists());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = send(&http, &server.url, Method::GET, &location, Cred::None).await;
        if r.status() == StatusCode::NOT_FOUND {
            assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
            break;
        }
        assert!(Instant::now() < deadline, "the upload never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!staging.exists(), "the staging file is removed");
    let r = send(
        &http,
        &server.url,
        Method::GET,
        "/v2/_ferro/events/feed?kind=upload_cancelled",
        Cred::None,
    )
    .await;
    let feed: Value = r.json().await.unwrap();
    let entry = &feed["entries"][0];
    assert_eq!(entry["actor"]["user"], "ferro", "{feed}");
    let event = entry["events"][0].to_string();
    assert!(event.contains(&id) && event.contains("Expired"), "{event}");
    let text = send(&http, &server.url, Method::GET, "/metrics", Cred::None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l == "ferro_uploads_expired_total 1"),
        "{text}"
    );
}
