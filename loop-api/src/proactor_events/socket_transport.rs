//! The stream socket transport of completion-based backends (asyncio's
//! `_ProactorSocketTransport`), for TCP and Unix stream sockets.
//!
//! # How it runs
//! - Reading: one receive at a time (it may be multishot), started by the
//!   backend ([`StreamIo::start_recv`]). A receive of zero bytes is EOF.
//!   Pausing lets the receive in flight complete (a multishot receive is
//!   cancelled at its next completion) and starts no other; what it brings
//!   is held and delivered on resume, so nothing is lost.
//! - Writing: `write` appends to the buffer and, when no send is in flight,
//!   hands the whole buffer (up to [`StreamIo::MAX_CHUNKS`] chunks, moved,
//!   not copied) to one send. More writes meanwhile wait for its
//!   completion and go out in the next. Writes made while the transport
//!   processes its completions go out together when it is done.
//!   `get_write_buffer_size` counts what is buffered and what is in
//!   flight, as asyncio's proactor does; flow control is the shared
//!   [`FlowControl`].
//! - Closing: as on every backend (`transports::lifecycle`): `close`
//!   flushes, `abort` drops the buffer, `connection_lost` runs once, then
//!   the socket is closed. Requests still in flight are cancelled; their
//!   memory stays with the backend until their completions arrive.
//! - The protocol is only ever called from the transport's step on the
//!   ready queue (or a callback it schedules), never from inside `poll`.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use socket2::Socket;

use super::{RecvEvent, SendBatch, StreamIo};
use crate::base_events::server::Server;
use crate::events::{LocalBoxFuture, Loop, RawFd, Step};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::Protocol;
use crate::selector_events::raw_fd;
use crate::transports::flow_control::FlowControl;
use crate::transports::lifecycle::{self, SocketInfo};
use crate::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};

/// Chunks kept for reuse: at most this many ...
const SPARE_CHUNKS: usize = 4;
/// ... of at most this capacity.
const SPARE_CAPACITY: usize = 1024 * 1024;
/// Small writes are appended to the last buffered chunk up to this size.
const COALESCE: usize = 64 * 1024;

/// Buffered outgoing bytes, as whole chunks.
#[derive(Default)]
struct Outgoing {
    batch: SendBatch,
    size: usize,
    /// Chunks whose bytes were sent, for the next writes: an echo of large
    /// messages would otherwise allocate (and fault in) fresh memory for
    /// every message, where a readiness transport sends from the caller's
    /// slice.
    spare: Vec<Vec<u8>>,
}

impl Outgoing {
    /// Buffers a copy of `data`: appended to the last chunk when both are
    /// small (that chunk is not in flight: a send takes its chunks out of
    /// the buffer), else in a chunk of its own, reusing a spare one.
    fn push(&mut self, data: &[u8]) {
        self.size += data.len();
        if let Some(last) = self.batch.chunks.back_mut() {
            if last.len() + data.len() <= COALESCE {
                last.extend_from_slice(data);
                return;
            }
        }
        let mut chunk = match self.spare.iter().position(|c| c.capacity() >= data.len()) {
            Some(i) => self.spare.swap_remove(i),
            None => Vec::with_capacity(data.len()),
        };
        chunk.extend_from_slice(data);
        self.batch.chunks.push_back(chunk);
    }

    /// Keeps a sent chunk for reuse, if there is room.
    fn recycle(&mut self, mut chunk: Vec<u8>) {
        if self.spare.len() < SPARE_CHUNKS && chunk.capacity() <= SPARE_CAPACITY {
            chunk.clear();
            self.spare.push(chunk);
        }
    }
}

/// asyncio's `_ProactorSocketTransport`, over a backend's [`StreamIo`].
pub struct ProactorSocketTransport<I: StreamIo> {
    lp: Loop,
    this: Weak<ProactorSocketTransport<I>>,
    io: I,
    /// `None` once closed.
    sock: RefCell<Option<Rc<Socket>>>,
    fd: RawFd,
    protocol: RefCell<Rc<dyn Protocol>>,
    server: RefCell<Option<Rc<Server>>>,
    /// A receive is outstanding (until its last completion).
    receiving: Cell<bool>,
    /// The receive went as far as it can: EOF or an error.
    read_done: Cell<bool>,
    /// Received while paused (or cancelling), for `resume_reading`.
    held: RefCell<Vec<u8>>,
    held_eof: Cell<bool>,
    /// A send is outstanding, with this many bytes.
    sending: Cell<bool>,
    in_flight: Cell<usize>,
    outgoing: RefCell<Outgoing>,
    scheduled: Cell<bool>,
    /// Inside this transport's step: writes only buffer, and the step
    /// sends them all in one request when it ends.
    in_step: Cell<bool>,
    flow: FlowControl,
    /// asyncio's `_conn_lost`.
    conn_lost: Cell<u32>,
    closing: Cell<bool>,
    eof: Cell<bool>,
    paused: Cell<bool>,
    empty_waiters: RefCell<Vec<Future<()>>>,
    info: SocketInfo,
}

impl<I: StreamIo> ProactorSocketTransport<I> {
    /// Wraps a connected stream socket: `TCP_NODELAY` on TCP, then
    /// `connection_made`, the first receive, and `waiter`'s result.
    pub fn create(
        lp: Loop,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
        io: I,
    ) -> Result<Rc<Self>> {
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
        let t = Rc::new_cyclic(|this| ProactorSocketTransport {
            lp: lp.clone(),
            this: this.clone(),
            io,
            sock: RefCell::new(Some(sock)),
            fd,
            protocol: RefCell::new(protocol),
            server: RefCell::new(server.clone()),
            receiving: Cell::new(false),
            read_done: Cell::new(false),
            held: RefCell::new(Vec::new()),
            held_eof: Cell::new(false),
            sending: Cell::new(false),
            in_flight: Cell::new(0),
            outgoing: RefCell::new(Outgoing::default()),
            scheduled: Cell::new(false),
            in_step: Cell::new(false),
            flow: FlowControl::default(),
            conn_lost: Cell::new(0),
            closing: Cell::new(false),
            eof: Cell::new(false),
            paused: Cell::new(false),
            empty_waiters: RefCell::new(Vec::new()),
            info: SocketInfo::new(fd, sockname, peername),
        });
        if let Some(s) = &server {
            let weak: Weak<dyn Transport> = t.this.clone();
            s._attach(weak);
        }
        let weak: Weak<dyn BaseTransport> = t.this.clone();
        lp._register_transport(fd, weak);
        let (me, me2) = (t.clone(), t.clone());
        let made = move || {
            let proto = me.protocol.borrow().clone();
            let tr: Rc<dyn Transport> = me.clone();
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| proto.connection_made(tr))) {
                me.report(
                    Error::from_panic(e),
                    "Exception in callback Protocol.connection_made()",
                );
            }
        };
        lifecycle::schedule_start(&lp, made, move || me2.start_reading(), waiter)?;
        Ok(t)
    }

    /// The backend's part.
    pub fn io(&self) -> &I {
        &self.io
    }

    /// The socket's descriptor (kept after close, for the backend's use).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The socket, until the transport closes it.
    pub fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    /// Has [`StreamIo::process`] run from the ready queue soon. The
    /// backend's completion handler calls this (from inside `poll`).
    pub fn schedule(self: &Rc<Self>) {
        if !self.scheduled.replace(true) && self.lp.call_soon_step(self.clone()).is_err() {
            self.scheduled.set(false);
        }
    }

    fn me(&self) -> Rc<Self> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    // ----- reading -------------------------------------------------------------------

    /// Starts a receive if reading is on and none is outstanding.
    fn start_reading(&self) {
        if !self.is_reading()
            || self.read_done.get()
            || self.receiving.get()
            || self.sock.borrow().is_none()
        {
            return;
        }
        self.receiving.set(true);
        if let Err(e) = I::start_recv(&self.me()) {
            self.receiving.set(false);
            self.fatal_error(e, "Fatal error: cannot start receiving.");
        }
    }

    /// One completion of the receive; `more`: the receive goes on after it.
    pub fn on_recv(&self, event: RecvEvent<'_>, more: bool) {
        if !more {
            self.receiving.set(false);
        }
        match event {
            RecvEvent::Data(data) => {
                self.received(data);
                // Paused: what this receive brought is held; a multishot
                // receive would go on bringing more, so stop it now.
                if more && !self.is_reading() {
                    self.io.cancel_recv();
                }
            }
            RecvEvent::Stopped => {}
            RecvEvent::Eof => {
                self.read_done.set(true);
                if self.paused.get() {
                    self.held_eof.set(true);
                } else if self.conn_lost.get() == 0 && !self.closing.get() {
                    self.on_eof();
                }
                return;
            }
            RecvEvent::Error(e) => {
                self.read_done.set(true);
                if self.conn_lost.get() == 0 {
                    self.fatal_error(e.into(), "Fatal read error on socket transport");
                }
                return;
            }
        }
        if !more {
            self.start_reading();
        }
    }

    /// Data from the socket: to the protocol, or held while paused.
    fn received(&self, data: &[u8]) {
        if self.conn_lost.get() > 0 || self.closing.get() {
            return;
        }
        if self.paused.get() {
            self.held.borrow_mut().extend_from_slice(data);
            return;
        }
        self.deliver(data);
    }

    fn deliver(&self, data: &[u8]) {
        let proto = self.protocol.borrow().clone();
        if let Some(bp) = proto.as_buffered() {
            let mut rest = data;
            while !rest.is_empty() && self.conn_lost.get() == 0 {
                let mut buf = match lifecycle::get_buffer(bp, rest.len()) {
                    Ok(b) => b,
                    Err(e) => {
                        self.fatal_error(e, "Fatal error: protocol.get_buffer() call failed.");
                        return;
                    }
                };
                let n = buf.len().min(rest.len());
                buf[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                if let Err(e) = lifecycle::buffer_updated(bp, buf, n) {
                    self.fatal_error(e, "Fatal error: protocol.buffer_updated() call failed.");
                    return;
                }
            }
            return;
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.data_received(data))) {
            self.fatal_error(
                Error::from_panic(p),
                "Fatal error: protocol.data_received() call failed.",
            );
        }
    }

    fn on_eof(&self) {
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} received EOF", self.repr()));
        }
        let proto = self.protocol.borrow().clone();
        match lifecycle::eof_received(&*proto) {
            Err(e) => self.fatal_error(e, "Fatal error: protocol.eof_received() call failed."),
            Ok(true) => {} // half-closed: nothing more to read
            Ok(false) => self.close(),
        }
    }

    /// What was held while paused, now that reading resumed.
    fn deliver_held(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if !held.is_empty() && self.conn_lost.get() == 0 && !self.closing.get() {
            self.deliver(&held);
        }
        if self.held_eof.replace(false) && self.conn_lost.get() == 0 && !self.closing.get() {
            self.on_eof();
        }
    }

    // ----- writing -------------------------------------------------------------------

    fn write_allowed(&self, empty: bool, method: &str) -> Result<bool> {
        lifecycle::check_write(self.eof.get(), empty, method, &self.conn_lost)
    }

    fn buffer_size(&self) -> usize {
        self.outgoing.borrow().size + self.in_flight.get()
    }

    /// Sends what is buffered, if no send is in flight.
    fn start_send(&self) {
        if self.sending.get() || self.conn_lost.get() > 0 || self.in_step.get() {
            return;
        }
        let batch = {
            let mut o = self.outgoing.borrow_mut();
            if o.size == 0 {
                return;
            }
            let take = o.batch.chunks.len().min(I::MAX_CHUNKS);
            let batch = SendBatch {
                chunks: o.batch.chunks.drain(..take).collect(),
                head: std::mem::take(&mut o.batch.head),
            };
            o.size -= batch.len();
            batch
        };
        self.in_flight.set(batch.len());
        self.sending.set(true);
        if let Err(e) = I::start_send(&self.me(), batch) {
            self.sending.set(false);
            self.in_flight.set(0);
            self.fatal_error(e, "Fatal write error on socket transport");
        }
    }

    /// The send's completion: how many bytes the kernel took (or why it
    /// failed), and the batch back.
    pub fn on_sent(&self, result: io::Result<usize>, mut batch: SendBatch) {
        self.sending.set(false);
        self.in_flight.set(0);
        if self.conn_lost.get() > 0 {
            return; // aborted: the rest is dropped
        }
        let mut sent = match result {
            Ok(n) => n,
            Err(e) => {
                // `fatal_error` drops what is buffered.
                let e: Error = e.into();
                for w in self.empty_waiters.borrow_mut().drain(..) {
                    let _ = w.set_exception(e.clone());
                }
                self.fatal_error(e, "Fatal write error on socket transport");
                return;
            }
        };
        // What the kernel did not take goes back to the front, in order
        // (nothing else is at the front: the send took the head).
        let mut head = batch.head;
        let mut unsent = std::mem::take(&mut batch.chunks);
        while let Some(front) = unsent.front() {
            let left = front.len() - head;
            if sent < left {
                head += sent;
                break;
            }
            sent -= left;
            head = 0;
            if let Some(done) = unsent.pop_front() {
                self.outgoing.borrow_mut().recycle(done);
            }
        }
        if !unsent.is_empty() {
            let extra = unsent.iter().map(Vec::len).sum::<usize>() - head;
            let mut o = self.outgoing.borrow_mut();
            for chunk in unsent.into_iter().rev() {
                o.batch.chunks.push_front(chunk);
            }
            o.batch.head = head;
            o.size += extra;
        }
        self.maybe_resume_protocol(); // may write and grow the buffer
        if self.buffer_size() > 0 {
            self.start_send();
            return;
        }
        for w in self.empty_waiters.borrow_mut().drain(..) {
            let _ = w.set_result(());
        }
        if self.closing.get() {
            self.conn_lost.set(self.conn_lost.get() + 1);
            let me = self.me();
            lifecycle::call_soon_or_now(&self.lp, move || me.call_connection_lost(None));
        } else if self.eof.get() {
            if let Some(s) = self.socket() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }

    fn maybe_pause_protocol(&self) {
        let proto = self.protocol.borrow().clone();
        if let Some(e) = self.flow.pause_if_over(self.buffer_size(), &*proto) {
            self.report(e, "protocol.pause_writing() failed");
        }
    }

    fn maybe_resume_protocol(&self) {
        let proto = self.protocol.borrow().clone();
        if let Some(e) = self.flow.resume_if_drained(self.buffer_size(), &*proto) {
            self.report(e, "protocol.resume_writing() failed");
        }
    }

    fn push_outgoing(&self, parts: &[&[u8]]) {
        let mut o = self.outgoing.borrow_mut();
        for p in parts.iter().filter(|p| !p.is_empty()) {
            o.push(p);
        }
    }

    fn write_parts(&self, parts: &[&[u8]], method: &str) -> Result<()> {
        let total: usize = parts.iter().map(|d| d.len()).sum();
        if !self.write_allowed(total == 0, method)? {
            return Ok(());
        }
        self.push_outgoing(parts);
        self.start_send();
        self.maybe_pause_protocol();
        Ok(())
    }

    // ----- closing -------------------------------------------------------------------

    fn report(&self, exc: Error, message: &str) {
        let proto: Rc<dyn Any> = Rc::new(self.protocol.borrow().clone());
        let tr: Rc<dyn Any> = Rc::new(self.me() as Rc<dyn Transport>);
        lifecycle::report(&self.lp, exc, message, tr, proto);
    }

    fn fatal_error(&self, exc: Error, message: &str) {
        lifecycle::report_fatal(&self.lp, &exc, message, &self.repr(), || {
            self.report(exc.clone(), message)
        });
        self.force_close(Some(exc));
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.conn_lost.get() > 0 {
            return;
        }
        *self.outgoing.borrow_mut() = Outgoing::default();
        // What is in flight is dropped too (cancelled; whatever the kernel
        // sent before it saw the cancel is gone already).
        self.io.cancel_send();
        self.in_flight.set(0);
        self.closing.set(true);
        self.io.cancel_recv();
        self.conn_lost.set(self.conn_lost.get() + 1);
        let me = self.me();
        lifecycle::call_soon_or_now(&self.lp, move || me.call_connection_lost(exc));
    }

    fn call_connection_lost(&self, exc: Option<Error>) {
        if self.sock.borrow().is_none() {
            return; // already torn down
        }
        let proto = self.protocol.borrow().clone();
        let e = exc.clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_lost(e))) {
            self.report(
                Error::from_panic(p),
                "Fatal error: protocol.connection_lost() call failed.",
            );
        }
        self.io.cancel_recv();
        self.io.cancel_send();
        if self.receiving.get() || self.sending.get() {
            self.io.settle();
        }
        self.sock.borrow_mut().take();
        *self.protocol.borrow_mut() = Rc::new(lifecycle::Detached);
        self.held.borrow_mut().clear();
        let closed = exc.unwrap_or_else(lifecycle::connection_closed);
        for w in self.empty_waiters.borrow_mut().drain(..) {
            let _ = w.set_exception(closed.clone());
        }
        if let Some(server) = self.server.borrow_mut().take() {
            let weak: Weak<dyn Transport> = self.this.clone();
            server._detach(&weak);
        }
    }

    fn repr(&self) -> String {
        crate::transports::describe(self)
    }
}

impl<I: StreamIo> Step for ProactorSocketTransport<I> {
    fn run_step(self: Rc<Self>) {
        self.scheduled.set(false);
        self.in_step.set(true);
        I::process(&self);
        self.in_step.set(false);
        // What the protocol wrote while its data came in, in one request.
        self.start_send();
    }

    fn describe(&self) -> String {
        format!("<completions of {}>", self.repr())
    }
}

impl<I: StreamIo> BaseTransport for ProactorSocketTransport<I> {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.info.get(name, self.sock.borrow().is_some())
    }

    fn is_closing(&self) -> bool {
        self.closing.get()
    }

    fn close(&self) {
        if self.lp.is_closed() {
            // Nothing will flush or run a scheduled `connection_lost` any
            // more: tear down now.
            self.closing.set(true);
            self.conn_lost.set(self.conn_lost.get().max(1));
            *self.outgoing.borrow_mut() = Outgoing::default();
            self.call_connection_lost(None);
            return;
        }
        if self.closing.replace(true) {
            return;
        }
        self.io.cancel_recv();
        if self.buffer_size() == 0 {
            self.conn_lost.set(self.conn_lost.get() + 1);
            let me = self.me();
            lifecycle::call_soon_or_now(&self.lp, move || me.call_connection_lost(None));
        }
    }

    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        *self.protocol.borrow_mut() = protocol;
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.protocol.borrow().clone()
    }
}

impl<I: StreamIo> ReadTransport for ProactorSocketTransport<I> {
    fn is_reading(&self) -> bool {
        !self.paused.get() && !self.closing.get()
    }

    fn pause_reading(&self) {
        if !self.is_reading() {
            return;
        }
        self.paused.set(true);
        // The receive in flight is left to complete, as in asyncio's
        // proactor: what it brings is held for `resume_reading`, and no
        // new receive starts until then. A pause that ends before data
        // arrives (flow control on an echo) costs no request at all.
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} pauses reading", self.repr()));
        }
    }

    fn resume_reading(&self) {
        if self.closing.get() || !self.paused.get() {
            return;
        }
        self.paused.set(false);
        if !self.held.borrow().is_empty() || self.held_eof.get() {
            let me = self.me();
            lifecycle::call_soon_or_now(&self.lp, move || {
                if me.is_reading() {
                    me.deliver_held();
                }
            });
        }
        self.start_reading();
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} resumes reading", self.repr()));
        }
    }
}

impl<I: StreamIo> WriteTransport for ProactorSocketTransport<I> {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.flow.set_limits(high, low)?;
        self.maybe_pause_protocol();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.flow.get_limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer_size()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        self.write_parts(&[data], "write")
    }

    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        self.write_parts(data, "writelines")
    }

    fn write_eof(&self) -> Result<()> {
        if self.closing.get() || self.eof.get() {
            return Ok(());
        }
        self.eof.set(true);
        if self.buffer_size() == 0 {
            if let Some(s) = self.socket() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn abort(&self) {
        self.force_close(None);
    }

    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        Some(lifecycle::empty_waiter(
            &self.lp,
            self.conn_lost.get() > 0 || self.sock.borrow().is_none(),
            self.buffer_size() == 0,
            &self.empty_waiters,
        ))
    }

    fn _sendfile_native(
        &self,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> Option<LocalBoxFuture<'static, Result<u64>>> {
        let sock = self.socket()?;
        Some(lifecycle::sendfile_native(
            self.me(),
            self.lp.clone(),
            sock,
            file,
            offset,
            count,
        ))
    }
}

impl<I: StreamIo> Transport for ProactorSocketTransport<I> {}
