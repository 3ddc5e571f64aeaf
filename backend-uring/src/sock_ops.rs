//! The `sock_*` methods as io_uring operations (asyncio's proactor
//! `sock_recv`, `sock_sendall`, `sock_connect`, `sock_accept`).
//!
//! `sock_sendall` and `sock_connect` submit one request whose memory (the
//! data, the address) moves into the driver with it, and await its
//! completion. `sock_recv`, `sock_recv_into` and `sock_accept` await a poll
//! request and then receive or accept themselves (see [`when_readable`]).
//!
//! # Cancellation
//! Dropping the future (cancelling the task awaiting it) asks the kernel to
//! cancel the request; the memory stays with the driver until the request's
//! completion arrives. A cancelled `sock_sendall` may have sent part of its
//! data, as on every backend; a cancelled receive or accept never took
//! anything.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types};
use loop_api::events::AbstractEventLoop;
use loop_api::selector_events::{check_nonblocking, connect_failed};
use loop_api::Result;
use socket2::{SockAddr, Socket};

use crate::ops::{Completion, Keep, OpId, Owner};
use crate::UringEventLoop;

/// Where one operation's completion lands.
#[derive(Default)]
struct OneShot {
    done: Cell<Option<(i32, Keep)>>,
    waker: RefCell<Option<Waker>>,
}

impl Owner for OneShot {
    fn complete(self: Rc<Self>, c: Completion) {
        self.done
            .set(Some((c.res, c.keep.unwrap_or(Keep::Nothing))));
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// One operation, awaited: its result (`-errno` on failure) and its memory.
struct OpFuture {
    lp: Rc<UringEventLoop>,
    id: Option<OpId>,
    state: Rc<OneShot>,
}

impl OpFuture {
    /// Submits `entry` with `keep`.
    ///
    /// # Safety
    /// As [`crate::driver::UringDriver::submit`]: `entry` points only into
    /// `keep`'s heap memory.
    unsafe fn submit(
        lp: &Rc<UringEventLoop>,
        entry: io_uring::squeue::Entry,
        keep: Keep,
    ) -> Result<OpFuture> {
        let state = Rc::new(OneShot::default());
        let owner: Rc<dyn Owner> = state.clone();
        // SAFETY: the caller's promise, passed on.
        let id = lp.with_driver(|d| unsafe { d.submit(entry, keep, owner, 0) })?;
        Ok(OpFuture {
            lp: lp.clone(),
            id: Some(id),
            state,
        })
    }
}

impl Future for OpFuture {
    type Output = (i32, Keep);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, Keep)> {
        if let Some(r) = self.state.done.take() {
            self.id = None;
            return Poll::Ready(r);
        }
        *self.state.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // The driver keeps the memory until the cancelled request's
            // completion; if the driver is busy (we are dropped from inside
            // it, as the loop closes) it is cancelling everything anyway.
            let _ = self.lp.try_with_driver(|d| d.cancel(id));
        }
    }
}

fn os_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

/// asyncio's checks before a socket operation.
fn check(lp: &UringEventLoop, sock: &Socket) -> Result<()> {
    lp._ensure_fd_no_transport(sock.as_raw_fd())?;
    check_nonblocking(sock)
}

/// Waits, with a poll request, until `sock` is readable. Cancelling it
/// consumes nothing.
async fn readable(lp: &Rc<UringEventLoop>, sock: &Socket) -> Result<()> {
    let entry = opcode::PollAdd::new(types::Fd(sock.as_raw_fd()), libc::POLLIN as u32).build();
    // SAFETY: a poll request carries no pointer into our memory.
    let (res, _) = unsafe { OpFuture::submit(lp, entry, Keep::Nothing)? }.await;
    if res < 0 {
        return Err(os_error(res).into());
    }
    Ok(())
}

/// Runs `attempt` (a non-blocking call) until it does not say
/// `WouldBlock`, waiting for readability in between: receives and accepts
/// wait for readiness and then take the data or the connection themselves,
/// so that cancelling one (dropping its future) never loses what arrived
/// (a completed receive request would have consumed it).
async fn when_readable<T>(
    lp: &Rc<UringEventLoop>,
    sock: &Socket,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> Result<T> {
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
        readable(lp, sock).await?;
    }
}

/// `sock_recv`: up to `nbytes`; empty at EOF.
pub(crate) async fn sock_recv(
    lp: Rc<UringEventLoop>,
    sock: Rc<Socket>,
    nbytes: usize,
) -> Result<Vec<u8>> {
    check(&lp, &sock)?;
    let mut buf = vec![0u8; nbytes];
    let n = when_readable(&lp, &sock, || (&*sock).read(&mut buf)).await?;
    buf.truncate(n);
    Ok(buf)
}

/// `sock_recv_into`: `(buf, nbytes)`.
pub(crate) async fn sock_recv_into(
    lp: Rc<UringEventLoop>,
    sock: Rc<Socket>,
    mut buf: Vec<u8>,
) -> Result<(Vec<u8>, usize)> {
    check(&lp, &sock)?;
    let n = when_readable(&lp, &sock, || (&*sock).read(&mut buf)).await?;
    Ok((buf, n))
}

/// `sock_sendall`: sends until all of `data` is out.
pub(crate) async fn sock_sendall(
    lp: Rc<UringEventLoop>,
    sock: Rc<Socket>,
    data: Vec<u8>,
) -> Result<()> {
    check(&lp, &sock)?;
    let mut data = data;
    let mut sent = 0;
    while sent < data.len() {
        let left = (data.len() - sent).min(u32::MAX as usize) as u32;
        // SAFETY (pointer arithmetic): `sent < data.len()`.
        let ptr = unsafe { data.as_ptr().add(sent) };
        let entry = opcode::Send::new(types::Fd(sock.as_raw_fd()), ptr, left)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the request reads from `data`'s heap allocation, which
        // the driver keeps until the completion.
        let (res, keep) = unsafe { OpFuture::submit(&lp, entry, Keep::Buf(data))? }.await;
        let Keep::Buf(d) = keep else {
            unreachable!("submitted with a buffer")
        };
        data = d;
        if res < 0 {
            let e = os_error(res);
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e.into());
        }
        sent += res as usize;
    }
    Ok(())
}

/// `sock_connect`: connects to `address`.
pub(crate) async fn sock_connect(
    lp: Rc<UringEventLoop>,
    sock: Rc<Socket>,
    address: SockAddr,
) -> Result<()> {
    check(&lp, &sock)?;
    let addr = Box::new(address);
    let entry = opcode::Connect::new(
        types::Fd(sock.as_raw_fd()),
        addr.as_ptr().cast(),
        addr.len(),
    )
    .build();
    // SAFETY: the request reads the address from the box, which the driver
    // keeps until the completion.
    let (res, keep) = unsafe { OpFuture::submit(&lp, entry, Keep::Addr(addr))? }.await;
    if res < 0 {
        let Keep::Addr(addr) = keep else {
            unreachable!("submitted with an address")
        };
        return Err(connect_failed(&os_error(res), &addr));
    }
    Ok(())
}

/// `sock_accept`: a new non-blocking socket and the peer's address.
pub(crate) async fn sock_accept(
    lp: Rc<UringEventLoop>,
    sock: Rc<Socket>,
) -> Result<(Socket, SockAddr)> {
    check(&lp, &sock)?;
    let (conn, addr) = when_readable(&lp, &sock, || sock.accept()).await?;
    conn.set_nonblocking(true)?;
    Ok((conn, addr))
}
