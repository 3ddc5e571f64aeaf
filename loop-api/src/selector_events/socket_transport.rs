//! The stream socket transport on readiness (asyncio's
//! `_SelectorSocketTransport`), for TCP and Unix stream sockets.
//!
//! # How it runs
//! - Reading: while reading is on (not paused, not closing) the socket has
//!   a reader; each readiness event does one `recv` of up to 256 KiB into
//!   a per-thread scratch buffer and hands the slice to `data_received`
//!   (or fills the buffer a `BufferedProtocol` hands out). A read of zero
//!   bytes is EOF: `eof_received` decides between closing and a
//!   half-closed connection.
//! - Writing: `write` sends at once when nothing is buffered; what the
//!   socket does not take is buffered and a writer added, which sends the
//!   buffer with vectored I/O as the socket drains.
//!   [`FlowControl`] tells the protocol to pause and resume.
//! - Closing: `close` stops reading, flushes the buffer, then
//!   `connection_lost(None)`; `abort` and fatal errors drop the buffer.
//!   `connection_lost` runs exactly once, from the ready queue, and then
//!   the socket is closed (dropped).
//! - Errors: an `OSError` on the socket closes the transport and reaches
//!   `connection_lost` without troubling the exception handler (a peer
//!   reset is not a bug); anything else (a panic in the protocol, a
//!   protocol's own error) goes to the exception handler first.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use socket2::Socket;

use super::{is_retry, raw_fd};
use crate::base_events::server::Server;
use crate::events::options::MAX_READ_SIZE;
use crate::events::{LocalBoxFuture, Loop, RawFd};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::Protocol;
use crate::transports::flow_control::FlowControl;
use crate::transports::lifecycle::{self, SocketInfo};
use crate::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};

/// The most buffers one vectored send hands the kernel.
const MAX_IOV: usize = 64;

thread_local! {
    /// The read buffer every transport on this thread shares: reads are
    /// copied out by `data_received`, so one is enough.
    static READ_BUF: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// The shared read buffer, or a fresh one when it is in use (a protocol
/// callback that reads another transport... which cannot happen on one
/// thread today, but costs nothing to allow).
pub(crate) fn take_read_buf() -> Box<[u8]> {
    READ_BUF
        .take()
        .unwrap_or_else(|| vec![0u8; MAX_READ_SIZE].into_boxed_slice())
}

/// Gives the read buffer back.
pub(crate) fn put_read_buf(buf: Box<[u8]>) {
    READ_BUF.set(Some(buf));
}

/// Buffered outgoing bytes: whole chunks, the first partly sent.
#[derive(Default)]
pub(crate) struct WriteBuffer {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already sent.
    head: usize,
    size: usize,
}

impl WriteBuffer {
    pub(crate) fn len(&self) -> usize {
        self.size
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.size += data.len();
        self.chunks.push_back(data.to_vec());
    }
    pub(crate) fn clear(&mut self) {
        *self = WriteBuffer::default();
    }
    /// Up to [`MAX_IOV`] slices of what is buffered, in order.
    pub(crate) fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut v = Vec::with_capacity(self.chunks.len().min(MAX_IOV));
        for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
            let c = if i == 0 { &c[self.head..] } else { &c[..] };
            v.push(IoSlice::new(c));
        }
        v
    }
    /// Forgets the first `n` bytes (sent).
    pub(crate) fn consume(&mut self, mut n: usize) {
        self.size -= n;
        while n > 0 {
            let front = self.chunks.front().expect("consumed no more than buffered");
            let left = front.len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.head = 0;
            self.chunks.pop_front();
        }
    }
}

/// asyncio's `_SelectorSocketTransport`.
pub struct SocketTransport {
    lp: Loop,
    this: Weak<SocketTransport>,
    /// `None` once closed.
    sock: RefCell<Option<Rc<Socket>>>,
    fd: RawFd,
    protocol: RefCell<Rc<dyn Protocol>>,
    server: RefCell<Option<Rc<Server>>>,
    buffer: RefCell<WriteBuffer>,
    flow: FlowControl,
    /// asyncio's `_conn_lost`: 0 while the connection lives, then counts
    /// the writes made after it was lost.
    conn_lost: Cell<u32>,
    closing: Cell<bool>,
    /// `write_eof` was called.
    eof: Cell<bool>,
    paused: Cell<bool>,
    empty_waiters: RefCell<Vec<Future<()>>>,
    info: SocketInfo,
}

impl SocketTransport {
    /// Wraps a connected stream socket (asyncio's `_make_socket_transport`):
    /// sets `TCP_NODELAY` on TCP, then schedules `connection_made`, the
    /// reader, and `waiter`'s result, in that order.
    pub fn create(
        lp: Loop,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        let t = Self::new(lp, sock, protocol, server)?;
        let (me, me2) = (t.clone(), t.clone());
        let made = move || {
            let proto = me.protocol.borrow().clone();
            let tr: Rc<dyn Transport> = me.clone();
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| proto.connection_made(tr))) {
                // As asyncio, where it runs as a plain callback: reported,
                // and the transport goes on.
                me.report(
                    Error::from_panic(e),
                    "Exception in callback Protocol.connection_made()",
                );
            }
        };
        lifecycle::schedule_start(&t.lp, made, move || me2.add_reader(), waiter)?;
        Ok(t)
    }

    fn new(
        lp: Loop,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<SocketTransport>> {
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
            // asyncio's `_set_nodelay`: small writes go out at once.
            let _ = sock.set_tcp_nodelay(true);
        }
        let fd = raw_fd(&sock);
        let t = Rc::new_cyclic(|this| SocketTransport {
            lp: lp.clone(),
            this: this.clone(),
            sock: RefCell::new(Some(sock)),
            fd,
            protocol: RefCell::new(protocol),
            server: RefCell::new(server.clone()),
            buffer: RefCell::new(WriteBuffer::default()),
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
        Ok(t)
    }

    fn me(&self) -> Rc<SocketTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    // ----- reading -------------------------------------------------------------------

    fn add_reader(&self) {
        if !self.is_reading() || self.sock.borrow().is_none() {
            return;
        }
        let me = self.me();
        if let Err(e) = self
            .lp
            ._add_reader(self.fd, Box::new(move || me.read_ready()))
        {
            self.fatal_error(e, "Fatal error: cannot watch the socket for reading.");
        }
    }

    fn read_ready(&self) {
        if self.conn_lost.get() > 0 {
            return;
        }
        let proto = self.protocol.borrow().clone();
        if proto.as_buffered().is_some() {
            self.read_ready_buffered(&*proto);
        } else {
            self.read_ready_data(&*proto);
        }
    }

    fn read_ready_data(&self, proto: &dyn Protocol) {
        let Some(sock) = self.socket() else { return };
        let mut buf = take_read_buf();
        let r = (&*sock).read(&mut buf);
        match r {
            Ok(0) => {
                put_read_buf(buf);
                self.read_ready_on_eof(proto);
            }
            Ok(n) => {
                let r = catch_unwind(AssertUnwindSafe(|| proto.data_received(&buf[..n])));
                put_read_buf(buf);
                if let Err(p) = r {
                    self.fatal_error(
                        Error::from_panic(p),
                        "Fatal error: protocol.data_received() call failed.",
                    );
                }
            }
            Err(e) => {
                put_read_buf(buf);
                if !is_retry(&e) {
                    self.fatal_error(e.into(), "Fatal read error on socket transport");
                }
            }
        }
    }

    fn read_ready_buffered(&self, proto: &dyn Protocol) {
        let Some(bp) = proto.as_buffered() else {
            return;
        };
        let mut buf = match lifecycle::get_buffer(bp, 0) {
            Ok(b) => b,
            Err(e) => {
                self.fatal_error(e, "Fatal error: protocol.get_buffer() call failed.");
                return;
            }
        };
        let Some(sock) = self.socket() else { return };
        let n = match (&*sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) if is_retry(&e) => return,
            Err(e) => {
                self.fatal_error(e.into(), "Fatal read error on socket transport");
                return;
            }
        };
        if n == 0 {
            self.read_ready_on_eof(proto);
            return;
        }
        if let Err(e) = lifecycle::buffer_updated(bp, buf, n) {
            self.fatal_error(e, "Fatal error: protocol.buffer_updated() call failed.");
        }
    }

    fn read_ready_on_eof(&self, proto: &dyn Protocol) {
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} received EOF", self.repr()));
        }
        match lifecycle::eof_received(proto) {
            Err(e) => self.fatal_error(e, "Fatal error: protocol.eof_received() call failed."),
            // The protocol may still write; nothing more can be read.
            Ok(true) => {
                let _ = self.lp._remove_reader(self.fd);
            }
            Ok(false) => self.close(),
        }
    }

    // ----- writing -------------------------------------------------------------------

    /// Checks shared by `write` and `writelines`; `Ok(false)`: drop the data.
    fn write_allowed(&self, empty: bool, method: &str) -> Result<bool> {
        lifecycle::check_write(self.eof.get(), empty, method, &self.conn_lost)
    }

    /// Sends what it can of `data` at once, when nothing is buffered;
    /// returns how much was sent, or `None` after a fatal error.
    fn try_send_now(&self, data: &[IoSlice<'_>]) -> Option<usize> {
        let sock = self.socket()?;
        let r = if data.len() == 1 {
            sock.send(&data[0])
        } else {
            sock.send_vectored(data)
        };
        match r {
            Ok(n) => Some(n),
            Err(e) if is_retry(&e) => Some(0),
            Err(e) => {
                self.fatal_error(e.into(), "Fatal write error on socket transport");
                None
            }
        }
    }

    /// Buffers what was not sent of `parts` and makes sure a writer drains it.
    fn buffer_rest(&self, parts: &[&[u8]], mut sent: usize) {
        let was_empty = self.buffer.borrow().is_empty();
        {
            let mut b = self.buffer.borrow_mut();
            for p in parts {
                if sent >= p.len() {
                    sent -= p.len();
                    continue;
                }
                b.push(&p[sent..]);
                sent = 0;
            }
        }
        if was_empty && !self.buffer.borrow().is_empty() {
            let me = self.me();
            if let Err(e) = self
                .lp
                ._add_writer(self.fd, Box::new(move || me.write_ready()))
            {
                self.fatal_error(e, "Fatal error: cannot watch the socket for writing.");
                return;
            }
        }
        self.maybe_pause_protocol();
    }

    fn write_ready(&self) {
        if self.conn_lost.get() > 0 {
            return;
        }
        let Some(sock) = self.socket() else { return };
        let r = {
            let b = self.buffer.borrow();
            if b.is_empty() {
                None
            } else {
                Some(sock.send_vectored(&b.slices()))
            }
        };
        match r {
            None => {}
            Some(Ok(n)) => {
                self.buffer.borrow_mut().consume(n);
                self.maybe_resume_protocol(); // may write and grow the buffer
                if self.buffer.borrow().is_empty() {
                    let _ = self.lp._remove_writer(self.fd);
                    for w in self.empty_waiters.borrow_mut().drain(..) {
                        let _ = w.set_result(());
                    }
                    if self.closing.get() {
                        self.call_connection_lost(None);
                    } else if self.eof.get() {
                        let _ = sock.shutdown(Shutdown::Write);
                    }
                }
            }
            Some(Err(e)) if is_retry(&e) => {}
            Some(Err(e)) => {
                let _ = self.lp._remove_writer(self.fd);
                self.buffer.borrow_mut().clear();
                let e: Error = e.into();
                for w in self.empty_waiters.borrow_mut().drain(..) {
                    let _ = w.set_exception(e.clone());
                }
                self.fatal_error(e, "Fatal write error on socket transport");
            }
        }
    }

    fn maybe_pause_protocol(&self) {
        let proto = self.protocol.borrow().clone();
        let size = self.buffer.borrow().len();
        if let Some(e) = self.flow.pause_if_over(size, &*proto) {
            self.report(e, "protocol.pause_writing() failed");
        }
    }

    fn maybe_resume_protocol(&self) {
        let proto = self.protocol.borrow().clone();
        let size = self.buffer.borrow().len();
        if let Some(e) = self.flow.resume_if_drained(size, &*proto) {
            self.report(e, "protocol.resume_writing() failed");
        }
    }

    // ----- closing -------------------------------------------------------------------

    /// Hands `exc` to the exception handler, with this transport and its protocol.
    fn report(&self, exc: Error, message: &str) {
        let proto: Rc<dyn Any> = Rc::new(self.protocol.borrow().clone());
        let tr: Rc<dyn Any> = Rc::new(self.me() as Rc<dyn Transport>);
        lifecycle::report(&self.lp, exc, message, tr, proto);
    }

    /// asyncio's `_fatal_error`: OS errors only close (logged in debug
    /// mode); anything else is reported first.
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
        if !self.buffer.borrow().is_empty() {
            self.buffer.borrow_mut().clear();
            let _ = self.lp._remove_writer(self.fd);
        }
        if !self.closing.replace(true) {
            let _ = self.lp._remove_reader(self.fd);
        }
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
        let _ = self.lp._remove_reader(self.fd);
        let _ = self.lp._remove_writer(self.fd);
        // Dropping our reference closes the socket (unless the user kept a
        // clone of the `Rc<Socket>` they passed in).
        self.sock.borrow_mut().take();
        *self.protocol.borrow_mut() = Rc::new(lifecycle::Detached);
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

impl BaseTransport for SocketTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.info.get(name, self.sock.borrow().is_some())
    }

    fn is_closing(&self) -> bool {
        self.closing.get()
    }

    fn close(&self) {
        if self.lp.is_closed() {
            // Nothing will flush the buffer or run a scheduled
            // `connection_lost` any more: tear down now.
            self.closing.set(true);
            self.conn_lost.set(self.conn_lost.get().max(1));
            self.buffer.borrow_mut().clear();
            self.call_connection_lost(None);
            return;
        }
        if self.closing.replace(true) {
            return;
        }
        let _ = self.lp._remove_reader(self.fd);
        if self.buffer.borrow().is_empty() {
            self.conn_lost.set(self.conn_lost.get() + 1);
            let _ = self.lp._remove_writer(self.fd);
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

impl ReadTransport for SocketTransport {
    fn is_reading(&self) -> bool {
        !self.paused.get() && !self.closing.get()
    }

    fn pause_reading(&self) {
        if !self.is_reading() {
            return;
        }
        self.paused.set(true);
        let _ = self.lp._remove_reader(self.fd);
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} pauses reading", self.repr()));
        }
    }

    fn resume_reading(&self) {
        if self.closing.get() || !self.paused.get() {
            return;
        }
        self.paused.set(false);
        self.add_reader();
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} resumes reading", self.repr()));
        }
    }
}

impl WriteTransport for SocketTransport {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.flow.set_limits(high, low)?;
        self.maybe_pause_protocol();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.flow.get_limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer.borrow().len()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        if !self.write_allowed(data.is_empty(), "write")? {
            return Ok(());
        }
        let mut sent = 0;
        if self.buffer.borrow().is_empty() {
            match self.try_send_now(&[IoSlice::new(data)]) {
                Some(n) if n == data.len() => return Ok(()),
                Some(n) => sent = n,
                None => return Ok(()),
            }
        }
        self.buffer_rest(&[data], sent);
        Ok(())
    }

    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        if !self.write_allowed(total == 0, "writelines")? {
            return Ok(());
        }
        let mut sent = 0;
        if self.buffer.borrow().is_empty() {
            let slices: Vec<IoSlice<'_>> = data
                .iter()
                .filter(|d| !d.is_empty())
                .take(MAX_IOV)
                .map(|d| IoSlice::new(d))
                .collect();
            match self.try_send_now(&slices) {
                Some(n) if n == total => return Ok(()),
                Some(n) => sent = n,
                None => return Ok(()),
            }
        }
        self.buffer_rest(data, sent);
        Ok(())
    }

    fn write_eof(&self) -> Result<()> {
        if self.closing.get() || self.eof.get() {
            return Ok(());
        }
        self.eof.set(true);
        if self.buffer.borrow().is_empty() {
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
            self.buffer.borrow().is_empty(),
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

impl Transport for SocketTransport {}
