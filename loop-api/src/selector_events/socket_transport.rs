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
//!   [`FlowControl`](crate::transports::flow_control::FlowControl) tells the
//!   protocol to pause and resume.
//! - Closing: `close` stops reading, flushes the buffer, then
//!   `connection_lost(None)`; `abort` and fatal errors drop the buffer.
//!   `connection_lost` runs exactly once, from the ready queue, and then
//!   the socket is closed (dropped).
//! - Errors: an `OSError` on the socket closes the transport and reaches
//!   `connection_lost` without troubling the exception handler (a peer
//!   reset is not a bug); anything else (a panic in the protocol, a
//!   protocol's own error) goes to the exception handler first.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use socket2::Socket;

use crate::base_events::server::Server;
use crate::base_events::sockets::is_retry;
use crate::base_events::stream_base::{self, StreamBase, StreamTransport};
use crate::base_events::BaseLoop;
use crate::events::options::MAX_READ_SIZE;
use crate::events::LocalBoxFuture;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::transports::lifecycle;
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
    base: StreamBase,
    this: Weak<SocketTransport>,
    buffer: RefCell<WriteBuffer>,
}

impl SocketTransport {
    /// Wraps a connected stream socket (asyncio's `_make_socket_transport`):
    /// sets `TCP_NODELAY` on TCP, then schedules `connection_made`, the
    /// reader, and `waiter`'s result, in that order.
    pub fn create(
        lp: Rc<dyn BaseLoop>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        let prepared = StreamBase::prepare(&lp, sock)?;
        let t = Rc::new_cyclic(|this: &Weak<SocketTransport>| SocketTransport {
            base: StreamBase::new(lp, prepared, protocol, server, this.clone()),
            this: this.clone(),
            buffer: RefCell::new(WriteBuffer::default()),
        });
        let me = t.clone();
        stream_base::start(&t, move || me.add_reader(), waiter)?;
        Ok(t)
    }

    fn me(&self) -> Rc<SocketTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    fn socket(&self) -> Option<Rc<Socket>> {
        self.base.socket()
    }

    // ----- reading -------------------------------------------------------------------

    fn add_reader(&self) {
        if !self.is_reading() || !self.base.is_open() {
            return;
        }
        let me = self.me();
        if let Err(e) = self
            .base
            .lp()
            ._add_reader(self.base.fd(), Box::new(move || me.read_ready()))
        {
            self.fatal_error(e, "Fatal error: cannot watch the socket for reading.");
        }
    }

    fn read_ready(&self) {
        if self.base.conn_lost.get() > 0 {
            return;
        }
        let proto = self.base.protocol();
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
                self.read_ready_on_eof();
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
            self.read_ready_on_eof();
            return;
        }
        if let Err(e) = lifecycle::buffer_updated(bp, buf, n) {
            self.fatal_error(e, "Fatal error: protocol.buffer_updated() call failed.");
        }
    }

    fn read_ready_on_eof(&self) {
        match self.base.eof_received() {
            Err(e) => self.fatal_error(e, "Fatal error: protocol.eof_received() call failed."),
            // The protocol may still write; nothing more can be read.
            Ok(true) => {
                let _ = self.base.lp()._remove_reader(self.base.fd());
            }
            Ok(false) => self.close(),
        }
    }

    // ----- writing -------------------------------------------------------------------

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
                .base
                .lp()
                ._add_writer(self.base.fd(), Box::new(move || me.write_ready()))
            {
                self.fatal_error(e, "Fatal error: cannot watch the socket for writing.");
                return;
            }
        }
        self.maybe_pause_protocol();
    }

    fn write_ready(&self) {
        if self.base.conn_lost.get() > 0 {
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
                    let _ = self.base.lp()._remove_writer(self.base.fd());
                    self.base.wake_empty_waiters(Ok(()));
                    if self.base.closing.get() {
                        self.call_connection_lost(None);
                    } else if self.base.eof.get() {
                        let _ = sock.shutdown(Shutdown::Write);
                    }
                }
            }
            Some(Err(e)) if is_retry(&e) => {}
            Some(Err(e)) => {
                let _ = self.base.lp()._remove_writer(self.base.fd());
                self.buffer.borrow_mut().clear();
                let e: Error = e.into();
                self.base.wake_empty_waiters(Err(&e));
                self.fatal_error(e, "Fatal write error on socket transport");
            }
        }
    }

    fn maybe_pause_protocol(&self) {
        let size = self.buffer.borrow().len();
        self.base.pause_if_over(size);
    }

    fn maybe_resume_protocol(&self) {
        let size = self.buffer.borrow().len();
        self.base.resume_if_drained(size);
    }

    // ----- closing -------------------------------------------------------------------

    /// asyncio's `_fatal_error`: OS errors only close (logged in debug
    /// mode); anything else is reported first.
    fn fatal_error(&self, exc: Error, message: &str) {
        self.base.report_fatal(&exc, message);
        self.force_close(Some(exc));
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.base.conn_lost.get() > 0 {
            return;
        }
        if !self.buffer.borrow().is_empty() {
            self.buffer.borrow_mut().clear();
            let _ = self.base.lp()._remove_writer(self.base.fd());
        }
        if !self.base.closing.replace(true) {
            let _ = self.base.lp()._remove_reader(self.base.fd());
        }
        let me = self.me();
        self.base
            .schedule_connection_lost(move || me.call_connection_lost(exc));
    }

    fn call_connection_lost(&self, exc: Option<Error>) {
        self.base.connection_lost(exc, || {
            let _ = self.base.lp()._remove_reader(self.base.fd());
            let _ = self.base.lp()._remove_writer(self.base.fd());
        });
    }
}

impl StreamTransport for SocketTransport {
    fn stream(&self) -> &StreamBase {
        &self.base
    }
}

impl BaseTransport for SocketTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.base.get_extra_info(name)
    }

    fn is_closing(&self) -> bool {
        self.base.closing.get()
    }

    fn close(&self) {
        if self.base.closing_with_loop_closed() {
            self.buffer.borrow_mut().clear();
            self.call_connection_lost(None);
            return;
        }
        if self.base.closing.replace(true) {
            return;
        }
        let _ = self.base.lp()._remove_reader(self.base.fd());
        if self.buffer.borrow().is_empty() {
            let _ = self.base.lp()._remove_writer(self.base.fd());
            let me = self.me();
            self.base
                .schedule_connection_lost(move || me.call_connection_lost(None));
        }
    }
}

impl ReadTransport for SocketTransport {
    fn is_reading(&self) -> bool {
        self.base.is_reading()
    }

    fn pause_reading(&self) {
        if !self.is_reading() {
            return;
        }
        self.base.paused.set(true);
        let _ = self.base.lp()._remove_reader(self.base.fd());
        self.base.debug("pauses reading");
    }

    fn resume_reading(&self) {
        if self.base.closing.get() || !self.base.paused.get() {
            return;
        }
        self.base.paused.set(false);
        self.add_reader();
        self.base.debug("resumes reading");
    }
}

impl WriteTransport for SocketTransport {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.base.flow.set_limits(high, low)?;
        self.maybe_pause_protocol();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.base.flow.get_limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer.borrow().len()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        if !self.base.check_write(data.is_empty(), "write")? {
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
        if !self.base.check_write(total == 0, "writelines")? {
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
        let empty = self.buffer.borrow().is_empty();
        self.base.write_eof(empty);
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn abort(&self) {
        self.force_close(None);
    }

    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        let empty = self.buffer.borrow().is_empty();
        Some(self.base.empty_waiter(empty))
    }

    fn _sendfile_native(
        &self,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> Option<LocalBoxFuture<'static, Result<u64>>> {
        self.base.sendfile_native(file, offset, count)
    }
}

impl Transport for SocketTransport {
    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        self.base.set_protocol(protocol);
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.base.protocol()
    }

    fn _force_close(&self, exc: Option<Error>) {
        self.force_close(exc);
    }
}
