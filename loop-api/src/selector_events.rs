//! What asyncio's `selector_events` holds: the socket methods (`sock_recv`,
//! `sock_sendall`, `sock_connect`, `sock_accept`, ...), the stream and
//! datagram transports, the accept loop and `sendfile(2)`, all built on
//! readiness.
//!
//! Each `sock_*` function tries the operation at once; if the socket would
//! block, it watches the descriptor with `add_reader`/`add_writer`, retries
//! from the callback until the operation completes, and stops watching when
//! done. [`SelectorIo`] is this model as a driver's
//! [`IoModel`]: every readiness driver names it, and a completion driver
//! hands it what its own mechanism does not do better.
//!
//! # As in asyncio
//! - The returned future is lazy, like a coroutine: nothing happens until it
//!   is first polled.
//! - The socket must be non-blocking (`ValueError` otherwise). asyncio checks
//!   this in debug mode only; here it is always checked, because a blocking
//!   call would stall the whole loop thread. On Windows the mode cannot be
//!   queried (socket2 offers no way), so the check is Unix-only there.
//! - Cancelling (dropping the future, or cancelling the task awaiting it)
//!   stops watching the descriptor and leaves the socket usable. An owned
//!   buffer given to a cancelled `sock_recv_into` is dropped.
//! - A descriptor has one reader and one writer: a second `sock_recv` on a
//!   socket with one pending replaces the first's watch (asyncio's
//!   `add_reader` does the same), and the first then never completes; when
//!   it is dropped it leaves the second's watch in place.

pub mod accept;
pub mod datagram_transport;
pub mod sendfile;
pub mod socket_transport;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::rc::Rc;

use socket2::{SockAddr, Socket};

use crate::base_events::server::Server;
use crate::base_events::sockets::{check_nonblocking, connect_failed, is_retry, raw_fd};
use crate::base_events::{BaseEventLoop, BaseLoop};
use crate::driver::{Driver, IoModel};
use crate::events::{EventLoopExt, LocalBoxFuture, RawFd, RepeatCallback};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::{DatagramProtocol, Protocol, ProtocolFactory};
use crate::transports::{DatagramTransport, Transport};

// ----- the readiness model -----------------------------------------------------

/// Socket I/O on readiness (asyncio's `SelectorEventLoop`), for any
/// driver that reports readiness: `type Io = SelectorIo;`.
pub struct SelectorIo;

impl<D: Driver> IoModel<D> for SelectorIo {
    fn make_socket_transport(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        socket_transport::SocketTransport::create(lp.clone(), sock, protocol, waiter, server)
    }

    fn make_datagram_transport(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn DatagramProtocol>,
        address: Option<SockAddr>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn DatagramTransport>> {
        datagram_transport::DatagramSocketTransport::create(
            lp.clone(),
            sock,
            protocol,
            address,
            waiter,
        )
    }

    fn start_serving(
        lp: &Rc<BaseEventLoop<D>>,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()> {
        accept::start_serving(lp.clone(), protocol_factory, sock, server, backlog)
    }

    fn stop_serving(lp: &Rc<BaseEventLoop<D>>, sock: &Socket) {
        accept::stop_serving(&(lp.clone() as _), sock)
    }

    fn sock_recv(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>> {
        sock_recv(lp.clone(), sock, nbytes)
    }

    fn sock_recv_into(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>> {
        sock_recv_into(lp.clone(), sock, buf)
    }

    fn sock_recvfrom(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        bufsize: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, SockAddr)>> {
        sock_recvfrom(lp.clone(), sock, bufsize)
    }

    fn sock_recvfrom_into(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize, SockAddr)>> {
        sock_recvfrom_into(lp.clone(), sock, buf, nbytes)
    }

    fn sock_sendall(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<()>> {
        sock_sendall(lp.clone(), sock, data)
    }

    fn sock_sendto(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<usize>> {
        sock_sendto(lp.clone(), sock, data, address)
    }

    fn sock_connect(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>> {
        sock_connect(lp.clone(), sock, address)
    }

    fn sock_accept(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
    ) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>> {
        sock_accept(lp.clone(), sock)
    }

    fn make_read_pipe_transport(
        lp: &Rc<BaseEventLoop<D>>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        #[cfg(unix)]
        {
            crate::unix_events::ReadPipeTransport::create(lp.clone(), pipe, protocol, waiter)
        }
        #[cfg(not(unix))]
        {
            let _ = (lp, pipe, protocol, waiter);
            Err(no_pipes())
        }
    }

    #[cfg(not(unix))]
    fn check_pipes() -> Result<()> {
        Err(no_pipes())
    }

    fn make_write_pipe_transport(
        lp: &Rc<BaseEventLoop<D>>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        #[cfg(unix)]
        {
            crate::unix_events::WritePipeTransport::create(lp.clone(), pipe, protocol, waiter)
        }
        #[cfg(not(unix))]
        {
            let _ = (lp, pipe, protocol, waiter);
            Err(no_pipes())
        }
    }

    fn sock_sendfile_native(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        sendfile::sock_sendfile_native(lp.clone(), sock, file, offset, count)
    }
}

/// Windows pipes cannot be polled for readiness: asyncio's
/// `SelectorEventLoop` has no pipes or subprocesses there either.
#[cfg(not(unix))]
pub(crate) fn no_pipes() -> Error {
    Error::NotSupported {
        feature: "pipes and subprocesses",
        reason: "Windows pipes have no readiness: use the iocp backend (asyncio's \
                 SelectorEventLoop has none on Windows either)"
            .into(),
    }
}

// ----- the readiness machinery --------------------------------------------------

/// Which readiness an operation waits for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// What one attempt at an operation came to.
pub(crate) enum Step<T> {
    /// Finished with this value.
    Done(T),
    /// Made progress (or none) and must wait for readiness again.
    Again,
}

/// A non-blocking `connect` that goes on in the background (asyncio catches
/// `BlockingIOError`, whose errnos include `EINPROGRESS` and `EALREADY`, and
/// `InterruptedError`).
fn connect_pending(e: &io::Error) -> bool {
    if is_retry(e) {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EINPROGRESS | libc::EALREADY))
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Sets a flag when dropped: lives inside a reader/writer callback, so that
/// the flag tells whether the loop still holds that callback (it drops it
/// when the watch is removed, or replaced by another `add_reader`).
struct AliveFlag(Rc<Cell<bool>>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Removes the reader/writer when the operation ends or is cancelled
/// (asyncio's `_sock_read_done`/`_sock_write_done`), unless the loop no
/// longer holds our callback (replaced, or the loop closed).
struct Watch {
    lp: Rc<dyn BaseLoop>,
    fd: RawFd,
    dir: Dir,
    alive: Rc<Cell<bool>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.alive.get() {
            let _ = match self.dir {
                Dir::Read => self.lp._remove_reader(self.fd),
                Dir::Write => self.lp._remove_writer(self.fd),
            };
        }
    }
}

/// Runs `attempt` until it is done: once at once (when `try_first`), then
/// each time the socket is ready in direction `dir`. `WouldBlock` and
/// `Interrupted` errors mean "wait again"; any other error ends it.
async fn until_done<T: 'static>(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    dir: Dir,
    try_first: bool,
    mut attempt: impl FnMut(&Socket) -> io::Result<Step<T>> + 'static,
) -> Result<T> {
    // Stricter than asyncio, which checks only before it starts waiting:
    // a transport's socket is refused whether or not it has data ready.
    lp._ensure_fd_no_transport(raw_fd(&sock))?;
    watch_until_done(lp, sock, dir, try_first, move |s| match attempt(s) {
        Ok(step) => Ok(step),
        Err(e) if is_retry(&e) => Ok(Step::Again),
        Err(e) => Err(e.into()),
    })
    .await
}

/// [`until_done`] without the transport check, for an `attempt` that says
/// itself when to wait again: what a transport uses on its own socket
/// (`sendfile` through `_sendfile_native`). The watch is removed when the
/// operation ends or the future is dropped.
pub(crate) async fn watch_until_done<T: 'static>(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    dir: Dir,
    try_first: bool,
    mut attempt: impl FnMut(&Socket) -> Result<Step<T>> + 'static,
) -> Result<T> {
    if try_first {
        if let Step::Done(v) = attempt(&sock)? {
            return Ok(v);
        }
    }
    let fut = lp.create_future::<T>();
    let alive = Rc::new(Cell::new(true));
    let flag = AliveFlag(alive.clone());
    let (f, s) = (fut.clone(), sock.clone());
    let callback: RepeatCallback = Box::new(move || {
        let _held_by_the_loop = &flag;
        if f.done() {
            return; // cancelled, or completed and not yet unwatched
        }
        match attempt(&s) {
            Ok(Step::Done(v)) => {
                let _ = f.set_result(v);
            }
            Ok(Step::Again) => {}
            Err(e) => {
                let _ = f.set_exception(e);
            }
        }
    });
    let fd = raw_fd(&sock);
    match dir {
        Dir::Read => lp._add_reader(fd, callback)?,
        Dir::Write => lp._add_writer(fd, callback)?,
    }
    let _watch = Watch {
        lp: lp.clone(),
        fd,
        dir,
        alive,
    };
    fut.await
}

/// `recvfrom` into an initialised buffer.
fn recv_from_init(sock: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, so the cast slice
    // covers exactly `buf`. `recv_from` only ever writes initialised bytes
    // into it (the kernel copies data in; nothing is de-initialised), so
    // `buf` is still fully initialised when this borrow ends, as `&mut [u8]`
    // requires. socket2's own `Read for &Socket` relies on the same promise.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    sock.recv_from(uninit)
}

// ----- the socket methods ----------------------------------------------------------

/// `loop.sock_recv(sock, nbytes)`: up to `nbytes`; empty at EOF.
pub fn sock_recv(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    nbytes: usize,
) -> LocalBoxFuture<'static, Result<Vec<u8>>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        until_done(lp, sock, Dir::Read, true, move |mut s| {
            let mut buf = vec![0u8; nbytes];
            let n = s.read(&mut buf)?;
            buf.truncate(n);
            Ok(Step::Done(buf))
        })
        .await
    })
}

/// `loop.sock_recv_into(sock, buf)`: `(buf, nbytes)`.
pub fn sock_recv_into(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    buf: Vec<u8>,
) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        let mut buf = Some(buf);
        until_done(lp, sock, Dir::Read, true, move |mut s| {
            let b = buf.as_mut().expect("the buffer is handed back only once");
            let n = s.read(b)?;
            Ok(Step::Done((buf.take().expect("present"), n)))
        })
        .await
    })
}

/// `loop.sock_recvfrom(sock, bufsize)`: `(data, address)`.
pub fn sock_recvfrom(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    bufsize: usize,
) -> LocalBoxFuture<'static, Result<(Vec<u8>, SockAddr)>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        until_done(lp, sock, Dir::Read, true, move |s| {
            let mut buf = vec![0u8; bufsize];
            let (n, addr) = recv_from_init(s, &mut buf)?;
            buf.truncate(n);
            Ok(Step::Done((buf, addr)))
        })
        .await
    })
}

/// `loop.sock_recvfrom_into(sock, buf, nbytes)`: `(buf, nbytes, address)`;
/// `nbytes == 0` means the whole buffer.
pub fn sock_recvfrom_into(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    buf: Vec<u8>,
    nbytes: usize,
) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize, SockAddr)>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        let nbytes = if nbytes == 0 { buf.len() } else { nbytes };
        if nbytes > buf.len() {
            return Err(Error::value(
                "nbytes is greater than the length of the buffer",
            ));
        }
        let mut buf = Some(buf);
        until_done(lp, sock, Dir::Read, true, move |s| {
            let b = buf.as_mut().expect("the buffer is handed back only once");
            let (n, addr) = recv_from_init(s, &mut b[..nbytes])?;
            Ok(Step::Done((buf.take().expect("present"), n, addr)))
        })
        .await
    })
}

/// `loop.sock_sendall(sock, data)`: sends until all of `data` is out.
pub fn sock_sendall(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    data: Vec<u8>,
) -> LocalBoxFuture<'static, Result<()>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        let mut sent = 0;
        until_done(lp, sock, Dir::Write, true, move |s| {
            sent += s.send(&data[sent..])?;
            Ok(if sent == data.len() {
                Step::Done(())
            } else {
                Step::Again
            })
        })
        .await
    })
}

/// `loop.sock_sendto(sock, data, address)`: bytes sent.
pub fn sock_sendto(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    data: Vec<u8>,
    address: SockAddr,
) -> LocalBoxFuture<'static, Result<usize>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        until_done(lp, sock, Dir::Write, true, move |s| {
            Ok(Step::Done(s.send_to(&data, &address)?))
        })
        .await
    })
}

/// `loop.sock_connect(sock, address)`: starts the connection, waits for
/// writability, then reads `SO_ERROR`.
pub fn sock_connect(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    address: SockAddr,
) -> LocalBoxFuture<'static, Result<()>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        match sock.connect(&address) {
            Ok(()) => return Ok(()),
            Err(e) if connect_pending(&e) => {}
            Err(e) => return Err(connect_failed(&e, &address)),
        }
        let addr = address.clone();
        until_done(lp, sock, Dir::Write, false, |s| match s.take_error()? {
            Some(e) => Err(e),
            None => Ok(Step::Done(())),
        })
        .await
        .map_err(|e| match e {
            Error::Io(io) => connect_failed(&io, &addr),
            other => other,
        })
    })
}

/// `loop.sock_accept(sock)`: a new non-blocking socket and the peer's address.
pub fn sock_accept(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        until_done(lp, sock, Dir::Read, true, |s| {
            let (conn, addr) = s.accept()?;
            conn.set_nonblocking(true)?;
            Ok(Step::Done((conn, addr)))
        })
        .await
    })
}
