//! Blob bytes sent with `sendfile(2)` on plain HTTP connections, when the
//! `sendfile` setting is on (it is off by default; see below): the
//! connection's [`FileRegions`] (which memory holds which bytes of which
//! file), the piece of a blob registered there for as long as it lives
//! ([`RegisteredMap`]), and the connection's stream ([`SendfileStream`]),
//! which sends a registered region from the page cache instead of copying
//! it from user space.
//!
//! How a piece gets there: hyper writes a response body by handing the
//! body's buffers to the connection as iovecs, without copying them, when
//! the connection says it writes vectored (hyper's `WriteStrategy::Queue`
//! in `proto/h1/io.rs`). A large blob is served as memory maps of its file
//! ([`crate::blobs::read`]); on a plain connection each map is registered
//! here, so when hyper writes it the stream recognises the address and
//! sends the file's bytes at the same offset instead. The map itself is
//! never read (nor faulted in): it is what the body would be written from
//! if anything on the way copied it (a layer that rewrites the body), in
//! which case the copy is not recognised and is written as it is. Correct
//! either way; a registered region is only ever sent from the file whose
//! bytes it holds, and it leaves the registry before its memory is
//! unmapped.
//!
//! Not for TLS: rustls encrypts in user space, so TLS connections write
//! the maps (populated on the blocking pool) as before.
//!
//! What it costs where (benches/RESULTS.md, "Large blobs with sendfile"):
//! the server's CPU per GiB sent falls by about a third, but a receiver
//! on the same host (loopback) copies out of the page cache's own pages
//! and pays more than that, so on a loopback benchmark sharing two cores
//! a download is slower than with `writev` from a populated map. Hence
//! the setting, off by default.

use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// At most this many bytes per `sendfile` call: the kernel's own limit
/// (`MAX_RW_COUNT`), so a call never asks for more than it would do.
const SENDFILE_BYTES_MAX: usize = 0x7fff_f000;

/// The file-backed regions of one connection's memory: bytes at
/// `start..start + len` are the bytes of `file` at `offset..offset + len`.
/// Cheap to clone (one shared list per connection); a connection has a
/// few at a time (the piece being sent and those mapped ahead).
#[derive(Clone, Default)]
pub struct FileRegions {
    regions: Arc<parking_lot::Mutex<Vec<Region>>>,
}

/// One registered region.
struct Region {
    start: usize,
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// What to write next, out of the iovecs hyper hands over.
#[derive(Debug)]
enum NextWrite {
    /// The first `n` iovecs, none in a registered region: one writev.
    Plain(usize),
    /// The first iovec lies in a registered region: its `len` bytes are
    /// the file's at `offset`.
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

#[cfg(test)]
impl PartialEq for NextWrite {
    fn eq(&self, other: &NextWrite) -> bool {
        match (self, other) {
            (NextWrite::Plain(a), NextWrite::Plain(b)) => a == b,
            (
                NextWrite::File { file, offset, len },
                NextWrite::File {
                    file: f,
                    offset: o,
                    len: l,
                },
            ) => Arc::ptr_eq(file, f) && (offset, len) == (o, l),
            _ => false,
        }
    }
}

impl std::fmt::Debug for FileRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegions")
            .field("registered", &self.regions.lock().len())
            .finish()
    }
}

impl FileRegions {
    pub fn new() -> FileRegions {
        FileRegions::default()
    }

    /// Registers `bytes` as the bytes of `file` at `offset`. The caller
    /// unregisters them ([`FileRegions::unregister`]) before their memory
    /// is released or changed: [`RegisteredMap`] does it in `drop`.
    fn register(&self, bytes: &[u8], file: Arc<File>, offset: u64) {
        if bytes.is_empty() {
            return;
        }
        self.regions.lock().push(Region {
            start: bytes.as_ptr() as usize,
            len: bytes.len(),
            file,
            offset,
        });
    }

    /// Forgets the region that starts at `start`.
    fn unregister(&self, start: *const u8) {
        let mut regions = self.regions.lock();
        if let Some(i) = regions.iter().position(|r| r.start == start as usize) {
            regions.swap_remove(i);
        }
    }

    /// How many regions are registered.
    pub fn len(&self) -> usize {
        self.regions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits the iovecs of one write: plain ones up to the first that
    /// lies in a registered region, or that region's bytes alone when the
    /// first one does. A write never crosses from one kind to the other,
    /// so the count it reports is exactly what was sent.
    fn next_write(&self, bufs: &[IoSlice<'_>]) -> NextWrite {
        let regions = self.regions.lock();
        if regions.is_empty() {
            return NextWrite::Plain(bufs.len());
        }
        // Whether a plain iovec with bytes comes first (empty ones are
        // passed over: a write of them alone would report 0 bytes, which
        // hyper takes for a closed connection).
        let mut plain = false;
        for (i, buf) in bufs.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let Some(region) = regions.iter().find(|r| r.holds(buf)) else {
                plain = true;
                continue;
            };
            if plain {
                return NextWrite::Plain(i);
            }
            return NextWrite::File {
                file: region.file.clone(),
                offset: region.offset + (buf.as_ptr() as usize - region.start) as u64,
                len: buf.len(),
            };
        }
        NextWrite::Plain(bufs.len())
    }
}

impl Region {
    /// Whether all of `buf` lies in this region (a buffer that only
    /// overlaps it is written as it is).
    fn holds(&self, buf: &[u8]) -> bool {
        let start = buf.as_ptr() as usize;
        start >= self.start && start + buf.len() <= self.start + self.len
    }
}

/// A memory map of part of a file, registered in a connection's
/// [`FileRegions`] for as long as it lives: its address is unregistered
/// in `drop`, before the map is unmapped, so a registered address never
/// belongs to anything else.
pub struct RegisteredMap {
    map: memmap2::Mmap,
    regions: FileRegions,
}

impl RegisteredMap {
    /// Registers `map`, which holds the bytes of `file` at `offset`.
    pub fn new(map: memmap2::Mmap, file: Arc<File>, offset: u64, regions: FileRegions) -> Self {
        regions.register(&map, file, offset);
        RegisteredMap { map, regions }
    }
}

impl AsRef<[u8]> for RegisteredMap {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for RegisteredMap {
    fn drop(&mut self) {
        // Runs before the map (a field) is dropped and unmapped.
        self.regions.unregister(self.map.as_ptr());
    }
}

/// A plain TCP connection that writes registered file regions with
/// `sendfile(2)` and everything else with `writev(2)`.
///
/// `sendfile` runs on the async thread, as the faults of an unpopulated
/// map would: the blob's pages are normally cached (written by its
/// upload, or read ahead a piece early by `POSIX_FADV_WILLNEED` on the
/// blocking pool, see [`crate::blobs::read::MappedRange::map_piece`]), so
/// the call hands page-cache pages to the socket and waits for no disk;
/// a cold piece costs what the read ahead did not cover (measured after
/// dropping the page cache: 917–1,200 MB/s, against 394–1,213 for maps
/// populated on the blocking pool).
pub struct SendfileStream {
    tcp: TcpStream,
    regions: FileRegions,
}

impl SendfileStream {
    pub fn new(tcp: TcpStream, regions: FileRegions) -> SendfileStream {
        SendfileStream { tcp, regions }
    }

    /// Sends up to `len` bytes of `file` from `offset` when the socket
    /// can take some: how many were sent.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            // `try_io` clears the readiness when the socket is full, so
            // the next `poll_write_ready` waits for room.
            match self.tcp.try_io(Interest::WRITABLE, || {
                sendfile(&self.tcp, file, offset, len)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }
}

/// One `sendfile` call: up to `len` bytes of `file` from `offset` into
/// `socket` (non-blocking). `Ok(0)` only if the file ends before `offset`.
#[cfg(target_os = "linux")]
fn sendfile(socket: &TcpStream, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
    let len = len.min(SENDFILE_BYTES_MAX);
    loop {
        // SAFETY: both descriptors are open for the duration of the call
        // (borrowed); the kernel writes only `offset`, a local.
        let sent =
            unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut offset, len) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Elsewhere no region is ever registered (the server wraps connections
/// only on Linux), so this is never called.
#[cfg(not(target_os = "linux"))]
fn sendfile(_: &TcpStream, _: &File, _: u64, _: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.regions.next_write(bufs) {
            NextWrite::Plain(n) => Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..n]),
            NextWrite::File { file, offset, len } => this.poll_sendfile(cx, &file, offset, len),
        }
    }

    /// True: hyper then queues body buffers and hands them over as they
    /// are (see the module documentation), which is what lets a
    /// registered region be recognised.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A file holding `bytes`, mapped whole and registered in `regions`.
    fn registered(bytes: &[u8], regions: &FileRegions) -> (tempfile::NamedTempFile, RegisteredMap) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let file = Arc::new(File::open(f.path()).unwrap());
        // SAFETY: the test's own file, not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&*file).unwrap() };
        (f, RegisteredMap::new(map, file, 0, regions.clone()))
    }

    fn offset_len(next: NextWrite) -> (u64, usize) {
        match next {
            NextWrite::File { offset, len, .. } => (offset, len),
            NextWrite::Plain(n) => panic!("plain write of {n} iovecs"),
        }
    }

    #[test]
    fn without_regions_every_iovec_is_plain() {
        let regions = FileRegions::new();
        let (a, b) = (vec![1u8; 10], vec![2u8; 20]);
        let bufs = [IoSlice::new(&a), IoSlice::new(&b)];
        assert_eq!(regions.next_write(&bufs), NextWrite::Plain(2));
    }

    #[test]
    fn a_registered_iovec_is_sent_from_its_file_at_its_offset() {
        let regions = FileRegions::new();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (_f, map) = registered(&bytes, &regions);
        let whole = map.as_ref();
        assert_eq!(
            offset_len(regions.next_write(&[IoSlice::new(whole)])),
            (0, 10_000)
        );
        // What is left after a partial write starts inside the region.
        let rest = &whole[4321..];
        assert_eq!(
            offset_len(regions.next_write(&[IoSlice::new(rest)])),
            (4321, 10_000 - 4321)
        );
        // A part in the middle (a range, or a capped last chunk).
        let middle = &whole[100..200];
        assert_eq!(
            offset_len(regions.next_write(&[IoSlice::new(middle)])),
            (100, 100)
        );
    }

    #[test]
    fn mixed_iovecs_stop_at_each_boundary() {
        let regions = FileRegions::new();
        let (_f, map) = registered(&[9u8; 5000], &regions);
        let (head, tail) = (b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), b"\r\n".to_vec());
        let empty: [u8; 0] = [];
        let bufs = [
            IoSlice::new(&head),
            IoSlice::new(&empty),
            IoSlice::new(map.as_ref()),
            IoSlice::new(&tail),
        ];
        // The head (and the empty one) first, without the file's bytes.
        assert_eq!(regions.next_write(&bufs), NextWrite::Plain(2));
        // Then the file's bytes alone, not the plain iovec after them.
        assert_eq!(offset_len(regions.next_write(&bufs[2..])), (0, 5000));
        assert_eq!(regions.next_write(&bufs[3..]), NextWrite::Plain(1));
        // Empty iovecs before a file iovec are skipped with it.
        assert_eq!(offset_len(regions.next_write(&bufs[1..])), (0, 5000));
    }

    #[test]
    fn a_buffer_reaching_past_a_region_is_plain() {
        let regions = FileRegions::new();
        let bytes = vec![3u8; 8192];
        let file = Arc::new(tempfile::tempfile().unwrap());
        // Only the first half is registered: a buffer over both halves
        // is not the file's.
        regions.register(&bytes[..4096], file, 0);
        assert_eq!(
            regions.next_write(&[IoSlice::new(&bytes[4000..5000])]),
            NextWrite::Plain(1)
        );
        assert_eq!(
            offset_len(regions.next_write(&[IoSlice::new(&bytes[4000..4096])])),
            (4000, 96)
        );
        regions.unregister(bytes.as_ptr());
        assert!(regions.is_empty());
    }

    #[test]
    fn a_dropped_map_leaves_the_registry() {
        let regions = FileRegions::new();
        let (_f, map) = registered(&[1u8; 100], &regions);
        let (_g, other) = registered(&[2u8; 100], &regions);
        assert_eq!(regions.len(), 2);
        drop(map);
        assert_eq!(regions.len(), 1);
        let bytes = bytes::Bytes::from_owner(other);
        assert_eq!(regions.len(), 1);
        let part = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(regions.len(), 1, "a slice keeps the map");
        drop(part);
        assert!(regions.is_empty());
    }

    /// Through a real socket with a small send buffer, so writes are
    /// partial: head, file bytes and tail arrive whole and in order, and
    /// every write reported only what it sent. The registered memory is
    /// zeros standing for the file's pattern: what arrives is the
    /// pattern, so it came from the file.
    #[tokio::test]
    async fn mixed_writes_arrive_in_order_through_partial_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reading = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(16 * 1024).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let regions = FileRegions::new();
        let body: Vec<u8> = (0..3_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&body).unwrap();
        let zeros = vec![0u8; body.len()];
        regions.register(&zeros, Arc::new(f), 0);
        let mut stream = SendfileStream::new(tcp, regions.clone());
        let (head, tail) = (b"head".to_vec(), b"tail".to_vec());
        let mut parts: Vec<&[u8]> = vec![&head, &zeros, &tail];
        let mut writes = 0;
        while !parts.is_empty() {
            let bufs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut n = stream.write_vectored(&bufs).await.unwrap();
            assert!(n > 0);
            writes += 1;
            // Advance as hyper does.
            while n > 0 {
                let first = parts[0].len().min(n);
                parts[0] = &parts[0][first..];
                n -= first;
                if parts[0].is_empty() {
                    parts.remove(0);
                }
            }
        }
        stream.shutdown().await.unwrap();
        drop(stream);
        let got = reading.await.unwrap();
        assert!(writes > 3, "the writes were partial ({writes})");
        assert_eq!(got.len(), 4 + body.len() + 4);
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + body.len()] == body[..], "file bytes differ");
        assert_eq!(&got[4 + body.len()..], b"tail");
        regions.unregister(zeros.as_ptr());
    }
}
