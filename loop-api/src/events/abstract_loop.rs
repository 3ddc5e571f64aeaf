//! `AbstractEventLoop`: every method of asyncio's event loop, object-safe.
//!
//! # The Rust shape
//! - `callback, *args` is one closure: [`Callback`] (runs once) or
//!   [`RepeatCallback`] (readers, writers, signal handlers).
//! - Exceptions are `Err(`[`Error`]`)`. A panic in a callback is caught and
//!   handed to the exception handler; the loop goes on.
//! - Coroutine methods (`create_connection`, `sock_recv`, ...) return a
//!   boxed future; buffers are owned (`Vec<u8>` in, `Vec<u8>` back) so that
//!   completion-based backends can hand them to the kernel.
//! - Methods generic over a result type (`create_future`, `create_task`,
//!   `run_until_complete`, `run_in_executor`) cannot live on an
//!   object-safe trait; they are in [`EventLoopExt`], implemented for every
//!   loop, `dyn AbstractEventLoop` included, on top of the object-safe
//!   hooks here.
//! - Transports take the socket they are given over, and close it when
//!   the connection is lost: keep no other clone of an `Rc<Socket>` passed
//!   in, or the descriptor outlives the transport.
//! - A method a loop does not build yet (TLS, pipes, subprocesses) returns
//!   [`Error::NotImplemented`]; one its OS cannot offer returns
//!   [`Error::NotSupported`].

use std::any::Any;
use std::ffi::OsString;
use std::fs::File;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockAddr, Socket};

use super::options::*;
use super::{
    AbstractServer, Callback, ExceptionContext, ExceptionHandler, Handle, RawFd, RepeatCallback,
    SendCallback, TimerHandle,
};
use crate::base_events::server::Server;
use crate::contextvars::Context;
use crate::exceptions::{Error, Result};
use crate::executor::{self, Executor, Job};
use crate::futures::Future;
use crate::protocols::{
    DatagramProtocol, DatagramProtocolFactory, Protocol, ProtocolFactory, SubprocessProtocol,
    SubprocessProtocolFactory,
};
use crate::tasks::{Task, TaskFactory, TaskOptions};
use crate::transports::{BaseTransport, DatagramTransport, SubprocessTransport, Transport};

/// A boxed, non-`Send` future: what coroutine methods return.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// What `create_connection` and friends resolve to: `(transport, protocol)`.
pub type StreamPair = (Rc<dyn Transport>, Rc<dyn Protocol>);
/// What `create_datagram_endpoint` resolves to.
pub type DatagramPair = (Rc<dyn DatagramTransport>, Rc<dyn DatagramProtocol>);
/// What `subprocess_exec` / `subprocess_shell` resolve to.
pub type SubprocessPair = (Rc<dyn SubprocessTransport>, Rc<dyn SubprocessProtocol>);

/// A shared handle to a loop of any backend.
pub type Loop = Rc<dyn AbstractEventLoop>;

/// One step of a task, scheduled in the ready queue like a callback.
pub trait Step {
    /// Runs the step.
    fn run_step(self: Rc<Self>);
    /// What debug mode's slow-callback warning names.
    fn describe(&self) -> String {
        "<Task step>".to_string()
    }
}

/// The `Send` side of a loop: what other threads may call.
pub trait ThreadsafeCaller: Send + Sync {
    /// Schedules `callback` on the loop and wakes it. Never lost: a wakeup
    /// that races with the loop going to sleep still wakes it.
    fn call_soon_threadsafe(&self, callback: SendCallback) -> Result<()>;
    /// The loop's identity (as [`AbstractEventLoop::loop_id`]).
    fn loop_id(&self) -> u64;
}

/// A `Send + Sync` handle to a loop, for other threads.
#[derive(Clone)]
pub struct RemoteLoop(pub Arc<dyn ThreadsafeCaller>);

impl RemoteLoop {
    /// `loop.call_soon_threadsafe(callback)`.
    pub fn call_soon_threadsafe(&self, callback: impl FnOnce() + Send + 'static) -> Result<()> {
        self.0.call_soon_threadsafe(Box::new(callback))
    }

    /// Stops the loop from another thread (`call_soon_threadsafe(loop.stop)`).
    pub fn stop(&self) -> Result<()> {
        self.call_soon_threadsafe(|| {
            if let Some(lp) = super::_get_running_loop() {
                lp.stop();
            }
        })
    }

    /// The loop's identity.
    pub fn loop_id(&self) -> u64 {
        self.0.loop_id()
    }
}

fn not_implemented<T: 'static>(what: &'static str) -> LocalBoxFuture<'static, Result<T>> {
    Box::pin(async move { Err(Error::NotImplemented(what)) })
}

/// asyncio's event loop. See the module docs for how Python's shapes map to Rust.
pub trait AbstractEventLoop {
    // ----- identity --------------------------------------------------------

    /// A number unique to this loop in the process.
    fn loop_id(&self) -> u64;
    /// An `Rc` to this loop (for futures, tasks and servers that keep it).
    fn as_loop(&self) -> Loop;
    /// The backend's name: `"select"`, `"uring"`, `"iocp"`, ...
    fn backend_name(&self) -> &'static str;
    /// `self` as `Any`, to reach a backend's own type.
    fn as_any(&self) -> &dyn Any;

    // ----- running and stopping ---------------------------------------------

    /// Runs until [`stop`](AbstractEventLoop::stop) is called.
    fn run_forever(&self) -> Result<()>;
    /// Stops after the current iteration (before `run_forever`: the next
    /// run does one iteration).
    fn stop(&self);
    /// True while `run_forever` runs.
    fn is_running(&self) -> bool;
    /// True once closed.
    fn is_closed(&self) -> bool;
    /// Closes the loop: drops pending callbacks, shuts the default executor
    /// down without waiting. Idempotent; refuses a running loop. Transports
    /// still open are torn down (their protocols get `connection_lost(None)`,
    /// buffered data is dropped, sockets are closed): asyncio leaves that to
    /// the garbage collector, which Rust does not have.
    fn close(&self) -> Result<()>;
    /// asyncio finalizes open async generators here. Rust has no async
    /// generators: a stream is finalized when the task owning it is dropped,
    /// so this completes at once (it still refuses a closed loop).
    fn shutdown_asyncgens(&self) -> LocalBoxFuture<'static, Result<()>>;
    /// Shuts the default executor down, waiting for its threads up to
    /// `timeout` (`None`: no bound); past it, warns and returns.
    fn shutdown_default_executor(
        &self,
        timeout: Option<Duration>,
    ) -> LocalBoxFuture<'static, Result<()>>;

    // ----- scheduling ---------------------------------------------------------

    /// Schedules `callback` for the next iteration, FIFO; in `context`, or a
    /// copy of the current context.
    fn call_soon(&self, callback: Callback, context: Option<Context>) -> Result<Handle>;
    /// Schedules `callback` after `delay` seconds (zero or negative: due at once,
    /// still a [`TimerHandle`]).
    fn call_later(
        &self,
        delay: f64,
        callback: Callback,
        context: Option<Context>,
    ) -> Result<TimerHandle>;
    /// Schedules `callback` at loop time `when`.
    fn call_at(
        &self,
        when: f64,
        callback: Callback,
        context: Option<Context>,
    ) -> Result<TimerHandle>;
    /// Schedules `callback` from any thread; the loop wakes up.
    fn call_soon_threadsafe(&self, callback: SendCallback) -> Result<Handle>;
    /// A `Send` handle for other threads to call `call_soon_threadsafe` on.
    fn remote(&self) -> RemoteLoop;
    /// The loop's monotonic clock, in seconds.
    fn time(&self) -> f64;
    /// Schedules a task step in the ready queue, in FIFO order with
    /// callbacks. The default goes through `call_soon`; the core's loop skips
    /// the `Handle`.
    fn call_soon_step(&self, step: Rc<dyn Step>) -> Result<()> {
        self.call_soon(Box::new(move || step.run_step()), None)
            .map(drop)
    }

    // ----- tasks ----------------------------------------------------------------

    /// Sets the hook `create_task` consults (`None`: the default).
    fn set_task_factory(&self, factory: Option<TaskFactory>);
    /// The current task factory.
    fn get_task_factory(&self) -> Option<TaskFactory>;

    // ----- executors --------------------------------------------------------

    /// Runs `job` on `executor` (or the default thread pool); the building
    /// block of [`EventLoopExt::run_in_executor`].
    fn run_in_executor_job(&self, executor: Option<Arc<dyn Executor>>, job: Job) -> Result<()>;
    /// Replaces the default executor.
    fn set_default_executor(&self, executor: Arc<dyn Executor>) -> Result<()>;

    // ----- errors -------------------------------------------------------------

    /// Sets the exception handler (`None`: the default one).
    fn set_exception_handler(&self, handler: Option<ExceptionHandler>);
    /// The exception handler set, if any.
    fn get_exception_handler(&self) -> Option<ExceptionHandler>;
    /// The default handler: logs the context to stderr.
    fn default_exception_handler(&self, context: &ExceptionContext);
    /// Calls the handler set, or the default one. A panic in a custom
    /// handler is reported through the default one.
    fn call_exception_handler(&self, context: ExceptionContext);

    // ----- debug ----------------------------------------------------------------

    /// True in debug mode.
    fn get_debug(&self) -> bool;
    /// Turns debug mode on or off.
    fn set_debug(&self, enabled: bool);
    /// The duration in seconds over which debug mode reports a slow callback (0.1).
    fn slow_callback_duration(&self) -> f64;
    /// Sets the slow-callback threshold.
    fn set_slow_callback_duration(&self, seconds: f64);

    // ----- readiness ------------------------------------------------------------

    /// Calls `callback` each time `fd` is readable.
    fn add_reader(&self, fd: RawFd, callback: RepeatCallback) -> Result<()>;
    /// Stops watching `fd` for reading; true if it was watched.
    fn remove_reader(&self, fd: RawFd) -> Result<bool>;
    /// Calls `callback` each time `fd` is writable.
    fn add_writer(&self, fd: RawFd, callback: RepeatCallback) -> Result<()>;
    /// Stops watching `fd` for writing; true if it was watched.
    fn remove_writer(&self, fd: RawFd) -> Result<bool>;

    // ----- signals --------------------------------------------------------------

    /// Calls `callback` on the loop when signal `sig` arrives. Main thread only;
    /// `ValueError` for an invalid signal, `RuntimeError` for an uncatchable one.
    fn add_signal_handler(&self, sig: i32, callback: RepeatCallback) -> Result<()>;
    /// Removes the handler, restoring the signal's previous disposition;
    /// true if one was set.
    fn remove_signal_handler(&self, sig: i32) -> Result<bool>;
    /// `Runner`'s Ctrl-C support: if Ctrl-C still has its default action,
    /// runs `callback` on the loop at the first Ctrl-C and restores the default
    /// action, so that a second Ctrl-C ends the process at once. Returns false
    /// (and installs nothing) when someone else handles Ctrl-C.
    fn add_interrupt_handler(&self, callback: Callback) -> Result<bool>;
    /// Removes what `add_interrupt_handler` installed, if it has not fired.
    fn remove_interrupt_handler(&self) -> Result<()>;

    // ----- DNS ------------------------------------------------------------------

    // The default bodies run the system resolver on the default executor
    // (crate::selector_events).

    /// `getaddrinfo`, off the loop thread.
    fn getaddrinfo(
        &self,
        host: Option<String>,
        port: Option<String>,
        family: Family,
        socktype: i32,
        proto: i32,
        flags: i32,
    ) -> LocalBoxFuture<'static, Result<Vec<AddrInfo>>> {
        crate::selector_events::getaddrinfo(
            &self.as_loop(),
            host,
            port,
            family,
            socktype,
            proto,
            flags,
        )
    }
    /// `getnameinfo`, off the loop thread: `(host, port)`.
    fn getnameinfo(
        &self,
        sockaddr: SocketAddr,
        flags: i32,
    ) -> LocalBoxFuture<'static, Result<(String, String)>> {
        crate::selector_events::getnameinfo(&self.as_loop(), sockaddr, flags)
    }

    // ----- TCP, TLS, sendfile ---------------------------------------------------

    /// Opens a streaming connection to `host:port`.
    fn create_connection(
        &self,
        protocol_factory: ProtocolFactory,
        host: Option<String>,
        port: Option<u16>,
        options: CreateConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        crate::base_events::connect::create_connection(
            self.as_loop(),
            protocol_factory,
            host,
            port,
            options,
        )
    }
    /// Listens on `host:port`.
    fn create_server(
        &self,
        protocol_factory: ProtocolFactory,
        host: Hosts,
        port: Option<u16>,
        options: CreateServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        crate::base_events::server::create_server(
            self.as_loop(),
            protocol_factory,
            host,
            port,
            options,
        )
    }
    /// Wraps a socket accepted elsewhere in a transport.
    fn connect_accepted_socket(
        &self,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        ssl: Option<SslContext>,
        ssl_handshake_timeout: Option<Duration>,
        ssl_shutdown_timeout: Option<Duration>,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        crate::base_events::connect::connect_accepted_socket(
            self.as_loop(),
            protocol_factory,
            sock,
            ssl,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
    }
    /// Sends `count` bytes of `file` (to its end when `None`) from `offset`
    /// over `transport`: bytes sent. Zero-copy where the transport and OS
    /// allow; otherwise, with `fallback`, reads and writes;
    /// `SendfileNotAvailable` without it. The file's position is left at
    /// `offset` + bytes sent.
    fn sendfile(
        &self,
        transport: Rc<dyn Transport>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        crate::base_events::sendfile::sendfile(
            self.as_loop(),
            transport,
            file,
            offset,
            count,
            fallback,
        )
    }
    /// Upgrades a connection to TLS.
    fn start_tls(
        &self,
        _transport: Rc<dyn Transport>,
        _protocol: Rc<dyn Protocol>,
        _sslcontext: SslContext,
        _options: StartTlsOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn Transport>>> {
        not_implemented("start_tls")
    }

    // ----- Unix sockets ---------------------------------------------------------

    /// Opens a Unix stream connection to `path`.
    fn create_unix_connection(
        &self,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        crate::base_events::unix::create_unix_connection(
            self.as_loop(),
            protocol_factory,
            path,
            options,
        )
    }
    /// Listens on a Unix socket.
    fn create_unix_server(
        &self,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        crate::base_events::unix::create_unix_server(
            self.as_loop(),
            protocol_factory,
            path,
            options,
        )
    }

    // ----- UDP ------------------------------------------------------------------

    /// Creates a datagram endpoint.
    fn create_datagram_endpoint(
        &self,
        protocol_factory: DatagramProtocolFactory,
        options: CreateDatagramEndpointOptions,
    ) -> LocalBoxFuture<'static, Result<DatagramPair>> {
        crate::base_events::datagram::create_datagram_endpoint(
            self.as_loop(),
            protocol_factory,
            options,
        )
    }

    // ----- pipes and processes ----------------------------------------------------

    /// Wraps the read end of a pipe.
    fn connect_read_pipe(
        &self,
        _protocol_factory: ProtocolFactory,
        _pipe: File,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        not_implemented("connect_read_pipe")
    }
    /// Wraps the write end of a pipe.
    fn connect_write_pipe(
        &self,
        _protocol_factory: ProtocolFactory,
        _pipe: File,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        not_implemented("connect_write_pipe")
    }
    /// Starts `program` with `args`.
    fn subprocess_exec(
        &self,
        _protocol_factory: SubprocessProtocolFactory,
        _program: OsString,
        _args: Vec<OsString>,
        _options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
        not_implemented("subprocess_exec")
    }
    /// Runs `cmd` through the shell.
    fn subprocess_shell(
        &self,
        _protocol_factory: SubprocessProtocolFactory,
        _cmd: OsString,
        _options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
        not_implemented("subprocess_shell")
    }

    // ----- low-level socket operations -------------------------------------------

    // The default bodies wait for readiness with add_reader/add_writer
    // (crate::selector_events); completion-based backends may override them.

    /// Receives up to `nbytes`.
    fn sock_recv(
        &self,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>> {
        crate::selector_events::sock_recv(&self.as_loop(), sock, nbytes)
    }
    /// Receives into `buf` (owned, handed back): `(buf, nbytes)`.
    fn sock_recv_into(
        &self,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>> {
        crate::selector_events::sock_recv_into(&self.as_loop(), sock, buf)
    }
    /// Receives a datagram of up to `bufsize`: `(data, address)`.
    fn sock_recvfrom(
        &self,
        sock: Rc<Socket>,
        bufsize: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, SockAddr)>> {
        crate::selector_events::sock_recvfrom(&self.as_loop(), sock, bufsize)
    }
    /// Receives a datagram into `buf`: `(buf, nbytes, address)`.
    fn sock_recvfrom_into(
        &self,
        sock: Rc<Socket>,
        buf: Vec<u8>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize, SockAddr)>> {
        crate::selector_events::sock_recvfrom_into(&self.as_loop(), sock, buf, nbytes)
    }
    /// Sends all of `data`.
    fn sock_sendall(&self, sock: Rc<Socket>, data: Vec<u8>) -> LocalBoxFuture<'static, Result<()>> {
        crate::selector_events::sock_sendall(&self.as_loop(), sock, data)
    }
    /// Sends a datagram to `address`: bytes sent.
    fn sock_sendto(
        &self,
        sock: Rc<Socket>,
        data: Vec<u8>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<usize>> {
        crate::selector_events::sock_sendto(&self.as_loop(), sock, data, address)
    }
    /// Connects to `address`.
    fn sock_connect(
        &self,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>> {
        crate::selector_events::sock_connect(&self.as_loop(), sock, address)
    }
    /// Accepts a connection: `(socket, address)`.
    fn sock_accept(&self, sock: Rc<Socket>) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>> {
        crate::selector_events::sock_accept(&self.as_loop(), sock)
    }
    /// Sends `count` bytes of `file` (to its end when `None`) from `offset`
    /// over a connected stream socket: bytes sent. Zero-copy where the OS
    /// allows; otherwise, with `fallback`, reads and `sock_sendall`s;
    /// `SendfileNotAvailable` without it. The file's position is left at
    /// `offset` + bytes sent.
    fn sock_sendfile(
        &self,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        crate::selector_events::sendfile::sock_sendfile(
            self.as_loop(),
            sock,
            file,
            offset,
            count,
            fallback,
        )
    }

    // ----- backend plumbing (asyncio's private hooks) ------------------------------
    //
    // The generic networking code (`create_connection`, `create_server`,
    // `create_datagram_endpoint`, `sendfile`, ...) is written once, in
    // `crate::base_events`, and reaches the I/O model only through these
    // hooks, as asyncio's `BaseEventLoop` reaches its selector or proactor
    // subclass through `_make_socket_transport` and friends. The defaults
    // are the readiness-based ones (`crate::selector_events`); a
    // completion-based backend overrides them with its own transports.

    /// `add_reader` without the check that no transport owns `fd`: what
    /// transports and `sock_*` methods use.
    fn _add_reader(&self, fd: RawFd, callback: RepeatCallback) -> Result<()> {
        self.add_reader(fd, callback)
    }
    /// `remove_reader` without the transport check.
    fn _remove_reader(&self, fd: RawFd) -> Result<bool> {
        self.remove_reader(fd)
    }
    /// `add_writer` without the transport check.
    fn _add_writer(&self, fd: RawFd, callback: RepeatCallback) -> Result<()> {
        self.add_writer(fd, callback)
    }
    /// `remove_writer` without the transport check.
    fn _remove_writer(&self, fd: RawFd) -> Result<bool> {
        self.remove_writer(fd)
    }
    /// Records that `transport` owns `fd`, so that `add_reader`,
    /// `add_writer` and the `sock_*` methods refuse it until the transport
    /// is closing.
    fn _register_transport(&self, _fd: RawFd, _transport: Weak<dyn BaseTransport>) {}
    /// asyncio's `_ensure_fd_no_transport`: `RuntimeError("File descriptor
    /// N is used by transport ...")` while a transport that is not closing
    /// owns `fd`.
    fn _ensure_fd_no_transport(&self, _fd: RawFd) -> Result<()> {
        Ok(())
    }
    /// Wraps a connected stream socket in this loop's transport; the
    /// protocol's `connection_made` and then `waiter`'s result follow on
    /// the loop. The transport takes `sock` over and closes it, and puts it
    /// in the blocking mode its I/O needs (callers do not).
    fn _make_socket_transport(
        &self,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        crate::selector_events::socket_transport::SocketTransport::create(
            self.as_loop(),
            sock,
            protocol,
            waiter,
            server,
        )
    }
    /// Wraps a datagram socket (connected to `address` if given), in any
    /// blocking mode, as for [`_make_socket_transport`](AbstractEventLoop::_make_socket_transport).
    fn _make_datagram_transport(
        &self,
        sock: Rc<Socket>,
        protocol: Rc<dyn DatagramProtocol>,
        address: Option<SockAddr>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn DatagramTransport>> {
        crate::selector_events::datagram_transport::DatagramSocketTransport::create(
            self.as_loop(),
            sock,
            protocol,
            address,
            waiter,
        )
    }
    /// Starts accepting on a listening socket for `server`, up to `backlog`
    /// connections per wakeup.
    fn _start_serving(
        &self,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()> {
        crate::selector_events::accept::start_serving(
            self.as_loop(),
            protocol_factory,
            sock,
            server,
            backlog,
        )
    }
    /// Stops accepting on `sock`.
    fn _stop_serving(&self, sock: &Socket) {
        crate::selector_events::accept::stop_serving(&self.as_loop(), sock)
    }
    /// asyncio's `_sock_sendfile_native`: the zero-copy path of
    /// `sock_sendfile` and of a transport's `_sendfile_native`, for a
    /// socket already checked; `SendfileNotAvailable` when this file and
    /// socket cannot use it (the caller may then fall back). The socket's
    /// writes must be flushed before. Readiness loops use `sendfile(2)`;
    /// IOCP uses `TransmitFile`.
    fn _sock_sendfile_native(
        &self,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        crate::selector_events::sendfile::sock_sendfile_native(
            self.as_loop(),
            sock,
            file,
            offset,
            count,
        )
    }
}

/// The generic half of the loop API, for every loop (`dyn` included).
pub trait EventLoopExt: AbstractEventLoop {
    /// `loop.create_future()`.
    fn create_future<T: 'static>(&self) -> Future<T> {
        Future::new(self.as_loop())
    }

    /// `loop.create_task(coro)`: schedules a coroutine. The coroutine's
    /// `Err(Error::Cancelled)` makes the task cancelled, as a
    /// `CancelledError` does in asyncio.
    fn create_task<T, F>(&self, coro: F) -> Result<Task<T>>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        self.create_task_with(coro, TaskOptions::default())
    }

    /// `loop.create_task(coro, name=..., context=...)`.
    fn create_task_with<T, F>(&self, coro: F, options: TaskOptions) -> Result<Task<T>>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        Task::spawn(self.as_loop(), coro.into_future(), options)
    }

    /// `loop.run_until_complete(future)`: runs the loop until `future` is
    /// done and returns its result.
    ///
    /// A [`Future`] or [`Task`] is waited on as is (one of another loop is a
    /// `ValueError`); anything else is wrapped in a task first. The result is
    /// moved out: a later `result()` on the same future is an
    /// `InvalidStateError`.
    fn run_until_complete<T, F>(&self, future: F) -> Result<T>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        crate::base_events::run_until_complete(&self.as_loop(), future)
    }

    /// `loop.run_in_executor(executor, func)`: runs `func` on a worker
    /// thread; the returned future gets its result. A panic in `func`
    /// becomes the future's exception.
    fn run_in_executor<T, F>(
        &self,
        executor: Option<Arc<dyn Executor>>,
        func: F,
    ) -> Result<Future<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        executor::run_in_executor(&self.as_loop(), executor, func)
    }
}

impl<L: AbstractEventLoop + ?Sized> EventLoopExt for L {}
