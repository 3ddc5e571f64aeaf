//! From CPython's `test_unix_events.py` (`UnixReadPipeTransportTests`,
//! `UnixWritePipeTransportTests`) and the pipe cases of `test_events.py`:
//! `connect_read_pipe` and `connect_write_pipe` over real pipes, sockets,
//! character devices and ptys.
//!
//! The other end of each pipe is the case's own: a thread that writes or
//! reads it, or plain calls between loop iterations. Whether a transport
//! closed its descriptor is seen from that other end (a writer gets
//! `EPIPE` once no reader is left; a reader gets EOF once no writer is).

use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Write};
use std::rc::Rc;

use loop_api::protocols::{BaseProtocol, Protocol, TransportCell};
use loop_api::transports::{ExtraInfo, Transport};
use loop_api::{Error, EventLoopExt, Loop, Result};

use crate::cases::test_server::{run, run_until};
use crate::util::{capture_exceptions, loop_pipe, run_once, Log, LoopEnd};
use crate::{Ctx, Feature};

// ----- the recording protocol ---------------------------------------------------------

/// What a pipe transport did to its protocol, in order.
#[derive(Clone, Debug)]
pub(crate) enum Ev {
    Made,
    Data(Vec<u8>),
    Eof,
    Lost(Option<Error>),
    Pause,
    Resume,
}

/// Records every callback.
#[derive(Default)]
pub(crate) struct Rec {
    pub transport: TransportCell,
    pub events: Log<Ev>,
    /// `data_received` panics.
    pub panic_on_data: bool,
    pub data_len: Cell<usize>,
    /// Data is counted, not kept (for large transfers).
    pub count_only: bool,
}

impl Rec {
    fn new() -> Rc<Rec> {
        Rc::new(Rec::default())
    }

    fn data(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for e in self.events.get() {
            if let Ev::Data(d) = e {
                v.extend_from_slice(&d);
            }
        }
        v
    }

    fn lost(&self) -> Vec<Option<Error>> {
        self.events
            .get()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Lost(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: fn(&Ev) -> bool) -> usize {
        self.events.get().iter().filter(|e| f(e)).count()
    }
}

impl BaseProtocol for Rec {
    fn connection_lost(&self, exc: Option<Error>) {
        self.events.push(Ev::Lost(exc));
    }
    fn pause_writing(&self) {
        self.events.push(Ev::Pause);
    }
    fn resume_writing(&self) {
        self.events.push(Ev::Resume);
    }
}

impl Protocol for Rec {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.transport.set(transport);
        self.events.push(Ev::Made);
    }
    fn data_received(&self, data: &[u8]) {
        if self.panic_on_data {
            panic!("data_received fails on purpose");
        }
        self.data_len.set(self.data_len.get() + data.len());
        if !self.count_only {
            self.events.push(Ev::Data(data.to_vec()));
        }
    }
    fn eof_received(&self) -> bool {
        self.events.push(Ev::Eof);
        false
    }
}

fn connect_read(lp: &Loop, rec: &Rc<Rec>, pipe: File) -> Result<Rc<dyn Transport>> {
    let r = rec.clone();
    let fut = lp.connect_read_pipe(move || r.clone(), pipe);
    Ok(run(lp, fut)?.0)
}

fn connect_write(lp: &Loop, rec: &Rc<Rec>, pipe: File) -> Result<Rc<dyn Transport>> {
    let r = rec.clone();
    let fut = lp.connect_write_pipe(move || r.clone(), pipe);
    Ok(run(lp, fut)?.0)
}

fn wait_lost(lp: &Loop, rec: &Rc<Rec>) -> Result<()> {
    run_until(lp, "connection_lost", || !rec.lost().is_empty())?;
    // A second call would show here.
    run_once(lp)?;
    run_once(lp)?;
    assert_eq!(
        rec.lost().len(),
        1,
        "connection_lost once: {:?}",
        rec.events.get()
    );
    assert!(
        matches!(rec.events.get().last(), Some(Ev::Lost(_))),
        "nothing after connection_lost: {:?}",
        rec.events.get()
    );
    Ok(())
}

/// True once no reader is left on the pipe `w` writes to.
#[cfg(unix)]
fn reader_gone(w: &File) -> bool {
    // SAFETY: a one-byte write from a valid buffer to a descriptor we own.
    // SIGPIPE is ignored by Rust's runtime, so EPIPE comes back as an error.
    let n = unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(w), b"x".as_ptr().cast(), 1) };
    n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPIPE)
}

/// True once the read end of `w`'s pipe is closed everywhere (`POLLERR`
/// on the write end), without writing anything.
#[cfg(unix)]
fn read_end_closed(w: &File) -> bool {
    let mut p = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(w),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call; no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLERR != 0
}

/// A descriptor's `O_NONBLOCK` flag.
#[cfg(unix)]
fn is_nonblocking(fd: i32) -> bool {
    // SAFETY: F_GETFL reads the flags of a descriptor the caller keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0, "fcntl: {}", std::io::Error::last_os_error());
    flags & libc::O_NONBLOCK != 0
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn fd_of(t: &Rc<dyn Transport>) -> loop_api::events::RawFd {
    match t.get_extra_info("pipe") {
        Some(ExtraInfo::Fd(fd)) => fd,
        other => panic!("get_extra_info(\"pipe\") = {other:?}"),
    }
}

// ----- read pipes ----------------------------------------------------------------------

/// Data in order, then `eof_received`, then `connection_lost(None)`.
pub fn test_read_pipe(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, mut w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    assert!(matches!(rec.events.get()[..], [Ev::Made]));
    assert!(t.is_reading() && !t.is_closing());
    w.write_all(b"1")?;
    run_until(&lp, "the first byte", || rec.data() == b"1")?;
    w.write_all(b"2345")?;
    run_until(&lp, "the rest", || rec.data() == b"12345")?;
    drop(w);
    wait_lost(&lp, &rec)?;
    let ev = rec.events.get();
    let eof = ev
        .iter()
        .position(|e| matches!(e, Ev::Eof))
        .expect("eof_received");
    assert_eq!(
        eof,
        ev.len() - 2,
        "eof_received right before connection_lost: {ev:?}"
    );
    assert!(rec.lost()[0].is_none());
    assert!(t.is_closing());
    lp.close()
}

/// `get_extra_info("pipe")` is the descriptor while it is open.
pub fn test_read_pipe_extra_info(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, _w) = loop_pipe(LoopEnd::Read)?;
    #[cfg(unix)]
    let raw = std::os::fd::AsRawFd::as_raw_fd(&r);
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    let fd = fd_of(&t);
    #[cfg(unix)]
    assert_eq!(fd, raw);
    let _ = fd;
    assert_eq!(t.get_extra_info("peername"), None);
    t.close();
    wait_lost(&lp, &rec)?;
    assert_eq!(t.get_extra_info("pipe"), None, "no descriptor once closed");
    lp.close()
}

/// A regular file is refused with asyncio's `ValueError`. On Windows, so
/// is a pipe not opened for overlapped I/O (a read on it would block the
/// loop's thread), and the loop goes on.
pub fn test_read_pipe_regular_file_refused(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let file = tempfile("read-refused")?;
    let rec = Rec::new();
    let r = connect_read(&lp, &rec, file.0.try_clone()?);
    assert_eq!(
        r.err(),
        Some(Error::value("Pipe transport is for pipes/sockets only."))
    );
    assert!(
        rec.events.is_empty(),
        "no callbacks: {:?}",
        rec.events.get()
    );
    #[cfg(windows)]
    {
        let plain = loop_api::windows_utils::Overlapped {
            read: false,
            write: false,
        };
        let (r, _w) = loop_api::windows_utils::pipe(false, plain)?;
        let refused = connect_read(&lp, &rec, r);
        assert!(
            matches!(&refused, Err(Error::Value(m)) if m.contains("overlapped")),
            "{:?}",
            refused.err()
        );
        let (r, mut w) = loop_pipe(LoopEnd::Read)?;
        let _t = connect_read(&lp, &rec, r)?;
        w.write_all(b"still fine")?;
        run_until(&lp, "data", || rec.data() == b"still fine")?;
    }
    lp.close()
}

/// The descriptor is made non-blocking.
#[cfg(unix)]
pub fn test_read_pipe_sets_nonblocking(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, _w) = loop_pipe(LoopEnd::Read)?;
    assert!(!is_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&r)));
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    assert!(is_nonblocking(fd_of(&t)));
    t.close();
    wait_lost(&lp, &rec)?;
    lp.close()
}

/// A socket is accepted as a read pipe (asyncio's subprocess stdin on AIX).
#[cfg(unix)]
pub fn test_read_pipe_socket(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let rec = Rec::new();
    let _t = connect_read(&lp, &rec, File::from(std::os::fd::OwnedFd::from(a)))?;
    b.write_all(b"over a socket")?;
    drop(b);
    wait_lost(&lp, &rec)?;
    assert_eq!(rec.data(), b"over a socket");
    assert_eq!(rec.count(|e| matches!(e, Ev::Eof)), 1);
    lp.close()
}

/// A character device is accepted: `/dev/null` reads as EOF at once.
#[cfg(unix)]
pub fn test_read_pipe_char_device(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let _t = connect_read(&lp, &rec, File::open("/dev/null")?)?;
    wait_lost(&lp, &rec)?;
    assert!(rec.data().is_empty());
    assert_eq!(rec.count(|e| matches!(e, Ev::Eof)), 1);
    assert!(rec.lost()[0].is_none());
    lp.close()
}

/// Paused, nothing is delivered; resumed, what waited arrives.
pub fn test_read_pipe_pause_resume(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, mut w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    t.pause_reading();
    assert!(!t.is_reading());
    t.pause_reading(); // twice: no harm
    w.write_all(b"held")?;
    for _ in 0..5 {
        run_once(&lp)?;
    }
    assert!(rec.data().is_empty(), "nothing while paused");
    t.resume_reading();
    assert!(t.is_reading());
    run_until(&lp, "the held data", || rec.data() == b"held")?;
    t.resume_reading(); // not paused: no harm
    t.close();
    wait_lost(&lp, &rec)?;
    assert!(!t.is_reading(), "a closing transport is not reading");
    lp.close()
}

/// `close`: `connection_lost(None)` once, and the descriptor is closed
/// (the writer then gets `EPIPE`).
pub fn test_read_pipe_close(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    t.close();
    assert!(t.is_closing());
    t.close(); // twice: no second connection_lost
    t.abort();
    wait_lost(&lp, &rec)?;
    assert!(rec.lost()[0].is_none());
    assert_eq!(rec.count(|e| matches!(e, Ev::Eof)), 0, "no EOF on close");
    #[cfg(unix)]
    assert!(reader_gone(&w), "the read end is closed");
    drop(w);
    lp.close()
}

/// The writing half of a read-pipe transport refuses.
pub fn test_read_pipe_cannot_write(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, _w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    assert!(matches!(t.write(b"x"), Err(Error::Runtime(_))));
    assert!(matches!(t.write_eof(), Err(Error::Runtime(_))));
    assert!(!t.can_write_eof());
    assert_eq!(t.get_write_buffer_size(), 0);
    t.close();
    wait_lost(&lp, &rec)?;
    lp.close()
}

/// A panic in `data_received` reaches the exception handler and ends the
/// transport with it; the loop goes on.
pub fn test_read_pipe_data_received_panic(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (r, mut w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rc::new(Rec {
        panic_on_data: true,
        ..Default::default()
    });
    let t = connect_read(&lp, &rec, r)?;
    w.write_all(b"boom")?;
    wait_lost(&lp, &rec)?;
    assert!(
        matches!(rec.lost()[0], Some(Error::Panic(_))),
        "{:?}",
        rec.lost()
    );
    assert_eq!(errors.len(), 1, "reported once");
    assert!(
        errors.get()[0].message.contains("data_received"),
        "{}",
        errors.get()[0].message
    );
    assert!(t.is_closing());
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    lp.call_soon(move || d.set(true))?;
    run_once(&lp)?;
    assert!(done.get(), "the loop goes on");
    lp.close()
}

/// While a transport owns the descriptor, `add_reader` on it is refused;
/// once it closed, it is free again.
#[cfg(unix)]
pub fn test_read_pipe_fd_owned_by_transport(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (r, _w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let t = connect_read(&lp, &rec, r)?;
    let fd = fd_of(&t);
    let refused = lp.add_reader(fd, || {});
    assert!(
        matches!(&refused, Err(Error::Runtime(m)) if m.starts_with(&format!("File descriptor {fd} is used by transport"))),
        "{refused:?}"
    );
    t.close();
    wait_lost(&lp, &rec)?;
    lp.close()
}

/// Cancelling `connect_read_pipe` before `connection_made` closes the
/// pipe it was handed.
pub fn test_read_pipe_cancelled_connect(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let rc = rec.clone();
    let fut = lp.connect_read_pipe(move || rc.clone(), r);
    let task = lp.create_task(fut)?;
    // The first step makes the transport and waits for connection_made.
    run_once(&lp)?;
    task.cancel(None);
    let r = run(&lp, async move { Ok(task.await) })?;
    assert!(matches!(r, Err(Error::Cancelled(_))), "{:?}", r.err());
    run_until(&lp, "the transport's end", || {
        !rec.lost().is_empty() || rec.events.is_empty()
    })?;
    // On a completion backend the kernel lets go of the pipe once the
    // cancelled read request is done with it, which can take a moment
    // under load (a request a worker thread had taken is cancelled
    // asynchronously): wait for it with the loop turning.
    #[cfg(unix)]
    run_until(&lp, "the pipe's close", || read_end_closed(&w))?;
    #[cfg(unix)]
    assert!(reader_gone(&w), "the pipe was closed");
    drop(w);
    lp.close()
}

/// On a closed loop, `connect_read_pipe` fails and closes the pipe.
pub fn test_read_pipe_closed_loop(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    lp.close()?;
    let (r, w) = loop_pipe(LoopEnd::Read)?;
    let rec = Rec::new();
    let rc = rec.clone();
    let fut = lp.connect_read_pipe(move || rc.clone(), r);
    let r = futures_block_on(fut);
    assert!(
        matches!(&r, Err(Error::Runtime(m)) if m == "Event loop is closed"),
        "{:?}",
        r.err()
    );
    #[cfg(unix)]
    assert!(reader_gone(&w), "the pipe was closed");
    drop(w);
    Ok(())
}

/// A pty's output: what the other side writes arrives; its hang-up (EIO
/// on Linux) ends the transport without troubling the exception handler.
#[cfg(unix)]
pub fn test_read_pty_output(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (master, slave) = openpty()?;
    let rec = Rec::new();
    let _t = connect_read(&lp, &rec, master)?;
    let mut slave = slave;
    slave.write_all(b"1")?;
    run_until(&lp, "the first byte", || rec.data() == b"1")?;
    slave.write_all(b"2345")?;
    run_until(&lp, "the rest", || rec.data() == b"12345")?;
    drop(slave);
    wait_lost(&lp, &rec)?;
    assert!(errors.is_empty(), "an EIO is not a bug: {:?}", errors.get());
    lp.close()
}

/// 10 MB from a writer thread arrive whole and in order.
pub fn test_read_pipe_large(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, mut w) = loop_pipe(LoopEnd::Read)?;
    let data = pattern(10 * 1024 * 1024);
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let rec = Rec::new();
    let _t = connect_read(&lp, &rec, r)?;
    wait_lost(&lp, &rec)?;
    writer.join().expect("writer")?;
    let got = rec.data();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    lp.close()
}

// ----- write pipes ---------------------------------------------------------------------

/// What is written arrives in order; `close` flushes and ends cleanly.
pub fn test_write_pipe(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    assert!(!t.is_reading());
    assert!(t.can_write_eof());
    t.write(b"1")?;
    t.write(b"")?; // nothing
    t.writelines(&[b"23", b"", b"45"])?;
    t.close();
    wait_lost(&lp, &rec)?;
    assert!(rec.lost()[0].is_none());
    let mut got = Vec::new();
    r.read_to_end(&mut got)?;
    assert_eq!(got, b"12345");
    lp.close()
}

/// A regular file is refused with asyncio's `ValueError`.
pub fn test_write_pipe_regular_file_refused(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let file = tempfile("write-refused")?;
    let rec = Rec::new();
    let r = connect_write(&lp, &rec, file.0.try_clone()?);
    assert_eq!(
        r.err(),
        Some(Error::value(
            "Pipe transport is only for pipes, sockets and character devices"
        ))
    );
    lp.close()
}

/// A character device is accepted: `/dev/null` takes everything.
#[cfg(unix)]
pub fn test_write_pipe_char_device(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let dev = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let t = connect_write(&lp, &rec, dev)?;
    t.write(&pattern(1024 * 1024))?;
    assert_eq!(t.get_write_buffer_size(), 0, "all taken at once");
    t.close();
    wait_lost(&lp, &rec)?;
    assert!(rec.lost()[0].is_none());
    lp.close()
}

/// The reader going away with nothing buffered ends the transport cleanly
/// (asyncio's `test_write_pipe_disconnect_on_close`).
pub fn test_write_pipe_reader_gone(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    t.write(b"read or not")?;
    drop(r);
    wait_lost(&lp, &rec)?;
    assert!(rec.lost()[0].is_none(), "{:?}", rec.lost());
    assert!(t.is_closing());
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// The reader going away while data is buffered: `BrokenPipeError`, and
/// the buffer is dropped; no exception handler call.
pub fn test_write_pipe_reader_gone_with_buffer(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    t.write(&pattern(1024 * 1024))?;
    assert!(
        t.get_write_buffer_size() > 0,
        "a pipe takes less than 1 MiB"
    );
    drop(r);
    wait_lost(&lp, &rec)?;
    assert!(
        rec.lost()[0].as_ref().is_some_and(Error::is_broken_pipe),
        "{:?}",
        rec.lost()
    );
    assert_eq!(t.get_write_buffer_size(), 0);
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// A write that meets a closed reader first (`EPIPE`) ends the transport
/// with `BrokenPipeError`; the process lives on (no SIGPIPE) and so does
/// the loop.
pub fn test_write_pipe_epipe(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    drop(r);
    t.write(b"nobody reads this")?;
    wait_lost(&lp, &rec)?;
    assert!(
        rec.lost()[0].as_ref().is_some_and(Error::is_broken_pipe),
        "{:?}",
        rec.lost()
    );
    assert!(errors.is_empty(), "{:?}", errors.get());
    t.write(b"more")?; // dropped, no error
    lp.close()
}

/// Flow control: `pause_writing` past the high mark, `resume_writing` at
/// the low one, each once; the buffer size says what waits.
pub fn test_write_pipe_flow_control(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    assert_eq!(t.get_write_buffer_limits(), (16 * 1024, 64 * 1024));
    t.set_write_buffer_limits(Some(4096), Some(1024))?;
    assert_eq!(t.get_write_buffer_limits(), (1024, 4096));
    assert!(t.set_write_buffer_limits(Some(1), Some(2)).is_err());
    // Fill the pipe, then some.
    let chunk = pattern(64 * 1024);
    while t.get_write_buffer_size() == 0 {
        t.write(&chunk)?;
    }
    t.write(&chunk)?;
    assert_eq!(rec.count(|e| matches!(e, Ev::Pause)), 1);
    let buffered = t.get_write_buffer_size();
    assert!(buffered > 4096);
    // Drain it from a thread; the loop hears resume_writing.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        r.read_to_end(&mut all).map(|_| all.len())
    });
    run_until(&lp, "resume_writing", || {
        rec.count(|e| matches!(e, Ev::Resume)) == 1
    })?;
    assert!(t.get_write_buffer_size() <= 1024);
    t.close();
    wait_lost(&lp, &rec)?;
    assert_eq!(rec.count(|e| matches!(e, Ev::Pause)), 1);
    assert_eq!(rec.count(|e| matches!(e, Ev::Resume)), 1);
    let n = reader.join().expect("reader")?;
    assert!(n >= buffered, "everything buffered was written");
    lp.close()
}

/// `write_eof` flushes what is buffered, then closes: the reader sees all
/// of it, then EOF.
pub fn test_write_pipe_write_eof(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    let data = pattern(1024 * 1024);
    t.write(&data)?;
    t.write_eof()?;
    assert!(t.is_closing());
    t.write(b"after eof")?; // dropped silently, as asyncio's pipe does
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        r.read_to_end(&mut all).map(|_| all)
    });
    wait_lost(&lp, &rec)?;
    assert!(rec.lost()[0].is_none());
    let got = reader.join().expect("reader")?;
    assert!(got == data, "got {} bytes of {}", got.len(), data.len());
    lp.close()
}

/// `abort` drops the buffer and ends at once; the reader sees what the
/// pipe took, then EOF.
pub fn test_write_pipe_abort(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    t.write(&pattern(1024 * 1024))?;
    let buffered = t.get_write_buffer_size();
    assert!(buffered > 0);
    t.abort();
    assert_eq!(t.get_write_buffer_size(), 0);
    wait_lost(&lp, &rec)?;
    assert!(rec.lost()[0].is_none());
    let mut got = Vec::new();
    r.read_to_end(&mut got)?;
    // What the pipe took before the abort: on readiness exactly what was
    // not buffered; on completions (where the buffer size counts the
    // write in flight) whatever part of that write the kernel had done.
    assert!(got.len() >= 1024 * 1024 - buffered, "what the pipe took");
    assert!(got.len() < 1024 * 1024, "the rest was dropped");
    assert!(got == pattern(got.len()), "a prefix of what was written");
    lp.close()
}

/// Writes after the end are dropped without an error; from the fifth on
/// asyncio's warning is logged.
pub fn test_write_pipe_write_after_close(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    drop(r);
    t.write(b"x")?;
    wait_lost(&lp, &rec)?;
    let logs = crate::util::LogCapture::start();
    for _ in 0..6 {
        t.write(b"dropped")?;
    }
    let warned = logs
        .at(loop_api::log::Level::Warning)
        .into_iter()
        .filter(|m| m.contains("pipe closed by peer"))
        .count();
    assert!(warned >= 1, "asyncio's warning: {:?}", logs.lines());
    lp.close()
}

/// 10 MB to a slow reader: whole, in order, with the writer paused and
/// resumed on the way.
pub fn test_write_pipe_large(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, w)?;
    let data = pattern(10 * 1024 * 1024);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 7000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(all),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    });
    for chunk in data.chunks(100_000) {
        t.write(chunk)?;
    }
    assert!(rec.count(|e| matches!(e, Ev::Pause)) >= 1);
    t.close();
    wait_lost(&lp, &rec)?;
    let got = reader.join().expect("reader")?;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Pause)),
        rec.count(|e| matches!(e, Ev::Resume))
    );
    lp.close()
}

/// Writes from `resume_writing` until paused again, and `write_eof` after
/// the last chunk, all inside the callback (a producer as programs write
/// it). The end must wait for everything buffered.
struct Producer {
    transport: TransportCell,
    data: Vec<u8>,
    sent: Cell<usize>,
    paused: Cell<bool>,
    lost: Log<Option<Error>>,
}

impl Producer {
    fn pump(&self) {
        let Some(t) = self.transport.get() else {
            return;
        };
        while !self.paused.get() && self.sent.get() < self.data.len() {
            // The last megabyte goes in one write, so that it is still
            // buffered when `write_eof` follows.
            let left = self.data.len() - self.sent.get();
            let end = self.sent.get() + if left <= 1 << 20 { left } else { 50_000 };
            t.write(&self.data[self.sent.get()..end]).expect("write");
            self.sent.set(end);
        }
        if self.sent.get() == self.data.len() && !t.is_closing() {
            t.write_eof().expect("write_eof");
        }
    }
}

impl BaseProtocol for Producer {
    fn connection_lost(&self, exc: Option<Error>) {
        self.lost.push(exc);
    }
    fn pause_writing(&self) {
        self.paused.set(true);
    }
    fn resume_writing(&self) {
        self.paused.set(false);
        self.pump();
    }
}

impl Protocol for Producer {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.transport.set(transport);
        self.pump();
    }
}

/// `write_eof` called from `resume_writing`, with the buffer refilled in
/// the same callback: the reader gets every byte before EOF (an early
/// version closed the pipe with the refill still buffered).
pub fn test_write_pipe_write_eof_in_resume_writing(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let data = pattern(3 * 1024 * 1024 + 12_345);
    let producer = Rc::new(Producer {
        transport: TransportCell::default(),
        data: data.clone(),
        sent: Cell::new(0),
        paused: Cell::new(false),
        lost: Log::default(),
    });
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        r.read_to_end(&mut all).map(|_| all)
    });
    let p = producer.clone();
    run(&lp, lp.connect_write_pipe(move || p.clone(), w))?;
    run_until(&lp, "connection_lost", || !producer.lost.get().is_empty())?;
    let got = reader.join().expect("reader")?;
    assert!(got == data, "got {} bytes of {}", got.len(), data.len());
    assert!(producer.lost.get()[0].is_none());
    lp.close()
}

/// Writing to a pty: what the slave side is given, the master reads.
#[cfg(unix)]
pub fn test_write_pty(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (mut master, slave) = openpty()?;
    raw_mode(&slave)?;
    let rec = Rec::new();
    let t = connect_write(&lp, &rec, slave)?;
    t.write(b"1")?;
    t.write(b"2345")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 5 {
        let n = master.read(&mut buf)?;
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"12345");
    t.close();
    wait_lost(&lp, &rec)?;
    lp.close()
}

/// Both transports on one loop, on two pipes: what the write transport
/// sends, the read transport gets, then EOF once the writer closes.
pub fn test_pipe_round_trip(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    let (r, w) = loop_pipe(LoopEnd::Both)?;
    let reader = Rec::new();
    let writer = Rec::new();
    let _rt = connect_read(&lp, &reader, r)?;
    let wt = connect_write(&lp, &writer, w)?;
    let data = pattern(3 * 1024 * 1024);
    for chunk in data.chunks(50_000) {
        wt.write(chunk)?;
    }
    wt.close();
    wait_lost(&lp, &reader)?;
    wait_lost(&lp, &writer)?;
    assert!(reader.data() == data, "bytes differ");
    assert_eq!(reader.count(|e| matches!(e, Ev::Eof)), 1);
    lp.close()
}

/// On a closed loop, `connect_write_pipe` fails and closes the pipe.
pub fn test_write_pipe_closed_loop(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Pipes)?;
    let lp = ctx.new_loop();
    lp.close()?;
    let (mut r, w) = loop_pipe(LoopEnd::Write)?;
    let rec = Rec::new();
    let rc = rec.clone();
    let r2 = futures_block_on(lp.connect_write_pipe(move || rc.clone(), w));
    assert!(
        matches!(&r2, Err(Error::Runtime(m)) if m == "Event loop is closed"),
        "{:?}",
        r2.err()
    );
    let mut got = Vec::new();
    r.read_to_end(&mut got)?; // EOF: the write end was closed
    assert!(got.is_empty());
    Ok(())
}

// ----- helpers -------------------------------------------------------------------------

/// A regular file in the temporary directory, removed when dropped.
struct TempFile(File, std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

fn tempfile(tag: &str) -> Result<TempFile> {
    let p = crate::util::TempPath::new(tag);
    let path = p.0.clone();
    std::mem::forget(p);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    Ok(TempFile(f, path))
}

/// Drives a future that completes without the loop running (a call on a
/// closed loop fails at its first poll).
fn futures_block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the call waited on a closed loop"),
    }
}

/// A pty pair, `(master, slave)`, close-on-exec.
#[cfg(unix)]
fn openpty() -> Result<(File, File)> {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two descriptors; the name, termios and winsize
    // arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    for fd in [m, s] {
        // SAFETY: sets FD_CLOEXEC on a descriptor openpty just gave us.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(m), File::from_raw_fd(s)) })
}

/// Raw mode on a pty's slave side, so bytes pass unchanged.
#[cfg(unix)]
fn raw_mode(f: &File) -> Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    // SAFETY: tcgetattr fills a zeroed termios for a descriptor we keep
    // open; cfmakeraw edits it in place; tcsetattr reads it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

#[cfg(not(unix))]
unix_only!(
    Feature::Pipes, "pipes", "the case drives the other end with Unix calls":
    test_read_pipe_sets_nonblocking,
    test_read_pipe_socket,
    test_read_pipe_char_device,
    test_read_pipe_fd_owned_by_transport,
    test_read_pty_output,
    test_write_pipe_char_device,
    test_write_pty,
);
