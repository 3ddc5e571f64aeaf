//! What every stream socket transport shares, whatever its I/O model: the
//! state and the steps of asyncio's `_SelectorSocketTransport` and
//! `_ProactorSocketTransport` that do not depend on how bytes move.
//!
//! [`StreamBase`] holds the socket, the protocol, the server, flow control,
//! the closing flags and the `get_extra_info` values, and does what is the
//! same on readiness and on completions: the creation preamble
//! (`TCP_NODELAY`, the names), `connection_made` and the start sequence,
//! reporting errors, `connection_lost` and the teardown after it,
//! `write_eof`, the empty-buffer waiters and native sendfile. A transport
//! embeds one and adds only its reading and writing.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use socket2::{SockAddr, Socket};

use super::server::Server;
use super::sockets::raw_fd;
use super::BaseLoop;
use crate::events::{EventLoopExt, LocalBoxFuture, RawFd};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::Protocol;
use crate::transports::flow_control::FlowControl;
use crate::transports::lifecycle::{self, SocketInfo};
use crate::transports::{BaseTransport, ExtraInfo, Transport};

/// A socket made ready for a transport by [`StreamBase::prepare`].
pub struct Prepared {
    sock: Rc<Socket>,
    fd: RawFd,
    sockname: Option<SockAddr>,
    peername: Option<SockAddr>,
}

/// The state and steps every stream socket transport shares.
pub struct StreamBase {
    lp: Rc<dyn BaseLoop>,
    this: Weak<dyn Transport>,
    /// `None` once closed.
    sock: RefCell<Option<Rc<Socket>>>,
    fd: RawFd,
    protocol: RefCell<Rc<dyn Protocol>>,
    server: RefCell<Option<Rc<Server>>>,
    /// The write buffer's high- and low-water marks.
    pub flow: FlowControl,
    /// asyncio's `_conn_lost`: 0 while the connection lives, then counts
    /// the writes made after it was lost.
    pub conn_lost: Cell<u32>,
    /// `close` or `abort` was called, or the connection failed.
    pub closing: Cell<bool>,
    /// `write_eof` was called.
    pub eof: Cell<bool>,
    /// `pause_reading` was called (and not resumed).
    pub paused: Cell<bool>,
    empty_waiters: RefCell<Vec<Future<()>>>,
    /// Set while a native sendfile owns the socket: `write` is refused
    /// meanwhile (asyncio's `_empty_waiter` check). Made by the first
    /// sendfile, so a connection that never sends a file pays nothing.
    sendfile_in_progress: RefCell<Option<Rc<Cell<bool>>>>,
    info: SocketInfo,
}

impl StreamBase {
    /// asyncio's constructor preamble: the loop must be open; the socket is
    /// made non-blocking and, on TCP, gets `TCP_NODELAY` (asyncio's
    /// `_set_nodelay`: small writes go out at once).
    pub fn prepare(lp: &Rc<dyn BaseLoop>, sock: Rc<Socket>) -> Result<Prepared> {
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        sock.set_nonblocking(true)?;
        let sockname = sock.local_addr().ok();
        let peername = sock.peer_addr().ok();
        if sockname
            .as_ref()
            .is_some_and(|a| a.is_ipv4() || a.is_ipv6())
        {
            let _ = sock.set_tcp_nodelay(true);
        }
        let fd = raw_fd(&sock);
        Ok(Prepared {
            sock,
            fd,
            sockname,
            peername,
        })
    }

    /// The base of the transport `this` (built with `Rc::new_cyclic`).
    pub fn new(
        lp: Rc<dyn BaseLoop>,
        prepared: Prepared,
        protocol: Rc<dyn Protocol>,
        server: Option<Rc<Server>>,
        this: Weak<dyn Transport>,
    ) -> StreamBase {
        let Prepared {
            sock,
            fd,
            sockname,
            peername,
        } = prepared;
        StreamBase {
            lp,
            this,
            sock: RefCell::new(Some(sock)),
            fd,
            protocol: RefCell::new(protocol),
            server: RefCell::new(server),
            flow: FlowControl::default(),
            conn_lost: Cell::new(0),
            closing: Cell::new(false),
            eof: Cell::new(false),
            paused: Cell::new(false),
            empty_waiters: RefCell::new(Vec::new()),
            sendfile_in_progress: RefCell::new(None),
            info: SocketInfo::new(fd, sockname, peername),
        }
    }

    /// The loop.
    pub fn lp(&self) -> &Rc<dyn BaseLoop> {
        &self.lp
    }

    /// The transport, as the protocol sees it.
    pub fn me(&self) -> Rc<dyn Transport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    /// The socket's descriptor (kept after close).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The socket, until the transport closes it.
    pub fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    /// True until the socket is closed.
    pub fn is_open(&self) -> bool {
        self.sock.borrow().is_some()
    }

    /// The current protocol.
    pub fn protocol(&self) -> Rc<dyn Protocol> {
        self.protocol.borrow().clone()
    }

    /// `set_protocol`.
    pub fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        *self.protocol.borrow_mut() = protocol;
    }

    /// `get_extra_info`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.info.get(name, self.is_open())
    }

    /// `is_reading`: not paused and not closing.
    pub fn is_reading(&self) -> bool {
        !self.paused.get() && !self.closing.get()
    }

    /// Logs `what` about this transport, in debug mode.
    pub fn debug(&self, what: &str) {
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} {what}", self.repr()));
        }
    }

    /// The transport as `repr()` shows it.
    pub fn repr(&self) -> String {
        match self.this.upgrade() {
            Some(me) => crate::transports::describe(&*me),
            None => "<transport>".into(),
        }
    }

    // ----- errors ----------------------------------------------------------------------

    /// Hands `exc` to the exception handler, with the transport and its
    /// protocol.
    pub fn report(&self, exc: Error, message: &str) {
        let proto: Rc<dyn Any> = Rc::new(self.protocol());
        let tr: Rc<dyn Any> = Rc::new(self.me());
        lifecycle::report(&*self.lp, exc, message, tr, proto);
    }

    /// The reporting half of asyncio's `_fatal_error`: OS errors are only
    /// logged in debug mode; anything else goes to the exception handler.
    /// The caller then force-closes.
    pub fn report_fatal(&self, exc: &Error, message: &str) {
        lifecycle::report_fatal(&*self.lp, exc, message, &self.repr(), || {
            self.report(exc.clone(), message)
        });
    }

    /// The protocol's `eof_received` (its buffered flavour's, if it has
    /// one), after a debug log: `Ok(true)` keeps the connection half-open;
    /// a panic comes back as the error to report.
    pub fn eof_received(&self) -> Result<bool> {
        self.debug("received EOF");
        let protocol = self.protocol();
        catch_unwind(AssertUnwindSafe(|| match protocol.as_buffered() {
            Some(bp) => bp.eof_received(),
            None => protocol.eof_received(),
        }))
        .map_err(Error::from_panic)
    }

    // ----- writing ---------------------------------------------------------------------

    /// The checks `write` and `writelines` share: `RuntimeError` after
    /// `write_eof`; `Ok(false)` (drop the data) when there is nothing to
    /// write or the connection is lost ([`lifecycle::drop_lost_write`]).
    pub fn check_write(&self, empty: bool, method: &str) -> Result<bool> {
        if self.eof.get() {
            return Err(Error::runtime(format!(
                "Cannot call {method}() after write_eof()"
            )));
        }
        if self
            .sendfile_in_progress
            .borrow()
            .as_ref()
            .is_some_and(|f| f.get())
        {
            return Err(Error::runtime("unable to write; sendfile is in progress"));
        }
        if empty {
            return Ok(false);
        }
        Ok(!lifecycle::drop_lost_write(&self.conn_lost))
    }

    /// Tells the protocol to pause writing if `size` crossed the high-water
    /// mark.
    pub fn pause_if_over(&self, size: usize) {
        if let Some(e) = self.flow.pause_if_over(size, &*self.protocol()) {
            self.report(e, "protocol.pause_writing() failed");
        }
    }

    /// Tells the protocol to resume writing if `size` fell to the
    /// low-water mark.
    pub fn resume_if_drained(&self, size: usize) {
        if let Some(e) = self.flow.resume_if_drained(size, &*self.protocol()) {
            self.report(e, "protocol.resume_writing() failed");
        }
    }

    /// Shuts the socket's writing side down.
    pub fn shutdown_write(&self) {
        if let Some(s) = self.socket() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// `write_eof`: shuts writing down now if the buffer is empty, else
    /// once it drains (the transport's part).
    pub fn write_eof(&self, buffer_empty: bool) {
        if self.closing.get() || self.eof.get() {
            return;
        }
        self.eof.set(true);
        if buffer_empty {
            self.shutdown_write();
        }
    }

    /// `_make_empty_waiter`: failed at once if the connection is lost,
    /// done at once if the buffer is empty, otherwise kept until
    /// [`StreamBase::wake_empty_waiters`].
    pub fn empty_waiter(&self, buffer_empty: bool) -> Future<()> {
        let f = self.lp.create_future::<()>();
        if self.conn_lost.get() > 0 || !self.is_open() {
            let _ = f.set_exception(lifecycle::connection_closed());
        } else if buffer_empty {
            let _ = f.set_result(());
        } else {
            self.empty_waiters.borrow_mut().push(f.clone());
        }
        f
    }

    /// The buffer drained (`Ok`) or a write failed (`Err`): tells the
    /// empty-buffer waiters.
    pub fn wake_empty_waiters(&self, outcome: std::result::Result<(), &Error>) {
        for w in self.empty_waiters.borrow_mut().drain(..) {
            let _ = match outcome {
                Ok(()) => w.set_result(()),
                Err(e) => w.set_exception(e.clone()),
            };
        }
    }

    /// `_sendfile_native` over the loop's zero-copy path
    /// (`_sock_sendfile_native`: `sendfile(2)`, `TransmitFile`): no reads
    /// while the file goes out (resumed however this ends), and nothing of
    /// it before what was written earlier (asyncio's order).
    pub fn sendfile_native(
        &self,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> Option<LocalBoxFuture<'static, Result<u64>>> {
        let sock = self.socket()?;
        let transport = self.me();
        let lp = self.lp.clone();
        let in_progress = self
            .sendfile_in_progress
            .borrow_mut()
            .get_or_insert_with(Default::default)
            .clone();
        Some(Box::pin(async move {
            let _paused = crate::base_events::sendfile::ReadingPaused::new(transport.clone());
            let _writes_refused = InProgress::new(in_progress);
            let empty = transport
                ._make_empty_waiter()
                .expect("socket transports can tell");
            empty.await?;
            lp._sock_sendfile_native(sock, file, offset, count).await
        }))
    }

    // ----- closing ---------------------------------------------------------------------

    /// Counts the connection as lost and runs `f` (the transport's
    /// `call_connection_lost`) from the ready queue, or now if the loop is
    /// closed.
    pub fn schedule_connection_lost(&self, f: impl FnOnce() + 'static) {
        self.conn_lost.set(self.conn_lost.get() + 1);
        lifecycle::call_soon_or_now(&*self.lp, f);
    }

    /// asyncio's `_call_connection_lost`, once: the protocol's
    /// `connection_lost(exc)`, then `release` (the transport lets go of
    /// what it watches or has in flight), then the socket is closed
    /// (dropped), the protocol detached, the waiters told and the server
    /// told.
    pub fn connection_lost(&self, exc: Option<Error>, release: impl FnOnce()) {
        if !self.is_open() {
            return; // already torn down
        }
        let proto = self.protocol();
        let e = exc.clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_lost(e))) {
            self.report(
                Error::from_panic(p),
                "Fatal error: protocol.connection_lost() call failed.",
            );
        }
        release();
        // Dropping our reference closes the socket (unless the user kept a
        // clone of the `Rc<Socket>` they passed in).
        self.sock.borrow_mut().take();
        self.set_protocol(Rc::new(lifecycle::Detached));
        let closed = exc.unwrap_or_else(lifecycle::connection_closed);
        self.wake_empty_waiters(Err(&closed));
        if let Some(server) = self.server.borrow_mut().take() {
            server._detach(&self.this);
        }
    }

    /// The start of `close` when the loop is closed: nothing will flush or
    /// run a scheduled `connection_lost` any more, so the caller tears
    /// down now. Returns false when the loop is open.
    pub fn closing_with_loop_closed(&self) -> bool {
        if !self.lp.is_closed() {
            return false;
        }
        self.closing.set(true);
        self.conn_lost.set(self.conn_lost.get().max(1));
        true
    }
}

/// A transport built on a [`StreamBase`].
pub trait StreamTransport: Transport + 'static {
    /// Its base.
    fn stream(&self) -> &StreamBase;
}

/// Attaches `t` to its server and the loop's table of transports, then
/// schedules `connection_made`, `start_reading` and `waiter`'s result, in
/// that order.
pub fn start<T: StreamTransport>(
    t: &Rc<T>,
    start_reading: impl FnOnce() + 'static,
    waiter: Option<Future<()>>,
) -> Result<()> {
    let base = t.stream();
    if let Some(s) = &*base.server.borrow() {
        s._attach(base.this.clone());
    }
    let weak: Weak<dyn BaseTransport> = base.this.clone();
    base.lp._register_transport(base.fd, weak);
    let me = t.clone();
    let made = move || {
        let base = me.stream();
        let proto = base.protocol();
        let tr: Rc<dyn Transport> = me.clone();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| proto.connection_made(tr))) {
            // As asyncio, where it runs as a plain callback: reported, and
            // the transport goes on.
            base.report(
                Error::from_panic(e),
                "Exception in callback Protocol.connection_made()",
            );
        }
    };
    lifecycle::schedule_start(&*base.lp, made, start_reading, waiter)
}

/// Sets a flag for as long as it lives.
struct InProgress(Rc<Cell<bool>>);

impl InProgress {
    fn new(flag: Rc<Cell<bool>>) -> Self {
        flag.set(true);
        InProgress(flag)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.set(false);
    }
}
