//! What the benchmarks that run the real server share.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use ferro::oci::Digest;

/// The media type of [`image_config`] and [`image_manifest`].
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The config blob of image `i`: small and distinct per image.
pub fn image_config(i: u64) -> String {
    format!(r#"{{"architecture":"amd64","os":"linux","build":{i}}}"#)
}

/// The body of image `i`'s OCI manifest, shaped as real clients push them
/// (annotations included): `config` (its digest and size) and `layers`.
pub fn image_manifest(i: u64, config: (&Digest, usize), layers: &[(Digest, u64)]) -> String {
    let layer_json: Vec<String> = layers
        .iter()
        .map(|(d, s)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{s}}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}],"annotations":{{"org.opencontainers.image.created":"2025-11-27T09:00:00Z","org.opencontainers.image.revision":"{i:040x}"}}}}"#,
        config.0,
        config.1,
        layer_json.join(","),
    )
}

/// Spawns `ferro serve` on `dir` on a loopback port, with threshold
/// snapshots off (a benchmark's data set stays as it was built; the
/// shutdown snapshot stays on), and waits until it listens: the child and
/// its address. Its log is drained from then on, so it never blocks on a
/// full pipe.
pub fn spawn_ferro(dir: &Path) -> (Child, SocketAddr) {
    spawn_ferro_with(dir, &[])
}

/// [`spawn_ferro`] with more arguments for `ferro serve`.
///
/// `FERRO_BENCH_SERVER_WRAPPER` (say `valgrind --tool=callgrind`) runs
/// the server under that command, to count its instructions.
pub fn spawn_ferro_with(dir: &Path, extra_args: &[&str]) -> (Child, SocketAddr) {
    let wrapper = std::env::var("FERRO_BENCH_SERVER_WRAPPER").unwrap_or_default();
    let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
        Some((program, args)) => {
            let mut c = Process::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_ferro"));
            c
        }
        None => Process::new(env!("CARGO_BIN_EXE_ferro")),
    };
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args([
            "--snapshot-every-records",
            "0",
            "--snapshot-every-bytes",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra_args)
        // `FERRO_BENCH_RUST_LOG` (e.g. `info,ferro::archive=debug`) with
        // `FERRO_BENCH_SERVER_LOG=<file>`: the servers' log lines are kept.
        .env(
            "RUST_LOG",
            std::env::var("FERRO_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferro");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("ferro exited before listening")
            .expect("read ferro's log");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            break addr.parse().expect("a socket address");
        }
    };
    let keep = std::env::var_os("FERRO_BENCH_SERVER_LOG").and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    std::thread::spawn(move || {
        let mut keep = keep;
        for line in lines.map_while(Result::ok) {
            if let Some(file) = keep.as_mut() {
                let _ = writeln!(file, "{line}");
            }
        }
    });
    (child, addr)
}

/// User + system CPU time of process `pid` so far (`/proc/PID/stat`): on a
/// shared machine a server's own CPU time moves far less than wall-clock
/// figures do.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at
    // state; utime and stime are the 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// The median of `v` (the lower middle one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() - 1) / 2]
}

/// An archive of `records` records in ~1 MiB pieces under `dir`.
pub fn build_archive(dir: &std::path::Path, records: u64) -> u64 {
    let log = dir.join("log");
    std::fs::create_dir_all(&log).unwrap();
    let actor = ferro::events::Actor {
        user: Some("ci".into()),
        peer: Some("10.1.2.3:40000".into()),
    };
    let mut piece = ferro::archive::piece::PieceBuilder::new(1, 0);
    let mut bytes = 0u64;
    let mut scratch = Vec::new();
    for seq in 1..=records {
        let entry = ferro::events::Entry {
            actor: actor.clone(),
            events: vec![ferro::events::Event::UploadStarted {
                repo: ferro::oci::RepoName::parse(&format!(
                    "team{}/service{}",
                    seq % 10,
                    seq % 1000
                ))
                .unwrap(),
                upload: format!("{seq:032x}"),
            }],
        };
        let payload = ferro::log::format::encode_payload(&entry).unwrap();
        let time = 1_764_000_000_000_000_000 + seq * 1_000_000;
        scratch.clear();
        let crc =
            ferro::log::format::encode_record(&mut scratch, seq, time, piece.last_crc, &payload);
        assert!(piece.push(seq, time, crc, &payload));
        if piece.len_bytes() >= 1 << 20 || seq == records {
            let next = ferro::archive::piece::PieceBuilder::new(seq + 1, piece.last_crc);
            let done = std::mem::replace(&mut piece, next);
            let name = done.name();
            let b = done.into_bytes();
            bytes += b.len() as u64;
            std::fs::write(dir.join(&name), b).unwrap();
        }
    }
    bytes
}

/// The value after `name` on the command line (`--records 1000`), or
/// `default` when the flag is absent; a value that does not parse stops
/// the benchmark.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let argv: Vec<String> = std::env::args().collect();
    match argv.iter().position(|a| a == name) {
        None => default,
        Some(i) => argv
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} N")),
    }
}
