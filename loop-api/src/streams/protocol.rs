//! asyncio's `StreamReaderProtocol` with its `FlowControlMixin`: the
//! protocol a stream's transport drives, and the state the stream's reader
//! and writer share.
//!
//! It is one object because asyncio's three (protocol, reader, flow
//! control) all live and die with one connection: the transport feeds the
//! reader's mailbox (`incoming`), the reader pauses and resumes the
//! transport, and the writer waits on the flow-control state. Everything
//! is `Cell`/`RefCell`; nothing here is held across a call out.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::Waker;

use crate::events::{ExceptionContext, Loop};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::{BaseProtocol, Protocol};
use crate::tasks::Task;
use crate::transports::Transport;

use super::{StreamReader, StreamWriter};

/// What `start_server` calls for each connection: builds the handler's
/// task from the connection's reader and writer.
pub(crate) type ClientConnected = Rc<dyn Fn(&Loop, StreamReader, StreamWriter) -> Result<Task<()>>>;

/// The protocol under a stream, and the state its reader and writer share.
pub(crate) struct StreamProtocol {
    me: Weak<StreamProtocol>,
    pub(crate) lp: Loop,
    /// The reader's limit (asyncio's `limit=`).
    pub(crate) limit: usize,

    // ----- the reader's side (asyncio's StreamReader state) -----
    /// Bytes the transport delivered that the reader has not taken yet.
    pub(crate) incoming: RefCell<Vec<u8>>,
    /// Bytes the reader took from `incoming` and still holds unread; with
    /// `incoming`, what asyncio's `len(self._buffer)` is.
    pub(crate) held: Cell<usize>,
    pub(crate) eof: Cell<bool>,
    pub(crate) exception: RefCell<Option<Error>>,
    /// The future an `async` read waits on (asyncio's `_waiter`): a loop
    /// future, so that cancelling the task cancels the read.
    pub(crate) read_waiter: RefCell<Option<Future<()>>>,
    /// The waker a `poll_read` left (the I/O traits).
    pub(crate) read_waker: RefCell<Option<Waker>>,
    /// The reader paused the transport (its buffer went over 2 × limit).
    pub(crate) reading_paused: Cell<bool>,

    // ----- the connection -----
    pub(crate) transport: RefCell<Option<Rc<dyn Transport>>>,
    pub(crate) over_ssl: Cell<bool>,
    /// `wait_closed()`: done at `connection_lost`.
    pub(crate) closed: Future<()>,

    // ----- the writer's flow control (asyncio's FlowControlMixin) -----
    pub(crate) write_paused: Cell<bool>,
    pub(crate) drain_waiters: RefCell<Vec<Future<()>>>,
    /// The waker a `poll_write`/`poll_flush` left.
    pub(crate) write_waker: RefCell<Option<Waker>>,
    pub(crate) connection_lost: Cell<bool>,

    // ----- the handles -----
    /// Live `StreamReader`s and `StreamWriter`s of this connection: the
    /// last one dropped closes it.
    pub(crate) handles: Cell<u8>,
    /// The write side was shut (`write_eof`), so dropping the writer
    /// leaves the read side open.
    pub(crate) write_shut: Cell<bool>,

    // ----- a server's connection -----
    pub(crate) client_connected: Option<ClientConnected>,
}

impl StreamProtocol {
    pub(crate) fn new(
        lp: Loop,
        limit: usize,
        client_connected: Option<ClientConnected>,
    ) -> Rc<Self> {
        let closed = Future::new(lp.clone());
        Rc::new_cyclic(|me| StreamProtocol {
            me: me.clone(),
            lp,
            limit,
            incoming: RefCell::new(Vec::new()),
            held: Cell::new(0),
            eof: Cell::new(false),
            exception: RefCell::new(None),
            read_waiter: RefCell::new(None),
            read_waker: RefCell::new(None),
            reading_paused: Cell::new(false),
            transport: RefCell::new(None),
            over_ssl: Cell::new(false),
            closed,
            write_paused: Cell::new(false),
            drain_waiters: RefCell::new(Vec::new()),
            write_waker: RefCell::new(None),
            connection_lost: Cell::new(false),
            handles: Cell::new(0),
            write_shut: Cell::new(false),
            client_connected,
        })
    }

    /// The transport; `None` before `connection_made`.
    pub(crate) fn transport(&self) -> Option<Rc<dyn Transport>> {
        self.transport.borrow().clone()
    }

    /// A reader or writer handle was made.
    pub(crate) fn handle_made(&self) {
        self.handles.set(self.handles.get() + 1);
    }

    /// A handle was dropped; `close` closes the transport (unless closed
    /// already, or the loop is).
    pub(crate) fn handle_dropped(&self, close: bool) {
        let left = self.handles.get().saturating_sub(1);
        self.handles.set(left);
        if close || left == 0 {
            if let Some(t) = self.transport() {
                if !t.is_closing() && !self.lp.is_closed() {
                    t.close();
                }
            }
        }
    }

    /// Bytes buffered for the reader, in both places.
    pub(crate) fn buffered(&self) -> usize {
        self.incoming.borrow().len() + self.held.get()
    }

    /// Wakes whatever waits to read (asyncio's `_wakeup_waiter`).
    fn wake_reader(&self, exc: Option<&Error>) {
        let waiter = self.read_waiter.borrow_mut().take();
        if let Some(w) = waiter {
            if !w.done() {
                let _ = match exc {
                    Some(e) => w.set_exception(e.clone()),
                    None => w.set_result(()),
                };
            }
        }
        let waker = self.read_waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Wakes whatever waits to write.
    fn wake_writer(&self, exc: Option<&Error>) {
        let waiters = self.drain_waiters.borrow().clone();
        for w in waiters {
            if !w.done() {
                let _ = match exc {
                    Some(e) => w.set_exception(e.clone()),
                    None => w.set_result(()),
                };
            }
        }
        let waker = self.write_waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// asyncio's `feed_eof`.
    pub(crate) fn feed_eof(&self) {
        self.eof.set(true);
        self.wake_reader(None);
    }

    /// asyncio's `StreamReader.set_exception`.
    pub(crate) fn set_exception(&self, exc: Error) {
        *self.exception.borrow_mut() = Some(exc.clone());
        self.wake_reader(Some(&exc));
    }

    /// asyncio's `_maybe_resume_transport`: resumes a paused transport once
    /// the buffer is back within the limit.
    pub(crate) fn maybe_resume_transport(&self) {
        if self.reading_paused.get() && self.buffered() <= self.limit {
            self.reading_paused.set(false);
            if let Some(t) = self.transport() {
                t.resume_reading();
            }
        }
    }

    /// Resumes a paused transport unconditionally: a reader is about to
    /// wait for data, so the transport must deliver some.
    pub(crate) fn resume_for_wait(&self) {
        if self.reading_paused.replace(false) {
            if let Some(t) = self.transport() {
                t.resume_reading();
            }
        }
    }

    /// Starts the handler `start_server` gave for this connection.
    fn start_client(&self, transport: Rc<dyn Transport>, cb: &ClientConnected) {
        let Some(me) = self.me.upgrade() else { return };
        let reader = StreamReader::new(me.clone());
        let writer = StreamWriter::new(me);
        match cb(&self.lp, reader, writer) {
            Ok(task) => {
                let lp = self.lp.clone();
                task.add_done_callback(
                    move |t| {
                        if t.cancelled() {
                            transport.close();
                            return;
                        }
                        if let Ok(Some(exc)) = t.exception() {
                            lp.call_exception_handler(
                                ExceptionContext::new("Unhandled exception in client_connected_cb")
                                    .with_exception(exc)
                                    .with_transport(Rc::new(transport.clone())),
                            );
                            transport.close();
                        }
                    },
                    None,
                );
            }
            Err(exc) => {
                self.lp.call_exception_handler(
                    ExceptionContext::new("Unhandled exception in client_connected_cb")
                        .with_exception(exc)
                        .with_transport(Rc::new(transport.clone())),
                );
                transport.close();
            }
        }
    }
}

impl BaseProtocol for StreamProtocol {
    fn connection_lost(&self, exc: Option<Error>) {
        let p = self;
        match &exc {
            None => p.feed_eof(),
            Some(e) => p.set_exception(e.clone()),
        }
        if !p.closed.done() {
            let _ = match &exc {
                None => p.closed.set_result(()),
                Some(e) => p.closed.set_exception(e.clone()),
            };
        }
        // FlowControlMixin.connection_lost: waiters blocked on a paused
        // transport learn how it ended.
        p.connection_lost.set(true);
        if p.write_paused.get() {
            p.wake_writer(exc.as_ref());
        } else {
            let waker = p.write_waker.borrow_mut().take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    fn pause_writing(&self) {
        self.write_paused.set(true);
    }

    fn resume_writing(&self) {
        self.write_paused.set(false);
        self.wake_writer(None);
    }
}

impl Protocol for StreamProtocol {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        let p = self;
        p.over_ssl
            .set(transport.get_extra_info("sslcontext").is_some());
        *p.transport.borrow_mut() = Some(transport.clone());
        if let Some(cb) = &p.client_connected {
            p.start_client(transport, cb);
        }
    }

    fn data_received(&self, data: &[u8]) {
        let p = self;
        if data.is_empty() {
            return;
        }
        p.incoming.borrow_mut().extend_from_slice(data);
        p.wake_reader(None);
        if !p.reading_paused.get() && p.buffered() > 2 * p.limit {
            if let Some(t) = p.transport() {
                t.pause_reading();
                p.reading_paused.set(true);
            }
        }
    }

    fn eof_received(&self) -> bool {
        self.feed_eof();
        // Over TLS, a half-closed connection is not possible (asyncio).
        !self.over_ssl.get()
    }
}

impl Drop for StreamProtocol {
    fn drop(&mut self) {
        // The close waiter's exception counts as retrieved (asyncio's
        // `StreamReaderProtocol.__del__`), so no "never retrieved" report.
        if self.closed.done() && !self.closed.cancelled() {
            let _ = self.closed.exception();
        }
    }
}

/// Checks the arguments every stream creator shares.
pub(crate) fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 {
        return Err(Error::value("Limit cannot be <= 0"));
    }
    Ok(())
}
