//! The backend contract: what an OS mechanism supplies to the generic loop.
//!
//! [`BaseEventLoop`] owns everything that is not
//! the OS: the ready queue, timers, tasks, the executor, signals, error
//! handling, the `create_*` methods, servers and the transports' logic. A
//! [`Driver`] is the one way a backend plugs in, as mio's `sys` layer and
//! compio's driver are: `pub type MyLoop = BaseEventLoop<MyDriver>`.
//!
//! # What every driver supplies
//! - [`Driver::poll`]: wait for the OS up to a timeout and report what
//!   happened. `EINTR` comes back as `ErrorKind::Interrupted`, and the
//!   loop polls again.
//! - [`Driver::notifier`]: a `Send + Sync` handle that makes a blocked
//!   `poll` return. A notification sent before `poll` starts is not lost:
//!   that `poll` returns at once. Spurious returns are allowed.
//! - [`Driver::set_interest`]: readiness per descriptor, level-triggered as
//!   a selector's is: while a descriptor stays readable, every `poll`
//!   reports it. A driver without readiness returns
//!   [`Error::NotSupported`](crate::Error::NotSupported), and `add_reader`
//!   fails with it.
//!
//! # What a completion driver adds
//! A completion-based driver (io_uring, IOCP) runs operations whose memory
//! it owns until the kernel is done with them
//! ([`crate::proactor_events::ops`] is the shared machinery). The loop core
//! does not see them: during `poll` the driver hands each completion to
//! the operation's owner, which only records it and schedules itself on
//! the ready queue (no user code runs inside `poll`). Such a driver plugs
//! its transports and socket operations into the loop through its
//! [`Driver::Io`], an [`IoModel`] (asyncio's `_make_socket_transport` and
//! friends, which `ProactorEventLoop` overrides); a readiness driver names
//! the readiness model, [`SelectorIo`](crate::selector_events::SelectorIo),
//! and writes none of them.
//!
//! # Time
//! The loop's clock is the process's monotonic clock unless
//! [`Driver::clock`] hands it a [`VirtualClock`]: then time moves only when
//! the driver moves it ([`crate::test_utils::TestDriver`] does so when the
//! loop would block).

use std::cell::Cell;
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
use crate::protocols::{DatagramProtocol, Protocol, ProtocolFactory};
use crate::transports::{DatagramTransport, Transport};

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

/// A loop clock that moves only when its driver moves it, in seconds.
///
/// Before each `poll` the loop leaves the deadline it waits for here
/// ([`VirtualClock::deadline`]): the earliest timer's, or none when it
/// waits for nothing but I/O or does not wait at all.
#[derive(Debug, Default)]
pub struct VirtualClock {
    now: Cell<f64>,
    deadline: Cell<Option<f64>>,
}

impl VirtualClock {
    /// A clock at `start` seconds.
    pub fn new(start: f64) -> Rc<Self> {
        Rc::new(VirtualClock {
            now: Cell::new(start),
            deadline: Cell::new(None),
        })
    }

    /// The time now.
    pub fn now(&self) -> f64 {
        self.now.get()
    }

    /// Moves the clock forward by `seconds` (never back).
    pub fn advance(&self, seconds: f64) {
        if seconds > 0.0 {
            self.now.set(self.now.get() + seconds);
        }
    }

    /// Moves the clock to `when`, if that is later than now.
    pub fn advance_to(&self, when: f64) {
        if when > self.now.get() {
            self.now.set(when);
        }
    }

    /// The deadline of the timer the loop's current `poll` waits for.
    pub fn deadline(&self) -> Option<f64> {
        self.deadline.get()
    }

    /// Set by the loop before each `poll`.
    pub(crate) fn set_deadline(&self, when: Option<f64>) {
        self.deadline.set(when);
    }
}

/// An OS I/O mechanism the loop core runs on. See the module docs for the
/// contract.
pub trait Driver: Sized + 'static {
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

    /// Gives back what a burst of I/O made the driver's own stores grow to
    /// (operations in flight, per-descriptor state), as
    /// [`idle_memory`](crate::idle_memory) describes. The loop calls it when
    /// an iteration starts with nothing ready. The default keeps everything.
    fn trim(&mut self) {}

    /// The loop's clock: `None` (the default) for the process's monotonic
    /// clock, or a virtual one that this driver moves.
    fn clock(&self) -> Option<Rc<VirtualClock>> {
        None
    }

    /// How this driver's loop does socket I/O: transports, serving and
    /// the `sock_*` methods. A readiness driver names
    /// [`SelectorIo`](crate::selector_events::SelectorIo); a completion
    /// driver names its own type (often itself).
    type Io: IoModel<Self>;
}

/// How a loop does socket I/O (asyncio's split between `SelectorEventLoop`
/// and `ProactorEventLoop`): what `BaseEventLoop<D>` answers for asyncio's
/// private hooks (`_make_socket_transport`, `_start_serving`, ...) and the
/// `sock_*` methods. Readiness has one implementation for every driver,
/// [`SelectorIo`](crate::selector_events::SelectorIo); a completion driver
/// implements this for its own mechanism and hands what it does not do
/// better to `SelectorIo` (datagrams, say).
pub trait IoModel<D: Driver> {
    /// `_make_socket_transport`: wraps a connected stream socket in this
    /// loop's transport; the protocol's `connection_made` and then
    /// `waiter`'s result follow on the loop. The transport takes `sock`
    /// over, closes it when the connection is lost, and puts it in the
    /// blocking mode its I/O needs.
    fn make_socket_transport(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>>;

    /// `_make_datagram_transport`: wraps a datagram socket (connected to
    /// `address` if given), as for `make_socket_transport`.
    fn make_datagram_transport(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn DatagramProtocol>,
        address: Option<SockAddr>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn DatagramTransport>>;

    /// `_make_read_pipe_transport`: wraps the read end of a pipe (a FIFO,
    /// a socket or a character device) in this loop's read-pipe transport;
    /// `connection_made` and then `waiter`'s result follow on the loop.
    /// The transport takes `pipe` over and closes it when the connection
    /// is lost. Readiness loops use
    /// [`ReadPipeTransport`](crate::unix_events::ReadPipeTransport) on
    /// Unix; a loop that has no pipe transport returns
    /// [`Error::NotSupported`](crate::Error::NotSupported).
    fn make_read_pipe_transport(
        lp: &Rc<BaseEventLoop<D>>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>>;

    /// Whether this loop has pipe transports: `Err` (`NotSupported`) if
    /// not, so that `subprocess_exec` refuses before it spawns anything
    /// (asyncio's `SelectorEventLoop` on Windows has no subprocesses).
    fn check_pipes() -> Result<()> {
        Ok(())
    }

    /// `_make_write_pipe_transport`: as
    /// [`make_read_pipe_transport`](IoModel::make_read_pipe_transport),
    /// for the write end.
    fn make_write_pipe_transport(
        lp: &Rc<BaseEventLoop<D>>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>>;

    /// `_start_serving`: accepts connections on the listening `sock` for
    /// `server`, up to `backlog` per wakeup where that means something.
    fn start_serving(
        lp: &Rc<BaseEventLoop<D>>,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()>;

    /// `_stop_serving`: stops accepting on `sock` and shuts it down, so
    /// that new connections are refused even while someone holds a clone.
    fn stop_serving(lp: &Rc<BaseEventLoop<D>>, sock: &Socket);

    /// `sock_recv`.
    fn sock_recv(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>>;

    /// `sock_recv_into`.
    fn sock_recv_into(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>>;

    /// `sock_recvfrom`.
    fn sock_recvfrom(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        bufsize: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, SockAddr)>>;

    /// `sock_recvfrom_into`.
    fn sock_recvfrom_into(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize, SockAddr)>>;

    /// `sock_sendall`.
    fn sock_sendall(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<()>>;

    /// `sock_sendto`.
    fn sock_sendto(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<usize>>;

    /// `sock_connect`.
    fn sock_connect(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>>;

    /// `sock_accept`.
    fn sock_accept(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
    ) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>>;

    /// `_sock_sendfile_native`: the zero-copy path of `sock_sendfile` and
    /// of a transport's `_sendfile_native`, for a socket already checked
    /// and flushed; `SendfileNotAvailable` when this file and socket
    /// cannot use it (the caller may then fall back). Readiness loops use
    /// `sendfile(2)` on writability.
    fn sock_sendfile_native(
        lp: &Rc<BaseEventLoop<D>>,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>>;
}
