//! The pipe transports of completion-based backends (asyncio's
//! `_ProactorReadPipeTransport` and `_ProactorWritePipeTransport`), over a
//! backend's [`PipeIo`]: one read and one write at a time.
//!
//! # How they run
//! - Reading (a read pipe): one read request at a time, into the backend's
//!   buffer. Its data goes to `data_received`; a read of nothing, or the
//!   writer gone (`ERROR_BROKEN_PIPE`, which the backend reports as
//!   [`RecvEvent::Eof`]), is EOF: `eof_received`, then `connection_lost(None)`.
//!   `pause_reading` lets the read in flight complete and holds what it
//!   brings until `resume_reading`.
//! - Writing (a write pipe): `write` is first offered to the pipe at once
//!   where the backend can ([`PipeIo::write_now`]); what is left is copied
//!   into the buffer; when no write is in flight the whole buffer goes to
//!   one request, and what is
//!   written meanwhile waits for its completion. Flow control is the shared
//!   [`FlowControl`]; the buffer size counts what is in flight, as
//!   asyncio's proactor does.
//! - The reader going away (a write pipe): a read request on the write end
//!   (asyncio makes a child's stdin duplex for this) completes when the
//!   other end closes. The transport then ends cleanly if everything was
//!   written, else with `BrokenPipeError` (a write still in flight decides
//!   which when it completes). An end that cannot be read
//!   (a one-way pipe) is not watched; a write then fails instead.
//! - `write_eof` and `close` flush, then close the handle after
//!   `connection_lost(None)`; `abort` drops the buffer. Writes after the
//!   end are dropped, with asyncio's warning from the fifth on, as on Unix.
//! - Requests in flight at the end are cancelled; their memory stays with
//!   the backend until their completions arrive, which then find the
//!   transport ended and are dropped.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use super::{Inbox, RecvEvent};
use crate::base_events::pipe_base::{cannot_write, PipeBase, PipeEnd};
use crate::base_events::BaseLoop;
use crate::events::{RawFd, Step};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::transports::flow_control::FlowControl;
use crate::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};

/// What a completion backend supplies to [`ProactorPipeTransport`].
pub trait PipeIo: Sized + 'static {
    /// One completion, as the backend's completion handler records it.
    type Completion;

    /// Starts one read on the transport's handle (on a write pipe, a watch
    /// for the reader going away: see
    /// [`ProactorPipeTransport::is_write_end`]). Its completion comes
    /// back through [`PipeIo::complete`] as [`ProactorPipeTransport::on_read`].
    /// `Err` means no completion will come.
    fn start_read(transport: &Rc<ProactorPipeTransport<Self>>) -> Result<()>;

    /// Starts one write of all of `data`; its completion comes back as
    /// [`ProactorPipeTransport::on_written`] with `data`.
    fn start_write(transport: &Rc<ProactorPipeTransport<Self>>, data: Vec<u8>) -> Result<()>;

    /// Offers `parts` to the pipe at once, without blocking (a
    /// non-blocking `writev` from the caller's bytes): how many bytes it
    /// took, `WouldBlock` if none, or the error. What it does not take goes
    /// by request. `None`: the backend does not do this.
    ///
    /// A backend whose requests start only at its next submission should:
    /// bytes written before the reader goes away then reach the pipe, as
    /// they do on readiness, and need no copy.
    fn write_now(
        _transport: &ProactorPipeTransport<Self>,
        _parts: &[&[u8]],
    ) -> Option<io::Result<usize>> {
        None
    }

    /// Asks the kernel to cancel every request in flight.
    fn cancel_all(&self);

    /// Reports one recorded completion; called from the transport's step,
    /// in the order the completions arrived.
    fn complete(transport: &Rc<ProactorPipeTransport<Self>>, completion: Self::Completion);
}

/// Which end of a pipe the transport is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

/// asyncio's `_ProactorReadPipeTransport` / `_ProactorWritePipeTransport`.
pub struct ProactorPipeTransport<I: PipeIo> {
    base: PipeBase,
    this: Weak<ProactorPipeTransport<I>>,
    mode: Mode,
    io: I,
    inbox: Inbox<I::Completion>,
    /// A read request is outstanding.
    reading: Cell<bool>,
    /// `pause_reading` was called (a read pipe).
    paused: Cell<bool>,
    /// Read while paused, for `resume_reading`.
    held: RefCell<Vec<u8>>,
    held_eof: Cell<bool>,
    /// Buffered, not yet handed to a write.
    buffer: RefCell<Vec<u8>>,
    /// Bytes of the write in flight (0: none).
    in_flight: Cell<usize>,
    writing: Cell<bool>,
    /// The reader went away while a write was in flight.
    reader_left: Cell<bool>,
    flow: FlowControl,
}

impl<I: PipeIo> ProactorPipeTransport<I> {
    /// A read pipe transport over `pipe`, whose handle the backend's `io`
    /// reads with overlapped requests.
    pub fn create_read(
        lp: Rc<dyn BaseLoop>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        io: I,
    ) -> Result<Rc<dyn Transport>> {
        Self::create(lp, pipe, protocol, waiter, io, Mode::Read)
    }

    /// A write pipe transport over `pipe`.
    pub fn create_write(
        lp: Rc<dyn BaseLoop>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        io: I,
    ) -> Result<Rc<dyn Transport>> {
        Self::create(lp, pipe, protocol, waiter, io, Mode::Write)
    }

    fn create(
        lp: Rc<dyn BaseLoop>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        io: I,
        mode: Mode,
    ) -> Result<Rc<dyn Transport>> {
        let end = match mode {
            Mode::Read => PipeEnd::Read,
            Mode::Write => PipeEnd::Write,
        };
        let prepared = PipeBase::prepare(lp, pipe, end)?;
        let t = Rc::new_cyclic(|this: &Weak<Self>| ProactorPipeTransport {
            base: PipeBase::new(prepared, protocol, this.clone()),
            this: this.clone(),
            mode,
            io,
            inbox: Inbox::default(),
            reading: Cell::new(false),
            paused: Cell::new(false),
            held: RefCell::new(Vec::new()),
            held_eof: Cell::new(false),
            buffer: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            writing: Cell::new(false),
            reader_left: Cell::new(false),
            flow: FlowControl::default(),
        });
        let me = t.clone();
        t.base.start(move || me.start_reading(), waiter)?;
        Ok(t)
    }

    /// The backend's half.
    pub fn io(&self) -> &I {
        &self.io
    }

    /// True for a write pipe: its reads ([`PipeIo::start_read`]) only
    /// watch for the reader going away.
    pub fn is_write_end(&self) -> bool {
        self.mode == Mode::Write
    }

    /// The handle's value, kept after close.
    pub fn fd(&self) -> RawFd {
        self.base.fd()
    }

    /// Runs `f` on the pipe while it is open.
    pub fn with_pipe<R>(&self, f: impl FnOnce(&File) -> R) -> Option<R> {
        self.base.with_file(f)
    }

    /// Records a completion (from the backend's handler, inside `poll`) for
    /// the transport's step.
    pub fn push_completion(self: &Rc<Self>, completion: I::Completion) {
        let lp = self.base.lp().clone();
        self.inbox.push(completion, &*lp, || self.clone());
    }

    fn me(&self) -> Rc<Self> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    /// True once the transport has nothing more to do with its handle.
    fn done(&self) -> bool {
        self.base.ended() || !self.base.is_open()
    }

    /// Starts a read: a read pipe's next data, or a write pipe's watch for
    /// the reader going away.
    fn start_reading(&self) {
        if self.done() || self.reading.get() {
            return;
        }
        if self.mode == Mode::Read && (self.paused.get() || self.base.closing.get()) {
            return;
        }
        self.reading.set(true);
        if let Err(e) = I::start_read(&self.me()) {
            self.reading.set(false);
            match self.mode {
                Mode::Read => self.fatal_error(e, "Fatal read error on pipe transport"),
                // A one-way pipe cannot be watched: a write reports the
                // reader's end instead.
                Mode::Write => {}
            }
        }
    }

    /// A read completed (the backend's [`PipeIo::complete`]).
    pub fn on_read(&self, event: RecvEvent<'_>) {
        self.reading.set(false);
        if self.done() {
            return;
        }
        if self.mode == Mode::Write {
            match event {
                RecvEvent::Stopped => {}
                // Data on a write pipe (a duplex peer wrote): not ours to
                // take; keep watching.
                RecvEvent::Data(_) => self.start_reading(),
                RecvEvent::Eof | RecvEvent::Error(_) => self.reader_gone(),
            }
            return;
        }
        match event {
            RecvEvent::Data(data) if self.paused.get() => {
                self.held.borrow_mut().extend_from_slice(data);
            }
            RecvEvent::Data(data) => {
                self.deliver(data);
                self.start_reading();
            }
            RecvEvent::Eof if self.paused.get() => self.held_eof.set(true),
            RecvEvent::Eof => self.on_eof(),
            RecvEvent::Error(e) => self.fatal_error(e.into(), "Fatal read error on pipe transport"),
            RecvEvent::Stopped => self.start_reading(),
        }
    }

    fn deliver(&self, data: &[u8]) {
        let proto = self.base.protocol();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.data_received(data))) {
            self.fatal_error(
                Error::from_panic(p),
                "Fatal error: protocol.data_received() call failed.",
            );
        }
    }

    /// The writer's end closed: `eof_received`, then the end.
    fn on_eof(&self) {
        self.base.debug("was closed by peer");
        self.base.closing.set(true);
        let proto = self.base.protocol();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.eof_received())) {
            self.base.report(
                Error::from_panic(p),
                "Exception in callback Protocol.eof_received()",
            );
        }
        let me = self.me();
        self.base
            .schedule_connection_lost(move || me.base.connection_lost(None));
    }

    /// asyncio's `_pipe_closed` on a write pipe. A write still in flight
    /// decides: it either went out before the reader left (then the end is
    /// clean if nothing else waits) or fails.
    fn reader_gone(&self) {
        self.base.debug("was closed by peer");
        if self.writing.get() {
            self.reader_left.set(true);
            return;
        }
        if !self.buffer.borrow().is_empty() {
            self.close_with(Some(io::Error::from(io::ErrorKind::BrokenPipe).into()));
        } else {
            self.close_with(None);
        }
    }

    /// A write completed (the backend's [`PipeIo::complete`]), handing
    /// `data` back.
    pub fn on_written(&self, result: io::Result<usize>, data: Vec<u8>) {
        self.writing.set(false);
        self.in_flight.set(0);
        if self.done() {
            return;
        }
        match result {
            Err(e) => {
                self.base.conn_lost.set(self.base.conn_lost.get() + 1);
                self.fatal_error(e.into(), "Fatal write error on pipe transport");
            }
            Ok(n) if self.reader_left.get() => {
                let sent_all = n == data.len() && self.buffer.borrow().is_empty();
                self.close_with(if sent_all {
                    None
                } else {
                    Some(io::Error::from(io::ErrorKind::BrokenPipe).into())
                });
            }
            Ok(n) => {
                if n < data.len() {
                    // The rest goes first in the next write.
                    let mut b = self.buffer.borrow_mut();
                    let rest = data[n..].to_vec();
                    b.splice(0..0, rest);
                }
                self.resume_if_drained(); // may write and fill the buffer
                if self.done() {
                    return;
                }
                if !self.buffer.borrow().is_empty() {
                    self.start_write();
                } else if self.base.closing.get() && !self.writing.get() {
                    self.end(None);
                }
            }
        }
    }

    fn start_write(&self) {
        if self.writing.get() || self.done() {
            return;
        }
        let data = std::mem::take(&mut *self.buffer.borrow_mut());
        if data.is_empty() {
            return;
        }
        self.writing.set(true);
        self.in_flight.set(data.len());
        if let Err(e) = I::start_write(&self.me(), data) {
            self.writing.set(false);
            self.in_flight.set(0);
            self.base.conn_lost.set(self.base.conn_lost.get() + 1);
            self.fatal_error(e, "Fatal write error on pipe transport");
        }
    }

    fn buffer_size(&self) -> usize {
        self.buffer.borrow().len() + self.in_flight.get()
    }

    fn pause_if_over(&self) {
        if let Some(e) = self
            .flow
            .pause_if_over(self.buffer_size(), &*self.base.protocol())
        {
            self.base.report(e, "protocol.pause_writing() failed");
        }
    }

    fn resume_if_drained(&self) {
        if let Some(e) = self
            .flow
            .resume_if_drained(self.buffer_size(), &*self.base.protocol())
        {
            self.base.report(e, "protocol.resume_writing() failed");
        }
    }

    fn write_parts(&self, parts: &[&[u8]]) -> Result<()> {
        if self.mode == Mode::Read {
            return Err(cannot_write());
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 || !self.base.accepts_write() {
            return Ok(());
        }
        let mut sent = 0;
        if !self.writing.get() && self.buffer.borrow().is_empty() {
            match I::write_now(self, parts) {
                None => {}
                Some(Ok(n)) => sent = n,
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Some(Err(e)) => {
                    self.base.conn_lost.set(self.base.conn_lost.get() + 1);
                    self.fatal_error(e.into(), "Fatal write error on pipe transport");
                    return Ok(());
                }
            }
            if sent == total {
                return Ok(());
            }
        }
        {
            let mut b = self.buffer.borrow_mut();
            for p in parts {
                let skip = sent.min(p.len());
                sent -= skip;
                b.extend_from_slice(&p[skip..]);
            }
        }
        self.start_write();
        self.pause_if_over();
        Ok(())
    }

    /// asyncio's `_fatal_error`, then `_close(exc)`.
    fn fatal_error(&self, exc: Error, message: &str) {
        self.base.report_fatal(&exc, message);
        self.close_with(Some(exc));
    }

    /// asyncio's `_force_close`: drops the buffer and ends.
    fn close_with(&self, exc: Option<Error>) {
        self.base.closing.set(true);
        self.buffer.borrow_mut().clear();
        // The write in flight is cancelled: nothing waits any more.
        self.in_flight.set(0);
        self.end(exc);
    }

    /// Cancels what is in flight and schedules `connection_lost(exc)`,
    /// which closes the handle.
    fn end(&self, exc: Option<Error>) {
        if self.base.ended() {
            return;
        }
        self.io.cancel_all();
        let me = self.me();
        self.base
            .schedule_connection_lost(move || me.base.connection_lost(exc));
    }
}

impl<I: PipeIo> Step for ProactorPipeTransport<I> {
    fn run_step(self: Rc<Self>) {
        while let Some(c) = self.inbox.pop() {
            I::complete(&self, c);
        }
    }

    fn describe(&self) -> String {
        format!("<ProactorPipeTransport fd={}>", self.base.fd())
    }
}

impl<I: PipeIo> BaseTransport for ProactorPipeTransport<I> {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.base.get_extra_info(name)
    }

    fn is_closing(&self) -> bool {
        self.base.closing.get()
    }

    /// A read pipe ends at once; a write pipe flushes first.
    fn close(&self) {
        if self.base.closing.get() || !self.base.is_open() {
            return;
        }
        match self.mode {
            Mode::Read => {
                self.base.closing.set(true);
                self.end(None);
            }
            Mode::Write => {
                let _ = self.write_eof();
            }
        }
    }
}

impl<I: PipeIo> ReadTransport for ProactorPipeTransport<I> {
    fn is_reading(&self) -> bool {
        self.mode == Mode::Read && !self.paused.get() && !self.base.closing.get()
    }

    fn pause_reading(&self) {
        if self.mode == Mode::Read && !self.base.closing.get() {
            self.paused.set(true);
        }
    }

    fn resume_reading(&self) {
        if self.mode != Mode::Read || !self.paused.replace(false) || self.done() {
            return;
        }
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if !held.is_empty() {
            self.deliver(&held);
        }
        if self.done() || self.paused.get() {
            return;
        }
        if self.held_eof.replace(false) {
            self.on_eof();
        } else {
            self.start_reading();
        }
    }
}

impl<I: PipeIo> WriteTransport for ProactorPipeTransport<I> {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        if self.mode == Mode::Read {
            return Err(cannot_write());
        }
        self.flow.set_limits(high, low)?;
        self.pause_if_over();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.flow.get_limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer_size()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        self.write_parts(&[data])
    }

    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        self.write_parts(data)
    }

    fn write_eof(&self) -> Result<()> {
        if self.mode == Mode::Read {
            return Err(cannot_write());
        }
        if self.base.closing.get() {
            return Ok(());
        }
        self.base.closing.set(true);
        if !self.writing.get() && self.buffer.borrow().is_empty() {
            self.end(None);
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        self.mode == Mode::Write
    }

    fn abort(&self) {
        self.close_with(None);
    }

    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        None
    }
}

impl<I: PipeIo> Transport for ProactorPipeTransport<I> {
    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        self.base.set_protocol(protocol);
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.base.protocol()
    }
}
