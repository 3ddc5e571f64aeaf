//! [`EventLoopExt`]: the loop methods as a Rust user calls them, for every
//! loop, `dyn AbstractEventLoop` included, written on top of the
//! object-safe [`AbstractEventLoop`].
//!
//! asyncio's names are here: `call_soon(|| ...)` takes a closure,
//! `call_later` a number of seconds or a `Duration`, `create_connection` a
//! factory of the caller's own protocol type and hands that type back.
//! The object-safe primitives they are built on carry a `_dyn` suffix
//! (`call_soon_dyn`, `create_connection_dyn`, ...): what a loop implements,
//! and what code that holds boxed callbacks or type-erased factories calls.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::File;
use std::future::IntoFuture;
use std::rc::Rc;
use std::sync::Arc;

use socket2::Socket;

use super::options::{
    AddrInfo, ConnectAcceptedSocketOptions, CreateConnectionOptions, CreateDatagramEndpointOptions,
    CreateServerOptions, CreateUnixConnectionOptions, CreateUnixServerOptions, Delay,
    GetAddrInfoOptions, IntoHost, IntoHosts, IntoService, IntoUnixPath, SubprocessOptions,
};
use super::{AbstractEventLoop, AbstractServer, Handle, LocalBoxFuture, Loop, RawFd, TimerHandle};
use crate::contextvars::Context;
use crate::exceptions::{Error, Result};
use crate::executor::{self, Executor};
use crate::futures::Future;
use crate::protocols::{
    DatagramProtocolFactory, IntoDynDatagramProtocol, IntoDynProtocol, IntoDynSubprocessProtocol,
    ProtocolFactory, SubprocessProtocolFactory,
};
use crate::tasks::{Task, TaskOptions};
use crate::transports::{DatagramTransport, SubprocessTransport, Transport};

/// What the typed `create_connection` and friends resolve to: the
/// transport, and the caller's own protocol.
pub type Connected<P> = (Rc<dyn Transport>, Rc<P>);
/// What the typed `create_datagram_endpoint` resolves to.
pub type Endpoint<P> = (Rc<dyn DatagramTransport>, Rc<P>);
/// What the typed `subprocess_exec` and `subprocess_shell` resolve to.
pub type Spawned<P> = (Rc<dyn SubprocessTransport>, Rc<P>);

/// The last protocol a typed factory made, kept for the caller.
type Made<P> = Rc<RefCell<Option<Rc<P>>>>;

/// A type-erased factory that remembers what it made.
fn recording<P: ?Sized + IntoDynProtocol>(
    factory: impl Fn() -> Rc<P> + 'static,
) -> (ProtocolFactory, Made<P>) {
    let made: Made<P> = Rc::new(RefCell::new(None));
    let m = made.clone();
    let erased: ProtocolFactory = Rc::new(move || {
        let p = factory();
        *m.borrow_mut() = Some(p.clone());
        p.into_dyn()
    });
    (erased, made)
}

/// As [`recording`], for subprocess protocols.
fn recording_subprocess<P: ?Sized + IntoDynSubprocessProtocol>(
    factory: impl Fn() -> Rc<P> + 'static,
) -> (SubprocessProtocolFactory, Made<P>) {
    let made: Made<P> = Rc::new(RefCell::new(None));
    let m = made.clone();
    let erased: SubprocessProtocolFactory = Rc::new(move || {
        let p = factory();
        *m.borrow_mut() = Some(p.clone());
        p.into_dyn()
    });
    (erased, made)
}

fn taken<P: ?Sized>(made: &Made<P>) -> Rc<P> {
    made.borrow_mut()
        .take()
        .expect("the protocol factory ran before the transport was made")
}

/// The loop API as a Rust user calls it, for every loop (`dyn` included).
/// See the module docs.
pub trait EventLoopExt: AbstractEventLoop {
    // ----- scheduling ---------------------------------------------------------

    /// `loop.call_soon(callback)`: runs `callback` in the next iteration,
    /// FIFO, in a copy of the current context.
    #[inline]
    fn call_soon(&self, callback: impl FnOnce() + 'static) -> Result<Handle> {
        let h = Handle::new(callback, None);
        self.call_soon_handle(&h)?;
        Ok(h)
    }

    /// `loop.call_soon(callback, context=context)`.
    fn call_soon_in(&self, context: Context, callback: impl FnOnce() + 'static) -> Result<Handle> {
        let h = Handle::new(callback, Some(context));
        self.call_soon_handle(&h)?;
        Ok(h)
    }

    /// `loop.call_later(delay, callback)`: `delay` in seconds (`f64`,
    /// an integer) or a `Duration`.
    fn call_later(
        &self,
        delay: impl Delay,
        callback: impl FnOnce() + 'static,
    ) -> Result<TimerHandle> {
        self.call_later_dyn(delay.seconds(), Box::new(callback), None)
    }

    /// `loop.call_later(delay, callback, context=context)`.
    fn call_later_in(
        &self,
        context: Context,
        delay: impl Delay,
        callback: impl FnOnce() + 'static,
    ) -> Result<TimerHandle> {
        self.call_later_dyn(delay.seconds(), Box::new(callback), Some(context))
    }

    /// `loop.call_at(when, callback)`, `when` in loop time ([`time`](AbstractEventLoop::time)).
    fn call_at(&self, when: f64, callback: impl FnOnce() + 'static) -> Result<TimerHandle> {
        self.call_at_dyn(when, Box::new(callback), None)
    }

    /// `loop.call_at(when, callback, context=context)`.
    fn call_at_in(
        &self,
        context: Context,
        when: f64,
        callback: impl FnOnce() + 'static,
    ) -> Result<TimerHandle> {
        self.call_at_dyn(when, Box::new(callback), Some(context))
    }

    /// `loop.call_soon_threadsafe(callback)`, from the loop's own thread
    /// (other threads use [`remote`](AbstractEventLoop::remote)).
    fn call_soon_threadsafe(&self, callback: impl FnOnce() + Send + 'static) -> Result<Handle> {
        self.call_soon_threadsafe_dyn(Box::new(callback))
    }

    // ----- readiness and signals -------------------------------------------------

    /// `loop.add_reader(fd, callback)`: calls `callback` each time `fd` is
    /// readable.
    fn add_reader(&self, fd: RawFd, callback: impl FnMut() + 'static) -> Result<()> {
        self.add_reader_dyn(fd, Box::new(callback))
    }

    /// `loop.add_writer(fd, callback)`.
    fn add_writer(&self, fd: RawFd, callback: impl FnMut() + 'static) -> Result<()> {
        self.add_writer_dyn(fd, Box::new(callback))
    }

    /// `loop.add_signal_handler(sig, callback)`.
    fn add_signal_handler(&self, sig: i32, callback: impl FnMut() + 'static) -> Result<()> {
        self.add_signal_handler_dyn(sig, Box::new(callback))
    }

    // ----- DNS -------------------------------------------------------------------

    /// `loop.getaddrinfo(host, port)`: `host` a name or address (or
    /// `None`), `port` a number or service name (or `None`).
    fn getaddrinfo(
        &self,
        host: impl IntoHost,
        port: impl IntoService,
    ) -> LocalBoxFuture<'static, Result<Vec<AddrInfo>>> {
        self.getaddrinfo_with(host, port, GetAddrInfoOptions::default())
    }

    /// `loop.getaddrinfo(host, port, family=, type=, proto=, flags=)`.
    fn getaddrinfo_with(
        &self,
        host: impl IntoHost,
        port: impl IntoService,
        options: GetAddrInfoOptions,
    ) -> LocalBoxFuture<'static, Result<Vec<AddrInfo>>> {
        self.getaddrinfo_dyn(
            host.into_host(),
            port.into_service(),
            options.family,
            options.socktype,
            options.proto,
            options.flags,
        )
    }

    // ----- connections and servers ------------------------------------------------

    /// `loop.create_connection(protocol_factory, host, port, ...)`: the
    /// transport, and the protocol as the factory made it (`Rc<P>`, the
    /// caller's own type; a factory of `Rc<dyn Protocol>` works too).
    fn create_connection<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        host: impl IntoHost,
        port: impl Into<Option<u16>>,
        options: CreateConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<Connected<P>>> {
        let (factory, made) = recording(protocol_factory);
        let fut = self.create_connection_dyn(factory, host.into_host(), port.into(), options);
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    /// `loop.create_server(protocol_factory, host, port, ...)`: `host` one
    /// name or address, several, or every interface (`None`, `""`).
    fn create_server<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        host: impl IntoHosts,
        port: impl Into<Option<u16>>,
        options: CreateServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        let factory: ProtocolFactory = Rc::new(move || protocol_factory().into_dyn());
        self.create_server_dyn(factory, host.into_hosts(), port.into(), options)
    }

    /// `loop.connect_accepted_socket(protocol_factory, sock, ...)`: wraps a
    /// socket accepted elsewhere.
    fn connect_accepted_socket<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        sock: impl Into<Rc<Socket>>,
        options: ConnectAcceptedSocketOptions,
    ) -> LocalBoxFuture<'static, Result<Connected<P>>> {
        let (factory, made) = recording(protocol_factory);
        let fut = self.connect_accepted_socket_dyn(
            factory,
            sock.into(),
            options.ssl,
            options.ssl_handshake_timeout,
            options.ssl_shutdown_timeout,
        );
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    /// `loop.create_unix_connection(protocol_factory, path, ...)`.
    fn create_unix_connection<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        path: impl IntoUnixPath,
        options: CreateUnixConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<Connected<P>>> {
        let (factory, made) = recording(protocol_factory);
        let fut = self.create_unix_connection_dyn(factory, path.into_unix_path(), options);
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    /// `loop.create_unix_server(protocol_factory, path, ...)`.
    fn create_unix_server<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        path: impl IntoUnixPath,
        options: CreateUnixServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        let factory: ProtocolFactory = Rc::new(move || protocol_factory().into_dyn());
        self.create_unix_server_dyn(factory, path.into_unix_path(), options)
    }

    /// `loop.create_datagram_endpoint(protocol_factory, ...)`: the
    /// transport, and the protocol as the factory made it.
    fn create_datagram_endpoint<P: ?Sized + IntoDynDatagramProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        options: CreateDatagramEndpointOptions,
    ) -> LocalBoxFuture<'static, Result<Endpoint<P>>> {
        type MadeD<P> = Rc<RefCell<Option<Rc<P>>>>;
        let made: MadeD<P> = Rc::new(RefCell::new(None));
        let m = made.clone();
        let factory: DatagramProtocolFactory = Rc::new(move || {
            let p = protocol_factory();
            *m.borrow_mut() = Some(p.clone());
            p.into_dyn()
        });
        let fut = self.create_datagram_endpoint_dyn(factory, options);
        Box::pin(async move {
            let (t, _) = fut.await?;
            let p = made
                .borrow_mut()
                .take()
                .expect("the protocol factory ran before the transport was made");
            Ok((t, p))
        })
    }

    /// `loop.connect_read_pipe(protocol_factory, pipe)`: wraps the read end
    /// of a pipe (a FIFO, a socket or a character device; `ValueError`
    /// otherwise). The transport owns `pipe` from now on and closes it when
    /// the connection is lost.
    fn connect_read_pipe<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        pipe: impl Into<File>,
    ) -> LocalBoxFuture<'static, Result<Connected<P>>> {
        let (factory, made) = recording(protocol_factory);
        let fut = self.connect_read_pipe_dyn(factory, pipe.into());
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    /// `loop.connect_write_pipe(protocol_factory, pipe)`: wraps the write
    /// end of a pipe, as [`connect_read_pipe`](EventLoopExt::connect_read_pipe).
    fn connect_write_pipe<P: ?Sized + IntoDynProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        pipe: impl Into<File>,
    ) -> LocalBoxFuture<'static, Result<Connected<P>>> {
        let (factory, made) = recording(protocol_factory);
        let fut = self.connect_write_pipe_dyn(factory, pipe.into());
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    /// `loop.subprocess_exec(protocol_factory, program, *args, ...)`: starts
    /// `program` with `args` (not including the program itself, as
    /// `std::process::Command` takes them), connects its pipes, and
    /// resolves once the protocol's `connection_made` ran.
    fn subprocess_exec<P: ?Sized + IntoDynSubprocessProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<Spawned<P>>> {
        let (factory, made) = recording_subprocess(protocol_factory);
        let args = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let fut = self.subprocess_exec_dyn(factory, program.as_ref().to_owned(), args, options);
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    /// `loop.subprocess_shell(protocol_factory, cmd, ...)`: runs `cmd`
    /// through the shell (`/bin/sh -c`; `cmd.exe /c` on Windows), as
    /// [`subprocess_exec`](EventLoopExt::subprocess_exec).
    fn subprocess_shell<P: ?Sized + IntoDynSubprocessProtocol>(
        &self,
        protocol_factory: impl Fn() -> Rc<P> + 'static,
        cmd: impl AsRef<OsStr>,
        options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<Spawned<P>>> {
        let (factory, made) = recording_subprocess(protocol_factory);
        let fut = self.subprocess_shell_dyn(factory, cmd.as_ref().to_owned(), options);
        Box::pin(async move {
            let (t, _) = fut.await?;
            Ok((t, taken(&made)))
        })
    }

    // ----- futures, tasks, executors -------------------------------------------------

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
        run_until_complete(&self.as_loop(), future)
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

/// asyncio's `_check_closed` and `_check_running`, before a loop runs.
pub(crate) fn check_can_run(lp: &dyn AbstractEventLoop) -> Result<()> {
    if lp.is_closed() {
        return Err(Error::loop_closed());
    }
    if lp.is_running() {
        return Err(Error::runtime("This event loop is already running"));
    }
    if super::_get_running_loop().is_some() {
        return Err(Error::runtime(
            "Cannot run the event loop while another loop is running",
        ));
    }
    Ok(())
}

/// `run_until_complete` for any loop; see [`EventLoopExt::run_until_complete`].
fn run_until_complete<T, F>(lp: &Loop, future: F) -> Result<T>
where
    T: 'static,
    F: IntoFuture<Output = Result<T>> + 'static,
{
    check_can_run(&**lp)?;
    let any: &dyn Any = &future;
    type Taker<T> = Box<dyn Fn() -> Result<T>>;
    let (obj, take): (Rc<dyn crate::futures::FutureObj>, Taker<T>) =
        if let Some(f) = any.downcast_ref::<Future<T>>() {
            let f = f.clone();
            (f.as_obj(), Box::new(move || f.take_result()))
        } else if let Some(t) = any.downcast_ref::<Task<T>>() {
            let t = t.clone();
            (t.as_obj(), Box::new(move || t.take_result()))
        } else {
            let t = Task::spawn(lp.clone(), future.into_future(), TaskOptions::default())?;
            let t2 = t.clone();
            (t.as_obj(), Box::new(move || t2.take_result()))
        };
    if obj.get_loop().loop_id() != lp.loop_id() {
        return Err(Error::value(
            "The future belongs to a different loop than the one specified as the loop argument",
        ));
    }
    let stopper = obj.get_loop();
    let id = obj.add_done_callback_erased(Box::new(move || stopper.stop()));
    let ran = lp.run_forever();
    obj.remove_done_callback(id);
    ran?;
    if !obj.done() {
        return Err(Error::runtime(
            "Event loop stopped before Future completed.",
        ));
    }
    take()
}
