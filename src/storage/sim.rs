//! A simulated file system that remembers what is durable, for power-loss
//! and disk-full tests (redb's `crash_consistency` test is the model).
//!
//! Every change is written through to a real directory (so readers, memory
//! maps included, see what the page cache would show) and recorded in a
//! shadow that keeps, per file, the *durable* bytes and the writes not yet
//! synced, and, for the directory tree, the *durable* entries and the
//! entry changes (create, rename, remove) not yet made durable by an fsync
//! of their directory. [`SimFs::crash_image`] yields what a power loss
//! would leave: the durable image, optionally with a prefix of the pending
//! changes and the last of them torn at a random byte.
//! [`CrashImage::materialize`] writes it into a real directory, where the
//! real recovery runs.
//!
//! The rules, each the weakest a POSIX file system promises:
//! - a file's data (and length) become durable with `fsync`/`fdatasync`
//!   of that file, never by syncing anything else;
//! - a directory entry (a new file, a rename, a hard link, a removal, a
//!   new directory) becomes durable with an fsync of the directory that holds
//!   the new name, together with the earlier changes it depends on (the
//!   creation of a file it renames); syncing a file does not make its name
//!   durable, and a directory whose own creation is not durable loses
//!   everything in it;
//! - a crash keeps a prefix, in order, of the pending entry changes, and of
//!   each file's pending writes, the last one possibly torn;
//! - a failed file sync forgets the writes it did not make durable, and a
//!   later sync that succeeds does not bring them back (the kernel marks
//!   the dirty pages clean: PostgreSQL's "fsyncgate"). Readers may still
//!   see them ([`AfterFailedSync::KeepCache`]) or see the old bytes
//!   ([`AfterFailedSync::DropCache`]).
//!
//! Faults ([`Fault`]) fail chosen operations with an errno (ENOSPC, EIO); a
//! failed write writes a prefix of its bytes first. [`SimFs::crash_after`]
//! cuts the power before the n-th operation: the image is taken then, and
//! every later operation fails, so nothing after it can be acknowledged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{FileHandle, FileSystem, OpenMode};

/// Linux's errno for "no space left on device".
pub const ENOSPC: i32 = 28;
/// Linux's errno for "input/output error".
pub const EIO: i32 = 5;

/// Operations recorded for diagnostics, most recent last.
const TRACE_OPS_MAX: usize = 64;

/// An operation a [`Fault`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Open,
    Write,
    SetLen,
    /// `fsync` or `fdatasync` of a file.
    Sync,
    Rename,
    /// A new name for an existing file ([`FileSystem::hard_link`]).
    Link,
    Remove,
    CreateDir,
    SyncDir,
}

/// Fails matching operations with `errno`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub op: FaultOp,
    /// Only operations on a path containing this string.
    pub path_contains: Option<String>,
    pub errno: i32,
    /// Matching operations let through before the first failure.
    pub after: u64,
    /// Failures before the fault goes away; `None`: until cleared.
    pub times: Option<u64>,
}

impl Fault {
    /// Every matching operation fails, until cleared.
    pub fn always(op: FaultOp, errno: i32) -> Fault {
        Fault {
            op,
            path_contains: None,
            errno,
            after: 0,
            times: None,
        }
    }

    /// Only on paths containing `part`.
    pub fn on(mut self, part: &str) -> Fault {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// Fails once, then goes away.
    pub fn once(mut self) -> Fault {
        self.times = Some(1);
        self
    }
}

/// What readers see after a failed file sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterFailedSync {
    /// The written bytes stay readable (the pages stay cached, marked clean).
    #[default]
    KeepCache,
    /// Reads show the durable bytes again (zeros past their end): the pages
    /// were evicted.
    DropCache,
}

/// Counts of operations, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub ops: u64,
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub failures: u64,
}

/// What is on the disk after the power went: relative path → file bytes,
/// or `None` for a directory; and the names that are hard links to a file
/// of `entries` (second name → first name), which share its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashImage {
    pub entries: BTreeMap<PathBuf, Option<Vec<u8>>>,
    pub links: BTreeMap<PathBuf, PathBuf>,
}

impl CrashImage {
    /// Writes the image under `root` (which must exist and be empty).
    /// Entries whose directory did not survive are skipped, as they would
    /// be unreachable.
    pub fn materialize(&self, root: &Path) -> io::Result<()> {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        dirs.insert(PathBuf::new());
        for (rel, entry) in &self.entries {
            let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            if !dirs.contains(&parent) {
                continue;
            }
            match entry {
                None => {
                    std::fs::create_dir(root.join(rel))?;
                    dirs.insert(rel.clone());
                }
                Some(bytes) => std::fs::write(root.join(rel), bytes)?,
            }
        }
        // Second names last, as hard links: a recovery that changes the
        // file through one name changes it under the other too.
        for (link, original) in &self.links {
            let parent = link.parent().map(Path::to_path_buf).unwrap_or_default();
            if dirs.contains(&parent) && root.join(original).is_file() {
                std::fs::hard_link(root.join(original), root.join(link))?;
            }
        }
        Ok(())
    }

    /// The bytes of the file at `rel` (a first name or a hard link), if it
    /// survived.
    pub fn file(&self, rel: &Path) -> Option<&[u8]> {
        let rel = self.links.get(rel).map(PathBuf::as_path).unwrap_or(rel);
        self.entries.get(rel)?.as_deref()
    }
}

/// A simulated, fault-injecting file system rooted at a real directory.
/// Cheap to clone; clones share the simulation.
#[derive(Clone)]
pub struct SimFs {
    sim: Arc<Mutex<Sim>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs")
            .field("root", &self.sim.lock().root)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File(usize),
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl DataOp {
    fn apply(&self, to: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, bytes } => write_at(to, *offset, bytes),
            DataOp::SetLen(len) => to.resize(*len as usize, 0),
        }
    }
}

fn write_at(to: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if to.len() < end {
        to.resize(end, 0);
    }
    to[start..end].copy_from_slice(bytes);
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<DataOp>,
    /// What readers see (and what the real file holds).
    current: Vec<u8>,
}

#[derive(Debug, Clone)]
enum MetaKind {
    Insert {
        path: PathBuf,
        node: Node,
    },
    Remove {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        node: Node,
    },
}

#[derive(Debug, Clone)]
struct MetaOp {
    kind: MetaKind,
    /// The directory whose fsync makes it durable.
    commit_dir: PathBuf,
}

impl MetaOp {
    fn apply(&self, tree: &mut BTreeMap<PathBuf, Node>) {
        match &self.kind {
            MetaKind::Insert { path, node } => {
                tree.insert(path.clone(), *node);
            }
            MetaKind::Remove { path } => {
                tree.remove(path);
            }
            MetaKind::Rename { from, to, node } => {
                tree.remove(from);
                tree.insert(to.clone(), *node);
            }
        }
    }

    fn touches(&self, paths: &BTreeSet<PathBuf>, nodes: &BTreeSet<usize>) -> bool {
        let node_hit = |n: &Node| matches!(n, Node::File(i) if nodes.contains(i));
        match &self.kind {
            MetaKind::Insert { path, node } => paths.contains(path) || node_hit(node),
            MetaKind::Remove { path } => paths.contains(path),
            MetaKind::Rename { from, to, node } => {
                paths.contains(from) || paths.contains(to) || node_hit(node)
            }
        }
    }

    fn mark(&self, paths: &mut BTreeSet<PathBuf>, nodes: &mut BTreeSet<usize>) {
        match &self.kind {
            MetaKind::Insert { path, node } => {
                paths.insert(path.clone());
                if let Node::File(i) = node {
                    nodes.insert(*i);
                }
            }
            MetaKind::Remove { path } => {
                paths.insert(path.clone());
            }
            MetaKind::Rename { from, to, node } => {
                paths.insert(from.clone());
                paths.insert(to.clone());
                if let Node::File(i) = node {
                    nodes.insert(*i);
                }
            }
        }
    }
}

struct Sim {
    root: PathBuf,
    inodes: Vec<Inode>,
    durable: BTreeMap<PathBuf, Node>,
    current: BTreeMap<PathBuf, Node>,
    meta: Vec<MetaOp>,
    faults: Vec<Fault>,
    /// Directories whose fsync does nothing (a mutation, to show a missing
    /// directory fsync is caught).
    ignored_dir_syncs: BTreeSet<PathBuf>,
    after_failed_sync: AfterFailedSync,
    stats: SimStats,
    crash_at: Option<(u64, u64)>,
    crashed: Option<CrashImage>,
    trace: VecDeque<String>,
}

/// splitmix64: a small deterministic generator, so crash images (and the
/// tests that drive the simulation) are reproducible from a seed.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn power_lost() -> io::Error {
    io::Error::other(format!("{} (simulated power loss)", err(EIO)))
}

impl SimFs {
    /// A simulation rooted at `root`, an existing directory. Whatever it
    /// holds now counts as durable.
    pub fn new(root: &Path) -> io::Result<SimFs> {
        let mut sim = Sim {
            root: root.to_owned(),
            inodes: Vec::new(),
            durable: BTreeMap::new(),
            current: BTreeMap::new(),
            meta: Vec::new(),
            faults: Vec::new(),
            ignored_dir_syncs: BTreeSet::new(),
            after_failed_sync: AfterFailedSync::default(),
            stats: SimStats::default(),
            crash_at: None,
            crashed: None,
            trace: VecDeque::new(),
        };
        sim.import(root, Path::new(""))?;
        Ok(SimFs {
            sim: Arc::new(Mutex::new(sim)),
        })
    }

    pub fn root(&self) -> PathBuf {
        self.sim.lock().root.clone()
    }

    pub fn add_fault(&self, fault: Fault) {
        self.sim.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.sim.lock().faults.clear();
    }

    pub fn set_after_failed_sync(&self, behaviour: AfterFailedSync) {
        self.sim.lock().after_failed_sync = behaviour;
    }

    /// Makes every fsync of `dir` a no-op that reports success: what
    /// forgetting to call it would do.
    pub fn ignore_dir_syncs(&self, dir: &Path) {
        let mut sim = self.sim.lock();
        let rel = sim.rel(dir).expect("a directory under the root");
        sim.ignored_dir_syncs.insert(rel);
    }

    /// Cuts the power just before operation number `ops` (counting from
    /// the start of the simulation); the image is drawn with `seed`.
    pub fn crash_after(&self, ops: u64, seed: u64) {
        let mut sim = self.sim.lock();
        sim.crash_at = Some((ops, seed));
        sim.maybe_crash();
    }

    /// Cuts the power now, if it was not cut yet, and returns the image.
    pub fn crash_now(&self, seed: u64) -> CrashImage {
        let mut sim = self.sim.lock();
        if sim.crashed.is_none() {
            let image = sim.image(seed);
            sim.crashed = Some(image);
        }
        sim.crashed.clone().expect("just set")
    }

    /// The image taken when the power was cut, if it was.
    pub fn crashed(&self) -> Option<CrashImage> {
        self.sim.lock().crashed.clone()
    }

    /// What a power loss now would leave if it kept nothing pending.
    pub fn durable_image(&self) -> CrashImage {
        self.sim.lock().image_with(0, &mut |_, _| 0, &mut Rng(0))
    }

    pub fn stats(&self) -> SimStats {
        self.sim.lock().stats
    }

    /// The last operations, oldest first (for failure messages).
    pub fn recent_ops(&self) -> Vec<String> {
        self.sim.lock().trace.iter().cloned().collect()
    }
}

impl Sim {
    fn import(&mut self, real: &Path, rel: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(real)? {
            let entry = entry?;
            let rel_child = rel.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.durable.insert(rel_child.clone(), Node::Dir);
                self.current.insert(rel_child.clone(), Node::Dir);
                self.import(&entry.path(), &rel_child)?;
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path())?;
                self.inodes.push(Inode {
                    durable: bytes.clone(),
                    pending: Vec::new(),
                    current: bytes,
                });
                let node = Node::File(self.inodes.len() - 1);
                self.durable.insert(rel_child.clone(), node);
                self.current.insert(rel_child, node);
            }
        }
        Ok(())
    }

    fn rel(&self, path: &Path) -> io::Result<PathBuf> {
        path.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is outside the simulated file system", path.display()),
                )
            })
    }

    fn is_dir(&self, rel: &Path) -> bool {
        rel.as_os_str().is_empty() || self.current.get(rel) == Some(&Node::Dir)
    }

    fn parent_of(rel: &Path) -> PathBuf {
        rel.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == TRACE_OPS_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(what);
    }

    fn maybe_crash(&mut self) {
        if self.crashed.is_none() {
            if let Some((at, seed)) = self.crash_at {
                if self.stats.ops >= at {
                    let image = self.image(seed);
                    self.crashed = Some(image);
                }
            }
        }
    }

    /// Counts an operation and decides whether it fails: power already
    /// cut, or a fault matches.
    fn begin(&mut self, op: FaultOp, rel: &Path) -> io::Result<()> {
        self.maybe_crash();
        if self.crashed.is_some() {
            self.stats.failures += 1;
            return Err(power_lost());
        }
        self.stats.ops += 1;
        let path = rel.to_string_lossy();
        for i in 0..self.faults.len() {
            let f = &mut self.faults[i];
            let matches = f.op == op && f.path_contains.as_deref().is_none_or(|p| path.contains(p));
            if !matches {
                continue;
            }
            if f.after > 0 {
                f.after -= 1;
                continue;
            }
            let errno = f.errno;
            let used_up = match &mut f.times {
                Some(t) => {
                    *t -= 1;
                    *t == 0
                }
                None => false,
            };
            if used_up {
                self.faults.remove(i);
            }
            self.stats.failures += 1;
            self.note(format!("{op:?} {} -> errno {errno}", rel.display()));
            return Err(err(errno));
        }
        Ok(())
    }

    /// The disk after a power loss drawn from `seed`: one of "only what was
    /// synced", "plus a torn prefix of one file's pending writes", or "plus
    /// torn prefixes of every file's pending writes"; each with a prefix of
    /// the pending directory changes.
    fn image(&self, seed: u64) -> CrashImage {
        let mut rng = Rng(seed);
        let style = rng.below(3);
        let meta_kept = if style == 0 {
            0
        } else {
            rng.below(self.meta.len() as u64 + 1) as usize
        };
        let with_pending: Vec<usize> = (0..self.inodes.len())
            .filter(|&i| !self.inodes[i].pending.is_empty())
            .collect();
        let chosen = if with_pending.is_empty() {
            None
        } else {
            Some(with_pending[rng.below(with_pending.len() as u64) as usize])
        };
        let mut pick = |inode: usize, rng: &mut Rng| -> usize {
            let keep = match style {
                0 => false,
                1 => Some(inode) == chosen,
                _ => true,
            };
            if keep {
                // Ops kept whole, times two, plus one if the next is torn.
                let n = self.inodes[inode].pending.len() as u64;
                rng.below(2 * n + 1) as usize
            } else {
                0
            }
        };
        self.image_with(meta_kept, &mut pick, &mut rng)
    }

    fn image_with(
        &self,
        meta_kept: usize,
        pick: &mut dyn FnMut(usize, &mut Rng) -> usize,
        rng: &mut Rng,
    ) -> CrashImage {
        let mut tree = self.durable.clone();
        for op in &self.meta[..meta_kept] {
            op.apply(&mut tree);
        }
        let mut image = CrashImage::default();
        let mut first_names: BTreeMap<usize, PathBuf> = BTreeMap::new();
        for (rel, node) in tree {
            if let Node::File(i) = node {
                if let Some(first) = first_names.get(&i) {
                    image.links.insert(rel, first.clone());
                    continue;
                }
                first_names.insert(i, rel.clone());
            }
            let entry = match node {
                Node::Dir => None,
                Node::File(i) => {
                    let inode = &self.inodes[i];
                    let mut bytes = inode.durable.clone();
                    let choice = pick(i, rng);
                    let whole = choice / 2;
                    for op in &inode.pending[..whole] {
                        op.apply(&mut bytes);
                    }
                    if choice % 2 == 1 {
                        // The next write, torn at a random byte.
                        if let Some(DataOp::Write { offset, bytes: w }) = inode.pending.get(whole) {
                            let cut = rng.below(w.len() as u64 + 1) as usize;
                            write_at(&mut bytes, *offset, &w[..cut]);
                        }
                    }
                    Some(bytes)
                }
            };
            image.entries.insert(rel, entry);
        }
        image
    }

    /// Applies the pending changes whose durability `dir`'s fsync decides,
    /// with the earlier changes they depend on.
    fn commit_dir(&mut self, dir: &Path) {
        let mut selected = vec![false; self.meta.len()];
        let mut paths = BTreeSet::new();
        let mut nodes = BTreeSet::new();
        for i in (0..self.meta.len()).rev() {
            let op = &self.meta[i];
            if op.commit_dir == dir || op.touches(&paths, &nodes) {
                selected[i] = true;
                op.mark(&mut paths, &mut nodes);
            }
        }
        let mut kept = Vec::with_capacity(self.meta.len());
        for (op, sel) in std::mem::take(&mut self.meta).into_iter().zip(selected) {
            if sel {
                op.apply(&mut self.durable);
            } else {
                kept.push(op);
            }
        }
        self.meta = kept;
    }

    fn sync_file(&mut self, inode: usize, rel: &Path, real: &File) -> io::Result<()> {
        self.stats.file_syncs += 1;
        if let Err(e) = self.begin(FaultOp::Sync, rel) {
            // The kernel gives up on the dirty pages: they are not durable
            // and no later sync will write them.
            let node = &mut self.inodes[inode];
            node.pending.clear();
            if self.after_failed_sync == AfterFailedSync::DropCache && self.crashed.is_none() {
                let len = node.current.len();
                let mut shown = node.durable.clone();
                shown.resize(len, 0);
                node.current = shown;
                real.write_all_at(&node.current, 0)?;
            }
            return Err(e);
        }
        let node = &mut self.inodes[inode];
        for op in node.pending.drain(..) {
            op.apply(&mut node.durable);
        }
        self.note(format!("sync {}", rel.display()));
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FileHandle>> {
        let mut sim = self.sim.lock();
        let rel = sim.rel(path)?;
        sim.begin(FaultOp::Open, &rel)?;
        let parent = Sim::parent_of(&rel);
        if !sim.is_dir(&parent) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ));
        }
        let inode = match sim.current.get(&rel).copied() {
            Some(Node::Dir) => {
                return Err(io::Error::other(format!(
                    "{} is a directory",
                    rel.display()
                )))
            }
            Some(Node::File(i)) => {
                if mode == OpenMode::CreateTruncate {
                    let node = &mut sim.inodes[i];
                    node.current.clear();
                    node.pending.push(DataOp::SetLen(0));
                }
                i
            }
            None => {
                if !matches!(mode, OpenMode::CreateTruncate | OpenMode::CreateKeep) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no file {}", rel.display()),
                    ));
                }
                sim.inodes.push(Inode::default());
                let i = sim.inodes.len() - 1;
                sim.current.insert(rel.clone(), Node::File(i));
                sim.meta.push(MetaOp {
                    kind: MetaKind::Insert {
                        path: rel.clone(),
                        node: Node::File(i),
                    },
                    commit_dir: parent,
                });
                i
            }
        };
        let real = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(mode == OpenMode::CreateTruncate)
            .open(path)?;
        sim.note(format!("open {} {mode:?}", rel.display()));
        Ok(Box::new(SimFile {
            sim: self.sim.clone(),
            inode,
            rel,
            real,
            append: mode == OpenMode::Append,
            position: Mutex::new(0),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut sim = self.sim.lock();
        let (rel_from, rel_to) = (sim.rel(from)?, sim.rel(to)?);
        sim.begin(FaultOp::Rename, &rel_to)?;
        let node = match sim.current.get(&rel_from).copied() {
            Some(n @ Node::File(_)) => n,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no file {}", rel_from.display()),
                ))
            }
        };
        let parent = Sim::parent_of(&rel_to);
        if !sim.is_dir(&parent) || sim.current.get(&rel_to) == Some(&Node::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot rename to {}", rel_to.display()),
            ));
        }
        std::fs::rename(from, to)?;
        sim.current.remove(&rel_from);
        sim.current.insert(rel_to.clone(), node);
        sim.note(format!(
            "rename {} -> {}",
            rel_from.display(),
            rel_to.display()
        ));
        sim.meta.push(MetaOp {
            kind: MetaKind::Rename {
                from: rel_from,
                to: rel_to,
                node,
            },
            commit_dir: parent,
        });
        Ok(())
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        let mut sim = self.sim.lock();
        let (rel_original, rel_link) = (sim.rel(original)?, sim.rel(link)?);
        sim.begin(FaultOp::Link, &rel_link)?;
        let node = match sim.current.get(&rel_original).copied() {
            Some(n @ Node::File(_)) => n,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no file {}", rel_original.display()),
                ))
            }
        };
        if sim.current.contains_key(&rel_link) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", rel_link.display()),
            ));
        }
        let parent = Sim::parent_of(&rel_link);
        if !sim.is_dir(&parent) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ));
        }
        std::fs::hard_link(original, link)?;
        sim.current.insert(rel_link.clone(), node);
        sim.note(format!(
            "link {} -> {}",
            rel_original.display(),
            rel_link.display()
        ));
        // A new entry naming the same inode: durable with its directory
        // (and, through the inode, with the entry that created the file).
        sim.meta.push(MetaOp {
            kind: MetaKind::Insert {
                path: rel_link,
                node,
            },
            commit_dir: parent,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.sim.lock();
        let rel = sim.rel(path)?;
        sim.begin(FaultOp::Remove, &rel)?;
        if !matches!(sim.current.get(&rel), Some(Node::File(_))) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", rel.display()),
            ));
        }
        std::fs::remove_file(path)?;
        sim.current.remove(&rel);
        sim.note(format!("remove {}", rel.display()));
        let parent = Sim::parent_of(&rel);
        sim.meta.push(MetaOp {
            kind: MetaKind::Remove { path: rel },
            commit_dir: parent,
        });
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut sim = self.sim.lock();
        let rel = sim.rel(path)?;
        sim.begin(FaultOp::CreateDir, &rel)?;
        if rel.as_os_str().is_empty() || sim.current.contains_key(&rel) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", rel.display()),
            ));
        }
        let parent = Sim::parent_of(&rel);
        if !sim.is_dir(&parent) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ));
        }
        std::fs::create_dir(path)?;
        sim.current.insert(rel.clone(), Node::Dir);
        sim.note(format!("mkdir {}", rel.display()));
        sim.meta.push(MetaOp {
            kind: MetaKind::Insert {
                path: rel,
                node: Node::Dir,
            },
            commit_dir: parent,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut sim = self.sim.lock();
        let rel = sim.rel(dir)?;
        sim.stats.dir_syncs += 1;
        sim.begin(FaultOp::SyncDir, &rel)?;
        if !sim.is_dir(&rel) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", rel.display()),
            ));
        }
        if sim.ignored_dir_syncs.contains(&rel) {
            sim.note(format!("sync dir {} (ignored)", rel.display()));
            return Ok(());
        }
        sim.commit_dir(&rel);
        sim.note(format!("sync dir {}", rel.display()));
        Ok(())
    }
}

/// A file of a [`SimFs`], written through to the real file.
struct SimFile {
    sim: Arc<Mutex<Sim>>,
    inode: usize,
    rel: PathBuf,
    real: File,
    append: bool,
    position: Mutex<u64>,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile").field("path", &self.rel).finish()
    }
}

impl SimFile {
    fn write_locked(&self, sim: &mut Sim, bytes: &[u8]) -> io::Result<()> {
        let mut position = self.position.lock();
        let offset = if self.append {
            sim.inodes[self.inode].current.len() as u64
        } else {
            *position
        };
        self.real.write_all_at(bytes, offset)?;
        let node = &mut sim.inodes[self.inode];
        write_at(&mut node.current, offset, bytes);
        node.pending.push(DataOp::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        *position = offset + bytes.len() as u64;
        Ok(())
    }
}

impl FileHandle for SimFile {
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut sim = self.sim.lock();
        sim.stats.writes += 1;
        if let Err(e) = sim.begin(FaultOp::Write, &self.rel) {
            if e.raw_os_error().is_some() && sim.crashed.is_none() {
                // A failing write may still have written a prefix.
                self.write_locked(&mut sim, &bytes[..bytes.len() / 2])?;
            }
            return Err(e);
        }
        sim.note(format!("write {} +{}", self.rel.display(), bytes.len()));
        self.write_locked(&mut sim, bytes)
    }

    fn seek(&self, offset: u64) -> io::Result<()> {
        *self.position.lock() = offset;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut sim = self.sim.lock();
        sim.begin(FaultOp::SetLen, &self.rel)?;
        self.real.set_len(len)?;
        let node = &mut sim.inodes[self.inode];
        node.current.resize(len as usize, 0);
        node.pending.push(DataOp::SetLen(len));
        sim.note(format!("set_len {} {len}", self.rel.display()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn sync_all(&self) -> io::Result<()> {
        let mut sim = self.sim.lock();
        sim.sync_file(self.inode, &self.rel, &self.real)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.sim.lock().inodes[self.inode].current.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_image(image: &CrashImage, rel: &str) -> Option<Vec<u8>> {
        image.file(Path::new(rel)).map(<[u8]>::to_vec)
    }

    #[test]
    fn only_synced_data_and_entries_survive() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SimFs::new(dir.path()).unwrap();
        let a = dir.path().join("a");
        let f = fs.open(&a, OpenMode::CreateTruncate).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync_all().unwrap();
        // Synced data, but the name was never made durable.
        assert_eq!(read_image(&fs.durable_image(), "a"), None);
        fs.sync_dir(dir.path()).unwrap();
        assert_eq!(read_image(&fs.durable_image(), "a").unwrap(), b"hello");
        f.write_all(b" world").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"hello world");
        assert_eq!(read_image(&fs.durable_image(), "a").unwrap(), b"hello");
        fs.rename(&a, &dir.path().join("b")).unwrap();
        let image = fs.durable_image();
        assert!(image.file(Path::new("b")).is_none());
        assert_eq!(read_image(&image, "a").unwrap(), b"hello");
    }

    #[test]
    fn a_failed_sync_forgets_and_a_later_sync_does_not_bring_back() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SimFs::new(dir.path()).unwrap();
        let p = dir.path().join("log");
        let f = fs.open(&p, OpenMode::CreateTruncate).unwrap();
        fs.sync_dir(dir.path()).unwrap();
        f.write_all(b"aaaa").unwrap();
        fs.add_fault(Fault::always(FaultOp::Sync, EIO).once());
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        f.write_all(b"bbbb").unwrap();
        f.sync_data().unwrap();
        // The reader still sees everything; the disk has a hole.
        assert_eq!(std::fs::read(&p).unwrap(), b"aaaabbbb");
        assert_eq!(
            read_image(&fs.durable_image(), "log").unwrap(),
            b"\0\0\0\0bbbb"
        );
    }

    #[test]
    fn crash_images_keep_prefixes_and_tear() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SimFs::new(dir.path()).unwrap();
        let p = dir.path().join("f");
        let f = fs.open(&p, OpenMode::CreateTruncate).unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(dir.path()).unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let bytes = read_image(&fs.sim.lock().image(seed), "f").unwrap();
            assert!(b"0123456789".starts_with(&bytes));
            seen.insert(bytes.len());
        }
        assert!(seen.len() > 5, "tears at many places: {seen:?}");
    }

    #[test]
    fn power_cut_fails_everything_after() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SimFs::new(dir.path()).unwrap();
        fs.crash_after(2, 7);
        let f = fs
            .open(&dir.path().join("f"), OpenMode::CreateTruncate)
            .unwrap();
        f.write_all(b"x").unwrap();
        assert!(f.sync_all().is_err());
        assert!(fs.crashed().is_some());
        assert!(fs.sync_dir(dir.path()).is_err());
    }

    #[test]
    fn a_hard_link_is_a_directory_entry_and_shares_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SimFs::new(dir.path()).unwrap();
        for d in ["u", "b"] {
            fs.create_dir(&dir.path().join(d)).unwrap();
        }
        fs.sync_dir(dir.path()).unwrap();
        let staging = dir.path().join("u/s");
        let f = fs.open(&staging, OpenMode::CreateTruncate).unwrap();
        f.write_all(b"blob").unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(&dir.path().join("u")).unwrap();
        fs.hard_link(&staging, &dir.path().join("b/x")).unwrap();
        // Not durable until its directory is fsynced.
        assert_eq!(read_image(&fs.durable_image(), "b/x"), None);
        fs.sync_dir(&dir.path().join("b")).unwrap();
        let image = fs.durable_image();
        assert_eq!(read_image(&image, "b/x").unwrap(), b"blob");
        assert_eq!(read_image(&image, "u/s").unwrap(), b"blob");
        // Removing one name keeps the other.
        fs.remove_file(&staging).unwrap();
        fs.sync_dir(&dir.path().join("u")).unwrap();
        let image = fs.durable_image();
        assert_eq!(read_image(&image, "u/s"), None);
        assert_eq!(read_image(&image, "b/x").unwrap(), b"blob");
        // A materialized image keeps the names linked.
        let f = fs
            .open(&dir.path().join("u/t"), OpenMode::CreateTruncate)
            .unwrap();
        f.write_all(b"abc").unwrap();
        f.sync_all().unwrap();
        fs.hard_link(&dir.path().join("u/t"), &dir.path().join("b/y"))
            .unwrap();
        fs.sync_dir(&dir.path().join("b")).unwrap();
        let out = tempfile::tempdir().unwrap();
        fs.durable_image().materialize(out.path()).unwrap();
        std::fs::write(out.path().join("u/t"), b"changed").unwrap();
        assert_eq!(std::fs::read(out.path().join("b/y")).unwrap(), b"changed");
    }

    #[test]
    fn materialize_skips_what_lost_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let fs = SimFs::new(dir.path()).unwrap();
        let sub = dir.path().join("d");
        fs.create_dir(&sub).unwrap();
        let f = fs.open(&sub.join("x"), OpenMode::CreateTruncate).unwrap();
        f.write_all(b"x").unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(&sub).unwrap();
        let out = tempfile::tempdir().unwrap();
        fs.durable_image().materialize(out.path()).unwrap();
        assert!(!out.path().join("d").exists());
        fs.sync_dir(dir.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        fs.durable_image().materialize(out.path()).unwrap();
        assert_eq!(std::fs::read(out.path().join("d/x")).unwrap(), b"x");
    }
}
