//! Harness for ferroctl's black-box tests: runs the real `ferro` server on
//! a loopback port to produce a data directory, pushes content over HTTP,
//! and runs the real `ferroctl` binary on it.
//!
//! `ferro` belongs to the workspace's root package, so Cargo gives this
//! crate no `CARGO_BIN_EXE_ferro`; it is found next to `ferroctl` in the
//! same target directory. `cargo test --workspace` builds both before any
//! test runs (and CI runs exactly that); `cargo test -p ferroctl` alone
//! needs `cargo build --bin ferro` first.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const FERROCTL: &str = env!("CARGO_BIN_EXE_ferroctl");

pub fn ferro_binary() -> PathBuf {
    let path = Path::new(FERROCTL).with_file_name(format!("ferro{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not found: run `cargo test --workspace` (or `cargo build --bin ferro` first)",
        path.display()
    );
    path
}

/// A running `ferro serve`. Killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: mpsc::Receiver<String>,
    /// Lines seen before "listening".
    pub startup_lines: Vec<String>,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(ferro_binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferro");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let addr = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(i) = line.find("listening on http://") {
                        break line[i + "listening on http://".len()..].trim().to_owned();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("ferro did not start; its output:\n{}", seen.join("\n"));
                }
            }
        };
        Server {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            log: rx,
            startup_lines: seen,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM and wait for a clean exit (the shutdown snapshot included).
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let status = self.child.wait().expect("wait for ferro");
        assert!(status.success(), "ferro exited with {status}");
    }

    /// SIGKILL: no shutdown snapshot.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Something requests can be sent to: a [`Server`], or the address of
/// one ([`Addr`], which threads can share).
pub trait Endpoint {
    fn url(&self, path: &str) -> String;
}

impl Endpoint for Server {
    fn url(&self, path: &str) -> String {
        Server::url(self, path)
    }
}

/// A server's `host:port`.
#[derive(Debug, Clone)]
pub struct Addr(pub String);

impl Endpoint for Addr {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.0, path)
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    ferro::oci::Digest::sha256_of(bytes).to_string()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Uploads a blob with a single `POST ?digest=`.
pub fn push_blob(server: &impl Endpoint, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = client()
        .post(server.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .expect("blob POST");
    assert_eq!(
        r.status(),
        201,
        "blob POST: {}",
        r.text().unwrap_or_default()
    );
    digest
}

pub fn put_manifest(
    server: &impl Endpoint,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let r = client()
        .put(server.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .expect("manifest PUT");
    assert_eq!(
        r.status(),
        201,
        "manifest PUT: {}",
        r.text().unwrap_or_default()
    );
    sha256(body)
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image: its manifest body and digests.
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: String,
    pub layer: String,
}

/// Pushes a small image (a config and one layer, both unique to `seed`)
/// and tags it.
pub fn push_image(server: &impl Endpoint, repo: &str, tag: &str, seed: &str) -> Image {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
    let layer = format!("layer bytes of {seed}").repeat(8);
    let config_digest = push_blob(server, repo, config.as_bytes());
    let layer_digest = push_blob(server, repo, layer.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let digest = put_manifest(server, repo, tag, OCI_MANIFEST, manifest.as_bytes());
    Image {
        manifest: manifest.into_bytes(),
        digest,
        config: config_digest,
        layer: layer_digest,
    }
}

/// Pushes an index of the given (already pushed) manifests and tags it.
pub fn push_index(server: &impl Endpoint, repo: &str, tag: &str, children: &[&Image]) -> String {
    let manifests: Vec<String> = children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"arch{i}","os":"linux"}}}}"#,
                c.digest,
                c.manifest.len()
            )
        })
        .collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        manifests.join(",")
    );
    put_manifest(server, repo, tag, OCI_INDEX, body.as_bytes())
}

/// What a `ferroctl` run printed and returned.
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    #[track_caller]
    pub fn expect(self, code: i32) -> Ctl {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn ctl(data_dir: &Path, args: &[&str]) -> Ctl {
    let output: Output = Command::new(FERROCTL)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("FERRO_DATA_DIR")
        .output()
        .expect("run ferroctl");
    Ctl {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every file under `dir` with its length and modification time: to show
/// a read-only command changed nothing.
pub fn tree(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}
