//! The backend contract: what an OS mechanism supplies to the generic loop.
//!
//! [`crate::base_events::BaseEventLoop`] owns the ready queue, timers,
//! tasks, executor, signals and error handling; a [`Driver`] only waits for
//! the OS and reports what happened. This mirrors asyncio's `BaseEventLoop`
//! over a `selectors` selector or an IOCP proactor, and compio's one driver
//! contract over epoll, io_uring and IOCP.
//!
//! # Readiness
//! [`Driver::set_interest`] declares, per descriptor, whether the loop wants
//! readable and/or writable events; interest is level-triggered, as a
//! selector's is: while a descriptor stays readable, every `poll` reports it.
//! A driver without readiness (a pure proactor) returns
//! [`Error::NotSupported`](crate::Error::NotSupported) and `add_reader` fails
//! with it.
//!
//! # Waking
//! [`Driver::notifier`] is a `Send + Sync` handle that makes a blocked
//! [`Driver::poll`] return. A notification sent before `poll` starts is not
//! lost: that `poll` returns at once. Spurious returns are allowed.
//!
//! # Completions
//! A completion-based driver (io_uring, IOCP) also runs operations whose
//! buffers it owns until the kernel is done with them. The loop core does
//! not see them: the driver hands each completion to the operation's owner
//! during `poll`, and the owner only records it and schedules itself on the
//! ready queue (no user code runs inside `poll`). Such a driver plugs its
//! own transports and socket operations into the loop through the
//! associated functions below (asyncio's `_make_socket_transport` and
//! friends, overridden by `ProactorEventLoop`); their defaults are the
//! readiness ones of [`crate::selector_events`].

use std::fs::File;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockAddr, Socket};

use crate::base_events::server::Server;
use crate::base_events::BaseEventLoop;
use crate::events::{LocalBoxFuture, RawFd};
use crate::exceptions::Result;
use crate::futures::Future;
use crate::protocols::{Protocol, ProtocolFactory};
use crate::transports::Transport;

/// One readiness event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoEvent {
    /// The descriptor.
    pub fd: RawFd,
    /// Readable (or hung up / in error: reading will not block).
    pub readable: bool,
    /// Writable (or in error).
    pub writable: bool,
}

/// Wakes a driver blocked in `poll`, from any thread.
pub trait Notify: Send + Sync {
    /// Makes the current or next `poll` return.
    fn notify(&self) -> io::Result<()>;
}

/// An OS I/O mechanism the loop core runs on.
pub trait Driver: 'static {
    /// The backend's name, as `AbstractEventLoop::backend_name` reports it.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` (`None`: until an event or a notification) and
    /// appends what happened to `events`. `EINTR` is returned as
    /// `ErrorKind::Interrupted`; the loop retries.
    fn poll(&mut self, timeout: Option<Duration>, events: &mut Vec<IoEvent>) -> io::Result<()>;

    /// The cross-thread wakeup.
    fn notifier(&self) -> Arc<dyn Notify>;

    /// Sets what the loop watches `fd` for; both false stops watching it.
    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<()>;

    /// Hands the OS what the driver has queued and not yet submitted. The
    /// loop calls it when it closes, since no `poll` follows: a driver that
    /// batches requests (io_uring's poll removals, which hold a reference to
    /// the file until processed) must not keep sockets alive past `close`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    // ----- the backend's transports and socket operations ----------------------
    //
    // What `BaseEventLoop<Self>` answers for asyncio's private hooks and the
    // `sock_*` methods. The defaults are readiness-based; a completion-based
    // driver overrides them with operations on its own mechanism.

    /// `_make_socket_transport`: see
    /// [`AbstractEventLoop::_make_socket_transport`](crate::events::AbstractEventLoop::_make_socket_transport).
    fn make_socket_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>>
    where
        Self: Sized,
    {
        crate::selector_events::socket_transport::SocketTransport::create(
            lp.clone(),
            sock,
            protocol,
            waiter,
            server,
        )
    }

    /// `_start_serving`: accept connections on `sock` for `server`.
    fn start_serving(
        lp: &Rc<BaseEventLoop<Self>>,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()>
    where
        Self: Sized,
    {
        crate::selector_events::accept::start_serving(
            lp.clone(),
            protocol_factory,
            sock,
            server,
            backlog,
        )
    }

    /// `_stop_serving`: stop accepting on `sock` and shut it down.
    fn stop_serving(lp: &Rc<BaseEventLoop<Self>>, sock: &Socket)
    where
        Self: Sized,
    {
        let lp: crate::events::Loop = lp.clone();
        crate::selector_events::accept::stop_serving(&lp, sock)
    }

    /// `sock_recv`.
    fn sock_recv(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>>
    where
        Self: Sized,
    {
        crate::selector_events::sock_recv(&(lp.clone() as _), sock, nbytes)
    }

    /// `sock_recv_into`.
    fn sock_recv_into(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>>
    where
        Self: Sized,
    {
        crate::selector_events::sock_recv_into(&(lp.clone() as _), sock, buf)
    }

    /// `sock_sendall`.
    fn sock_sendall(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<()>>
    where
        Self: Sized,
    {
        crate::selector_events::sock_sendall(&(lp.clone() as _), sock, data)
    }

    /// `sock_connect`.
    fn sock_connect(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>>
    where
        Self: Sized,
    {
        crate::selector_events::sock_connect(&(lp.clone() as _), sock, address)
    }

    /// `_sock_sendfile_native`: the zero-copy path of `sock_sendfile` and
    /// of a transport's `_sendfile_native` (see
    /// [`AbstractEventLoop::_sock_sendfile_native`](crate::events::AbstractEventLoop::_sock_sendfile_native)).
    fn sock_sendfile_native(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>>
    where
        Self: Sized,
    {
        crate::selector_events::sendfile::sock_sendfile_native(
            lp.clone(),
            sock,
            file,
            offset,
            count,
        )
    }

    /// `sock_accept`.
    fn sock_accept(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
    ) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>>
    where
        Self: Sized,
    {
        crate::selector_events::sock_accept(&(lp.clone() as _), sock)
    }
}
