//! A real S3 server for the tests: a single-node Garage on loopback ports
//! (SQLite metadata, replication factor 1, `data_fsync` and
//! `metadata_fsync` on, so durability is what is tested), its layout
//! applied, a bucket and a key made through its CLI.
//!
//! Tests that need it call [`Garage::shared`] (one per test binary, killed
//! when the binary exits) or [`Garage::start`] (their own, killed on
//! drop). Without a `garage` binary they skip, unless `FERRO_REQUIRE_S3` is
//! set (`.ci/run` sets it), when they fail.
//!
//! `FERRO_TEST_BLOBS=s3` runs every registry [`TestServer`](super::TestServer)
//! starts on the shared Garage (each on its own key prefix): the API
//! tests, unchanged, against the S3 backend.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "garage_config.rs"]
mod garage_config;

pub const BUCKET: &str = "ferro";
pub const REGION: &str = "garage";
/// Garage key ids are `GK` and 24 hex digits; secrets 64 hex digits.
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The `garage` binary: `$GARAGE_BIN`, on `PATH`, or in `~/.cargo/bin`.
pub fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GARAGE_BIN") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/garage");
        p.is_file().then_some(p)
    })
}

/// Whether the S3 tests can run; `false` means skip (after saying so).
/// Panics when `garage` is missing and `FERRO_REQUIRE_S3` is set.
pub fn available(test: &str) -> bool {
    if binary().is_some() {
        return true;
    }
    if std::env::var_os("FERRO_REQUIRE_S3").is_some() {
        panic!("{test}: garage is not installed and FERRO_REQUIRE_S3 is set");
    }
    eprintln!("{test}: skipped, garage is not installed (cargo install garage)");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running single-node Garage.
pub struct Garage {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    pub s3_port: u16,
}

impl Garage {
    /// The Garage of this test binary, started on first use; it dies with
    /// the process (a parent-death signal: statics are never dropped).
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Spawned from a thread that lives as long as the process: the
            // parent-death signal follows the spawning thread.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Garage::start());
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("garage started")
        })
    }

    /// A fresh Garage of its own, ready for requests, killed on drop.
    /// A new Garage on fresh ports, its layout applied, the bucket and key
    /// made. A start that fails (the node exits, or its CLI keeps failing:
    /// a port picked free was taken meanwhile by another test's server)
    /// is retried on other ports, up to three times.
    pub fn start() -> Garage {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Garage::try_start() {
                Ok(g) => return g,
                Err(e) => failures.push(e),
            }
        }
        panic!("Garage did not start: {failures:?}");
    }

    fn try_start() -> Result<Garage, String> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let s3_port = free_port();
        let rpc_port = free_port();
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 7 + 3) as u8))
            .collect();
        std::fs::write(
            &config,
            garage_config::garage_toml(dir.path(), rpc_port, s3_port, &secret, REGION),
        )
        .expect("write garage.toml");
        let mut garage = Garage {
            child: None,
            dir,
            config,
            s3_port,
        };
        garage.spawn();
        // Each step retried while the node is still coming up.
        let node = garage.cli_retrying(&["node", "id", "-q"])?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        garage.cli_retrying(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        garage.cli_retrying(&["layout", "apply", "--version", "1"])?;
        garage.cli_retrying(&["bucket", "create", BUCKET])?;
        garage.cli_retrying(&["key", "import", "--yes", "-n", "ferro", KEY_ID, SECRET])?;
        garage.cli_retrying(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
        ])?;
        garage.wait_for_s3();
        Ok(garage)
    }

    fn spawn(&mut self) {
        let bin = binary().expect("garage installed");
        let mut command = Command::new(bin);
        command
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("spawn garage"));
    }

    /// Stops the server (SIGKILL); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data and ports.
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_for_s3();
    }

    /// An `[archive]` section for this server: its endpoint, the test
    /// key, plain HTTP (the URL names bucket and prefix).
    pub fn archive_toml(&self) -> String {
        format!(
            "[archive]\nendpoint = \"{}\"\nregion = \"{REGION}\"\naccess_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\nallow_http = true\n",
            self.endpoint()
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Runs the CLI; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(binary().expect("garage installed"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run garage");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Garage::cli`], retried for up to 30 s while the node starts; an
    /// error if it never succeeds or the node exits meanwhile.
    fn cli_retrying(&mut self, args: &[&str]) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(binary().expect("garage installed"))
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
                .expect("run garage");
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            let failed = || {
                format!(
                    "garage {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            };
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.stop();
                return Err(format!("the node exited ({status}); {}", failed()));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("kept failing for 30 s; {}", failed()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the S3 port accepts connections.
    fn wait_for_s3(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(Instant::now() < deadline, "garage's S3 port never opened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ferro serve` flags that put blobs in this Garage under `prefix`.
    pub fn ferro_args(&self, prefix: &str) -> Vec<String> {
        [
            "--storage-backend",
            "s3",
            "--storage-endpoint",
            &self.endpoint(),
            "--storage-region",
            REGION,
            "--storage-bucket",
            BUCKET,
            "--storage-prefix",
            prefix,
            "--storage-allow-http",
            // Garage takes parts of any size: small ones make uploads of a
            // few hundred KiB span several parts.
            "--storage-allow-small-parts",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A client of the bucket, for checking what is in it.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_bucket_name(BUCKET)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }

    /// Keys (and sizes) of the objects under `prefix`.
    pub async fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures_util::TryStreamExt as _;
        use object_store::ObjectStore as _;
        let client = self.client();
        let path = object_store::path::Path::from(prefix.trim_end_matches('/'));
        let listed: Vec<object_store::ObjectMeta> = client
            .list(Some(&path))
            .try_collect()
            .await
            .expect("list the bucket");
        listed
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the registries of this test run keep blobs in files under
/// their data directory (not `FERRO_TEST_BLOBS=s3`).
pub fn blobs_on_disk() -> bool {
    std::env::var("FERRO_TEST_BLOBS").as_deref() != Ok("s3")
}

/// When `FERRO_TEST_BLOBS=s3`: the flags that put a registry on
/// `data_dir` on the shared Garage, under a prefix named after the data
/// directory (so a restart finds its objects again); none when the test
/// chose a backend itself.
pub fn test_blobs_args(data_dir: &Path, extra_args: &[String]) -> Vec<String> {
    if std::env::var("FERRO_TEST_BLOBS").as_deref() != Ok("s3")
        || extra_args.iter().any(|a| a == "--storage-backend")
    {
        return Vec::new();
    }
    if !available("FERRO_TEST_BLOBS=s3") {
        panic!("FERRO_TEST_BLOBS=s3 needs garage (cargo install garage)");
    }
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "registry".into());
    let mut args = Garage::shared().ferro_args(&format!("{name}/"));
    // Parts of 1 MiB: uploads of a few MiB are several parts.
    args.extend(["--storage-part-size-bytes".into(), "1048576".into()]);
    args
}

/// The environment a registry on Garage needs (its credentials).
pub fn credentials_env() -> [(&'static str, &'static str); 2] {
    [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ]
}
