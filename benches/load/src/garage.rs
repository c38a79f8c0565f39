//! The object store of the `-s3` servers: one single-node Garage started
//! for the run (SQLite metadata, replication factor 1, `data_fsync` and
//! `metadata_fsync` on, as ferro's tests run it), on free loopback ports,
//! with one key; each server gets a fresh bucket of its own. Killed when
//! dropped, or by the kernel if the benchmark dies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[path = "../../../tests/common/garage_config.rs"]
mod garage_config;

use crate::http::BoxError;
use crate::servers::{free_port, spawn_tied, stop_child};

/// Garage's `s3_region`; the servers must name the same.
pub const REGION: &str = "garage";
/// Garage key ids are `GK` and 24 hex digits; secrets 64 hex digits.
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Longest a CLI step may keep failing while the node comes up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    pub s3_port: u16,
    buckets: u32,
    _dir: tempfile::TempDir,
}

/// The `garage` binary: on `PATH`, or in `~/.cargo/bin` (`cargo install
/// garage --locked`).
pub fn binary() -> Result<PathBuf, BoxError> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    let in_cargo = || {
        let p = Path::new(&std::env::var_os("HOME")?).join(".cargo/bin/garage");
        p.is_file().then_some(p)
    };
    on_path
        .or_else(in_cargo)
        .ok_or_else(|| "garage not found: cargo install garage --locked".into())
}

impl Garage {
    pub fn start(work_root: &Path) -> Result<Garage, BoxError> {
        let bin = binary()?;
        let dir = tempfile::Builder::new()
            .prefix("ferro-load-garage-")
            .tempdir_in(work_root)?;
        let s3_port = free_port()?;
        let rpc_port = free_port()?;
        let config = dir.path().join("garage.toml");
        let rpc_secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 11 + 5) as u8))
            .collect();
        std::fs::write(
            &config,
            garage_config::garage_toml(dir.path(), rpc_port, s3_port, &rpc_secret, REGION),
        )?;
        let mut command = Command::new(&bin);
        command
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn");
        let child = spawn_tied(&mut command, &dir.path().join("garage.log"))?;
        let garage = Garage {
            child,
            bin,
            config,
            s3_port,
            buckets: 0,
            _dir: dir,
        };
        let node = garage.cli(&["node", "id", "-q"])?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "10G", &node])?;
        garage.cli(&["layout", "apply", "--version", "1"])?;
        garage.cli(&["key", "import", "--yes", "-n", "bench", KEY_ID, SECRET])?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", s3_port)).is_err() {
            if Instant::now() > deadline {
                return Err("garage's S3 port never opened".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(garage)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A fresh bucket, read and write for the key.
    pub fn new_bucket(&mut self, server: &str) -> Result<String, BoxError> {
        self.buckets += 1;
        let name = format!("{server}-{}", self.buckets);
        self.cli(&["bucket", "create", &name])?;
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &name, "--key", KEY_ID,
        ])?;
        Ok(name)
    }

    /// Runs the CLI, retried while the node is still coming up.
    fn cli(&self, args: &[&str]) -> Result<String, BoxError> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let out = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .env("RUST_LOG", "warn")
                .output()?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "garage {args:?} kept failing: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
