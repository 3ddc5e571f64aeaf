//! `AbstractEventLoop`: every method of asyncio's event loop, object-safe.
//!
//! This is the user's API and nothing else: it carries no implementation
//! (the one implementation is
//! [`BaseEventLoop`](crate::base_events::BaseEventLoop), over a backend's
//! [`Driver`](crate::driver::Driver)) and none of asyncio's private hooks.
//!
//! # The Rust shape
//! - `callback, *args` is one closure: [`Callback`] (runs once) or
//!   [`RepeatCallback`] (readers, writers, signal handlers).
//! - Exceptions are `Err(`[`Error`](crate::Error)`)`. A panic in a callback
//!   is caught and handed to the exception handler; the loop goes on.
//! - Coroutine methods (`create_connection`, `sock_recv`, ...) return a
//!   boxed future; buffers are owned (`Vec<u8>` in, `Vec<u8>` back) so that
//!   completion-based backends can hand them to the kernel.
//! - Methods generic over a result type (`create_future`, `create_task`,
//!   `run_until_complete`, `run_in_executor`) cannot live on an
//!   object-safe trait; they are in [`EventLoopExt`](super::EventLoopExt),
//!   implemented for every loop, `dyn AbstractEventLoop` included, on top
//!   of the object-safe methods here.
//! - Transports take the socket they are given over, and close it when
//!   the connection is lost: keep no other clone of an `Rc<Socket>` passed
//!   in, or the descriptor outlives the transport.
//! - A method a loop does not build yet (TLS, pipes, subprocesses) returns
//!   [`Error::NotImplemented`](crate::Error::NotImplemented); one its OS
//!   cannot offer returns [`Error::NotSupported`](crate::Error::NotSupported).

use std::any::Any;
use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockAddr, Socket};

use super::options::*;
use super::{
    AbstractServer, Callback, ExceptionContext, ExceptionHandler, Handle, RawFd, RepeatCallback,
    SendCallback, TimerHandle,
};
use crate::contextvars::Context;
use crate::exceptions::Result;
use crate::executor::{Executor, Job};
use crate::protocols::{
    DatagramProtocol, DatagramProtocolFactory, Protocol, ProtocolFactory, SubprocessProtocol,
    SubprocessProtocolFactory,
};
use crate::tasks::TaskFactory;
use crate::transports::{DatagramTransport, SubprocessTransport, Transport};

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
    fn call_soon_dyn(&self, callback: Callback, context: Option<Context>) -> Result<Handle>;
    /// Schedules `handle` (another reference to it) for the next iteration,
    /// FIFO (asyncio's private
    /// `_add_callback`): what the generic
    /// [`call_soon`](crate::events::EventLoopExt::call_soon) does with the
    /// [`Handle::new`] it makes, so that an unboxed closure costs one
    /// allocation. A cancelled handle is skipped when its turn comes.
    fn call_soon_handle(&self, handle: &Handle) -> Result<()>;
    /// Schedules `callback` after `delay` seconds (zero or negative: due at once,
    /// still a [`TimerHandle`]).
    fn call_later_dyn(
        &self,
        delay: f64,
        callback: Callback,
        context: Option<Context>,
    ) -> Result<TimerHandle>;
    /// Schedules `callback` at loop time `when`.
    fn call_at_dyn(
        &self,
        when: f64,
        callback: Callback,
        context: Option<Context>,
    ) -> Result<TimerHandle>;
    /// Schedules `callback` from any thread; the loop wakes up.
    fn call_soon_threadsafe_dyn(&self, callback: SendCallback) -> Result<Handle>;
    /// A `Send` handle for other threads to call `call_soon_threadsafe` on.
    fn remote(&self) -> RemoteLoop;
    /// The loop's monotonic clock, in seconds.
    fn time(&self) -> f64;
    /// Schedules a task step in the ready queue, in FIFO order with
    /// callbacks (what [`Task`](crate::tasks::Task) uses; no `Handle` is
    /// made).
    fn call_soon_step(&self, step: Rc<dyn Step>) -> Result<()>;

    // ----- tasks ----------------------------------------------------------------

    /// Sets the hook `create_task` consults (`None`: the default).
    fn set_task_factory(&self, factory: Option<TaskFactory>);
    /// The current task factory.
    fn get_task_factory(&self) -> Option<TaskFactory>;

    // ----- executors --------------------------------------------------------

    /// Runs `job` on `executor` (or the default thread pool); the building
    /// block of [`EventLoopExt::run_in_executor`](super::EventLoopExt::run_in_executor).
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
    fn add_reader_dyn(&self, fd: RawFd, callback: RepeatCallback) -> Result<()>;
    /// Stops watching `fd` for reading; true if it was watched.
    fn remove_reader(&self, fd: RawFd) -> Result<bool>;
    /// Calls `callback` each time `fd` is writable.
    fn add_writer_dyn(&self, fd: RawFd, callback: RepeatCallback) -> Result<()>;
    /// Stops watching `fd` for writing; true if it was watched.
    fn remove_writer(&self, fd: RawFd) -> Result<bool>;

    // ----- signals --------------------------------------------------------------

    /// Calls `callback` on the loop when signal `sig` arrives. Main thread only;
    /// `ValueError` for an invalid signal, `RuntimeError` for an uncatchable one.
    fn add_signal_handler_dyn(&self, sig: i32, callback: RepeatCallback) -> Result<()>;
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

    /// `getaddrinfo`, off the loop thread.
    fn getaddrinfo_dyn(
        &self,
        host: Option<String>,
        port: Option<String>,
        family: Family,
        socktype: i32,
        proto: i32,
        flags: i32,
    ) -> LocalBoxFuture<'static, Result<Vec<AddrInfo>>>;
    /// `getnameinfo`, off the loop thread: `(host, port)`.
    fn getnameinfo(
        &self,
        sockaddr: SocketAddr,
        flags: i32,
    ) -> LocalBoxFuture<'static, Result<(String, String)>>;

    // ----- TCP, TLS, sendfile ---------------------------------------------------

    /// Opens a streaming connection to `host:port`.
    fn create_connection_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        host: Option<String>,
        port: Option<u16>,
        options: CreateConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>>;
    /// Listens on `host:port`.
    fn create_server_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        host: Hosts,
        port: Option<u16>,
        options: CreateServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>>;
    /// Wraps a socket accepted elsewhere in a transport.
    fn connect_accepted_socket_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        ssl: Option<SslContext>,
        ssl_handshake_timeout: Option<Duration>,
        ssl_shutdown_timeout: Option<Duration>,
    ) -> LocalBoxFuture<'static, Result<StreamPair>>;
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
    ) -> LocalBoxFuture<'static, Result<u64>>;
    /// Upgrades a connection to TLS.
    fn start_tls(
        &self,
        transport: Rc<dyn Transport>,
        protocol: Rc<dyn Protocol>,
        sslcontext: SslContext,
        options: StartTlsOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn Transport>>>;

    // ----- Unix sockets ---------------------------------------------------------

    /// Opens a Unix stream connection to `path`.
    fn create_unix_connection_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>>;
    /// Listens on a Unix socket.
    fn create_unix_server_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>>;

    // ----- UDP ------------------------------------------------------------------

    /// Creates a datagram endpoint.
    fn create_datagram_endpoint_dyn(
        &self,
        protocol_factory: DatagramProtocolFactory,
        options: CreateDatagramEndpointOptions,
    ) -> LocalBoxFuture<'static, Result<DatagramPair>>;

    // ----- pipes and processes ----------------------------------------------------

    /// Wraps the read end of a pipe.
    fn connect_read_pipe_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        pipe: File,
    ) -> LocalBoxFuture<'static, Result<StreamPair>>;
    /// Wraps the write end of a pipe.
    fn connect_write_pipe_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        pipe: File,
    ) -> LocalBoxFuture<'static, Result<StreamPair>>;
    /// Starts `program` with `args`.
    fn subprocess_exec_dyn(
        &self,
        protocol_factory: SubprocessProtocolFactory,
        program: OsString,
        args: Vec<OsString>,
        options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<SubprocessPair>>;
    /// Runs `cmd` through the shell.
    fn subprocess_shell_dyn(
        &self,
        protocol_factory: SubprocessProtocolFactory,
        cmd: OsString,
        options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<SubprocessPair>>;

    // ----- low-level socket operations -------------------------------------------

    /// Receives up to `nbytes`.
    fn sock_recv(
        &self,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>>;
    /// Receives into `buf` (owned, handed back): `(buf, nbytes)`.
    fn sock_recv_into(
        &self,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>>;
    /// Receives a datagram of up to `bufsize`: `(data, address)`.
    fn sock_recvfrom(
        &self,
        sock: Rc<Socket>,
        bufsize: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, SockAddr)>>;
    /// Receives a datagram into `buf`: `(buf, nbytes, address)`.
    fn sock_recvfrom_into(
        &self,
        sock: Rc<Socket>,
        buf: Vec<u8>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize, SockAddr)>>;
    /// Sends all of `data`.
    fn sock_sendall(&self, sock: Rc<Socket>, data: Vec<u8>) -> LocalBoxFuture<'static, Result<()>>;
    /// Sends a datagram to `address`: bytes sent.
    fn sock_sendto(
        &self,
        sock: Rc<Socket>,
        data: Vec<u8>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<usize>>;
    /// Connects to `address`.
    fn sock_connect(
        &self,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>>;
    /// Accepts a connection: `(socket, address)`.
    fn sock_accept(&self, sock: Rc<Socket>) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>>;
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
    ) -> LocalBoxFuture<'static, Result<u64>>;
}
