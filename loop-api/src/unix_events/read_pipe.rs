//! asyncio's `_UnixReadPipeTransport`: the read end of a pipe (or a
//! socket, or a character device such as a tty) on readiness.
//!
//! # How it runs
//! - While reading is on, the descriptor has a reader; each readiness
//!   event does one `read(2)` of up to 256 KiB and hands the bytes to
//!   `data_received`.
//! - A read of zero bytes is EOF: the reader goes, then `eof_received`
//!   and `connection_lost(None)` run, in that order, from the ready queue
//!   (`eof_received`'s answer does not matter: a pipe has no write side to
//!   keep open).
//! - A read error ends the transport: `connection_lost(exc)`. An
//!   `OSError` is only logged in debug mode (`EIO` is what a pty reports
//!   when its other side closes); anything else reaches the exception
//!   handler first.
//! - `close` stops reading and schedules `connection_lost(None)`; the
//!   descriptor is closed after it.
//!
//! - A descriptor the poller refuses (epoll's `EPERM` for a device that
//!   is always ready, such as `/dev/null` or `/dev/zero`) is read from the
//!   ready queue instead, one read per loop iteration while reading is on,
//!   where asyncio's `add_reader` would fail.
//!
//! It is handed to the protocol as a [`Transport`]: the writing half
//! refuses (`RuntimeError`), as a Python `ReadTransport` has no such
//! methods.

use std::cell::Cell;
use std::fs::File;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use crate::base_events::pipe_base::{cannot_write, PipeBase, PipeEnd};
use crate::base_events::sockets::is_retry;
use crate::base_events::BaseLoop;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::selector_events::socket_transport::{put_read_buf, take_read_buf};
use crate::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};

/// asyncio's `_UnixReadPipeTransport`.
pub struct ReadPipeTransport {
    base: PipeBase,
    this: Weak<ReadPipeTransport>,
    paused: Cell<bool>,
    /// The poller refused the descriptor (`EPERM`: a device that is always
    /// ready, such as `/dev/null`): it is read from the ready queue, once
    /// per iteration while reading is on.
    unpollable: Cell<bool>,
}

impl ReadPipeTransport {
    /// Wraps the read end `pipe` (`ValueError` unless it is a pipe, a
    /// socket or a character device) and makes it non-blocking; then
    /// `connection_made`, the reader, and `waiter`'s result follow on the
    /// loop.
    pub fn create(
        lp: Rc<dyn BaseLoop>,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        let prepared = PipeBase::prepare(lp, pipe, PipeEnd::Read)?;
        let t = Rc::new_cyclic(|this: &Weak<ReadPipeTransport>| ReadPipeTransport {
            base: PipeBase::new(prepared, protocol, this.clone()),
            this: this.clone(),
            paused: Cell::new(false),
            unpollable: Cell::new(false),
        });
        let me = t.clone();
        t.base.start(move || me.add_reader(), waiter)?;
        Ok(t)
    }

    fn me(&self) -> Rc<ReadPipeTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    fn add_reader(&self) {
        if !self.is_reading() || !self.base.is_open() {
            return;
        }
        if self.unpollable.get() {
            return self.read_soon();
        }
        let me = self.me();
        match self
            .base
            .lp()
            ._add_reader(self.base.fd(), Box::new(move || me.read_ready()))
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                self.unpollable.set(true);
                self.read_soon();
            }
            Err(e) => self.fatal_error(e, "Fatal error: cannot watch the pipe for reading."),
        }
    }

    /// The reader of an unpollable descriptor: one read in the next
    /// iteration, and again after it while reading is on.
    fn read_soon(&self) {
        let me = self.me();
        let _ = self.base.lp().call_soon_dyn(
            Box::new(move || {
                if me.is_reading() && me.base.is_open() {
                    me.read_ready();
                    if me.is_reading() {
                        me.read_soon();
                    }
                }
            }),
            None,
        );
    }

    fn remove_reader(&self) {
        if !self.unpollable.get() {
            let _ = self.base.lp()._remove_reader(self.base.fd());
        }
    }

    /// asyncio's `_read_ready`.
    fn read_ready(&self) {
        let mut buf = take_read_buf();
        let r = match self.base.with_file(|mut f| f.read(&mut buf)) {
            Some(r) => r,
            None => {
                put_read_buf(buf);
                return;
            }
        };
        match r {
            Ok(0) => {
                put_read_buf(buf);
                self.base.debug("was closed by peer");
                self.base.closing.set(true);
                self.remove_reader();
                let proto = self.base.protocol();
                let me = self.me();
                let lp = self.base.lp().clone();
                let _ = lp.call_soon_dyn(
                    Box::new(move || {
                        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.eof_received())) {
                            me.base.report(
                                Error::from_panic(p),
                                "Exception in callback Protocol.eof_received()",
                            );
                        }
                    }),
                    None,
                );
                let me = self.me();
                self.base
                    .schedule_connection_lost(move || me.base.connection_lost(None));
            }
            Ok(n) => {
                let proto = self.base.protocol();
                let r = catch_unwind(AssertUnwindSafe(|| proto.data_received(&buf[..n])));
                put_read_buf(buf);
                if let Err(p) = r {
                    self.fatal_error(
                        Error::from_panic(p),
                        "Fatal error: protocol.data_received() call failed.",
                    );
                }
            }
            Err(e) if is_retry(&e) => put_read_buf(buf),
            Err(e) => {
                put_read_buf(buf);
                self.fatal_error(e.into(), "Fatal read error on pipe transport");
            }
        }
    }

    /// asyncio's `_fatal_error`, then `_close(exc)`.
    fn fatal_error(&self, exc: Error, message: &str) {
        self.base.report_fatal(&exc, message);
        self.close_with(Some(exc));
    }

    /// asyncio's `_close`.
    fn close_with(&self, exc: Option<Error>) {
        self.base.closing.set(true);
        self.remove_reader();
        let me = self.me();
        self.base
            .schedule_connection_lost(move || me.base.connection_lost(exc));
    }
}

impl BaseTransport for ReadPipeTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.base.get_extra_info(name)
    }

    fn is_closing(&self) -> bool {
        self.base.closing.get()
    }

    fn close(&self) {
        if !self.base.closing.get() {
            self.close_with(None);
        }
    }
}

impl ReadTransport for ReadPipeTransport {
    fn is_reading(&self) -> bool {
        !self.paused.get() && !self.base.closing.get()
    }

    fn pause_reading(&self) {
        if !self.is_reading() {
            return;
        }
        self.paused.set(true);
        self.remove_reader();
        self.base.debug("pauses reading");
    }

    fn resume_reading(&self) {
        if self.base.closing.get() || !self.paused.get() {
            return;
        }
        self.paused.set(false);
        self.add_reader();
        self.base.debug("resumes reading");
    }
}

impl WriteTransport for ReadPipeTransport {
    fn set_write_buffer_limits(&self, _high: Option<usize>, _low: Option<usize>) -> Result<()> {
        Err(cannot_write())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        (0, 0)
    }

    fn get_write_buffer_size(&self) -> usize {
        0
    }

    fn write(&self, _data: &[u8]) -> Result<()> {
        Err(cannot_write())
    }

    fn write_eof(&self) -> Result<()> {
        Err(cannot_write())
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    /// Closes at once: there is nothing buffered to drop.
    fn abort(&self) {
        self.close();
    }
}

impl Transport for ReadPipeTransport {
    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        self.base.set_protocol(protocol);
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.base.protocol()
    }
}
