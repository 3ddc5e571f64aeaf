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
//!   [`FlowControl`](crate::transports::flow_control::FlowControl).
//! - Closing: as on every backend (`transports::lifecycle`): `close`
//!   flushes, `abort` drops the buffer, `connection_lost` runs once, then
//!   the socket is closed. Requests still in flight are cancelled; their
//!   memory stays with the backend until their completions arrive.
//! - The protocol is only ever called from the transport's step on the
//!   ready queue (or a callback it schedules), never from inside `poll`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use socket2::Socket;

use super::{Inbox, RecvEvent, SendBatch, StreamIo};
use crate::base_events::server::Server;
use crate::base_events::stream_base::{self, StreamBase, StreamTransport};
use crate::base_events::BaseLoop;
use crate::events::{LocalBoxFuture, RawFd, Step};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::transports::lifecycle;
use crate::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};

/// Chunks kept for reuse: at most this many ...
const SPARE_CHUNKS: usize = 4;
/// ... of at most this capacity ...
const SPARE_CAPACITY: usize = 1024 * 1024;
/// ... and at least this one: smaller chunks come from memory the
/// allocator keeps resident anyway, and keeping them would make every
/// connection that ever wrote hold memory while idle.
const SPARE_MIN_CAPACITY: usize = 16 * 1024;
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
    /// An empty chunk list for the next send to take all the chunks in.
    spare_list: VecDeque<Vec<u8>>,
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

    /// Keeps a sent chunk for reuse, if it is large and there is room.
    fn recycle(&mut self, mut chunk: Vec<u8>) {
        if self.spare.len() < SPARE_CHUNKS
            && (SPARE_MIN_CAPACITY..=SPARE_CAPACITY).contains(&chunk.capacity())
        {
            chunk.clear();
            self.spare.push(chunk);
        }
    }
}

/// asyncio's `_ProactorSocketTransport`, over a backend's [`StreamIo`].
pub struct ProactorSocketTransport<I: StreamIo> {
    base: StreamBase,
    this: Weak<ProactorSocketTransport<I>>,
    io: I,
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
    /// Completions recorded during `poll`, for this transport's step.
    inbox: Inbox<I::Completion>,
    /// Inside this transport's step: writes only buffer, and the step
    /// sends them all in one request when it ends.
    in_step: Cell<bool>,
}

impl<I: StreamIo> ProactorSocketTransport<I> {
    /// Wraps a connected stream socket: `TCP_NODELAY` on TCP, then
    /// `connection_made`, the first receive, and `waiter`'s result.
    pub fn create(
        lp: Rc<dyn BaseLoop>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
        io: I,
    ) -> Result<Rc<Self>> {
        let prepared = StreamBase::prepare(&lp, sock)?;
        let t = Rc::new_cyclic(|this: &Weak<Self>| ProactorSocketTransport {
            base: StreamBase::new(lp, prepared, protocol, server, this.clone()),
            this: this.clone(),
            io,
            receiving: Cell::new(false),
            read_done: Cell::new(false),
            held: RefCell::new(Vec::new()),
            held_eof: Cell::new(false),
            sending: Cell::new(false),
            in_flight: Cell::new(0),
            outgoing: RefCell::new(Outgoing::default()),
            inbox: Inbox::default(),
            in_step: Cell::new(false),
        });
        let me = t.clone();
        stream_base::start(&t, move || me.start_reading(), waiter)?;
        Ok(t)
    }

    /// The backend's part.
    pub fn io(&self) -> &I {
        &self.io
    }

    /// The socket's descriptor (kept after close, for the backend's use).
    pub fn fd(&self) -> RawFd {
        self.base.fd()
    }

    /// The socket, until the transport closes it.
    pub fn socket(&self) -> Option<Rc<Socket>> {
        self.base.socket()
    }

    /// Records a completion of the backend's receive or send, for
    /// [`StreamIo::complete`] from this transport's step on the ready
    /// queue. The backend's completion handler calls this (from inside
    /// `poll`).
    pub fn push_completion(self: &Rc<Self>, completion: I::Completion) {
        self.inbox
            .push(completion, self.base.lp().as_ref(), || self.clone());
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
            || !self.base.is_open()
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
                if self.base.paused.get() {
                    self.held_eof.set(true);
                } else if self.base.conn_lost.get() == 0 && !self.base.closing.get() {
                    self.on_eof();
                }
                return;
            }
            RecvEvent::Error(e) => {
                self.read_done.set(true);
                if self.base.conn_lost.get() == 0 {
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
        if self.base.conn_lost.get() > 0 || self.base.closing.get() {
            return;
        }
        if self.base.paused.get() {
            self.held.borrow_mut().extend_from_slice(data);
            return;
        }
        self.deliver(data);
    }

    fn deliver(&self, data: &[u8]) {
        let proto = self.base.protocol();
        if let Some(bp) = proto.as_buffered() {
            let mut rest = data;
            while !rest.is_empty() && self.base.conn_lost.get() == 0 {
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
        match self.base.eof_received() {
            Err(e) => self.fatal_error(e, "Fatal error: protocol.eof_received() call failed."),
            Ok(true) => {} // half-closed: nothing more to read
            Ok(false) => self.close(),
        }
    }

    /// What was held while paused, now that reading resumed.
    fn deliver_held(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if !held.is_empty() && self.base.conn_lost.get() == 0 && !self.base.closing.get() {
            self.deliver(&held);
        }
        if self.held_eof.replace(false)
            && self.base.conn_lost.get() == 0
            && !self.base.closing.get()
        {
            self.on_eof();
        }
    }

    // ----- writing -------------------------------------------------------------------

    fn buffer_size(&self) -> usize {
        self.outgoing.borrow().size + self.in_flight.get()
    }

    /// Sends what is buffered, if no send is in flight.
    fn start_send(&self) {
        if self.sending.get() || self.base.conn_lost.get() > 0 || self.in_step.get() {
            return;
        }
        let batch = {
            let mut o = self.outgoing.borrow_mut();
            if o.size == 0 {
                return;
            }
            let chunks = if o.batch.chunks.len() <= I::MAX_CHUNKS {
                let empty = std::mem::take(&mut o.spare_list);
                std::mem::replace(&mut o.batch.chunks, empty)
            } else {
                o.batch.chunks.drain(..I::MAX_CHUNKS).collect()
            };
            let batch = SendBatch {
                chunks,
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
        if self.base.conn_lost.get() > 0 {
            return; // aborted: the rest is dropped
        }
        let mut sent = match result {
            Ok(n) => n,
            Err(e) => {
                // `fatal_error` drops what is buffered.
                let e: Error = e.into();
                self.base.wake_empty_waiters(Err(&e));
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
        let mut o = self.outgoing.borrow_mut();
        if unsent.is_empty() {
            // Kept for the next send only where large chunks are (a bulk
            // sender); an idle connection keeps no empty list.
            if !o.spare.is_empty() {
                o.spare_list = unsent;
            }
        } else {
            let extra = unsent.iter().map(Vec::len).sum::<usize>() - head;
            for chunk in unsent.into_iter().rev() {
                o.batch.chunks.push_front(chunk);
            }
            o.batch.head = head;
            o.size += extra;
        }
        drop(o);
        self.maybe_resume_protocol(); // may write and grow the buffer
        if self.buffer_size() > 0 {
            self.start_send();
            return;
        }
        self.base.wake_empty_waiters(Ok(()));
        if self.base.closing.get() {
            let me = self.me();
            self.base
                .schedule_connection_lost(move || me.call_connection_lost(None));
        } else if self.base.eof.get() {
            self.base.shutdown_write();
        }
    }

    fn maybe_pause_protocol(&self) {
        self.base.pause_if_over(self.buffer_size());
    }

    fn maybe_resume_protocol(&self) {
        self.base.resume_if_drained(self.buffer_size());
    }

    fn push_outgoing(&self, parts: &[&[u8]]) {
        let mut o = self.outgoing.borrow_mut();
        for p in parts.iter().filter(|p| !p.is_empty()) {
            o.push(p);
        }
    }

    fn write_parts(&self, parts: &[&[u8]], method: &str) -> Result<()> {
        let total: usize = parts.iter().map(|d| d.len()).sum();
        if !self.base.check_write(total == 0, method)? {
            return Ok(());
        }
        let mut rest: Vec<&[u8]>;
        let mut parts = parts;
        if total >= I::SEND_NOW_MIN && self.buffer_size() == 0 {
            match I::send_now(self, parts) {
                None => {}
                Some(Ok(n)) if n == total => return Ok(()),
                Some(Ok(n)) => {
                    rest = parts.to_vec();
                    skip_sent(&mut rest, n);
                    parts = &rest;
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Some(Err(e)) => {
                    self.fatal_error(e.into(), "Fatal write error on socket transport");
                    return Ok(());
                }
            }
        }
        self.push_outgoing(parts);
        self.start_send();
        self.maybe_pause_protocol();
        Ok(())
    }

    // ----- closing -------------------------------------------------------------------

    fn fatal_error(&self, exc: Error, message: &str) {
        self.base.report_fatal(&exc, message);
        self.force_close(Some(exc));
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.base.conn_lost.get() > 0 {
            return;
        }
        *self.outgoing.borrow_mut() = Outgoing::default();
        // What is in flight is dropped too (cancelled; whatever the kernel
        // sent before it saw the cancel is gone already).
        self.io.cancel_send();
        self.in_flight.set(0);
        self.base.closing.set(true);
        self.io.cancel_recv();
        let me = self.me();
        self.base
            .schedule_connection_lost(move || me.call_connection_lost(exc));
    }

    fn call_connection_lost(&self, exc: Option<Error>) {
        self.base.connection_lost(exc, || {
            self.io.cancel_recv();
            self.io.cancel_send();
            if self.receiving.get() || self.sending.get() {
                self.io.settle();
            }
            self.held.borrow_mut().clear();
        });
    }
}

impl<I: StreamIo> StreamTransport for ProactorSocketTransport<I> {
    fn stream(&self) -> &StreamBase {
        &self.base
    }
}

impl<I: StreamIo> Step for ProactorSocketTransport<I> {
    fn run_step(self: Rc<Self>) {
        self.in_step.set(true);
        while let Some(c) = self.inbox.pop() {
            I::complete(&self, c);
        }
        self.in_step.set(false);
        // What the protocol wrote while its data came in, in one request.
        self.start_send();
    }

    fn describe(&self) -> String {
        format!("<completions of {}>", self.base.repr())
    }
}

impl<I: StreamIo> BaseTransport for ProactorSocketTransport<I> {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.base.get_extra_info(name)
    }

    fn is_closing(&self) -> bool {
        self.base.closing.get()
    }

    fn close(&self) {
        if self.base.closing_with_loop_closed() {
            *self.outgoing.borrow_mut() = Outgoing::default();
            self.call_connection_lost(None);
            return;
        }
        if self.base.closing.replace(true) {
            return;
        }
        self.io.cancel_recv();
        if self.buffer_size() == 0 {
            let me = self.me();
            self.base
                .schedule_connection_lost(move || me.call_connection_lost(None));
        }
    }
}

impl<I: StreamIo> ReadTransport for ProactorSocketTransport<I> {
    fn is_reading(&self) -> bool {
        self.base.is_reading()
    }

    fn pause_reading(&self) {
        if !self.is_reading() {
            return;
        }
        self.base.paused.set(true);
        // The receive in flight is left to complete, as in asyncio's
        // proactor: what it brings is held for `resume_reading`, and no
        // new receive starts until then. A pause that ends before data
        // arrives (flow control on an echo) costs no request at all.
        self.base.debug("pauses reading");
    }

    fn resume_reading(&self) {
        if self.base.closing.get() || !self.base.paused.get() {
            return;
        }
        self.base.paused.set(false);
        if !self.held.borrow().is_empty() || self.held_eof.get() {
            let me = self.me();
            lifecycle::call_soon_or_now(&**self.base.lp(), move || {
                if me.is_reading() {
                    me.deliver_held();
                }
            });
        }
        self.start_reading();
        self.base.debug("resumes reading");
    }
}

impl<I: StreamIo> WriteTransport for ProactorSocketTransport<I> {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.base.flow.set_limits(high, low)?;
        self.maybe_pause_protocol();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.base.flow.get_limits()
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
        self.base.write_eof(self.buffer_size() == 0);
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn abort(&self) {
        self.force_close(None);
    }

    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        Some(self.base.empty_waiter(self.buffer_size() == 0))
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

impl<I: StreamIo> Transport for ProactorSocketTransport<I> {
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

/// Drops the first `n` bytes of `parts`.
fn skip_sent(parts: &mut Vec<&[u8]>, mut n: usize) {
    let mut whole = 0;
    while whole < parts.len() && parts[whole].len() <= n {
        n -= parts[whole].len();
        whole += 1;
    }
    parts.drain(..whole);
    if let Some(first) = parts.first_mut() {
        *first = &first[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::skip_sent;

    fn after(parts: &[&'static [u8]], n: usize) -> Vec<&'static [u8]> {
        let mut v = parts.to_vec();
        skip_sent(&mut v, n);
        v
    }

    #[test]
    fn skip_sent_drops_whole_and_partial_parts() {
        let parts: &[&[u8]] = &[b"abc", b"", b"de", b"fgh"];
        assert_eq!(after(parts, 0), parts.to_vec());
        assert_eq!(after(parts, 2), vec![&b"c"[..], b"", b"de", b"fgh"]);
        assert_eq!(after(parts, 3), vec![&b"de"[..], b"fgh"]);
        assert_eq!(after(parts, 6), vec![&b"gh"[..]]);
        assert!(after(parts, 8).is_empty());
    }
}
