//! The registries under test as child processes: each on its own loopback
//! port with a fresh data directory, stopped (and the directory removed)
//! when dropped. A child is also killed by the kernel if the benchmark
//! itself dies (`PR_SET_PDEATHSIG`), so none outlives a run.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::garage::{self, Garage};
use crate::http::{BoxError, Client};

/// Longest wait for a server to answer `GET /v2/` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    #[serde(rename = "ferro")]
    Ferro,
    #[serde(rename = "ferro-oci-server")]
    FerroOciServer,
    #[serde(rename = "distribution")]
    Distribution,
    /// ferro with `[storage] backend = "s3"` on the run's Garage.
    #[serde(rename = "ferro-s3")]
    FerroS3,
    /// distribution with its `s3` storage driver on the run's Garage.
    #[serde(rename = "distribution-s3")]
    DistributionS3,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Ferro,
        Kind::FerroOciServer,
        Kind::Distribution,
        Kind::FerroS3,
        Kind::DistributionS3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ferro => "ferro",
            Kind::FerroOciServer => "ferro-oci-server",
            Kind::Distribution => "distribution",
            Kind::FerroS3 => "ferro-s3",
            Kind::DistributionS3 => "distribution-s3",
        }
    }

    /// Whether its blobs go to the run's Garage.
    pub fn on_garage(self) -> bool {
        matches!(self, Kind::FerroS3 | Kind::DistributionS3)
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process that is SIGKILLed if this process dies first.
pub fn spawn_tied(command: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Sends SIGTERM, waits up to `STOP_TIMEOUT`, then SIGKILLs.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn log_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    // Kept when the server is dropped, after the child has stopped, until
    // the run ends ([`remove_kept_dirs`]).
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `kind`; the `-s3` kinds get a fresh bucket of `garage`.
    pub async fn start(
        kind: Kind,
        binary: &Path,
        work_root: &Path,
        garage: Option<&mut Garage>,
    ) -> Result<Server, BoxError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferro-load-{}-", kind.name()))
            .tempdir_in(work_root)?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.path().join("server.log");
        let mut command = Command::new(binary);
        let mut garage = garage;
        let mut bucket = || -> Result<(String, String), BoxError> {
            let g = garage
                .as_deref_mut()
                .ok_or_else(|| format!("{} needs the run's Garage", kind.name()))?;
            Ok((g.endpoint(), g.new_bucket(kind.name())?))
        };
        match kind {
            Kind::Ferro | Kind::FerroS3 => {
                command
                    .arg("serve")
                    .arg("--data-dir")
                    .arg(&data)
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--durability")
                    .arg("always");
                if kind == Kind::FerroS3 {
                    let (endpoint, bucket) = bucket()?;
                    command
                        .args(["--storage-backend", "s3", "--storage-endpoint", &endpoint])
                        .args([
                            "--storage-region",
                            garage::REGION,
                            "--storage-bucket",
                            &bucket,
                        ])
                        .arg("--storage-allow-http")
                        .env("AWS_ACCESS_KEY_ID", garage::KEY_ID)
                        .env("AWS_SECRET_ACCESS_KEY", garage::SECRET);
                }
            }
            Kind::FerroOciServer => {
                command
                    .arg("--data-dir")
                    .arg(&data)
                    .arg("--listen")
                    .arg(addr.to_string());
            }
            Kind::Distribution => {
                let config = dir.path().join("config.yml");
                std::fs::write(&config, distribution_config(&data, addr))?;
                command.arg("serve").arg(&config);
            }
            Kind::DistributionS3 => {
                let (endpoint, bucket) = bucket()?;
                let config = dir.path().join("config.yml");
                std::fs::write(&config, distribution_s3_config(&endpoint, &bucket, addr))?;
                // Its s3 driver panics at startup when this is set.
                command
                    .arg("serve")
                    .arg(&config)
                    .env_remove("AWS_CA_BUNDLE");
            }
        }
        let child = spawn_tied(&mut command, &log)
            .map_err(|e| format!("cannot start {} ({}): {e}", kind.name(), binary.display()))?;
        let mut server = Server {
            kind,
            addr,
            child,
            log,
            dir: Some(dir),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut client = Client::new(self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited during start ({status}); log tail:\n{}",
                    self.kind.name(),
                    log_tail(&self.log, 2000)
                )
                .into());
            }
            if let Ok(reply) = client.call(Method::GET, "/v2/", &[], None).await {
                if reply.status == StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer GET /v2/ with 200 within {START_TIMEOUT:?}; log tail:\n{}",
                    self.kind.name(),
                    log_tail(&self.log, 2000)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the server has exited (crashed) since its start.
    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log tail:\n{}",
                self.kind.name(),
                log_tail(&self.log, 2000)
            )
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 2000)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        if let Some(dir) = self.dir.take() {
            KEPT_DIRS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(dir);
        }
    }
}

/// The directories of stopped servers. Removing one (thousands of files
/// after a push workload) right before the next server starts made that
/// server's file creations several times dearer for 30 s: on ext4 without
/// a journal the inode allocator skips inodes deleted that recently
/// (`recently_deleted`), which showed as a fifth of a server's samples in
/// `perf`. So they go only when the run ends.
static KEPT_DIRS: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

/// Removes the directories of the servers the run stopped.
pub fn remove_kept_dirs() {
    let dirs = std::mem::take(&mut *KEPT_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    drop(dirs);
}

/// distribution's configuration: filesystem storage in `data`, the
/// in-memory blob descriptor cache, deletes enabled, no access log.
fn distribution_config(data: &Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n",
        data.display()
    )
}

/// distribution's configuration with its `s3` driver on Garage:
/// `regionendpoint` (which alone switches 2.8 to path-style addressing;
/// `forcepathstyle` says so for later versions), plain HTTP, v4
/// signatures, the in-memory blob descriptor cache, deletes enabled, and
/// blobs served through it (not 307 to a presigned URL, its default on
/// S3; ferro's `redirect` is off by default too).
fn distribution_s3_config(endpoint: &str, bucket: &str, addr: SocketAddr) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  s3:\n    accesskey: {key}\n    secretkey: {secret}\n    region: {region}\n    \
         regionendpoint: {endpoint}\n    forcepathstyle: true\n    bucket: {bucket}\n    \
         secure: false\n    v4auth: true\n  \
         cache:\n    blobdescriptor: inmemory\n  delete:\n    enabled: true\n  \
         redirect:\n    disable: true\n\
         http:\n  addr: {addr}\n",
        key = garage::KEY_ID,
        secret = garage::SECRET,
        region = garage::REGION,
    )
}

/// A process's memory and CPU figures from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
    pub cpu_seconds: f64,
}

pub fn proc_stats(pid: u32) -> std::io::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok(ProcStats {
        rss_bytes: field("VmRSS:"),
        hwm_bytes: field("VmHWM:"),
        cpu_seconds: cpu_seconds(&format!("/proc/{pid}/stat"))?,
    })
}

/// User plus system CPU time of all threads of a process.
pub fn cpu_seconds(stat_path: &str) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is the first, utime the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) as f64 / hz)
}

pub fn own_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

/// Resets a process's peak RSS (VmHWM) to its current RSS, so the next
/// reading is the peak of what follows. False when the kernel refuses.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stats_are_readable() {
        let s = proc_stats(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.hwm_bytes >= s.rss_bytes / 2);
        assert!(own_cpu_seconds() >= 0.0);
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
    }
}
