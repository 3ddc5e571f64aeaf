//! From CPython's `test_sendfile.py` and `test_sock_lowlevel.py`:
//! `sock_sendfile` and `loop.sendfile`.
//!
//! `sock_sendfile` runs on real loopback sockets, with small socket buffers
//! so that the socket fills and the transfer has to wait for writability.
//! `loop.sendfile` runs over the loop's own socket transport (through
//! `connect_accepted_socket`) and over transports written here, as
//! CPython's tests use mock transports: they pin down the fallback's flow
//! control, the choice between the zero-copy hook and the fallback, and the
//! errors.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};

use loop_api::events::LocalBoxFuture;
use loop_api::protocols::{BaseProtocol, Protocol, ProtocolFactory};
use loop_api::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};
use loop_api::{Error, EventLoopExt, Future, Loop, Result, Task};
use socket2::Socket;

use crate::util::{run_once, run_until_done, socketpair, Log, RawOf};
use crate::{Ctx, Feature};

/// Safety net for the cases that run the loop: never how they synchronise.
const NET: f64 = 30.0;

/// Larger than loopback's socket buffers with the sizes set below (CPython
/// uses `b"x" * (1024 * 17 * 64 + 1)`); a pattern, so that a byte out of
/// place shows.
const DATA_LEN: usize = 1024 * 17 * 64 + 1;

/// Socket buffers are shrunk to this, far below the file sizes, so that
/// transfers wait for writability. (CPython's `BUF_SIZE` is 4 KiB; on
/// Linux loopback, whose MSS is 64 KiB, a window that small makes TCP
/// stall about 200 ms per window, ~20 s per megabyte, with any sender.)
const BUF_SIZE: usize = 64 * 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Compares without printing megabytes when they differ.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes, expected {}; first difference at byte {first}",
            got.len(),
            want.len()
        );
    }
}

// ----- files ---------------------------------------------------------------------------

/// A file in the temporary directory with given contents, open for
/// reading; removed when dropped.
struct TempFile {
    path: PathBuf,
    file: Rc<File>,
}

impl TempFile {
    fn new(ctx: &Ctx, contents: &[u8]) -> TempFile {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "conformance-sendfile-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            ctx.name().replace("::", "-"),
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write the temporary file");
        let file = Rc::new(File::open(&path).expect("open the temporary file"));
        TempFile { path, file }
    }

    /// The file's position (`file.tell()`).
    fn tell(&self) -> u64 {
        (&*self.file).stream_position().expect("tell")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `/dev/zero`: readable, not a regular file (no zero-copy). Unix only.
fn dev_zero() -> Result<Rc<File>> {
    if cfg!(not(unix)) {
        return Err(Error::NotSupported {
            feature: "non-regular file",
            reason: "this case reads /dev/zero, which only Unix has".into(),
        });
    }
    Ok(Rc::new(File::open("/dev/zero").expect("open /dev/zero")))
}

// ----- sockets -------------------------------------------------------------------------

/// A connected pair of non-blocking loopback TCP sockets with small buffers:
/// `(sender, receiver)`.
fn sock_pair() -> (Rc<Socket>, Rc<Socket>) {
    let (a, b) = socketpair();
    let (a, b) = (Socket::from(a), Socket::from(b));
    a.set_send_buffer_size(BUF_SIZE).expect("SO_SNDBUF");
    b.set_recv_buffer_size(BUF_SIZE).expect("SO_RCVBUF");
    (Rc::new(a), Rc::new(b))
}

/// A task reading `sock` until EOF.
fn reader(lp: &Loop, sock: Rc<Socket>) -> Result<Task<Vec<u8>>> {
    let l = lp.clone();
    lp.create_task(async move {
        let mut all = Vec::new();
        loop {
            let chunk = l.sock_recv(sock.clone(), 64 * 1024).await?;
            if chunk.is_empty() {
                return Ok(all);
            }
            all.extend_from_slice(&chunk);
        }
    })
}

/// `lp.sock_sendfile(...)` then EOF on the sender, run to completion, with
/// a reader draining the receiver meanwhile: `(result, bytes received)`.
/// Past the safety net, an error.
fn sock_sendfile_and_read(
    lp: &Loop,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
    fallback: bool,
) -> Result<(Result<u64>, Vec<u8>)> {
    let (a, b) = sock_pair();
    let reading = reader(lp, b)?;
    let l = lp.clone();
    let sending = lp.create_task(async move {
        let r = l
            .sock_sendfile(a.clone(), file, offset, count, fallback)
            .await;
        a.shutdown(Shutdown::Write)?;
        Ok(r)
    })?;
    // With a safety net: a transfer that never ends fails the case.
    run_until_done(lp, &*sending.as_obj(), NET)?;
    let ret = sending.take_result()?;
    run_until_done(lp, &*reading.as_obj(), NET)?;
    Ok((ret, reading.take_result()?))
}

/// `Ok(v)`, or a skip when the zero-copy path is not available here.
fn native_or_skip<T>(r: Result<T>) -> Result<T> {
    match r {
        Err(Error::SendfileNotAvailable(m)) => Err(Error::NotSupported {
            feature: "zero-copy sendfile",
            reason: format!("this platform has none ({m})"),
        }),
        r => r,
    }
}

// ----- sock_sendfile -------------------------------------------------------------------

/// `test_sock_sendfile_success`: the whole file arrives; the result is its
/// size and the file's position is left at its end.
pub fn test_sock_sendfile_success(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (ret, got) = sock_sendfile_and_read(&lp, f.file.clone(), 0, None, true)?;
    assert_eq!(ret?, DATA_LEN as u64);
    assert_bytes(&got, &data, "received");
    assert_eq!(f.tell(), DATA_LEN as u64);
    lp.close()
}

/// `test_sock_sendfile_with_offset_and_count`: bytes `[1000, 3000)`; the
/// position is left at 3000.
pub fn test_sock_sendfile_with_offset_and_count(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (ret, got) = sock_sendfile_and_read(&lp, f.file.clone(), 1000, Some(2000), true)?;
    assert_eq!(ret?, 2000);
    assert_bytes(&got, &data[1000..3000], "received");
    assert_eq!(f.tell(), 3000);
    lp.close()
}

/// `test_sock_sendfile_zero_size`: an empty file sends nothing and returns
/// 0; the position stays at 0.
pub fn test_sock_sendfile_zero_size(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"");
    let (ret, got) = sock_sendfile_and_read(&lp, f.file.clone(), 0, None, true)?;
    assert_eq!(ret?, 0);
    assert!(got.is_empty(), "{} bytes arrived", got.len());
    assert_eq!(f.tell(), 0);
    lp.close()
}

/// `test_sock_sendfile_mix_with_regular_send`: `sock_sendall`, then the
/// file, then `sock_sendall` again arrive in that order.
pub fn test_sock_sendfile_mix_with_regular_send(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let buf = b"mix_regular_send".repeat(4 * 1024);
    let (a, b) = sock_pair();
    let reading = reader(&lp, b)?;
    let (l, file, extra) = (lp.clone(), f.file.clone(), buf.clone());
    let ret = lp.run_until_complete(async move {
        l.sock_sendall(a.clone(), extra.clone()).await?;
        let n = l.sock_sendfile(a.clone(), file, 0, None, true).await?;
        l.sock_sendall(a.clone(), extra).await?;
        a.shutdown(Shutdown::Write)?;
        Ok(n)
    })?;
    let got = lp.run_until_complete(reading)?;
    assert_eq!(ret, DATA_LEN as u64);
    let expected = [&buf[..], &data[..], &buf[..]].concat();
    assert_bytes(&got, &expected, "received");
    assert_eq!(f.tell(), DATA_LEN as u64);
    lp.close()
}

/// A file several times larger than the socket buffers (8 MB) arrives
/// whole and in order: the transfer waits for writability many times
/// (it is still pending after its first attempt).
pub fn test_sock_sendfile_large_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    const SIZE: usize = 8 * 1024 * 1024;
    let data = pattern(SIZE);
    let f = TempFile::new(ctx, &data);
    let (a, b) = sock_pair();
    let sending = lp.create_task(lp.sock_sendfile(a.clone(), f.file.clone(), 0, None, true))?;
    run_once(&lp)?;
    assert!(
        !sending.done(),
        "8 MB went out at once: the socket never filled"
    );
    let reading = reader(&lp, b)?;
    let sent = lp.run_until_complete(sending)?;
    a.shutdown(Shutdown::Write).expect("shutdown");
    let got = lp.run_until_complete(reading)?;
    assert_eq!(sent, SIZE as u64);
    assert_bytes(&got, &data, "received");
    assert_eq!(f.tell(), SIZE as u64);
    assert!(!lp.remove_writer(a.raw())?, "the writer was left behind");
    lp.close()
}

/// `offset` counts from the start of the file, whatever its current
/// position; a `count` past the end stops at the end, and an `offset` past
/// the end sends nothing.
pub fn test_sock_sendfile_offset_is_absolute(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(10_000);
    let f = TempFile::new(ctx, &data);
    (&*f.file).seek(SeekFrom::Start(4321)).expect("seek");
    let (ret, got) = sock_sendfile_and_read(&lp, f.file.clone(), 9000, Some(5000), true)?;
    assert_eq!(ret?, 1000, "count past the end");
    assert_bytes(&got, &data[9000..], "received");
    assert_eq!(f.tell(), 10_000);
    (&*f.file).seek(SeekFrom::Start(17)).expect("seek");
    let (ret, got) = sock_sendfile_and_read(&lp, f.file.clone(), 20_000, None, true)?;
    assert_eq!(ret?, 0, "offset past the end");
    assert!(got.is_empty());
    assert_eq!(f.tell(), 17, "nothing sent: the position is left alone");
    lp.close()
}

/// `test_sock_sendfile_not_regular_file` (`unix_events`) with
/// `fallback=False`: a file that is not a regular file has no zero-copy
/// path: `SendfileNotAvailableError`, nothing sent.
pub fn test_sock_sendfile_not_regular_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let zero = dev_zero()?;
    let lp = ctx.new_loop();
    let (ret, got) = sock_sendfile_and_read(&lp, zero, 0, Some(1000), false)?;
    match ret {
        Err(Error::SendfileNotAvailable(_)) => {}
        other => panic!("expected SendfileNotAvailableError, got {other:?}"),
    }
    assert!(got.is_empty(), "{} bytes were sent", got.len());
    lp.close()
}

/// `test_sock_sendfile_fallback` on a file with no zero-copy path: with
/// `fallback` (the default in asyncio) it is read and sent; `count` bytes.
pub fn test_sock_sendfile_fallback_not_regular_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let zero = dev_zero()?;
    let lp = ctx.new_loop();
    let (ret, got) = sock_sendfile_and_read(&lp, zero, 0, Some(300_001), true)?;
    assert_eq!(ret?, 300_001);
    assert_eq!(got.len(), 300_001);
    assert!(got.iter().all(|&x| x == 0));
    lp.close()
}

/// The fallback reads a pipe to its end (no `count`), with data more than
/// one fallback block.
pub fn test_sock_sendfile_fallback_pipe(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let (rd, wr) = pipe()?;
    let data = pattern(40_000); // fits in a pipe's buffer
    {
        let mut wr = wr;
        wr.write_all(&data).expect("write the pipe");
    } // closed: the reader sees EOF after the data
    let lp = ctx.new_loop();
    let (ret, got) = sock_sendfile_and_read(&lp, Rc::new(rd), 0, None, true)?;
    assert_eq!(ret?, data.len() as u64);
    assert_bytes(&got, &data, "received");
    lp.close()
}

#[cfg(unix)]
fn pipe() -> Result<(File, File)> {
    crate::util::os_pipe()
}

#[cfg(not(unix))]
fn pipe() -> Result<(File, File)> {
    Err(Error::NotSupported {
        feature: "pipe as a file",
        reason: "this case needs an anonymous pipe as a File (Unix)".into(),
    })
}

/// `test_blocking_socket` (`test_base_events`): a blocking socket is a
/// `ValueError`. Unix only: Windows cannot report a socket's blocking mode.
pub fn test_sock_sendfile_blocking_socket(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    if cfg!(not(unix)) {
        return Err(Error::NotSupported {
            feature: "blocking-socket check",
            reason: "Windows cannot query a socket's blocking mode".into(),
        });
    }
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let (a, _b) = sock_pair();
    a.set_nonblocking(false).expect("blocking");
    let r = lp.run_until_complete(lp.sock_sendfile(a, f.file.clone(), 0, None, true));
    crate::util::expect_value_error(r, "the socket must be non-blocking");
    assert_eq!(f.tell(), 0);
    lp.close()
}

/// `test_nonstream_socket`: a datagram socket is a `ValueError`.
pub fn test_sock_sendfile_nonstream_socket(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let u = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("udp");
    u.set_nonblocking(true).expect("non-blocking");
    let u = Rc::new(Socket::from(u));
    let r = lp.run_until_complete(lp.sock_sendfile(u, f.file.clone(), 0, None, true));
    crate::util::expect_value_error(r, "only SOCK_STREAM type sockets are supported");
    lp.close()
}

/// `test_negative_count`: `count` must be positive (0 is the only
/// non-positive `u64`); nothing is sent.
pub fn test_sock_sendfile_bad_count(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let (ret, got) = sock_sendfile_and_read(&lp, f.file.clone(), 0, Some(0), true)?;
    crate::util::expect_value_error(ret, "count must be a positive integer (got 0)");
    assert!(got.is_empty());
    lp.close()
}

/// `test_sock_sendfile_cancel1`/`cancel2`: cancelling a transfer waiting for
/// writability stops watching the socket; the file's position tells how
/// much was sent, and the socket goes on working: what arrives is exactly
/// that much of the file, then what is sent next.
pub fn test_sock_sendfile_cancel(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    ctx.require(Feature::ReadinessSendfile)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (a, b) = sock_pair();
    let task = lp.create_task(lp.sock_sendfile(a.clone(), f.file.clone(), 0, None, false))?;
    run_once(&lp)?;
    if task.done() {
        native_or_skip(task.take_result())?;
        panic!("the whole file went out at once: the socket never filled");
    }
    run_once(&lp)?;
    assert!(!task.done(), "the whole file went out with nobody reading");
    assert!(task.cancel(None));
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert!(task.cancelled());
    assert!(!lp.remove_writer(a.raw())?, "cancel left the writer");
    let sent = f.tell() as usize;
    assert!(
        sent > 0 && sent < DATA_LEN,
        "position {sent} after a cancelled transfer"
    );
    let reading = reader(&lp, b)?;
    let l = lp.clone();
    lp.run_until_complete(async move {
        l.sock_sendall(a.clone(), b"tail".to_vec()).await?;
        a.shutdown(Shutdown::Write)?;
        Ok(())
    })?;
    let got = lp.run_until_complete(reading)?;
    let expected = [&data[..sent], b"tail"].concat();
    assert_bytes(&got, &expected, "received");
    lp.close()
}

/// `test_sock_sendfile_os_error_next_call`: the peer goes away in the
/// middle: the OS error (not `SendfileNotAvailableError`) comes back, and
/// the file's position tells how much was sent.
pub fn test_sock_sendfile_peer_closed_in_the_middle(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    ctx.require(Feature::ReadinessSendfile)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (a, b) = sock_pair();
    let task = lp.create_task(lp.sock_sendfile(a.clone(), f.file.clone(), 0, None, false))?;
    run_once(&lp)?;
    if task.done() {
        native_or_skip(task.take_result())?;
        panic!("the whole file went out at once: the socket never filled");
    }
    // Read a little, then close with data unread: the sender gets a reset.
    let l = lp.clone();
    let first = lp.run_until_complete(async move { l.sock_recv(b, 1024).await })?;
    assert!(!first.is_empty());
    run_until_done(&lp, &*task.as_obj(), NET)?;
    match task.take_result() {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
            "unexpected error {e}"
        ),
        other => panic!("expected a ConnectionError, got {other:?}"),
    }
    let pos = f.tell() as usize;
    assert!(
        pos >= first.len() && pos < DATA_LEN,
        "position {pos} after a failed transfer"
    );
    assert!(!lp.remove_writer(a.raw())?, "the writer was left behind");
    lp.close()
}

// ----- loop.sendfile over transports written here -----------------------------------

/// A protocol that ignores everything.
struct Quiet;
impl BaseProtocol for Quiet {}
impl Protocol for Quiet {}

fn quiet() -> Rc<dyn Protocol> {
    Rc::new(Quiet)
}

/// What a [`MemTransport`] offers `loop.sendfile`.
#[derive(Clone, Copy, PartialEq)]
enum Hooks {
    /// No `_make_empty_waiter` (asyncio's `_SendfileMode.UNSUPPORTED`).
    Unsupported,
    /// An empty waiter, no zero-copy hook (`_SendfileMode.FALLBACK`).
    Fallback,
    /// A zero-copy hook answering `SendfileNotAvailable`.
    NativeUnavailable,
    /// A zero-copy hook that "sends" the file into the sink itself.
    Native,
}

/// A transport whose "socket" is a `Vec`: `write` buffers, and the loop
/// moves `per_step` bytes a callback from the buffer to `sink`. Records
/// what `loop.sendfile` did to it.
struct MemTransport {
    me: Weak<MemTransport>,
    lp: Loop,
    hooks: Hooks,
    per_step: usize,
    /// Closes (as if the peer went away) once the sink holds this much.
    close_after: Option<usize>,
    buffer: RefCell<Vec<u8>>,
    sink: RefCell<Vec<u8>>,
    limits: Cell<(usize, usize)>,
    max_buffer: Cell<usize>,
    closing: Cell<bool>,
    reading: Cell<bool>,
    draining: Cell<bool>,
    waiters: RefCell<Vec<Future<()>>>,
    events: Log<&'static str>,
    protocol: RefCell<Rc<dyn Protocol>>,
}

impl MemTransport {
    fn new(lp: &Loop, hooks: Hooks) -> Rc<MemTransport> {
        Self::with(lp, hooks, 4096, None)
    }

    fn with(lp: &Loop, hooks: Hooks, per_step: usize, close_after: Option<usize>) -> Rc<Self> {
        Rc::new_cyclic(|me| MemTransport {
            me: me.clone(),
            lp: lp.clone(),
            hooks,
            per_step,
            close_after,
            buffer: RefCell::new(Vec::new()),
            sink: RefCell::new(Vec::new()),
            limits: Cell::new((1024, 4096)),
            max_buffer: Cell::new(0),
            closing: Cell::new(false),
            reading: Cell::new(true),
            draining: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            events: Log::new(),
            protocol: RefCell::new(quiet()),
        })
    }

    fn schedule_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        let me = self.me.upgrade().expect("alive");
        self.lp
            .call_soon_dyn(Box::new(move || me.drain_step()), None)
            .expect("loop open");
    }

    fn drain_step(&self) {
        self.draining.set(false);
        if self.closing.get() {
            return;
        }
        {
            let mut buf = self.buffer.borrow_mut();
            let n = buf.len().min(self.per_step);
            self.sink.borrow_mut().extend(buf.drain(..n));
        }
        if self
            .close_after
            .is_some_and(|c| self.sink.borrow().len() >= c)
        {
            self.closing.set(true);
            self.buffer.borrow_mut().clear();
            for w in self.waiters.take() {
                let e = std::io::Error::new(ErrorKind::ConnectionReset, "peer went away");
                let _ = w.set_exception(e.into());
            }
            return;
        }
        if self.buffer.borrow().is_empty() {
            for w in self.waiters.take() {
                let _ = w.set_result(());
            }
        } else {
            self.schedule_drain();
        }
    }

    fn sink(&self) -> Vec<u8> {
        self.sink.borrow().clone()
    }

    fn as_transport(self: &Rc<Self>) -> Rc<dyn Transport> {
        self.clone()
    }
}

impl BaseTransport for MemTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        (name == "peername").then(|| ExtraInfo::Text("memory".into()))
    }
    fn is_closing(&self) -> bool {
        self.closing.get()
    }
    fn close(&self) {
        self.closing.set(true);
    }
}

impl ReadTransport for MemTransport {
    fn is_reading(&self) -> bool {
        self.reading.get()
    }
    fn pause_reading(&self) {
        self.events.push("pause_reading");
        self.reading.set(false);
    }
    fn resume_reading(&self) {
        self.events.push("resume_reading");
        self.reading.set(true);
    }
}

impl WriteTransport for MemTransport {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let (h, l) = loop_api::transports::flow_control::limits(high, low)?;
        self.limits.set((l, h));
        Ok(())
    }
    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.limits.get()
    }
    fn get_write_buffer_size(&self) -> usize {
        self.buffer.borrow().len()
    }
    fn write(&self, data: &[u8]) -> Result<()> {
        if self.closing.get() {
            return Ok(()); // asyncio counts writes after a loss and drops them
        }
        self.events.push("write");
        let size = {
            let mut buf = self.buffer.borrow_mut();
            buf.extend_from_slice(data);
            buf.len()
        };
        self.max_buffer.set(self.max_buffer.get().max(size));
        self.schedule_drain();
        Ok(())
    }
    fn write_eof(&self) -> Result<()> {
        Ok(())
    }
    fn can_write_eof(&self) -> bool {
        false
    }
    fn abort(&self) {
        self.closing.set(true);
    }
    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        if self.hooks == Hooks::Unsupported {
            return None;
        }
        let w = self.lp.create_future::<()>();
        if self.buffer.borrow().is_empty() {
            let _ = w.set_result(());
        } else {
            self.waiters.borrow_mut().push(w.clone());
        }
        Some(w)
    }
    fn _sendfile_native(
        &self,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> Option<LocalBoxFuture<'static, Result<u64>>> {
        match self.hooks {
            Hooks::Unsupported | Hooks::Fallback => None,
            Hooks::NativeUnavailable => {
                self.events.push("native");
                Some(Box::pin(async {
                    Err(Error::SendfileNotAvailable(
                        "sendfile syscall is not supported".into(),
                    ))
                }))
            }
            Hooks::Native => {
                self.events.push("native");
                let me = self.me.upgrade().expect("alive");
                Some(Box::pin(async move {
                    let mut all = Vec::new();
                    (&*file).seek(SeekFrom::Start(offset))?;
                    (&*file).read_to_end(&mut all)?;
                    let n = count.map_or(all.len(), |c| all.len().min(c as usize));
                    me.sink.borrow_mut().extend_from_slice(&all[..n]);
                    (&*file).seek(SeekFrom::Start(offset + n as u64))?;
                    Ok(n as u64)
                }))
            }
        }
    }
}

impl Transport for MemTransport {
    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        *self.protocol.borrow_mut() = protocol;
    }
    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.protocol.borrow().clone()
    }
}

/// `test_sendfile_force_fallback`: a transport without a zero-copy hook
/// gets the file through `write`, with flow control: the transport's
/// buffer stays far below the file's size. `sendfile` returns once the
/// buffer is flushed; reading is paused meanwhile and resumed after.
pub fn test_sendfile_force_fallback(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let tr = MemTransport::new(&lp, Hooks::Fallback);
    let t = tr.clone();
    let watched = lp.create_task(async move {
        // Sees whether reading is paused while the transfer runs.
        loop_api::sleep(0.0).await?;
        Ok(t.is_reading())
    })?;
    let (l, t, file) = (lp.clone(), tr.clone(), f.file.clone());
    let (ret, unflushed) = lp.run_until_complete(async move {
        // With `count`, nothing is read after the last write: the flush
        // is what empties the buffer.
        let n = l
            .sendfile(t.as_transport(), file, 0, Some(DATA_LEN as u64), true)
            .await?;
        Ok((n, t.get_write_buffer_size()))
    })?;
    assert_eq!(ret, DATA_LEN as u64);
    assert_eq!(unflushed, 0, "returned before the buffer was flushed");
    assert_bytes(&tr.sink(), &data, "the transport got");
    assert!(
        tr.max_buffer.get() < DATA_LEN / 4,
        "no flow control: {} bytes were buffered at once",
        tr.max_buffer.get()
    );
    assert_eq!(f.tell(), DATA_LEN as u64);
    assert!(!lp.run_until_complete(watched)?, "reading was not paused");
    let events = tr.events.get();
    assert_eq!(events.first(), Some(&"pause_reading"));
    assert_eq!(events.last(), Some(&"resume_reading"));
    assert!(tr.is_reading());
    lp.close()
}

/// `test_sendfile_partial` through the fallback: bytes `[1000, 1100)`.
pub fn test_sendfile_fallback_partial(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let tr = MemTransport::new(&lp, Hooks::Fallback);
    let ret = lp.run_until_complete(lp.sendfile(
        tr.as_transport(),
        f.file.clone(),
        1000,
        Some(100),
        true,
    ))?;
    assert_eq!(ret, 100);
    assert_bytes(&tr.sink(), &data[1000..1100], "the transport got");
    assert_eq!(f.tell(), 1100);
    lp.close()
}

/// `test_sendfile_force_fallback` proper: the zero-copy hook answers
/// `SendfileNotAvailableError`, and the fallback sends the file instead.
pub fn test_sendfile_native_unavailable_falls_back(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let data = pattern(100_000);
    let f = TempFile::new(ctx, &data);
    let tr = MemTransport::new(&lp, Hooks::NativeUnavailable);
    let ret =
        lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, None, true))?;
    assert_eq!(ret, data.len() as u64);
    assert_bytes(&tr.sink(), &data, "the transport got");
    assert_eq!(
        tr.events.get().first(),
        Some(&"native"),
        "hook not tried first"
    );
    assert_eq!(f.tell(), data.len() as u64);
    lp.close()
}

/// `test_sendfile_force_unsupported_native`: without `fallback`, the hook's
/// `SendfileNotAvailableError` comes back; nothing is written and the
/// position is untouched.
pub fn test_sendfile_force_unsupported_native(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, &pattern(10_000));
    let tr = MemTransport::new(&lp, Hooks::NativeUnavailable);
    let r = lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, None, false));
    match r {
        Err(Error::SendfileNotAvailable(m)) => assert!(m.contains("not supported"), "{m}"),
        other => panic!("expected SendfileNotAvailableError, got {other:?}"),
    }
    assert!(tr.sink().is_empty());
    assert!(!tr.events.get().contains(&"write"));
    assert_eq!(f.tell(), 0);
    lp.close()
}

/// The zero-copy hook, when it works, does the whole transfer: its result
/// is `sendfile`'s, and nothing goes through `write`.
pub fn test_sendfile_uses_native_hook(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let data = pattern(10_000);
    let f = TempFile::new(ctx, &data);
    let tr = MemTransport::new(&lp, Hooks::Native);
    let ret = lp.run_until_complete(lp.sendfile(
        tr.as_transport(),
        f.file.clone(),
        100,
        Some(50),
        false,
    ))?;
    assert_eq!(ret, 50);
    assert_bytes(&tr.sink(), &data[100..150], "the transport got");
    assert_eq!(tr.events.get(), vec!["native"]);
    lp.close()
}

/// `test_sendfile_no_fallback_for_fallback_transport`: no zero-copy hook
/// and `fallback=False`: `RuntimeError("fallback is disabled ...")`.
pub fn test_sendfile_no_fallback_for_fallback_transport(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let tr = MemTransport::new(&lp, Hooks::Fallback);
    let r = lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, None, false));
    match r {
        Err(Error::Runtime(m)) => assert!(
            m.starts_with(
                "fallback is disabled and native sendfile is not supported for transport"
            ),
            "{m}"
        ),
        other => panic!("expected RuntimeError, got {other:?}"),
    }
    assert!(tr.events.is_empty(), "the transport was touched");
    lp.close()
}

/// `test_sendfile_not_supported`: a transport that cannot report an empty
/// buffer: `RuntimeError("sendfile is not supported for transport ...")`;
/// nothing is written and the position is untouched.
pub fn test_sendfile_not_supported(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let tr = MemTransport::new(&lp, Hooks::Unsupported);
    let r = lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, None, true));
    match r {
        Err(Error::Runtime(m)) => assert!(
            m.starts_with("sendfile is not supported for transport"),
            "{m}"
        ),
        other => panic!("expected RuntimeError, got {other:?}"),
    }
    assert!(tr.events.is_empty(), "the transport was touched");
    assert_eq!(f.tell(), 0);
    lp.close()
}

/// `test_sendfile_for_closing_transp` (on a transport written here):
/// `RuntimeError("Transport is closing")`; and a zero `count` is a
/// `ValueError`.
pub fn test_sendfile_closing_transport_and_bad_count(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let tr = MemTransport::new(&lp, Hooks::Fallback);
    let r = lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, Some(0), true));
    crate::util::expect_value_error(r, "count must be a positive integer (got 0)");
    tr.close();
    let r = lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, None, true));
    crate::util::expect_runtime(r, "Transport is closing");
    assert!(tr.sink().is_empty());
    assert_eq!(f.tell(), 0);
    lp.close()
}

/// `test_sendfile_fallback_close_peer_in_the_middle_of_receiving`: the
/// transport closes midway: a `ConnectionError`, and the position tells
/// how much was written.
pub fn test_sendfile_fallback_close_peer_in_the_middle_of_receiving(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let tr = MemTransport::with(&lp, Hooks::Fallback, 1024, Some(1024));
    let r = lp.run_until_complete(lp.sendfile(tr.as_transport(), f.file.clone(), 0, None, true));
    match r {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            "unexpected error {e}"
        ),
        other => panic!("expected a ConnectionError, got {other:?}"),
    }
    let sink = tr.sink().len();
    assert!(sink >= 1024, "{sink}");
    let pos = f.tell() as usize;
    assert!(
        pos >= sink && pos < DATA_LEN,
        "position {pos} after a failed transfer ({sink} bytes reached the sink)"
    );
    assert!(
        !tr.is_reading() || !tr.is_closing(),
        "resumed a closed transport"
    );
    lp.close()
}

// ----- loop.sendfile over the loop's socket transport -------------------------------

/// A client transport of the loop over one end of a loopback pair with
/// small buffers, and the other end (`connect_accepted_socket`).
fn transport_pair(lp: &Loop) -> Result<(Rc<dyn Transport>, Rc<Socket>)> {
    let (a, b) = sock_pair();
    let factory: ProtocolFactory = Rc::new(quiet);
    let (tr, _proto) =
        lp.run_until_complete(lp.connect_accepted_socket_dyn(factory, a, None, None, None))?;
    tr.set_write_buffer_limits(Some(BUF_SIZE), None)?;
    Ok((tr, b))
}

/// `test_sendfile`: the whole file over the loop's socket transport; the
/// peer gets exactly the file.
pub fn test_sendfile(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (tr, peer) = transport_pair(&lp)?;
    let reading = reader(&lp, peer)?;
    let ret = lp.run_until_complete(lp.sendfile(tr.clone(), f.file.clone(), 0, None, true))?;
    tr.close();
    let got = lp.run_until_complete(reading)?;
    assert_eq!(ret, DATA_LEN as u64);
    assert_bytes(&got, &data, "the peer got");
    assert_eq!(f.tell(), DATA_LEN as u64);
    lp.close()
}

/// `test_sendfile_partial`: bytes `[1000, 1100)` over the socket transport.
pub fn test_sendfile_partial(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (tr, peer) = transport_pair(&lp)?;
    let reading = reader(&lp, peer)?;
    let ret =
        lp.run_until_complete(lp.sendfile(tr.clone(), f.file.clone(), 1000, Some(100), true))?;
    tr.close();
    let got = lp.run_until_complete(reading)?;
    assert_eq!(ret, 100);
    assert_bytes(&got, &data[1000..1100], "the peer got");
    assert_eq!(f.tell(), 1100);
    lp.close()
}

/// `test_sendfile_pre_and_post_data`: what was written before `sendfile`
/// arrives before the file, what is written after, after it.
pub fn test_sendfile_pre_and_post_data(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (tr, peer) = transport_pair(&lp)?;
    let prefix = b"PREFIX__".repeat(1024);
    let suffix = b"--SUFFIX".repeat(1024);
    let reading = reader(&lp, peer)?;
    tr.write(&prefix)?;
    let ret = lp.run_until_complete(lp.sendfile(tr.clone(), f.file.clone(), 0, None, true))?;
    tr.write(&suffix)?;
    tr.close();
    let got = lp.run_until_complete(reading)?;
    assert_eq!(ret, DATA_LEN as u64);
    let expected = [&prefix[..], &data[..], &suffix[..]].concat();
    assert_bytes(&got, &expected, "the peer got");
    assert_eq!(f.tell(), DATA_LEN as u64);
    lp.close()
}

/// `test_sendfile_prevents_bare_write`: while a zero-copy sendfile owns
/// the socket, `write` is refused with asyncio's `RuntimeError`; after it,
/// writes go on, and the peer gets exactly the file then what followed.
pub fn test_sendfile_prevents_bare_write(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let data = pattern(DATA_LEN);
    let f = TempFile::new(ctx, &data);
    let (tr, peer) = transport_pair(&lp)?;
    let reading = reader(&lp, peer)?;
    let sending = lp.create_task(lp.sendfile(tr.clone(), f.file.clone(), 0, None, false))?;
    crate::util::run_once(&lp)?;
    if sending.done() {
        // No zero-copy path (fallback refused): a skip, if declared.
        let why = lp
            .run_until_complete(sending)
            .expect_err("a file bigger than the socket buffers cannot be sent in one iteration");
        return Err(Error::NotSupported {
            feature: "zero-copy sendfile",
            reason: why.to_string(),
        });
    }
    assert_eq!(
        tr.write(b"between"),
        Err(Error::runtime("unable to write; sendfile is in progress"))
    );
    assert_eq!(lp.run_until_complete(sending)?, DATA_LEN as u64);
    tr.write(b"after")?;
    tr.close();
    let got = lp.run_until_complete(reading)?;
    let expected = [&data[..], b"after"].concat();
    assert_bytes(&got, &expected, "the peer got");
    lp.close()
}

/// `test_sendfile_for_closing_transp`: `RuntimeError("Transport is
/// closing")`; the peer gets nothing and the position is untouched.
pub fn test_sendfile_for_closing_transp(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, &pattern(10_000));
    let (tr, peer) = transport_pair(&lp)?;
    let reading = reader(&lp, peer)?;
    tr.close();
    let r = lp.run_until_complete(lp.sendfile(tr.clone(), f.file.clone(), 0, None, true));
    crate::util::expect_runtime(r, "Transport is closing");
    let got = lp.run_until_complete(reading)?;
    assert!(got.is_empty(), "{} bytes arrived", got.len());
    assert_eq!(f.tell(), 0);
    lp.close()
}

/// `test_sendfile_force_fallback` on the socket transport: a file with no
/// zero-copy path (`/dev/zero`) goes through the fallback; with
/// `fallback=False` it is `SendfileNotAvailableError` and nothing is sent
/// (`test_sendfile_force_unsupported_native`).
pub fn test_sendfile_fallback_not_regular_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let zero = dev_zero()?;
    let lp = ctx.new_loop();
    let (tr, peer) = transport_pair(&lp)?;
    let reading = reader(&lp, peer)?;
    let r = lp.run_until_complete(lp.sendfile(tr.clone(), zero.clone(), 0, Some(1000), false));
    match r {
        Err(Error::SendfileNotAvailable(_)) => {}
        other => panic!("expected SendfileNotAvailableError, got {other:?}"),
    }
    assert!(!tr.is_closing());
    let ret = lp.run_until_complete(lp.sendfile(tr.clone(), zero, 0, Some(200_001), true))?;
    tr.close();
    let got = lp.run_until_complete(reading)?;
    assert_eq!(ret, 200_001);
    assert_eq!(got.len(), 200_001);
    assert!(got.iter().all(|&x| x == 0));
    lp.close()
}

/// asyncio's `_ensure_fd_no_transport`: `sock_sendfile` refuses a socket a
/// transport owns.
pub fn test_sock_sendfile_fd_used_by_transport(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let f = TempFile::new(ctx, b"data");
    let (a, _b) = sock_pair();
    let factory: ProtocolFactory = Rc::new(quiet);
    let (tr, _proto) = lp.run_until_complete(lp.connect_accepted_socket_dyn(
        factory,
        a.clone(),
        None,
        None,
        None,
    ))?;
    let r = lp.run_until_complete(lp.sock_sendfile(a.clone(), f.file.clone(), 0, None, true));
    match r {
        Err(Error::Runtime(m)) => assert!(
            m.starts_with(&format!("File descriptor {} is used by transport", a.raw())),
            "{m}"
        ),
        other => panic!("expected RuntimeError, got {other:?}"),
    }
    assert_eq!(f.tell(), 0);
    tr.close();
    lp.close()
}
