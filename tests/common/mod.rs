//! Shared harness for black-box tests: runs the real `ferro` binary on a
//! loopback port over a temporary data directory and talks HTTP to it.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod garage;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const FERRO: &str = env!("CARGO_BIN_EXE_ferro");

/// A running `ferro serve`. Killed (SIGKILL) on drop.
pub struct TestServer {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    /// Lines the server wrote to stderr after it started listening.
    pub log: mpsc::Receiver<String>,
    /// Lines it wrote before (startup: snapshot used or rejected, replay).
    pub startup_log: Vec<String>,
}

impl TestServer {
    /// Starts a server on `data_dir` (created if missing) on a free port.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        Self::start_owned(data_dir, extra)
    }

    fn start_owned(data_dir: &Path, extra_args: Vec<String>) -> TestServer {
        let mut child = Command::new(FERRO)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(garage::test_blobs_args(data_dir, &extra_args))
            .args(&extra_args)
            .envs(garage::credentials_env())
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
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
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
        TestServer {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            extra_args,
            log: rx,
            startup_log: seen,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        self.child.wait().expect("wait for ferro")
    }

    /// Kills the server and starts it again on the same data directory.
    pub fn restart(mut self) -> TestServer {
        self.kill();
        let dir = self.data_dir.clone();
        let args = std::mem::take(&mut self.extra_args);
        Self::start_owned(&dir, args)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn sha256(bytes: &[u8]) -> String {
    ferro::oci::Digest::sha256_of(bytes).to_string()
}

/// The value of the first sample of `name` in a Prometheus text page whose
/// labels include every one of `labels` (`key="value"` strings).
pub fn metrics_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|want| l.contains(want))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
