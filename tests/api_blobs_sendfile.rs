//! Large blobs over plain HTTP with `sendfile = true`, where their pieces
//! go out with `sendfile(2)`: every byte of a blob of several pieces and an odd
//! length, whole and by `Range` (inside a piece, across pieces, to the
//! end), its digest, downloads one after another on one keep-alive
//! connection with small requests between them, downloads side by side,
//! and a download dropped halfway leaving the server serving.
mod common;
mod support;

use common::sha256;
use futures_util::StreamExt as _;
use support::*;

/// The size of a piece the server maps and sends at a time.
const PIECE: usize = 4 * 1024 * 1024;

/// A registry with `sendfile = true`, and the directory of its config.
fn start() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(&config, "sendfile = true\n").unwrap();
    let reg = Registry::start(&["--config", config.to_str().unwrap()]);
    (reg, dir)
}

async fn large_blob(reg: &Registry) -> (Vec<u8>, String) {
    let bytes = pseudo_random_bytes(5 * PIECE + 12_345, 29);
    let digest = reg.push_blob("big/one", &bytes).await;
    (bytes, digest)
}

async fn whole(reg: &Registry, path: &str) -> Vec<u8> {
    let r = reg.get(path).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn a_large_blob_downloads_whole_and_by_range() {
    let (reg, _config) = start();
    let (bytes, digest) = large_blob(&reg).await;
    let size = bytes.len();
    let path = format!("/v2/big/one/blobs/{digest}");

    let r = reg.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), size);
    assert!(got == bytes, "every byte of the whole blob");
    assert_eq!(sha256(&got), digest);

    let cases: &[(usize, usize)] = &[
        (0, 65_536),                    // just above the in-memory size
        (1, PIECE - 1),                 // one piece, less a byte each side
        (PIECE - 1, PIECE),             // two bytes across a boundary (read)
        (PIECE - 100, 3 * PIECE + 100), // across several pieces
        (7, size - 1),                  // an odd start to the end
        (size - 70_001, size - 1),      // the tail
        (2 * PIECE, 3 * PIECE - 1),     // exactly one piece
    ];
    for &(start, end) in cases {
        let r = reg.get_range(&path, &format!("bytes={start}-{end}")).await;
        assert_eq!(r.status(), 206, "{start}-{end}");
        assert_eq!(
            header(&r, "content-range").map(str::to_owned),
            Some(format!("bytes {start}-{end}/{size}")),
        );
        let got = r.bytes().await.unwrap();
        assert!(got == bytes[start..=end], "bytes {start}-{end}");
    }
}

/// reqwest keeps one connection and reuses it: several large responses
/// and small ones in between, on the same connection, each whole.
#[tokio::test]
async fn downloads_follow_each_other_on_one_connection() {
    let (reg, _config) = start();
    let (bytes, digest) = large_blob(&reg).await;
    let path = format!("/v2/big/one/blobs/{digest}");
    let small = reg.push_blob("big/one", b"a small blob").await;
    for round in 0..3 {
        assert!(whole(&reg, &path).await == bytes, "round {round}");
        let got = whole(&reg, &format!("/v2/big/one/blobs/{small}")).await;
        assert_eq!(got, b"a small blob", "round {round}");
        let r = reg.get("/v2/").await;
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn downloads_side_by_side_and_one_dropped_halfway() {
    let (reg, _config) = start();
    let (bytes, digest) = large_blob(&reg).await;
    let path = format!("/v2/big/one/blobs/{digest}");
    // Separate clients: separate connections.
    let downloads = (0..3).map(|_| {
        let (http, url) = (common::client(), reg.url(&path));
        async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    for got in futures_util::future::join_all(downloads).await {
        assert!(got == bytes, "a concurrent download");
    }
    // A client that goes away after the first megabytes.
    let r = common::client().get(reg.url(&path)).send().await.unwrap();
    let mut stream = r.bytes_stream();
    let mut read = 0;
    while read < 3 * 1024 * 1024 {
        read += stream.next().await.unwrap().unwrap().len();
    }
    drop(stream);
    assert!(
        whole(&reg, &path).await == bytes,
        "after a dropped download"
    );
}
