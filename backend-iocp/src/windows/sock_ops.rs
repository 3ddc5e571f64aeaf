//! The `sock_*` methods as overlapped operations (asyncio's
//! `ProactorEventLoop.sock_recv`, `sock_sendall`, `sock_connect`,
//! `sock_accept`).
//!
//! * `sock_sendall` is `WSASend`, re-issued for the rest after a partial
//!   send; the data moves into the driver with each send and comes back
//!   with its completion.
//! * `sock_connect` is `ConnectEx` (the socket is bound to the unspecified
//!   address of its family first if it is not bound yet), then
//!   `SO_UPDATE_CONNECT_CONTEXT`.
//! * `sock_accept` is `AcceptEx` into a fresh socket of the listener's
//!   family, then `SO_UPDATE_ACCEPT_CONTEXT`; the peer's address comes
//!   from `GetAcceptExSockaddrs`.
//! * `sock_recv` and `sock_recv_into` receive with a non-blocking `recv`;
//!   when there is nothing to read they wait with a *zero-byte* `WSARecv`,
//!   which completes once data, EOF or an error is there and takes nothing,
//!   and then receive again.
//!
//! # Cancellation
//! Dropping the future (cancelling the task awaiting it) cancels its
//! operation with `CancelIoEx`; the operation's memory stays with the
//! driver until its packet arrives. An operation can finish before the
//! cancellation reaches it, so:
//!
//! * a cancelled receive never loses data: what it waited with was a
//!   zero-byte receive, which consumed nothing (this is why receives do not
//!   hand the kernel their buffer);
//! * a cancelled `sock_accept` whose `AcceptEx` completed anyway does not
//!   lose the connection: it is kept, with the listener it came from, and
//!   the next `sock_accept` on that listener returns it (one pending
//!   already is woken for it);
//! * a cancelled `sock_sendall` may have sent part of its data, as on every
//!   backend.
//!
//! # Where the readiness versions still serve
//! Sockets the overlapped operations do not fit go to the default,
//! readiness-based versions (`loop_api::selector_events`), which wait with
//! `add_reader`/`add_writer` on AFD polling: non-stream sockets for
//! receives, sends and connects (a zero-byte receive on a datagram socket
//! would take, and truncate, a datagram; `ConnectEx` is TCP-only); non-IP
//! listeners; and sockets that cannot be associated with this loop's port
//! because they already are with another's (a socket used by a loop closed
//! since, say).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::windows::io::AsRawSocket;
use std::pin::Pin;
use std::ptr;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use loop_api::base_events::sockets::{check_nonblocking, connect_failed, is_retry};
use loop_api::base_events::BaseLoop;
use loop_api::selector_events;
use loop_api::{Error, Result};
use socket2::{Domain, SockAddr, Socket, Type};
use windows_sys::Win32::Foundation::ERROR_NETNAME_DELETED;
use windows_sys::Win32::Networking::WinSock::{
    setsockopt, WSAGetLastError, SOCKET, SOCKET_ERROR, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT,
    SO_UPDATE_CONNECT_CONTEXT, WSAEINVAL,
};

use super::driver::{IocpDriver, SubmitError};
use super::ops::{self, Completion, Request, ACCEPT_ADDR_LEN};
use super::IocpEventLoop;

/// The socket's handle, as Winsock calls take it.
pub(crate) fn raw(sock: &Socket) -> SOCKET {
    sock.as_raw_socket() as SOCKET
}

// ----- one operation, awaited ------------------------------------------------------

/// The shared awaited operation, on this driver.
pub(crate) type OpFuture = loop_api::proactor_events::ops::OpFuture<IocpDriver>;

/// Starts `request` on `socket` and awaits it.
pub(crate) fn start(
    lp: &Rc<IocpEventLoop>,
    socket: SOCKET,
    request: Request,
) -> std::result::Result<OpFuture, SubmitError> {
    OpFuture::start(lp, |d, owner| d.submit(socket, request, owner, 0))
}

/// An accept nobody awaits any more that took a connection anyway: kept,
/// with (a weak reference to) its listener, for the next `sock_accept` on
/// it; dropped (closed) if the listener is gone.
fn salvage_accept(listener: Weak<Socket>, stash: Rc<LateAccepts>, c: Completion) {
    let (Ok(_), Request::Accept { conn, addrs }) = (c.result, c.request) else {
        return;
    };
    let Some(l) = listener.upgrade() else {
        return; // the listener is gone: the connection closes
    };
    if let Ok((conn, peer)) = finish_accept(&l, conn, &addrs) {
        stash.push(&listener, conn, peer);
    }
}

// ----- late accepts ----------------------------------------------------------------

/// Connections `AcceptEx` took for `sock_accept`s that were cancelled too
/// late, each with (a weak reference to) its listener. A listener is known
/// by its `Rc`, not its handle value: values are reused, and a `Weak` keeps
/// the `Rc`'s allocation, so no other listener can ever match it. Entries
/// whose listener is gone are dropped (closed).
#[derive(Default)]
pub(crate) struct LateAccepts {
    conns: RefCell<Vec<(Weak<Socket>, Socket, SockAddr)>>,
    /// `sock_accept`s waiting, to wake when a connection is kept.
    waiters: RefCell<HashMap<u64, Waker>>,
    next_waiter: Cell<u64>,
}

impl LateAccepts {
    fn push(&self, listener: &Weak<Socket>, conn: Socket, peer: SockAddr) {
        {
            let mut conns = self.conns.borrow_mut();
            conns.retain(|(l, _, _)| l.strong_count() > 0);
            conns.push((listener.clone(), conn, peer));
        }
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters.into_values() {
            w.wake();
        }
    }

    /// The oldest connection kept for `listener`.
    fn take(&self, listener: &Rc<Socket>) -> Option<(Socket, SockAddr)> {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|(l, _, _)| l.strong_count() > 0);
        let i = conns
            .iter()
            .position(|(l, _, _)| ptr::eq(l.as_ptr(), Rc::as_ptr(listener)))?;
        let (_, conn, peer) = conns.remove(i);
        Some((conn, peer))
    }
}

/// A `sock_accept` registered with [`LateAccepts`]; unregisters on drop.
struct Waiting {
    stash: Rc<LateAccepts>,
    key: u64,
}

impl Waiting {
    fn new(stash: &Rc<LateAccepts>) -> Waiting {
        let key = stash.next_waiter.get();
        stash.next_waiter.set(key.wrapping_add(1));
        Waiting {
            stash: stash.clone(),
            key,
        }
    }

    fn register(&self, waker: &Waker) {
        self.stash
            .waiters
            .borrow_mut()
            .insert(self.key, waker.clone());
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.stash.waiters.borrow_mut().remove(&self.key);
    }
}

// ----- helpers ----------------------------------------------------------------------

/// asyncio's checks before a socket operation (the same the readiness
/// versions make).
fn check(lp: &IocpEventLoop, sock: &Socket) -> Result<()> {
    lp._ensure_fd_no_transport(sock.as_raw_socket())?;
    check_nonblocking(sock)
}

/// Whether overlapped operations on `sock` complete on this loop's port:
/// `false` when the socket cannot be associated with it (another port has
/// it, or the association failed: the readiness version then reports
/// whatever is wrong with the socket).
pub(crate) fn overlapped_ok(lp: &IocpEventLoop, sock: &Socket) -> Result<bool> {
    match lp.with_driver(|d| d.associate(raw(sock))) {
        Ok(()) => Ok(true),
        Err(SubmitError::Closed) => Err(Error::loop_closed()),
        Err(SubmitError::ForeignPort | SubmitError::Io(_)) => Ok(false),
    }
}

fn is_stream(sock: &Socket) -> bool {
    matches!(sock.r#type(), Ok(t) if t == Type::STREAM)
}

fn last_wsa_error() -> io::Error {
    // SAFETY: reads this thread's last Winsock error; no preconditions.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// Runs `attempt` (a non-blocking receive) until it does not say
/// `WouldBlock`, waiting with a zero-byte `WSARecv` in between.
async fn when_readable<T>(
    lp: &Rc<IocpEventLoop>,
    sock: &Socket,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> Result<T> {
    let mut waited_error: Option<io::Error> = None;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if is_retry(&e) => {
                // The wait ended in an error, yet there is nothing to read:
                // report the wait's error rather than wait again for ever.
                if let Some(e) = waited_error.take() {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        let readiness = Request::Recv { buf: Vec::new() };
        let c = start(lp, raw(sock), readiness)?.await;
        waited_error = c.result.err();
    }
}

// ----- the socket methods ------------------------------------------------------------

/// `sock_recv`: up to `nbytes`; empty at EOF.
pub(crate) async fn sock_recv(
    lp: Rc<IocpEventLoop>,
    sock: Rc<Socket>,
    nbytes: usize,
) -> Result<Vec<u8>> {
    check(&lp, &sock)?;
    if !is_stream(&sock) || !overlapped_ok(&lp, &sock)? {
        return selector_events::sock_recv(lp, sock, nbytes).await;
    }
    let mut buf = vec![0u8; nbytes];
    let n = when_readable(&lp, &sock, || (&*sock).read(&mut buf)).await?;
    buf.truncate(n);
    Ok(buf)
}

/// `sock_recv_into`: `(buf, nbytes)`.
pub(crate) async fn sock_recv_into(
    lp: Rc<IocpEventLoop>,
    sock: Rc<Socket>,
    mut buf: Vec<u8>,
) -> Result<(Vec<u8>, usize)> {
    check(&lp, &sock)?;
    if !is_stream(&sock) || !overlapped_ok(&lp, &sock)? {
        return selector_events::sock_recv_into(lp, sock, buf).await;
    }
    let n = when_readable(&lp, &sock, || (&*sock).read(&mut buf)).await?;
    Ok((buf, n))
}

/// `sock_sendall`: sends until all of `data` is out.
pub(crate) async fn sock_sendall(
    lp: Rc<IocpEventLoop>,
    sock: Rc<Socket>,
    data: Vec<u8>,
) -> Result<()> {
    check(&lp, &sock)?;
    if !is_stream(&sock) || !overlapped_ok(&lp, &sock)? {
        return selector_events::sock_sendall(lp, sock, data).await;
    }
    let mut data = data;
    let mut sent = 0;
    while sent < data.len() {
        let send = Request::Send {
            chunks: VecDeque::from([data]),
            head: sent,
        };
        let c = start(&lp, raw(&sock), send)?.await;
        let Request::Send { mut chunks, .. } = c.request else {
            unreachable!("a send completes with its send request")
        };
        data = chunks.pop_front().expect("the one chunk comes back");
        match c.result {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => sent += n,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `sock_connect`: connects to `address`.
pub(crate) async fn sock_connect(
    lp: Rc<IocpEventLoop>,
    sock: Rc<Socket>,
    address: SockAddr,
) -> Result<()> {
    check(&lp, &sock)?;
    let inet = address.is_ipv4() || address.is_ipv6();
    if !inet || !is_stream(&sock) || !overlapped_ok(&lp, &sock)? {
        return selector_events::sock_connect(lp, sock, address).await;
    }
    ensure_bound(&sock, &address).map_err(|e| connect_failed(&e, &address))?;
    let connect = Request::Connect {
        addr: address.clone(),
    };
    let c = match start(&lp, raw(&sock), connect) {
        Ok(op) => op.await,
        Err(SubmitError::Io(e)) => return Err(connect_failed(&e, &address)),
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = c.result {
        return Err(connect_failed(&e, &address));
    }
    // SAFETY: `sock` is a live socket; no option value is passed.
    let r = unsafe {
        setsockopt(
            raw(&sock),
            SOL_SOCKET,
            SO_UPDATE_CONNECT_CONTEXT,
            ptr::null(),
            0,
        )
    };
    if r == SOCKET_ERROR {
        return Err(last_wsa_error().into());
    }
    Ok(())
}

/// Binds `sock` to the unspecified address of `to`'s family unless it is
/// bound already: `ConnectEx` requires a bound socket.
fn ensure_bound(sock: &Socket, to: &SockAddr) -> io::Result<()> {
    match sock.local_addr() {
        Ok(_) => Ok(()),
        // An unbound socket has no name yet.
        Err(e) if e.raw_os_error() == Some(WSAEINVAL) => {
            let any: SocketAddr = if to.is_ipv6() {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            sock.bind(&any.into())
        }
        Err(e) => Err(e),
    }
}

/// What a pending `sock_accept` got first.
enum Accepted {
    Late((Socket, SockAddr)),
    Op(Completion),
}

/// `sock_accept`: a new non-blocking socket and the peer's address.
pub(crate) async fn sock_accept(
    lp: Rc<IocpEventLoop>,
    sock: Rc<Socket>,
) -> Result<(Socket, SockAddr)> {
    check(&lp, &sock)?;
    let domain = match sock.local_addr() {
        Ok(a) if a.is_ipv4() => Some(Domain::IPV4),
        Ok(a) if a.is_ipv6() => Some(Domain::IPV6),
        _ => None,
    };
    let domain = match domain {
        Some(d) if is_stream(&sock) && overlapped_ok(&lp, &sock)? => d,
        _ => return selector_events::sock_accept(lp, sock).await,
    };
    let stash = lp.with_driver(|d| d.late_accepts.clone());
    loop {
        if let Some(got) = stash.take(&sock) {
            return Ok(got);
        }
        let conn = Socket::new(domain, Type::STREAM, None)?;
        let (listener, late) = (Rc::downgrade(&sock), stash.clone());
        let mut op = start(&lp, raw(&sock), Request::accept(conn))?
            .salvage_with(move |c| salvage_accept(listener, late, c));
        let waiting = Waiting::new(&stash);
        let got = poll_fn(|cx| {
            // A connection kept from a cancelled accept is older than any
            // this accept may get: it goes first.
            if let Some(got) = stash.take(&sock) {
                return Poll::Ready(Accepted::Late(got));
            }
            match Pin::new(&mut op).poll(cx) {
                Poll::Ready(c) => Poll::Ready(Accepted::Op(c)),
                Poll::Pending => {
                    waiting.register(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await;
        drop(waiting);
        let c = match got {
            Accepted::Late(got) => {
                drop(op); // cancelled; a connection it takes anyway is kept
                return Ok(got);
            }
            Accepted::Op(c) => c,
        };
        match c.result {
            Ok(_) => {
                let Request::Accept { conn, addrs } = c.request else {
                    unreachable!("an accept completes with its accept request")
                };
                return Ok(finish_accept(&sock, conn, &addrs)?);
            }
            // The peer reset the connection before it was accepted: wait
            // for the next one, as accept() never reports such a connection.
            Err(e) if e.raw_os_error() == Some(ERROR_NETNAME_DELETED as i32) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Completes a connection `AcceptEx` took on `listener`: inherits the
/// listener's properties (`SO_UPDATE_ACCEPT_CONTEXT`, which also makes
/// `getpeername` and `shutdown` work), goes non-blocking, and reads the
/// peer's address from the accept buffer.
pub(crate) fn finish_accept(
    listener: &Socket,
    conn: Socket,
    addrs: &[u8; 2 * ACCEPT_ADDR_LEN as usize],
) -> io::Result<(Socket, SockAddr)> {
    let l = raw(listener);
    // SAFETY: the option value is the listener's handle, live for the
    // call, with its exact size.
    let r = unsafe {
        setsockopt(
            raw(&conn),
            SOL_SOCKET,
            SO_UPDATE_ACCEPT_CONTEXT,
            (&raw const l).cast(),
            size_of::<SOCKET>() as i32,
        )
    };
    if r == SOCKET_ERROR {
        return Err(last_wsa_error());
    }
    conn.set_nonblocking(true)?;
    let peer = match ops::accepted_peer(l, addrs) {
        Ok(p) => p,
        Err(_) => conn.peer_addr()?,
    };
    Ok((conn, peer))
}
