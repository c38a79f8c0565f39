//! Power loss on a real file system: the real `ferro` binary runs on a
//! LazyFS mount (a FUSE file system that keeps every write not yet fsynced
//! in its own cache, and drops that cache on `lazyfs::clear-cache`: what a
//! power cut does to a disk). Each round: concurrent clients run every
//! write kind (`tests/workload`: chunked uploads with several PATCHes,
//! single-POST and POST+PUT uploads, manifests by tag and by digest with
//! `?tag=`, tag moves, deletes, mounts, garbage collections); the server
//! is SIGKILLed at a random moment; LazyFS's cache is cleared (unsynced
//! data gone); LazyFS and ferro are restarted on the same directory; then
//! every acknowledged operation is verified byte for byte, the operation in
//! flight is wholly there or wholly absent, an interrupted chunked upload
//! resumes from the offset the server reports (or was completed) and
//! finishes, and the server's log must not say it lost acknowledged bytes.
//!
//! A watchdog tells the instrument's failures from ferro's: LazyFS gone
//! (its process exited) or hung (a probe of the mount unanswered for
//! [`PROBE_TIMEOUT`]). Such a round is aborted and counted as an instrument
//! failure, the data directory started afresh, never reported as lost
//! writes. LazyFS is mounted single-threaded (FUSE `-s`): its
//! multi-threaded loop is known to abort or deadlock under this load.
//!
//! LazyFS is found through `FERRO_LAZYFS` (the path of its binary) or at
//! `/usr/local/bin/lazyfs`, `/opt/lazyfs/lazyfs`; without it the test
//! skips, unless `FERRO_REQUIRE_LAZYFS=1`. It also needs `/dev/fuse` and
//! `fusermount3`. `FERRO_LAZYFS_ROUNDS` (default 3) cuts,
//! `FERRO_LAZYFS_SEED` the seed, `FERRO_LAZYFS_LOAD_MS_MAX` (default 1500)
//! the longest load phase, `FERRO_LAZYFS_CUTS_PER_DIR` (default 50) how
//! many cuts one data directory takes before a fresh one (so a long run's
//! checks stay short), `FERRO_LAZYFS_THREADED=1` mounts LazyFS with its
//! multi-threaded loop instead, and `FERRO_LAZYFS_FREEZE_ROUND=<n>` stops
//! LazyFS (SIGSTOP: every FUSE request unanswered, as in a deadlock) after
//! ferro restarted in round `n` (both to show what the watchdog catches).
mod common;
mod workload;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferro::storage::sim::Rng;
use parking_lot::Mutex;

use common::TestServer;
use workload::{check, client_loop, Model, CLIENTS};

/// A probe of the mount (a `stat` and a directory listing) unanswered this
/// long means LazyFS hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long LazyFS may take to mount, to clear its cache, to unmount.
const LAZYFS_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// What a server that lost acknowledged upload bytes writes in its log.
const LOST_BYTES_WARNING: &str = "lost acknowledged bytes";

fn lazyfs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRO_LAZYFS") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    ["/usr/local/bin/lazyfs", "/opt/lazyfs/lazyfs"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn tool_present(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the instrument failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Instrument {
    Gone(String),
    Hung(String),
}

/// The FIFOs LazyFS takes commands from and reports on, made once per
/// run with one reader of the reports (a reader per mount would race the
/// next mount's for its lines).
struct Fifos {
    faults: PathBuf,
    completed_path: PathBuf,
    /// Lines LazyFS writes to its completion FIFO.
    completed: mpsc::Receiver<String>,
}

impl Fifos {
    fn make(work: &Path) -> Result<Fifos, String> {
        let faults = work.join("faults.fifo");
        let completed_path = work.join("completed.fifo");
        for f in [&faults, &completed_path] {
            let ok = Command::new("mkfifo")
                .arg(f)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("mkfifo {}", f.display()));
            }
        }
        // Opened read-write so that neither side blocks on open; LazyFS
        // opens it write-only when it starts.
        let reader = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&completed_path)
            .map_err(|e| format!("open {}: {e}", completed_path.display()))?;
        let (tx, completed) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Fifos {
            faults,
            completed_path,
            completed,
        })
    }
}

/// A LazyFS process serving `mnt` over `root`.
struct LazyFs {
    child: Child,
    mnt: PathBuf,
    fifo: PathBuf,
}

impl LazyFs {
    /// Mounts `root` at `mnt` (both exist); `work` holds the config.
    fn mount(
        binary: &Path,
        root: &Path,
        mnt: &Path,
        work: &Path,
        fifos: &Fifos,
    ) -> Result<LazyFs, String> {
        let (fifo, done) = (fifos.faults.clone(), fifos.completed_path.clone());
        let config = work.join("lazyfs.toml");
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n\
                 [cache]\napply_eviction=false\n\
                 [cache.simple]\ncustom_size=\"2gb\"\nblocks_per_page=1\n\
                 [filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
                fifo.display(),
                done.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("lazyfs.log"))
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        command
            .arg(mnt)
            .arg("--config-path")
            .arg(&config)
            .args(["-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f");
        if !threaded_lazyfs() {
            // FUSE's single-threaded loop.
            command.arg("-s");
        }
        let child = command
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let mut lazyfs = LazyFs {
            child,
            mnt: mnt.to_owned(),
            fifo,
        };
        let deadline = Instant::now() + LAZYFS_STEP_TIMEOUT;
        while !is_mounted(mnt) {
            if let Some(gone) = lazyfs.gone() {
                return Err(format!("LazyFS did not mount: {gone:?}"));
            }
            if Instant::now() > deadline {
                return Err("LazyFS did not mount in time".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(lazyfs)
    }

    fn gone(&mut self) -> Option<Instrument> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(Instrument::Gone(format!("LazyFS exited: {status}"))),
            Ok(None) => None,
            Err(e) => Some(Instrument::Gone(format!("LazyFS: {e}"))),
        }
    }

    /// The watchdog's check: LazyFS is running and answers, in time, the
    /// creation, write, fsync, read and removal of a new file at the top of
    /// the mount (beside the data directory). A `stat` of the mount is not
    /// enough: the kernel answers it from its cache while LazyFS is stuck.
    fn probe(&mut self) -> Result<(), Instrument> {
        if let Some(gone) = self.gone() {
            return Err(gone);
        }
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let file = self
            .mnt
            .join(format!(".watchdog-{}-{n}", std::process::id()));
        let (tx, rx) = mpsc::channel();
        // A hung FUSE request blocks this thread for good; it is left
        // behind, and LazyFS is killed, which fails it.
        std::thread::spawn(move || {
            let r = (|| -> std::io::Result<()> {
                let mut f = File::create(&file)?;
                f.write_all(b"probe")?;
                f.sync_all()?;
                drop(f);
                if std::fs::read(&file)? != b"probe" {
                    return Err(std::io::Error::other("the probe file reads back wrong"));
                }
                std::fs::remove_file(&file)
            })()
            .map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        match rx.recv_timeout(PROBE_TIMEOUT) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match self.gone() {
                Some(gone) => Err(gone),
                None => Err(Instrument::Gone(format!("the mount fails: {e}"))),
            },
            Err(_) => Err(Instrument::Hung(format!(
                "a probe file on the mount unanswered for {} s",
                PROBE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// `lazyfs::clear-cache`: every write not fsynced is gone. Waits for
    /// LazyFS to say it finished.
    fn clear_cache(&mut self, completed: &mpsc::Receiver<String>) -> Result<(), Instrument> {
        while completed.try_recv().is_ok() {}
        let fifo = self.fifo.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = OpenOptions::new()
                .write(true)
                .open(&fifo)
                .and_then(|mut f| f.write_all(b"lazyfs::clear-cache\n"));
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        match rx.recv_timeout(LAZYFS_STEP_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Instrument::Gone(format!("fault FIFO: {e}"))),
            Err(_) => return Err(Instrument::Hung("the fault FIFO is not read".into())),
        }
        let deadline = Instant::now() + LAZYFS_STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match completed.recv_timeout(left) {
                Ok(line) if line.contains("finished::clear-cache") => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    return Err(self.gone().unwrap_or_else(|| {
                        Instrument::Hung("clear-cache did not finish in time".into())
                    }))
                }
            }
        }
    }

    /// Unmounts and waits for LazyFS to exit; kills it if it does not.
    fn unmount(mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + LAZYFS_STEP_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.abort();
    }

    /// Kills LazyFS and detaches the mount (an instrument failure).
    fn abort(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.abort();
    }
}

fn freeze_round() -> Option<u64> {
    std::env::var("FERRO_LAZYFS_FREEZE_ROUND")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn threaded_lazyfs() -> bool {
    std::env::var("FERRO_LAZYFS_THREADED").is_ok_and(|v| v == "1")
}

fn is_mounted(mnt: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(1) == Some(&*mnt.to_string_lossy()))
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a run counted.
#[derive(Debug, Default)]
struct Figures {
    cuts: u64,
    instrument_failures: u64,
    instrument_reasons: Vec<String>,
    acknowledged: u64,
    objects_verified: u64,
    uploads_resumed: u64,
}

impl Figures {
    /// Adds what a data directory's models acknowledged and hold, once its
    /// last check passed.
    fn count_directory(&mut self, run: &Run) {
        self.acknowledged += run
            .models
            .iter()
            .map(|m| m.lock().acknowledged)
            .sum::<u64>();
        self.objects_verified += run
            .models
            .iter()
            .map(|m| workload::objects(m) as u64)
            .sum::<u64>();
    }
}

/// One round's end, when not a pass.
enum RoundFailure {
    Instrument(Instrument),
    Ferro(String),
}

/// The text of a panic payload.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Starts ferro on the mount; a start that fails is ferro's fault only if
/// LazyFS is healthy.
fn start_server(lazyfs: &mut LazyFs, data: &Path) -> Result<TestServer, RoundFailure> {
    let args = ["--durability", "always"];
    match std::panic::catch_unwind(|| TestServer::start(data, &args)) {
        Ok(s) => Ok(s),
        Err(e) => match lazyfs.probe() {
            Err(i) => Err(RoundFailure::Instrument(i)),
            Ok(()) => Err(RoundFailure::Ferro(panic_text(&*e))),
        },
    }
}

/// Waits until the server is ready (startup reconciliation done).
async fn wait_ready(base: &str) -> bool {
    let c = workload::client_with_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Every line the server logged so far.
fn drain_log(server: &TestServer, into: &mut Vec<String>) {
    while let Ok(line) = server.log.try_recv() {
        into.push(line);
    }
}

struct Run {
    lazyfs_binary: PathBuf,
    root: PathBuf,
    mnt: PathBuf,
    work: PathBuf,
    fifos: Fifos,
    models: Vec<Arc<Mutex<Model>>>,
}

impl Run {
    fn data(&self) -> PathBuf {
        self.mnt.join("data")
    }

    /// A fresh data directory and models (after an instrument failure,
    /// what the disk holds is no evidence either way).
    fn reset(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        std::fs::create_dir_all(&self.root).unwrap();
        self.models = (0..CLIENTS).map(|_| Arc::default()).collect();
    }

    /// One cut: load, SIGKILL, clear LazyFS's cache, restart LazyFS and
    /// ferro, verify.
    async fn round(
        &mut self,
        round: u64,
        lazyfs: &mut Option<LazyFs>,
        rng: &mut Rng,
        load_ms_max: u64,
        figures: &mut Figures,
    ) -> Result<(), RoundFailure> {
        let fs = lazyfs.as_mut().expect("mounted");
        let mut server = start_server(fs, &self.data())?;
        let base = format!("http://{}", server.addr);
        if !wait_ready(&base).await {
            return Err(match fs.probe() {
                Err(i) => RoundFailure::Instrument(i),
                Ok(()) => RoundFailure::Ferro("the server never became ready".into()),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client_loop(
                    i,
                    base.clone(),
                    self.models[i].clone(),
                    stop.clone(),
                    rng.next(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100 + rng.below(load_ms_max))).await;
        // The power goes: the process first, then every unsynced write.
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            if let Err(e) = t.await {
                let text = e.into_panic();
                return Err(match fs.probe() {
                    Err(i) => RoundFailure::Instrument(i),
                    Ok(()) => RoundFailure::Ferro(format!(
                        "a client failed before the cut: {}",
                        panic_text(&*text)
                    )),
                });
            }
        }
        let mut log = server.startup_log.clone();
        drain_log(&server, &mut log);
        drop(server);
        fs.probe().map_err(RoundFailure::Instrument)?;
        fs.clear_cache(&self.fifos.completed)
            .map_err(RoundFailure::Instrument)?;
        // LazyFS restarts too: nothing of the old process (or the kernel's
        // cache of the mount) survives the cut.
        lazyfs.take().expect("mounted").unmount();
        *lazyfs = Some(
            LazyFs::mount(
                &self.lazyfs_binary,
                &self.root,
                &self.mnt,
                &self.work,
                &self.fifos,
            )
            .map_err(|e| RoundFailure::Instrument(Instrument::Gone(e)))?,
        );
        let fs = lazyfs.as_mut().expect("mounted");
        let server = start_server(fs, &self.data())?;
        let base = format!("http://{}", server.addr);
        if !wait_ready(&base).await {
            return Err(match fs.probe() {
                Err(i) => RoundFailure::Instrument(i),
                Ok(()) => RoundFailure::Ferro("the server never became ready after the cut".into()),
            });
        }
        if freeze_round() == Some(round) {
            let pid = fs.child.id().to_string();
            let _ = Command::new("kill").args(["-STOP", &pid]).status();
            let acknowledged: usize = self.models.iter().map(|m| workload::objects(m)).sum();
            eprintln!(
                "round {round}: LazyFS stopped after ferro restarted; {acknowledged} acknowledged objects to verify"
            );
        }
        let c = workload::client_with_timeout(Duration::from_secs(60));
        for (i, m) in self.models.iter().enumerate() {
            let resumed_before = m.lock().has_interrupted_upload();
            let (c, base, m) = (c.clone(), base.clone(), m.clone());
            let checked = tokio::spawn(async move { check(&c, &base, i, &m).await }).await;
            if let Err(e) = checked {
                let text = panic_text(&*e.into_panic());
                return Err(match fs.probe() {
                    Err(i) => RoundFailure::Instrument(i),
                    Ok(()) => RoundFailure::Ferro(text),
                });
            }
            if resumed_before {
                figures.uploads_resumed += 1;
            }
        }
        let mut after = server.startup_log.clone();
        drain_log(&server, &mut after);
        log.extend(after);
        if let Some(line) = log.iter().find(|l| l.contains(LOST_BYTES_WARNING)) {
            return Err(RoundFailure::Ferro(format!("the server warned: {line}")));
        }
        drop(server);
        // A cut counts once everything was verified after it.
        figures.cuts += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_power_cuts_on_lazyfs() {
    let required = std::env::var("FERRO_REQUIRE_LAZYFS").is_ok_and(|v| v == "1");
    let missing = match lazyfs_binary() {
        None => Some("no LazyFS binary (set FERRO_LAZYFS to its path)".to_string()),
        Some(_) if !Path::new("/dev/fuse").exists() => Some("no /dev/fuse".into()),
        Some(_) if !tool_present("fusermount3") => Some("no fusermount3 (package fuse3)".into()),
        Some(_) => None,
    };
    if let Some(why) = missing {
        assert!(!required, "FERRO_REQUIRE_LAZYFS=1 but {why}");
        eprintln!("skipping the LazyFS power-loss test: {why}");
        return;
    }
    let rounds = env_u64("FERRO_LAZYFS_ROUNDS", 3);
    let seed = env_u64("FERRO_LAZYFS_SEED", 0x1a2f);
    let load_ms_max = env_u64("FERRO_LAZYFS_LOAD_MS_MAX", 1500);
    let cuts_per_dir = env_u64("FERRO_LAZYFS_CUTS_PER_DIR", 50).max(1);
    let mut cuts_in_dir = 0;
    let mut dirs_verified = 0u64;
    let scratch = tempfile::tempdir().unwrap();
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut run = Run {
        lazyfs_binary: lazyfs_binary().expect("checked"),
        root: scratch.path().join("root"),
        mnt: scratch.path().join("mnt"),
        fifos: Fifos::make(&work).unwrap(),
        work,
        models: Vec::new(),
    };
    std::fs::create_dir_all(&run.mnt).unwrap();
    run.reset();
    let mut rng = Rng(seed);
    let mut figures = Figures::default();
    let mut lazyfs: Option<LazyFs> = None;
    let started = Instant::now();
    for round in 0..rounds {
        if lazyfs.is_none() {
            match LazyFs::mount(
                &run.lazyfs_binary,
                &run.root,
                &run.mnt,
                &run.work,
                &run.fifos,
            ) {
                Ok(l) => lazyfs = Some(l),
                Err(e) => panic!("LazyFS does not mount at all: {e}"),
            }
        }
        match run
            .round(round, &mut lazyfs, &mut rng, load_ms_max, &mut figures)
            .await
        {
            Ok(()) => {
                cuts_in_dir += 1;
                if cuts_in_dir == cuts_per_dir {
                    figures.count_directory(&run);
                    dirs_verified += 1;
                    cuts_in_dir = 0;
                    if let Some(l) = lazyfs.take() {
                        l.unmount();
                    }
                    run.reset();
                }
            }
            Err(RoundFailure::Instrument(why)) => {
                eprintln!("round {round}: instrument failure, round aborted: {why:?}");
                figures.instrument_failures += 1;
                figures.instrument_reasons.push(format!("{why:?}"));
                if let Some(mut l) = lazyfs.take() {
                    l.abort();
                }
                run.reset();
                cuts_in_dir = 0;
            }
            Err(RoundFailure::Ferro(why)) => {
                if let Some(l) = lazyfs.take() {
                    l.unmount();
                }
                panic!(
                    "seed {seed:#x} round {round} (after {} cuts): ferro failed: {why}",
                    figures.cuts
                );
            }
        }
        if round % 10 == 9 {
            eprintln!(
                "round {}: {} cuts, {} instrument failures, {:.0} s",
                round + 1,
                figures.cuts,
                figures.instrument_failures,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if let Some(l) = lazyfs.take() {
        l.unmount();
    }
    figures.count_directory(&run);
    eprintln!(
        "LazyFS power loss, seed {seed:#x}{}: {} cuts, 0 lost acknowledged writes, 0 corrupted reads, \
         0 lost-bytes warnings, 0 uploads neither resumable nor completed ({} cut uploads resumed or \
         found completed); {} instrument failures {:?}; {} operations acknowledged, {} objects \
         verified at the last check of each of {} data directories; {:.0} s",
        if threaded_lazyfs() { " (LazyFS multi-threaded)" } else { "" },
        figures.cuts,
        figures.uploads_resumed,
        figures.instrument_failures,
        figures.instrument_reasons,
        figures.acknowledged,
        figures.objects_verified,
        dirs_verified + 1,
        started.elapsed().as_secs_f64()
    );
    assert!(
        figures.cuts > 0,
        "no round reached its cut: {} instrument failures",
        figures.instrument_failures
    );
}
