//! asyncio's `_UnixWritePipeTransport`: the write end of a pipe (or a
//! socket, or a character device) on readiness.
//!
//! # How it runs
//! - `write` writes at once when nothing is buffered; what the pipe does
//!   not take is buffered and a writer added, which writes the buffer with
//!   `writev` as the reader drains the pipe. The shared
//!   [`FlowControl`] tells
//!   the protocol to pause and resume.
//! - The reader going away: a FIFO's or socket's write end is watched for
//!   readability, which it only gets when the other end is closed. Then
//!   the transport ends, with `BrokenPipeError` if data was still
//!   buffered, else cleanly. A write that meets `EPIPE` first ends it with
//!   that error. Either way the loop goes on: an `OSError` is only logged
//!   in debug mode.
//! - `write_eof` (and `close`, which is `write_eof` here, as in asyncio)
//!   flushes the buffer, then closes the descriptor after
//!   `connection_lost(None)`; `abort` drops the buffer. Writes after
//!   either are dropped silently (counted, with asyncio's warning from the
//!   fifth on).
//!
//! It is handed to the protocol as a [`Transport`]: reading is never on.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::rc::{Rc, Weak};

use crate::base_events::pipe_base::{FileKind, PipeBase, PipeEnd};
use crate::base_events::sockets::is_retry;
use crate::base_events::BaseLoop;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::transports::flow_control::FlowControl;
use crate::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};

/// Buffered outgoing bytes, in one ring that is reused: writes are
/// copied in, `writev` takes them from its (at most two) slices.
#[derive(Default)]
struct WriteBuffer {
    bytes: VecDeque<u8>,
}

impl WriteBuffer {
    /// A ring bigger than this is let go of once it drains: memory
    /// follows the load, while a steady stream keeps its ring.
    const KEEP: usize = 512 * 1024;

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
    }

    fn slices(&self) -> [IoSlice<'_>; 2] {
        let (a, b) = self.bytes.as_slices();
        [IoSlice::new(a), IoSlice::new(b)]
    }

    fn consume(&mut self, n: usize) {
        self.bytes.drain(..n);
        if self.bytes.is_empty() && self.bytes.capacity() > Self::KEEP {
            self.bytes = VecDeque::new();
        }
    }

    fn clear(&mut self) {
        self.bytes = VecDeque::new();
    }
}

/// asyncio's `_UnixWritePipeTransport`.
pub struct WritePipeTransport {
    base: PipeBase,
    this: Weak<WritePipeTransport>,
    buffer: RefCell<WriteBuffer>,
    flow: FlowControl,
    /// The write end is watched for the reader going away.
    watches_reader: bool,
    /// A writer is registered.
    writing: Cell<bool>,
}

impl WritePipeTransport {
    /// Wraps the write end `pipe` (`ValueError` unless it is a pipe, a
    /// socket or a character device) and makes it non-blocking; then
    /// `connection_made`, the watch for the reader going away (FIFOs and
    /// sockets) and `waiter`'s result follow on the loop.
    pub fn create(
        lp: Rc<dyn BaseLoop>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        let prepared = PipeBase::prepare(lp, pipe, PipeEnd::Write)?;
        let watches_reader = matches!(prepared.kind, FileKind::Fifo | FileKind::Socket);
        let t = Rc::new_cyclic(|this: &Weak<WritePipeTransport>| WritePipeTransport {
            base: PipeBase::new(prepared, protocol, this.clone()),
            this: this.clone(),
            buffer: RefCell::new(WriteBuffer::default()),
            flow: FlowControl::default(),
            watches_reader,
            writing: Cell::new(false),
        });
        let me = t.clone();
        t.base.start(move || me.watch_reader(), waiter)?;
        Ok(t)
    }

    fn me(&self) -> Rc<WritePipeTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    /// Watches the write end for readability: the reader went away.
    fn watch_reader(&self) {
        if !self.watches_reader || !self.base.is_open() || self.base.ended() {
            return;
        }
        let me = self.me();
        if let Err(e) = self
            .base
            .lp()
            ._add_reader(self.base.fd(), Box::new(move || me.reader_gone()))
        {
            self.fatal_error(e, "Fatal error: cannot watch the pipe.");
        }
    }

    /// asyncio's `_read_ready` on a write pipe: the other end closed.
    fn reader_gone(&self) {
        self.base.debug("was closed by peer");
        if self.buffer.borrow().is_empty() {
            self.close_with(None);
        } else {
            self.close_with(Some(
                std::io::Error::from(std::io::ErrorKind::BrokenPipe).into(),
            ));
        }
    }

    fn add_writer(&self) {
        if self.writing.replace(true) {
            return;
        }
        let me = self.me();
        if let Err(e) = self
            .base
            .lp()
            ._add_writer(self.base.fd(), Box::new(move || me.write_ready()))
        {
            self.writing.set(false);
            self.fatal_error(e, "Fatal error: cannot watch the pipe for writing.");
        }
    }

    fn remove_writer(&self) {
        if self.writing.replace(false) {
            let _ = self.base.lp()._remove_writer(self.base.fd());
        }
    }

    fn remove_reader(&self) {
        if self.watches_reader {
            let _ = self.base.lp()._remove_reader(self.base.fd());
        }
    }

    /// asyncio's `_write_ready`: writes what is buffered.
    fn write_ready(&self) {
        let r = {
            let buffer = self.buffer.borrow();
            self.base
                .with_file(|mut f| f.write_vectored(&buffer.slices()))
        };
        let Some(r) = r else { return };
        match r {
            Err(e) if is_retry(&e) => {}
            Err(e) => {
                self.base.conn_lost.set(self.base.conn_lost.get() + 1);
                self.fatal_error(e.into(), "Fatal write error on pipe transport");
            }
            Ok(n) => {
                self.buffer.borrow_mut().consume(n);
                self.resume_if_drained(); // may write and grow the buffer
                if self.buffer.borrow().is_empty() {
                    self.remove_writer();
                    if self.base.closing.get() {
                        self.remove_reader();
                        let me = self.me();
                        self.base
                            .schedule_connection_lost(move || me.base.connection_lost(None));
                    }
                }
            }
        }
    }

    /// asyncio's `_fatal_error`, then `_close(exc)`.
    fn fatal_error(&self, exc: Error, message: &str) {
        self.base.report_fatal(&exc, message);
        self.close_with(Some(exc));
    }

    /// asyncio's `_close`: drops the buffer, stops every watch, and
    /// schedules `connection_lost(exc)`.
    fn close_with(&self, exc: Option<Error>) {
        self.base.closing.set(true);
        self.remove_writer();
        self.buffer.borrow_mut().clear();
        self.remove_reader();
        let me = self.me();
        self.base
            .schedule_connection_lost(move || me.base.connection_lost(exc));
    }

    fn pause_if_over(&self) {
        let size = self.buffer.borrow().len();
        if let Some(e) = self.flow.pause_if_over(size, &*self.base.protocol()) {
            self.base.report(e, "protocol.pause_writing() failed");
        }
    }

    fn resume_if_drained(&self) {
        let size = self.buffer.borrow().len();
        if let Some(e) = self.flow.resume_if_drained(size, &*self.base.protocol()) {
            self.base.report(e, "protocol.resume_writing() failed");
        }
    }

    fn write_parts(&self, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 || !self.base.accepts_write() {
            return;
        }
        let mut sent = 0;
        if self.buffer.borrow().is_empty() {
            let slices: Vec<std::io::IoSlice<'_>> =
                parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
            let r = self.base.with_file(|mut f| f.write_vectored(&slices));
            match r {
                None => return,
                Some(Ok(n)) => sent = n,
                Some(Err(e)) if is_retry(&e) => {}
                Some(Err(e)) => {
                    self.base.conn_lost.set(self.base.conn_lost.get() + 1);
                    self.fatal_error(e.into(), "Fatal write error on pipe transport");
                    return;
                }
            }
            if sent == total {
                return;
            }
        }
        {
            let mut b = self.buffer.borrow_mut();
            let mut skip = sent;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                b.push(&p[skip..]);
                skip = 0;
            }
        }
        self.add_writer();
        self.pause_if_over();
    }
}

impl BaseTransport for WritePipeTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.base.get_extra_info(name)
    }

    fn is_closing(&self) -> bool {
        self.base.closing.get()
    }

    /// `write_eof`: flushes, then closes.
    fn close(&self) {
        if self.base.is_open() && !self.base.closing.get() {
            let _ = self.write_eof();
        }
    }
}

impl ReadTransport for WritePipeTransport {
    fn is_reading(&self) -> bool {
        false
    }
    fn pause_reading(&self) {}
    fn resume_reading(&self) {}
}

impl WriteTransport for WritePipeTransport {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.flow.set_limits(high, low)?;
        self.pause_if_over();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.flow.get_limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer.borrow().len()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        self.write_parts(&[data]);
        Ok(())
    }

    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        self.write_parts(data);
        Ok(())
    }

    fn write_eof(&self) -> Result<()> {
        if self.base.closing.get() {
            return Ok(());
        }
        self.base.closing.set(true);
        if self.buffer.borrow().is_empty() {
            self.remove_reader();
            let me = self.me();
            self.base
                .schedule_connection_lost(move || me.base.connection_lost(None));
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn abort(&self) {
        self.close_with(None);
    }

    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        None
    }
}

impl Transport for WritePipeTransport {
    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        self.base.set_protocol(protocol);
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.base.protocol()
    }
}
