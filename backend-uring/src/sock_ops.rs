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

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{opcode, squeue, types};
use loop_api::base_events::sockets::{check_nonblocking, connect_failed};
use loop_api::base_events::BaseLoop;
use loop_api::proactor_events::ops::OpFuture;
use loop_api::Result;
use socket2::{SockAddr, Socket};

use crate::ops::Keep;
use crate::UringEventLoop;

/// Submits `entry` with `keep` and awaits its completion: the result
/// (`-errno` on failure) and the memory back. Dropping the future cancels
/// the request; the driver keeps the memory until its completion.
///
/// # Safety
/// As `UringDriver::submit`: `entry` points only into `keep`'s heap
/// memory.
async unsafe fn run(
    lp: &Rc<UringEventLoop>,
    entry: squeue::Entry,
    keep: Keep,
) -> Result<(i32, Keep)> {
    // SAFETY: the caller's promise, passed on.
    let op = OpFuture::start(lp, |d, owner| unsafe { d.submit(entry, keep, owner, 0) })?;
    let c = op.await;
    Ok((c.res, c.keep.unwrap_or(Keep::Nothing)))
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
    let (res, _) = unsafe { run(lp, entry, Keep::Nothing) }.await?;
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
        let (res, keep) = unsafe { run(&lp, entry, Keep::Buf(data)) }.await?;
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
    let (res, keep) = unsafe { run(&lp, entry, Keep::Addr(addr)) }.await?;
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
