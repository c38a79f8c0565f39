//! The results of a run: what is saved with `--json`, the table of figures
//! and ratios (ferro ÷ peer), and the targets checked against them.

use crate::bigblob::{BlobResults, Transfer};
use crate::ceilings::Ceilings;
use crate::servers::Kind;
use crate::workloads::{MixedResult, Outcome, PushResult, ReadResult, TagsResult};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or("unknown".into(), |kb| {
                format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
            });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            memory,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerResults {
    pub kind: Kind,
    pub version: String,
    pub push_c1: Option<PushResult>,
    pub push_cn: Option<PushResult>,
    pub pull: Option<ReadResult>,
    pub head: Option<ReadResult>,
    pub tags: Option<Outcome<TagsResult>>,
    pub mixed: Option<MixedResult>,
    pub blob: Option<BlobResults>,
}

impl ServerResults {
    pub fn new(kind: Kind, version: String) -> ServerResults {
        ServerResults {
            kind,
            version,
            push_c1: None,
            push_cn: None,
            pull: None,
            head: None,
            tags: None,
            mixed: None,
            blob: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub push_images_c1: usize,
    pub push_images_cn: usize,
    pub push_concurrency: usize,
    pub pull_concurrency: usize,
    pub head_concurrency: usize,
    pub read_seconds: u64,
    pub blob_mib: u64,
    pub chunk_mib: u64,
    pub tags: usize,
    pub tags_page: usize,
    pub mixed_concurrency: usize,
    pub mixed_seconds: u64,
    pub client_threads: usize,
    /// How downloads are checked as they arrive.
    pub download_check: crate::content::Check,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub command: String,
    pub machine: Machine,
    pub settings: Settings,
    pub ceilings: Option<Ceilings>,
    pub servers: Vec<ServerResults>,
}

enum Cell {
    Num(f64),
    /// A figure with a remark; ratios are still taken.
    NumNote(f64, String),
    Text(String),
    Missing,
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

struct Row {
    label: String,
    unit: &'static str,
    better: Better,
    cells: Vec<Cell>,
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn transfer_cell(t: Option<&Outcome<Transfer>>, f: impl Fn(&Transfer) -> f64) -> Cell {
    match t {
        Some(Outcome::Done(t)) => Cell::Num(f(t)),
        Some(Outcome::Unable(why)) => Cell::Text(why.clone()),
        None => Cell::Missing,
    }
}

fn rows(run: &Run) -> Vec<Row> {
    let s = &run.settings;
    let servers = &run.servers;
    let row = |label: String, unit, better, f: &dyn Fn(&ServerResults) -> Cell| Row {
        label,
        unit,
        better,
        cells: servers.iter().map(f).collect(),
    };
    let num = |v: Option<f64>| v.map_or(Cell::Missing, Cell::Num);
    let capped = |capped: bool, v: f64| {
        if capped {
            Cell::Text(format!("{} (time-capped)", fmt_num(v)))
        } else {
            Cell::Num(v)
        }
    };
    fn blob(r: &ServerResults) -> Option<&BlobResults> {
        r.blob.as_ref()
    }
    // The server's peak RSS during a transfer, and what the transfer
    // added to the RSS it started with.
    type Pick = fn(&BlobResults) -> &Outcome<Transfer>;
    let peak_rss = |pick: Pick| {
        row("  server peak RSS".into(), "MiB", Better::Lower, &|r| {
            transfer_cell(blob(r).map(pick), |t| t.peak_rss_bytes as f64 / MIB)
        })
    };
    let added_rss = |pick: Pick| {
        row(
            "    of it added by the transfer".into(),
            "MiB",
            Better::Lower,
            &|r| {
                transfer_cell(blob(r).map(pick), |t| {
                    t.peak_rss_bytes.saturating_sub(t.rss_before_bytes) as f64 / MIB
                })
            },
        )
    };
    let size = format!("{} MiB", s.blob_mib);
    vec![
        row(
            format!("push small images, c=1 ({} images)", s.push_images_c1),
            "images/s",
            Better::Higher,
            &|r| {
                r.push_c1.as_ref().map_or(Cell::Missing, |p| {
                    capped(p.time_capped, p.images_per_second)
                })
            },
        ),
        row(
            format!(
                "push small images, c={} ({} images)",
                s.push_concurrency, s.push_images_cn
            ),
            "images/s",
            Better::Higher,
            &|r| {
                r.push_cn.as_ref().map_or(Cell::Missing, |p| {
                    capped(p.time_capped, p.images_per_second)
                })
            },
        ),
        row(
            "  c=1 latency p50: POST / blob PUT / manifest PUT".into(),
            "ms",
            Better::Neither,
            &|r| {
                r.push_c1.as_ref().map_or(Cell::Missing, |p| {
                    Cell::Text(format!(
                        "{} / {} / {}",
                        fmt_num(p.post_p50_ms),
                        fmt_num(p.put_blob_p50_ms),
                        fmt_num(p.put_manifest_p50_ms)
                    ))
                })
            },
        ),
        row(
            format!("pull (manifest + 2 blobs), c={}", s.pull_concurrency),
            "requests/s",
            Better::Higher,
            &|r| num(r.pull.as_ref().map(|p| p.requests_per_second)),
        ),
        row("  pull latency p50".into(), "ms", Better::Lower, &|r| {
            num(r.pull.as_ref().map(|p| p.p50_ms))
        }),
        row("  pull latency p99".into(), "ms", Better::Lower, &|r| {
            num(r.pull.as_ref().map(|p| p.p99_ms))
        }),
        row(
            format!("HEAD manifest by tag, c={}", s.head_concurrency),
            "requests/s",
            Better::Higher,
            &|r| num(r.head.as_ref().map(|p| p.requests_per_second)),
        ),
        row("  HEAD latency p99".into(), "ms", Better::Lower, &|r| {
            num(r.head.as_ref().map(|p| p.p99_ms))
        }),
        row(
            format!("upload {size} blob, monolithic PUT"),
            "MB/s",
            Better::Higher,
            &|r| transfer_cell(blob(r).map(|b| &b.upload_monolithic), |t| t.mb_per_second),
        ),
        peak_rss(|b| &b.upload_monolithic),
        added_rss(|b| &b.upload_monolithic),
        row(
            format!("upload {size} blob, {} MiB PATCH chunks", s.chunk_mib),
            "MB/s",
            Better::Higher,
            &|r| transfer_cell(blob(r).map(|b| &b.upload_chunked), |t| t.mb_per_second),
        ),
        peak_rss(|b| &b.upload_chunked),
        added_rss(|b| &b.upload_chunked),
        row(
            format!(
                "download {size} blob just pushed, right after the uploads ({})",
                s.download_check.describe()
            ),
            "MB/s",
            Better::Higher,
            &|r| {
                transfer_cell(blob(r).map(|b| &b.download_after_upload), |t| {
                    t.mb_per_second
                })
            },
        ),
        peak_rss(|b| &b.download_after_upload),
        row(
            format!("download {size} blob ({})", s.download_check.describe()),
            "MB/s",
            Better::Higher,
            &|r| transfer_cell(blob(r).map(|b| &b.download), |t| t.mb_per_second),
        ),
        peak_rss(|b| &b.download),
        added_rss(|b| &b.download),
        row(
            format!("list {} tags, n={} following Link", s.tags, s.tags_page),
            "ms",
            Better::Lower,
            &|r| match &r.tags {
                Some(Outcome::Done(t)) => match t.deviations() {
                    Some(d) => Cell::NumNote(t.list_seconds * 1000.0, d),
                    None => Cell::Num(t.list_seconds * 1000.0),
                },
                Some(Outcome::Unable(why)) => Cell::Text(why.clone()),
                None => Cell::Missing,
            },
        ),
        row(
            format!("  tagging rate while setting up (c={})", s.push_concurrency),
            "tags/s",
            Better::Higher,
            &|r| match &r.tags {
                Some(Outcome::Done(t)) => Cell::Num(t.tags as f64 / t.setup_seconds),
                _ => Cell::Missing,
            },
        ),
        row(
            "  requests per listing".into(),
            "requests",
            Better::Neither,
            &|r| match &r.tags {
                Some(Outcome::Done(t)) => Cell::Num(t.requests_per_listing as f64),
                _ => Cell::Missing,
            },
        ),
        row(
            format!(
                "mixed 90% pull / 10% push, c={}, {} s",
                s.mixed_concurrency, s.mixed_seconds
            ),
            "ops/s",
            Better::Higher,
            &|r| num(r.mixed.as_ref().map(|m| m.ops_per_second)),
        ),
        row("  mixed errors".into(), "count", Better::Lower, &|r| {
            num(r.mixed.as_ref().map(|m| m.errors as f64))
        }),
        row(
            format!("server CPU per pushed image (c={})", s.push_concurrency),
            "ms",
            Better::Lower,
            &|r| {
                num(r
                    .push_cn
                    .as_ref()
                    .map(|p| p.spent.server_cpu_seconds * 1e3 / p.images.max(1) as f64))
            },
        ),
        row(
            "server CPU per pull request".into(),
            "µs",
            Better::Lower,
            &|r| {
                num(r
                    .pull
                    .as_ref()
                    .map(|p| p.spent.server_cpu_seconds * 1e6 / p.requests.max(1) as f64))
            },
        ),
        row("server CPU per HEAD".into(), "µs", Better::Lower, &|r| {
            num(r
                .head
                .as_ref()
                .map(|p| p.spent.server_cpu_seconds * 1e6 / p.requests.max(1) as f64))
        }),
        row(
            "  ÷ nginx's CPU per HEAD in this run (ceilings)".into(),
            "×",
            Better::Lower,
            &|r| {
                let nginx = run
                    .ceilings
                    .as_ref()
                    .and_then(|c| c.nginx_cpu_us_per_request);
                num(r.head.as_ref().zip(nginx).map(|(p, nginx)| {
                    p.spent.server_cpu_seconds * 1e6 / p.requests.max(1) as f64 / nginx
                }))
            },
        ),
        row("client CPU per HEAD".into(), "µs", Better::Neither, &|r| {
            num(r
                .head
                .as_ref()
                .map(|p| p.spent.client_cpu_seconds * 1e6 / p.requests.max(1) as f64))
        }),
        row(
            "server time after the last body byte (monolithic)".into(),
            "ms",
            Better::Lower,
            &|r| {
                transfer_cell(blob(r).map(|b| &b.upload_monolithic), |t| {
                    t.server_tail_seconds * 1e3
                })
            },
        ),
        row(
            "server CPU per MB uploaded (monolithic)".into(),
            "ms",
            Better::Lower,
            &|r| {
                transfer_cell(blob(r).map(|b| &b.upload_monolithic), |t| {
                    t.spent.server_cpu_seconds * 1e3 / (t.bytes as f64 / 1e6)
                })
            },
        ),
    ]
}

/// The figures as a Markdown table: one column per server, then one
/// ratio column (ferro ÷ peer) per peer.
pub fn table(run: &Run) -> String {
    let kinds: Vec<Kind> = run.servers.iter().map(|s| s.kind).collect();
    let ferro = kinds.iter().position(|k| *k == Kind::Ferro);
    let mut header = vec!["workload".to_owned(), "unit".to_owned()];
    header.extend(kinds.iter().map(|k| k.name().to_owned()));
    if ferro.is_some() {
        header.extend(
            kinds
                .iter()
                .filter(|k| **k != Kind::Ferro)
                .map(|k| format!("ferro ÷ {}", k.name())),
        );
    }
    let mut lines = vec![header.clone()];
    for row in rows(run)
        .into_iter()
        .filter(|r| r.cells.iter().any(|c| !matches!(c, Cell::Missing)))
    {
        let mut line = vec![row.label.clone(), row.unit.to_owned()];
        line.extend(row.cells.iter().map(|c| match c {
            Cell::Num(v) => fmt_num(*v),
            Cell::NumNote(v, note) => format!("{} ({note})", fmt_num(*v)),
            Cell::Text(t) => t.clone(),
            Cell::Missing => "–".into(),
        }));
        if let Some(f) = ferro {
            for (i, _) in kinds.iter().enumerate().filter(|(_, k)| **k != Kind::Ferro) {
                let value = |c: &Cell| match c {
                    Cell::Num(v) | Cell::NumNote(v, _) => Some(*v),
                    _ => None,
                };
                line.push(match (value(&row.cells[f]), value(&row.cells[i])) {
                    (Some(a), Some(b)) if b != 0.0 && row.better != Better::Neither => {
                        fmt_ratio(a / b)
                    }
                    _ => "–".into(),
                });
            }
        }
        lines.push(line);
    }
    let mut out = markdown(&lines);
    out.push_str("\nRatios are ferro ÷ peer: above 1× is better for rates, below 1× for ms, MiB, µs and counts.\n");
    out
}

fn markdown(lines: &[Vec<String>]) -> String {
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        out.push('|');
        for (c, cell) in line.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c < 2 {
                out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            } else {
                out.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
            }
        }
        out.push('\n');
        if n == 0 {
            out.push('|');
            for (c, w) in widths.iter().enumerate() {
                out.push_str(if c < 2 { ":" } else { "-" });
                out.push_str(&"-".repeat(*w));
                out.push_str(if c < 2 { "-|" } else { ":|" });
            }
            out.push('\n');
        }
    }
    out
}

pub fn ceilings_table(c: &Ceilings, settings: &Settings) -> String {
    let size = format!("{} MiB", settings.blob_mib.min(1024));
    let opt = |v: Option<f64>| v.map_or("not measured".into(), fmt_num);
    let mut lines = vec![
        vec![
            "ceiling".to_owned(),
            "unit".to_owned(),
            "measured".to_owned(),
        ],
        vec![
            "sha256, one core (sha2, 64 MiB buffer)".into(),
            "MB/s".into(),
            fmt_num(c.sha256_mb_per_second),
        ],
        vec![
            "loopback TCP, one sender → one receiver".into(),
            "MB/s".into(),
            fmt_num(c.loopback_mb_per_second),
        ],
        vec![
            "loopback TCP, the receiver hashing (sha256) what it reads".into(),
            "MB/s".into(),
            fmt_num(c.loopback_hashed_mb_per_second),
        ],
        vec![
            "loopback TCP, the receiver comparing what it reads with what was sent".into(),
            "MB/s".into(),
            fmt_num(c.loopback_compared_mb_per_second),
        ],
        vec![
            format!("disk: write {} in 1 MiB blocks (page cache)", size),
            "MB/s".into(),
            fmt_num(c.file_write_mb_per_second),
        ],
        vec![
            format!("disk: write {} in 1 MiB blocks + fsync", size),
            "MB/s".into(),
            fmt_num(c.file_write_fsync_mb_per_second),
        ],
        vec![
            format!("disk: write {} with O_DIRECT + fsync", size),
            "MB/s".into(),
            fmt_num(c.file_write_direct_fsync_mb_per_second),
        ],
        vec![
            "disk: append 200 B + fdatasync, median (work dir)".into(),
            "µs".into(),
            fmt_num(c.fdatasync_append_us),
        ],
        vec![
            "disk: 16 KiB file write + fsync + rename + dir fsync, median".into(),
            "µs".into(),
            fmt_num(c.small_file_commit_us),
        ],
        vec![
            format!(
                "nginx, 512 B file, {}",
                c.nginx_wrk_command.as_deref().unwrap_or("wrk")
            ),
            "requests/s".into(),
            opt(c.nginx_wrk_requests_per_second),
        ],
        vec![
            "nginx, HEAD of the same file, this benchmark's client".into(),
            "requests/s".into(),
            opt(c.nginx_client_head_requests_per_second),
        ],
        vec![
            "nginx CPU per request in that run (master + workers)".into(),
            "µs".into(),
            opt(c.nginx_cpu_us_per_request),
        ],
    ];
    if c.nginx_download_mb_per_second.is_some() {
        let blob = format!("{} MiB", settings.blob_mib);
        let check = settings.download_check.describe();
        lines.push(vec![
            format!(
                "nginx, download of a {blob} file just written, this benchmark's client ({check})"
            ),
            "MB/s".into(),
            opt(c.nginx_download_mb_per_second),
        ]);
        lines.push(vec![
            "nginx with sendfile on, the same download".into(),
            "MB/s".into(),
            opt(c.nginx_sendfile_download_mb_per_second),
        ]);
    }
    for n in &c.notes {
        lines.push(vec![format!("note: {n}"), String::new(), String::new()]);
    }
    markdown(&lines)
}

/// One target from the issue, checked against this run's figures.
pub struct Check {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

pub fn checks(run: &Run) -> Vec<Check> {
    let get = |k: Kind| run.servers.iter().find(|s| s.kind == k);
    let Some(ferro) = get(Kind::Ferro) else {
        return Vec::new();
    };
    let fos = get(Kind::FerroOciServer);
    let dist = get(Kind::Distribution);
    let mut out = Vec::new();
    let mut ratio = |target: String, a: Option<f64>, b: Option<f64>, min: f64| {
        let (measured, met) = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => (
                format!("{} ({} vs {})", fmt_ratio(a / b), fmt_num(a), fmt_num(b)),
                Some(a / b >= min),
            ),
            // Not measured in this run: nothing to say.
            _ => return,
        };
        out.push(Check {
            target,
            measured,
            met,
        });
    };
    let push1 = |s: &ServerResults| s.push_c1.as_ref().map(|p| p.images_per_second);
    let pushn = |s: &ServerResults| s.push_cn.as_ref().map(|p| p.images_per_second);
    let pull = |s: &ServerResults| s.pull.as_ref().map(|p| p.requests_per_second);
    let head = |s: &ServerResults| s.head.as_ref().map(|p| p.requests_per_second);
    let mixed = |s: &ServerResults| s.mixed.as_ref().map(|p| p.ops_per_second);
    let c = run.settings.push_concurrency;
    ratio(
        "push c=1 ≥ 6× ferro-oci-server".into(),
        push1(ferro),
        fos.and_then(push1),
        6.0,
    );
    ratio(
        "push c=1 ≥ 10× distribution".into(),
        push1(ferro),
        dist.and_then(push1),
        10.0,
    );
    ratio(
        format!("push c={c} ≥ 6× ferro-oci-server"),
        pushn(ferro),
        fos.and_then(pushn),
        6.0,
    );
    ratio(
        format!("push c={c} ≥ 10× distribution"),
        pushn(ferro),
        dist.and_then(pushn),
        10.0,
    );
    ratio(
        "pull ≥ 1.25× ferro-oci-server".into(),
        pull(ferro),
        fos.and_then(pull),
        1.25,
    );
    ratio(
        "HEAD ≥ 1.15× ferro-oci-server".into(),
        head(ferro),
        fos.and_then(head),
        1.15,
    );
    let nginx = run
        .ceilings
        .as_ref()
        .and_then(|c| c.nginx_wrk_requests_per_second);
    ratio(
        "HEAD ≥ 75% of nginx (wrk) ceiling".into(),
        head(ferro),
        nginx,
        0.75,
    );
    ratio(
        "mixed 90/10 ≥ 5× ferro-oci-server".into(),
        mixed(ferro),
        fos.and_then(mixed),
        5.0,
    );
    let sha = run.ceilings.as_ref().map(|c| c.sha256_mb_per_second);
    let loopback = run.ceilings.as_ref().map(|c| c.loopback_mb_per_second);
    let done = |o: Option<&Outcome<Transfer>>| match o {
        Some(Outcome::Done(t)) => Some(t.clone()),
        _ => None,
    };
    let b = ferro.blob.as_ref();
    let mono = done(b.map(|b| &b.upload_monolithic));
    let chunked = done(b.map(|b| &b.upload_chunked));
    let down = done(b.map(|b| &b.download));
    let down_after = done(b.map(|b| &b.download_after_upload));
    ratio(
        "monolithic upload ≥ 80% of sha256 on one core".into(),
        mono.as_ref().map(|t| t.mb_per_second),
        sha,
        0.8,
    );
    ratio(
        "chunked upload ≥ 80% of sha256 on one core".into(),
        chunked.as_ref().map(|t| t.mb_per_second),
        sha,
        0.8,
    );
    ratio(
        "download ≥ 70% of loopback bandwidth".into(),
        down.as_ref().map(|t| t.mb_per_second),
        loopback,
        0.7,
    );
    let dist_down_after = dist
        .and_then(|d| d.blob.as_ref())
        .and_then(|b| done(Some(&b.download_after_upload)));
    ratio(
        "download right after the uploads ≥ 1.5× distribution".into(),
        down_after.as_ref().map(|t| t.mb_per_second),
        dist_down_after.as_ref().map(|t| t.mb_per_second),
        1.5,
    );
    if let Some(t) = &down_after {
        out.push(Check {
            target: "download right after the uploads ≥ 1,750 MB/s".into(),
            measured: format!("{} MB/s", fmt_num(t.mb_per_second)),
            met: Some(t.mb_per_second >= 1750.0),
        });
    }
    // Server CPU per HEAD against nginx's per request, measured in the
    // same run: at most 10 µs, and within 10% of nginx's.
    let head_cpu = ferro
        .head
        .as_ref()
        .map(|p| p.spent.server_cpu_seconds * 1e6 / p.requests.max(1) as f64);
    let nginx_cpu = run
        .ceilings
        .as_ref()
        .and_then(|c| c.nginx_cpu_us_per_request);
    if let Some(cpu) = head_cpu {
        out.push(Check {
            target: "server CPU per HEAD ≤ 10 µs".into(),
            measured: format!("{} µs", fmt_num(cpu)),
            met: Some(cpu <= 10.0),
        });
        if let Some(nginx) = nginx_cpu.filter(|n| *n > 0.0) {
            out.push(Check {
                target: "server CPU per HEAD ≤ 1.1× nginx's".into(),
                measured: format!(
                    "{} ({} vs {} µs)",
                    fmt_ratio(cpu / nginx),
                    fmt_num(cpu),
                    fmt_num(nginx)
                ),
                met: Some(cpu / nginx <= 1.1),
            });
        }
    }
    if let Some(p) = &ferro.pull {
        out.push(Check {
            target: "pull p99 < 5 ms".into(),
            measured: format!("{} ms", fmt_num(p.p99_ms)),
            met: Some(p.p99_ms < 5.0),
        });
    }
    for (what, t) in [
        ("monolithic upload", &mono),
        ("chunked upload", &chunked),
        ("download", &down),
    ] {
        if let Some(t) = t {
            let mib = t.peak_rss_bytes as f64 / MIB;
            out.push(Check {
                target: format!("server peak RSS < 100 MiB during {what}"),
                measured: format!("{} MiB", fmt_num(mib)),
                met: Some(mib < 100.0),
            });
        }
    }
    out
}

pub fn checks_table(checks: &[Check]) -> String {
    let mut lines = vec![vec![
        "target (ferro, durability always)".to_owned(),
        "measured".to_owned(),
        "met".to_owned(),
    ]];
    for c in checks {
        lines.push(vec![
            c.target.clone(),
            c.measured.clone(),
            match c.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "–".into(),
            },
        ]);
    }
    markdown(&lines)
}
