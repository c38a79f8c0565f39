//! Helpers shared by the `api_*` black-box tests: a registry on a temporary
//! data directory, pushing blobs and manifests, checking error bodies
//! against the spec's form, and a raw HTTP/1.1 client for requests reqwest
//! will not send (unnormalised paths, lying `Content-Length`, two requests
//! on one connection).
#![allow(dead_code)] // each test binary uses a different part of the support

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::common::{client, sha256, TestServer};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every code the spec allows in an error body.
pub const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    // From the extensions document.
    "EXTENSION_UNKNOWN",
];

/// A registry on its own temporary data directory.
pub struct Registry {
    pub server: TestServer,
    pub http: reqwest::Client,
    /// Kept alive for the registry's lifetime (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(args: &[&str]) -> Registry {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = TestServer::start(dir.path(), args);
        Registry {
            server,
            http: client(),
            dir,
        }
    }

    /// SIGKILL and start again on the same data directory.
    pub fn restart(self) -> Registry {
        let Registry { server, http, dir } = self;
        Registry {
            server: server.restart(),
            http,
            dir,
        }
    }

    /// SIGKILL, let `while_stopped` touch the data directory, start again.
    pub fn restart_with(&mut self, while_stopped: impl FnOnce(&std::path::Path)) {
        self.server.kill();
        while_stopped(self.dir.path());
        let args: Vec<&str> = self.server.extra_args.iter().map(|s| s.as_str()).collect();
        let next = TestServer::start(self.dir.path(), &args);
        self.server = next;
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn addr(&self) -> &str {
        &self.server.addr
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    /// A GET with a `Range` header (`bytes=…`, or anything a test wants
    /// the server to see).
    pub async fn get_range(&self, path: &str, range: &str) -> Response {
        self.request(Method::GET, path)
            .header("Range", range)
            .send()
            .await
            .expect("GET with Range")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.request(Method::HEAD, path).send().await.expect("HEAD")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    /// Pushes `bytes` with a single `POST ?digest=`; returns the digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let r = self
            .request(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("POST blob");
        assert_eq!(r.status(), StatusCode::CREATED, "push blob to {repo}");
        digest
    }

    /// Opens an upload session; returns its (relative) location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header("Content-Length", "0")
            .send()
            .await
            .expect("POST upload");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        location(&r)
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Response {
        let mut req = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .body(body.to_vec());
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        req.send().await.expect("PUT manifest")
    }

    /// Pushes a small image (config + one layer + manifest) tagged `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> Image {
        let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let layer = format!("layer bytes of {seed}").into_bytes();
        let config_digest = self.push_blob(repo, &config).await;
        let layer_digest = self.push_blob(repo, &layer).await;
        let manifest = image_manifest(
            (&config_digest, config.len()),
            &[(&layer_digest, layer.len())],
            None,
        );
        let r = self
            .put_manifest(repo, tag, Some(OCI_MANIFEST), &manifest)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "push image {repo}:{tag}");
        Image {
            digest: sha256(&manifest),
            manifest,
            config_digest,
            layer_digest,
            layer,
        }
    }
}

/// What `push_image` pushed.
pub struct Image {
    pub digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub layer_digest: String,
    pub layer: Vec<u8>,
}

/// An OCI image manifest (with `mediaType`) over the given blobs.
pub fn image_manifest(
    config: (&str, usize),
    layers: &[(&str, usize)],
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers
            .iter()
            .map(|(d, s)| json!({"mediaType": OCI_LAYER, "digest": d, "size": s}))
            .collect::<Vec<_>>(),
    });
    if let Some((d, s)) = subject {
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d, "size": s});
    }
    serde_json::to_vec_pretty(&m).expect("json")
}

/// An OCI image index over the given manifests.
pub fn image_index(children: &[(&str, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children
            .iter()
            .map(|(d, s)| json!({
                "mediaType": OCI_MANIFEST, "digest": d, "size": s,
                "platform": {"architecture": "amd64", "os": "linux"}
            }))
            .collect::<Vec<_>>(),
    }))
    .expect("json")
}

pub fn location(r: &Response) -> String {
    r.headers()
        .get("location")
        .expect("Location header")
        .to_str()
        .expect("ascii Location")
        .to_owned()
}

pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

/// Appends `?k=v` or `&k=v` to a location.
pub fn with_query(location: &str, kv: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{kv}")
}

/// Checks the status and that the body is the spec's error form with
/// `code` among its codes; returns the body.
pub async fn expect_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let url = r.url().to_string();
    let text = r.text().await.expect("error body");
    assert_eq!(got, status, "status of {url}; body: {text}");
    check_error_body(&text, code)
}

/// The spec's error form: `{"errors":[{"code":…,"message":…}]}` with
/// string codes from the spec's table and string messages.
pub fn check_error_body(text: &str, code: &str) -> Value {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {text}"));
    assert!(!errors.is_empty(), "empty errors array: {text}");
    for e in errors {
        let c = e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("code is not a string: {text}"));
        assert!(SPEC_CODES.contains(&c), "{c} is not a spec code: {text}");
        assert!(e["message"].is_string(), "message must be a string: {text}");
    }
    assert!(
        errors.iter().any(|e| e["code"] == code),
        "expected {code}: {text}"
    );
    v
}

/// One response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 connection: requests are written byte for byte.
pub struct RawConnection {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl RawConnection {
    pub fn open(addr: &str) -> RawConnection {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawConnection {
            stream,
            buffered: Vec::new(),
        }
    }

    /// A second handle on the socket, for writing from another thread.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().expect("clone socket")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Closes our sending half (the server sees the end of the body).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.buffered.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => panic!("read response: {e}"),
        }
    }

    /// Reads one response; `head` says it answers a HEAD (no body).
    /// `None` when the server closed the connection first.
    pub fn read_response(&mut self, head: bool) -> Option<RawResponse> {
        let end = loop {
            if let Some(i) = find(&self.buffered, b"\r\n\r\n") {
                break i;
            }
            if !self.fill() {
                return None;
            }
        };
        let head_text = String::from_utf8(self.buffered[..end].to_vec()).expect("ascii head");
        self.buffered.drain(..end + 4);
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 204 || status == 304 {
            return Some(response);
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buffered, b"\r\n") {
                        break i;
                    }
                    assert!(self.fill(), "connection closed inside a chunked body");
                };
                let size_text = String::from_utf8_lossy(&self.buffered[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                self.buffered.drain(..line_end + 2);
                while self.buffered.len() < size + 2 {
                    assert!(self.fill(), "connection closed inside a chunk");
                }
                response.body.extend_from_slice(&self.buffered[..size]);
                self.buffered.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            let len: usize = response
                .header("content-length")
                .map(|v| v.parse().expect("numeric Content-Length"))
                .unwrap_or(0);
            while self.buffered.len() < len {
                assert!(
                    self.fill(),
                    "connection closed after {} of {len} body bytes",
                    self.buffered.len()
                );
            }
            response.body = self.buffered.drain(..len).collect();
        }
        Some(response)
    }

    /// Whether the server has closed the connection (reads end) with
    /// nothing more to say.
    pub fn is_closed(&mut self) -> bool {
        self.buffered.is_empty() && !self.fill()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request with the given method, raw path, extra header lines and body;
/// `Content-Length` is the body's length unless a header line sets one.
pub fn raw_request(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    let has_length = headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-length:"));
    if !has_length && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request on a fresh connection and reads its answer.
pub fn raw_once(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> RawResponse {
    let mut c = RawConnection::open(addr);
    c.send(&raw_request(addr, method, path, headers, body));
    c.read_response(method == "HEAD")
        .unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

/// Deterministic pseudo-random bytes (xorshift), so big blobs are not
/// trivially compressible or repetitive.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
