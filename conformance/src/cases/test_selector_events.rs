//! From CPython's `test_selector_events.py` and `test_events.py`: the stream
//! socket transport (reads, writes, EOF, half-close, flow control, close and
//! abort) on real loopback sockets.
//!
//! Each case wraps one end of a loopback TCP pair in a transport
//! (`connect_accepted_socket`, or `create_server` + `create_connection`)
//! and drives the other end with std I/O, from the case's thread for what
//! the peer sends and from a helper thread for what it reads, so that the
//! loop keeps running while the peer drains. Nothing synchronises with a
//! sleep: the loop runs until a protocol event, until the peer thread
//! reports, or (to show that something does *not* happen) for a short
//! timer.

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use loop_api::events::options::{CreateServerOptions, Hosts, MAX_READ_SIZE};
use loop_api::events::RawFd;
use loop_api::log::Level;
use loop_api::protocols::{BaseProtocol, BufferedProtocol, Protocol, ProtocolFactory};
use loop_api::transports::{ExtraInfo, Transport};
use loop_api::{Error, EventLoopExt, Future, Loop, Result};
use socket2::Socket;

use crate::util::{
    capture_exceptions, expect_runtime, expect_value_error, run_once, run_until_done, same_obj,
    socketpair, Log, LogCapture,
};
use crate::Ctx;

/// Safety net for the cases that run the loop: never how they synchronise.
const NET: f64 = 30.0;
/// How long a peer thread waits on a blocking read or write before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a case runs the loop to show that something does not happen.
const QUIET: f64 = 0.05;
/// More than the kernel of a pair with [`small_buffers`] holds, and more
/// than the default high-water mark: a write this big leaves most of itself
/// in the transport's buffer while the peer does not read.
const BIG: usize = 4 * 1024 * 1024;
/// The size of the "huge" transfers.
const HUGE: usize = 10 * 1024 * 1024;

// ----- a recording protocol ------------------------------------------------------------

/// What a protocol saw, in order.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Made,
    /// `data_received` (or `buffer_updated`) with this many bytes.
    Data(usize),
    Eof,
    /// `connection_lost`, with the error's text.
    Lost(Option<String>),
    /// `pause_writing`, with the write buffer's size at the call.
    Pause(usize),
    /// `resume_writing`, with the write buffer's size at the call.
    Resume(usize),
    /// A method that must not be called for this protocol was.
    Wrong(&'static str),
}

/// A hook run inside a protocol callback: the protocol, its transport, and
/// the bytes just received (empty for other callbacks).
type Hook = Rc<dyn Fn(&Rec, &Rc<dyn Transport>, &[u8])>;

type Waiter = (Box<dyn Fn(&Rec) -> bool>, Future<()>);

/// A protocol that records everything and lets a case wait for a condition
/// on what it recorded.
#[derive(Default)]
struct Rec {
    events: RefCell<Vec<Ev>>,
    data: RefCell<Vec<u8>>,
    max_chunk: Cell<usize>,
    transport: RefCell<Option<Rc<dyn Transport>>>,
    keep_open: Cell<bool>,
    lost: RefCell<Vec<Option<Error>>>,
    waiters: RefCell<Vec<Waiter>>,
    on_made: RefCell<Option<Hook>>,
    on_data: RefCell<Option<Hook>>,
    on_resume: RefCell<Option<Hook>>,
}

impl Rec {
    fn new() -> Rc<Rec> {
        Rc::new(Rec::default())
    }

    /// `eof_received` returns true (keeps the write side open).
    fn keeping_open() -> Rc<Rec> {
        let r = Rec::new();
        r.keep_open.set(true);
        r
    }

    fn on_made(&self, f: impl Fn(&Rec, &Rc<dyn Transport>, &[u8]) + 'static) {
        *self.on_made.borrow_mut() = Some(Rc::new(f));
    }

    fn on_data(&self, f: impl Fn(&Rec, &Rc<dyn Transport>, &[u8]) + 'static) {
        *self.on_data.borrow_mut() = Some(Rc::new(f));
    }

    fn on_resume(&self, f: impl Fn(&Rec, &Rc<dyn Transport>, &[u8]) + 'static) {
        *self.on_resume.borrow_mut() = Some(Rc::new(f));
    }

    fn run_hook(&self, hook: &RefCell<Option<Hook>>, data: &[u8]) {
        let h = hook.borrow().clone();
        let t = self.transport.borrow().clone();
        if let (Some(h), Some(t)) = (h, t) {
            h(self, &t, data);
        }
    }

    fn push(&self, e: Ev) {
        self.events.borrow_mut().push(e);
        self.check();
    }

    /// Completes the waiters whose condition now holds.
    fn check(&self) {
        let ready: Vec<Future<()>> = {
            let mut w = self.waiters.borrow_mut();
            let mut ready = Vec::new();
            w.retain(|(cond, fut)| {
                if cond(self) {
                    ready.push(fut.clone());
                    false
                } else {
                    true
                }
            });
            ready
        };
        for f in ready {
            let _ = f.set_result(());
        }
    }

    fn made(&self, t: Rc<dyn Transport>) {
        *self.transport.borrow_mut() = Some(t);
        self.push(Ev::Made);
        self.run_hook(&self.on_made, &[]);
    }

    fn got(&self, d: &[u8]) {
        self.data.borrow_mut().extend_from_slice(d);
        self.max_chunk.set(self.max_chunk.get().max(d.len()));
        self.push(Ev::Data(d.len()));
        self.run_hook(&self.on_data, d);
    }

    fn eof(&self) -> bool {
        self.push(Ev::Eof);
        self.keep_open.get()
    }

    fn lost_with(&self, e: Option<Error>) {
        self.transport.borrow_mut().take();
        self.lost.borrow_mut().push(e.clone());
        self.push(Ev::Lost(e.map(|e| e.to_string())));
    }

    /// The transport's write buffer size, asked from inside a callback.
    fn buffered(&self) -> usize {
        let t = self.transport.borrow().clone();
        t.map_or(0, |t| t.get_write_buffer_size())
    }

    fn events(&self) -> Vec<Ev> {
        self.events.borrow().clone()
    }

    fn data(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }

    fn count(&self, pred: impl Fn(&Ev) -> bool) -> usize {
        self.events.borrow().iter().filter(|e| pred(e)).count()
    }

    fn lost_count(&self) -> usize {
        self.lost.borrow().len()
    }

    /// The error `connection_lost` got (it must have been called).
    fn lost_exc(&self) -> Option<Error> {
        self.lost
            .borrow()
            .first()
            .cloned()
            .expect("connection_lost was called")
    }

    /// Runs `lp` until `cond` holds (checked after every protocol event).
    #[track_caller]
    fn wait(&self, lp: &Loop, what: &str, cond: impl Fn(&Rec) -> bool + 'static) {
        if cond(self) {
            return;
        }
        let fut = lp.create_future::<()>();
        self.waiters
            .borrow_mut()
            .push((Box::new(cond), fut.clone()));
        let ran = run_until_done(lp, &*fut.as_obj(), NET);
        if ran.is_err() || !fut.done() {
            self.waiters.borrow_mut().clear();
            panic!(
                "waiting for {what}: {ran:?}; the protocol saw {:?}",
                self.events()
            );
        }
    }

    #[track_caller]
    fn wait_data(&self, lp: &Loop, n: usize) {
        self.wait(lp, &format!("{n} bytes"), move |r| {
            r.data.borrow().len() >= n
        });
    }

    #[track_caller]
    fn wait_lost(&self, lp: &Loop) {
        self.wait(lp, "connection_lost", |r| r.lost_count() > 0);
    }

    #[track_caller]
    fn wait_eof(&self, lp: &Loop) {
        self.wait(lp, "eof_received", |r| r.count(|e| *e == Ev::Eof) > 0);
    }
}

impl BaseProtocol for Rec {
    fn connection_lost(&self, exc: Option<Error>) {
        self.lost_with(exc)
    }
    fn pause_writing(&self) {
        self.push(Ev::Pause(self.buffered()))
    }
    fn resume_writing(&self) {
        self.push(Ev::Resume(self.buffered()));
        self.run_hook(&self.on_resume, &[]);
    }
}

impl Protocol for Rec {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.made(transport)
    }

    fn data_received(&self, data: &[u8]) {
        self.got(data)
    }
    fn eof_received(&self) -> bool {
        self.eof()
    }
}

/// How a [`Buf`] behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BufMode {
    Normal,
    GetBufferErr,
    GetBufferEmpty,
    BufferUpdatedErr,
}

/// A `BufferedProtocol` recording into a [`Rec`]; its `Protocol` methods
/// record [`Ev::Wrong`], since the transport must not call them.
struct Buf {
    rec: Rc<Rec>,
    size: usize,
    mode: BufMode,
    gets: Cell<usize>,
}

impl Buf {
    fn new(rec: &Rc<Rec>, size: usize, mode: BufMode) -> Rc<Buf> {
        Rc::new(Buf {
            rec: rec.clone(),
            size,
            mode,
            gets: Cell::new(0),
        })
    }
}

impl BaseProtocol for Buf {
    fn connection_lost(&self, exc: Option<Error>) {
        self.rec.lost_with(exc)
    }
}

impl Protocol for Buf {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.rec.made(transport)
    }

    fn data_received(&self, _data: &[u8]) {
        self.rec.push(Ev::Wrong("Protocol::data_received"))
    }
    fn eof_received(&self) -> bool {
        self.rec.push(Ev::Wrong("Protocol::eof_received"));
        false
    }
    fn as_buffered(&self) -> Option<&dyn BufferedProtocol> {
        Some(self)
    }
}

impl BufferedProtocol for Buf {
    fn get_buffer(&self, _sizehint: usize) -> std::result::Result<Vec<u8>, Error> {
        self.gets.set(self.gets.get() + 1);
        match self.mode {
            BufMode::GetBufferErr => Err(Error::value("no buffer today")),
            BufMode::GetBufferEmpty => Ok(Vec::new()),
            _ => Ok(vec![0xee; self.size]),
        }
    }
    fn buffer_updated(&self, buf: Vec<u8>, nbytes: usize) -> std::result::Result<(), Error> {
        if buf.len() != self.size || nbytes > buf.len() {
            self.rec
                .push(Ev::Wrong("buffer_updated: not the buffer handed out"));
            return Ok(());
        }
        if self.mode == BufMode::BufferUpdatedErr {
            return Err(Error::value("cannot take it"));
        }
        self.rec.got(&buf[..nbytes]);
        Ok(())
    }
    fn eof_received(&self) -> bool {
        self.rec.eof()
    }
}

// ----- setting up connections ------------------------------------------------------------

fn factory(p: Rc<dyn Protocol>) -> ProtocolFactory {
    Rc::new(move || p.clone())
}

/// Wraps one end of a fresh loopback pair in a transport speaking `proto`,
/// after `prep` has seen both ends; returns the transport and the other end.
fn open_with(
    lp: &Loop,
    proto: Rc<dyn Protocol>,
    prep: impl FnOnce(&Rc<Socket>, &TcpStream),
) -> Result<(Rc<dyn Transport>, TcpStream)> {
    let (a, b) = socketpair();
    let a = Rc::new(Socket::from(a));
    prep(&a, &b);
    let (t, _p) =
        lp.run_until_complete(lp.connect_accepted_socket_dyn(factory(proto), a, None, None, None))?;
    Ok((t, b))
}

fn open(lp: &Loop, proto: Rc<dyn Protocol>) -> Result<(Rc<dyn Transport>, TcpStream)> {
    open_with(lp, proto, |_, _| ())
}

/// Fixed small kernel buffers (no autotuning) on both sides: most of a
/// [`BIG`] write stays in the transport while the peer does not read.
fn small_buffers(a: &Socket, b: &TcpStream) {
    a.set_send_buffer_size(16 * 1024).expect("SO_SNDBUF");
    socket2::SockRef::from(b)
        .set_recv_buffer_size(16 * 1024)
        .expect("SO_RCVBUF");
}

/// Test data whose every offset is distinguishable from its neighbours'.
fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7 + seed + i / 251) % 253) as u8)
        .collect()
}

/// Fails with the first differing offset instead of two huge dumps.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

fn blocking(peer: &TcpStream) {
    peer.set_nonblocking(false).expect("blocking");
    peer.set_read_timeout(Some(PEER_TIMEOUT))
        .expect("read timeout");
    peer.set_write_timeout(Some(PEER_TIMEOUT))
        .expect("write timeout");
}

/// Runs `job` on `peer` in another thread while the loop runs; the thread
/// stops the loop when the job is done. Returns its result and the peer.
fn with_peer<R: Send + 'static>(
    lp: &Loop,
    peer: TcpStream,
    job: impl FnOnce(&mut TcpStream) -> R + Send + 'static,
) -> (R, TcpStream) {
    blocking(&peer);
    let remote = lp.remote();
    let h = std::thread::spawn(move || {
        let mut p = peer;
        let r = job(&mut p);
        let _ = remote.stop();
        (r, p)
    });
    let l = lp.clone();
    let net = lp
        .call_later_dyn(NET, Box::new(move || l.stop()), None)
        .expect("loop open");
    let ran = lp.run_forever();
    net.cancel();
    ran.expect("run_forever");
    h.join().expect("the peer thread panicked")
}

/// Reads exactly `n` bytes on the peer while the loop runs.
fn peer_read_exact(lp: &Loop, peer: TcpStream, n: usize) -> (Vec<u8>, TcpStream) {
    let (r, p) = with_peer(lp, peer, move |p| {
        let mut buf = vec![0u8; n];
        p.read_exact(&mut buf).map(|_| buf)
    });
    (r.expect("the peer reads what was written"), p)
}

/// Starts a thread that reads the peer to EOF (in `chunk`-byte reads).
fn spawn_reader(
    peer: TcpStream,
    chunk: usize,
) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
    blocking(&peer);
    std::thread::spawn(move || {
        let mut p = peer;
        let mut all = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match p.read(&mut buf) {
                Ok(0) => return Ok(all),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })
}

fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().expect("the peer thread panicked")
}

/// The peer reads to EOF on this thread (everything must already be sent).
fn read_to_eof(peer: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    blocking(peer);
    let mut v = Vec::new();
    peer.read_to_end(&mut v).map(|_| v)
}

/// Runs the loop for `secs` of loop time: how a case shows that something
/// does *not* happen.
fn run_for(lp: &Loop, secs: f64) -> Result<()> {
    let l = lp.clone();
    let h = lp.call_later_dyn(secs, Box::new(move || l.stop()), None)?;
    let ran = lp.run_forever();
    h.cancel();
    ran
}

/// The transport's descriptor, from `get_extra_info("socket")`.
#[track_caller]
fn fd_of(t: &Rc<dyn Transport>) -> RawFd {
    match t.get_extra_info("socket") {
        Some(ExtraInfo::Fd(fd)) => fd,
        other => panic!("get_extra_info(\"socket\") = {other:?}"),
    }
}

/// Calls `f` with the socket behind `fd` (owned and kept open by its transport).
#[cfg(unix)]
fn with_sock<R>(fd: RawFd, f: impl FnOnce(&Socket) -> R) -> R {
    // SAFETY: the transport that owns `fd` is open for the whole call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(&socket2::SockRef::from(&b))
}

/// Calls `f` with the socket behind `fd` (owned and kept open by its transport).
#[cfg(windows)]
fn with_sock<R>(fd: RawFd, f: impl FnOnce(&Socket) -> R) -> R {
    // SAFETY: the transport that owns `fd` is open for the whole call.
    let b = unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(fd) };
    f(&socket2::SockRef::from(&b))
}

#[track_caller]
fn expect_os_error(e: &Option<Error>, kinds: &[ErrorKind], what: &str) {
    match e {
        Some(Error::Io(io)) if kinds.contains(&io.kind()) => {}
        other => panic!("{what}: expected an OSError of kind {kinds:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_no_exceptions(exc: &Log<loop_api::events::ExceptionContext>) {
    let seen: Vec<String> = exc.get().iter().map(|c| c.render()).collect();
    assert!(
        seen.is_empty(),
        "the exception handler was called: {seen:?}"
    );
}

/// The one context the handler got, checked for `message`.
#[track_caller]
fn one_fatal_error(
    exc: &Log<loop_api::events::ExceptionContext>,
    message: &str,
) -> loop_api::events::ExceptionContext {
    let all = exc.get();
    assert_eq!(
        all.len(),
        1,
        "want one exception-handler call, got {:?}",
        all.iter().map(|c| c.render()).collect::<Vec<_>>()
    );
    let c = all.into_iter().next().unwrap();
    assert_eq!(c.message, message);
    c
}

const CONN_ERRORS: &[ErrorKind] = &[
    ErrorKind::ConnectionReset,
    ErrorKind::BrokenPipe,
    ErrorKind::ConnectionAborted,
];

/// The reason the SO_LINGER and fcntl cases give on Windows.
#[cfg(windows)]
fn unix_only(what: &'static str) -> Result<()> {
    Err(Error::NotSupported {
        feature: what,
        reason: "the check uses Unix descriptors (fcntl, SO_LINGER resets); Windows has no equivalent here"
            .to_string(),
    })
}

// ----- connecting and reading ----------------------------------------------------------

/// `_SelectorSocketTransport.__init__`: `connection_made` runs before the
/// waiter resolves, with the transport the call returns; the protocol is the
/// factory's; the new transport reads and is not closing.
pub fn test_connection_made_before_waiter(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (a, _b) = socketpair();
    let f = lp.connect_accepted_socket_dyn(
        factory(rec.clone()),
        Rc::new(Socket::from(a)),
        None,
        None,
        None,
    );
    let (t, p) = lp.run_until_complete(f)?;
    assert_eq!(
        rec.events(),
        vec![Ev::Made],
        "connection_made before the result"
    );
    let seen = rec
        .transport
        .borrow()
        .clone()
        .expect("connection_made got a transport");
    assert!(same_obj(&seen, &t), "connection_made got another transport");
    assert!(same_obj(&p, &rec), "the returned protocol is the factory's");
    assert!(same_obj(&t.get_protocol(), &rec));
    assert!(t.is_reading());
    assert!(!t.is_closing());
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_read_ready`: what the peer sends reaches `data_received`, in order.
pub fn test_data_received(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"hello ").expect("write");
    rec.wait_data(&lp, 6);
    peer.write_all(b"wor").expect("write");
    peer.write_all(b"ld").expect("write");
    rec.wait_data(&lp, 11);
    assert_eq!(rec.data(), b"hello world");
    assert_eq!(rec.events()[0], Ev::Made);
    assert!(!t.is_closing());
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_read_ready_eof`: the peer's EOF calls `eof_received`; returning
/// false closes the transport, and `connection_lost(None)` follows, after
/// the data.
pub fn test_read_eof_closes(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"last words").expect("write");
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    rec.wait_lost(&lp);
    assert_eq!(rec.data(), b"last words");
    let ev = rec.events();
    let eof = ev.iter().position(|e| *e == Ev::Eof).expect("eof_received");
    assert!(ev[..eof].iter().all(|e| !matches!(e, Ev::Lost(_))));
    assert_eq!(ev.last(), Some(&Ev::Lost(None)), "{ev:?}");
    assert!(
        matches!(ev[eof - 1], Ev::Data(_)),
        "data before EOF: {ev:?}"
    );
    assert!(t.is_closing());
    assert_eq!(
        read_to_eof(&mut peer).expect("peer reads"),
        b"",
        "the peer sees the close"
    );
    lp.close()
}

/// `test_read_ready_eof_keep_open`: `eof_received` returning true keeps
/// the write side open: what the transport writes after the peer's EOF
/// still reaches the peer, and `close()` then ends it.
pub fn test_read_eof_keep_open(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::keeping_open();
    let (t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"ping").expect("write");
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    rec.wait_eof(&lp);
    assert_eq!(rec.data(), b"ping");
    assert!(!t.is_closing(), "the half-closed transport closed");
    t.write(b"pong")?;
    let (got, mut peer) = peer_read_exact(&lp, peer, 4);
    assert_eq!(got, b"pong");
    assert_eq!(rec.lost_count(), 0);
    t.close();
    rec.wait_lost(&lp);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    assert_eq!(read_to_eof(&mut peer).expect("peer reads"), b"");
    lp.close()
}

/// A transport kept open after EOF stops reading: `eof_received` is called
/// once, not on every iteration of a level-triggered poller.
pub fn test_eof_received_once_when_kept_open(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::keeping_open();
    let (t, peer) = open(&lp, rec.clone())?;
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    rec.wait_eof(&lp);
    run_for(&lp, QUIET)?;
    assert_eq!(rec.count(|e| *e == Ev::Eof), 1, "{:?}", rec.events());
    assert_eq!(rec.lost_count(), 0);
    assert!(!t.is_closing());
    t.close();
    rec.wait_lost(&lp);
    assert_eq!(rec.count(|e| *e == Ev::Eof), 1);
    lp.close()
}

/// `test_read_ready_get_buffer`: a `BufferedProtocol` gets the bytes
/// through `get_buffer` / `buffer_updated`, never `data_received`.
pub fn test_buffered_protocol_read(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let buf = Buf::new(&rec, 1024, BufMode::Normal);
    let (t, mut peer) = open(&lp, buf.clone())?;
    peer.write_all(b"buffered bytes").expect("write");
    rec.wait_data(&lp, 14);
    assert_eq!(rec.data(), b"buffered bytes");
    assert!(buf.gets.get() >= 1);
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    rec.wait_lost(&lp);
    let ev = rec.events();
    assert!(!ev.iter().any(|e| matches!(e, Ev::Wrong(_))), "{ev:?}");
    assert_eq!(ev.last(), Some(&Ev::Lost(None)));
    assert!(t.is_closing());
    lp.close()
}

/// A `BufferedProtocol` with a buffer smaller than what arrives gets it in
/// several `buffer_updated` calls, each within the buffer, in order.
pub fn test_buffered_protocol_small_buffer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let buf = Buf::new(&rec, 4, BufMode::Normal);
    let (t, mut peer) = open(&lp, buf.clone())?;
    let msg = pattern(1000, 3);
    peer.write_all(&msg).expect("write");
    rec.wait_data(&lp, msg.len());
    assert_same(&rec.data(), &msg, "small buffers");
    assert!(rec.max_chunk.get() <= 4);
    assert!(rec.count(|e| matches!(e, Ev::Data(_))) >= 250);
    assert!(!rec.events().iter().any(|e| matches!(e, Ev::Wrong(_))));
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_read_ready_get_buffer_exception`: `get_buffer` failing is a fatal
/// error: the exception handler hears it and the transport closes with
/// `connection_lost(err)`.
pub fn test_buffered_protocol_get_buffer_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let buf = Buf::new(&rec, 16, BufMode::GetBufferErr);
    let (t, mut peer) = open(&lp, buf)?;
    peer.write_all(b"x").expect("write");
    rec.wait_lost(&lp);
    let c = one_fatal_error(&exc, "Fatal error: protocol.get_buffer() call failed.");
    assert!(
        matches!(&c.exception, Some(Error::Value(m)) if m == "no buffer today"),
        "{:?}",
        c.exception
    );
    assert!(matches!(rec.lost_exc(), Some(Error::Value(m)) if m == "no buffer today"));
    assert_eq!(rec.lost_count(), 1);
    assert!(t.is_closing());
    assert!(rec.data().is_empty());
    lp.close()
}

/// `test_read_ready_get_buffer_zerosized`: an empty buffer from
/// `get_buffer` is a `RuntimeError` handled as a fatal error.
pub fn test_buffered_protocol_get_buffer_empty(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let buf = Buf::new(&rec, 0, BufMode::GetBufferEmpty);
    let (t, mut peer) = open(&lp, buf)?;
    peer.write_all(b"x").expect("write");
    rec.wait_lost(&lp);
    let c = one_fatal_error(&exc, "Fatal error: protocol.get_buffer() call failed.");
    let want = "get_buffer() returned an empty buffer";
    assert!(
        matches!(&c.exception, Some(Error::Runtime(m)) if m == want),
        "{:?}",
        c.exception
    );
    assert!(matches!(rec.lost_exc(), Some(Error::Runtime(m)) if m == want));
    assert!(t.is_closing());
    lp.close()
}

/// `buffer_updated` failing is a fatal error, like `data_received` raising.
pub fn test_buffered_protocol_buffer_updated_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let buf = Buf::new(&rec, 64, BufMode::BufferUpdatedErr);
    let (t, mut peer) = open(&lp, buf)?;
    peer.write_all(b"x").expect("write");
    rec.wait_lost(&lp);
    let c = one_fatal_error(&exc, "Fatal error: protocol.buffer_updated() call failed.");
    assert!(matches!(&c.exception, Some(Error::Value(m)) if m == "cannot take it"));
    assert!(matches!(rec.lost_exc(), Some(Error::Value(m)) if m == "cannot take it"));
    assert_eq!(rec.lost_count(), 1);
    assert!(t.is_closing());
    lp.close()
}

/// A `BufferedProtocol`'s own `eof_received` decides about the half-close
/// (here it keeps the transport open, while `Protocol::eof_received` would
/// close it).
pub fn test_buffered_protocol_eof_keep_open(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::keeping_open();
    let buf = Buf::new(&rec, 64, BufMode::Normal);
    let (t, mut peer) = open(&lp, buf)?;
    peer.write_all(b"bye").expect("write");
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    rec.wait(&lp, "EOF", |r| {
        r.count(|e| *e == Ev::Eof || matches!(e, Ev::Wrong(_))) > 0
    });
    run_for(&lp, QUIET)?;
    let ev = rec.events();
    assert!(!ev.iter().any(|e| matches!(e, Ev::Wrong(_))), "{ev:?}");
    assert_eq!(rec.data(), b"bye");
    assert!(
        !t.is_closing(),
        "BufferedProtocol.eof_received returned true"
    );
    t.write(b"still here")?;
    let (got, _peer) = peer_read_exact(&lp, peer, 10);
    assert_eq!(got, b"still here");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_read_ready_err` for a protocol bug: a panic in `data_received`
/// reaches the exception handler as asyncio's fatal error, the transport
/// closes with `connection_lost(err)` once, and the loop goes on.
pub fn test_data_received_panic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    rec.on_data(|_, _, _| panic!("protocol bug in data_received"));
    let (t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"boom").expect("write");
    rec.wait_lost(&lp);
    let c = one_fatal_error(&exc, "Fatal error: protocol.data_received() call failed.");
    assert!(
        matches!(&c.exception, Some(Error::Panic(m)) if m.contains("protocol bug in data_received")),
        "{:?}",
        c.exception
    );
    assert!(
        c.transport.is_some() && c.protocol.is_some(),
        "the context names the transport and protocol"
    );
    assert!(matches!(rec.lost_exc(), Some(Error::Panic(_))));
    assert!(t.is_closing());
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    assert_eq!(rec.count(|e| matches!(e, Ev::Data(_))), 1);
    // The loop goes on.
    let v = lp.run_until_complete(async { Ok(7) })?;
    assert_eq!(v, 7);
    lp.close()
}

/// A panic in `eof_received` is a fatal error too: handler, then
/// `connection_lost(err)`.
pub fn test_eof_received_panic(ctx: &Ctx) -> Result<()> {
    struct P(Rc<Rec>);
    impl BaseProtocol for P {
        fn connection_lost(&self, e: Option<Error>) {
            self.0.lost_with(e)
        }
    }
    impl Protocol for P {
        fn connection_made(&self, t: Rc<dyn Transport>) {
            self.0.made(t)
        }

        fn eof_received(&self) -> bool {
            panic!("protocol bug in eof_received")
        }
    }
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let (t, peer) = open(&lp, Rc::new(P(rec.clone())))?;
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    rec.wait_lost(&lp);
    let c = one_fatal_error(&exc, "Fatal error: protocol.eof_received() call failed.");
    assert!(matches!(&c.exception, Some(Error::Panic(m)) if m.contains("eof_received")));
    assert!(matches!(rec.lost_exc(), Some(Error::Panic(_))));
    assert!(t.is_closing());
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    lp.close()
}

/// `test_read_ready_conn_reset`: a peer that resets the connection
/// (SO_LINGER 0) makes `connection_lost(ConnectionResetError)`; a
/// connection error is not reported to the exception handler.
pub fn test_read_connection_reset(ctx: &Ctx) -> Result<()> {
    read_connection_reset(ctx)
}

#[cfg(windows)]
fn read_connection_reset(_ctx: &Ctx) -> Result<()> {
    unix_only("SO_LINGER reset")
}

#[cfg(unix)]
fn read_connection_reset(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(peer);
    rec.wait_lost(&lp);
    expect_os_error(&rec.lost_exc(), &[ErrorKind::ConnectionReset], "reset");
    assert_eq!(rec.count(|e| *e == Ev::Eof), 0, "a reset is not an EOF");
    assert!(t.is_closing());
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    assert_no_exceptions(&exc);
    lp.close()
}

/// 10 MB from the peer arrive whole and in order, in reads of at most
/// asyncio's `max_size` (256 KiB).
pub fn test_huge_read(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    let data = pattern(HUGE, 1);
    let send = data.clone();
    blocking(&peer);
    let writer = std::thread::spawn(move || {
        let mut p = peer;
        p.write_all(&send)?;
        p.shutdown(std::net::Shutdown::Write)?;
        Ok::<_, std::io::Error>(p)
    });
    rec.wait_lost(&lp);
    let _peer = join(writer).expect("the peer writes");
    assert_same(&rec.data(), &data, "10 MB read");
    assert!(
        rec.max_chunk.get() <= MAX_READ_SIZE,
        "a read of {} bytes",
        rec.max_chunk.get()
    );
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    assert!(t.is_closing());
    lp.close()
}

/// `close()` stops reading at once: data the peer sends afterwards (even if
/// already in the socket) never reaches `data_received`, whether the
/// transport closes at once or still has a buffer to flush.
pub fn test_close_stops_reading(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"too late").expect("write");
    t.close();
    rec.wait_lost(&lp);
    run_for(&lp, QUIET)?;
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Data(_))),
        0,
        "{:?}",
        rec.events()
    );
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);

    // Closing with data buffered: the transport lives on until the flush.
    let rec = Rec::new();
    let (t, mut peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.write(&pattern(BIG, 22))?;
    t.close();
    peer.write_all(b"too late").expect("write");
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 0, "the buffer is not flushed yet");
    let reader = spawn_reader(peer, 64 * 1024);
    rec.wait_lost(&lp);
    let _ = join(reader);
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Data(_))),
        0,
        "{:?}",
        rec.events()
    );
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    lp.close()
}

// ----- writing ---------------------------------------------------------------------------

/// Runs the loop until the transport's write buffer is empty (its
/// `_make_empty_waiter`). A readiness backend sends a write the socket
/// takes whole at once; a completion-based one counts it as buffered
/// until the kernel's completion (as asyncio's proactor does). Either way
/// it drains without the peer reading.
fn drain(lp: &Loop, t: &Rc<dyn Transport>) -> Result<()> {
    let empty = t._make_empty_waiter().expect("socket transports can tell");
    run_until_done(lp, &*empty.as_obj(), 10.0)?;
    assert_eq!(t.get_write_buffer_size(), 0);
    Ok(())
}

/// `test_write`: the bytes reach the peer; a write the socket can take
/// whole drains without the peer reading, and does not pause the protocol.
pub fn test_write(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.write(b"data")?;
    drain(&lp, &t)?;
    let (got, _peer) = peer_read_exact(&lp, peer, 4);
    assert_eq!(got, b"data");
    assert_eq!(rec.count(|e| matches!(e, Ev::Pause(_))), 0);
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// Many writes arrive in the order they were made.
pub fn test_write_order(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    let mut want = Vec::new();
    for i in 0..500 {
        let msg = format!("message {i};");
        t.write(msg.as_bytes())?;
        want.extend_from_slice(msg.as_bytes());
    }
    let (got, _peer) = peer_read_exact(&lp, peer, want.len());
    assert_same(&got, &want, "500 writes");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_writelines`: the buffers arrive concatenated, in order.
pub fn test_writelines(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.writelines(&[b"line1\n", b"", b"line2\n", b"3"])?;
    t.write(b"!")?;
    let (got, _peer) = peer_read_exact(&lp, peer, 14);
    assert_eq!(got, b"line1\nline2\n3!");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `writelines` of a thousand small buffers: all of them, concatenated.
pub fn test_writelines_many_small(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    let parts: Vec<Vec<u8>> = (0..1000).map(|i| format!("{i:09};").into_bytes()).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    t.writelines(&refs)?;
    let want = parts.concat();
    let (got, _peer) = peer_read_exact(&lp, peer, want.len());
    assert_same(&got, &want, "writelines of 1000 buffers");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_write_no_data`: writing nothing (or an empty list) is a no-op.
pub fn test_write_no_data(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.write(b"")?;
    t.writelines(&[])?;
    t.writelines(&[b"", b""])?;
    assert_eq!(t.get_write_buffer_size(), 0);
    t.write(b"z")?;
    let (got, mut peer) = peer_read_exact(&lp, peer, 1);
    assert_eq!(got, b"z");
    t.close();
    rec.wait_lost(&lp);
    assert_eq!(
        read_to_eof(&mut peer).expect("peer reads"),
        b"",
        "nothing else was sent"
    );
    lp.close()
}

/// `test_write_partial`: what the socket does not take at once stays
/// buffered (`get_write_buffer_size`) and follows in order.
pub fn test_write_partial_buffers(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 2);
    t.write(&data)?;
    let buffered = t.get_write_buffer_size();
    assert!(
        buffered > 0 && buffered <= BIG,
        "after a {BIG}-byte write to a small socket, {buffered} bytes are buffered"
    );
    let (got, _peer) = peer_read_exact(&lp, peer, BIG);
    assert_same(&got, &data, "partial writes");
    assert_eq!(t.get_write_buffer_size(), 0);
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// Writes the chunks from `i` on, one per loop iteration (`writelines` of
/// two halves for every third), so that they interleave with the
/// transport's own sends.
fn write_chain(lp: Loop, t: Rc<dyn Transport>, chunks: Rc<Vec<Vec<u8>>>, i: usize) {
    let Some(c) = chunks.get(i) else { return };
    // Every third chunk (the MSRV predates `is_multiple_of`).
    if i % 3 < 1 {
        let (x, y) = c.split_at(c.len() / 2);
        t.writelines(&[x, y]).expect("writelines");
    } else {
        t.write(c).expect("write");
    }
    let l = lp.clone();
    lp.call_soon_dyn(Box::new(move || write_chain(l, t, chunks, i + 1)), None)
        .expect("loop open");
}

/// Writes and `writelines` made while earlier data is still buffered keep
/// their order, both before the peer reads and while it drains in small
/// reads (when the socket has room but the buffer is not empty: a write
/// that went straight to the socket would overtake the buffer).
pub fn test_write_while_buffered_keeps_order(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let chunks: Vec<Vec<u8>> = (0..1200)
        .map(|i| pattern((i * 4099) % 9000 + 1, i))
        .collect();
    let (before, during) = chunks.split_at(300);
    let mut want = pattern(1 << 20, 77);
    t.write(&want)?;
    assert!(
        t.get_write_buffer_size() > 0,
        "the first write was buffered"
    );
    for (i, c) in before.iter().enumerate() {
        if i % 3 < 1 {
            let (x, y) = c.split_at(c.len() / 2);
            t.writelines(&[x, y])?;
        } else {
            t.write(c)?;
        }
    }
    want.extend(chunks.concat());
    write_chain(lp.clone(), t.clone(), Rc::new(during.to_vec()), 0);
    let n = want.len();
    let (got, _peer) = with_peer(&lp, peer, move |p| {
        let mut all = Vec::with_capacity(n);
        let mut buf = [0u8; 1000];
        while all.len() < n {
            match p.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => all.extend_from_slice(&buf[..k]),
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    });
    assert_same(
        &got.expect("peer reads"),
        &want,
        "interleaved buffered writes",
    );
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// 10 MB through `write` reach the peer whole and in order.
pub fn test_huge_write(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    let data = pattern(HUGE, 5);
    t.write(&data)?;
    let (got, mut peer) = peer_read_exact(&lp, peer, HUGE);
    assert_same(&got, &data, "10 MB written");
    assert_eq!(t.get_write_buffer_size(), 0);
    t.close();
    rec.wait_lost(&lp);
    assert_eq!(read_to_eof(&mut peer).expect("peer reads"), b"");
    lp.close()
}

/// Both ends are transports on the same loop, each writing 10 MB to the
/// other at once: both streams arrive whole.
pub fn test_huge_full_duplex(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (r1, r2) = (Rec::new(), Rec::new());
    let (a, b) = socketpair();
    let c1 = lp.connect_accepted_socket_dyn(
        factory(r1.clone()),
        Rc::new(Socket::from(a)),
        None,
        None,
        None,
    );
    let (t1, _) = lp.run_until_complete(c1)?;
    let c2 = lp.connect_accepted_socket_dyn(
        factory(r2.clone()),
        Rc::new(Socket::from(b)),
        None,
        None,
        None,
    );
    let (t2, _) = lp.run_until_complete(c2)?;
    let (d1, d2) = (pattern(HUGE, 11), pattern(HUGE, 13));
    t1.write(&d1)?;
    t2.write(&d2)?;
    r2.wait_data(&lp, HUGE);
    r1.wait_data(&lp, HUGE);
    assert_same(&r2.data(), &d1, "1 -> 2");
    assert_same(&r1.data(), &d2, "2 -> 1");
    t1.close();
    r2.wait_lost(&lp);
    r1.wait_lost(&lp);
    assert_eq!(r1.lost_exc().map(|e| e.to_string()), None);
    assert_eq!(r2.lost_exc().map(|e| e.to_string()), None);
    assert!(t2.is_closing(), "the peer transport closed on EOF");
    lp.close()
}

/// Writing to a peer that closed its socket: the OS error ends the
/// transport through `connection_lost(err)`, without the exception handler.
pub fn test_write_to_closed_peer(ctx: &Ctx) -> Result<()> {
    write_to_closed_peer(ctx, b"anyone there?")
}

/// The same with writes large enough to go to the socket at once where the
/// transport does that (64 KiB, nothing queued).
pub fn test_large_write_to_closed_peer(ctx: &Ctx) -> Result<()> {
    write_to_closed_peer(ctx, &pattern(64 * 1024, 3))
}

/// Writes `data` to a peer that closed its socket until the transport is
/// lost: once, with a connection error, nothing for the exception handler;
/// writing on is ignored.
fn write_to_closed_peer(ctx: &Ctx, data: &[u8]) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::keeping_open();
    let (t, peer) = open(&lp, rec.clone())?;
    drop(peer);
    rec.wait_eof(&lp);
    for _ in 0..200 {
        if rec.lost_count() > 0 {
            break;
        }
        t.write(data)?;
        run_for(&lp, 0.01)?;
    }
    assert_eq!(rec.lost_count(), 1, "{:?}", rec.events());
    expect_os_error(&rec.lost_exc(), CONN_ERRORS, "write to a closed peer");
    assert!(t.is_closing());
    t.write(data)?;
    run_once(&lp)?;
    assert_eq!(rec.lost_count(), 1);
    assert_no_exceptions(&exc);
    lp.close()
}

/// A write from `connection_made` reaches the peer.
pub fn test_write_in_connection_made(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    rec.on_made(|_, t, _| t.write(b"greetings").expect("write"));
    let (t, peer) = open(&lp, rec.clone())?;
    let (got, _peer) = peer_read_exact(&lp, peer, 9);
    assert_eq!(got, b"greetings");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

// ----- flow control ----------------------------------------------------------------------

/// `get_write_buffer_limits()` is `(16384, 65536)` by default.
pub fn test_get_write_buffer_limits_default(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    assert_eq!(t.get_write_buffer_limits(), (16384, 65536));
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_set_write_buffer_limits`: `(low, high)` back; a missing mark
/// defaults from the other (low = high / 4, high = 4 * low).
pub fn test_set_write_buffer_limits(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    t.set_write_buffer_limits(Some(128), Some(32))?;
    assert_eq!(t.get_write_buffer_limits(), (32, 128));
    t.set_write_buffer_limits(Some(1000), None)?;
    assert_eq!(t.get_write_buffer_limits(), (250, 1000));
    t.set_write_buffer_limits(None, Some(100))?;
    assert_eq!(t.get_write_buffer_limits(), (100, 400));
    t.set_write_buffer_limits(Some(7), Some(7))?;
    assert_eq!(t.get_write_buffer_limits(), (7, 7));
    t.set_write_buffer_limits(None, None)?;
    assert_eq!(t.get_write_buffer_limits(), (16384, 65536));
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Pause(_))),
        0,
        "nothing buffered"
    );
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `high < low` is a `ValueError` with asyncio's message, and leaves the
/// marks as they were.
pub fn test_set_write_buffer_limits_invalid(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    t.set_write_buffer_limits(Some(40), Some(10))?;
    expect_value_error(
        t.set_write_buffer_limits(Some(1), Some(2)),
        "high (1) must be >= low (2) must be >= 0",
    );
    t.set_write_buffer_limits(Some(40), Some(10))?;
    expect_value_error(
        t.set_write_buffer_limits(Some(3), Some(4)),
        "high (3) must be >= low (4) must be >= 0",
    );
    assert_eq!(
        t.get_write_buffer_limits(),
        (10, 40),
        "a refused call changes nothing"
    );
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `test_write_buffer_full` / `_FlowControlMixin`: writing past the high
/// mark to a peer that does not read calls `pause_writing` once (however
/// much more is written); once the peer drains, `resume_writing` comes
/// once, with the buffer at or under the low mark. The data arrives whole.
pub fn test_pause_resume_writing(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 7);
    t.write(&data[..BIG / 2])?;
    let pauses: Vec<Ev> = rec
        .events()
        .into_iter()
        .filter(|e| matches!(e, Ev::Pause(_)))
        .collect();
    assert_eq!(
        pauses.len(),
        1,
        "pause_writing inside write(): {:?}",
        rec.events()
    );
    assert!(matches!(pauses[0], Ev::Pause(n) if n > 65536), "{pauses:?}");
    t.write(&data[BIG / 2..])?;
    run_for(&lp, QUIET)?;
    assert_eq!(rec.count(|e| matches!(e, Ev::Pause(_))), 1, "paused once");
    assert_eq!(rec.count(|e| matches!(e, Ev::Resume(_))), 0, "nobody read");
    let (got, _peer) = peer_read_exact(&lp, peer, BIG);
    assert_same(&got, &data, "flow-controlled write");
    let flow: Vec<Ev> = rec
        .events()
        .into_iter()
        .filter(|e| matches!(e, Ev::Pause(_) | Ev::Resume(_)))
        .collect();
    assert_eq!(flow.len(), 2, "{flow:?}");
    assert!(matches!(flow[1], Ev::Resume(n) if n <= 16384), "{flow:?}");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// Buffering less than the high mark never pauses the protocol.
pub fn test_no_pause_below_high_water(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.set_write_buffer_limits(Some(BIG + 1), None)?;
    let data = pattern(BIG, 8);
    t.write(&data)?;
    assert!(t.get_write_buffer_size() > 0, "the write was buffered");
    let (got, _peer) = peer_read_exact(&lp, peer, BIG);
    assert_same(&got, &data, "below the high mark");
    let flow = rec.count(|e| matches!(e, Ev::Pause(_) | Ev::Resume(_)));
    assert_eq!(flow, 0, "{:?}", rec.events());
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `set_write_buffer_limits(0, 0)`: any byte counted in the buffer
/// pauses the protocol, and `resume_writing` comes once it is all sent. A
/// write that a readiness backend sends at once never counts; one in
/// flight on a completion-based backend does, until its completion.
pub fn test_set_write_buffer_limits_zero(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.set_write_buffer_limits(Some(0), Some(0))?;
    assert_eq!(t.get_write_buffer_limits(), (0, 0));
    t.write(b"x")?;
    if t.get_write_buffer_size() == 0 {
        assert_eq!(
            rec.count(|e| matches!(e, Ev::Pause(_))),
            0,
            "nothing buffered"
        );
    }
    drain(&lp, &t)?;
    let pauses = rec.count(|e| matches!(e, Ev::Pause(_)));
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Resume(0))),
        pauses,
        "each pause is resumed once the byte is out: {:?}",
        rec.events()
    );
    let before = rec.events().len();
    let data = pattern(BIG, 9);
    t.write(&data)?;
    let ev = rec.events()[before..].to_vec();
    assert!(
        ev.iter().any(|e| matches!(e, Ev::Pause(n) if *n > 0)),
        "pause_writing on a buffered byte: {ev:?}"
    );
    let (got, _peer) = peer_read_exact(&lp, peer, BIG + 1);
    assert_eq!(got[0], b'x');
    assert_same(&got[1..], &data, "zero limits");
    let flow: Vec<Ev> = rec.events()[before..]
        .iter()
        .filter(|e| matches!(e, Ev::Pause(_) | Ev::Resume(_)))
        .cloned()
        .collect();
    assert_eq!(flow.len(), 2, "{flow:?}");
    assert_eq!(flow[1], Ev::Resume(0));
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `set_write_buffer_limits` under what is already buffered pauses the
/// protocol at once (asyncio calls `_maybe_pause_protocol` there).
pub fn test_set_write_buffer_limits_pauses_at_once(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.set_write_buffer_limits(Some(BIG * 2), None)?;
    let data = pattern(BIG, 10);
    t.write(&data)?;
    let buffered = t.get_write_buffer_size();
    assert!(buffered > 4, "the write was buffered");
    assert_eq!(rec.count(|e| matches!(e, Ev::Pause(_))), 0);
    t.set_write_buffer_limits(Some(buffered / 2), None)?;
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Pause(_))),
        1,
        "lowering the high mark under the buffer pauses: {:?}",
        rec.events()
    );
    let (got, _peer) = peer_read_exact(&lp, peer, BIG);
    assert_same(&got, &data, "after lowering the marks");
    assert_eq!(rec.count(|e| matches!(e, Ev::Resume(_))), 1);
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// A protocol that writes more from `resume_writing` (as a producer does):
/// the new data follows the old, and flow control goes on. With the low
/// mark at 0, `resume_writing` comes when the buffer is empty: a transport
/// that decided "drained, drop the writer" before calling it would strand
/// what the protocol wrote there.
pub fn test_write_in_resume_writing(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let tail = pattern(1 << 20, 99);
    let more = tail.clone();
    let resumed = Rc::new(Cell::new(0));
    let r = resumed.clone();
    rec.on_resume(move |_, t, _| {
        r.set(r.get() + 1);
        if r.get() == 1 {
            t.write(&more).expect("write from resume_writing");
        }
    });
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.set_write_buffer_limits(Some(65536), Some(0))?;
    let data = pattern(BIG, 12);
    t.write(&data)?;
    let total = BIG + tail.len();
    let (got, _peer) = peer_read_exact(&lp, peer, total);
    assert_same(&got[..BIG], &data, "before resume_writing");
    assert_same(&got[BIG..], &tail, "written from resume_writing");
    let (p, rs) = (
        rec.count(|e| matches!(e, Ev::Pause(_))),
        rec.count(|e| matches!(e, Ev::Resume(_))),
    );
    assert!(p >= 2 && p == rs, "{:?}", rec.events());
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Resume(n) if *n > 0)),
        0,
        "resume_writing with the buffer not drained to the low mark (0)"
    );
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

// ----- close and abort -------------------------------------------------------------------

/// `test_close`: `is_closing()` at once, `connection_lost(None)` on a later
/// iteration (not inside `close()`), the peer sees EOF.
pub fn test_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    assert!(!t.is_closing());
    t.close();
    assert!(t.is_closing());
    assert_eq!(
        rec.lost_count(),
        0,
        "connection_lost is called soon, not inside close()"
    );
    rec.wait_lost(&lp);
    assert_eq!(rec.events(), vec![Ev::Made, Ev::Lost(None)]);
    assert_eq!(read_to_eof(&mut peer).expect("peer reads"), b"");
    lp.close()
}

/// `test_close_write_buffer`: `close()` with data buffered flushes it
/// first: the peer reads all of it, then EOF; `connection_lost(None)`
/// comes after the flush, not before.
pub fn test_close_flushes_buffer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 14);
    t.write(&data)?;
    assert!(t.get_write_buffer_size() > 0);
    t.close();
    assert!(t.is_closing());
    run_for(&lp, QUIET)?;
    assert_eq!(
        rec.lost_count(),
        0,
        "connection_lost before the buffer was flushed"
    );
    let reader = spawn_reader(peer, 64 * 1024);
    rec.wait_lost(&lp);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    let got = join(reader).expect("peer reads to EOF");
    assert_same(&got, &data, "flushed on close");
    lp.close()
}

/// `close()` while the peer is reading and data is still buffered: the
/// data all arrives, then EOF; `connection_lost(None)` once.
pub fn test_close_with_reading_peer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let reader = spawn_reader(peer, 4096);
    let data = pattern(BIG, 15);
    t.write(&data)?;
    t.close();
    rec.wait_lost(&lp);
    let got = join(reader).expect("peer reads to EOF");
    assert_same(&got, &data, "close during the transfer");
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    lp.close()
}

/// Closing twice is fine: `connection_lost` is called once.
pub fn test_close_twice(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    t.close();
    t.close();
    rec.wait_lost(&lp);
    t.close();
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    assert_eq!(rec.events(), vec![Ev::Made, Ev::Lost(None)]);
    lp.close()
}

/// `test_abort` / `test_force_close`: `abort()` drops what is buffered
/// (the buffer is empty at once), `connection_lost(None)` follows, and the
/// peer sees the connection end with only part of the data.
pub fn test_abort(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 16);
    t.write(&data)?;
    assert!(t.get_write_buffer_size() > 0);
    t.abort();
    assert!(t.is_closing());
    assert_eq!(t.get_write_buffer_size(), 0, "abort() drops the buffer");
    rec.wait_lost(&lp);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    match join(spawn_reader(peer, 64 * 1024)) {
        Ok(got) => {
            assert!(got.len() < BIG, "abort() sent the whole buffer");
            assert_same(&got, &data[..got.len()], "the part sent before abort()");
        }
        Err(e) => assert!(CONN_ERRORS.contains(&e.kind()), "peer: {e}"),
    }
    lp.close()
}

/// `abort()` after `close()` with data still buffered: the buffer is
/// dropped, `connection_lost(None)` once.
pub fn test_abort_after_close_with_buffer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 17);
    t.write(&data)?;
    t.close();
    t.abort();
    assert_eq!(t.get_write_buffer_size(), 0);
    rec.wait_lost(&lp);
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    match join(spawn_reader(peer, 64 * 1024)) {
        Ok(got) => assert!(got.len() < BIG, "the buffer was flushed after abort()"),
        Err(e) => assert!(CONN_ERRORS.contains(&e.kind()), "peer: {e}"),
    }
    lp.close()
}

/// `abort()` twice, then `close()`: `connection_lost` once.
pub fn test_abort_twice(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    t.abort();
    t.abort();
    t.close();
    rec.wait_lost(&lp);
    t.abort();
    run_for(&lp, QUIET)?;
    assert_eq!(rec.events(), vec![Ev::Made, Ev::Lost(None)]);
    let r = read_to_eof(&mut peer);
    assert!(
        matches!(&r, Ok(v) if v.is_empty())
            || matches!(&r, Err(e) if CONN_ERRORS.contains(&e.kind())),
        "the peer sees the close: {r:?}"
    );
    lp.close()
}

fn send_warnings(cap: &LogCapture) -> usize {
    cap.at(Level::Warning)
        .iter()
        .filter(|m| *m == "socket.send() raised exception.")
        .count()
}

/// Writes after the connection is lost are dropped; the first four
/// silently, from the fifth on with asyncio's warning. Empty writes do not
/// count.
fn write_after_lost(ctx: &Ctx, abort: bool) -> Result<()> {
    let lp = ctx.new_loop();
    let cap = LogCapture::start();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    if abort {
        t.abort();
    } else {
        t.close();
    }
    t.write(b"")?;
    for i in 1..=4 {
        t.write(b"dropped")?;
        assert_eq!(send_warnings(&cap), 0, "write {i} after close warned");
    }
    t.write(b"")?;
    t.write(b"dropped")?;
    assert_eq!(send_warnings(&cap), 1, "the 5th write after close warns");
    rec.wait_lost(&lp);
    t.write(b"dropped")?;
    assert_eq!(send_warnings(&cap), 2, "and every one after");
    assert_eq!(t.get_write_buffer_size(), 0);
    let r = read_to_eof(&mut peer);
    assert!(
        matches!(&r, Ok(v) if v.is_empty())
            || matches!(&r, Err(e) if CONN_ERRORS.contains(&e.kind())),
        "nothing written after close reached the peer: {r:?}"
    );
    lp.close()
}

/// `test_write_closing` (after `close()`): see `write_after_lost`.
pub fn test_write_after_close(ctx: &Ctx) -> Result<()> {
    write_after_lost(ctx, false)
}

/// The same after `abort()`.
pub fn test_write_after_abort(ctx: &Ctx) -> Result<()> {
    write_after_lost(ctx, true)
}

// ----- write_eof -------------------------------------------------------------------------

/// `test_write_eof`: `can_write_eof()`; `write_eof()` after data: the peer
/// reads the data, then EOF, while the transport can still receive.
pub fn test_write_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    assert!(t.can_write_eof());
    t.write(b"request")?;
    t.write_eof()?;
    assert!(!t.is_closing(), "write_eof() is not close()");
    let (got, mut peer) = with_peer(&lp, peer, |p| {
        let mut v = Vec::new();
        p.read_to_end(&mut v).map(|_| v)
    });
    assert_eq!(got.expect("peer reads to EOF"), b"request");
    peer.write_all(b"response").expect("write");
    rec.wait_data(&lp, 8);
    assert_eq!(rec.data(), b"response");
    drop(peer);
    rec.wait_lost(&lp);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    lp.close()
}

/// `test_write_eof_buffer`: `write_eof()` with data buffered shuts the
/// write side down only after the buffer is flushed.
pub fn test_write_eof_buffer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 18);
    t.write(&data)?;
    assert!(t.get_write_buffer_size() > 0);
    t.write_eof()?;
    let (got, _peer) = with_peer(&lp, peer, |p| {
        let mut v = Vec::new();
        p.read_to_end(&mut v).map(|_| v)
    });
    assert_same(
        &got.expect("peer reads to EOF"),
        &data,
        "flushed before EOF",
    );
    assert_eq!(t.get_write_buffer_size(), 0);
    assert!(!t.is_closing());
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `write()` after `write_eof()` is a `RuntimeError` (even with no data),
/// `writelines()` too, with asyncio's messages.
pub fn test_write_after_write_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.write(b"x")?;
    t.write_eof()?;
    expect_runtime(t.write(b"more"), "Cannot call write() after write_eof()");
    expect_runtime(t.write(b""), "Cannot call write() after write_eof()");
    expect_runtime(
        t.writelines(&[b"more"]),
        "Cannot call writelines() after write_eof()",
    );
    let (got, _peer) = with_peer(&lp, peer, |p| {
        let mut v = Vec::new();
        p.read_to_end(&mut v).map(|_| v)
    });
    assert_eq!(got.expect("peer reads"), b"x");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `write_eof()` twice is a no-op the second time; after `close()` it does
/// nothing either.
pub fn test_write_eof_twice_and_after_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.write_eof()?;
    t.write_eof()?;
    let (got, _peer) = with_peer(&lp, peer, |p| {
        let mut v = Vec::new();
        p.read_to_end(&mut v).map(|_| v)
    });
    assert_eq!(got.expect("peer reads"), b"");
    assert!(!t.is_closing());
    t.close();
    t.write_eof()?;
    rec.wait_lost(&lp);
    t.write_eof()?;
    assert_eq!(rec.events(), vec![Ev::Made, Ev::Lost(None)]);
    lp.close()
}

/// A graceful shutdown from both sides: `write_eof()`, then the peer's
/// reply and EOF; `eof_received` returning false ends the transport with
/// `connection_lost(None)`.
pub fn test_write_eof_then_peer_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.write(b"question")?;
    t.write_eof()?;
    let (got, peer) = with_peer(&lp, peer, |p| {
        let mut v = Vec::new();
        p.read_to_end(&mut v)?;
        p.write_all(b"answer")?;
        p.shutdown(std::net::Shutdown::Write)?;
        Ok::<_, std::io::Error>(v)
    });
    assert_eq!(got.expect("peer"), b"question");
    rec.wait_lost(&lp);
    assert_eq!(rec.data(), b"answer");
    let ev = rec.events();
    assert_eq!(&ev[ev.len() - 2..], &[Ev::Eof, Ev::Lost(None)], "{ev:?}");
    assert!(t.is_closing());
    drop(peer);
    lp.close()
}

// ----- pausing reads ---------------------------------------------------------------------

/// `test_pause_resume_reading`: paused, the transport delivers nothing and
/// stops taking data from its socket, so the peer's writes back up (flow
/// control reaches the sender); resumed, it delivers everything, in order.
///
/// Neutral to the I/O model: a completion-based transport may let the one
/// receive already in flight complete (asyncio's proactor does), so the
/// test only asks that the transport soon stops taking data.
pub fn test_pause_resume_reading(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    // Small kernel buffers towards the transport: the connection fills
    // after a few writes.
    let (t, mut peer) = open_with(&lp, rec.clone(), |a, b| {
        a.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        socket2::SockRef::from(b)
            .set_send_buffer_size(16 * 1024)
            .expect("SO_SNDBUF");
    })?;
    assert!(t.is_reading());
    t.pause_reading();
    assert!(!t.is_reading());
    peer.write_all(b"held back").expect("write");
    run_for(&lp, QUIET)?;
    // Fill the connection until the peer's write would block, and again
    // after the loop had time to read, until a round takes nothing.
    let mut sent = b"held back".to_vec();
    peer.set_nonblocking(true).expect("nonblocking");
    let chunk = pattern(16 * 1024, 5);
    let mut stopped = false;
    for _ in 0..64 {
        let before = sent.len();
        loop {
            assert!(sent.len() < HUGE, "the transport kept reading while paused");
            match peer.write(&chunk) {
                Ok(n) => sent.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("peer write: {e}"),
            }
        }
        if sent.len() == before {
            stopped = true;
            break;
        }
        run_for(&lp, QUIET)?;
    }
    assert!(stopped, "the transport kept reading while paused");
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Data(_))),
        0,
        "read while paused"
    );
    t.resume_reading();
    assert!(t.is_reading());
    rec.wait_data(&lp, sent.len());
    assert_same(&rec.data(), &sent, "delivered after resume");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// Pausing twice needs one resume; resuming when not paused changes
/// nothing (and does not deliver data twice).
pub fn test_pause_reading_twice_resume_not_paused(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    t.resume_reading();
    assert!(t.is_reading());
    peer.write_all(b"one").expect("write");
    rec.wait_data(&lp, 3);
    t.pause_reading();
    t.pause_reading();
    assert!(!t.is_reading());
    peer.write_all(b"two").expect("write");
    run_for(&lp, QUIET)?;
    assert_eq!(rec.data(), b"one");
    t.resume_reading();
    assert!(t.is_reading(), "one resume after two pauses");
    rec.wait_data(&lp, 6);
    t.resume_reading();
    peer.write_all(b"three").expect("write");
    rec.wait_data(&lp, 11);
    run_for(&lp, QUIET)?;
    assert_eq!(rec.data(), b"onetwothree");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `pause_reading()` from inside `data_received` holds back what follows.
pub fn test_pause_reading_in_data_received(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    rec.on_data(|r, t, _| {
        if r.count(|e| matches!(e, Ev::Data(_))) == 1 {
            t.pause_reading();
        }
    });
    let (t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"first").expect("write");
    rec.wait_data(&lp, 5);
    assert!(!t.is_reading());
    peer.write_all(b"second").expect("write");
    run_for(&lp, QUIET)?;
    assert_eq!(rec.data(), b"first");
    t.resume_reading();
    rec.wait_data(&lp, 11);
    assert_eq!(rec.data(), b"firstsecond");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// A paused transport does not see the peer's EOF until it resumes.
pub fn test_pause_reading_delays_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    t.pause_reading();
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    run_for(&lp, QUIET)?;
    assert_eq!(rec.events(), vec![Ev::Made], "EOF seen while paused");
    assert!(!t.is_closing());
    t.resume_reading();
    rec.wait_lost(&lp);
    assert_eq!(rec.events(), vec![Ev::Made, Ev::Eof, Ev::Lost(None)]);
    lp.close()
}

/// `is_reading()` is false once closing; `pause_reading` / `resume_reading`
/// then do nothing: a transport paused, then closed with a buffer still to
/// flush, does not read again when resumed.
pub fn test_is_reading_after_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    assert!(t.is_reading());
    t.close();
    assert!(!t.is_reading(), "is_reading() after close()");
    t.pause_reading();
    t.resume_reading();
    assert!(!t.is_reading());
    rec.wait_lost(&lp);
    assert!(!t.is_reading());

    let rec = Rec::new();
    let (t, mut peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.write(&pattern(BIG, 23))?;
    t.pause_reading();
    t.close();
    t.resume_reading();
    assert!(!t.is_reading(), "resume_reading() after close()");
    peer.write_all(b"ignored").expect("write");
    run_for(&lp, QUIET)?;
    let reader = spawn_reader(peer, 64 * 1024);
    rec.wait_lost(&lp);
    let _ = join(reader);
    t.resume_reading();
    t.pause_reading();
    assert!(!t.is_reading());
    assert_eq!(
        rec.events()
            .iter()
            .filter(|e| matches!(e, Ev::Data(_) | Ev::Eof))
            .count(),
        0,
        "{:?}",
        rec.events()
    );
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    lp.close()
}

// ----- extra info, socket options, protocol switch ------------------------------------------

/// `get_extra_info("peername" / "sockname")`: the socket's addresses.
pub fn test_extra_info_addresses(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let mut local: Option<SocketAddr> = None;
    let (t, peer) = open_with(&lp, rec.clone(), |a, _| {
        local = a.local_addr().expect("addr").as_socket();
    })?;
    let local = local.expect("inet");
    let remote = peer.local_addr().expect("peer addr");
    assert_eq!(t.get_extra_info("sockname"), Some(ExtraInfo::Addr(local)));
    assert_eq!(t.get_extra_info("peername"), Some(ExtraInfo::Addr(remote)));
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `get_extra_info("socket")` is the transport's own descriptor.
pub fn test_extra_info_socket(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let mut raw = None;
    let (t, _peer) = open_with(&lp, rec.clone(), |a, _| {
        raw = Some(crate::util::RawOf::raw(&**a));
    })?;
    assert_eq!(t.get_extra_info("socket"), raw.map(ExtraInfo::Fd));
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// An unknown `get_extra_info` name is `None`.
pub fn test_extra_info_unknown(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    assert_eq!(t.get_extra_info("no such thing"), None);
    assert_eq!(t.get_extra_info(""), None);
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `base_events._set_nodelay`: the transport turns Nagle off on its socket.
pub fn test_tcp_nodelay(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open_with(&lp, rec.clone(), |a, _| {
        a.set_tcp_nodelay(false).expect("clear TCP_NODELAY");
    })?;
    let on = with_sock(fd_of(&t), |s| s.tcp_nodelay()).expect("TCP_NODELAY");
    assert!(on, "TCP_NODELAY is not set on the transport's socket");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `set_protocol` / `get_protocol`: after the switch, data, EOF and
/// `connection_lost` go to the new protocol (which gets no
/// `connection_made`); the old one hears nothing more.
pub fn test_set_protocol(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (p1, p2) = (Rec::new(), Rec::new());
    let (t, mut peer) = open(&lp, p1.clone())?;
    assert!(same_obj(&t.get_protocol(), &p1));
    peer.write_all(b"one").expect("write");
    p1.wait_data(&lp, 3);
    t.set_protocol(p2.clone());
    assert!(same_obj(&t.get_protocol(), &p2));
    peer.write_all(b"two").expect("write");
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    p2.wait_lost(&lp);
    assert_eq!(p2.data(), b"two");
    assert_eq!(p2.events(), vec![Ev::Data(3), Ev::Eof, Ev::Lost(None)]);
    assert_eq!(p1.events(), vec![Ev::Made, Ev::Data(3)]);
    lp.close()
}

/// Switching to a `BufferedProtocol` switches the way of reading.
pub fn test_set_protocol_to_buffered(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let p1 = Rec::new();
    let (t, mut peer) = open(&lp, p1.clone())?;
    peer.write_all(b"plain").expect("write");
    p1.wait_data(&lp, 5);
    let r2 = Rec::new();
    let b2 = Buf::new(&r2, 8, BufMode::Normal);
    t.set_protocol(b2.clone());
    peer.write_all(b"buffered!").expect("write");
    r2.wait(&lp, "9 bytes", |r| {
        r.data.borrow().len() >= 9 || r.count(|e| matches!(e, Ev::Wrong(_))) > 0
    });
    assert_eq!(r2.data(), b"buffered!");
    assert!(b2.gets.get() >= 2, "a buffer of 8 for 9 bytes");
    assert_eq!(p1.data(), b"plain");
    t.close();
    r2.wait_lost(&lp);
    lp.close()
}

// ----- who owns the descriptor --------------------------------------------------------------

/// `_ensure_fd_no_transport`: `add_reader`, `add_writer`, `remove_reader`
/// and `remove_writer` on a live transport's descriptor are refused; the
/// transport keeps working.
pub fn test_add_reader_on_transport_fd(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    let fd = fd_of(&t);
    let prefix = format!("File descriptor {fd} is used by transport");
    let refused = |r: Result<()>, what: &str| match r {
        Err(Error::Runtime(m)) if m.starts_with(&prefix) => {}
        other => panic!("{what}: expected RuntimeError({prefix:?}...), got {other:?}"),
    };
    refused(lp.add_reader_dyn(fd, Box::new(|| {})), "add_reader");
    refused(lp.add_writer_dyn(fd, Box::new(|| {})), "add_writer");
    refused(lp.remove_reader(fd).map(drop), "remove_reader");
    refused(lp.remove_writer(fd).map(drop), "remove_writer");
    peer.write_all(b"still mine").expect("write");
    rec.wait_data(&lp, 10);
    assert_eq!(rec.data(), b"still mine");
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `sock_recv` / `sock_sendall` on a live transport's socket are refused
/// the same way.
pub fn test_sock_recv_on_transport_fd(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let mut kept = None;
    let (t, mut peer) = open_with(&lp, rec.clone(), |a, _| kept = Some(a.clone()))?;
    let sock = kept.expect("socket");
    let fd = fd_of(&t);
    let prefix = format!("File descriptor {fd} is used by transport");
    // A task, not run_until_complete: a sock_recv that is not refused
    // would wait for data forever.
    let recv = lp.create_task(lp.sock_recv(sock.clone(), 10))?;
    let send = lp.create_task(lp.sock_sendall(sock.clone(), b"x".to_vec()))?;
    for (name, task) in [
        ("sock_recv", recv.as_obj()),
        ("sock_sendall", send.as_obj()),
    ] {
        let _ = run_until_done(&lp, &*task, 1.0);
        assert!(
            task.done(),
            "{name} on a transport's socket was not refused"
        );
        let e = task.exception_erased();
        assert!(
            matches!(&e, Some(Error::Runtime(m)) if m.starts_with(&prefix)),
            "{name}: {e:?}"
        );
    }
    peer.write_all(b"ok").expect("write");
    rec.wait_data(&lp, 2);
    t.close();
    rec.wait_lost(&lp);
    // The transport may have closed the descriptor itself: never let this
    // handle close it (again).
    std::mem::forget(sock);
    lp.close()
}

/// Once the transport is closing, its descriptor is free for
/// `add_reader` / `remove_reader` again.
pub fn test_add_reader_after_transport_closing(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, _peer) = open(&lp, rec.clone())?;
    let fd = fd_of(&t);
    t.close();
    lp.add_reader_dyn(fd, Box::new(|| {}))?;
    assert!(lp.remove_reader(fd)?, "the reader was registered");
    lp.add_writer_dyn(fd, Box::new(|| {}))?;
    assert!(lp.remove_writer(fd)?);
    rec.wait_lost(&lp);
    lp.close()
}

/// True while `fd` is still the transport's socket (open, with the same
/// addresses); false once it is closed (or reused by another socket).
#[cfg(unix)]
fn fd_is_ours(fd: RawFd, local: &ExtraInfo, peer: &ExtraInfo) -> bool {
    // SAFETY: fcntl(F_GETFD) on any number is harmless.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "fcntl: {e}");
        return false;
    }
    type Get =
        unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;
    let addr = |get: Get| {
        // SAFETY: `get` writes at most `len` bytes into the storage.
        let r = unsafe {
            socket2::SockAddr::try_init(|st, len| {
                if get(fd, st.cast(), len) == -1 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
        };
        r.ok().and_then(|(_, a)| a.as_socket()).map(ExtraInfo::Addr)
    };
    addr(libc::getsockname).as_ref() == Some(local)
        && addr(libc::getpeername).as_ref() == Some(peer)
}

#[cfg(windows)]
fn fd_closed_after(_ctx: &Ctx, _how: &str) -> Result<()> {
    unix_only("fcntl")
}

/// After `connection_lost`, the transport's descriptor is closed (checked
/// right away; a number reused by another socket meanwhile counts as closed).
#[cfg(unix)]
fn fd_closed_after(ctx: &Ctx, how: &str) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, peer) = open(&lp, rec.clone())?;
    let fd = fd_of(&t);
    let local = t.get_extra_info("sockname").expect("sockname");
    let remote = t.get_extra_info("peername").expect("peername");
    assert!(
        fd_is_ours(fd, &local, &remote),
        "the check sees the open socket"
    );
    match how {
        "close" => t.close(),
        "abort" => t.abort(),
        _ => peer.shutdown(std::net::Shutdown::Write).expect("shutdown"),
    }
    rec.wait_lost(&lp);
    assert!(
        !fd_is_ours(fd, &local, &remote),
        "fd {fd} still open after connection_lost ({how})"
    );
    drop(peer);
    lp.close()
}

/// No descriptor is left open after `close()`.
pub fn test_fd_closed_after_close(ctx: &Ctx) -> Result<()> {
    fd_closed_after(ctx, "close")
}

/// No descriptor is left open after `abort()`.
pub fn test_fd_closed_after_abort(ctx: &Ctx) -> Result<()> {
    fd_closed_after(ctx, "abort")
}

/// No descriptor is left open after the peer's EOF closed the transport.
pub fn test_fd_closed_after_peer_eof(ctx: &Ctx) -> Result<()> {
    fd_closed_after(ctx, "eof")
}

// ----- races -----------------------------------------------------------------------------

/// `abort()` inside `data_received`: nothing more is delivered,
/// `connection_lost(None)` once, the peer sees the connection end.
pub fn test_abort_in_data_received(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    rec.on_data(|_, t, _| t.abort());
    let (_t, mut peer) = open(&lp, rec.clone())?;
    peer.write_all(b"first").expect("write");
    rec.wait_lost(&lp);
    let _ = peer.write_all(b"second");
    run_for(&lp, QUIET)?;
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Data(_))),
        1,
        "{:?}",
        rec.events()
    );
    assert_eq!(rec.lost_count(), 1);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    let r = read_to_eof(&mut peer);
    assert!(
        matches!(&r, Ok(v) if v.is_empty())
            || matches!(&r, Err(e) if CONN_ERRORS.contains(&e.kind())),
        "the peer sees the end: {r:?}"
    );
    lp.close()
}

/// `close()` inside `connection_made`: the call still returns the
/// transport, nothing is read although the peer had sent data,
/// `connection_lost(None)` follows.
pub fn test_close_in_connection_made(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    rec.on_made(|_, t, _| t.close());
    let (a, mut peer) = socketpair();
    peer.write_all(b"unheard").expect("write");
    let f = lp.connect_accepted_socket_dyn(
        factory(rec.clone()),
        Rc::new(Socket::from(a)),
        None,
        None,
        None,
    );
    let (t, _) = lp.run_until_complete(f)?;
    assert!(t.is_closing());
    assert!(!t.is_reading());
    rec.wait_lost(&lp);
    run_for(&lp, QUIET)?;
    assert_eq!(rec.events(), vec![Ev::Made, Ev::Lost(None)]);
    let r = read_to_eof(&mut peer);
    assert!(
        matches!(&r, Ok(v) if v.is_empty())
            || matches!(&r, Err(e) if CONN_ERRORS.contains(&e.kind())),
        "the peer sees the close: {r:?}"
    );
    lp.close()
}

/// `close()` with data buffered, then the peer resets: the flush fails,
/// and `connection_lost` gets the error, once, without the exception
/// handler.
pub fn test_close_with_buffer_then_reset(ctx: &Ctx) -> Result<()> {
    close_with_buffer_then_reset(ctx)
}

#[cfg(windows)]
fn close_with_buffer_then_reset(_ctx: &Ctx) -> Result<()> {
    unix_only("SO_LINGER reset")
}

#[cfg(unix)]
fn close_with_buffer_then_reset(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    t.write(&pattern(BIG, 19))?;
    assert!(t.get_write_buffer_size() > 0);
    t.close();
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(peer);
    rec.wait_lost(&lp);
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    expect_os_error(&rec.lost_exc(), CONN_ERRORS, "flush to a reset peer");
    assert_eq!(t.get_write_buffer_size(), 0);
    assert_no_exceptions(&exc);
    lp.close()
}

/// A protocol that writes a big answer and closes from `data_received`
/// (an HTTP/1.0 server): the close waits for the buffered answer, which
/// reaches the peer whole before EOF.
pub fn test_write_and_close_in_data_received(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let answer = pattern(BIG, 20);
    let a = answer.clone();
    rec.on_data(move |_, t, _| {
        t.write(&a).expect("write");
        t.close();
    });
    let (_t, mut peer) = open_with(&lp, rec.clone(), |a, b| small_buffers(a, b))?;
    peer.write_all(b"GET /").expect("write");
    let reader = spawn_reader(peer, 64 * 1024);
    rec.wait_lost(&lp);
    assert_eq!(rec.lost_exc().map(|e| e.to_string()), None);
    let got = join(reader).expect("peer reads to EOF");
    assert_same(&got, &answer, "the answer written before close()");
    lp.close()
}

/// A panic in `connection_made` reaches the exception handler; the call
/// still returns, the loop goes on, and `connection_lost` comes once at
/// most, after a `close()`.
pub fn test_connection_made_panic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    rec.on_made(|_, _, _| panic!("protocol bug in connection_made"));
    let (t, _peer) = open(&lp, rec.clone())?;
    run_for(&lp, QUIET)?;
    let all = exc.get();
    assert_eq!(
        all.len(),
        1,
        "{:?}",
        all.iter().map(|c| c.render()).collect::<Vec<_>>()
    );
    assert!(
        matches!(&all[0].exception, Some(Error::Panic(m)) if m.contains("in connection_made")),
        "{:?}",
        all[0].exception
    );
    t.close();
    rec.wait_lost(&lp);
    run_for(&lp, QUIET)?;
    assert_eq!(rec.lost_count(), 1);
    let v = lp.run_until_complete(async { Ok(1) })?;
    assert_eq!(v, 1);
    lp.close()
}

/// A panic in `connection_lost` reaches the exception handler, and the
/// socket is closed all the same.
pub fn test_connection_lost_panic(ctx: &Ctx) -> Result<()> {
    struct P(Rc<Rec>);
    impl BaseProtocol for P {
        fn connection_lost(&self, e: Option<Error>) {
            self.0.lost_with(e);
            panic!("protocol bug in connection_lost");
        }
    }
    impl Protocol for P {
        fn connection_made(&self, t: Rc<dyn Transport>) {
            self.0.made(t)
        }
    }
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, Rc::new(P(rec.clone())))?;
    #[cfg(unix)]
    let (fd, local, remote) = (
        fd_of(&t),
        t.get_extra_info("sockname").expect("sockname"),
        t.get_extra_info("peername").expect("peername"),
    );
    t.close();
    rec.wait_lost(&lp);
    run_for(&lp, QUIET)?;
    let all = exc.get();
    assert_eq!(
        all.len(),
        1,
        "{:?}",
        all.iter().map(|c| c.render()).collect::<Vec<_>>()
    );
    assert!(
        matches!(&all[0].exception, Some(Error::Panic(m)) if m.contains("in connection_lost")),
        "{:?}",
        all[0].exception
    );
    assert_eq!(rec.lost_count(), 1);
    #[cfg(unix)]
    assert!(!fd_is_ours(fd, &local, &remote), "fd {fd} left open");
    assert_eq!(
        read_to_eof(&mut peer).expect("peer reads"),
        b"",
        "the peer sees the close"
    );
    lp.close()
}

/// A panic in `pause_writing` is reported as asyncio reports it
/// ("protocol.pause_writing() failed"); the transport goes on, the data
/// arrives, and `resume_writing` still follows the drain.
pub fn test_pause_writing_panic(ctx: &Ctx) -> Result<()> {
    struct P(Rc<Rec>);
    impl BaseProtocol for P {
        fn connection_lost(&self, e: Option<Error>) {
            self.0.lost_with(e)
        }
        fn pause_writing(&self) {
            panic!("protocol bug in pause_writing")
        }
        fn resume_writing(&self) {
            self.0.resume_writing()
        }
    }
    impl Protocol for P {
        fn connection_made(&self, t: Rc<dyn Transport>) {
            self.0.made(t)
        }
    }
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let rec = Rec::new();
    let (t, peer) = open_with(&lp, Rc::new(P(rec.clone())), |a, b| small_buffers(a, b))?;
    let data = pattern(BIG, 21);
    t.write(&data)?;
    let c = one_fatal_error(&exc, "protocol.pause_writing() failed");
    assert!(matches!(&c.exception, Some(Error::Panic(m)) if m.contains("in pause_writing")));
    assert!(!t.is_closing(), "a failing pause_writing does not close");
    let (got, _peer) = peer_read_exact(&lp, peer, BIG);
    assert_same(&got, &data, "after a failing pause_writing");
    assert_eq!(
        rec.count(|e| matches!(e, Ev::Resume(_))),
        1,
        "{:?}",
        rec.events()
    );
    t.close();
    rec.wait_lost(&lp);
    lp.close()
}

/// `create_server` + `create_connection` on loopback: `connection_made` has
/// run when `create_connection` returns; bytes go both ways; the addresses
/// match across the two ends; closing the client ends the server side.
pub fn test_create_connection_echo(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let served: Log<Rc<Rec>> = Log::new();
    let s = served.clone();
    let server_factory: ProtocolFactory = Rc::new(move || {
        let r = Rec::new();
        r.on_data(|_, t, d| t.write(d).expect("echo"));
        s.push(r.clone());
        r
    });
    let server = lp.run_until_complete(lp.create_server_dyn(
        server_factory,
        Hosts::One("127.0.0.1".into()),
        Some(0),
        CreateServerOptions::default(),
    ))?;
    let addr = server.sockets()[0]
        .local_addr()
        .expect("server addr")
        .as_socket()
        .expect("inet");
    let client = Rec::new();
    let (t, p) = lp.run_until_complete(lp.create_connection_dyn(
        factory(client.clone()),
        Some("127.0.0.1".into()),
        Some(addr.port()),
        Default::default(),
    ))?;
    assert_eq!(client.events(), vec![Ev::Made]);
    assert!(same_obj(&p, &client));
    assert_eq!(t.get_extra_info("peername"), Some(ExtraInfo::Addr(addr)));
    t.write(b"echo me")?;
    client.wait_data(&lp, 7);
    assert_eq!(client.data(), b"echo me");
    let srv = served.get();
    assert_eq!(srv.len(), 1);
    assert_eq!(srv[0].data(), b"echo me");
    t.close();
    client.wait_lost(&lp);
    srv[0].wait_lost(&lp);
    assert_eq!(srv[0].count(|e| *e == Ev::Eof), 1);
    server.close();
    lp.run_until_complete(server.wait_closed())?;
    lp.close()
}

// ----- the loop closing under open transports ---------------------------------------------

/// Closing the loop tears down a transport still open, even one with
/// buffered data whose protocol keeps it (a reference cycle nothing else
/// would break): `connection_lost(None)` once, the socket closed, and the
/// peer reads to the end. (asyncio leaves such a transport to the garbage
/// collector; Rust has none, so the loop does it.)
pub fn test_loop_close_tears_down_transports(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let rec = Rec::new();
    let (t, mut peer) = open(&lp, rec.clone())?;
    t.write(&vec![b'x'; 8 << 20])?;
    assert!(t.get_write_buffer_size() > 0, "the peer is not reading yet");
    assert_eq!(rec.lost_count(), 0);
    drop(t);
    lp.close()?;
    assert_eq!(rec.lost_count(), 1, "{:?}", rec.events());
    assert!(rec.lost_exc().is_none(), "{:?}", rec.lost_exc());
    peer.set_read_timeout(Some(std::time::Duration::from_secs(NET as u64)))
        .expect("timeout");
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the peer never saw the end: {e}"),
        }
    }
    Ok(())
}
