//! Two bare echo servers for `echo_bench --baselines`: what epoll and
//! io_uring cost on this machine with no event loop around them, so that
//! the gap between our two backends can be set against the gap between the
//! two kernel interfaces themselves.
//!
//! Both do as little as an echo server can:
//!
//! - `raw-epoll`: level-triggered epoll; one read per readiness event into
//!   one shared 256 KiB buffer, sent back at once; what the socket does not
//!   take waits for `EPOLLOUT`, and the connection is not read meanwhile
//!   (as `select`'s transport with the echo protocol's flow control).
//! - `raw-uring`: one io_uring set up as backend-uring's (single issuer,
//!   deferred task work); a multishot accept; per connection one 256 KiB
//!   buffer, a `recv` into it and a `send` from it, one at a time, so no
//!   byte is copied in user space; every request of an iteration goes in
//!   one `io_uring_enter`.
//!
//! Control messages (`RawMsg`) come over a channel, with an eventfd to wake
//! the server.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

/// Which bare server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    Epoll,
    Uring,
}

impl RawKind {
    pub fn name(self) -> &'static str {
        match self {
            RawKind::Epoll => "raw-epoll",
            RawKind::Uring => "raw-uring",
        }
    }
}

/// A request to a bare server's thread.
pub enum RawMsg {
    /// Run this on the server thread.
    Call(Box<dyn FnOnce() + Send>),
    Stop,
}

/// How another thread reaches a bare server.
pub struct RawCtl {
    tx: mpsc::Sender<RawMsg>,
    wake: Arc<OwnedFd>,
}

impl RawCtl {
    pub fn send(&self, msg: RawMsg) -> Result<(), String> {
        self.tx
            .send(msg)
            .map_err(|_| "the server is gone".to_string())?;
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array to our eventfd.
        let n = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        if n == 8 {
            Ok(())
        } else {
            Err(format!("eventfd write: {}", io::Error::last_os_error()))
        }
    }
}

const BUF: usize = 256 * 1024;

/// Runs a bare server on this thread until it is stopped; `ready` hears its
/// address and how to reach it.
pub fn serve(kind: RawKind, ready: impl FnOnce(SocketAddr, RawCtl)) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // SAFETY: eventfd returns a new descriptor we own, or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", io::Error::last_os_error()));
    }
    // SAFETY: `efd` is a fresh descriptor nothing else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    let (tx, rx) = mpsc::channel();
    ready(
        addr,
        RawCtl {
            tx,
            wake: wake.clone(),
        },
    );
    match kind {
        RawKind::Epoll => serve_epoll(&listener, &wake, &rx),
        RawKind::Uring => serve_uring(&listener, &wake, &rx),
    }
}

/// Runs what the channel holds; `true` once asked to stop.
fn drain_ctl(wake: &OwnedFd, rx: &mpsc::Receiver<RawMsg>) -> bool {
    let mut count = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live array from our eventfd.
    let _ = unsafe { libc::read(wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    while let Ok(msg) = rx.try_recv() {
        match msg {
            RawMsg::Call(f) => f(),
            RawMsg::Stop => return true,
        }
    }
    false
}

fn accepted(sock: &TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)
}

// ----- epoll -------------------------------------------------------------------

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;

struct EpollConn {
    sock: TcpStream,
    /// Bytes read but not yet taken by the socket.
    pending: Vec<u8>,
}

struct Epoll(OwnedFd);

impl Epoll {
    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the call's duration.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn serve_epoll(
    listener: &TcpListener,
    wake: &OwnedFd,
    rx: &mpsc::Receiver<RawMsg>,
) -> Result<(), String> {
    // SAFETY: epoll_create1 returns a new descriptor we own, or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
    }
    // SAFETY: `ep` is a fresh descriptor nothing else owns.
    let ep = Epoll(unsafe { OwnedFd::from_raw_fd(ep) });
    let err = |e: io::Error| e.to_string();
    let inp = libc::EPOLLIN as u32;
    ep.ctl(libc::EPOLL_CTL_ADD, listener.as_raw_fd(), inp, LISTENER)
        .map_err(err)?;
    ep.ctl(libc::EPOLL_CTL_ADD, wake.as_raw_fd(), inp, WAKE)
        .map_err(err)?;
    let mut conns: HashMap<u64, EpollConn> = HashMap::new();
    let mut buf = vec![0u8; BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` has room for the count passed.
        let n = unsafe {
            libc::epoll_wait(ep.0.as_raw_fd(), events.as_mut_ptr(), events.len() as _, -1)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            let (token, bits) = (ev.u64, ev.events);
            match token {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            accepted(&sock).map_err(err)?;
                            let key = sock.as_raw_fd() as u64;
                            ep.ctl(libc::EPOLL_CTL_ADD, sock.as_raw_fd(), inp, key)
                                .map_err(err)?;
                            conns.insert(
                                key,
                                EpollConn {
                                    sock,
                                    pending: Vec::new(),
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("accept: {e}")),
                    }
                },
                WAKE => {
                    if drain_ctl(wake, rx) {
                        return Ok(());
                    }
                }
                key => {
                    let Some(c) = conns.get_mut(&key) else {
                        continue;
                    };
                    let open = if !c.pending.is_empty() {
                        flush(&ep, c, key, bits)
                    } else {
                        echo(&ep, c, key, &mut buf)
                    };
                    if !open {
                        if let Some(c) = conns.remove(&key) {
                            let _ = ep.ctl(libc::EPOLL_CTL_DEL, c.sock.as_raw_fd(), 0, 0);
                        }
                    }
                }
            }
        }
    }
}

/// One read, sent straight back; `false` once the connection is done.
fn echo(ep: &Epoll, c: &mut EpollConn, key: u64, buf: &mut [u8]) -> bool {
    let n = match c.sock.read(buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
        Err(_) => return false,
    };
    let sent = match c.sock.write(&buf[..n]) {
        Ok(k) => k,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return false,
    };
    if sent < n {
        c.pending.extend_from_slice(&buf[sent..n]);
        let out = libc::EPOLLOUT as u32;
        return ep
            .ctl(libc::EPOLL_CTL_MOD, c.sock.as_raw_fd(), out, key)
            .is_ok();
    }
    true
}

/// Sends what is pending; reads again once it is all gone.
fn flush(ep: &Epoll, c: &mut EpollConn, key: u64, bits: u32) -> bool {
    if bits & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
        return true;
    }
    match c.sock.write(&c.pending) {
        Ok(k) => {
            c.pending.drain(..k);
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    if c.pending.is_empty() {
        let inp = libc::EPOLLIN as u32;
        return ep
            .ctl(libc::EPOLL_CTL_MOD, c.sock.as_raw_fd(), inp, key)
            .is_ok();
    }
    true
}

// ----- io_uring ----------------------------------------------------------------

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_WAKE: u64 = 4;
const OP_CANCEL: u64 = 5;

fn user_data(fd: RawFd, op: u64) -> u64 {
    ((fd as u64) << 8) | op
}

struct UringConn {
    /// Owns (and on drop closes) the descriptor the requests name.
    _sock: TcpStream,
    buf: Box<[u8]>,
    /// Bytes received, and how many of them are sent.
    len: usize,
    sent: usize,
}

struct Ring {
    ring: IoUring,
    /// Requests submitted whose last completion has not come.
    in_flight: usize,
}

impl Ring {
    /// # Safety
    ///
    /// Whatever memory `entry` points at must stay valid until its
    /// completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: passed on to the caller.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }
}

fn serve_uring(
    listener: &TcpListener,
    wake: &OwnedFd,
    rx: &mpsc::Receiver<RawMsg>,
) -> Result<(), String> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(512)
        .build(256)
        .map_err(|e| format!("io_uring: {e}"))?;
    let mut r = Ring { ring, in_flight: 0 };
    let mut conns: HashMap<RawFd, UringConn> = HashMap::new();
    // The eventfd's counter, read by the wake request.
    let mut counter = Box::new(0u64);
    let arm_wake = |r: &mut Ring, counter: &mut u64| {
        let entry = opcode::Read::new(types::Fd(wake.as_raw_fd()), (counter as *mut u64).cast(), 8)
            .build()
            .user_data(OP_WAKE);
        r.in_flight += 1;
        // SAFETY: the counter is boxed and outlives the loop below, which
        // reaps every request before returning.
        unsafe { r.push(entry) }
    };
    let lfd = listener.as_raw_fd();
    // SAFETY: a multishot accept points at no memory of ours.
    unsafe {
        r.push(
            opcode::AcceptMulti::new(types::Fd(lfd))
                .build()
                .user_data(OP_ACCEPT),
        )
    }
    .map_err(|e| e.to_string())?;
    r.in_flight += 1;
    arm_wake(&mut r, &mut counter).map_err(|e| e.to_string())?;
    let mut cqes = Vec::with_capacity(512);
    let mut stopping: Option<Instant> = None;
    loop {
        if stopping.is_some() && r.in_flight == 0 {
            return Ok(());
        }
        if let Some(t0) = stopping {
            if t0.elapsed() > Duration::from_secs(5) {
                // Requests the kernel never finished: leak their buffers
                // rather than free memory it may still write.
                std::mem::forget(conns);
                return Err("raw-uring: requests still in flight 5 s after stopping".into());
            }
        }
        match r.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(format!("io_uring_enter: {e}")),
        }
        cqes.extend(
            r.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (ud, res, flags) in cqes.drain(..) {
            let (fd, op) = ((ud >> 8) as RawFd, ud & 0xff);
            if op == OP_CANCEL {
                continue;
            }
            if op != OP_ACCEPT || !io_uring::cqueue::more(flags) {
                r.in_flight -= 1;
            }
            if stopping.is_some() {
                if op == OP_RECV || op == OP_SEND {
                    conns.remove(&fd);
                }
                continue;
            }
            match op {
                OP_ACCEPT if res >= 0 => {
                    // SAFETY: the accept's result is a new descriptor we own.
                    let sock = unsafe { TcpStream::from_raw_fd(res) };
                    accepted(&sock).map_err(|e| e.to_string())?;
                    let mut c = UringConn {
                        _sock: sock,
                        buf: vec![0u8; BUF].into_boxed_slice(),
                        len: 0,
                        sent: 0,
                    };
                    let entry = recv(res, &mut c);
                    conns.insert(res, c);
                    r.in_flight += 1;
                    // SAFETY: the buffer is the connection's, which stays in
                    // `conns` until this request completes.
                    unsafe { r.push(entry) }.map_err(|e| e.to_string())?;
                }
                OP_ACCEPT => return Err(format!("accept: {}", io::Error::from_raw_os_error(-res))),
                OP_WAKE => {
                    if drain_ctl(wake, rx) {
                        stopping = Some(Instant::now());
                        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                            .build()
                            .user_data(OP_CANCEL);
                        // SAFETY: a cancel points at no memory of ours.
                        unsafe { r.push(cancel) }.map_err(|e| e.to_string())?;
                    } else {
                        arm_wake(&mut r, &mut counter).map_err(|e| e.to_string())?;
                    }
                }
                OP_RECV | OP_SEND => {
                    let Some(c) = conns.get_mut(&fd) else {
                        continue;
                    };
                    let next = match (op, res) {
                        (_, res) if res < 0 => None,
                        (OP_RECV, 0) => None,
                        (OP_RECV, n) => {
                            c.len = n as usize;
                            c.sent = 0;
                            Some(send(fd, c))
                        }
                        (_, n) => {
                            c.sent += n as usize;
                            Some(if c.sent < c.len {
                                send(fd, c)
                            } else {
                                recv(fd, c)
                            })
                        }
                    };
                    match next {
                        Some(entry) => {
                            r.in_flight += 1;
                            // SAFETY: as for the first receive.
                            unsafe { r.push(entry) }.map_err(|e| e.to_string())?;
                        }
                        None => {
                            conns.remove(&fd);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn recv(fd: RawFd, c: &mut UringConn) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), c.buf.as_mut_ptr(), c.buf.len() as u32)
        .build()
        .user_data(user_data(fd, OP_RECV))
}

fn send(fd: RawFd, c: &mut UringConn) -> squeue::Entry {
    let rest = &c.buf[c.sent..c.len];
    opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(fd, OP_SEND))
}
